//! Shadow compare: a share of a route's requests is also sent to the side
//! the split did not choose, and the two answers are compared. No host
//! types here; the glue (`filter/shadow.rs`) sends the calls and feeds this
//! module what each side answered.
//!
//! A shadowed request ends in exactly one [`Verdict`], whichever side
//! finishes first. Its life in the [`Table`] (one per configuration and
//! worker), keyed by the call's token:
//!
//! 1. [`Table::start`]: the shadow call is out; the primary is running.
//! 2. The primary ends first ([`Table::primary_done`]): its summary (status,
//!    listed headers, body digest) waits in the entry for the shadow.
//! 3. The shadow answers first ([`Table::shadow_done`]): its summary waits
//!    for the primary.
//! 4. The second of the two ends the entry: [`judge`] gives the verdict and
//!    the entry goes.
//! 5. The primary never completes (client reset, the stream is destroyed
//!    before its last body chunk): [`PrimaryEnd::Incomplete`], `skipped`
//!    once the shadow is back too.
//! 6. A configuration's table dropped with shadows still out (Envoy cancels
//!    the calls of a deleted root context): [`Table::abandon`], `error`.
//!
//! The in-flight count of a route is the shadows sent and not answered,
//! whatever the primary does: it bounds the calls, not the entries (an
//! entry whose shadow came back waits at most as long as its primary).

use std::collections::HashMap;

use crate::compare::{self, Pointer};
use crate::config::json::Json;
use crate::decision::Target;

/// Request header every shadow request carries (`x-shift-shadow: 1`).
pub const SHADOW_HEADER: &str = "x-shift-shadow";

/// Methods shadowed when `methods` is left out: those without side effects.
pub const DEFAULT_METHODS: [&str; 2] = ["GET", "HEAD"];
pub const DEFAULT_TIMEOUT_MS: u32 = 1_000;
pub const DEFAULT_MAX_BODY_BYTES: u32 = 65_536;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// Bytes a worker holds at once for shadowed requests (request bodies
/// being collected for their call, response bodies buffered to be parsed),
/// all routes together; a chunk beyond: that request is `skipped`.
pub const MAX_HELD_BYTES: u64 = 32 * 1024 * 1024;

/// How bodies are compared (`compare_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCompare {
    /// `false` (default): bodies are not compared.
    Off,
    /// `true`: a digest of the bytes.
    Bytes,
    /// `"json"`: JSON bodies as values, field by field (others as bytes).
    Json,
}

/// At most one mismatch log line per route and worker in this interval.
pub const LOG_INTERVAL_MS: u64 = 1_000;

/// A route's validated `shadow` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Share of the route's requests shadowed, in basis points.
    pub basis_points: u16,
    /// Upper case; a request whose method is not listed is never shadowed.
    pub methods: Vec<String>,
    /// Response headers compared (lowercase), in order.
    pub compare_headers: Vec<String>,
    pub compare_body: BodyCompare,
    /// With `"json"`: fields never compared.
    pub ignore_fields: Vec<Pointer>,
    /// Share of the shadowed requests (of methods without side effects)
    /// that also get a noise call to the monolith, in basis points.
    pub noise_basis_points: u16,
    /// Log lines show the differing values (truncated).
    pub log_values: bool,
    pub timeout_ms: u32,
    /// Largest body compared (either side); a larger one: `skipped`. Also
    /// the largest request body copied into a shadow request.
    pub max_body_bytes: u32,
    /// Shadows out at once per worker; beyond: `skipped`.
    pub max_in_flight: u32,
}

impl Settings {
    /// Whether requests with this method may be shadowed.
    pub fn shadows_method(&self, method: &[u8]) -> bool {
        self.methods.iter().any(|m| m.as_bytes() == method)
    }

    /// Whether a listed method has side effects (anything but GET, HEAD,
    /// OPTIONS, TRACE): its shadow repeats a write.
    pub fn repeats_writes(&self) -> bool {
        self.methods.iter().any(|m| !is_safe(m.as_bytes()))
    }
}

/// A method without side effects (GET, HEAD, OPTIONS, TRACE): the only
/// ones a noise call repeats.
pub fn is_safe(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// How one shadowed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Status, listed headers and (with `compare_body`) body all equal,
    /// ignored fields aside.
    Match,
    /// Status equal; listed headers or body differ, but only in fields
    /// known noisy (they also differ between two answers of the monolith).
    Noise,
    /// The statuses differ.
    Status,
    /// Statuses equal, a listed header differs (or is on one side only).
    Header,
    /// Status and headers equal, the bodies differ.
    Body,
    /// The shadow did not answer within `timeout_ms`.
    Timeout,
    /// The shadow call failed (reset, no such cluster, refused by the host,
    /// or Envoy answered it itself: see [`envoy_local_reply`]).
    Error,
    /// Not compared: `max_in_flight` reached, a body over `max_body_bytes`
    /// or the worker's [`MAX_HELD_BYTES`], a compressed body under
    /// `"json"`, a request with trailers, or a primary that never
    /// completed.
    Skipped,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Verdict::Match,
        Verdict::Noise,
        Verdict::Status,
        Verdict::Header,
        Verdict::Body,
        Verdict::Timeout,
        Verdict::Error,
        Verdict::Skipped,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Noise => "noise",
            Verdict::Status => "status",
            Verdict::Header => "header",
            Verdict::Body => "body",
            Verdict::Timeout => "timeout",
            Verdict::Error => "error",
            Verdict::Skipped => "skipped",
        }
    }

    /// Index into [`Verdict::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A status, header or body difference.
    pub fn is_mismatch(self) -> bool {
        matches!(self, Verdict::Status | Verdict::Header | Verdict::Body)
    }
}

