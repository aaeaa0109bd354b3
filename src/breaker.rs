//! Local outlier detection for a route's service: a circuit breaker.
//!
//! Pure state machine: time comes in as `now_ms` (injected clock), the state
//! is a plain value the glue keeps in proxy-wasm shared data (one process-wide
//! value per route, updated with compare-and-swap) via [`Breaker::encode`] /
//! [`Breaker::decode`].
//!
//! States and transitions:
//! 1. Closed -> Open when `consecutive_failures` failures of the service
//!    arrive in a row ([`Reason::ConsecutiveFailures`]), or when the failure
//!    rate over the last `window_ms` reaches `threshold_percent` with at least
//!    `min_requests` requests ([`Reason::FailureRate`]). The ejection count
//!    grows by one; the breaker stays open for
//!    `min(base_ejection_ms * ejections, max_ejection_ms)` (Envoy's outlier
//!    detection semantics).
//! 2. Open -> HalfOpen once the ejection time is over
//!    ([`Reason::EjectionElapsed`]). Time-driven and idempotent: whoever sees
//!    it first (a request or any worker's tick) makes it, the others find it
//!    made.
//! 3. HalfOpen: `half_open_probes` requests go to the service as probes; the
//!    rest are handled as when open. A probe whose outcome never arrives is
//!    given up after `base_ejection_ms` and probes are let through again.
//! 4. HalfOpen -> Closed when every probe succeeded
//!    ([`Reason::ProbeSucceeded`]).
//! 5. HalfOpen -> Open when a probe fails ([`Reason::ProbeFailed`]), for the
//!    next, longer ejection.
//! 6. Closed, no ejection for as long as the last ejection lasted: the
//!    ejection count goes back to 0 (no log line, no state change).
//!
//! Only outcomes of requests actually sent to the service count: fallbacks
//! to the monolith and fast-fail replies never reach [`Breaker::record`].

use std::fmt;

/// Breaker settings of one route (validated by `config`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    /// 0 disables the consecutive-failures trigger.
    pub consecutive_failures: u32,
    pub failure_rate: Option<FailureRate>,
    /// Upstream statuses that count as failures (5xx only).
    pub failure_statuses: Vec<u16>,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub half_open_probes: u32,
    pub on_open: OnOpen,
}

/// The failure-rate trigger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FailureRate {
    /// 1..=100.
    pub threshold_percent: u32,
    pub min_requests: u32,
    pub window_ms: u64,
}

/// What happens to requests the breaker keeps from the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnOpen {
    /// Send them to the monolith.
    Fallback,
    /// Answer 503 at once, with `Retry-After`.
    Reject,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            failure_rate: None,
            failure_statuses: vec![500, 502, 503, 504],
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            half_open_probes: 1,
            on_open: OnOpen::Fallback,
        }
    }
}

impl Settings {
    /// Whether a response from the service is a failure. `proxy_failure`:
    /// Envoy generated it (connect failure, reset, timeout, no healthy
    /// upstream). 4xx never count.
    pub fn is_failure(&self, status: u16, proxy_failure: bool) -> bool {
        (proxy_failure && status >= 500) || self.failure_statuses.contains(&status)
    }
}

/// Breaker state, as the gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ConsecutiveFailures(u32),
    FailureRate { failures: u32, requests: u32 },
    EjectionElapsed,
    ProbeFailed,
    ProbeSucceeded,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Reason::FailureRate { failures, requests } => {
                write!(f, "failure rate {failures}/{requests} in the window")
            }
            Reason::EjectionElapsed => f.write_str("ejection time elapsed"),
            Reason::ProbeFailed => f.write_str("probe failed"),
            Reason::ProbeSucceeded => f.write_str("probe succeeded"),
        }
    }
}

/// A state change, for the log and the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    /// When `to` is Open: how long, in ms.
    pub ejection_ms: u64,
}

/// What to do with a request the split sent to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it to the service.
    Pass,
    /// Send it to the service as a half-open probe.
    Probe,
    /// Keep it from the service; the breaker reopens to probes in this
    /// many ms (for `Retry-After`).
    Blocked { retry_after_ms: u64 },
}

const SLOTS: usize = 10;

/// One slice of the failure-rate window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    epoch: u64,
    requests: u32,
    failures: u32,
}

