//! Shadow calls: a sampled request of a route with `shadow` is also sent,
//! as a call out ([`Host::send_call`]), to the side the split did not
//! choose; both answers meet in the worker's [`Table`], whichever ends
//! first: the primary's response (read by its stream) or the call's answer
//! ([`on_answer`], delivered by the host, whether the primary is still
//! streaming or long done).
//!
//! Per request, a route without `shadow` pays nothing here; a request of a
//! shadow route that is not drawn pays one pseudo-random draw. An upgrade
//! request (WebSocket) is never shadowed, drawn or not. A shadowed
//! request pays the call, the listed response headers, and with
//! `compare_body` a copy of each response chunk.
//!
//! gRPC (routes with `grpc`): `grpc-status` is compared as one more
//! header, read from the response headers of a trailers-only response or
//! else from the trailers (the call's answer and the primary's response
//! alike), so the primary is done at its trailers; with `compare_body` the
//! message bytes are compared. A gRPC request is shadowed only if its
//! request body is exactly one message (unary or server-streaming; a
//! client or bidirectional stream ends `skipped`); a server-streaming
//! answer would be compared as a whole when both ends finish, so keep
//! streaming methods out of shadowed routes.

use std::cell::RefCell;

use super::counters::{self, Metric};
use super::{Host, Pending, Plan, Stream, Worker};
use crate::config::{Config, Target};
use crate::headers::HeaderMap;
use crate::shadow::{
    self, call_timed_out, Answer, Digest, Finished, LogLimit, PrimaryEnd, Sampler, Settings,
    ShadowEnd, Table, Verdict, SHADOW_HEADER,
};
use crate::stats::{LocalCounters, ShadowStats};

/// Compared last on routes with `grpc`.
const GRPC_STATUS: &str = "grpc-status";

/// Whether route `route` compares `grpc-status`.
fn compares_grpc(plan: &Plan, route: usize) -> bool {
    plan.config
        .routes
        .get(route)
        .is_some_and(|r| r.grpc.is_some())
}

/// A gRPC request body that is exactly one length-prefixed message.
fn one_message(body: &[u8]) -> bool {
    match body.get(1..5).and_then(|l| <[u8; 4]>::try_from(l).ok()) {
        Some(len) => u32::from_be_bytes(len) as usize == body.len() - 5,
        None => false,
    }
}

/// A call out, for [`Host::send_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u32,
}

thread_local! {
    /// Which requests are shadowed (per worker; seeded on first use).
    static SAMPLER: RefCell<Option<Sampler>> = const { RefCell::new(None) };
}

/// One configuration's shadows in one worker.
pub struct Shadows {
    table: RefCell<Table>,
    logs: RefCell<Vec<LogLimit>>,
}

impl Shadows {
    pub fn new(config: &Config) -> Shadows {
        let names = config
            .routes
            .iter()
            .map(|r| {
                let mut names = r
                    .shadow
                    .as_ref()
                    .map(|s| s.compare_headers.clone())
                    .unwrap_or_default();
                if r.grpc.is_some() {
                    names.push(GRPC_STATUS.to_string());
                }
                names
            })
            .collect();
        Shadows {
            table: RefCell::new(Table::new(names)),
            logs: RefCell::new(config.routes.iter().map(|_| LogLimit::default()).collect()),
        }
    }

    /// Shadows sent and not finished.
    pub fn in_flight(&self) -> usize {
        self.table.borrow().len()
    }
}

/// The shadow stats of every route (`None` for routes without `shadow`).
pub fn define(
    host: &impl Host,
    config: &Config,
    c: &mut LocalCounters,
) -> Vec<Option<ShadowStats<Metric>>> {
    config
        .routes
        .iter()
        .map(|r| {
            r.shadow.as_ref()?;
            Some(ShadowStats::define(&r.name, &mut |k, n: &str| {
                counters::define(host, c, k, n)
            }))
        })
        .collect()
}

/// What the primary's side of a shadowed request is doing.
enum Phase {
    /// The request has a body: collecting it for the call.
    Collecting(Call, String),
    /// The call is out; the response is being read (`digest` with
    /// `compare_body`, until its last chunk).
    Answering {
        token: u32,
        answer: Option<Answer>,
        digest: Option<Digest>,
    },
    Done,
}