/// A body streamed chunk by chunk: FNV-1a 64 over its bytes, and its length.
/// Equal bodies give equal digests; different ones almost surely not (an
/// accidental collision has odds of about 2^-64; not a defence against a
/// crafted body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    hash: u64,
    len: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
        }
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.len = self.len.saturating_add(bytes.len() as u64);
    }

    pub fn of(bytes: &[u8]) -> Digest {
        let mut d = Digest::default();
        d.update(bytes);
        d
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A compared body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A digest of its bytes (`compare_body: true`, or a body that is not
    /// JSON under `"json"`).
    Bytes(Digest),
    /// A JSON body (`"json"`), parsed; its digest for another side that
    /// is not JSON.
    Json(Digest, Json),
    /// Compressed (`content-encoding` other than `identity`) under
    /// `"json"`: not compared (`skipped`); no decompressor in the filter.
    Encoded,
}

impl Body {
    /// A whole body, as `mode` compares it: under `"json"`, a body whose
    /// `content-type` is JSON and that parses as JSON (object keys
    /// unique) is a value; any other, its bytes' digest.
    pub fn read(
        mode: BodyCompare,
        bytes: &[u8],
        content_type: Option<&[u8]>,
        encoding: Option<&[u8]>,
    ) -> Body {
        let digest = Digest::of(bytes);
        if mode != BodyCompare::Json {
            return Body::Bytes(digest);
        }
        if encoding.is_some_and(|e| !e.eq_ignore_ascii_case(b"identity")) {
            return Body::Encoded;
        }
        if !content_type.is_some_and(compare::is_json_type) {
            return Body::Bytes(digest);
        }
        match crate::config::json::read(bytes) {
            Ok(v) => Body::Json(digest, v),
            Err(_) => Body::Bytes(digest),
        }
    }

    fn digest(&self) -> Option<Digest> {
        match self {
            Body::Bytes(d) | Body::Json(d, _) => Some(*d),
            Body::Encoded => None,
        }
    }
}

/// What one side answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The values of `compare_headers`, in their order (`None`: absent).
    pub headers: Vec<Option<Vec<u8>>>,
    /// With `compare_body`: the body.
    pub body: Option<Body>,
    /// Body bytes, for the log line (`None`: not known, the body was not
    /// read).
    pub body_len: Option<u64>,
}

/// How the primary ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryEnd {
    Answered(Answer),
    /// Its body passed `max_body_bytes` (digesting stopped there).
    TooLarge {
        status: u16,
        body_len: u64,
    },
    /// The stream went before its response completed.
    Incomplete,
}

/// How the shadow call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowEnd {
    Answered(Answer),
    /// Its body is over `max_body_bytes` (not read into the VM).
    TooLarge {
        status: u16,
        body_len: u64,
    },
    TimedOut,
    Failed,
}

/// The body of the `504` Envoy answers a call that ran out of time with.
pub const TIMEOUT_BODY: &[u8] = b"upstream request timeout";

/// Whether a call ran out of time: Envoy's own `504` with its timeout body
/// (`body` is read only for a 504 of that length), or no answer at all
/// (a reset) once the deadline passed. A service's own 504 is a status.
pub fn call_timed_out(
    status: Option<u16>,
    body: Option<&[u8]>,
    elapsed_ms: u64,
    timeout_ms: u32,
) -> bool {
    match status {
        Some(504) => body == Some(TIMEOUT_BODY),
        Some(_) => false,
        None => elapsed_ms >= u64::from(timeout_ms),
    }
}

/// Longest body [`envoy_local_reply`] looks at; only a 503 that short is
/// read.
pub const LOCAL_REPLY_MAX_BYTES: usize = 160;

/// Whether a call's `503` is Envoy's own answer, not the service's: the
/// router's local replies in Envoy 1.40 (seen running) are `text/plain`
/// bodies `no healthy upstream` (no host), `upstream connect error or
/// disconnect/reset before headers. reset reason: ...` (connect failure,
/// reset before headers, `overflow` of the cluster's circuit breaker).
/// Limit: a service that answers one of these bodies itself (for example
/// because it sits behind another Envoy that failed) is counted `error`
/// too.
pub fn envoy_local_reply(status: u16, body: &[u8]) -> bool {
    status == 503
        && (body == b"no healthy upstream"
            || body.starts_with(b"upstream connect error or disconnect/reset before headers"))
}

/// Whether a gRPC call's trailers-only `200` is Envoy's own answer: for a
/// gRPC request Envoy 1.40 turns the same local replies into
/// `grpc-status: 14` (UNAVAILABLE) with the text as `grpc-message` (seen
/// running: a call to a refused port). Same limit as
/// [`envoy_local_reply`]: a service sending that text itself counts too.
pub fn envoy_grpc_local_reply(grpc_status: &[u8], grpc_message: &[u8]) -> bool {
    grpc_status == b"14" && envoy_local_reply(503, grpc_message)
}

/// A response header's value (`None`: absent).
pub type HeaderValue = Option<Vec<u8>>;

/// The details of a mismatch, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub primary_status: u16,
    pub shadow_status: u16,
    /// The first listed header whose values differ: name, primary value,
    /// shadow value.
    pub header: Option<(String, HeaderValue, HeaderValue)>,
    /// Body bytes of each side (`None`: not read, bodies not compared).
    pub primary_body_len: Option<u64>,
    pub shadow_body_len: Option<u64>,
    /// The differing fields not known as noise, first ones first (listed
    /// headers as `header:<name>`, JSON fields as normalised pointers, a
    /// byte difference as `body`), at most [`compare::MAX_FIELDS`].
    pub fields: Vec<String>,
    /// The first differing JSON field's values (primary, shadow), as JSON
    /// text, when it is a value on both sides.
    pub values: Option<(String, String)>,
}

/// What a route compares, beyond the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `compare_headers`, in the order of [`Answer::headers`].
    pub names: Vec<String>,
    /// `ignore_fields`.
    pub ignore: Vec<Pointer>,
}

impl Rules {
    pub fn of(s: &Settings) -> Rules {
        Rules {
            names: s.compare_headers.clone(),
            ignore: s.ignore_fields.clone(),
        }
    }
}

/// Where two answers with equal statuses differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    /// Listed headers (`header:<name>`), then body fields, in order.
    pub fields: Vec<String>,
    /// The first listed header that differs.
    pub header: Option<(String, HeaderValue, HeaderValue)>,
    /// The first JSON field's values.
    pub values: Option<(String, String)>,
    /// A body could not be compared (compressed).
    pub body_skipped: bool,
    /// More JSON fields differ than `fields` names.
    pub truncated: bool,
}

