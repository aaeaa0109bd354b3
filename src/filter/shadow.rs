//! Shadow calls: a sampled request of a route with `shadow` is also sent,
//! as an HTTP call out of the filter, to the side the split did not
//! choose; both answers meet in the configuration's [`Table`].
//!
//! Where the answers land. Envoy makes every call on the plugin's root
//! context (proxy-wasm-cpp-host `http_call` uses `root_context()`), so the
//! call outlives the request; but the Rust SDK 0.2.5 delivers
//! `on_http_call_response` to the context that was *active* when the call
//! was made (`register_callout` records `active_id`) and drops it if that
//! context is gone. A shadow slower than its primary would be lost. So the
//! call is made while the root is the active context: the request path
//! puts it in [`OUTBOX`] and calls the SDK's own `proxy_on_queue_ready`
//! entry point for the root (a plain function call inside the module; no
//! queue, no host round trip; the export itself is not shipped), whose
//! `on_queue_ready` sends it. Every answer then reaches [`on_answer`] on
//! the root, which lives as long as the configuration, whether the primary
//! is still streaming or long done.
//!
//! Per request, a route without `shadow` pays nothing here; a request of a
//! shadow route that is not drawn pays one pseudo-random draw. A shadowed
//! request pays one more bulk header read, the call, the listed response
//! headers, and with `compare_body` a copy of each response chunk.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::counters::{self, Metric};
use super::{host, Shared, Shift};
use crate::config::{Config, Target};
use crate::headers::HeaderMap;
use crate::shadow::{
    self, call_timed_out, Answer, Digest, Finished, LogLimit, PrimaryEnd, Sampler, Settings,
    ShadowEnd, Table, Verdict, SHADOW_HEADER,
};
use crate::stats::{LocalCounters, ShadowStats};

/// The `queue_id` that means "send the call in [`OUTBOX`]" (no real queue
/// is ever registered by this filter).
pub const WAKE: u32 = u32::MAX;

extern "C" {
    /// The SDK's export (proxy-wasm 0.2.5 `dispatcher.rs`): sets the active
    /// context to `context_id` (a root) and calls its `on_queue_ready`.
    fn proxy_on_queue_ready(context_id: u32, queue_id: u32);
}

/// A call waiting for the root to send it.
struct Call {
    cluster: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout_ms: u32,
}

thread_local! {
    /// The call handed to the root, then the token (or failure) back.
    static OUTBOX: RefCell<Option<Call>> = const { RefCell::new(None) };
    static SENT: Cell<Option<u32>> = const { Cell::new(None) };
    /// Which requests are shadowed (per worker; seeded on first use).
    static SAMPLER: RefCell<Option<Sampler>> = const { RefCell::new(None) };
}

/// One configuration's shadows in this VM.
pub struct Shadows {
    table: RefCell<Table>,
    /// Index = route index; `None` for routes without `shadow`.
    stats: Vec<Option<ShadowStats<Metric>>>,
    logs: RefCell<Vec<LogLimit>>,
    /// The root context that sends the calls, while it exists.
    root: Cell<Option<u32>>,
}

impl Shadows {
    pub fn new(config: &Config, root: u32, c: &mut LocalCounters) -> Shadows {
        let stats = config
            .routes
            .iter()
            .map(|r| {
                r.shadow.as_ref()?;
                Some(ShadowStats::define(&r.name, &mut |k, n: &str| {
                    counters::define(c, k, n)
                }))
            })
            .collect();
        let names = config
            .routes
            .iter()
            .map(|r| {
                r.shadow
                    .as_ref()
                    .map(|s| s.compare_headers.clone())
                    .unwrap_or_default()
            })
            .collect();
        Shadows {
            table: RefCell::new(Table::new(names)),
            stats,
            logs: RefCell::new(config.routes.iter().map(|_| LogLimit::default()).collect()),
            root: Cell::new(Some(root)),
        }
    }

    /// The root is being deleted: no more calls can be sent through it.
    pub fn root_gone(&self) {
        self.root.set(None);
    }
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

/// A shadowed request, held by its HTTP context. Dropped unfinished (the
/// stream went early), it ends its entry as incomplete.
pub struct Primary {
    shared: Rc<Shared>,
    route: usize,
    target: Target,
    phase: Phase,
}

impl Drop for Primary {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Collecting(..) => {
                count(&self.shared, self.route, Verdict::Skipped);
            }
            Phase::Answering { token, .. } => {
                let f = self
                    .shared
                    .shadows
                    .table
                    .borrow_mut()
                    .primary_done(token, PrimaryEnd::Incomplete);
                finish(&self.shared, f);
            }
            Phase::Done => {}
        }
    }
}