/// A shadowed request, held by its stream. A stream that ends early hands
/// it to [`end`], which ends its entry as incomplete.
pub struct Primary {
    route: usize,
    target: Target,
    /// A gRPC request on a route with `grpc`: `grpc-status` is compared.
    grpc: bool,
    phase: Phase,
}

/// The stream is gone: a primary not finished ends as `skipped` (its body
/// was still being collected) or incomplete.
pub fn end(host: &impl Host, plan: &Plan, worker: &Worker, primary: &mut Option<Primary>) {
    let Some(mut p) = primary.take() else {
        return;
    };
    match std::mem::replace(&mut p.phase, Phase::Done) {
        Phase::Collecting(..) => {
            count(plan, worker, p.route, Verdict::Skipped);
        }
        Phase::Answering { token, .. } => {
            let f = worker
                .shadows
                .table
                .borrow_mut()
                .primary_done(token, PrimaryEnd::Incomplete);
            finish_with(host, plan, worker, f);
        }
        Phase::Done => {}
    }
}

fn settings(plan: &Plan, route: usize) -> Option<&Settings> {
    plan.config.routes.get(route)?.shadow.as_ref()
}

fn count(plan: &Plan, worker: &Worker, route: usize, v: Verdict) {
    if let Some(Some(s)) = plan.shadows.get(route) {
        if let Some(m) = s.result(v) {
            counters::count(&worker.counters, *m);
        }
    }
}

/// Counts a verdict; logs a mismatch (at most one line per route and
/// second in this worker). `now`: the host's clock, read only for a
/// mismatch.
fn finish(plan: &Plan, worker: &Worker, now: Option<u64>, f: Option<Finished>) {
    let Some(f) = f else {
        return;
    };
    count(plan, worker, f.route, f.verdict);
    if !f.verdict.is_mismatch() {
        return;
    }
    let Some(route) = plan.config.routes.get(f.route) else {
        return;
    };
    let Some(now) = now else {
        return;
    };
    let held = worker
        .shadows
        .logs
        .borrow_mut()
        .get_mut(f.route)
        .and_then(|l| l.allow(now));
    if let Some(held) = held {
        let other = match f.primary {
            Target::Monolith => Target::Service,
            Target::Service => Target::Monolith,
        };
        log::warn!(
            "{}",
            shadow::mismatch_line(
                &route.name,
                &f,
                plan.config.cluster(route, f.primary),
                plan.config.cluster(route, other),
                held
            )
        );
    }
}

/// Whether this request is drawn (`basis_points` of the draws).
fn draw(host: &impl Host, basis_points: u16) -> bool {
    SAMPLER.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.get_or_insert_with(|| Sampler::new(host.now().as_nanos() as u64));
        s.draw(basis_points)
    })
}

/// Request headers a shadow never carries: the filter's own (target,
/// override and its secret, a client's `x-shift-shadow`) and those that
/// frame or hop (Envoy sets the call's own).
fn forwarded(config: &Config, name: &[u8]) -> bool {
    let own = [
        Some(config.target_header.as_bytes()),
        config.override_header.as_ref().map(|o| o.header.as_bytes()),
        config
            .override_header
            .as_ref()
            .map(|o| o.secret_header.as_bytes()),
        Some(SHADOW_HEADER.as_bytes()),
    ];
    let framing: [&[u8]; 7] = [
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
    ];
    !own.contains(&Some(name)) && !framing.contains(&name)
}

/// After the decision: draws whether this request is shadowed and, if so,
/// sends the shadow (or starts collecting the request body for it).
/// `headers`: the request headers the request path read (read again here
/// if that build read them one by one).
#[allow(clippy::too_many_arguments)]
pub fn start(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    pending: Option<&Pending>,
    headers: Vec<u8>,
    end_of_stream: bool,
    primary: &mut Option<Primary>,
) {
    let Some(p) = pending else {
        return;
    };
    let Some(s) = settings(plan, p.route) else {
        return;
    };
    if !draw(host, s.basis_points) {
        return;
    }
    let (route, target) = (p.route, p.target);
    let bytes = if headers.is_empty() {
        stream.request_headers()
    } else {
        headers
    };
    let map = HeaderMap::new(&bytes);
    let method = map.get(b":method").unwrap_or_default();
    // An upgrade (a WebSocket) cannot be replayed as a call, and its
    // frames are no body to collect: a request carrying `upgrade` is never
    // shadowed and counts no result.
    if !s.shadows_method(method) || map.get(b"upgrade").is_some() {
        return;
    }
    if !worker.shadows.table.borrow().admits(route, s.max_in_flight) {
        count(plan, worker, route, Verdict::Skipped);
        return;
    }
    let Some(r) = plan.config.routes.get(route) else {
        return;
    };
    let other = match target {
        Target::Monolith => Target::Service,
        Target::Service => Target::Monolith,
    };
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = map
        .iter()
        .filter(|(k, _)| forwarded(&plan.config, k))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    headers.push((SHADOW_HEADER.into(), b"1".to_vec()));
    let call = Call {
        cluster: plan.config.cluster(r, other).to_string(),
        headers,
        body: None,
        timeout_ms: s.timeout_ms,
    };
    let request = shadow::request_line(method, map.get(b":path").unwrap_or_default());
    let mut p = Primary {
        route,
        target,
        grpc: p.grpc && compares_grpc(plan, route),
        phase: Phase::Collecting(call, request),
    };
    if end_of_stream {
        p.dispatch(host, plan, worker);
    }
    *primary = Some(p);
}