/// Where `a` and `b` differ in listed headers and body.
pub fn differences(rules: &Rules, a: &Answer, b: &Answer) -> Differences {
    let mut out = Differences::default();
    for (n, (x, y)) in rules.names.iter().zip(a.headers.iter().zip(&b.headers)) {
        if x != y {
            if out.header.is_none() {
                out.header = Some((n.clone(), x.clone(), y.clone()));
            }
            out.fields.push(format!("header:{n}"));
        }
    }
    match (&a.body, &b.body) {
        (Some(Body::Json(_, x)), Some(Body::Json(_, y))) => {
            let d = compare::diff(x, y, &rules.ignore);
            out.values = d.values;
            out.truncated = d.truncated;
            out.fields.extend(d.fields);
        }
        (Some(Body::Encoded), _) | (_, Some(Body::Encoded)) => out.body_skipped = true,
        (Some(x), Some(y)) if x.digest() != y.digest() => out.fields.push("body".into()),
        _ => {}
    }
    out
}

/// The verdict on one shadowed request. The shadow's own failures come
/// first (they say nothing about the primary), then anything not
/// comparable, then status, headers, body; a difference only in fields
/// `noise` knows as noisy is [`Verdict::Noise`].
pub fn judge(
    rules: &Rules,
    noise: &Noise,
    p: &PrimaryEnd,
    s: &ShadowEnd,
) -> (Verdict, Option<Mismatch>) {
    let (p, s) = match (p, s) {
        (_, ShadowEnd::TimedOut) => return (Verdict::Timeout, None),
        (_, ShadowEnd::Failed) => return (Verdict::Error, None),
        (PrimaryEnd::Answered(p), ShadowEnd::Answered(s)) => (p, s),
        _ => return (Verdict::Skipped, None),
    };
    let d = differences(rules, p, s);
    let signal: Vec<String> = d
        .fields
        .iter()
        .filter(|f| !noise.is_noisy(f))
        .cloned()
        .collect();
    let header_signal = signal.iter().any(|f| f.starts_with("header:"));
    let verdict = if p.status != s.status {
        Verdict::Status
    } else if header_signal {
        Verdict::Header
    } else if d.body_skipped {
        return (Verdict::Skipped, None);
    } else if !signal.is_empty() || d.truncated {
        // Fields beyond the bound are not known: never taken for noise.
        Verdict::Body
    } else if !d.fields.is_empty() {
        return (Verdict::Noise, None);
    } else {
        return (Verdict::Match, None);
    };
    (
        verdict,
        Some(Mismatch {
            primary_status: p.status,
            shadow_status: s.status,
            header: d.header,
            primary_body_len: p.body_len,
            shadow_body_len: s.body_len,
            fields: signal,
            values: d.values,
        }),
    )
}

/// Old-vs-old comparisons remembered (counts are halved when a route
/// reaches this many, so old noise fades).
pub const NOISE_WINDOW: u32 = 1_000;
/// A field is noisy once it differed in at least this many old-vs-old
/// comparisons...
pub const NOISE_MIN_COUNT: u32 = 2;
/// ...and in at least this share (percent) of them.
pub const NOISE_MIN_PERCENT: u32 = 10;
/// Fields tracked per route; fields met after that are never noisy.
pub const NOISE_MAX_FIELDS: usize = 64;

/// The noise learned on one route (per worker): for each field, in how
/// many old-vs-old comparisons (two answers of the monolith to the same
/// request) it differed. A field is noisy when it differed in at least
/// [`NOISE_MIN_COUNT`] of them and in at least [`NOISE_MIN_PERCENT`] % of
/// all of them (Diffy's absolute and relative thresholds, applied to the
/// monolith against itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Noise {
    comparisons: u32,
    fields: Vec<(String, u32)>,
}

impl Noise {
    /// One old-vs-old comparison, differing in `fields`.
    pub fn learn(&mut self, fields: &[String]) {
        if self.comparisons >= NOISE_WINDOW {
            self.comparisons /= 2;
            for (_, n) in &mut self.fields {
                *n /= 2;
            }
            self.fields.retain(|(_, n)| *n > 0);
        }
        self.comparisons += 1;
        for f in fields {
            if let Some((_, n)) = self.fields.iter_mut().find(|(g, _)| g == f) {
                *n += 1;
            } else if self.fields.len() < NOISE_MAX_FIELDS {
                self.fields.push((f.clone(), 1));
            }
        }
    }

    pub fn is_noisy(&self, field: &str) -> bool {
        self.fields.iter().any(|(f, n)| {
            f == field
                && *n >= NOISE_MIN_COUNT
                && u64::from(*n) * 100 >= u64::from(NOISE_MIN_PERCENT) * u64::from(self.comparisons)
        })
    }

    /// Old-vs-old comparisons counted.
    pub fn comparisons(&self) -> u32 {
        self.comparisons
    }
}

/// A shadowed request whose verdict is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub route: usize,
    /// The side that served the client.
    pub primary: Target,
    pub verdict: Verdict,
    pub mismatch: Option<Mismatch>,
    /// `METHOD /path` (no query), for the log line.
    pub request: String,
}

/// An old-vs-old comparison done: the fields that differed (for the
/// `kind="noise"` field counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseFound {
    pub route: usize,
    pub fields: Vec<String>,
}

struct Entry {
    route: usize,
    primary_side: Target,
    started_ms: u64,
    request: String,
    primary: Option<PrimaryEnd>,
    shadow: Option<ShadowEnd>,
    /// The noise call of this request, if any.
    noise: Option<u32>,
}

/// A noise call and the monolith answer it is compared with.
struct Pair {
    route: usize,
    /// The request's monolith answer (`Some(None)`: it did not answer).
    monolith: Option<Option<Answer>>,
    noise: Option<Option<Answer>>,
}

/// The shadows of one configuration in one worker, by call token.
pub struct Table {
    entries: HashMap<u32, Entry>,
    pairs: HashMap<u32, Pair>,
    /// Per route: shadow and noise calls admitted and not answered.
    in_flight: Vec<u32>,
    /// Per route.
    rules: Vec<Rules>,
    /// Per route: the noise learned (kept by the caller across
    /// configurations).
    noise: Vec<std::rc::Rc<std::cell::RefCell<Noise>>>,
}

impl Table {
    /// `rules[i]`: route `i`'s (default without shadow); `noise[i]` its
    /// learned noise.
    pub fn new(rules: Vec<Rules>, noise: Vec<std::rc::Rc<std::cell::RefCell<Noise>>>) -> Table {
        Table {
            entries: HashMap::new(),
            pairs: HashMap::new(),
            in_flight: vec![0; rules.len()],
            rules,
            noise,
        }
    }

