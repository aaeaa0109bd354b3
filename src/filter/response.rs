//! The response path, for requests the filter decided: `:status` (and
//! `response.flags` for a 5xx) -> the outcome -> counters, the latency
//! histogram, the guard's window, and the breaker for requests sent to the
//! service.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::counters::{count, record};
use super::{breaker, guard, host, Shift};
use crate::stats::{self, FailureOrigin};

impl Shift {
    pub(super) fn on_response(&mut self) -> Action {
        let Some(p) = self.pending.take() else {
            return Action::Continue;
        };
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        let Some(s) = shared.stats.get(p.route) else {
            return Action::Continue;
        };
        let s = s.target(p.target);
        let c = &shared.counters;
        let status = self
            .get_http_response_header_bytes(":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let flags = if stats::needs_flags(status) {
            self.get_property(vec!["response", "flags"])
                .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
                .unwrap_or(0)
        } else {
            0
        };
        let outcome = stats::classify(status, flags);
        if let Some(m) = outcome.class.and_then(|i| s.rq_class.get(i)) {
            count(c, *m);
        }
        match outcome.failure {
            Some(FailureOrigin::App) => count(c, s.failure_app),
            Some(FailureOrigin::Proxy) => count(c, s.failure_proxy),
            None => {}
        }
        // One clock read serves the histogram and the breaker.
        let now = host::now_ms();
        let latency_ms = now.saturating_sub(p.start_ms);
        record(s.upstream_rq_time, latency_ms);
        if let Some((_, settings, g)) = guard::of(shared, p.route) {
            g.observe(settings, now, p.target, status, latency_ms);
        }

        if let (Some(a), Some((route, settings, slot))) = (p.admitted, breaker::of(shared, p.route))
        {
            let failure = settings.is_failure(status, flags != 0);
            slot.record(route, settings, c, now, failure, a);
        }
        Action::Continue
    }
}
