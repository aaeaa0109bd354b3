//! The per-request path never panics: any config that validates, then
//! arbitrary method, path, key header and cookie bytes, times and outcomes.
//! Input: config JSON, then NUL-separated method, path, key, cookie header,
//! and 8 bytes of time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traffic_shift::breaker::{Breaker, Ticket, Window};
use traffic_shift::config::{forced_target, Config, HashKey, Target};
use traffic_shift::cookie;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let (Some(json), Some(method), Some(path), Some(key), Some(cookies)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return;
    };
    let now = parts
        .next()
        .map(|t| {
            t.iter()
                .take(8)
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        })
        .unwrap_or(0);
    let Ok(config) = Config::from_json(json) else {
        return;
    };
    let Some((index, route)) = config.route(method, path) else {
        return;
    };
    assert!(index < config.routes.len());
    let key = match &route.hash_key {
        HashKey::Header(_) => Some(key),
        HashKey::Cookie(name) => cookie::find(cookies, name.as_bytes()),
    };
    let bp = route.basis_points_at(now);
    assert!(bp <= 10_000);
    let target = route.decide_at(key, bp);
    assert!(key.is_some_and(|k| !k.is_empty()) || target == Target::Monolith);
    let _ = config.cluster(route, target);
    if let Some(o) = &config.override_header {
        let _ = forced_target(o, key.unwrap_or_default(), Some(cookies));
    }
    if let Some(settings) = &route.outlier {
        let mut b = Breaker::decode(key.unwrap_or_default()).unwrap_or_default();
        let (admission, _) = b.admit(settings, now);
        let failure = cookies.first().is_some_and(|c| c & 1 == 1);
        let mut w = Window::decode(path).unwrap_or_default();
        if let Some(rate) = &settings.failure_rate {
            w.add(rate.window_ms, now, failure);
        }
        let ticket = admission.ticket().unwrap_or(Ticket::Pass);
        let _ = b.record(settings, now, failure, ticket, Some(&w));
        let _ = b.check_rate(settings, now, &w);
        let _ = b.advance(settings, now.wrapping_sub(3_600_000));
        assert_eq!(Breaker::decode(&b.encode()), Some(b));
        assert_eq!(Window::decode(&w.encode()), Some(w));
    }
});
