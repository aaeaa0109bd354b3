//! The guard: rolls a route back to the monolith when its service does
//! worse than the monolith on the same route over the same window.
//!
//! Pure logic, time injected. The glue counts each completed request of a
//! route in a per-worker [`Window`] (VM memory, no host call), merges it
//! into the process-wide window on its tick and calls [`evaluate`]; a trip
//! is written once to shared data and every worker reads it on its next
//! tick. A tripped route sends every key to the monolith (its effective
//! share is 0 %) until a configuration changes the route's service,
//! percent, ramp, salt or guard (see [`identity`]).
//!
//! Two triggers, each judged only when both sides completed at least
//! `min_requests` requests in the window:
//! 1. Errors: a one-sided two-proportion test. With `p_s`, `p_m` the 5xx
//!    rates of service and monolith (Agresti-Caffo adjusted: one error and
//!    one success added to each side, which keeps the test sane at 0 %),
//!    it trips when
//!    `(p_s - p_m - max_error_rate_increase) / SE >= z(confidence)`,
//!    `SE = sqrt(p_s (1 - p_s) / n_s + p_m (1 - p_m) / n_m)` (adjusted
//!    counts), i.e. when the service's error rate exceeds the monolith's by
//!    more than the allowed increase with the given one-sided confidence.
//! 2. Latency (with `max_latency_ratio`): the service's p95 exceeds
//!    `max_latency_ratio` x the monolith's p95. Latencies are counted in
//!    fixed buckets growing by 2^(1/4) (about 19 %) from 1 ms to 55 s; a
//!    p95 is the upper bound of the bucket holding it, so each side's p95
//!    is known to within a factor 1.19.

use std::fmt;

use crate::wire::Reader;

/// Guard settings of one route (validated by `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub window_s: u32,
    pub min_requests: u32,
    pub max_error_rate_increase: f64,
    pub confidence: f64,
    pub max_latency_ratio: Option<f64>,
    pub epoch: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_s: 30,
            min_requests: 50,
            max_error_rate_increase: 0.02,
            confidence: 0.95,
            max_latency_ratio: None,
            epoch: 0,
        }
    }
}

/// Which side of a route a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Monolith = 0,
    Service = 1,
}

/// Why the guard tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Errors,
    Latency,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Errors => "errors",
            Reason::Latency => "latency",
        }
    }
}

/// Latency buckets: bucket `i` holds latencies up to 2^(i/4) ms.
pub const BUCKETS: usize = 64;

/// The bucket of a latency in ms.
pub fn bucket(ms: u64) -> usize {
    if ms <= 1 {
        return 0;
    }
    let i = (4.0 * (ms as f64).log2()).ceil();
    (i as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, in ms.
pub fn bucket_upper_ms(i: usize) -> f64 {
    2f64.powf(i as f64 / 4.0)
}

/// One side's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub requests: u32,
    pub errors: u32,
    pub latency: [u32; BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a = a.saturating_add(*b);
        }
    }

    /// The 95th percentile's bucket upper bound, in ms.
    pub fn p95_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        // The smallest bucket with at least 95 % of the samples at or below.
        let need = (total * 95).div_ceil(100);
        let mut seen = 0u64;
        for (i, &c) in self.latency.iter().enumerate() {
            seen += u64::from(c);
            if seen >= need {
                return Some(bucket_upper_ms(i));
            }
        }
        None
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            f64::from(self.errors) / f64::from(self.requests)
        }
    }
}

const SLICES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Slice {
    epoch: u64,
    sides: [Counts; 2],
}

/// A sliding window of `window_s`, in ten slices, of both sides' counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    slices: [Slice; SLICES],
}

fn slice_ms(window_s: u32) -> u64 {
    (u64::from(window_s) * 1000 / SLICES as u64).max(1)
}

impl Window {
    /// Counts one completed request.
    pub fn add(&mut self, window_s: u32, now_ms: u64, side: Side, error: bool, latency_ms: u64) {
        let mut c = Counts {
            requests: 1,
            errors: u32::from(error),
            ..Counts::default()
        };
        if let Some(b) = c.latency.get_mut(bucket(latency_ms)) {
            *b = 1;
        }
        self.add_to(now_ms / slice_ms(window_s), side as usize, &c);
    }