/// A request body chunk of a shadowed request: copied for the call (up to
/// `max_body_bytes`; more: `skipped`).
pub fn request_body(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    primary: &mut Option<Primary>,
    body_size: usize,
    end_of_stream: bool,
) {
    let Some(p) = primary else {
        return;
    };
    let Phase::Collecting(call, _) = &mut p.phase else {
        return;
    };
    let max = settings(plan, p.route).map_or(0, |s| s.max_body_bytes as usize);
    let body = call.body.get_or_insert_with(Vec::new);
    if body.len() + body_size > max {
        // Ending it counts `skipped`.
        end(host, plan, worker, primary);
        return;
    }
    if body_size > 0 {
        if let Some(chunk) = stream.request_body(body_size) {
            body.extend_from_slice(&chunk);
        }
    }
    if end_of_stream {
        p.dispatch(host, plan, worker);
    }
}

/// The primary's response headers: status and listed headers; the primary
/// is done here unless its body is compared.
pub fn response_headers(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    primary: &mut Option<Primary>,
    end_of_stream: bool,
) {
    let Some(p) = primary else {
        return;
    };
    let Phase::Answering { answer, digest, .. } = &mut p.phase else {
        return;
    };
    let Some(s) = settings(plan, p.route) else {
        return;
    };
    let status = stream
        .response_header(":status")
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    let mut headers: Vec<_> = s
        .compare_headers
        .iter()
        .map(|h| stream.response_header(h))
        .collect();
    // gRPC: the status of a trailers-only response, else the trailers'.
    let mut trailers = false;
    if compares_grpc(plan, p.route) {
        let status = stream.response_header(GRPC_STATUS);
        trailers = p.grpc && status.is_none() && !end_of_stream;
        headers.push(status);
    }
    *answer = Some(Answer {
        status,
        headers,
        body: None,
        body_len: 0,
    });
    if s.compare_body {
        *digest = Some(Digest::default());
    }
    if end_of_stream || (!s.compare_body && !trailers) {
        p.primary_done(host, plan, worker);
    }
}

/// The primary's response trailers: the end of its response (a gRPC
/// request's `grpc-status` is read from them).
pub fn response_trailers(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    primary: &mut Option<Primary>,
) {
    let Some(p) = primary else {
        return;
    };
    let Phase::Answering {
        answer: Some(a), ..
    } = &mut p.phase
    else {
        return;
    };
    if p.grpc {
        if let Some(last) = a.headers.last_mut() {
            *last = stream.response_trailer(GRPC_STATUS);
        }
    }
    p.primary_done(host, plan, worker);
}

/// A response body chunk of a shadowed request: into the digest (the chunk
/// is not kept), up to `max_body_bytes`.
pub fn response_body(
    host: &impl Host,
    stream: &impl Stream,
    plan: &Plan,
    worker: &Worker,
    primary: &mut Option<Primary>,
    body_size: usize,
    end_of_stream: bool,
) {
    let Some(p) = primary else {
        return;
    };
    let Phase::Answering {
        digest: Some(d), ..
    } = &mut p.phase
    else {
        return;
    };
    let max = settings(plan, p.route).map_or(0, |s| u64::from(s.max_body_bytes));
    let seen = d.len() + body_size as u64;
    if seen > max {
        p.too_large(host, plan, worker, seen);
        return;
    }
    if body_size > 0 {
        if let Some(chunk) = stream.response_body(body_size) {
            d.update(&chunk);
        }
    }
    if end_of_stream {
        p.primary_done(host, plan, worker);
    }
}

