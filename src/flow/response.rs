//! The response path, for requests the flow decided: `:status` (and
//! `response.flags` for a 5xx) -> the outcome -> counters, the latency
//! histogram, the guard's window, and the breaker for requests sent to the
//! service.

use super::counters::{count, record};
use super::{breaker, guard, Host, Pending, Plan, Stream, Worker};
use crate::stats::{self, FailureOrigin};

/// `pending`: what the request path left (nothing for a request it did not
/// decide).
pub fn on_response(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    pending: Option<Pending>,
) {
    let Some(p) = pending else {
        return;
    };
    let Some(s) = plan.stats.get(p.route) else {
        return;
    };
    let s = s.target(p.target);
    let c = &worker.counters;
    let status = stream
        .response_header(":status")
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    let flags = if stats::needs_flags(status) {
        stream.response_flags()
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
    let now = host.now_ms();
    let latency_ms = now.saturating_sub(p.start_ms);
    record(host, s.upstream_rq_time, latency_ms);
    if let Some((_, settings, _, g)) = guard::of(plan, worker, p.route) {
        g.observe(settings, now, p.target, status, latency_ms);
    }

    if let (Some(a), Some((route, settings, slot, local))) =
        (p.admitted, breaker::of(plan, worker, p.route))
    {
        let failure = settings.is_failure(status, flags != 0);
        slot.record(host, local, route, settings, c, now, failure, a);
    }
}