/// The process-wide state of one route's breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    state: State,
    consecutive: u32,
    /// Ejections in a row (the backoff multiplier).
    ejections: u32,
    /// Open: until when. HalfOpen: since when. Closed: since when.
    since_or_until: u64,
    /// HalfOpen: probes let through / succeeded.
    probes_issued: u32,
    probes_ok: u32,
    /// Closed: how long the last ejection lasted (for rule 6).
    last_ejection_ms: u64,
    slots: [Slot; SLOTS],
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            consecutive: 0,
            ejections: 0,
            since_or_until: 0,
            probes_issued: 0,
            probes_ok: 0,
            last_ejection_ms: 0,
            slots: [Slot::default(); SLOTS],
        }
    }
}

impl Breaker {
    pub fn state(&self) -> State {
        self.state
    }

    /// Ejections in a row so far.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Time-driven transitions (rules 2, 3's probe give-up, 6). Idempotent:
    /// applying it twice at the same `now_ms` changes nothing the second
    /// time.
    pub fn advance(&mut self, s: &Settings, now_ms: u64) -> Option<Transition> {
        match self.state {
            State::Open if now_ms >= self.since_or_until => {
                self.state = State::HalfOpen;
                self.since_or_until = now_ms;
                self.probes_issued = 0;
                self.probes_ok = 0;
                Some(Transition {
                    from: State::Open,
                    to: State::HalfOpen,
                    reason: Reason::EjectionElapsed,
                    ejection_ms: 0,
                })
            }
            State::HalfOpen
                if self.probes_issued > 0
                    && now_ms >= self.since_or_until.saturating_add(s.base_ejection_ms) =>
            {
                // Rule 3: the probes' outcomes never came; probe again.
                self.since_or_until = now_ms;
                self.probes_issued = 0;
                self.probes_ok = 0;
                None
            }
            State::Closed
                if self.ejections > 0
                    && now_ms >= self.since_or_until.saturating_add(self.last_ejection_ms) =>
            {
                self.ejections = 0;
                None
            }
            _ => None,
        }
    }

    /// Decides for a request the split sent to the service, consuming a
    /// probe slot when half-open.
    pub fn admit(&mut self, s: &Settings, now_ms: u64) -> (Admission, Option<Transition>) {
        let t = self.advance(s, now_ms);
        let admission = match self.state {
            State::Closed => Admission::Pass,
            State::Open => Admission::Blocked {
                retry_after_ms: self.since_or_until.saturating_sub(now_ms),
            },
            State::HalfOpen if self.probes_issued < s.half_open_probes => {
                self.probes_issued += 1;
                Admission::Probe
            }
            State::HalfOpen => Admission::Blocked { retry_after_ms: 0 },
        };
        (admission, t)
    }

    /// Records the outcome of a request sent to the service (`probe`: it was
    /// admitted as a probe).
    pub fn record(
        &mut self,
        s: &Settings,
        now_ms: u64,
        failure: bool,
        probe: bool,
    ) -> Option<Transition> {
        if let Some(t) = self.advance(s, now_ms) {
            return Some(t);
        }
        match self.state {
            State::HalfOpen if probe => {
                if failure {
                    Some(self.open(s, now_ms, State::HalfOpen, Reason::ProbeFailed))
                } else {
                    self.probes_ok += 1;
                    (self.probes_ok >= s.half_open_probes).then(|| self.close(now_ms))
                }
            }
            // Late outcomes of requests admitted before the breaker opened.
            State::HalfOpen | State::Open => None,
            State::Closed => self.record_closed(s, now_ms, failure),
        }
    }

