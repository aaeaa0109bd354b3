//! Local outlier detection for a route's service: a circuit breaker.
//!
//! Pure state machine: time comes in as `now_ms` (injected clock), the state
//! is a plain value the glue keeps in proxy-wasm shared data (one process-wide
//! value per route and service, updated with compare-and-swap) via
//! [`Breaker::encode`] / [`Breaker::decode`]. A healthy breaker (closed, no
//! failure streak, no ejection to remember) encodes to zero bytes, so the
//! glue's per-request read of it copies nothing into the VM, and a success
//! seen while it was healthy needs no write at all.
//!
//! States and transitions:
//! 1. Closed -> Open when `consecutive_failures` failures of the service
//!    arrive in a row ([`Reason::ConsecutiveFailures`]), or when the failure
//!    rate over the last `window_ms` reaches `threshold_percent` with at least
//!    `min_requests` requests ([`Reason::FailureRate`]; the window is a
//!    [`Window`] the glue keeps per worker and merges on its tick). The
//!    ejection count grows by one; the breaker stays open for
//!    `min(base_ejection_ms * ejections, max_ejection_ms)` (Envoy's outlier
//!    detection semantics).
//! 2. Open -> HalfOpen once the ejection time is over
//!    ([`Reason::EjectionElapsed`]). Time-driven and idempotent: whoever sees
//!    it first (a request or any worker's tick) makes it, the others find it
//!    made. Entering HalfOpen starts a new probe round.
//! 3. HalfOpen: `half_open_probes` requests may be outstanding as probes at
//!    once; the rest are handled as when open. Each probe carries the round
//!    that issued it, and only outcomes of the current round count. Probes
//!    still outstanding when the most recent of them has been out for
//!    `base_ejection_ms` are given up: their slots are freed and a new round
//!    starts, so their late outcomes are ignored. Successes already counted
//!    stay counted; a breaker without outstanding probes is never reset by
//!    time, whatever the traffic rate.
//! 4. HalfOpen -> Closed when `half_open_probes` probes have succeeded
//!    ([`Reason::ProbeSucceeded`]).
//! 5. HalfOpen -> Open when a probe of the current round fails
//!    ([`Reason::ProbeFailed`]), for the next, longer ejection.
//! 6. Closed, no ejection for as long as the last ejection lasted: the
//!    ejection count goes back to 0 (no log line, no state change).
//! 7. Clock steps: the glue runs on the host's wall clock, which can jump.
//!    Every entry point first clamps times that lie in the future: an
//!    ejection ends at most `last ejection` after `now_ms` (so no ejection
//!    ever lasts longer than it was set for, and never longer than
//!    `max_ejection_ms`), and "closed since" / "probe issued at" are at most
//!    `now_ms`.
//! 8. Closed since a probe succeeded: the failure-rate trigger counts only
//!    the window's slices that began at or after the close (the slice
//!    holding the close time is left out whole, so up to a tenth of the
//!    window after a close goes uncounted). The close time is kept, and
//!    the breaker is not healthy (not the empty value), until the ejection
//!    multiplier has reset and a whole window has passed since the close.
//!
//! Only outcomes of requests actually sent to the service count: fallbacks
//! to the monolith and fast-fail replies never reach [`Breaker::record`].

use std::fmt;

use crate::wire::Reader;

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

impl FailureRate {
    /// Whether `failures` of `requests` trip this trigger.
    pub fn trips(&self, requests: u32, failures: u32) -> bool {
        requests >= self.min_requests.max(1)
            && u64::from(failures) * 100 >= u64::from(self.threshold_percent) * u64::from(requests)
    }
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
    /// Send it to the service as a half-open probe of `round`; its outcome
    /// counts only while that round lasts.
    Probe { round: u32 },
    /// Keep it from the service; the breaker reopens to probes in this
    /// many ms (for `Retry-After`).
    Blocked { retry_after_ms: u64 },
}

impl Admission {
    /// The outcome ticket of an admitted request (`None`: blocked).
    pub fn ticket(self) -> Option<Ticket> {
        match self {
            Admission::Pass => Some(Ticket::Pass),
            Admission::Probe { round } => Some(Ticket::Probe { round }),
            Admission::Blocked { .. } => None,
        }
    }
}

