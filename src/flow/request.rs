//! The request path: read the headers once, decide, write the target.
//!
//! 1. One host call copies every request header into the worker
//!    ([`Stream::request_headers`]); `:method`, `:path`, the key, the
//!    override headers and a client-sent target header are read from it in
//!    place.
//! 2. Override headers are removed (when present) and a valid one forces
//!    the side.
//! 3. Unmatched: count it, remove a client-sent target header if any, done.
//! 4. Matched: decide at the percent in force; while the route's guard is
//!    tripped (a flag in worker memory) the service's share goes to the
//!    monolith (reason `guard`); ask the breaker when the service
//!    is chosen, write the target header (Envoy, ABI 0.2.1, then
//!    re-evaluates the route, whose header match sends the request there),
//!    count, remember what the response path needs (and whether the
//!    request is gRPC: its `content-type`, from the same map).

use std::borrow::Cow;

use super::counters::count;
use super::{breaker, guard, Host, Next, Pending, Plan, Stream, Worker};
use crate::breaker::{Admission, OnOpen};
use crate::config::{forced_target, HashKey, Target, DEFAULT_TARGET_HEADER};
use crate::cookie;
use crate::decision::Reason;
use crate::grpc;
use crate::headers::HeaderMap;

/// Whether the headers are read in one host call (the shipped build) or one
/// call per header (`--features single-header-reads`, for the bench only).
pub const BULK: bool = !cfg!(feature = "single-header-reads");

/// A request header's first value: from the map read in one call, or with
/// one host call.
fn header<'a>(
    stream: &impl Stream,
    map: Option<&HeaderMap<'a>>,
    name: &str,
) -> Option<Cow<'a, [u8]>> {
    match map {
        Some(m) => m.get(name.as_bytes()).map(Cow::Borrowed),
        None => stream.request_header(name).map(Cow::Owned),
    }
}

/// Every request header in one host call (empty in the
/// `single-header-reads` build, which reads them one by one).
pub fn read_headers(stream: &impl Stream) -> Vec<u8> {
    if BULK {
        stream.request_headers()
    } else {
        Vec::new()
    }
}

/// A request without a configuration (Envoy ran a filter whose
/// configuration was refused): no client picks the backend.
pub fn unconfigured(stream: &impl Stream) -> Next {
    stream.set_request_header(DEFAULT_TARGET_HEADER, None);
    Next::Continue
}

/// `bytes`: from [`read_headers`]. What the response path needs goes to
/// `pending`.
pub fn on_request(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    bytes: &[u8],
    pending: &mut Option<Pending>,
) -> Next {
    let config = &plan.config;
    let counters = &worker.counters;
    let map = BULK.then(|| HeaderMap::new(bytes));
    let map = map.as_ref();

    let mut forced = None;
    if let Some(o) = &config.override_header {
        let force = header(stream, map, &o.header);
        let secret = match o.secret {
            Some(_) => header(stream, map, &o.secret_header),
            None => None,
        };
        if force.is_some() {
            stream.set_request_header(&o.header, None);
        }
        if secret.is_some() {
            stream.set_request_header(&o.secret_header, None);
        }
        forced = force.and_then(|f| forced_target(o, &f, secret.as_deref()));
    }

    let method = header(stream, map, ":method");
    let path = header(stream, map, ":path");
    let route = match (&method, &path) {
        (Some(m), Some(p)) => config.route(m, p),
        _ => None,
    };
    let Some((index, route)) = route else {
        count(counters, plan.unmatched);
        // Clients must never pick a backend: drop their copy. Only when
        // present, since a header change makes Envoy re-run routing.
        if header(stream, map, &config.target_header).is_some() {
            stream.set_request_header(&config.target_header, None);
        }
        return Next::Continue;
    };

    let cookies;
    let key = match &route.hash_key {
        HashKey::Header(name) => header(stream, map, name),
        HashKey::Cookie(name) => {
            cookies = header(stream, map, "cookie");
            cookies
                .as_deref()
                .and_then(|h| cookie::find(h, name.as_bytes()))
                .map(Cow::Borrowed)
        }
    };
    let key = key.as_deref();
    let now = host.now_ms();
    let stats = plan.stats.get(index);
    if let Some(s) = stats {
        if key.is_none_or(<[u8]>::is_empty) {
            count(counters, s.key_missing);
        }
    }
    let split = match forced {
        Some(t) => {
            if let Some(s) = stats {
                count(counters, s.target(t).overrides);
            }
            t
        }
        // The route's own share; a tripped guard is applied below.
        None => route.decide_at(key, route.basis_points_at(now)),
    };
    let (mut target, mut reason) = Reason::of(forced.is_some(), key.is_none_or(<[u8]>::is_empty))
        .guarded(split, guard::tripped(plan, worker, index));

    let mut admitted = None;
    if let (Target::Service, Some((route, settings, slot, _))) =
        (target, breaker::of(plan, worker, index))
    {
        // A forced request is not the breaker's to stop, but its
        // outcome is the service's.
        let (admission, healthy) = if forced.is_some() {
            (Admission::Pass, false)
        } else {
            slot.admit(host, route, settings, counters, now)
        };
        match admission.ticket() {
            Some(ticket) => admitted = Some(breaker::Admitted { ticket, healthy }),
            None if settings.on_open == OnOpen::Fallback => {
                count(counters, slot.stats.fallback);
                target = Target::Monolith;
                reason = Reason::BreakerFallback;
            }
            None => {
                count(counters, slot.stats.fast_fail);
                stream.publish_reason(Reason::BreakerReject);
                let retry_after_ms = match admission {
                    Admission::Blocked { retry_after_ms } => retry_after_ms,
                    _ => 0,
                };
                let seconds = retry_after_ms.div_ceil(1000).max(1).to_string();
                stream.send_local_reply(
                    503,
                    vec![("retry-after", &seconds), ("x-shift-breaker", "open")],
                    Some(b"service unavailable: circuit breaker open\n"),
                );
                return Next::Stop;
            }
        }
    }
    stream.publish_reason(reason);
    stream.set_request_header(&config.target_header, Some(config.cluster(route, target)));
    if let Some(s) = stats {
        count(counters, s.target(target).rq_total);
    }
    let grpc = header(stream, map, "content-type").is_some_and(|c| grpc::is_grpc(&c));
    *pending = Some(Pending {
        route: index,
        target,
        start_ms: now,
        admitted,
        grpc,
    });
    Next::Continue
}
