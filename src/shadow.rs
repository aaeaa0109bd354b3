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

use crate::decision::Target;

/// Request header every shadow request carries (`x-shift-shadow: 1`).
pub const SHADOW_HEADER: &str = "x-shift-shadow";

/// Methods shadowed when `methods` is left out: those without side effects.
pub const DEFAULT_METHODS: [&str; 2] = ["GET", "HEAD"];
pub const DEFAULT_TIMEOUT_MS: u32 = 1_000;
pub const DEFAULT_MAX_BODY_BYTES: u32 = 65_536;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

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
    pub compare_body: bool,
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
        self.methods
            .iter()
            .any(|m| !matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE"))
    }
}

/// How one shadowed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Status, listed headers and (with `compare_body`) body all equal.
    Match,
    /// The statuses differ.
    Status,
    /// Statuses equal, a listed header differs (or is on one side only).
    Header,
    /// Status and headers equal, the bodies differ.
    Body,
    /// The shadow did not answer within `timeout_ms`.
    Timeout,
    /// The shadow call failed (reset, no such cluster, refused by the host).
    Error,
    /// Not compared: `max_in_flight` reached, a body over `max_body_bytes`,
    /// or a primary that never completed.
    Skipped,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Match,
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

/// What one side answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The values of `compare_headers`, in their order (`None`: absent).
    pub headers: Vec<Option<Vec<u8>>>,
    /// With `compare_body`: the body's digest.
    pub body: Option<Digest>,
    /// Body bytes (for the log line; counted even without `compare_body`
    /// when known).
    pub body_len: u64,
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
    pub primary_body_len: u64,
    pub shadow_body_len: u64,
}