    /// Admits one more call of route `route` if fewer than `max_in_flight`
    /// are out or admitted (it counts from now: release it with
    /// [`Table::release`] if it is never sent).
    pub fn admit(&mut self, route: usize, max_in_flight: u32) -> bool {
        match self.in_flight.get_mut(route) {
            Some(n) if *n < max_in_flight => {
                *n += 1;
                true
            }
            _ => false,
        }
    }

    /// An admitted call that was never sent.
    pub fn release(&mut self, route: usize) {
        if let Some(n) = self.in_flight.get_mut(route) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn in_flight(&self, route: usize) -> u32 {
        self.in_flight.get(route).copied().unwrap_or(0)
    }

    /// Old-vs-old comparisons learned on route `route`.
    pub fn noise_comparisons(&self, route: usize) -> u32 {
        self.noise
            .get(route)
            .map_or(0, |n| n.borrow().comparisons())
    }

    /// Entries not finished yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Step 1: the admitted shadow call `token` of route `route` is out at
    /// `now_ms`; `primary` serves the client; `noise`: its admitted noise
    /// call, if one was sent.
    pub fn start(
        &mut self,
        token: u32,
        route: usize,
        primary: Target,
        request: String,
        now_ms: u64,
        noise: Option<u32>,
    ) {
        if let Some(n) = noise {
            self.pairs.insert(
                n,
                Pair {
                    route,
                    monolith: None,
                    noise: None,
                },
            );
        }
        self.entries.insert(
            token,
            Entry {
                route,
                primary_side: primary,
                started_ms: now_ms,
                request,
                primary: None,
                shadow: None,
                noise,
            },
        );
    }

    /// The route and start time of a shadow whose answer is still awaited.
    pub fn awaiting(&self, token: u32) -> Option<(usize, u64)> {
        let e = self.entries.get(&token)?;
        e.shadow.is_none().then_some((e.route, e.started_ms))
    }

    /// The route of a noise call whose answer is still awaited.
    pub fn awaiting_noise(&self, token: u32) -> Option<usize> {
        let p = self.pairs.get(&token)?;
        p.noise.is_none().then_some(p.route)
    }

    /// Step 2 (or 4): the primary of `token` ended.
    pub fn primary_done(&mut self, token: u32, end: PrimaryEnd) -> Ended {
        let Some(e) = self.entries.get_mut(&token) else {
            return Ended::default();
        };
        if e.primary.is_some() {
            return Ended::default();
        }
        let monolith = (e.primary_side == Target::Monolith).then(|| match &end {
            PrimaryEnd::Answered(a) => Some(a.clone()),
            _ => None,
        });
        let noise = e.noise;
        e.primary = Some(end);
        let found = self.feed_monolith(noise, monolith);
        Ended {
            finished: self.finish_if_both(token),
            noise: found,
        }
    }

    /// Step 3 (or 4): the shadow call `token` answered (or failed).
    pub fn shadow_done(&mut self, token: u32, end: ShadowEnd) -> Ended {
        let Some(e) = self.entries.get_mut(&token) else {
            return Ended::default();
        };
        if e.shadow.is_some() {
            return Ended::default();
        }
        let monolith = (e.primary_side == Target::Service).then(|| match &end {
            ShadowEnd::Answered(a) => Some(a.clone()),
            _ => None,
        });
        let noise = e.noise;
        e.shadow = Some(end);
        let route = e.route;
        self.release(route);
        let found = self.feed_monolith(noise, monolith);
        Ended {
            finished: self.finish_if_both(token),
            noise: found,
        }
    }

    /// The noise call `token` answered (`None`: it failed or timed out).
    pub fn noise_done(&mut self, token: u32, answer: Option<Answer>) -> Option<NoiseFound> {
        let p = self.pairs.get_mut(&token)?;
        if p.noise.is_some() {
            return None;
        }
        p.noise = Some(answer);
        let route = p.route;
        self.release(route);
        self.compare_pair(token)
    }

    fn feed_monolith(
        &mut self,
        noise: Option<u32>,
        monolith: Option<Option<Answer>>,
    ) -> Option<NoiseFound> {
        let (token, answer) = (noise?, monolith?);
        let p = self.pairs.get_mut(&token)?;
        p.monolith = Some(answer);
        self.compare_pair(token)
    }

    /// Both monolith answers in: compared (equal statuses only), learned.
    fn compare_pair(&mut self, token: u32) -> Option<NoiseFound> {
        let p = self.pairs.get(&token)?;
        if p.monolith.is_none() || p.noise.is_none() {
            return None;
        }
        let p = self.pairs.remove(&token)?;
        let (Some(Some(a)), Some(Some(b))) = (p.monolith, p.noise) else {
            return None;
        };
        if a.status != b.status {
            return None;
        }
        let rules = self.rules.get(p.route)?;
        let d = differences(rules, &a, &b);
        if d.body_skipped {
            return None;
        }
        self.noise.get(p.route)?.borrow_mut().learn(&d.fields);
        Some(NoiseFound {
            route: p.route,
            fields: d.fields,
        })
    }

    fn finish_if_both(&mut self, token: u32) -> Option<Finished> {
        let e = self.entries.get(&token)?;
        let (Some(p), Some(s)) = (&e.primary, &e.shadow) else {
            return None;
        };
        let (verdict, mismatch) = match (self.rules.get(e.route), self.noise.get(e.route)) {
            (Some(r), Some(n)) => judge(r, &n.borrow(), p, s),
            _ => judge(&Rules::default(), &Noise::default(), p, s),
        };
        let e = self.entries.remove(&token)?;
        Some(Finished {
            route: e.route,
            primary: e.primary_side,
            verdict,
            mismatch,
            request: e.request,
        })
    }

    /// Step 6: every entry whose shadow never answered ends as `error`
    /// (its primary may still be running: its end is then ignored).
    pub fn abandon(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        for (_, e) in self.entries.drain() {
            out.push(Finished {
                route: e.route,
                primary: e.primary_side,
                verdict: if e.shadow.is_some() {
                    Verdict::Skipped
                } else {
                    Verdict::Error
                },
                mismatch: None,
                request: e.request,
            });
        }
        self.pairs.clear();
        for n in &mut self.in_flight {
            *n = 0;
        }
        out
    }
}

/// What one end of a side produced: a verdict when both sides are in, an
/// old-vs-old comparison when the noise pair is complete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ended {
    pub finished: Option<Finished>,
    pub noise: Option<NoiseFound>,
}