    fn add_to(&mut self, epoch: u64, side: usize, c: &Counts) {
        let Some(slice) = self.slices.get_mut((epoch % SLICES as u64) as usize) else {
            return;
        };
        if slice.epoch < epoch {
            *slice = Slice {
                epoch,
                ..Slice::default()
            };
        } else if slice.epoch > epoch {
            return;
        }
        if let Some(s) = slice.sides.get_mut(side) {
            s.add(c);
        }
    }

    /// Adds `other`'s counts into this window.
    pub fn merge(&mut self, other: &Window) {
        for sl in &other.slices {
            for (side, c) in sl.sides.iter().enumerate() {
                if c.requests > 0 {
                    self.add_to(sl.epoch, side, c);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slices
            .iter()
            .all(|sl| sl.sides.iter().all(|c| c.requests == 0))
    }

    /// Both sides' counts over the window ending at `now_ms`:
    /// `[monolith, service]`.
    pub fn totals(&self, window_s: u32, now_ms: u64) -> [Counts; 2] {
        let epoch = now_ms / slice_ms(window_s);
        let oldest = epoch.saturating_sub(SLICES as u64 - 1);
        let mut out = [Counts::default(); 2];
        for sl in self
            .slices
            .iter()
            .filter(|sl| sl.epoch >= oldest && sl.epoch <= epoch)
        {
            for (o, c) in out.iter_mut().zip(&sl.sides) {
                o.add(c);
            }
        }
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        for sl in &self.slices {
            out.extend_from_slice(&sl.epoch.to_le_bytes());
            for c in &sl.sides {
                out.extend_from_slice(&c.requests.to_le_bytes());
                out.extend_from_slice(&c.errors.to_le_bytes());
                for b in &c.latency {
                    out.extend_from_slice(&b.to_le_bytes());
                }
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Option<Window> {
        let mut w = Window::default();
        for sl in &mut w.slices {
            sl.epoch = r.u64()?;
            for c in &mut sl.sides {
                c.requests = r.u32()?;
                c.errors = r.u32()?;
                for b in &mut c.latency {
                    *b = r.u32()?;
                }
            }
        }
        Some(w)
    }
}

/// A trip, with what was seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    pub reason: Reason,
    pub monolith: Counts,
    pub service: Counts,
}

/// `n / d` as a percentage with one decimal, without float formatting
/// (which would add tens of KB to the .wasm).
fn percent_1(n: u32, d: u32) -> String {
    let permille = (u64::from(n) * 1000 + u64::from(d.max(1)) / 2) / u64::from(d.max(1));
    format!("{}.{} %", permille / 10, permille % 10)
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, m) = (&self.service, &self.monolith);
        let ms = |c: &Counts| c.p95_ms().unwrap_or(0.0).round() as u64;
        match self.reason {
            Reason::Errors => write!(
                f,
                "service {}/{} 5xx ({}), monolith {}/{} 5xx ({})",
                s.errors,
                s.requests,
                percent_1(s.errors, s.requests),
                m.errors,
                m.requests,
                percent_1(m.errors, m.requests)
            ),
            Reason::Latency => write!(
                f,
                "service p95 {} ms ({} requests), monolith p95 {} ms ({} requests)",
                ms(s),
                s.requests,
                ms(m),
                m.requests
            ),
        }
    }
}

/// The z value of a one-sided test at `confidence` (inverse of the
/// standard normal CDF; Acklam's rational approximation, relative error
/// below 1.2e-9).
pub fn z(confidence: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = confidence.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The error test statistic (rule 1), for the log and tests.
pub fn error_z(s: &Settings, service: &Counts, monolith: &Counts) -> f64 {
    let adj = |c: &Counts| {
        let n = f64::from(c.requests) + 2.0;
        ((f64::from(c.errors) + 1.0) / n, n)
    };
    let (ps, ns) = adj(service);
    let (pm, nm) = adj(monolith);
    let se = (ps * (1.0 - ps) / ns + pm * (1.0 - pm) / nm).sqrt();
    (ps - pm - s.max_error_rate_increase) / se
}

/// Judges a window's `[monolith, service]` counts.
pub fn evaluate(s: &Settings, totals: &[Counts; 2]) -> Option<Trip> {
    let [monolith, service] = totals;
    if monolith.requests < s.min_requests.max(1) || service.requests < s.min_requests.max(1) {
        return None;
    }
    let trip = |reason| {
        Some(Trip {
            reason,
            monolith: *monolith,
            service: *service,
        })
    };
    if error_z(s, service, monolith) >= z(s.confidence) {
        return trip(Reason::Errors);
    }
    if let Some(ratio) = s.max_latency_ratio {
        if let (Some(ps), Some(pm)) = (service.p95_ms(), monolith.p95_ms()) {
            if ps > ratio * pm {
                return trip(Reason::Latency);
            }
        }
    }
    None
}

/// What the guard of one route keeps in shared data: its window merged
/// across workers and, once tripped, why (sticky).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub tripped: Option<Reason>,
    pub window: Window,
}

const VERSION: u8 = 1;

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + SLICES * (8 + 2 * (8 + 4 * BUCKETS)));
        out.push(VERSION);
        out.push(match self.tripped {
            None => 0,
            Some(Reason::Errors) => 1,
            Some(Reason::Latency) => 2,
        });
        if !self.window.is_empty() {
            self.window.encode_into(&mut out);
        }
        out
    }