/// How a request was admitted, carried to its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    Pass,
    Probe { round: u32 },
}

/// The process-wide state of one route's breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    state: State,
    consecutive: u32,
    /// Ejections in a row (the backoff multiplier).
    ejections: u32,
    /// Probe round (rule 3); grows on every entry into HalfOpen and every
    /// give-up.
    round: u32,
    /// HalfOpen: probes of this round let through / succeeded (successes
    /// survive a give-up).
    probes_issued: u32,
    probes_ok: u32,
    /// Open: until when. HalfOpen, Closed: since when (Closed: 0 once
    /// rule 8 forgot it).
    since_or_until: u64,
    /// HalfOpen: when the most recent probe was let through.
    last_probe_ms: u64,
    /// How long the last ejection lasted (rules 6 and 7).
    last_ejection_ms: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            consecutive: 0,
            ejections: 0,
            round: 0,
            probes_issued: 0,
            probes_ok: 0,
            since_or_until: 0,
            last_probe_ms: 0,
            last_ejection_ms: 0,
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

    /// Closed with no failure streak, no ejection and no close time to
    /// remember: encodes to nothing, and a success changes nothing.
    pub fn is_healthy(&self) -> bool {
        self.state == State::Closed
            && self.consecutive == 0
            && self.ejections == 0
            && self.since_or_until == 0
    }

    /// Rule 7: times in the future are clamped to `now_ms`.
    fn clamp(&mut self, now_ms: u64) {
        match self.state {
            State::Open => {
                self.since_or_until = self
                    .since_or_until
                    .min(now_ms.saturating_add(self.last_ejection_ms));
            }
            State::HalfOpen | State::Closed => {
                self.since_or_until = self.since_or_until.min(now_ms);
                self.last_probe_ms = self.last_probe_ms.min(now_ms);
            }
        }
    }

    /// Time-driven transitions (rules 2, 3's give-up, 6, 7). Idempotent:
    /// applying it twice at the same `now_ms` changes nothing the second
    /// time.
    pub fn advance(&mut self, s: &Settings, now_ms: u64) -> Option<Transition> {
        self.clamp(now_ms);
        match self.state {
            State::Open if now_ms >= self.since_or_until => {
                self.state = State::HalfOpen;
                self.since_or_until = now_ms;
                self.round = self.round.wrapping_add(1);
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
                if self.probes_issued > self.probes_ok
                    && now_ms >= self.last_probe_ms.saturating_add(s.base_ejection_ms) =>
            {
                // Rule 3: the outstanding probes' outcomes never came.
                self.round = self.round.wrapping_add(1);
                self.probes_issued = self.probes_ok;
                None
            }
            State::Closed => {
                let closed_for = now_ms.saturating_sub(self.since_or_until);
                if self.ejections > 0 && closed_for >= self.last_ejection_ms {
                    self.ejections = 0;
                }
                // Rule 8: forget the close time once no outcome from before
                // it can still be in the window.
                let window_ms = s.failure_rate.as_ref().map_or(0, |r| r.window_ms);
                if self.ejections == 0 && self.consecutive == 0 && closed_for >= window_ms {
                    self.since_or_until = 0;
                }
                None
            }
            _ => None,
        }
    }

    /// Decides for a request the split sent to the service, taking a probe
    /// slot when half-open.
    pub fn admit(&mut self, s: &Settings, now_ms: u64) -> (Admission, Option<Transition>) {
        let t = self.advance(s, now_ms);
        let admission = match self.state {
            State::Closed => Admission::Pass,
            State::Open => Admission::Blocked {
                retry_after_ms: self.since_or_until.saturating_sub(now_ms),
            },
            State::HalfOpen if self.probes_issued < s.half_open_probes => {
                self.probes_issued += 1;
                self.last_probe_ms = now_ms;
                Admission::Probe { round: self.round }
            }
            State::HalfOpen => Admission::Blocked { retry_after_ms: 0 },
        };
        (admission, t)
    }

    /// Records the outcome of a request sent to the service. `window`: the
    /// failure-rate window including this outcome, when the route has a
    /// failure-rate trigger.
    pub fn record(
        &mut self,
        s: &Settings,
        now_ms: u64,
        failure: bool,
        ticket: Ticket,
        window: Option<&Window>,
    ) -> Option<Transition> {
        if let Some(t) = self.advance(s, now_ms) {
            return Some(t);
        }
        match (self.state, ticket) {
            (State::HalfOpen, Ticket::Probe { round }) if round == self.round => {
                if failure {
                    Some(self.open(s, now_ms, State::HalfOpen, Reason::ProbeFailed))
                } else {
                    self.probes_ok = self.probes_ok.saturating_add(1);
                    (self.probes_ok >= s.half_open_probes).then(|| self.close(now_ms))
                }
            }
            // Late outcomes: of requests admitted before the breaker opened,
            // or of probes of a round given up or over.
            (State::HalfOpen | State::Open, _) => None,
            (State::Closed, _) => self.record_closed(s, now_ms, failure, window),
        }
    }

    fn record_closed(
        &mut self,
        s: &Settings,
        now_ms: u64,
        failure: bool,
        window: Option<&Window>,
    ) -> Option<Transition> {
        self.consecutive = if failure {
            self.consecutive.saturating_add(1)
        } else {
            0
        };
        if s.consecutive_failures > 0 && self.consecutive >= s.consecutive_failures {
            let reason = Reason::ConsecutiveFailures(self.consecutive);
            return Some(self.open(s, now_ms, State::Closed, reason));
        }
        if failure {
            return self.check_rate(s, now_ms, window?);
        }
        None
    }

    /// Rule 1's failure-rate trigger on `window` (the glue calls it on its
    /// tick with the window merged across workers). Only outcomes since the
    /// breaker last closed count.
    pub fn check_rate(&mut self, s: &Settings, now_ms: u64, window: &Window) -> Option<Transition> {
        let rate = s.failure_rate.as_ref()?;
        if self.state != State::Closed {
            return None;
        }
        let (requests, failures) = window.totals(rate.window_ms, now_ms, self.since_or_until);
        if !rate.trips(requests, failures) {
            return None;
        }
        let reason = Reason::FailureRate { failures, requests };
        Some(self.open(s, now_ms, State::Closed, reason))
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
        self.probes_issued = 0;
        self.probes_ok = 0;
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

    /// Little-endian layout, versioned by its first byte; a healthy breaker
    /// is the empty value.
    pub fn encode(&self) -> Vec<u8> {
        if self.is_healthy() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(VERSION);
        out.push(self.state as u8);
        for v in [
            self.consecutive,
            self.ejections,
            self.round,
            self.probes_issued,
            self.probes_ok,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.since_or_until,
            self.last_probe_ms,
            self.last_ejection_ms,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The inverse of [`Breaker::encode`], read forward; the empty value is
    /// a healthy breaker; `None` for anything else (treat as a fresh
    /// breaker).
    ///
    /// Layouts (first byte):
    /// - 2: [`ENCODED_LEN`] bytes, written by this release. A later layout
    ///   must keep these bytes as they are and only append (a change that
    ///   cannot must use another key): this release reads a later layout's
    ///   first [`ENCODED_LEN`] bytes, so a rollback, or an older module
    ///   still running beside a newer one under the same `vm_id`, keeps an
    ///   open breaker open.
    /// - 1: an earlier development layout (34 bytes, or 194 with a
    ///   failure-rate window, which is dropped): no probe round, no probe
    ///   time.
    pub fn decode(bytes: &[u8]) -> Option<Breaker> {
        match bytes.first() {
            None => Some(Breaker::default()),
            Some(1) if bytes.len() == LAYOUT_1_LEN || bytes.len() == LAYOUT_1_LEN + 160 => {
                let mut r = Reader(bytes.get(1..)?);
                let state = Self::state_of(r.u8()?)?;
                Some(Breaker {
                    state,
                    consecutive: r.u32()?,
                    ejections: r.u32()?,
                    round: 0,
                    probes_issued: r.u32()?,
                    probes_ok: r.u32()?,
                    since_or_until: r.u64()?,
                    last_probe_ms: 0,
                    last_ejection_ms: r.u64()?,
                })
            }
            Some(&v)
                if (v == VERSION && bytes.len() == ENCODED_LEN)
                    || (v > VERSION && bytes.len() >= ENCODED_LEN) =>
            {
                let mut r = Reader(bytes.get(1..)?);
                let state = Self::state_of(r.u8()?)?;
                Some(Breaker {
                    state,
                    consecutive: r.u32()?,
                    ejections: r.u32()?,
                    round: r.u32()?,
                    probes_issued: r.u32()?,
                    probes_ok: r.u32()?,
                    since_or_until: r.u64()?,
                    last_probe_ms: r.u64()?,
                    last_ejection_ms: r.u64()?,
                })
            }
            Some(_) => None,
        }
    }

    fn state_of(b: u8) -> Option<State> {
        match b {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }
}

const VERSION: u8 = 2;
/// Layout 1's size without its failure-rate window.
const LAYOUT_1_LEN: usize = 2 + 4 * 4 + 2 * 8;
/// Encoded size of a breaker that is not healthy.
pub const ENCODED_LEN: usize = 2 + 5 * 4 + 3 * 8;

const SLOTS: usize = 10;

/// One slice of a failure-rate window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    epoch: u64,
    requests: u32,
    failures: u32,
}

/// A failure-rate window: `window_ms` in ten slices. Each worker counts its
/// outcomes in a window of its own (no host call per request) and merges it
/// into the process-wide one on its tick ([`Window::merge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    slots: [Slot; SLOTS],
}

impl Window {
    fn slot_ms(window_ms: u64) -> u64 {
        (window_ms / SLOTS as u64).max(1)
    }

    /// Counts one outcome at `now_ms`.
    pub fn add(&mut self, window_ms: u64, now_ms: u64, failure: bool) {
        let epoch = now_ms / Self::slot_ms(window_ms);
        self.forget_future(epoch);
        self.add_to(epoch, 1, u32::from(failure));
    }

    /// Empties the slices of epochs after `epoch` (the current one): they
    /// were counted in another slice unit (`window_ms` changed: a smaller
    /// unit gives larger epochs) or before the clock stepped back, and
    /// would otherwise hold their ring positions, refusing new counts.
    fn forget_future(&mut self, epoch: u64) {
        for sl in &mut self.slots {
            if sl.epoch > epoch {
                *sl = Slot::default();
            }
        }
    }

    fn add_to(&mut self, epoch: u64, requests: u32, failures: u32) {
        let Some(slot) = self.slots.get_mut((epoch % SLOTS as u64) as usize) else {
            return;
        };
        if slot.epoch < epoch {
            *slot = Slot {
                epoch,
                requests: 0,
                failures: 0,
            };
        } else if slot.epoch > epoch {
            return; // older than what this slice holds now
        }
        slot.requests = slot.requests.saturating_add(requests);
        slot.failures = slot.failures.saturating_add(failures);
    }

    /// Adds `other`'s counts into this window, at `now_ms` under the
    /// current `window_ms` (slices of another unit are dropped first).
    pub fn merge(&mut self, other: &Window, window_ms: u64, now_ms: u64) {
        let epoch = now_ms / Self::slot_ms(window_ms);
        self.forget_future(epoch);
        for sl in &other.slots {
            if sl.epoch > epoch {
                continue;
            }
            if sl.requests > 0 {
                self.add_to(sl.epoch, sl.requests, sl.failures);
            }
        }
    }

    /// `(requests, failures)` over the window ending at `now_ms`, leaving
    /// out slices that began before `from_ms` (rule 8: the slice holding
    /// `from_ms` may hold outcomes from before it).
    pub fn totals(&self, window_ms: u64, now_ms: u64, from_ms: u64) -> (u32, u32) {
        let slot_ms = Self::slot_ms(window_ms);
        let epoch = now_ms / slot_ms;
        let oldest = epoch
            .saturating_sub(SLOTS as u64 - 1)
            .max(from_ms.div_ceil(slot_ms));
        self.slots
            .iter()
            .filter(|sl| sl.epoch >= oldest && sl.epoch <= epoch)
            .fold((0u32, 0u32), |(r, f), sl| {
                (r.saturating_add(sl.requests), f.saturating_add(sl.failures))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|sl| sl.requests == 0)
    }

    pub fn clear(&mut self) {
        *self = Window::default();
    }

    /// Little-endian slots; the empty value is an empty window.
    pub fn encode(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(SLOTS * 16);
        for sl in &self.slots {
            out.extend_from_slice(&sl.epoch.to_le_bytes());
            out.extend_from_slice(&sl.requests.to_le_bytes());
            out.extend_from_slice(&sl.failures.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Window> {
        let mut w = Window::default();
        if bytes.is_empty() {
            return Some(w);
        }
        if bytes.len() != SLOTS * 16 {
            return None;
        }
        let mut r = Reader(bytes);
        for sl in &mut w.slots {
            *sl = Slot {
                epoch: r.u64()?,
                requests: r.u32()?,
                failures: r.u32()?,
            };
        }
        Some(w)
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

    /// A manual clock, a breaker and (for failure-rate settings) a window,
    /// driven as the glue drives them.
    struct Rig {
        s: Settings,
        b: Breaker,
        w: Window,
        now: u64,
    }

    impl Rig {
        fn new(s: Settings) -> Rig {
            Rig {
                s,
                b: Breaker::default(),
                w: Window::default(),
                now: 1_700_000_000_000,
            }
        }
        fn at(&mut self, ms: u64) -> &mut Self {
            self.now += ms;
            self
        }
        fn back(&mut self, ms: u64) -> &mut Self {
            self.now -= ms;
            self
        }
        fn admit(&mut self) -> Admission {
            self.b.admit(&self.s, self.now).0
        }
        fn outcome(&mut self, failure: bool, ticket: Ticket) -> Option<Transition> {
            let window = self.s.failure_rate.as_ref().map(|r| r.window_ms);
            if let Some(ms) = window {
                self.w.add(ms, self.now, failure);
            }
            let w = window.map(|_| &self.w);
            self.b.record(&self.s, self.now, failure, ticket, w)
        }
        fn fail(&mut self) -> Option<Transition> {
            self.outcome(true, Ticket::Pass)
        }
        fn ok(&mut self) -> Option<Transition> {
            self.outcome(false, Ticket::Pass)
        }
        /// Admits a probe (which must be admitted as one); its ticket.
        fn issue(&mut self) -> Ticket {
            match self.admit() {
                Admission::Probe { round } => Ticket::Probe { round },
                other => panic!("expected a probe, got {other:?}"),
            }
        }
        fn probe(&mut self, failure: bool) -> Option<Transition> {
            let t = self.issue();
            self.outcome(failure, t)
        }
        fn open(&mut self) {
            for _ in 0..self.s.consecutive_failures {
                self.fail();
            }
            assert_eq!(self.b.state(), State::Open);
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
    fn rule_1_the_failure_streak_saturates() {
        let mut r = Rig::new(Settings {
            consecutive_failures: 0,
            ..settings()
        });
        r.b.consecutive = u32::MAX - 1;
        r.fail();
        r.fail();
        assert_eq!(r.b.consecutive, u32::MAX);
    }

    fn rate(min_requests: u32, window_ms: u64) -> Settings {
        Settings {
            consecutive_failures: 0,
            failure_rate: Some(FailureRate {
                threshold_percent: 50,
                min_requests,
                window_ms,
            }),
            ..settings()
        }
    }

    #[test]
    fn rule_1_failure_rate_needs_the_minimum_volume_and_the_threshold() {
        let mut r = Rig::new(rate(10, 10_000));
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
        let mut r = Rig::new(rate(4, 1_000));
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
    fn rule_1_windows_merged_across_workers_trip_on_the_tick() {
        // Two workers each see 3 failures of 5: neither alone reaches the
        // minimum of 10; merged (as the tick does), 6/10 trips.
        let s = rate(10, 10_000);
        let now = 1_000_000;
        let (mut w1, mut w2) = (Window::default(), Window::default());
        for i in 0..5 {
            w1.add(10_000, now + i, i < 3);
            w2.add(10_000, now + i, i < 3);
        }
        let mut b = Breaker::default();
        assert_eq!(b.check_rate(&s, now + 10, &w1), None);
        let mut shared = Window::decode(&w1.encode()).unwrap();
        shared.merge(&w2, 10_000, now + 10);
        let t = b.check_rate(&s, now + 10, &shared).unwrap();
        assert_eq!(
            t.reason,
            Reason::FailureRate {
                failures: 6,
                requests: 10
            }
        );
    }

    #[test]
    fn rule_1_only_outcomes_since_the_breaker_closed_count() {
        let mut r = Rig::new(rate(4, 10_000));
        for _ in 0..4 {
            r.fail();
        }
        assert_eq!(r.b.state(), State::Open);
        r.at(1_000);
        r.probe(false); // closed again
        assert_eq!(r.b.state(), State::Closed);
        r.at(1_000);
        // The four failures before the ejection are still in the window's
        // time span, but not since the close: 1 failure of 1 is below 4.
        assert_eq!(r.fail(), None);
        assert_eq!(r.b.state(), State::Closed);
    }

    /// Issue 20, item 1: once the multiplier reset, the breaker is healthy
    /// and stored as the empty value; decoding that lost "closed since", so
    /// the failures that opened it, still in a long window, re-opened it.
    #[test]
    fn rule_1_the_failures_before_an_ejection_never_count_again() {
        let mut r = Rig::new(Settings {
            base_ejection_ms: 7_000,
            max_ejection_ms: 300_000,
            ..rate(20, 60_000)
        });
        for _ in 0..30 {
            r.fail();
            if r.b.state() == State::Open {
                break;
            }
        }
        assert_eq!(r.b.state(), State::Open);
        r.at(7_000);
        r.probe(false);
        assert_eq!(r.b.state(), State::Closed);
        // Closed for as long as the ejection: the multiplier resets; every
        // request round-trips through shared data, every second a tick.
        for _ in 0..60 {
            r.at(1_000);
            assert_eq!(r.ok(), None);
            r.roundtrip();
            let w = r.w.clone();
            assert_eq!(r.b.check_rate(&r.s, r.now, &w), None, "at {}", r.now);
            r.roundtrip();
        }
        assert_eq!(r.b.ejections(), 0);
        assert!(r.b.encode().is_empty(), "healthy once the window passed");
    }

    /// Issue 20, item 3: the window slice holding the close time counted in
    /// full, failures before the close included.
    #[test]
    fn rule_1_the_slice_of_the_close_counts_only_after_it() {
        let mut r = Rig::new(Settings {
            base_ejection_ms: 200,
            max_ejection_ms: 300_000,
            ..rate(4, 10_000)
        });
        for _ in 0..4 {
            r.fail();
        }
        assert_eq!(r.b.state(), State::Open);
        r.at(200);
        r.probe(false);
        assert_eq!(r.b.state(), State::Closed);
        for _ in 0..20 {
            r.at(100);
            assert_eq!(r.ok(), None);
            let w = r.w.clone();
            assert_eq!(r.b.check_rate(&r.s, r.now, &w), None, "at {}", r.now);
        }
        assert_eq!(r.b.state(), State::Closed);
    }

    /// Issue 20, item 2: raising `window_ms` in a live config left slices
    /// in the old, smaller unit in shared data, with epochs beyond every new
    /// one: new counts were dropped and the trigger never tripped.
    #[test]
    fn rule_1_a_raised_window_still_trips() {
        let now = 1_700_000_000_000;
        let mut shared = Window::default();
        for i in 0..10 {
            shared.add(1_000, now - 1_000 + i * 100, false);
        }
        let s = rate(20, 10_000);
        let mut b = Breaker::default();
        let mut tripped = None;
        for sec in 0..10 {
            let at = now + sec * 1_000;
            let mut local = Window::default();
            for i in 0..20 {
                local.add(10_000, at + i * 10, true);
            }
            let mut merged = Window::decode(&shared.encode()).unwrap();
            merged.merge(&local, 10_000, at + 500);
            shared = merged;
            if let Some(t) = b.check_rate(&s, at + 500, &shared) {
                tripped = Some(t);
                break;
            }
        }
        assert_eq!(
            tripped.map(|t| t.reason),
            Some(Reason::FailureRate {
                failures: 20,
                requests: 20
            })
        );
    }

    #[test]
    fn rules_2_4_ejection_elapses_then_a_probe_success_closes() {
        let mut r = Rig::new(settings());
        r.open();
        r.at(999);
        assert!(matches!(r.admit(), Admission::Blocked { .. }));
        r.at(1);
        let (a, t) = r.b.admit(&r.s, r.now);
        assert!(matches!(a, Admission::Probe { .. }));
        assert_eq!(t.unwrap().reason, Reason::EjectionElapsed);
        // Only one probe at a time; others are blocked while it is out.
        assert_eq!(r.admit(), Admission::Blocked { retry_after_ms: 0 });
        let t = r.outcome(false, a.ticket().unwrap()).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::HalfOpen, State::Closed, Reason::ProbeSucceeded)
        );
        assert_eq!(r.admit(), Admission::Pass);
    }

    #[test]
    fn rule_2_is_idempotent() {
        let mut r = Rig::new(settings());
        r.open();
        r.at(1_000);
        assert!(r.b.advance(&r.s, r.now).is_some());
        let once = r.b.clone();
        assert_eq!(r.b.advance(&r.s, r.now), None);
        assert_eq!(r.b, once);
    }

    #[test]
    fn rule_5_a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let mut r = Rig::new(settings());
        r.open();
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
        r.open();
        r.at(1_000);
        assert_eq!(r.probe(false), None);
        assert_eq!(r.b.state(), State::HalfOpen);
        assert_eq!(r.probe(false).unwrap().to, State::Closed);
    }

    /// Issue 15, defect 1: 3 probes, 1 s base ejection, the service
    /// answering 2 requests/s, all successful. It used to stay half-open
    /// for ever (the give-up timer ran from the start of the round and
    /// reset the successes even with no probe outstanding).
    #[test]
    fn rule_3_half_open_closes_at_low_traffic() {
        let mut r = Rig::new(Settings {
            half_open_probes: 3,
            ..settings()
        });
        r.open();
        r.at(1_000);
        let mut closed_after = None;
        for i in 1..=10 {
            r.at(500); // 2 requests/s
            if r.b.state() == State::Closed {
                closed_after = Some(i - 1);
                break;
            }
            r.probe(false);
        }
        assert_eq!(closed_after, Some(3));
        assert_eq!(r.b.state(), State::Closed);
        // A burst of 4 is let through whole.
        for _ in 0..4 {
            assert_eq!(r.admit(), Admission::Pass);
        }
        // And the multiplier resets after staying closed (rule 6).
        r.at(1_000);
        r.ok();
        assert_eq!(r.b.ejections(), 0);
    }

    #[test]
    fn rule_3_a_lost_probe_is_given_up_after_the_base_ejection() {
        let mut r = Rig::new(settings());
        r.open();
        r.at(1_000);
        r.issue(); // its outcome never comes
        r.at(999);
        assert!(matches!(r.admit(), Admission::Blocked { .. }));
        r.at(1);
        r.issue();
    }

    /// Issue 15, defect 2: after a quiet spell longer than the base
    /// ejection, two requests in a row must not both become probes.
    #[test]
    fn rule_3_a_quiet_spell_does_not_double_the_probes() {
        let mut r = Rig::new(settings());
        r.open();
        r.at(1_000);
        r.b.advance(&r.s, r.now); // the tick makes it half-open
        r.at(60_000); // nobody asks for a minute
        r.issue();
        assert_eq!(r.admit(), Admission::Blocked { retry_after_ms: 0 });
    }

    /// Issue 15, defect 2: a late success of a probe given up in an earlier
    /// round does not close the breaker while the current probe is out.
    #[test]
    fn rule_3_outcomes_belong_to_the_round_that_issued_them() {
        let mut r = Rig::new(settings());
        r.open();
        r.at(1_000);
        let lost = r.issue();
        r.at(1_000); // given up
        let current = r.issue();
        assert_ne!(lost, current);
        assert_eq!(r.outcome(false, lost), None);
        assert_eq!(r.b.state(), State::HalfOpen);
        assert_eq!(r.admit(), Admission::Blocked { retry_after_ms: 0 });
        assert_eq!(r.outcome(false, current).unwrap().to, State::Closed);
    }

    #[test]
    fn rule_3_successes_survive_a_give_up() {
        let mut r = Rig::new(Settings {
            half_open_probes: 2,
            ..settings()
        });
        r.open();
        r.at(1_000);
        assert_eq!(r.probe(false), None); // 1 of 2
        r.issue(); // lost
        r.at(1_000);
        assert_eq!(r.probe(false).unwrap().to, State::Closed);
    }

    #[test]
    fn rule_6_the_multiplier_resets_after_staying_closed() {
        let mut r = Rig::new(settings());
        r.open();
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
        assert!(r.b.is_healthy());
        r.open();
        assert_eq!(
            r.admit(),
            Admission::Blocked {
                retry_after_ms: 1_000
            }
        );
    }

    /// Issue 15, defect 3: after the wall clock steps back an hour, a 1 s
    /// ejection used to answer retry_after_ms 3601000.
    #[test]
    fn rule_7_a_clock_step_back_never_lengthens_an_ejection() {
        let mut r = Rig::new(settings());
        r.open();
        r.roundtrip();
        r.back(3_600_000);
        assert_eq!(
            r.admit(),
            Admission::Blocked {
                retry_after_ms: 1_000
            }
        );
        r.at(1_000);
        assert!(matches!(r.admit(), Admission::Probe { .. }));
    }

    #[test]
    fn rule_7_a_clock_step_back_in_half_open_and_closed() {
        let mut r = Rig::new(settings());
        r.open();
        r.at(1_000);
        r.issue();
        r.back(3_600_000);
        // The probe was "issued in the future": clamped to now, so it is
        // given up one base ejection from now, not in an hour.
        assert_eq!(r.admit(), Admission::Blocked { retry_after_ms: 0 });
        r.at(1_000);
        r.probe(false);
        assert_eq!(r.b.state(), State::Closed);
        assert_eq!(r.b.ejections(), 1);
        r.back(3_600_000);
        r.ok();
        r.at(1_000); // closed for as long as the last ejection: reset
        r.ok();
        assert_eq!(r.b.ejections(), 0);
    }

    #[test]
    fn late_outcomes_while_open_do_not_count() {
        let mut r = Rig::new(settings());
        r.open();
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
    fn a_healthy_breaker_is_the_empty_value() {
        let b = Breaker::default();
        assert!(b.encode().is_empty());
        assert_eq!(Breaker::decode(&[]), Some(Breaker::default()));
        let mut r = Rig::new(settings());
        r.fail();
        assert_eq!(r.b.encode().len(), ENCODED_LEN);
        r.ok();
        assert!(r.b.encode().is_empty());
    }

    #[test]
    fn decode_rejects_anything_but_its_own_encoding() {
        let mut r = Rig::new(settings());
        r.open();
        let b = r.b.clone();
        assert_eq!(Breaker::decode(&b.encode()), Some(b.clone()));
        assert_eq!(Breaker::decode(&[2; ENCODED_LEN - 1]), None);
        assert_eq!(Breaker::decode(&[1; ENCODED_LEN]), None);
        let mut bad = b.encode();
        bad[1] = 7;
        assert_eq!(Breaker::decode(&bad), None);
        // Windows too.
        let mut w = Window::default();
        assert!(w.encode().is_empty());
        w.add(1_000, 5_000, true);
        assert_eq!(Window::decode(&w.encode()), Some(w.clone()));
        assert_eq!(Window::decode(&[0; 7]), None);
        w.clear();
        assert!(w.is_empty());
    }
}