    fn record_closed(&mut self, s: &Settings, now_ms: u64, failure: bool) -> Option<Transition> {
        self.consecutive = if failure { self.consecutive + 1 } else { 0 };
        if s.consecutive_failures > 0 && self.consecutive >= s.consecutive_failures {
            let reason = Reason::ConsecutiveFailures(self.consecutive);
            return Some(self.open(s, now_ms, State::Closed, reason));
        }
        let rate = s.failure_rate.as_ref()?;
        let slot_ms = (rate.window_ms / SLOTS as u64).max(1);
        let epoch = now_ms / slot_ms;
        let slot = self.slots.get_mut((epoch % SLOTS as u64) as usize)?;
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                requests: 0,
                failures: 0,
            };
        }
        slot.requests += 1;
        slot.failures += u32::from(failure);
        let oldest = epoch.saturating_sub(SLOTS as u64 - 1);
        let (requests, failures) = self
            .slots
            .iter()
            .filter(|sl| sl.epoch >= oldest && sl.epoch <= epoch)
            .fold((0u32, 0u32), |(r, f), sl| {
                (r + sl.requests, f + sl.failures)
            });
        if failure
            && requests >= rate.min_requests
            && u64::from(failures) * 100 >= u64::from(rate.threshold_percent) * u64::from(requests)
        {
            let reason = Reason::FailureRate { failures, requests };
            return Some(self.open(s, now_ms, State::Closed, reason));
        }
        None
    }

    fn open(&mut self, s: &Settings, now_ms: u64, from: State, reason: Reason) -> Transition {
        self.ejections = self.ejections.saturating_add(1);
        let ejection_ms = s
            .base_ejection_ms
            .saturating_mul(u64::from(self.ejections))
            .min(s.max_ejection_ms);
        self.state = State::Open;
        self.since_or_until = now_ms.saturating_add(ejection_ms);
        self.last_ejection_ms = ejection_ms;
        self.consecutive = 0;
        self.slots = [Slot::default(); SLOTS];
        Transition {
            from,
            to: State::Open,
            reason,
            ejection_ms,
        }
    }

    fn close(&mut self, now_ms: u64) -> Transition {
        self.state = State::Closed;
        self.since_or_until = now_ms;
        self.consecutive = 0;
        self.probes_issued = 0;
        self.probes_ok = 0;
        Transition {
            from: State::HalfOpen,
            to: State::Closed,
            reason: Reason::ProbeSucceeded,
            ejection_ms: 0,
        }
    }

    /// Little-endian layout, versioned by its first byte. The failure-rate
    /// window is written only when it holds something, so breakers without
    /// `failure_rate` stay at [`HEAD_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let with_slots = self.slots.iter().any(|sl| *sl != Slot::default());
        let mut out = Vec::with_capacity(if with_slots { FULL_LEN } else { HEAD_LEN });
        out.push(1u8);
        out.push(self.state as u8);
        for v in [
            self.consecutive,
            self.ejections,
            self.probes_issued,
            self.probes_ok,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.since_or_until.to_le_bytes());
        out.extend_from_slice(&self.last_ejection_ms.to_le_bytes());
        if !with_slots {
            return out;
        }
        for sl in &self.slots {
            out.extend_from_slice(&sl.epoch.to_le_bytes());
            out.extend_from_slice(&sl.requests.to_le_bytes());
            out.extend_from_slice(&sl.failures.to_le_bytes());
        }
        out
    }

    /// The inverse of [`Breaker::encode`]; `None` for anything else
    /// (including an empty value: treat as a fresh breaker).
    pub fn decode(bytes: &[u8]) -> Option<Breaker> {
        if !(bytes.len() == HEAD_LEN || bytes.len() == FULL_LEN) || bytes.first() != Some(&1) {
            return None;
        }
        let mut r = Reader(bytes.get(1..)?);
        let state = match r.u8()? {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            _ => return None,
        };
        let mut b = Breaker {
            state,
            consecutive: r.u32()?,
            ejections: r.u32()?,
            probes_issued: r.u32()?,
            probes_ok: r.u32()?,
            since_or_until: r.u64()?,
            last_ejection_ms: r.u64()?,
            slots: [Slot::default(); SLOTS],
        };
        if bytes.len() == HEAD_LEN {
            return Some(b);
        }
        for sl in &mut b.slots {
            *sl = Slot {
                epoch: r.u64()?,
                requests: r.u32()?,
                failures: r.u32()?,
            };
        }
        Some(b)
    }
}