/// Picks which requests are shadowed: a per-worker pseudo-random stream
/// (SplitMix64), independent of the split's hash, so the shadowed share is
/// the same on both sides of the split and among requests without a key,
/// and a key is not shadowed forever because it was once.
pub struct Sampler(u64);

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True for a `basis_points` / 10000 share of the draws.
    pub fn draw(&mut self, basis_points: u16) -> bool {
        match basis_points {
            0 => false,
            10_000.. => true,
            bp => self.next() % 10_000 < u64::from(bp),
        }
    }
}

/// At most one line per [`LOG_INTERVAL_MS`]; says how many it held back.
#[derive(Debug, Default)]
pub struct LogLimit {
    next_ms: u64,
    held: u64,
}

impl LogLimit {
    /// `Some(held back since the last line)` when a line may be written.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.held += 1;
            return None;
        }
        self.next_ms = now_ms.saturating_add(LOG_INTERVAL_MS);
        Some(std::mem::take(&mut self.held))
    }
}

/// A header value for a log line: printable ASCII as is, anything else
/// escaped, at most 64 bytes.
fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "absent".to_string(),
        Some(b) => {
            let cut = b.get(..64).unwrap_or(b);
            let mut s = format!("\"{}\"", cut.escape_ascii());
            if cut.len() < b.len() {
                s.push_str("...");
            }
            s
        }
    }
}

/// Fields named in a log line.
pub const LOG_FIELDS: usize = 5;

/// The log line of a mismatch (`route`, `primary`/`shadow`: cluster
/// names). Response values (header values, JSON values) only with
/// `values` (`log_values: true`), each truncated to 64 bytes.
pub fn mismatch_line(
    route: &str,
    f: &Finished,
    primary: &str,
    shadow: &str,
    held: u64,
    values: bool,
) -> String {
    let Some(m) = &f.mismatch else {
        return String::new();
    };
    let header = match &m.header {
        Some((n, a, b)) if values => format!("{n}: {} vs {}", show(a), show(b)),
        Some((n, _, _)) => n.clone(),
        None => "none".to_string(),
    };
    let body = match (m.primary_body_len, m.shadow_body_len) {
        (Some(a), Some(b)) => format!("body {a} vs {b} bytes"),
        _ => "body not compared".to_string(),
    };
    let mut line = format!(
        "shadow mismatch ({}) on route \"{route}\": {}: status {} ({primary}) vs {} ({shadow}); \
         first differing header: {header}; {body}",
        f.verdict.as_str(),
        f.request,
        m.primary_status,
        m.shadow_status,
    );
    if !m.fields.is_empty() {
        let shown = m
            .fields
            .iter()
            .take(LOG_FIELDS)
            .cloned()
            .collect::<Vec<_>>();
        line.push_str(&format!("; differing fields: {}", shown.join(", ")));
        if m.fields.len() > LOG_FIELDS {
            line.push_str(&format!(" (+{} more)", m.fields.len() - LOG_FIELDS));
        }
    }
    if let (true, Some((a, b))) = (values, &m.values) {
        line.push_str(&format!("; first field's values: {a} vs {b}"));
    }
    if held > 0 {
        line.push_str(&format!(
            " ({held} more mismatch(es) of this route not logged)"
        ));
    }
    line
}