fn settings(shared: &Shared, route: usize) -> Option<&Settings> {
    shared.config.routes.get(route)?.shadow.as_ref()
}

fn count(shared: &Shared, route: usize, v: Verdict) {
    if let Some(Some(s)) = shared.shadows.stats.get(route) {
        if let Some(m) = s.result(v) {
            counters::count(&shared.counters, *m);
        }
    }
}

/// Counts a verdict; logs a mismatch (at most one line per route and
/// second in this worker).
fn finish(shared: &Shared, f: Option<Finished>) {
    let Some(f) = f else {
        return;
    };
    count(shared, f.route, f.verdict);
    if !f.verdict.is_mismatch() {
        return;
    }
    let Some(route) = shared.config.routes.get(f.route) else {
        return;
    };
    let held = shared
        .shadows
        .logs
        .borrow_mut()
        .get_mut(f.route)
        .and_then(|l| l.allow(host::now_ms()));
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
                shared.config.cluster(route, f.primary),
                shared.config.cluster(route, other),
                held
            )
        );
    }
}

/// Whether this request is drawn (`basis_points` of the draws).
fn draw(basis_points: u16) -> bool {
    SAMPLER.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.get_or_insert_with(|| {
            let t = hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            Sampler::new(t)
        });
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

/// Sends `call` from the root context (see the module doc); its token.
fn send(shared: &Shared, call: Call) -> Option<u32> {
    let root = shared.shadows.root.get()?;
    OUTBOX.with(|o| *o.borrow_mut() = Some(call));
    SENT.with(|s| s.set(None));
    // SAFETY: the SDK's own exported entry point, called as the host would
    // call it, on a root context that exists (`root` is cleared when that
    // root is dropped); it borrows the SDK's table of roots, which no HTTP
    // callback holds.
    unsafe { proxy_on_queue_ready(root, WAKE) };
    OUTBOX.with(|o| o.borrow_mut().take());
    SENT.with(Cell::take)
}

/// The root's side of [`send`]: called in `on_queue_ready(WAKE)`, with the
/// root as the SDK's active context.
pub fn send_outbox() {
    let Some(call) = OUTBOX.with(|o| o.borrow_mut().take()) else {
        return;
    };
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?)))
        .collect();
    let token = hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        call.body.as_deref(),
        vec![],
        Duration::from_millis(u64::from(call.timeout_ms)),
    );
    SENT.with(|s| s.set(token.ok()));
}

impl Shift {
    /// After the decision: draws whether this request is shadowed and, if
    /// so, sends the shadow (or starts collecting the request body for it).
    /// `headers`: the request headers the request path read (read again
    /// here if that build read them one by one).
    pub(super) fn start_shadow(&mut self, headers: Vec<u8>, end_of_stream: bool) {
        let (Some(shared), Some(p)) = (&self.shared, &self.pending) else {
            return;
        };
        let Some(s) = settings(shared, p.route) else {
            return;
        };
        if !draw(s.basis_points) {
            return;
        }
        let (route, target) = (p.route, p.target);
        let shared = shared.clone();
        let bytes = if headers.is_empty() {
            host::request_headers()
        } else {
            headers
        };
        let map = HeaderMap::new(&bytes);
        let method = map.get(b":method").unwrap_or_default();
        if !s.shadows_method(method) {
            return;
        }
        if !shared.shadows.table.borrow().admits(route, s.max_in_flight) {
            count(&shared, route, Verdict::Skipped);
            return;
        }
        let Some(r) = shared.config.routes.get(route) else {
            return;
        };
        let other = match target {
            Target::Monolith => Target::Service,
            Target::Service => Target::Monolith,
        };
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = map
            .iter()
            .filter(|(k, _)| forwarded(&shared.config, k))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        headers.push((SHADOW_HEADER.into(), b"1".to_vec()));
        let call = Call {
            cluster: shared.config.cluster(r, other).to_string(),
            headers,
            body: None,
            timeout_ms: s.timeout_ms,
        };
        let request = shadow::request_line(method, map.get(b":path").unwrap_or_default());
        let mut primary = Primary {
            shared,
            route,
            target,
            phase: Phase::Collecting(call, request),
        };
        if end_of_stream {
            primary.dispatch();
        }
        self.shadow = Some(primary);
    }