impl Primary {
    /// Sends the collected call; counts `error` if the host refuses it.
    fn dispatch(&mut self, host: &impl Host, plan: &Plan, worker: &Worker) {
        let Phase::Collecting(call, request) = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        if self.grpc && !call.body.as_deref().is_some_and(one_message) {
            count(plan, worker, self.route, Verdict::Skipped);
            return;
        }
        match host.send_call(call) {
            Some(token) => {
                worker.shadows.table.borrow_mut().start(
                    token,
                    self.route,
                    self.target,
                    request,
                    host.now_ms(),
                );
                self.phase = Phase::Answering {
                    token,
                    answer: None,
                    digest: None,
                };
            }
            None => count(plan, worker, self.route, Verdict::Error),
        }
    }

    fn primary_done(&mut self, host: &impl Host, plan: &Plan, worker: &Worker) {
        let Phase::Answering {
            token,
            answer: Some(mut a),
            digest,
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        if let Some(d) = digest {
            a.body_len = d.len();
            a.body = Some(d);
        }
        let f = worker
            .shadows
            .table
            .borrow_mut()
            .primary_done(token, PrimaryEnd::Answered(a));
        finish_with(host, plan, worker, f);
    }

    fn too_large(&mut self, host: &impl Host, plan: &Plan, worker: &Worker, body_len: u64) {
        let Phase::Answering { token, answer, .. } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        let status = answer.map_or(0, |a| a.status);
        let f = worker
            .shadows
            .table
            .borrow_mut()
            .primary_done(token, PrimaryEnd::TooLarge { status, body_len });
        finish_with(host, plan, worker, f);
    }
}

/// [`finish`], reading the clock only for a mismatch.
fn finish_with(host: &impl Host, plan: &Plan, worker: &Worker, f: Option<Finished>) {
    let now = f
        .as_ref()
        .filter(|f| f.verdict.is_mismatch())
        .map(|_| host.now_ms());
    finish(plan, worker, now, f);
}

/// The host delivers a call's answer: what the shadow answered
/// (`num_headers` 0: the call failed).
pub fn on_answer(
    host: &impl Host,
    plan: &Plan,
    worker: &Worker,
    token: u32,
    num_headers: usize,
    body_size: usize,
) {
    let Some((route, started)) = worker.shadows.table.borrow().awaiting(token) else {
        return;
    };
    let Some(s) = settings(plan, route) else {
        return;
    };
    let status = (num_headers > 0)
        .then(|| host.call_response_header(":status"))
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok());
    let elapsed = host.now_ms().saturating_sub(started);
    let timeout_body = (status == Some(504) && body_size == shadow::TIMEOUT_BODY.len())
        .then(|| host.call_response_body(body_size))
        .flatten();
    let end = match status {
        _ if call_timed_out(status, timeout_body.as_deref(), elapsed, s.timeout_ms) => {
            ShadowEnd::TimedOut
        }
        None => ShadowEnd::Failed,
        Some(status) if s.compare_body && body_size > s.max_body_bytes as usize => {
            ShadowEnd::TooLarge {
                status,
                body_len: body_size as u64,
            }
        }
        Some(status) => {
            let body = s.compare_body.then(|| {
                let bytes = if body_size > 0 {
                    host.call_response_body(body_size).unwrap_or_default()
                } else {
                    Vec::new()
                };
                Digest::of(&bytes)
            });
            let mut headers: Vec<_> = s
                .compare_headers
                .iter()
                .map(|h| host.call_response_header(h))
                .collect();
            if compares_grpc(plan, route) {
                headers.push(
                    host.call_response_header(GRPC_STATUS)
                        .or_else(|| host.call_response_trailer(GRPC_STATUS)),
                );
            }
            ShadowEnd::Answered(Answer {
                status,
                headers,
                body,
                body_len: body_size as u64,
            })
        }
    };
    let f = worker.shadows.table.borrow_mut().shadow_done(token, end);
    finish_with(host, plan, worker, f);
}

/// The configuration is going (the host dropped it and its last request
/// is done): shadows never answered end as `error`.
pub fn abandon(plan: &Plan, worker: &Worker) {
    let gone = worker.shadows.table.borrow_mut().abandon();
    for f in gone {
        count(plan, worker, f.route, f.verdict);
    }
}