/// `METHOD /path` with the query cut, at most 256 bytes of path, for logs.
pub fn request_line(method: &[u8], path: &[u8]) -> String {
    let path = path.split(|b| *b == b'?').next().unwrap_or(path);
    let cut = path.get(..256).unwrap_or(path);
    format!("{} {}", method.escape_ascii(), cut.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[Option<&str>], body: Option<&str>) -> Answer {
        Answer {
            status,
            headers: headers
                .iter()
                .map(|h| h.map(|v| v.as_bytes().to_vec()))
                .collect(),
            body: body.map(|b| Body::Bytes(Digest::of(b.as_bytes()))),
            body_len: body.map(|b| b.len() as u64),
        }
    }

    fn names() -> Rules {
        Rules {
            names: vec!["content-type".into(), "cache-control".into()],
            ignore: vec![],
        }
    }

    fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![],
            body: Some(Body::read(
                BodyCompare::Json,
                body.as_bytes(),
                Some(b"application/json"),
                None,
            )),
            body_len: Some(body.len() as u64),
        }
    }

    fn noiseless() -> Noise {
        Noise::default()
    }

    fn table(rules: Vec<Rules>) -> Table {
        let noise = rules.iter().map(|_| Default::default()).collect();
        Table::new(rules, noise)
    }

    #[test]
    fn judges_status_then_headers_then_body() {
        let ct = Some("application/json");
        let p = PrimaryEnd::Answered(answer(200, &[ct, None], Some("{}")));
        let same = ShadowEnd::Answered(answer(200, &[ct, None], Some("{}")));
        assert_eq!(
            judge(&names(), &noiseless(), &p, &same),
            (Verdict::Match, None)
        );

        let s = ShadowEnd::Answered(answer(404, &[Some("text/plain"), None], Some("no")));
        let (v, m) = judge(&names(), &noiseless(), &p, &s);
        assert_eq!(v, Verdict::Status);
        let m = m.unwrap();
        assert_eq!((m.primary_status, m.shadow_status), (200, 404));
        assert_eq!(
            m.header,
            Some((
                "content-type".into(),
                Some(b"application/json".to_vec()),
                Some(b"text/plain".to_vec())
            ))
        );
        assert_eq!((m.primary_body_len, m.shadow_body_len), (Some(2), Some(2)));

        let s = ShadowEnd::Answered(answer(200, &[ct, Some("no-store")], Some("{}")));
        let (v, m) = judge(&names(), &noiseless(), &p, &s);
        assert_eq!(v, Verdict::Header);
        assert_eq!(m.unwrap().header.unwrap().0, "cache-control");

        let s = ShadowEnd::Answered(answer(200, &[ct, None], Some("{ }")));
        assert_eq!(judge(&names(), &noiseless(), &p, &s).0, Verdict::Body);

        // Without compare_body neither side has a digest.
        let p = PrimaryEnd::Answered(answer(200, &[ct, None], None));
        let s = ShadowEnd::Answered(answer(200, &[ct, None], None));
        assert_eq!(judge(&names(), &noiseless(), &p, &s).0, Verdict::Match);
    }

    #[test]
    fn shadow_failures_come_before_anything_not_comparable() {
        let p = PrimaryEnd::Incomplete;
        assert_eq!(
            judge(&Rules::default(), &noiseless(), &p, &ShadowEnd::TimedOut).0,
            Verdict::Timeout
        );
        assert_eq!(
            judge(&Rules::default(), &noiseless(), &p, &ShadowEnd::Failed).0,
            Verdict::Error
        );
        let s = ShadowEnd::Answered(answer(200, &[], None));
        assert_eq!(
            judge(&Rules::default(), &noiseless(), &p, &s).0,
            Verdict::Skipped
        );
        let big = PrimaryEnd::TooLarge {
            status: 200,
            body_len: 70_000,
        };
        assert_eq!(
            judge(&Rules::default(), &noiseless(), &big, &s).0,
            Verdict::Skipped
        );
        let p = PrimaryEnd::Answered(answer(200, &[], None));
        let big = ShadowEnd::TooLarge {
            status: 200,
            body_len: 70_000,
        };
        assert_eq!(
            judge(&Rules::default(), &noiseless(), &p, &big).0,
            Verdict::Skipped
        );
    }

    /// Starts `token` as an admitted shadow of `route`.
    fn go(t: &mut Table, token: u32, route: usize, noise: Option<u32>) {
        assert!(t.admit(route, 100));
        if noise.is_some() {
            assert!(t.admit(route, 100));
        }
        t.start(
            token,
            route,
            Target::Monolith,
            format!("GET /{token}"),
            0,
            noise,
        );
    }

    #[test]
    fn either_side_may_finish_first_and_each_request_ends_once() {
        let mut t = table(vec![Rules::default(), names()]);
        let ok = || answer(200, &[None, None], Some("x"));
        // Primary first, then the shadow.
        go(&mut t, 7, 1, None);
        assert_eq!(t.in_flight(1), 1);
        assert_eq!(
            t.primary_done(7, PrimaryEnd::Answered(ok())),
            Ended::default()
        );
        assert_eq!(t.in_flight(1), 1, "the shadow is still out");
        let f = t
            .shadow_done(7, ShadowEnd::Answered(ok()))
            .finished
            .unwrap();
        assert_eq!(
            (f.route, f.verdict, f.request.as_str()),
            (1, Verdict::Match, "GET /7")
        );
        assert_eq!((t.in_flight(1), t.len()), (0, 0));
        assert_eq!(
            t.shadow_done(7, ShadowEnd::Failed),
            Ended::default(),
            "ended once"
        );

        // Shadow first: the call no longer counts in flight while its
        // primary streams on.
        go(&mut t, 8, 1, None);
        assert_eq!(t.shadow_done(8, ShadowEnd::TimedOut), Ended::default());
        assert_eq!(t.in_flight(1), 0);
        let f = t
            .primary_done(8, PrimaryEnd::Answered(ok()))
            .finished
            .unwrap();
        assert_eq!(f.verdict, Verdict::Timeout);
        assert_eq!(t.primary_done(8, PrimaryEnd::Incomplete), Ended::default());

        // A primary that never completes.
        go(&mut t, 9, 1, None);
        assert_eq!(t.primary_done(9, PrimaryEnd::Incomplete), Ended::default());
        assert_eq!(
            t.shadow_done(9, ShadowEnd::Answered(ok()))
                .finished
                .unwrap()
                .verdict,
            Verdict::Skipped
        );
        assert!(t.is_empty());
    }

    #[test]
    fn the_cap_counts_from_admission_per_route() {
        let mut t = table(vec![Rules::default(), Rules::default()]);
        assert!(t.admit(0, 2));
        assert!(t.admit(0, 2));
        assert!(!t.admit(0, 2), "admitted, not sent yet: already counted");
        assert!(t.admit(1, 2), "another route's cap is its own");
        assert!(!t.admit(5, 2), "no such route");
        t.release(0);
        assert!(t.admit(0, 2), "released: room again");
        t.start(1, 0, Target::Monolith, String::new(), 0, None);
        t.shadow_done(1, ShadowEnd::Failed);
        assert_eq!(t.in_flight(0), 1);
    }

    #[test]
    fn abandoned_shadows_end_as_errors() {
        let mut t = table(vec![Rules::default()]);
        go(&mut t, 1, 0, None);
        go(&mut t, 2, 0, None);
        t.shadow_done(2, ShadowEnd::Answered(answer(200, &[], None)));
        let mut v: Vec<Verdict> = t.abandon().iter().map(|f| f.verdict).collect();
        v.sort_by_key(|v| v.index());
        assert_eq!(v, [Verdict::Error, Verdict::Skipped]);
        assert!(t.is_empty() && t.admit(0, 1));
    }

    #[test]
    fn json_bodies_compare_as_values_with_ignored_fields() {
        let rules = Rules {
            names: vec![],
            ignore: vec![Pointer::parse("/at").unwrap()],
        };
        let n = noiseless();
        let p = PrimaryEnd::Answered(json(200, r#"{"a": 1, "b": [1.0], "at": 5}"#));
        let s = ShadowEnd::Answered(json(200, r#"{"b":[1],"a":1,"at":6}"#));
        assert_eq!(judge(&rules, &n, &p, &s), (Verdict::Match, None));
        let s = ShadowEnd::Answered(json(200, r#"{"b":[2],"a":1,"at":6}"#));
        let (v, m) = judge(&rules, &n, &p, &s);
        assert_eq!(v, Verdict::Body);
        let m = m.unwrap();
        assert_eq!(m.fields, ["/b/*"]);
        assert_eq!(m.values, Some(("1.0".into(), "2".into())));
        // Not JSON on one side: the bytes' digests.
        let mut t = json(200, r#"{"b":[1],"a":1,"at":6}"#);
        t.body = Some(Body::read(
            BodyCompare::Json,
            br#"{"b":[1],"a":1,"at":6}"#,
            Some(b"text/plain"),
            None,
        ));
        assert_eq!(
            judge(&rules, &n, &p, &ShadowEnd::Answered(t)).0,
            Verdict::Body
        );
        let same = r#"{"a": 1, "b": [1.0], "at": 5}"#;
        let mut t = json(200, same);
        t.body = Some(Body::read(BodyCompare::Json, same.as_bytes(), None, None));
        assert_eq!(
            judge(&rules, &n, &p, &ShadowEnd::Answered(t)).0,
            Verdict::Match,
            "equal bytes"
        );
        // Compressed: not compared, unless the status already differs.
        let mut z = json(200, same);
        z.body = Some(Body::read(
            BodyCompare::Json,
            b"\x1f\x8b",
            Some(b"application/json"),
            Some(b"gzip"),
        ));
        assert_eq!(
            judge(&rules, &n, &p, &ShadowEnd::Answered(z.clone())).0,
            Verdict::Skipped
        );
        z.status = 500;
        assert_eq!(
            judge(&rules, &n, &p, &ShadowEnd::Answered(z)).0,
            Verdict::Status
        );
    }

    #[test]
    fn noisy_fields_make_a_noise_result_and_real_ones_still_a_mismatch() {
        let rules = Rules::default();
        let mut noise = Noise::default();
        // Old vs old: /at differs every time, /id once in 20.
        for i in 0..20 {
            if i == 0 {
                noise.learn(&["/at".into(), "/id".into()]);
            } else {
                noise.learn(&["/at".into()]);
            }
        }
        assert!(noise.is_noisy("/at"));
        assert!(!noise.is_noisy("/id"), "1 of 20: below both thresholds");
        let p = PrimaryEnd::Answered(json(200, r#"{"at": 1, "id": 1, "v": 1}"#));
        let s = ShadowEnd::Answered(json(200, r#"{"at": 2, "id": 1, "v": 1}"#));
        assert_eq!(judge(&rules, &noise, &p, &s), (Verdict::Noise, None));
        let s = ShadowEnd::Answered(json(200, r#"{"at": 2, "id": 1, "v": 2}"#));
        let (v, m) = judge(&rules, &noise, &p, &s);
        assert_eq!(
            (v, m.unwrap().fields),
            (Verdict::Body, vec!["/v".to_string()])
        );
        // The thresholds: 2 comparisons at least, 10 % at least.
        let mut n = Noise::default();
        n.learn(&["/x".into()]);
        assert!(!n.is_noisy("/x"), "once is not enough");
        n.learn(&["/x".into()]);
        assert!(n.is_noisy("/x"));
        for _ in 0..18 {
            n.learn(&[]);
        }
        assert!(n.is_noisy("/x"), "2 of 20 = 10 %");
        n.learn(&[]);
        assert!(!n.is_noisy("/x"), "2 of 21 < 10 %");
        // Bounded: halved at the window; fields beyond the cap never noisy.
        let mut n = Noise::default();
        for i in 0..NOISE_WINDOW + 1 {
            n.learn(&[format!("/f{}", i % 100)]);
        }
        assert_eq!(n.comparisons(), NOISE_WINDOW / 2 + 1);
        assert!(n.fields.len() <= NOISE_MAX_FIELDS);
        assert!(!n.is_noisy("/f99"));
    }

    #[test]
    fn a_noise_call_is_compared_with_the_monolith_answer_whichever_served() {
        let rules = Rules::default();
        let mut t = table(vec![rules]);
        let body = |at: u32| json(200, &format!(r#"{{"at": {at}, "v": 1}}"#));
        // Monolith primary: primary vs noise call.
        go(&mut t, 1, 0, Some(2));
        assert_eq!(t.in_flight(0), 2);
        assert_eq!(t.awaiting_noise(2), Some(0));
        assert_eq!(
            t.noise_done(2, Some(body(2))),
            None,
            "waits for the monolith"
        );
        let e = t.primary_done(1, PrimaryEnd::Answered(body(1)));
        assert_eq!(
            e.noise,
            Some(NoiseFound {
                route: 0,
                fields: vec!["/at".into()]
            })
        );
        t.shadow_done(1, ShadowEnd::Answered(body(3)));
        // Service primary: the shadow (monolith) vs the noise call.
        assert!(t.admit(0, 100) && t.admit(0, 100));
        t.start(3, 0, Target::Service, String::new(), 0, Some(4));
        t.shadow_done(3, ShadowEnd::Answered(body(4)));
        assert!(t.noise_done(4, Some(body(5))).is_some());
        // Two comparisons with /at differing: noisy; the next request with
        // only /at differing is `noise`.
        let e = t.primary_done(3, PrimaryEnd::Answered(body(6)));
        assert_eq!(e.finished.unwrap().verdict, Verdict::Noise);
        assert_eq!(t.in_flight(0), 0);
        assert!(t.pairs.is_empty());
        // A failed noise call teaches nothing.
        go(&mut t, 5, 0, Some(6));
        assert_eq!(t.noise_done(6, None), None);
        assert_eq!(t.primary_done(5, PrimaryEnd::Answered(body(1))).noise, None);
        assert_eq!(t.noise[0].borrow().comparisons(), 2);
    }

    #[test]
    fn envoys_own_503s_are_told_apart() {
        assert!(envoy_local_reply(503, b"no healthy upstream"));
        assert!(envoy_local_reply(
            503,
            b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
        ));
        assert!(!envoy_local_reply(503, b"maintenance"));
        assert!(!envoy_local_reply(500, b"no healthy upstream"));
        assert!(envoy_grpc_local_reply(
            b"14",
            b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        ));
        assert!(envoy_grpc_local_reply(b"14", b"no healthy upstream"));
        assert!(!envoy_grpc_local_reply(
            b"14",
            b"orders_service fails this RPC"
        ));
        assert!(!envoy_grpc_local_reply(b"13", b"no healthy upstream"));
    }

    #[test]
    fn digest_streams_over_chunks() {
        let mut d = Digest::default();
        d.update(b"hello ");
        d.update(b"");
        d.update(b"world");
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(d.len(), 11);
        assert_ne!(Digest::of(b"ab"), Digest::of(b"ba"));
        // FNV-1a 64 of "a" (published test vector).
        assert_eq!(Digest::of(b"a").hash, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn sampler_share_follows_basis_points() {
        let mut s = Sampler::new(42);
        let n = 100_000;
        let hits = (0..n).filter(|_| s.draw(500)).count() as f64;
        // Binomial(100000, 0.05): sd = 68.9; 4 sd.
        assert!((hits - 5_000.0).abs() < 4.0 * 68.9, "{hits}");
        assert!(!(0..1000).any(|_| s.draw(0)));
        assert!((0..1000).all(|_| s.draw(10_000)));
    }

    #[test]
    fn timeouts_are_envoys_504_or_a_reset_after_the_deadline() {
        assert!(call_timed_out(Some(504), Some(TIMEOUT_BODY), 199, 200));
        assert!(call_timed_out(None, None, 1200, 1000));
        assert!(!call_timed_out(None, None, 10, 1000), "a reset: error");
        assert!(
            !call_timed_out(Some(504), Some(b"gateway"), 1000, 1000),
            "the service's 504"
        );
        assert!(!call_timed_out(Some(200), None, 5000, 1000));
    }

    #[test]
    fn log_lines_are_limited_and_say_what_differs() {
        let mut l = LogLimit::default();
        assert_eq!(l.allow(10_000), Some(0));
        assert_eq!(l.allow(10_500), None);
        assert_eq!(l.allow(10_999), None);
        assert_eq!(l.allow(11_000), Some(2));

        let f = Finished {
            route: 0,
            primary: Target::Monolith,
            verdict: Verdict::Status,
            mismatch: Some(Mismatch {
                primary_status: 200,
                shadow_status: 404,
                header: Some(("content-type".into(), Some(b"a/b".to_vec()), None)),
                primary_body_len: Some(10),
                shadow_body_len: Some(0),
                fields: vec!["header:content-type".into()],
                values: None,
            }),
            request: request_line(b"GET", b"/api/x?token=secret"),
        };
        assert_eq!(
            mismatch_line("auth", &f, "monolith", "auth_service", 3, true),
            "shadow mismatch (status) on route \"auth\": GET /api/x: status 200 (monolith) vs 404 (auth_service); \
             first differing header: content-type: \"a/b\" vs absent; body 10 vs 0 bytes; \
             differing fields: header:content-type \
             (3 more mismatch(es) of this route not logged)"
        );
        // Values only with log_values; body sizes only when read.
        let mut g = f.clone();
        if let Some(m) = &mut g.mismatch {
            m.primary_body_len = None;
            m.shadow_body_len = None;
            m.fields = (0..7).map(|i| format!("/f{i}")).collect();
            m.values = Some(("1".into(), "2".into()));
        }
        assert_eq!(
            mismatch_line("auth", &g, "monolith", "auth_service", 0, false),
            "shadow mismatch (status) on route \"auth\": GET /api/x: status 200 (monolith) vs 404 (auth_service); \
             first differing header: content-type; body not compared; \
             differing fields: /f0, /f1, /f2, /f3, /f4 (+2 more)"
        );
        assert!(mismatch_line("auth", &g, "m", "s", 0, true)
            .ends_with("; first field's values: 1 vs 2"));
    }

    #[test]
    fn methods_and_side_effects() {
        let s = Settings {
            basis_points: 500,
            methods: vec!["GET".into(), "HEAD".into()],
            compare_headers: vec![],
            compare_body: BodyCompare::Off,
            ignore_fields: vec![],
            noise_basis_points: 0,
            log_values: false,
            timeout_ms: 1000,
            max_body_bytes: 10,
            max_in_flight: 1,
        };
        assert!(s.shadows_method(b"GET") && !s.shadows_method(b"POST"));
        assert!(!s.repeats_writes());
        let s = Settings {
            methods: vec!["GET".into(), "POST".into()],
            ..s
        };
        assert!(s.repeats_writes());
    }
}

#[cfg(test)]
mod noise_simulation {
    //! The noise rule as users meet it: one field that differs between two
    //! monolith answers with probability `q`, fed to the real [`Noise`]
    //! comparison after comparison; the share of runs in which the field
    //! is taken for noise (a real difference in it is then hidden) after
    //! `n` old-vs-old comparisons. `cargo test -p traffic-shift --lib
    //! noise_simulation -- --nocapture` prints the table in the README.
    use super::*;

    const RUNS: usize = 400;
    const CHECKPOINTS: [u32; 6] = [2, 10, 50, 200, 1_000, 5_000];
    const RATES: [f64; 7] = [0.0, 0.02, 0.05, 0.08, 0.15, 0.3, 1.0];

    /// Share of runs with the field noisy at each checkpoint.
    fn simulate(q: f64, seed: u64) -> Vec<f64> {
        let mut rng = Sampler::new(seed);
        let mut noisy = vec![0usize; CHECKPOINTS.len()];
        let field = vec!["/f".to_string()];
        for _ in 0..RUNS {
            let mut n = Noise::default();
            let mut next = 0;
            for i in 1..=CHECKPOINTS[CHECKPOINTS.len() - 1] {
                let differs = rng.draw((q * 10_000.0) as u16);
                n.learn(if differs { &field } else { &[] });
                if CHECKPOINTS.get(next) == Some(&i) {
                    noisy[next] += usize::from(n.is_noisy("/f"));
                    next += 1;
                }
            }
        }
        noisy.iter().map(|c| *c as f64 / RUNS as f64).collect()
    }

    #[test]
    fn the_noise_rule_over_time() {
        let mut table = String::from("| q (old vs old) |");
        for c in CHECKPOINTS {
            table.push_str(&format!(" n = {c} |"));
        }
        table.push_str("\n|---|");
        table.push_str(&"---:|".repeat(CHECKPOINTS.len()));
        let mut rows = Vec::new();
        for (i, q) in RATES.iter().enumerate() {
            let r = simulate(*q, 7 + i as u64);
            table.push_str(&format!("\n| {:.0} % |", q * 100.0));
            for v in &r {
                table.push_str(&format!(" {:.1} % |", v * 100.0));
            }
            rows.push(r);
        }
        println!("{table}");
        // Tolerance: RUNS = 400 runs, a share's standard error is at most
        // 2.5 points; the bounds below are far from the expected values.
        let at = |q: usize, c: usize| rows[q][c];
        assert_eq!(rows[0].iter().sum::<f64>(), 0.0, "never noisy at q = 0");
        assert_eq!(at(6, 0), 1.0, "q = 100 %: noisy after 2 comparisons");
        assert!(at(5, 2) > 0.95, "q = 30 %: noisy by 50 comparisons");
        assert!(at(1, 5) < 0.05, "q = 2 %: not noisy in the long run");
        assert!(at(2, 5) < 0.05, "q = 5 %: not noisy in the long run");
        assert!(at(4, 5) > 0.95, "q = 15 %: noisy in the long run");
    }
}