    /// A request body chunk of a shadowed request: copied for the call
    /// (up to `max_body_bytes`; more: `skipped`).
    pub(super) fn shadow_request_body(&mut self, body_size: usize, end_of_stream: bool) {
        let Some(p) = &mut self.shadow else {
            return;
        };
        let Phase::Collecting(call, _) = &mut p.phase else {
            return;
        };
        let max = settings(&p.shared, p.route).map_or(0, |s| s.max_body_bytes as usize);
        let body = call.body.get_or_insert_with(Vec::new);
        if body.len() + body_size > max {
            // Dropping it counts `skipped`.
            self.shadow = None;
            return;
        }
        if body_size > 0 {
            if let Ok(Some(chunk)) =
                hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            {
                body.extend_from_slice(&chunk);
            }
        }
        if end_of_stream {
            p.dispatch();
        }
    }

    /// The primary's response headers: status and listed headers; the
    /// primary is done here unless its body is compared.
    pub(super) fn shadow_response_headers(&mut self, end_of_stream: bool) {
        let Some(p) = &mut self.shadow else {
            return;
        };
        let Phase::Answering { answer, digest, .. } = &mut p.phase else {
            return;
        };
        let Some(s) = p
            .shared
            .config
            .routes
            .get(p.route)
            .and_then(|r| r.shadow.as_ref())
        else {
            return;
        };
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
        };
        let status = header(":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let headers = s.compare_headers.iter().map(|h| header(h)).collect();
        *answer = Some(Answer {
            status,
            headers,
            body: None,
            body_len: 0,
        });
        if s.compare_body {
            *digest = Some(Digest::default());
        }
        if end_of_stream || !s.compare_body {
            p.primary_done();
        }
    }

    /// A response body chunk of a shadowed request: into the digest (the
    /// chunk is not kept), up to `max_body_bytes`.
    pub(super) fn shadow_response_body(&mut self, body_size: usize, end_of_stream: bool) {
        let Some(p) = &mut self.shadow else {
            return;
        };
        let Phase::Answering {
            digest: Some(d), ..
        } = &mut p.phase
        else {
            return;
        };
        let max = settings(&p.shared, p.route).map_or(0, |s| u64::from(s.max_body_bytes));
        let seen = d.len() + body_size as u64;
        if seen > max {
            p.too_large(seen);
            return;
        }
        if body_size > 0 {
            if let Ok(Some(chunk)) =
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
            {
                d.update(&chunk);
            }
        }
        if end_of_stream {
            p.primary_done();
        }
    }
}

impl Primary {
    /// Sends the collected call; counts `error` if the host refuses it.
    fn dispatch(&mut self) {
        let Phase::Collecting(call, request) = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        match send(&self.shared, call) {
            Some(token) => {
                self.shared.shadows.table.borrow_mut().start(
                    token,
                    self.route,
                    self.target,
                    request,
                    host::now_ms(),
                );
                self.phase = Phase::Answering {
                    token,
                    answer: None,
                    digest: None,
                };
            }
            None => count(&self.shared, self.route, Verdict::Error),
        }
    }

    fn primary_done(&mut self) {
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
        let f = self
            .shared
            .shadows
            .table
            .borrow_mut()
            .primary_done(token, PrimaryEnd::Answered(a));
        finish(&self.shared, f);
    }

    fn too_large(&mut self, body_len: u64) {
        let Phase::Answering { token, answer, .. } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        let status = answer.map_or(0, |a| a.status);
        let f = self
            .shared
            .shadows
            .table
            .borrow_mut()
            .primary_done(token, PrimaryEnd::TooLarge { status, body_len });
        finish(&self.shared, f);
    }
}

/// The root's `on_http_call_response`: what the shadow answered.
pub fn on_answer(shared: &Shared, token: u32, num_headers: usize, body_size: usize) {
    let Some((route, started)) = shared.shadows.table.borrow().awaiting(token) else {
        return;
    };
    let Some(s) = settings(shared, route) else {
        return;
    };
    let header = |name: &str| {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
    };
    let status = (num_headers > 0)
        .then(|| header(":status"))
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok());
    let elapsed = host::now_ms().saturating_sub(started);
    let timeout_body = (status == Some(504) && body_size == shadow::TIMEOUT_BODY.len())
        .then(|| {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
        })
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
                    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                Digest::of(&bytes)
            });
            ShadowEnd::Answered(Answer {
                status,
                headers: s.compare_headers.iter().map(|h| header(h)).collect(),
                body,
                body_len: body_size as u64,
            })
        }
    };
    let f = shared.shadows.table.borrow_mut().shadow_done(token, end);
    finish(shared, f);
}

/// The configuration is going (its root was deleted and its last request
/// is done): shadows never answered end as `error`.
pub fn abandon(shared: &Shared) {
    let gone = shared.shadows.table.borrow_mut().abandon();
    for f in gone {
        count(shared, f.route, f.verdict);
    }
}
