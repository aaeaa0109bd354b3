//! The `flow` fuzz target's driver (`tests/fuzz/fuzz_targets/flow.rs`):
//! from arbitrary bytes, a valid configuration and a run of host events
//! through the real flow on the fake host, checking invariants as it goes.
//!
//! Built for the unit tests (which replay `tests/fuzz/seeds/flow`) and
//! with the feature `fake-host`. The bytes are read as a little program:
//! a configuration, then operations until the bytes run out:
//!
//! - a new stream: request headers of any bytes (the flow's own headers,
//!   repeated headers, huge values), with or without end of stream;
//! - a request body chunk, request trailers (in Envoy's order per
//!   direction, the two directions interleaved in any order);
//! - response headers, body chunks, trailers of any status and content;
//! - the stream's end (a reset) at any point;
//! - the clock moving on or stepping back, a tick of every live
//!   configuration;
//! - a call's answer (well-formed, garbage, a failure, a token never
//!   issued or already answered), before or after its primary;
//! - a new configuration replacing the newest one (the old one serves
//!   its streams until they end, its answers are lost, as in proxy-wasm).
//!
//! Invariants checked:
//!
//! 1. Counters only grow: every increment is positive, never on a gauge
//!    or histogram, and no counter is set; gauges stay in range.
//! 2. Every request gets exactly one decision: a matched one publishes one
//!    reason and writes the target header once with one of its route's
//!    clusters, or is rejected by its breaker with one local reply; an
//!    unmatched one publishes none and only removes a client's target
//!    header. A client's target and override headers never survive.
//! 3. Requests, shadows and responses add up: every request is counted
//!    once (`rq_total`, `fast_fail` or `unmatched`); every decided
//!    response gives one latency sample and, on a `grpc` route, one count
//!    by gRPC code; every shadowed request ends in one result.
//! 4. A call goes to the side not chosen (a noise call: the monolith),
//!    carries the request's body and one `x-shift-shadow`, and never the
//!    filter's own or framing headers.
//! 5. The bytes a worker holds are the sum of what its streams hold, and
//!    the shadows admitted per route never exceed `max_in_flight`.
//! 6. Once every stream ended and every call answered, nothing is in
//!    flight, admitted or held; a configuration that goes holds nothing;
//!    once all have gone, every route gauge reads 0.
//! 7. After a tick, a breaker's state gauge reads the state in the store.
//!
//! To read an input (a crash artifact): run it with `FLOW_FUZZ_TRACE=1`,
//! which prints each configuration and operation on stderr.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use super::counters::Metric;
use super::fake::{Fake, FakeStream};
use super::shadow::{self, Call, NOISE_VALUE};
use super::tick::{self, Live};
use super::{Exchange, Host, Next, Plan, Worker};
use crate::breaker::Breaker;
use crate::config::{Config, Target};
use crate::shadow::{Verdict, MAX_HELD_BYTES, SHADOW_HEADER};
use crate::stats::{self, Kind};

/// 2027-01-15T08:00:00Z.
const T0: u64 = 1_800_000_000_000;
/// Operations per input, at most.
const MAX_OPS: usize = 256;
/// Streams per input, at most.
const MAX_STREAMS: usize = 48;

/// Runs one input; panics on a broken invariant.
pub fn run(data: &[u8]) {
    let mut b = Bytes { data, pos: 0 };
    let mut run = Run::new(&mut b);
    for _ in 0..MAX_OPS {
        if b.done() {
            break;
        }
        run.op(&mut b);
        run.check();
    }
    run.finish();
}

/// The input, read front to back; zeros once it runs out.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let v = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        v
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// One of `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }

    /// Up to `max` bytes of the input.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos += n;
        self.data[start..end].to_vec()
    }
}

// ---------------------------------------------------------------- config