/// The verdict on one shadowed request. `names` are the route's
/// `compare_headers`, in the order of [`Answer::headers`]. The shadow's own
/// failures come first (they say nothing about the primary), then anything
/// not comparable, then status, headers, body.
pub fn judge(names: &[String], p: &PrimaryEnd, s: &ShadowEnd) -> (Verdict, Option<Mismatch>) {
    let (p, s) = match (p, s) {
        (_, ShadowEnd::TimedOut) => return (Verdict::Timeout, None),
        (_, ShadowEnd::Failed) => return (Verdict::Error, None),
        (PrimaryEnd::Answered(p), ShadowEnd::Answered(s)) => (p, s),
        _ => return (Verdict::Skipped, None),
    };
    let header = names
        .iter()
        .zip(p.headers.iter().zip(&s.headers))
        .find(|(_, (a, b))| a != b)
        .map(|(n, (a, b))| (n.clone(), a.clone(), b.clone()));
    let verdict = if p.status != s.status {
        Verdict::Status
    } else if header.is_some() {
        Verdict::Header
    } else if p.body != s.body {
        Verdict::Body
    } else {
        return (Verdict::Match, None);
    };
    (
        verdict,
        Some(Mismatch {
            primary_status: p.status,
            shadow_status: s.status,
            header,
            primary_body_len: p.body_len,
            shadow_body_len: s.body_len,
        }),
    )
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

struct Entry {
    route: usize,
    primary_side: Target,
    started_ms: u64,
    request: String,
    primary: Option<PrimaryEnd>,
    shadow: Option<ShadowEnd>,
}

/// The shadows of one configuration in one worker, by call token.
pub struct Table {
    entries: HashMap<u32, Entry>,
    /// Per route: shadows sent and not answered.
    in_flight: Vec<u32>,
    /// Per route: `compare_headers`.
    names: Vec<Vec<String>>,
}

impl Table {
    /// `names[i]`: route `i`'s `compare_headers` (empty without shadow).
    pub fn new(names: Vec<Vec<String>>) -> Table {
        Table {
            entries: HashMap::new(),
            in_flight: vec![0; names.len()],
            names,
        }
    }

    /// Whether route `route` may send another shadow.
    pub fn admits(&self, route: usize, max_in_flight: u32) -> bool {
        self.in_flight
            .get(route)
            .is_some_and(|n| *n < max_in_flight)
    }

    pub fn in_flight(&self, route: usize) -> u32 {
        self.in_flight.get(route).copied().unwrap_or(0)
    }

    /// Entries not finished yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Step 1: the shadow call `token` of route `route` is out at
    /// `now_ms`; `primary` serves the client.
    pub fn start(
        &mut self,
        token: u32,
        route: usize,
        primary: Target,
        request: String,
        now_ms: u64,
    ) {
        if let Some(n) = self.in_flight.get_mut(route) {
            *n += 1;
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
            },
        );
    }

    /// The route and start time of a shadow whose answer is still awaited.
    pub fn awaiting(&self, token: u32) -> Option<(usize, u64)> {
        let e = self.entries.get(&token)?;
        e.shadow.is_none().then_some((e.route, e.started_ms))
    }

    /// Step 2 (or 4): the primary of `token` ended.
    pub fn primary_done(&mut self, token: u32, end: PrimaryEnd) -> Option<Finished> {
        let e = self.entries.get_mut(&token)?;
        if e.primary.is_some() {
            return None;
        }
        e.primary = Some(end);
        self.finish_if_both(token)
    }

    /// Step 3 (or 4): the shadow call `token` answered (or failed).
    pub fn shadow_done(&mut self, token: u32, end: ShadowEnd) -> Option<Finished> {
        let e = self.entries.get_mut(&token)?;
        if e.shadow.is_some() {
            return None;
        }
        e.shadow = Some(end);
        let route = e.route;
        if let Some(n) = self.in_flight.get_mut(route) {
            *n = n.saturating_sub(1);
        }
        self.finish_if_both(token)
    }

    fn finish_if_both(&mut self, token: u32) -> Option<Finished> {
        let e = self.entries.get(&token)?;
        let (Some(p), Some(s)) = (&e.primary, &e.shadow) else {
            return None;
        };
        let names = self.names.get(e.route).map_or(&[][..], Vec::as_slice);
        let (verdict, mismatch) = judge(names, p, s);
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
        for n in &mut self.in_flight {
            *n = 0;
        }
        out
    }
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

/// The log line of a mismatch (`route`, `primary`/`shadow`: cluster names).
pub fn mismatch_line(route: &str, f: &Finished, primary: &str, shadow: &str, held: u64) -> String {
    let Some(m) = &f.mismatch else {
        return String::new();
    };
    let header = match &m.header {
        Some((n, a, b)) => format!("{n}: {} vs {}", show(a), show(b)),
        None => "none".to_string(),
    };
    let mut line = format!(
        "shadow mismatch ({}) on route \"{route}\": {}: status {} ({primary}) vs {} ({shadow}); \
         first differing header: {header}; body {} vs {} bytes",
        f.verdict.as_str(),
        f.request,
        m.primary_status,
        m.shadow_status,
        m.primary_body_len,
        m.shadow_body_len,
    );
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
            body: body.map(|b| Digest::of(b.as_bytes())),
            body_len: body.map_or(0, |b| b.len() as u64),
        }
    }

    fn names() -> Vec<String> {
        vec!["content-type".into(), "cache-control".into()]
    }

    #[test]
    fn judges_status_then_headers_then_body() {
        let ct = Some("application/json");
        let p = PrimaryEnd::Answered(answer(200, &[ct, None], Some("{}")));
        let same = ShadowEnd::Answered(answer(200, &[ct, None], Some("{}")));
        assert_eq!(judge(&names(), &p, &same), (Verdict::Match, None));

        let s = ShadowEnd::Answered(answer(404, &[Some("text/plain"), None], Some("no")));
        let (v, m) = judge(&names(), &p, &s);
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
        assert_eq!((m.primary_body_len, m.shadow_body_len), (2, 2));

        let s = ShadowEnd::Answered(answer(200, &[ct, Some("no-store")], Some("{}")));
        let (v, m) = judge(&names(), &p, &s);
        assert_eq!(v, Verdict::Header);
        assert_eq!(m.unwrap().header.unwrap().0, "cache-control");

        let s = ShadowEnd::Answered(answer(200, &[ct, None], Some("{ }")));
        assert_eq!(judge(&names(), &p, &s).0, Verdict::Body);

        // Without compare_body neither side has a digest.
        let p = PrimaryEnd::Answered(answer(200, &[ct, None], None));
        let s = ShadowEnd::Answered(answer(200, &[ct, None], None));
        assert_eq!(judge(&names(), &p, &s).0, Verdict::Match);
    }

    #[test]
    fn shadow_failures_come_before_anything_not_comparable() {
        let p = PrimaryEnd::Incomplete;
        assert_eq!(judge(&[], &p, &ShadowEnd::TimedOut).0, Verdict::Timeout);
        assert_eq!(judge(&[], &p, &ShadowEnd::Failed).0, Verdict::Error);
        let s = ShadowEnd::Answered(answer(200, &[], None));
        assert_eq!(judge(&[], &p, &s).0, Verdict::Skipped);
        let big = PrimaryEnd::TooLarge {
            status: 200,
            body_len: 70_000,
        };
        assert_eq!(judge(&[], &big, &s).0, Verdict::Skipped);
        let p = PrimaryEnd::Answered(answer(200, &[], None));
        let big = ShadowEnd::TooLarge {
            status: 200,
            body_len: 70_000,
        };
        assert_eq!(judge(&[], &p, &big).0, Verdict::Skipped);
    }

    #[test]
    fn either_side_may_finish_first_and_each_request_ends_once() {
        let mut t = Table::new(vec![vec![], names()]);
        let ok = || answer(200, &[None, None], Some("x"));
        // Primary first, then the shadow.
        t.start(7, 1, Target::Monolith, "GET /a".into(), 0);
        assert_eq!(t.in_flight(1), 1);
        assert_eq!(t.primary_done(7, PrimaryEnd::Answered(ok())), None);
        assert_eq!(t.in_flight(1), 1, "the shadow is still out");
        let f = t.shadow_done(7, ShadowEnd::Answered(ok())).unwrap();
        assert_eq!(
            (f.route, f.verdict, f.request.as_str()),
            (1, Verdict::Match, "GET /a")
        );
        assert_eq!((t.in_flight(1), t.len()), (0, 0));
        assert_eq!(t.shadow_done(7, ShadowEnd::Failed), None, "ended once");

        // Shadow first: the call no longer counts in flight while its
        // primary streams on.
        t.start(8, 1, Target::Monolith, "GET /b".into(), 0);
        assert_eq!(t.shadow_done(8, ShadowEnd::TimedOut), None);
        assert_eq!(t.in_flight(1), 0);
        let f = t.primary_done(8, PrimaryEnd::Answered(ok())).unwrap();
        assert_eq!(f.verdict, Verdict::Timeout);
        assert_eq!(t.primary_done(8, PrimaryEnd::Incomplete), None);

        // A primary that never completes.
        t.start(9, 1, Target::Monolith, "GET /c".into(), 0);
        assert_eq!(t.primary_done(9, PrimaryEnd::Incomplete), None);
        assert_eq!(
            t.shadow_done(9, ShadowEnd::Answered(ok())).unwrap().verdict,
            Verdict::Skipped
        );
        assert!(t.is_empty());
    }

    #[test]
    fn the_cap_counts_calls_out_per_route() {
        let mut t = Table::new(vec![vec![], vec![]]);
        assert!(t.admits(0, 2));
        t.start(1, 0, Target::Monolith, String::new(), 0);
        t.start(2, 0, Target::Monolith, String::new(), 0);
        assert!(!t.admits(0, 2));
        assert!(t.admits(1, 2), "another route's cap is its own");
        assert!(!t.admits(5, 2), "no such route");
        t.shadow_done(1, ShadowEnd::Failed);
        assert!(t.admits(0, 2));
    }

    #[test]
    fn abandoned_shadows_end_as_errors() {
        let mut t = Table::new(vec![vec![]]);
        t.start(1, 0, Target::Monolith, String::new(), 0);
        t.start(2, 0, Target::Monolith, String::new(), 0);
        t.shadow_done(2, ShadowEnd::Answered(answer(200, &[], None)));
        let mut v: Vec<Verdict> = t.abandon().iter().map(|f| f.verdict).collect();
        v.sort_by_key(|v| v.index());
        assert_eq!(v, [Verdict::Error, Verdict::Skipped]);
        assert!(t.is_empty() && t.admits(0, 1));
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
                primary_body_len: 10,
                shadow_body_len: 0,
            }),
            request: request_line(b"GET", b"/api/x?token=secret"),
        };
        assert_eq!(
            mismatch_line("auth", &f, "monolith", "auth_service", 3),
            "shadow mismatch (status) on route \"auth\": GET /api/x: status 200 (monolith) vs 404 (auth_service); \
             first differing header: content-type: \"a/b\" vs absent; body 10 vs 0 bytes \
             (3 more mismatch(es) of this route not logged)"
        );
    }

    #[test]
    fn methods_and_side_effects() {
        let s = Settings {
            basis_points: 500,
            methods: vec!["GET".into(), "HEAD".into()],
            compare_headers: vec![],
            compare_body: false,
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
