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
//! message bytes are compared (a gRPC body is not JSON: its digest, also
//! under `"json"`). A gRPC request is shadowed only if its request body is
//! exactly one message (unary or server-streaming; a client or
//! bidirectional stream ends `skipped`); a server-streaming answer would
//! be compared as a whole when both ends finish, so keep streaming methods
//! out of shadowed routes. A gRPC request is a POST: it never gets a noise
//! call.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use super::counters::{self, Metric};
use super::{Host, Pending, Plan, Stream, Worker};
use crate::compare;
use crate::config::{Config, Target};
use crate::fields::{self, Admitted, FieldKind, OTHER};
use crate::headers::HeaderMap;
use crate::shadow::{
    self, call_timed_out, envoy_grpc_local_reply, envoy_local_reply, Answer, Body, BodyCompare,
    Digest, Ended, Finished, LogLimit, Noise, PrimaryEnd, Rules, Sampler, Settings, ShadowEnd,
    Table, Verdict, MAX_HELD_BYTES, SHADOW_HEADER,
};
use crate::stats::{Kind, LocalCounters, ShadowStats};

/// A call out, for [`Host::send_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u32,
}

/// Compared last on routes with `grpc`.
const GRPC_STATUS: &str = "grpc-status";
/// Read on a call's trailers-only UNAVAILABLE (Envoy's local reply text).
const GRPC_MESSAGE: &str = "grpc-message";

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

/// The value of [`SHADOW_HEADER`] on a noise call (a shadow call carries
/// `1`).
pub const NOISE_VALUE: &[u8] = b"noise";

/// A route's noise and the settings it was learned under.
type Learned = (Settings, Rc<RefCell<Noise>>);

thread_local! {
    /// Which requests are shadowed (per worker; seeded on first use).
    static SAMPLER: RefCell<Option<Sampler>> = const { RefCell::new(None) };
    /// The noise learned per route name in this worker, with the settings
    /// it was learned under: a new configuration keeps a route's noise
    /// when its `shadow` settings are unchanged. Holds the routes of the
    /// latest configuration only.
    static LEARNED: RefCell<HashMap<String, Learned>> = RefCell::new(HashMap::new());
}

/// One configuration's shadows in one worker.
pub struct Shadows {
    table: RefCell<Table>,
    logs: RefCell<Vec<LogLimit>>,
    /// Bytes held for shadowed requests (request bodies being collected,
    /// response bodies buffered to be parsed), at most [`MAX_HELD_BYTES`].
    held: Cell<u64>,
    /// Per route: differing fields counted since the last tick.
    pending: RefCell<Vec<fields::Pending>>,
    /// Per route: the fields with a label, as last read from the store.
    admitted: RefCell<Vec<Admitted>>,
    /// Host ids of the field counters defined so far, by stat name.
    ids: RefCell<HashMap<String, Option<u32>>>,
}

impl Shadows {
    pub fn new(config: &Config) -> Shadows {
        let rules = config
            .routes
            .iter()
            .map(|r| {
                let Some(s) = &r.shadow else {
                    return Rules::default();
                };
                let mut rules = Rules::of(s);
                if r.grpc.is_some() {
                    rules.names.push(GRPC_STATUS.to_string());
                }
                rules
            })
            .collect();
        let noise = LEARNED.with(|l| {
            let mut old = std::mem::take(&mut *l.borrow_mut());
            let mut new = HashMap::new();
            let noise = config
                .routes
                .iter()
                .map(|r| {
                    let Some(s) = &r.shadow else {
                        return Rc::new(RefCell::new(Noise::default()));
                    };
                    let n = match old.remove(&r.name) {
                        Some((was, n)) if was == *s => n,
                        _ => Rc::new(RefCell::new(Noise::default())),
                    };
                    new.insert(r.name.clone(), (s.clone(), n.clone()));
                    n
                })
                .collect();
            *l.borrow_mut() = new;
            noise
        });
        Shadows {
            table: RefCell::new(Table::new(rules, noise)),
            logs: RefCell::new(config.routes.iter().map(|_| LogLimit::default()).collect()),
            held: Cell::new(0),
            pending: RefCell::new(config.routes.iter().map(|_| Default::default()).collect()),
            admitted: RefCell::new(config.routes.iter().map(|_| Default::default()).collect()),
            ids: RefCell::new(HashMap::new()),
        }
    }

    /// Shadows sent and not finished.
    pub fn in_flight(&self) -> usize {
        self.table.borrow().len()
    }