/// Encoded size without / with the failure-rate window.
pub const HEAD_LEN: usize = 2 + 4 * 4 + 8 * 2;
const FULL_LEN: usize = HEAD_LEN + SLOTS * 16;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 2_500,
            ..Settings::default()
        }
    }

    /// A manual clock and a breaker.
    struct Rig {
        s: Settings,
        b: Breaker,
        now: u64,
    }

    impl Rig {
        fn new(s: Settings) -> Rig {
            Rig {
                s,
                b: Breaker::default(),
                now: 1_000_000,
            }
        }
        fn at(&mut self, ms: u64) -> &mut Self {
            self.now += ms;
            self
        }
        fn admit(&mut self) -> Admission {
            self.b.admit(&self.s, self.now).0
        }
        fn fail(&mut self) -> Option<Transition> {
            self.b.record(&self.s, self.now, true, false)
        }
        fn ok(&mut self) -> Option<Transition> {
            self.b.record(&self.s, self.now, false, false)
        }
        fn probe(&mut self, failure: bool) -> Option<Transition> {
            assert_eq!(self.admit(), Admission::Probe);
            self.b.record(&self.s, self.now, failure, true)
        }
        /// Round-trips through the shared-data encoding, as every request does.
        fn roundtrip(&mut self) {
            self.b = Breaker::decode(&self.b.encode()).unwrap();
        }
    }

    #[test]
    fn rule_1_consecutive_failures_open_and_a_success_resets_the_count() {
        let mut r = Rig::new(settings());
        assert_eq!(r.fail(), None);
        assert_eq!(r.fail(), None);
        assert_eq!(r.ok(), None);
        assert_eq!(r.fail(), None);
        assert_eq!(r.fail(), None);
        r.roundtrip();
        let t = r.fail().unwrap();
        assert_eq!(t.from, State::Closed);
        assert_eq!(t.to, State::Open);
        assert_eq!(t.reason, Reason::ConsecutiveFailures(3));
        assert_eq!(t.ejection_ms, 1_000);
        assert_eq!(
            r.admit(),
            Admission::Blocked {
                retry_after_ms: 1_000
            }
        );
        r.at(400);
        assert_eq!(
            r.admit(),
            Admission::Blocked {
                retry_after_ms: 600
            }
        );
    }

    #[test]
    fn rule_1_zero_disables_the_consecutive_trigger() {
        let mut r = Rig::new(Settings {
            consecutive_failures: 0,
            ..settings()
        });
        for _ in 0..100 {
            assert_eq!(r.fail(), None);
        }
        assert_eq!(r.admit(), Admission::Pass);
    }

    #[test]
    fn rule_1_failure_rate_needs_the_minimum_volume_and_the_threshold() {
        let s = Settings {
            consecutive_failures: 0,
            failure_rate: Some(FailureRate {
                threshold_percent: 50,
                min_requests: 10,
                window_ms: 10_000,
            }),
            ..settings()
        };
        let mut r = Rig::new(s);
        // 4 failures of 8: 50 % but below the minimum volume.
        for i in 0..8 {
            let t = if i % 2 == 0 { r.fail() } else { r.ok() };
            assert_eq!(t, None);
            r.at(100);
        }
        assert_eq!(r.ok(), None); // 4/9
        r.roundtrip();
        let t = r.fail().unwrap(); // 5/10 = 50 %
        assert_eq!(
            t.reason,
            Reason::FailureRate {
                failures: 5,
                requests: 10
            }
        );
    }

    #[test]
    fn rule_1_old_requests_leave_the_window() {
        let s = Settings {
            consecutive_failures: 0,
            failure_rate: Some(FailureRate {
                threshold_percent: 50,
                min_requests: 4,
                window_ms: 1_000,
            }),
            ..settings()
        };
        let mut r = Rig::new(s);
        r.fail();
        r.fail();
        r.fail();
        r.at(1_500); // the three failures are out of the window
        assert_eq!(r.ok(), None);
        assert_eq!(r.ok(), None);
        assert_eq!(r.ok(), None);
        assert_eq!(r.fail(), None); // 1/4 = 25 %
        assert_eq!(r.admit(), Admission::Pass);
    }

    #[test]
    fn rules_2_4_ejection_elapses_then_a_probe_success_closes() {
        let mut r = Rig::new(settings());
        for _ in 0..3 {
            r.fail();
        }
        r.at(999);
        assert!(matches!(r.admit(), Admission::Blocked { .. }));
        r.at(1);
        let (a, t) = r.b.admit(&r.s, r.now);
        assert_eq!(a, Admission::Probe);
        assert_eq!(t.unwrap().reason, Reason::EjectionElapsed);
        // Only one probe at a time; others are blocked while it is out.
        assert_eq!(r.admit(), Admission::Blocked { retry_after_ms: 0 });
        let t = r.b.record(&r.s, r.now, false, true).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::HalfOpen, State::Closed, Reason::ProbeSucceeded)
        );
        assert_eq!(r.admit(), Admission::Pass);
    }

    #[test]
    fn rule_2_is_idempotent() {
        let mut r = Rig::new(settings());
        for _ in 0..3 {
            r.fail();
        }
        r.at(1_000);
        assert!(r.b.advance(&r.s, r.now).is_some());
        let once = r.b.clone();
        assert_eq!(r.b.advance(&r.s, r.now), None);
        assert_eq!(r.b, once);
    }

    #[test]
    fn rule_5_a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let mut r = Rig::new(settings());
        for _ in 0..3 {
            r.fail();
        }
        r.at(1_000);
        let t = r.probe(true).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::HalfOpen, State::Open, Reason::ProbeFailed)
        );
        assert_eq!(t.ejection_ms, 2_000);
        r.at(1_999);
        assert!(matches!(r.admit(), Admission::Blocked { .. }));
        r.at(1);
        assert_eq!(r.probe(true).unwrap().ejection_ms, 2_500); // 3 x 1000 capped at 2500
        r.at(2_500);
        assert_eq!(r.probe(true).unwrap().ejection_ms, 2_500);
        assert_eq!(r.b.ejections(), 4);
    }

    #[test]
    fn rule_4_with_several_probes_all_must_succeed() {
        let mut r = Rig::new(Settings {
            half_open_probes: 2,
            ..settings()
        });
        for _ in 0..3 {
            r.fail();
        }
        r.at(1_000);
        assert_eq!(r.probe(false), None);
        assert_eq!(r.b.state(), State::HalfOpen);
        assert_eq!(r.probe(false).unwrap().to, State::Closed);
    }

    #[test]
    fn rule_3_a_lost_probe_is_given_up_after_the_base_ejection() {
        let mut r = Rig::new(settings());
        for _ in 0..3 {
            r.fail();
        }
        r.at(1_000);
        assert_eq!(r.admit(), Admission::Probe); // its outcome never comes
        r.at(999);
        assert!(matches!(r.admit(), Admission::Blocked { .. }));
        r.at(1);
        assert_eq!(r.admit(), Admission::Probe);
    }

    #[test]
    fn rule_6_the_multiplier_resets_after_staying_closed() {
        let mut r = Rig::new(settings());
        for _ in 0..3 {
            r.fail();
        }
        r.at(1_000);
        r.probe(true); // second ejection: 2000 ms
        r.at(2_000);
        r.probe(false); // closed, ejections still 2
        assert_eq!(r.b.ejections(), 2);
        r.at(1_999);
        r.ok();
        assert_eq!(r.b.ejections(), 2);
        r.at(1);
        r.ok();
        assert_eq!(r.b.ejections(), 0);
        for _ in 0..3 {
            r.fail();
        }
        assert_eq!(
            r.admit(),
            Admission::Blocked {
                retry_after_ms: 1_000
            }
        );
    }

    #[test]
    fn late_outcomes_while_open_do_not_count() {
        let mut r = Rig::new(settings());
        for _ in 0..3 {
            r.fail();
        }
        assert_eq!(r.fail(), None);
        assert_eq!(r.ok(), None);
        assert_eq!(r.b.state(), State::Open);
        assert_eq!(r.b.ejections(), 1);
    }

    #[test]
    fn failures_are_listed_statuses_or_proxy_failures_never_4xx() {
        let s = Settings::default();
        assert!(s.is_failure(500, false));
        assert!(s.is_failure(503, true));
        assert!(!s.is_failure(501, false));
        assert!(s.is_failure(501, true));
        assert!(!s.is_failure(404, false));
        assert!(!s.is_failure(404, true));
        assert!(!s.is_failure(200, false));
    }

    #[test]
    fn decode_rejects_anything_but_its_own_encoding() {
        let b = Breaker::default();
        assert_eq!(Breaker::decode(&b.encode()), Some(b.clone()));
        assert_eq!(Breaker::decode(&[]), None);
        assert_eq!(b.encode().len(), HEAD_LEN);
        assert_eq!(Breaker::decode(&[2; HEAD_LEN]), None);
        assert_eq!(Breaker::decode(&[1; HEAD_LEN + 1]), None);
        let mut bad = b.encode();
        bad[1] = 7;
        assert_eq!(Breaker::decode(&bad), None);
        // With a window, the slots travel too.
        let s = Settings {
            failure_rate: Some(FailureRate {
                threshold_percent: 90,
                min_requests: 100,
                window_ms: 1000,
            }),
            ..Settings::default()
        };
        let mut w = Breaker::default();
        w.record(&s, 5_000, true, false);
        assert_eq!(w.encode().len(), FULL_LEN);
        assert_eq!(Breaker::decode(&w.encode()), Some(w));
    }
}