    /// The inverse of [`State::encode`]; the empty value is a fresh state;
    /// `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        if bytes.is_empty() {
            return Some(State::default());
        }
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let tripped = match r.u8()? {
            0 => None,
            1 => Some(Reason::Errors),
            2 => Some(Reason::Latency),
            _ => return None,
        };
        let window = if r.is_empty() {
            Window::default()
        } else {
            let w = Window::decode_from(&mut r)?;
            if !r.is_empty() {
                return None;
            }
            w
        };
        Some(State { tripped, window })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn fill(w: &mut Window, s: &Settings, now: u64, side: Side, n: u32, errors: u32, ms: u64) {
        for i in 0..n {
            w.add(s.window_s, now, side, i < errors, ms);
        }
    }

    fn judge(s: &Settings, m: (u32, u32), sv: (u32, u32)) -> Option<Reason> {
        let mut w = Window::default();
        fill(&mut w, s, T0, Side::Monolith, m.0, m.1, 10);
        fill(&mut w, s, T0, Side::Service, sv.0, sv.1, 10);
        evaluate(s, &w.totals(s.window_s, T0)).map(|t| t.reason)
    }

    #[test]
    fn z_matches_the_normal_quantiles() {
        for (p, want) in [
            (0.5, 0.0),
            (0.9, 1.281_551_565_5),
            (0.95, 1.644_853_626_9),
            (0.975, 1.959_963_985_0),
            (0.99, 2.326_347_874_0),
            (0.999, 3.090_232_306_2),
        ] {
            assert!((z(p) - want).abs() < 1e-6, "z({p}) = {}", z(p));
        }
    }

    #[test]
    fn two_errors_of_fifty_do_not_trip_a_two_percent_threshold() {
        let s = Settings::default();
        assert_eq!(judge(&s, (50, 0), (50, 2)), None);
    }

    #[test]
    fn a_service_failing_ten_percent_against_a_healthy_monolith_trips() {
        let s = Settings::default();
        // At the minimum volume the evidence is not yet enough ...
        assert_eq!(judge(&s, (50, 0), (50, 5)), None);
        // ... with a few hundred requests a side it is.
        assert_eq!(judge(&s, (900, 0), (100, 10)), Some(Reason::Errors));
        assert_eq!(judge(&s, (300, 1), (300, 30)), Some(Reason::Errors));
    }

    #[test]
    fn both_sides_failing_alike_do_not_trip() {
        let s = Settings::default();
        assert_eq!(judge(&s, (900, 90), (100, 10)), None);
        assert_eq!(judge(&s, (5000, 500), (5000, 560)), None);
    }

    #[test]
    fn fewer_than_min_requests_on_either_side_never_trip() {
        let s = Settings::default();
        assert_eq!(judge(&s, (49, 0), (500, 500)), None);
        assert_eq!(judge(&s, (500, 0), (49, 49)), None);
    }

    #[test]
    fn latency_trips_on_the_p95_ratio() {
        let s = Settings {
            max_latency_ratio: Some(2.0),
            ..Settings::default()
        };
        let at = |m_ms, s_ms| {
            let mut w = Window::default();
            fill(&mut w, &s, T0, Side::Monolith, 100, 0, m_ms);
            fill(&mut w, &s, T0, Side::Service, 100, 0, s_ms);
            evaluate(&s, &w.totals(s.window_s, T0)).map(|t| t.reason)
        };
        assert_eq!(at(20, 60), Some(Reason::Latency));
        assert_eq!(at(20, 30), None);
        // Off without max_latency_ratio.
        let off = Settings::default();
        let mut w = Window::default();
        fill(&mut w, &off, T0, Side::Monolith, 100, 0, 20);
        fill(&mut w, &off, T0, Side::Service, 100, 0, 2000);
        assert_eq!(evaluate(&off, &w.totals(off.window_s, T0)), None);
    }

    #[test]
    fn p95_is_the_upper_bound_of_its_bucket() {
        let mut c = Counts::default();
        for ms in 1..=100u64 {
            c.latency[bucket(ms)] += 1;
        }
        let p = c.p95_ms().unwrap();
        assert!((95.0..95.0 * 1.19).contains(&p), "p95 {p}");
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 4);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(Counts::default().p95_ms(), None);
    }

    #[test]
    fn old_slices_leave_the_window_and_workers_merge() {
        let s = Settings {
            window_s: 10,
            ..Settings::default()
        };
        let (mut a, mut b) = (Window::default(), Window::default());
        fill(&mut a, &s, T0, Side::Service, 30, 30, 5);
        fill(&mut b, &s, T0 + 5_000, Side::Monolith, 40, 0, 5);
        let mut shared = Window::default();
        shared.merge(&a);
        shared.merge(&b);
        let [m, sv] = shared.totals(s.window_s, T0 + 5_000);
        assert_eq!((m.requests, sv.requests, sv.errors), (40, 30, 30));
        // 10 s later the service's slice (at T0) is gone.
        let [m, sv] = shared.totals(s.window_s, T0 + 10_000);
        assert_eq!((m.requests, sv.requests), (40, 0));
    }

    #[test]
    fn state_round_trips_and_rejects_junk() {
        let s = Settings::default();
        let mut st = State::default();
        assert_eq!(State::decode(&st.encode()), Some(st.clone()));
        assert_eq!(State::decode(&[]), Some(State::default()));
        fill(&mut st.window, &s, T0, Side::Service, 3, 1, 7);
        st.tripped = Some(Reason::Latency);
        let bytes = st.encode();
        assert_eq!(State::decode(&bytes), Some(st));
        assert_eq!(State::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(State::decode(&[9, 0]), None);
        assert_eq!(State::decode(&[VERSION, 7]), None);
    }

    #[test]
    fn the_trip_line_gives_both_sides() {
        let s = Settings::default();
        let mut w = Window::default();
        fill(&mut w, &s, T0, Side::Monolith, 400, 3, 10);
        fill(&mut w, &s, T0, Side::Service, 80, 12, 10);
        let t = evaluate(&s, &w.totals(s.window_s, T0)).unwrap();
        assert_eq!(
            t.to_string(),
            "service 12/80 5xx (15.0 %), monolith 3/400 5xx (0.8 %)"
        );
        let mut w = Window::default();
        let s = Settings {
            max_latency_ratio: Some(2.0),
            ..s
        };
        fill(&mut w, &s, T0, Side::Monolith, 100, 0, 20);
        fill(&mut w, &s, T0, Side::Service, 100, 0, 60);
        let t = evaluate(&s, &w.totals(s.window_s, T0)).unwrap();
        assert_eq!(
            t.to_string(),
            "service p95 64 ms (100 requests), monolith p95 23 ms (100 requests)"
        );
    }
}
