//! The response path, for requests the flow decided: `:status` (and
//! `response.flags` for a failure) -> the outcome -> counters, the latency
//! histogram, the guard's window, and the breaker for requests sent to the
//! service.
//!
//! A gRPC request ([`Pending::grpc`]) answered with HTTP 200 has its
//! `grpc-status` as outcome: from the response headers of a trailers-only
//! response (an RPC that fails before any message), else from the
//! trailers, so a streaming RPC's outcome is known when it ends. The
//! class counters and the latency (time to the response headers) are
//! taken at the headers either way; the failure counters, the guard and
//! the breaker wait for the outcome. A gRPC response that ends without a
//! `grpc-status` (a reset stream) counts as `other` and not as a failure:
//! it may be the client cancelling.

use super::counters::{count, record};
use super::{breaker, guard, Host, Pending, Plan, Stream, Worker};
use crate::grpc;
use crate::stats::{self, FailureOrigin};

/// A gRPC response whose headers came without `grpc-status`: its outcome
/// comes with the trailers.
#[derive(Debug)]
pub struct Awaiting {
    pending: Pending,
    latency_ms: u64,
}

/// `pending`: what the request path left (nothing for a request it did not
/// decide). A gRPC response still waiting for its trailers is returned.
pub fn on_response(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    pending: Option<Pending>,
    end_of_stream: bool,
) -> Option<Awaiting> {
    let p = pending?;
    let s = plan.stats.get(p.route)?.target(p.target);
    let c = &worker.counters;
    let status = stream
        .response_header(":status")
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    let grpc = p.grpc && status == 200;
    let flags = if stats::needs_flags(status) {
        stream.response_flags()
    } else {
        0
    };
    let outcome = stats::classify(status, flags);
    if let Some(m) = outcome.class.and_then(|i| s.rq_class.get(i)) {
        count(c, *m);
    }
    // One clock read serves the histogram and the breaker.
    let now = host.now_ms();
    let latency_ms = now.saturating_sub(p.start_ms);
    record(host, s.upstream_rq_time, latency_ms);
    if grpc {
        let code = match stream.response_header("grpc-status") {
            Some(v) => grpc::parse_status(&v),
            None if !end_of_stream => {
                return Some(Awaiting {
                    pending: p,
                    latency_ms,
                })
            }
            None => None,
        };
        settle_grpc(host, stream, plan, worker, p, latency_ms, now, code);
        return None;
    }
    if p.grpc {
        // Not a 200: the client sees no grpc-status from the upstream.
        count_code(plan, worker, &p, None);
    }
    match outcome.failure {
        Some(FailureOrigin::App) => count(c, s.failure_app),
        Some(FailureOrigin::Proxy) => count(c, s.failure_proxy),
        None => {}
    }
    settle(
        host,
        plan,
        worker,
        &p,
        now,
        status,
        latency_ms,
        |settings| settings.is_failure(status, flags != 0),
    );
    None
}

/// The response trailers of a gRPC response waiting for them.
pub fn on_trailers(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    awaiting: Awaiting,
) {
    let code = stream
        .response_trailer("grpc-status")
        .and_then(|v| grpc::parse_status(&v));
    let now = host.now_ms();
    let Awaiting {
        pending,
        latency_ms,
    } = awaiting;
    settle_grpc(host, stream, plan, worker, pending, latency_ms, now, code);
}

/// The stream ended without trailers: `other`, not a failure (a breaker
/// probe is given back as a success).
pub fn end(host: &impl Host, plan: &Plan, worker: &Worker, awaiting: Awaiting) {
    let p = awaiting.pending;
    count_code(plan, worker, &p, None);
    let now = host.now_ms();
    settle(
        host,
        plan,
        worker,
        &p,
        now,
        200,
        awaiting.latency_ms,
        |_| false,
    );
}

/// A gRPC outcome: `code` is the parsed `grpc-status` (`None`: missing
/// or not one of the 17). A failure code reads `response.flags` once to
/// tell the upstream's own failure from Envoy's (a local reply, e.g.
/// UNAVAILABLE for a refused connection).
#[allow(clippy::too_many_arguments)]
fn settle_grpc(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    p: Pending,
    latency_ms: u64,
    now: u64,
    code: Option<u8>,
) {
    count_code(plan, worker, &p, code);
    let failures = plan
        .config
        .routes
        .get(p.route)
        .and_then(|r| r.grpc)
        .map_or(grpc::DEFAULT_FAILURES, |g| g.failures);
    let failed = failures.contains(code);
    if failed {
        if let Some(s) = plan.stats.get(p.route) {
            let s = s.target(p.target);
            let m = if stream.response_flags() == 0 {
                s.failure_app
            } else {
                s.failure_proxy
            };
            count(&worker.counters, m);
        }
    }
    // The guard counts a failed RPC as it counts a 5xx.
    let status = if failed { 500 } else { 200 };
    settle(host, plan, worker, &p, now, status, latency_ms, |_| failed);
}

/// The response's counter by gRPC status, on routes with `grpc`.
fn count_code(plan: &Plan, worker: &Worker, p: &Pending, code: Option<u8>) {
    let stats = plan.grpc.get(p.route).and_then(Option::as_ref);
    if let Some(m) = stats.and_then(|g| g.code(p.target, code)) {
        count(&worker.counters, *m);
    }
}

/// The guard's window and the breaker. `status`: as the guard counts it
/// (>= 500 a failure); `failure`: whether the breaker counts it.
#[allow(clippy::too_many_arguments)]
fn settle(
    host: &impl Host,
    plan: &Plan,
    worker: &Worker,
    p: &Pending,
    now: u64,
    status: u16,
    latency_ms: u64,
    failure: impl FnOnce(&crate::breaker::Settings) -> bool,
) {
    if let Some((_, settings, _, g)) = guard::of(plan, worker, p.route) {
        g.observe(settings, now, p.target, status, latency_ms);
    }
    if let (Some(a), Some((route, settings, slot, local))) =
        (p.admitted, breaker::of(plan, worker, p.route))
    {
        let failure = failure(settings);
        slot.record(
            host,
            local,
            route,
            settings,
            &worker.counters,
            now,
            failure,
            a,
        );
    }
}