    /// Old-vs-old comparisons learned on route `route` (in this worker).
    pub fn noise_comparisons(&self, route: usize) -> u32 {
        self.table.borrow().noise_comparisons(route)
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// Shadow and noise calls of route `route` admitted and not answered.
    pub fn admitted(&self, route: usize) -> u32 {
        self.table.borrow().in_flight(route)
    }

    /// Takes `n` more bytes if the worker's bound allows.
    fn hold(&self, n: u64) -> bool {
        let total = self.held.get().saturating_add(n);
        if total > MAX_HELD_BYTES {
            return false;
        }
        self.held.set(total);
        true
    }

    fn unhold(&self, n: u64) {
        self.held.set(self.held.get().saturating_sub(n));
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

/// The primary's response body as it is read.
enum Reading {
    /// Bodies not compared.
    Off,
    /// `compare_body: true`: streamed into a digest, chunks not kept.
    Digest(Digest),
    /// `"json"`: buffered (the bytes counted in the worker's held bytes),
    /// with the response's `content-type` and `content-encoding`.
    Buffer {
        bytes: Vec<u8>,
        content_type: Option<Vec<u8>>,
        encoding: Option<Vec<u8>>,
    },
}

impl Reading {
    fn len(&self) -> u64 {
        match self {
            Reading::Off => 0,
            Reading::Digest(d) => d.len(),
            Reading::Buffer { bytes, .. } => bytes.len() as u64,
        }
    }
}

/// What the primary's side of a shadowed request is doing.
enum Phase {
    /// Admitted; the request has a body: collecting it for the call (its
    /// bytes counted in the worker's held bytes). `noise`: a noise call
    /// was admitted too.
    Collecting {
        call: Call,
        request: String,
        noise: bool,
    },
    /// The call is out; the response is being read.
    Answering {
        token: u32,
        answer: Option<Answer>,
        body: Reading,
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

impl Primary {
    /// Whether its result is still to come (it was not settled already,
    /// e.g. `skipped` at its dispatch). For the fuzz driver's checks.
    #[cfg(any(test, feature = "fake-host"))]
    pub(crate) fn open(&self) -> bool {
        !matches!(self.phase, Phase::Done)
    }

    /// Bytes this request holds in the worker's count.
    pub(crate) fn held(&self) -> u64 {
        match &self.phase {
            Phase::Collecting { call, .. } => call.body.as_ref().map_or(0, |b| b.len() as u64),
            Phase::Answering {
                body: b @ Reading::Buffer { .. },
                ..
            } => b.len(),
            _ => 0,
        }
    }
}

/// A shadow admitted on route `route` that sends no call ends as
/// `verdict`: its admission (and its noise call's, with `noise`) is given
/// back.
fn release(plan: &Plan, worker: &Worker, route: usize, noise: bool, verdict: Verdict) {
    let mut t = worker.shadows.table.borrow_mut();
    t.release(route);
    if noise {
        t.release(route);
    }
    drop(t);
    count(plan, worker, route, verdict);
}

/// The stream is gone: a primary not finished ends as `skipped` (its body
/// was still being collected: the admitted calls are released) or
/// incomplete.
pub fn end(host: &impl Host, plan: &Plan, worker: &Worker, primary: &mut Option<Primary>) {
    let Some(mut p) = primary.take() else {
        return;
    };
    worker.shadows.unhold(p.held());
    match std::mem::replace(&mut p.phase, Phase::Done) {
        Phase::Collecting { noise, .. } => {
            release(plan, worker, p.route, noise, Verdict::Skipped);
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
    if let Some(m) = &f.mismatch {
        count_fields(worker, f.route, &m.fields, FieldKind::Diff);
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
        let values = route.shadow.as_ref().is_some_and(|s| s.log_values);
        log::warn!(
            "{}",
            shadow::mismatch_line(
                &route.name,
                &f,
                plan.config.cluster(route, f.primary),
                plan.config.cluster(route, other),
                held,
                values
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
/// admits it (it counts in `max_in_flight` from here) and sends the shadow
/// (or starts collecting the request body for it). A request of a method
/// without side effects is also drawn for a noise call (`noise_percent`),
/// admitted if `max_in_flight` leaves room for it too.
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
    if !worker
        .shadows
        .table
        .borrow_mut()
        .admit(route, s.max_in_flight)
    {
        count(plan, worker, route, Verdict::Skipped);
        return;
    }
    let noise = s.noise_basis_points > 0
        && shadow::is_safe(method)
        && draw(host, s.noise_basis_points)
        && worker
            .shadows
            .table
            .borrow_mut()
            .admit(route, s.max_in_flight);
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
        phase: Phase::Collecting {
            call,
            request,
            noise,
        },
    };
    if end_of_stream {
        p.dispatch(host, plan, worker);
    }
    *primary = Some(p);
}

/// A request body chunk of a shadowed request: copied for the call (up to
/// `max_body_bytes` and the worker's [`MAX_HELD_BYTES`]; more: `skipped`).
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
    let Phase::Collecting { call, .. } = &mut p.phase else {
        return;
    };
    let max = settings(plan, p.route).map_or(0, |s| s.max_body_bytes as usize);
    let body = call.body.get_or_insert_with(Vec::new);
    if body.len() + body_size > max || !worker.shadows.hold(body_size as u64) {
        // Ending it counts `skipped`.
        end(host, plan, worker, primary);
        return;
    }
    if body_size > 0 {
        match stream.request_body(body_size) {
            Some(chunk) if chunk.len() == body_size => body.extend_from_slice(&chunk),
            _ => worker.shadows.unhold(body_size as u64),
        }
    }
    if end_of_stream {
        p.dispatch(host, plan, worker);
    }
}

/// The request's trailers: its body is complete, the call goes (without
/// the trailers: a call out carries none).
pub fn request_trailers(
    host: &impl Host,
    plan: &Plan,
    worker: &Worker,
    primary: &mut Option<Primary>,
) {
    if let Some(p) = primary {
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
    let Phase::Answering { answer, body, .. } = &mut p.phase else {
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
        body_len: None,
    });
    *body = match s.compare_body {
        BodyCompare::Off => Reading::Off,
        BodyCompare::Bytes => Reading::Digest(Digest::default()),
        BodyCompare::Json => Reading::Buffer {
            bytes: Vec::new(),
            content_type: stream.response_header("content-type"),
            encoding: stream.response_header("content-encoding"),
        },
    };
    if end_of_stream || (s.compare_body == BodyCompare::Off && !trailers) {
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
/// is not kept) or, for `"json"`, the buffer; up to `max_body_bytes`
/// (and the worker's [`MAX_HELD_BYTES`] for a buffer).
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
    let Phase::Answering { body, .. } = &mut p.phase else {
        return;
    };
    if matches!(body, Reading::Off) {
        return;
    }
    let max = settings(plan, p.route).map_or(0, |s| u64::from(s.max_body_bytes));
    let seen = body.len() + body_size as u64;
    let buffered = matches!(body, Reading::Buffer { .. });
    if seen > max || (buffered && !worker.shadows.hold(body_size as u64)) {
        p.too_large(host, plan, worker, seen);
        return;
    }
    if body_size > 0 {
        let chunk = stream.response_body(body_size);
        match (body, chunk) {
            (Reading::Digest(d), Some(c)) => d.update(&c),
            (Reading::Buffer { bytes, .. }, Some(c)) if c.len() == body_size => {
                bytes.extend_from_slice(&c)
            }
            (Reading::Buffer { .. }, _) => worker.shadows.unhold(body_size as u64),
            _ => {}
        }
    }
    if end_of_stream {
        p.primary_done(host, plan, worker);
    }
}

impl Primary {
    /// Sends the collected call (and its noise call); counts `error` if
    /// the host refuses it.
    fn dispatch(&mut self, host: &impl Host, plan: &Plan, worker: &Worker) {
        let held = self.held();
        let Phase::Collecting {
            call,
            request,
            noise,
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        worker.shadows.unhold(held);
        if self.grpc && !call.body.as_deref().is_some_and(one_message) {
            release(plan, worker, self.route, noise, Verdict::Skipped);
            return;
        }
        let noise_call = noise
            .then(|| {
                let r = plan.config.routes.get(self.route)?;
                let mut c = call.clone();
                c.cluster = plan.config.cluster(r, Target::Monolith).to_string();
                if let Some((_, v)) = c
                    .headers
                    .iter_mut()
                    .find(|(k, _)| k == SHADOW_HEADER.as_bytes())
                {
                    *v = NOISE_VALUE.to_vec();
                }
                Some(c)
            })
            .flatten();
        match host.send_call(call) {
            Some(token) => {
                let noise_token = noise_call.and_then(|c| host.send_call(c));
                let mut t = worker.shadows.table.borrow_mut();
                if noise && noise_token.is_none() {
                    t.release(self.route);
                }
                t.start(
                    token,
                    self.route,
                    self.target,
                    request,
                    host.now_ms(),
                    noise_token,
                );
                self.phase = Phase::Answering {
                    token,
                    answer: None,
                    body: Reading::Off,
                };
            }
            None => {
                release(plan, worker, self.route, noise, Verdict::Error);
            }
        }
    }

    fn primary_done(&mut self, host: &impl Host, plan: &Plan, worker: &Worker) {
        let held = self.held();
        let Phase::Answering {
            token,
            answer: Some(mut a),
            body,
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        worker.shadows.unhold(held);
        let mode = settings(plan, self.route).map_or(BodyCompare::Off, |s| s.compare_body);
        match body {
            Reading::Off => {}
            Reading::Digest(d) => {
                a.body_len = Some(d.len());
                a.body = Some(Body::Bytes(d));
            }
            Reading::Buffer {
                bytes,
                content_type,
                encoding,
            } => {
                a.body_len = Some(bytes.len() as u64);
                a.body = Some(Body::read(
                    mode,
                    &bytes,
                    content_type.as_deref(),
                    encoding.as_deref(),
                ));
            }
        }
        let f = worker
            .shadows
            .table
            .borrow_mut()
            .primary_done(token, PrimaryEnd::Answered(a));
        finish_with(host, plan, worker, f);
    }

    fn too_large(&mut self, host: &impl Host, plan: &Plan, worker: &Worker, body_len: u64) {
        let held = self.held();
        let Phase::Answering { token, answer, .. } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        worker.shadows.unhold(held);
        let status = answer.map_or(0, |a| a.status);
        let f = worker
            .shadows
            .table
            .borrow_mut()
            .primary_done(token, PrimaryEnd::TooLarge { status, body_len });
        finish_with(host, plan, worker, f);
    }
}

/// Counts `fields` (unsanitised) of route `route` until the tick.
fn count_fields(worker: &Worker, route: usize, names: &[String], kind: FieldKind) {
    if let Some(p) = worker.shadows.pending.borrow_mut().get_mut(route) {
        for n in names {
            p.add(&compare::stat_name(n), kind);
        }
    }
}

/// On the tick: the differing fields counted since the last one reach
/// their counters. Fields this worker has not seen with a label yet are
/// proposed in the store (one read, and a compare-and-swap write while the
/// route has room); a field without a label counts as `other`.
pub fn tick(host: &impl Host, plan: &Plan, worker: &Worker) {
    let sh = &worker.shadows;
    for (i, route) in plan.config.routes.iter().enumerate() {
        let pending = match sh.pending.borrow_mut().get_mut(i) {
            Some(p) if !p.is_empty() => std::mem::take(p),
            _ => continue,
        };
        let mut admitted = sh.admitted.borrow_mut();
        let Some(admitted) = admitted.get_mut(i) else {
            continue;
        };
        let unknown = pending.counts.iter().any(|(f, _, _)| !admitted.has(f));
        if unknown && !admitted.is_full() {
            let key = fields::store_key(&route.name);
            for _ in 0..3 {
                let Some((bytes, cas)) = host.store_get(&key) else {
                    break;
                };
                let mut a = Admitted::decode(&bytes);
                let added = a.admit(pending.counts.iter().map(|(f, _, _)| f.as_str()));
                let stored = !added || host.store_set(&key, Some(&a.encode()), cas);
                if stored {
                    *admitted = a;
                    break;
                }
            }
        }
        let mut ids = sh.ids.borrow_mut();
        let mut add = |label: &str, kind: FieldKind, n: u64| {
            let name = fields::stat_name(&route.name, label, kind);
            let id = *ids
                .entry(name)
                .or_insert_with_key(|name| host.define_metric(Kind::Counter, name));
            if let Some(id) = id {
                host.increment_metric(id, n);
            }
        };
        let mut other = pending.other;
        for (f, k, n) in &pending.counts {
            if admitted.has(f) {
                add(f, *k, *n);
            } else if let Some(o) = other.get_mut(*k as usize) {
                *o += n;
            }
        }
        for (k, n) in [FieldKind::Diff, FieldKind::Noise].into_iter().zip(other) {
            if n > 0 {
                add(OTHER, k, n);
            }
        }
    }
}

/// [`finish`], reading the clock only for a mismatch.
fn finish_with(host: &impl Host, plan: &Plan, worker: &Worker, e: Ended) {
    if let Some(n) = &e.noise {
        count_fields(worker, n.route, &n.fields, FieldKind::Noise);
    }
    let now = e
        .finished
        .as_ref()
        .filter(|f| f.verdict.is_mismatch())
        .map(|_| host.now_ms());
    finish(plan, worker, now, e.finished);
}

/// The answer being delivered, as `s` compares it: status, listed
/// headers (`grpc`: then `grpc-status`, from the headers of a
/// trailers-only answer or else the trailers), body; not an answer when
/// the call failed, timed out, or Envoy answered it itself.
fn read_answer(
    host: &impl Host,
    s: &Settings,
    grpc: bool,
    num_headers: usize,
    body_size: usize,
    elapsed_ms: u64,
) -> ShadowEnd {
    let status = (num_headers > 0)
        .then(|| host.call_response_header(":status"))
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok());
    let compared = s.compare_body != BodyCompare::Off && body_size <= s.max_body_bytes as usize;
    let small_503 = status == Some(503) && body_size <= shadow::LOCAL_REPLY_MAX_BYTES;
    let timeout_504 = status == Some(504) && body_size == shadow::TIMEOUT_BODY.len();
    let body = (body_size > 0 && (compared || small_503 || timeout_504))
        .then(|| host.call_response_body(body_size))
        .flatten();
    let bytes = body.as_deref().unwrap_or_default();
    if call_timed_out(
        status,
        timeout_504.then_some(bytes),
        elapsed_ms,
        s.timeout_ms,
    ) {
        return ShadowEnd::TimedOut;
    }
    let Some(status) = status else {
        return ShadowEnd::Failed;
    };
    if small_503 && envoy_local_reply(status, bytes) {
        return ShadowEnd::Failed;
    }
    if s.compare_body != BodyCompare::Off && !compared {
        return ShadowEnd::TooLarge {
            status,
            body_len: body_size as u64,
        };
    }
    let body = compared.then(|| {
        let (ct, enc) = if s.compare_body == BodyCompare::Json {
            (
                host.call_response_header("content-type"),
                host.call_response_header("content-encoding"),
            )
        } else {
            (None, None)
        };
        Body::read(s.compare_body, bytes, ct.as_deref(), enc.as_deref())
    });
    let mut headers: Vec<_> = s
        .compare_headers
        .iter()
        .map(|h| host.call_response_header(h))
        .collect();
    if grpc {
        let code = host.call_response_header(GRPC_STATUS);
        // A trailers-only UNAVAILABLE may be Envoy's own answer.
        let local = status == 200
            && body_size == 0
            && code.as_deref() == Some(b"14")
            && host
                .call_response_header(GRPC_MESSAGE)
                .is_some_and(|m| envoy_grpc_local_reply(b"14", &m));
        if local {
            return ShadowEnd::Failed;
        }
        headers.push(code.or_else(|| host.call_response_trailer(GRPC_STATUS)));
    }
    ShadowEnd::Answered(Answer {
        status,
        headers,
        body,
        body_len: compared.then_some(body_size as u64),
    })
}

/// The host delivers a call's answer: what the shadow (or a noise call)
/// answered (`num_headers` 0: the call failed).
pub fn on_answer(
    host: &impl Host,
    plan: &Plan,
    worker: &Worker,
    token: u32,
    num_headers: usize,
    body_size: usize,
) {
    let noise_route = worker.shadows.table.borrow().awaiting_noise(token);
    if let Some(route) = noise_route {
        let Some(s) = settings(plan, route) else {
            return;
        };
        let answer = match read_answer(
            host,
            s,
            compares_grpc(plan, route),
            num_headers,
            body_size,
            0,
        ) {
            ShadowEnd::Answered(a) => Some(a),
            _ => None,
        };
        let found = worker.shadows.table.borrow_mut().noise_done(token, answer);
        if let Some(n) = found {
            count_fields(worker, n.route, &n.fields, FieldKind::Noise);
        }
        return;
    }
    let Some((route, started)) = worker.shadows.table.borrow().awaiting(token) else {
        return;
    };
    let Some(s) = settings(plan, route) else {
        return;
    };
    let elapsed = host.now_ms().saturating_sub(started);
    let grpc = compares_grpc(plan, route);
    let end = read_answer(host, s, grpc, num_headers, body_size, elapsed);
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