/// A valid configuration, derived from the input.
fn config_json(b: &mut Bytes) -> String {
    let mut j = String::from(r#"{"monolith": "monolith", "hash_key": {"header": "x-user"}"#);
    if b.bool() {
        j.push_str(r#", "target_header": "x-t""#);
    }
    match b.below(3) {
        0 => {}
        1 => j.push_str(r#", "override": {"header": "x-shift-force", "secret": "s3cret"}"#),
        _ => j.push_str(r#", "override": {"header": "x-shift-force"}"#),
    }
    j.push_str(r#", "routes": ["#);
    let n = 1 + b.below(3);
    for i in 0..n {
        if i > 0 {
            j.push_str(", ");
        }
        route_json(b, i, &mut j);
    }
    j.push_str("]}");
    j
}

fn route_json(b: &mut Bytes, i: usize, j: &mut String) {
    // Names: a replacement may keep, rename or reorder routes.
    let name = b.pick(&["r0", "r1", "r2", "r3"]);
    let name = format!("{name}{i}");
    let matcher = b.pick(&[
        r#""prefix": "/a/""#,
        r#""prefix": "/""#,
        r#""path": "/a""#,
        r#""prefix": "/pkg.Svc/""#,
        r#""prefix": "/a/", "methods": ["GET", "POST"]"#,
    ]);
    let percent = match b.below(5) {
        0 => "0".to_string(),
        1 => "100".to_string(),
        2 => "33.33".to_string(),
        _ => (b.below(101)).to_string(),
    };
    let _ = write!(
        j,
        r#"{{"name": "{name}", {matcher}, "service": "svc{i}", "percent": {percent}"#
    );
    match b.below(4) {
        0 => j.push_str(r#", "hash_key": {"cookie": "sid"}"#),
        1 => j.push_str(r#", "hash_key": {"header": "x-key"}"#),
        _ => {}
    }
    if b.below(4) == 0 {
        j.push_str(
            r#", "ramp": [{"at": "2027-01-15T08:00:05Z", "percent": 50}, {"at": "2027-01-15T09:00:00Z", "percent": 100}]"#,
        );
    }
    if b.bool() {
        let base = 1 + u32::from(b.u16()) % 3000;
        let _ = write!(
            j,
            r#", "outlier": {{"consecutive_failures": {}, "base_ejection_ms": {base}, "max_ejection_ms": {}, "half_open_probes": {}, "on_open": "{}", "failure_statuses": [500, 503]"#,
            b.below(4),
            base * (1 + b.below(4) as u32),
            1 + b.below(3),
            b.pick(&["fallback", "reject"]),
        );
        if b.bool() {
            let _ = write!(
                j,
                r#", "failure_rate": {{"threshold_percent": {}, "min_requests": {}, "window_ms": {}}}"#,
                1 + b.below(100),
                1 + b.below(5),
                10 + u32::from(b.u16()) % 5000,
            );
        }
        j.push('}');
    }
    if b.below(3) == 0 {
        let _ = write!(
            j,
            r#", "guard": {{"window_s": 5, "min_requests": {}, "confidence": {}, "max_error_rate_increase": {}"#,
            1 + b.below(5),
            b.pick(&["0.5", "0.95"]),
            b.pick(&["0", "0.02"]),
        );
        if b.bool() {
            let _ = write!(j, r#", "max_latency_ratio": {}"#, b.pick(&["1.1", "2.0"]));
        }
        j.push('}');
    }
    if b.bool() {
        let body = b.pick(&["false", "true", r#""json""#]);
        let _ = write!(
            j,
            r#", "shadow": {{"percent": {}, "methods": {}, "compare_headers": {}, "compare_body": {body}, "noise_percent": {}, "timeout_ms": {}, "max_body_bytes": {}, "max_in_flight": {}, "log_values": {}"#,
            b.pick(&["100", "100", "50", "0"]),
            b.pick(&[r#"["GET", "HEAD"]"#, r#"["GET", "POST"]"#, r#"["POST"]"#]),
            b.pick(&["[]", r#"["x-v"]"#]),
            b.pick(&["0", "100", "50"]),
            1 + u32::from(b.u16()) % 2000,
            b.pick(&["0", "8", "64", "65536"]),
            1 + b.below(4),
            b.bool(),
        );
        if body.starts_with('"') && b.bool() {
            j.push_str(r#", "ignore_fields": ["/id", "/items/*/etag"]"#);
        }
        j.push('}');
    }
    match b.below(4) {
        0 => j.push_str(r#", "grpc": {}"#),
        1 => j.push_str(r#", "grpc": {"failure_codes": ["UNAVAILABLE"]}"#),
        2 => j.push_str(r#", "grpc": {"failure_codes": []}"#),
        _ => {}
    }
    j.push('}');
}

// ---------------------------------------------------------------- host

/// The fake host, with the metric calls checked (invariant 1) and their
/// values kept by name.
struct Checked {
    fake: Fake,
    /// Kind and name, by id.
    defined: RefCell<HashMap<u32, (Kind, String)>>,
    /// Counter sums and histogram sample counts, by name.
    totals: RefCell<HashMap<String, u64>>,
    /// Gauge values, by name.
    gauges: RefCell<HashMap<String, u64>>,
}

impl Checked {
    fn total(&self, matches: impl Fn(&str) -> bool) -> u64 {
        self.totals
            .borrow()
            .iter()
            .filter(|(n, _)| matches(n))
            .map(|(_, v)| v)
            .sum()
    }
}

impl Host for Checked {
    fn now(&self) -> std::time::Duration {
        self.fake.now()
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        let id = self.fake.define_metric(kind, name)?;
        self.defined
            .borrow_mut()
            .insert(id, (kind, name.to_string()));
        Some(id)
    }

    fn record_metric(&self, id: u32, value: u64) {
        let (kind, name) = self.defined.borrow().get(&id).cloned().expect("defined");
        match kind {
            Kind::Counter => panic!("record_metric on counter {name}"),
            Kind::Histogram => *self.totals.borrow_mut().entry(name).or_default() += 1,
            Kind::Gauge => {
                let max =
                    if name.ends_with(".effective_percent_bp") || name.contains(".evidence_bp.") {
                        10_000
                    } else if name.ends_with(".breaker.state") {
                        2
                    } else if name.ends_with(".guard.tripped") {
                        1
                    } else {
                        u64::MAX
                    };
                assert!(value <= max, "gauge {name} = {value}");
                self.gauges.borrow_mut().insert(name, value);
            }
        }
        self.fake.record_metric(id, value);
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        let (kind, name) = self.defined.borrow().get(&id).cloned().expect("defined");
        assert_eq!(kind, Kind::Counter, "increment_metric on {name}");
        // proxy-wasm refuses 0 (BadArgument) and the SDK then panics.
        assert!(delta > 0, "increment_metric({name}, 0)");
        assert!(delta < 1 << 32, "{name} += {delta}: a wrapped delta");
        let mut t = self.totals.borrow_mut();
        let v = t.entry(name).or_default();
        *v = v.checked_add(delta).expect("no overflow");
        drop(t);
        self.fake.increment_metric(id, delta);
    }

    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.fake.store_get(key)
    }

    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        self.fake.store_set(key, value, cas)
    }

    fn send_call(&self, call: Call) -> Option<u32> {
        self.fake.send_call(call)
    }

    fn call_response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.fake.call_response_header(name)
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.fake.call_response_body(size)
    }

    fn call_response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.fake.call_response_trailer(name)
    }
}

// ---------------------------------------------------------------- run

/// One configuration in the worker.
struct Cfg {
    id: u32,
    plan: Plan,
    worker: Worker,
    /// Its root context is there: ticks, answers delivered.
    root: bool,
    /// [`tick::end`] ran.
    ended: bool,
}

/// One stream.
struct St {
    cfg: usize,
    /// The request's route and side, if decided.
    decided: Option<(usize, Target)>,
    /// The request body bytes the host could hand over (a chunk whose
    /// size the host misstates cannot be read).
    body: Vec<u8>,
    stream: FakeStream,
    exchange: Exchange,
    /// The request / response ended (end of stream seen).
    request_done: bool,
    response_started: bool,
    response_done: bool,
    /// A local reply was sent.
    stopped: bool,
    ended: bool,
}

/// A call out.
struct Out {
    cfg: usize,
    token: u32,
    answered: bool,
}

struct Run {
    host: Checked,
    live: Live,
    cfgs: Vec<Cfg>,
    streams: Vec<St>,
    calls: Vec<Out>,
    // Expected totals (invariant 3).
    requests: u64,
    samples: u64,
    grpc_codes: u64,
    verdicts: u64,
    /// `FLOW_FUZZ_TRACE` set: each operation on stderr.
    trace: bool,
}

/// A request header: a name the flow reads (or any), a value of any bytes.
fn request_headers(b: &mut Bytes, plan: &Plan) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut add = |k: &str, v: Vec<u8>| h.push((k.as_bytes().to_vec(), v));
    let method = match b.below(8) {
        0 => None,
        1 => Some(b.bytes(8)),
        n => Some([&b"GET"[..], b"POST", b"HEAD", b"PUT", b"OPTIONS", b"GET"][n - 2].to_vec()),
    };
    if let Some(m) = method {
        add(":method", m);
    }
    let path: Option<Vec<u8>> = match b.below(9) {
        0 => None,
        1 => Some(b.bytes(16)),
        n => Some(
            [
                &b"/a/1"[..],
                b"/a",
                b"/",
                b"/pkg.Svc/Get",
                b"/a/1?q=/b",
                b"/b",
                b"/a/",
            ][n - 2]
                .to_vec(),
        ),
    };
    if let Some(p) = path {
        add(":path", p);
    }
    if b.below(4) != 0 {
        add(":authority", b"example".to_vec());
    }
    match b.below(4) {
        0 => {}
        1 => add("x-user", Vec::new()),
        _ => add("x-user", b.bytes(12)),
    }
    if b.bool() {
        add("x-key", b.bytes(6));
    }
    if b.bool() {
        let mut c = b"a=1; sid=".to_vec();
        c.extend(b.bytes(8));
        add("cookie", c);
    }
    match b.below(5) {
        0 => add("content-type", b"application/grpc".to_vec()),
        1 => add("content-type", b"application/grpc-web".to_vec()),
        2 => add("content-type", b"application/json".to_vec()),
        _ => {}
    }
    if b.below(4) == 0 {
        add(&plan.config.target_header, b.bytes(8));
    }
    if b.below(4) == 0 {
        let v = b.pick(&[&b"service"[..], b"monolith", b"svc0", b"\xff"]);
        add("x-shift-force", v.to_vec());
    }
    if b.below(4) == 0 {
        let v = b.pick(&[&b"s3cret"[..], b"wrong", b""]);
        add("x-shift-force-secret", v.to_vec());
    }
    if b.below(8) == 0 {
        add("upgrade", b"websocket".to_vec());
    }
    if b.below(8) == 0 {
        add(SHADOW_HEADER, b"1".to_vec());
    }
    if b.below(8) == 0 {
        add("content-length", b"5".to_vec());
    }
    for _ in 0..b.below(4) {
        let name = match b.below(3) {
            0 => b
                .bytes(8)
                .into_iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            _ => b
                .pick(&[&b"accept"[..], b"x-v", b"te", b"connection"])
                .to_vec(),
        };
        let value = if b.below(16) == 0 {
            vec![b'v'; 70_000]
        } else {
            b.bytes(16)
        };
        h.push((name, value));
    }
    // A repeated header, with another value after the first.
    if !h.is_empty() && b.below(3) == 0 {
        let i = b.below(h.len());
        let k = h[i].0.clone();
        h.push((k, b.bytes(8)));
    }
    h
}

/// A body chunk: JSON, a gRPC message, or any bytes.
fn body(b: &mut Bytes) -> Vec<u8> {
    match b.below(6) {
        0 => Vec::new(),
        1 => format!(
            r#"{{"id": "{}", "v": {}, "items": [{{"etag": "e{}"}}]}}"#,
            b.u8(),
            b.below(3),
            b.u8()
        )
        .into_bytes(),
        2 => {
            let m = b.bytes(12);
            let mut v = vec![0];
            v.extend((m.len() as u32).to_be_bytes());
            v.extend(m);
            v
        }
        3 => vec![b'x'; usize::from(b.u16()) * 4],
        _ => b.bytes(40),
    }
}

fn response_headers(b: &mut Bytes) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let status = match b.below(10) {
        0 => None,
        1 => Some(b.bytes(4)),
        n => Some(
            [
                &b"200"[..],
                b"200",
                b"500",
                b"503",
                b"504",
                b"101",
                b"404",
                b"999",
            ][n - 2]
                .to_vec(),
        ),
    };
    if let Some(s) = status {
        h.push((b":status".to_vec(), s));
    }
    if b.bool() {
        h.push((b"x-v".to_vec(), b.bytes(2)));
    }
    match b.below(4) {
        0 => h.push((b"content-type".to_vec(), b"application/json".to_vec())),
        1 => h.push((b"content-type".to_vec(), b"application/grpc".to_vec())),
        _ => {}
    }
    if b.below(8) == 0 {
        h.push((b"content-encoding".to_vec(), b"gzip".to_vec()));
    }
    match b.below(5) {
        0 => h.push((
            b"grpc-status".to_vec(),
            b.pick(&[&b"0"[..], b"14", b"13"]).to_vec(),
        )),
        1 => h.push((b"grpc-status".to_vec(), b.bytes(3))),
        _ => {}
    }
    if b.below(8) == 0 {
        h.push((b"grpc-message".to_vec(), b"no healthy upstream".to_vec()));
    }
    h
}

fn trailers(b: &mut Bytes) -> Vec<(Vec<u8>, Vec<u8>)> {
    match b.below(4) {
        0 => Vec::new(),
        1 => vec![(b"grpc-status".to_vec(), b.bytes(3))],
        _ => vec![(
            b"grpc-status".to_vec(),
            b.pick(&[&b"0"[..], b"14", b"4"]).to_vec(),
        )],
    }
}

/// The shadow results counted in `c`'s worker and not flushed yet.
fn results(c: &Cfg) -> u64 {
    c.plan
        .shadows
        .iter()
        .flatten()
        .flat_map(|s| Verdict::ALL.map(|v| s.result(v)))
        .filter_map(|m| match m {
            Some(Metric::Counter(id)) => Some(c.worker.counters.pending(*id)),
            _ => None,
        })
        .sum()
}

impl Run {
    fn new(b: &mut Bytes) -> Run {
        let host = Checked {
            fake: Fake::new(T0),
            defined: RefCell::default(),
            totals: RefCell::default(),
            gauges: RefCell::default(),
        };
        let mut run = Run {
            host,
            live: Live::default(),
            cfgs: Vec::new(),
            streams: Vec::new(),
            calls: Vec::new(),
            requests: 0,
            samples: 0,
            grpc_codes: 0,
            verdicts: 0,
            trace: std::env::var_os("FLOW_FUZZ_TRACE").is_some(),
        };
        // The noise learned in this thread by an earlier input is forgotten.
        let empty = Config::from_json(br#"{"monolith": "m"}"#).expect("valid");
        drop(shadow::Shadows::new(&empty));
        run.configure(b);
        run
    }

    /// A new configuration, the newest; the one it replaces loses its root.
    fn configure(&mut self, b: &mut Bytes) {
        let json = config_json(b);
        if self.trace {
            eprintln!("config {json}");
        }
        let config = match Config::from_json(json.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("generated an invalid config {json}: {e:?}"),
        };
        let id = self.cfgs.len() as u32 + 1;
        let (plan, worker) = tick::start(&self.host, &mut self.live, id, "p", "", config);
        let old = self.cfgs.iter().rposition(|c| c.root);
        self.cfgs.push(Cfg {
            id,
            plan,
            worker,
            root: true,
            ended: false,
        });
        if let Some(i) = old {
            self.cfgs[i].root = false;
            self.live.leave(&self.host, self.cfgs[i].id);
            self.maybe_end(i);
        }
    }

    /// Configuration `i` goes once its root is gone and its last stream
    /// ended (proxy-wasm drops it then).
    fn maybe_end(&mut self, i: usize) {
        let c = &self.cfgs[i];
        if c.root || c.ended || self.streams.iter().any(|s| s.cfg == i && !s.ended) {
            return;
        }
        tick::end(&self.host, &c.plan, &c.worker);
        // As the proxy-wasm host, which drops it after its root left.
        self.live.gone(&self.host, &c.plan);
        assert_eq!(c.worker.shadows.in_flight(), 0, "in flight after the end");
        assert_eq!(c.worker.shadows.held(), 0, "held after the end");
        for r in 0..c.plan.config.routes.len() {
            assert_eq!(c.worker.shadows.admitted(r), 0, "admitted after the end");
        }
        self.cfgs[i].ended = true;
    }

    fn newest(&self) -> usize {
        self.cfgs.len() - 1
    }

    /// A stream still going, by the input.
    fn stream(&mut self, b: &mut Bytes) -> Option<usize> {
        let open: Vec<usize> = (0..self.streams.len())
            .filter(|&i| !self.streams[i].ended)
            .collect();
        (!open.is_empty()).then(|| open[b.below(open.len())])
    }

    fn op(&mut self, b: &mut Bytes) {
        let op = b.below(16);
        if self.trace {
            eprintln!(
                "op {op} at byte {}; streams {}, calls {}, verdicts owed {}",
                b.pos,
                self.streams.len(),
                self.calls.len(),
                self.verdicts
            );
        }
        match op {
            0..=2 => self.new_stream(b),
            3 | 4 => self.request_body(b),
            5 => self.request_trailers(b),
            6 | 7 => self.response_headers(b),
            8 => self.response_body(b),
            9 => self.response_trailers(b),
            10 => {
                if let Some(i) = self.stream(b) {
                    self.end(i);
                }
            }
            11 => {
                let ms = match b.below(6) {
                    0 => 1,
                    1 => 1000,
                    2 => 5000,
                    3 => 3_600_000,
                    _ => u64::from(b.u16()),
                };
                self.host.fake.advance(ms);
            }
            12 => self.host.fake.step_back(u64::from(b.u16())),
            13 => self.tick(),
            14 => self.answer(b),
            _ => {
                if b.below(4) == 0 {
                    self.configure(b);
                } else {
                    self.answer(b);
                }
            }
        }
    }

    /// A tick of every live configuration; then the breaker state gauges
    /// of the newest one read the state in the store.
    fn tick(&self) {
        for c in self.cfgs.iter().filter(|c| c.root) {
            tick::tick(&self.host, &c.plan, &c.worker, &self.live, c.id);
        }
        let c = &self.cfgs[self.newest()];
        for (route, slot) in c.plan.config.routes.iter().zip(&c.plan.breakers) {
            let Some(slot) = slot else { continue };
            let (bytes, _) = self.host.fake.store_get(slot.key()).expect("readable");
            let stored = Breaker::decode(&bytes).unwrap_or_default().state() as u64;
            let name = format!("traffic_shift.route.{}.breaker.state", route.name);
            let gauge = self.host.gauges.borrow().get(&name).copied().unwrap_or(0);
            assert_eq!(gauge, stored, "{name} after a tick");
        }
    }

    /// Calls sent since `before`, by configuration `cfg`: checked
    /// (invariant 4) and remembered.
    fn sent(&mut self, cfg: usize, stream: usize, before: usize) {
        let calls = self.host.fake.calls.borrow();
        let plan = &self.cfgs[cfg].plan;
        for (token, call) in calls.iter().skip(before) {
            let config = &plan.config;
            let mut own = vec![config.target_header.as_bytes()];
            if let Some(o) = &config.override_header {
                own.push(o.header.as_bytes());
                own.push(o.secret_header.as_bytes());
            }
            for (k, _) in &call.headers {
                assert!(!own.contains(&k.as_slice()), "call carries {k:?}");
                assert!(
                    ![
                        &b"content-length"[..],
                        b"transfer-encoding",
                        b"connection",
                        b"te",
                        b"upgrade"
                    ]
                    .contains(&k.as_slice()),
                    "call carries {k:?}"
                );
            }
            let marks: Vec<&Vec<u8>> = call
                .headers
                .iter()
                .filter(|(k, _)| k == SHADOW_HEADER.as_bytes())
                .map(|(_, v)| v)
                .collect();
            assert_eq!(marks.len(), 1, "one {SHADOW_HEADER}");
            let decided = self.streams[stream].decided;
            let (route, target) = decided.expect("a shadow of a decided request");
            let route = &config.routes[route];
            let expected = if marks[0] == NOISE_VALUE {
                config.monolith.as_str()
            } else {
                assert_eq!(marks[0], b"1");
                let other = match target {
                    Target::Monolith => Target::Service,
                    Target::Service => Target::Monolith,
                };
                config.cluster(route, other)
            };
            assert_eq!(call.cluster, expected);
            let body = call.body.as_deref().unwrap_or_default();
            assert!(
                body == self.streams[stream].body,
                "the call carries the request body"
            );
            self.calls.push(Out {
                cfg,
                token: *token,
                answered: false,
            });
        }
    }

    fn new_stream(&mut self, b: &mut Bytes) {
        if self.streams.len() >= MAX_STREAMS {
            return;
        }
        let cfg = self.newest();
        let headers = request_headers(b, &self.cfgs[cfg].plan);
        let end_of_stream = b.bool();
        let stream = FakeStream::with_bytes(headers.clone());
        let mut exchange = Exchange::default();
        let before = self.host.fake.calls.borrow().len();
        let c = &self.cfgs[cfg];
        let results_before = results(c);
        let next =
            exchange.on_request_headers(&self.host, &stream, &c.plan, &c.worker, end_of_stream);
        self.requests += 1;
        if self.trace {
            eprintln!(
                "  stream {}: {next:?} {:?}, shadowed {}, results {}, eos {end_of_stream}",
                self.streams.len(),
                exchange.pending,
                exchange.shadow.is_some(),
                results(c) - results_before
            );
        }
        // Settled at once (`skipped`: max_in_flight, a gRPC request
        // without its one message), or to come.
        self.verdicts += results(c) - results_before;
        if exchange.shadow.as_ref().is_some_and(|p| p.open()) {
            self.verdicts += 1;
        }
        decision_checks(&c.plan, &headers, &stream, &exchange, next);
        let decided = exchange.pending.as_ref().map(|p| (p.route, p.target));
        self.streams.push(St {
            cfg,
            decided,
            body: Vec::new(),
            stream,
            exchange,
            request_done: end_of_stream || next == Next::Stop,
            response_started: false,
            response_done: false,
            stopped: next == Next::Stop,
            ended: false,
        });
        let i = self.streams.len() - 1;
        self.sent(cfg, i, before);
    }

    fn request_body(&mut self, b: &mut Bytes) {
        let Some(i) = self.stream(b) else { return };
        let chunk = body(b);
        let garbage = b.below(16) == 0;
        let end = b.bool();
        let s = &mut self.streams[i];
        if s.request_done {
            return;
        }
        let size = chunk.len() + usize::from(garbage);
        if !garbage {
            s.body.extend_from_slice(&chunk);
        }
        *s.stream.chunk.borrow_mut() = chunk;
        let c = &self.cfgs[s.cfg];
        let before = self.host.fake.calls.borrow().len();
        s.exchange
            .on_request_body(&self.host, &s.stream, &c.plan, &c.worker, size, end);
        s.request_done = end;
        let cfg = s.cfg;
        self.sent(cfg, i, before);
    }

    fn request_trailers(&mut self, b: &mut Bytes) {
        let Some(i) = self.stream(b) else { return };
        let s = &mut self.streams[i];
        if s.request_done {
            return;
        }
        let c = &self.cfgs[s.cfg];
        let before = self.host.fake.calls.borrow().len();
        s.exchange
            .on_request_trailers(&self.host, &c.plan, &c.worker);
        s.request_done = true;
        let cfg = s.cfg;
        self.sent(cfg, i, before);
    }

    fn response_headers(&mut self, b: &mut Bytes) {
        let Some(i) = self.stream(b) else { return };
        let mut headers = response_headers(b);
        let flags = if b.below(4) == 0 { 0x20 } else { 0 };
        let end = b.bool();
        let s = &mut self.streams[i];
        if s.response_started {
            return;
        }
        if s.stopped {
            // The local reply runs the response callbacks too.
            headers = vec![(b":status".to_vec(), b"503".to_vec())];
        }
        s.stream.respond_bytes(headers);
        s.stream.flags.set(flags);
        let c = &self.cfgs[s.cfg];
        if let Some(p) = &s.exchange.pending {
            self.samples += 1;
            let grpc_route = c.plan.config.routes[p.route].grpc.is_some();
            if p.grpc && grpc_route {
                self.grpc_codes += 1;
            }
        }
        s.exchange
            .on_response_headers(&self.host, &s.stream, &c.plan, &c.worker, end);
        assert!(
            s.exchange.pending.is_none(),
            "the response took the decision"
        );
        s.response_started = true;
        s.response_done = end;
    }

    fn response_body(&mut self, b: &mut Bytes) {
        let Some(i) = self.stream(b) else { return };
        let chunk = body(b);
        let garbage = b.below(16) == 0;
        let end = b.bool();
        let s = &mut self.streams[i];
        if !s.response_started || s.response_done {
            return;
        }
        let size = chunk.len() + usize::from(garbage);
        *s.stream.chunk.borrow_mut() = chunk;
        let c = &self.cfgs[s.cfg];
        s.exchange
            .on_response_body(&self.host, &s.stream, &c.plan, &c.worker, size, end);
        s.response_done = end;
    }

    fn response_trailers(&mut self, b: &mut Bytes) {
        let Some(i) = self.stream(b) else { return };
        let t = trailers(b);
        let s = &mut self.streams[i];
        if !s.response_started || s.response_done {
            return;
        }
        s.stream.trail_bytes(t);
        let c = &self.cfgs[s.cfg];
        s.exchange
            .on_response_trailers(&self.host, &s.stream, &c.plan, &c.worker);
        s.response_done = true;
    }

    fn end(&mut self, i: usize) {
        let s = &mut self.streams[i];
        let c = &self.cfgs[s.cfg];
        s.exchange.end(&self.host, &c.plan, &c.worker);
        assert!(s.exchange.shadow.is_none(), "the end settles the shadow");
        s.ended = true;
        let cfg = s.cfg;
        self.maybe_end(cfg);
    }

    /// A call's answer (or a stray one): headers, body, trailers of any
    /// shape; delivered if its configuration's root is there.
    fn answer(&mut self, b: &mut Bytes) {
        let k = b.below(self.calls.len() + 2);
        let (cfg, token) = match self.calls.get(k) {
            Some(o) => (o.cfg, o.token),
            None => (self.newest(), 1000 + k as u32),
        };
        let failed = b.below(6) == 0;
        let mut headers = response_headers(b);
        let mut body = match b.below(6) {
            0 => b"no healthy upstream".to_vec(),
            1 => crate::shadow::TIMEOUT_BODY.to_vec(),
            _ => body(b),
        };
        if body == crate::shadow::TIMEOUT_BODY {
            headers.insert(0, (b":status".to_vec(), b"504".to_vec()));
        } else if body == b"no healthy upstream" {
            headers.insert(0, (b":status".to_vec(), b"503".to_vec()));
        }
        let size = body.len() + usize::from(b.below(16) == 0);
        if b.below(8) == 0 {
            body.clear();
        }
        let num_headers = if failed { 0 } else { headers.len().max(1) };
        self.host.fake.answer_bytes(headers, body);
        self.host.fake.answer_trailers_bytes(trailers(b));
        if let Some(o) = self.calls.get_mut(k) {
            o.answered = true;
        }
        self.deliver(cfg, token, num_headers, size);
    }

    fn deliver(&self, cfg: usize, token: u32, num_headers: usize, size: usize) {
        let c = &self.cfgs[cfg];
        if c.root {
            shadow::on_answer(&self.host, &c.plan, &c.worker, token, num_headers, size);
        }
    }

    /// Invariant 5, after every operation.
    fn check(&self) {
        for (i, c) in self.cfgs.iter().enumerate().filter(|(_, c)| !c.ended) {
            let held: u64 = self
                .streams
                .iter()
                .filter(|s| s.cfg == i)
                .filter_map(|s| s.exchange.shadow.as_ref())
                .map(|p| p.held())
                .sum();
            assert_eq!(c.worker.shadows.held(), held, "held bytes add up");
            assert!(held <= MAX_HELD_BYTES);
            for (r, route) in c.plan.config.routes.iter().enumerate() {
                let max = route.shadow.as_ref().map_or(0, |s| s.max_in_flight);
                assert!(c.worker.shadows.admitted(r) <= max, "max_in_flight");
            }
        }
    }

    /// Every stream ends, every call is answered; then the worker holds
    /// nothing, every configuration goes, and the totals add up.
    fn finish(mut self) {
        for i in 0..self.streams.len() {
            if !self.streams[i].ended {
                self.end(i);
            }
        }
        for k in 0..self.calls.len() {
            if !self.calls[k].answered {
                self.calls[k].answered = true;
                self.host.fake.answer(&[(":status", "200")], b"");
                self.host.fake.answer_trailers(&[]);
                let (cfg, token) = (self.calls[k].cfg, self.calls[k].token);
                self.deliver(cfg, token, 1, 0);
            }
        }
        self.check();
        for c in self.cfgs.iter().filter(|c| c.root) {
            let sh = &c.worker.shadows;
            assert_eq!(sh.in_flight(), 0, "in flight once all is answered");
            assert_eq!(sh.held(), 0, "held once all ended");
            for r in 0..c.plan.config.routes.len() {
                assert_eq!(sh.admitted(r), 0, "admitted once all is answered");
            }
        }
        for i in 0..self.cfgs.len() {
            if self.cfgs[i].root {
                self.cfgs[i].root = false;
                let id = self.cfgs[i].id;
                self.live.leave(&self.host, id);
                self.maybe_end(i);
            }
            assert!(self.cfgs[i].ended);
        }
        let h = &self.host;
        // Every configuration left: no gauge of a route is left set.
        let keys = stats::breaker_keys_name();
        for (name, v) in h.gauges.borrow().iter() {
            assert!(*name == keys || *v == 0, "{name} = {v} once all left");
        }
        let unmatched = stats::unmatched_name();
        let counted = h.total(|n| {
            n.ends_with(".rq_total") || n.ends_with(".breaker.fast_fail") || *n == unmatched
        });
        assert_eq!(counted, self.requests, "every request counted once");
        let samples = h.total(|n| n.ends_with(".upstream_rq_time"));
        assert_eq!(samples, self.samples, "one latency sample per response");
        let codes = h.total(|n| n.contains(".grpc_rq.code."));
        assert_eq!(codes, self.grpc_codes, "one gRPC code per response");
        let verdicts = h.total(|n| n.contains(".shadow.result."));
        assert_eq!(verdicts, self.verdicts, "one result per shadowed request");
    }
}

/// Invariant 2 for one request.
fn decision_checks(
    plan: &Plan,
    headers: &[(Vec<u8>, Vec<u8>)],
    stream: &FakeStream,
    exchange: &Exchange,
    next: Next,
) {
    let config = &plan.config;
    let has = |name: &str| headers.iter().any(|(k, _)| k == name.as_bytes());
    let writes = stream.writes.borrow();
    let of = |name: &str| -> Vec<Option<String>> {
        writes
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let target = of(&config.target_header);
    let reply = stream.reply.borrow();
    if let Some(o) = &config.override_header {
        if has(&o.header) {
            assert_eq!(of(&o.header), [None], "the override header is removed");
        }
        if o.secret.is_some() && has(&o.secret_header) {
            assert_eq!(of(&o.secret_header), [None], "the secret is removed");
        }
    }
    match (next, &exchange.pending) {
        (Next::Stop, _) => {
            assert!(exchange.pending.is_none());
            assert_eq!(stream.reasons.get(), 1);
            assert_eq!(reply.as_ref().map(|r| r.0), Some(503));
            assert!(target.is_empty(), "{target:?}");
            assert!(exchange.shadow.is_none());
        }
        (Next::Continue, Some(p)) => {
            assert_eq!(stream.reasons.get(), 1, "one reason");
            assert!(reply.is_none());
            let route = &config.routes[p.route];
            let cluster = config.cluster(route, p.target).to_string();
            assert_eq!(target, [Some(cluster)], "one target written");
        }
        (Next::Continue, None) => {
            assert_eq!(stream.reasons.get(), 0);
            assert!(reply.is_none());
            let expected: &[Option<String>] = if has(&config.target_header) {
                &[None]
            } else {
                &[]
            };
            assert_eq!(target, expected, "unmatched: only a removal");
            assert!(exchange.shadow.is_none());
        }
    }
}
