//! The guard: rolls a route back to the monolith when its service does
//! worse than the monolith on the same route, with a bound on false
//! rollbacks that holds however long it runs.
//!
//! Pure logic, time injected. The glue counts each completed request of a
//! route in a per-worker [`Batches`] (VM memory, no host call) and, on its
//! tick, hands it to [`State::tick`] on the route's state read from shared
//! data. The state keeps one batch per second of both sides' counts; each
//! second is judged once, [`GRACE_S`] seconds after it ended (so every
//! worker's counts of it are in), by every worker's tick that finds it
//! unjudged. A trip is written once to shared data and every worker reads
//! it on its next tick. A tripped route sends every key to the monolith
//! (its effective share is 0 %) until a configuration changes the route's
//! service, percent, ramp, salt or guard.
//!
//! The guarantee: for each trigger, the chance of a trip while the null
//! hypothesis holds is at most its share of `(1 - confidence) /
//! fleet_size` per 24 h, whatever the traffic rate, split and base rates.
//! It assumes requests fail (or are slow) independently of each other.
//!
//! Both triggers are CUSUM detectors (Page 1954) on per-second e-values:
//! each second's counts give a number `l` whose exponential has an
//! expectation of at most 1 under the null (a log e-value), the statistic
//! is `S = max(0, S + l)` and the guard trips when `S >= h`. `S >= h` at
//! second `t` means some run of seconds `k..=t` has a product of e-values
//! of at least `e^h`; by Ville's inequality a run starting at `k` reaches
//! that with probability at most `e^-h`, so over `T` seconds the chance of
//! any false trip is at most `T e^-h` (a union over start seconds, valid
//! whatever the monolith does from one second to the next). With
//! `T = 86,400` and `h = ln(T / alpha)` a day's chance is at most `alpha`.
//!
//! 1. Errors. Null: the service's 5xx rate is at most the monolith's plus
//!    `max_error_rate_increase` (`d`), in every second. A second's counts
//!    (monolith `x_m` of `n_m` failed, service `x_s` of `n_s`) are scored
//!    against an alternative (monolith rate `q`, service rate `r > q + d`,
//!    both estimated from the seconds before, so chosen in advance) and
//!    the one null pair `(pi, pi + d)` closest to it (the reverse
//!    information projection: `pi` solves
//!    `n_m (q - pi) / (pi (1 - pi)) + n_s (r - d - pi) / ((pi + d)(1 - pi - d)) = 0`).
//!    Then `E[e^l] <= 1` for every monolith rate (the log of the
//!    expectation is concave in it with its maximum 0 at `pi`), so the
//!    monolith's rate is a nuisance handled exactly, in the same second:
//!    a shared outage raises both sides and gives no evidence. This is the
//!    two-sample e-value of Turner, Ly and Grünwald (2024), shifted by the
//!    margin.
//! 2. Latency (with `max_latency_ratio`). Null: the service's p95 is at
//!    most `max_latency_ratio` x the monolith's p95. From the monolith's
//!    latencies in the window an upper confidence bound `U` of its p95 is
//!    taken (order statistics, a Chernoff bound at a level that allows for
//!    every second of the day); under the null at most 5 % of the service's
//!    requests are slower than `c = max_latency_ratio x U`. A second's
//!    service requests in buckets entirely above `c` are scored as a
//!    Bernoulli likelihood ratio of the share `b` (estimated from the
//!    window, at least 10 %) against 5 %. This one assumes the monolith's
//!    latency is steady over the window: a shared latency spike shorter
//!    than the window can look like a service regression.
//!
//! Latencies are counted in fixed buckets growing by 2^(1/4) (about 19 %)
//! from 1 ms to 55 s; a service request counts as slow only when its
//! whole bucket lies above `c`, so a one-bucket difference never trips.

use std::fmt;

use crate::wire::Reader;

/// Guard settings of one route (validated by `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Seconds of history the estimates (the monolith's rate and p95, the
    /// alternative) are taken from.
    pub window_s: u32,
    /// Nothing is judged until each side has this many requests in the
    /// window.
    pub min_requests: u32,
    pub max_error_rate_increase: f64,
    /// `1 - confidence` bounds the chance of a false trip per 24 h (per
    /// fleet, with `fleet_size`).
    pub confidence: f64,
    pub max_latency_ratio: Option<f64>,
    /// Proxies judging the same route: the false-trip budget is divided
    /// among them.
    pub fleet_size: u32,
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
            fleet_size: 1,
            epoch: 0,
        }
    }
}

/// The smallest latency ratio the buckets resolve: one bucket (2^(1/4) =
/// 1.189) rounded up. Configurations accept ratios above 1 (an earlier
/// release did); a smaller one is judged as this.
pub const MIN_LATENCY_RATIO: f64 = 1.19;

impl Settings {
    /// The ratio the latency trigger judges with: `max_latency_ratio`, at
    /// least [`MIN_LATENCY_RATIO`]; `None` without a latency trigger.
    pub fn latency_ratio(&self) -> Option<f64> {
        self.max_latency_ratio.map(|r| r.max(MIN_LATENCY_RATIO))
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
    pub fn add(&mut self, other: &Counts) {
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

    /// Adds counts of one side at `now_ms`.
    pub fn add_counts(&mut self, window_s: u32, now_ms: u64, side: Side, c: &Counts) {
        self.add_to(now_ms / slice_ms(window_s), side as usize, c);
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
            encode_slice(sl, out);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Option<Window> {
        let mut w = Window::default();
        for sl in &mut w.slices {
            decode_slice(sl, r)?;
        }
        Some(w)
    }
}

/// Seconds after its end that a second is judged: every worker ticks once
/// a second, so by then each has merged its counts of it.
pub const GRACE_S: u64 = 1;

/// Seconds per period of the guarantee.
pub const DAY_S: f64 = 86_400.0;

/// Per-second batches of both sides' counts, the last [`RING`] seconds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batches {
    slices: [Slice; RING],
}

/// Seconds a [`Batches`] holds.
pub const RING: usize = 8;

impl Batches {
    /// Counts one completed request.
    pub fn add(&mut self, now_ms: u64, side: Side, error: bool, latency_ms: u64) {
        let mut c = Counts {
            requests: 1,
            errors: u32::from(error),
            ..Counts::default()
        };
        if let Some(b) = c.latency.get_mut(bucket(latency_ms)) {
            *b = 1;
        }
        self.add_counts(now_ms / 1000, side, &c);
    }

    /// Adds a second's counts of one side.
    pub fn add_counts(&mut self, second: u64, side: Side, c: &Counts) {
        let Some(slice) = self.slices.get_mut((second % RING as u64) as usize) else {
            return;
        };
        if slice.epoch < second {
            *slice = Slice {
                epoch: second,
                ..Slice::default()
            };
        } else if slice.epoch > second {
            return;
        }
        if let Some(s) = slice.sides.get_mut(side as usize) {
            s.add(c);
        }
    }

    /// The counts of `second`, `[monolith, service]`, removed.
    fn take(&mut self, second: u64) -> [Counts; 2] {
        match self.slices.get_mut((second % RING as u64) as usize) {
            Some(sl) if sl.epoch == second => std::mem::take(&mut sl.sides),
            _ => [Counts::default(); 2],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slices
            .iter()
            .all(|sl| sl.sides.iter().all(|c| c.requests == 0))
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        for sl in &self.slices {
            encode_slice(sl, out);
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Option<Batches> {
        let mut b = Batches::default();
        for sl in &mut b.slices {
            decode_slice(sl, r)?;
        }
        Some(b)
    }
}

fn encode_slice(sl: &Slice, out: &mut Vec<u8>) {
    out.extend_from_slice(&sl.epoch.to_le_bytes());
    for c in &sl.sides {
        out.extend_from_slice(&c.requests.to_le_bytes());
        out.extend_from_slice(&c.errors.to_le_bytes());
        for b in &c.latency {
            out.extend_from_slice(&b.to_le_bytes());
        }
    }
}

fn decode_slice(sl: &mut Slice, r: &mut Reader<'_>) -> Option<()> {
    sl.epoch = r.u64()?;
    for c in &mut sl.sides {
        c.requests = r.u32()?;
        c.errors = r.u32()?;
        for b in &mut c.latency {
            *b = r.u32()?;
        }
    }
    Some(())
}

/// The thresholds and levels of a route's guard, from its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Trip threshold of the error statistic (nats).
    pub errors: f64,
    /// Trip threshold of the latency statistic (nats).
    pub latency: f64,
    /// `ln(1 / beta)`, `beta` the per-second chance that the monolith's
    /// p95 bound is wrong.
    pub ln_inv_beta: f64,
}

impl Bounds {
    /// The false-trip budget `(1 - confidence) / fleet_size` per day goes
    /// to the error trigger alone, or half to each trigger; the latency
    /// half is split again between its detector and its p95 bound.
    pub fn of(s: &Settings) -> Bounds {
        let alpha = (1.0 - s.confidence) / f64::from(s.fleet_size.max(1));
        let (alpha_e, alpha_l) = match s.max_latency_ratio {
            Some(_) => (alpha / 2.0, alpha / 4.0),
            None => (alpha, alpha),
        };
        Bounds {
            errors: (DAY_S / alpha_e).ln(),
            latency: (DAY_S / alpha_l).ln(),
            ln_inv_beta: (DAY_S / alpha_l).ln(),
        }
    }
}

/// The share of service requests above the latency bound that the null
/// allows.
const SLOW_SHARE: f64 = 0.05;

/// Laplace-smoothed rate `(x + 1/2) / (n + 1)`.
fn rate(x: u32, n: u32) -> f64 {
    (f64::from(x) + 0.5) / (f64::from(n) + 1.0)
}

/// Bernoulli log likelihood ratio of `x` of `n` at `p1` against `p0`.
fn bernoulli_llr(x: u32, n: u32, p1: f64, p0: f64) -> f64 {
    f64::from(x) * (p1 / p0).ln() + f64::from(n - x.min(n)) * ((1.0 - p1) / (1.0 - p0)).ln()
}

/// The error trigger's log e-value of one second (module docs, rule 1):
/// `reference` the window before it, `batch` its `[monolith, service]`.
pub fn error_score(s: &Settings, reference: &[Counts; 2], batch: &[Counts; 2]) -> f64 {
    let [rm, rs] = reference;
    let [bm, bs] = batch;
    let (nm, ns) = (f64::from(bm.requests), f64::from(bs.requests));
    if bm.requests == 0 || bs.requests == 0 {
        return 0.0;
    }
    let d = s.max_error_rate_increase;
    // The alternative, chosen from the window before this second: the
    // monolith's rate, and the service's if above the margin by at least
    // a point (else that point above).
    let q = rate(rm.errors, rm.requests).clamp(1e-4, 0.99);
    let min_excess = (d / 2.0).max(0.01);
    let r = rate(rs.errors, rs.requests)
        .max(q + d + min_excess)
        .min(0.995);
    if r <= q + d || q + d >= 0.995 {
        return 0.0;
    }
    // The projection pi: the root of a decreasing function on (q, r - d).
    let f = |pi: f64| {
        nm * (q - pi) / (pi * (1.0 - pi)) + ns * (r - d - pi) / ((pi + d) * (1.0 - pi - d))
    };
    let (mut lo, mut hi) = (q, r - d);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let pi = 0.5 * (lo + hi);
    bernoulli_llr(bm.errors, bm.requests, q, pi) + bernoulli_llr(bs.errors, bs.requests, r, pi + d)
}

/// The latency bound `c` in ms: `max_latency_ratio` x an upper confidence
/// bound of the monolith's p95 from its window; `None` while the window
/// holds too few monolith requests for a bound at this level.
pub fn latency_bound_ms(ratio: f64, ln_inv_beta: f64, monolith: &Counts) -> Option<f64> {
    let n: u64 = monolith.latency.iter().map(|&c| u64::from(c)).sum();
    let mu = SLOW_SHARE * n as f64;
    // Chernoff: P(Bin(n, 0.05) <= mu - sqrt(2 mu ln(1/beta))) <= beta.
    let allowed = mu - (2.0 * mu * ln_inv_beta).sqrt();
    if allowed < 0.0 {
        return None;
    }
    // The smallest bucket with at most `allowed` requests above it.
    let mut above = n as f64;
    for (i, &c) in monolith.latency.iter().enumerate() {
        above -= f64::from(c);
        if above <= allowed {
            return Some(ratio * bucket_upper_ms(i));
        }
    }
    None
}

/// Requests of `c` whose bucket lies entirely above `bound_ms`.
pub fn slower_than(c: &Counts, bound_ms: f64) -> u32 {
    c.latency
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| bucket_upper_ms(i - 1) >= bound_ms)
        .map(|(_, &n)| n)
        .sum()
}

/// The latency trigger's log e-value of one second (module docs, rule 2).
pub fn latency_score(
    ratio: f64,
    ln_inv_beta: f64,
    reference: &[Counts; 2],
    batch: &[Counts; 2],
) -> f64 {
    let [rm, rs] = reference;
    let bs = &batch[1];
    if bs.requests == 0 {
        return 0.0;
    }
    let Some(bound) = latency_bound_ms(ratio, ln_inv_beta, rm) else {
        return 0.0;
    };
    let b = rate(slower_than(rs, bound), rs.requests).clamp(0.10, 0.95);
    bernoulli_llr(slower_than(bs, bound), bs.requests, b, SLOW_SHARE)
}

/// A trip, with what was seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    pub reason: Reason,
    /// Both sides over the window up to and including the second that
    /// tripped.
    pub monolith: Counts,
    pub service: Counts,
    /// The statistic and the threshold it reached (nats).
    pub statistic: f64,
    pub bound: f64,
}

/// `n / d` as a percentage with one decimal, without float formatting
/// (which would add tens of KB to the .wasm).
fn percent_1(n: u32, d: u32) -> String {
    let permille = (u64::from(n) * 1000 + u64::from(d.max(1)) / 2) / u64::from(d.max(1));
    format!("{}.{} %", permille / 10, permille % 10)
}

/// A non-negative `x` with two decimals, without float formatting.
pub fn fixed_2(x: f64) -> String {
    let v = (x.max(0.0) * 100.0 + 0.5) as u64;
    format!("{}.{:02}", v / 100, v % 100)
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, m) = (&self.service, &self.monolith);
        let ms = |c: &Counts| (c.p95_ms().unwrap_or(0.0) + 0.5) as u64;
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
            )?,
            Reason::Latency => write!(
                f,
                "service p95 {} ms ({} requests), monolith p95 {} ms ({} requests)",
                ms(s),
                s.requests,
                ms(m),
                m.requests
            )?,
        }
        write!(
            f,
            "; evidence {} >= bound {}",
            fixed_2(self.statistic),
            fixed_2(self.bound)
        )
    }
}

/// What the guard of one route keeps in shared data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Once tripped, why (sticky).
    pub tripped: Option<Reason>,
    /// The last second judged (0: none yet).
    pub judged_s: u64,
    /// The CUSUM statistics, `[errors, latency]`, in nats.
    pub statistic: [f64; 2],
    /// Both sides' counts of the judged seconds, over `window_s`.
    pub window: Window,
    /// Counts of seconds not judged yet.
    pub pending: Batches,
}

impl State {
    /// Merges a worker's counts and judges every second that is due; the
    /// trip, if this call tripped the guard.
    pub fn tick(&mut self, s: &Settings, local: &Batches, now_ms: u64) -> Option<Trip> {
        if self.tripped.is_some() {
            return None;
        }
        let due = (now_ms / 1000).saturating_sub(GRACE_S + 1);
        // A fresh state, or one not ticked for longer than the ring: the
        // seconds in between have no counts left.
        if self.judged_s.saturating_add(RING as u64) < due {
            self.judged_s = due.saturating_sub(RING as u64);
        }
        for sl in &local.slices {
            for (side, c) in [Side::Monolith, Side::Service].into_iter().zip(&sl.sides) {
                if c.requests > 0 {
                    // Counts of a second judged already go to the next.
                    let second = sl.epoch.max(self.judged_s + 1);
                    self.pending.add_counts(second, side, c);
                }
            }
        }
        let bounds = Bounds::of(s);
        while self.judged_s < due {
            let second = self.judged_s + 1;
            self.judged_s = second;
            let batch = self.pending.take(second);
            let reference = self.window.totals(s.window_s, second * 1000 - 1);
            for (side, c) in [Side::Monolith, Side::Service].into_iter().zip(&batch) {
                if c.requests > 0 {
                    self.window.add_counts(s.window_s, second * 1000, side, c);
                }
            }
            let [rm, rs] = &reference;
            if rm.requests < s.min_requests.max(1) || rs.requests < s.min_requests.max(1) {
                continue;
            }
            let [e, l] = &mut self.statistic;
            *e = (*e + error_score(s, &reference, &batch)).max(0.0);
            if let Some(ratio) = s.latency_ratio() {
                *l = (*l + latency_score(ratio, bounds.ln_inv_beta, &reference, &batch)).max(0.0);
            }
            let tripped = if *e >= bounds.errors {
                Some((Reason::Errors, *e, bounds.errors))
            } else if *l >= bounds.latency {
                Some((Reason::Latency, *l, bounds.latency))
            } else {
                None
            };
            if let Some((reason, statistic, bound)) = tripped {
                self.tripped = Some(reason);
                let [m, sv] = self.window.totals(s.window_s, second * 1000);
                return Some(Trip {
                    reason,
                    monolith: m,
                    service: sv,
                    statistic,
                    bound,
                });
            }
        }
        None
    }

    /// Each trigger's statistic as a share of its threshold, in basis
    /// points (0 to 10,000; 10,000 once tripped on it): `[errors, latency]`.
    pub fn evidence_bp(&self, s: &Settings) -> [u64; 2] {
        let b = Bounds::of(s);
        let bp = |x: f64, h: f64, reason| {
            if self.tripped == Some(reason) {
                10_000
            } else {
                ((x / h).clamp(0.0, 1.0) * 10_000.0) as u64
            }
        };
        let [e, l] = self.statistic;
        [
            bp(e, b.errors, Reason::Errors),
            bp(l, b.latency, Reason::Latency),
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let slice = 8 + 2 * (8 + 4 * BUCKETS);
        let mut out = Vec::with_capacity(2 + 24 + (SLICES + RING) * slice);
        out.push(VERSION);
        out.push(match self.tripped {
            None => 0,
            Some(Reason::Errors) => 1,
            Some(Reason::Latency) => 2,
        });
        out.extend_from_slice(&self.judged_s.to_le_bytes());
        for x in self.statistic {
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        self.window.encode_into(&mut out);
        self.pending.encode_into(&mut out);
        out
    }

    /// The inverse of [`State::encode`], and reads the previous layout
    /// (version 1: the trip and a window); the empty value is a fresh
    /// state; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        if bytes.is_empty() {
            return Some(State::default());
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        let tripped = match r.u8()? {
            0 => None,
            1 => Some(Reason::Errors),
            2 => Some(Reason::Latency),
            _ => return None,
        };
        let state = match version {
            1 => State {
                tripped,
                // A version-1 window's slices are in another unit: its
                // counts are dropped, its trip kept.
                window: if r.is_empty() {
                    Window::default()
                } else {
                    Window::decode_from(&mut r).map(|_| Window::default())?
                },
                ..State::default()
            },
            VERSION => {
                let judged_s = r.u64()?;
                let statistic = [f64::from_bits(r.u64()?), f64::from_bits(r.u64()?)];
                State {
                    tripped,
                    judged_s,
                    statistic,
                    window: Window::decode_from(&mut r)?,
                    pending: Batches::decode_from(&mut r)?,
                }
            }
            _ => return None,
        };
        r.is_empty().then_some(state)
    }
}

const VERSION: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn counts(n: u32, errors: u32, ms: u64) -> Counts {
        let mut c = Counts {
            requests: n,
            errors,
            ..Counts::default()
        };
        c.latency[bucket(ms)] = n;
        c
    }

    /// Feeds `seconds` seconds of the same per-second counts (monolith,
    /// service) to a state, ticking as the filter does; the second of the
    /// trip, if any.
    fn feed(
        s: &Settings,
        st: &mut State,
        from: u64,
        seconds: u64,
        m: Counts,
        sv: Counts,
    ) -> Option<(u64, Trip)> {
        for t in from..from + seconds {
            let mut local = Batches::default();
            local.add_counts(t, Side::Monolith, &m);
            local.add_counts(t, Side::Service, &sv);
            if let Some(trip) = st.tick(s, &local, (t + 1) * 1000 + 3) {
                return Some((t, trip));
            }
        }
        None
    }

    fn binomial_pmf(n: u32, p: f64) -> Vec<f64> {
        let mut out = vec![0.0; n as usize + 1];
        if p >= 1.0 {
            out[n as usize] = 1.0;
            return out;
        }
        out[0] = (1.0 - p).powi(n as i32);
        for k in 1..=n as usize {
            out[k] = out[k - 1] * p / (1.0 - p) * f64::from(n - k as u32 + 1) / k as f64;
        }
        out
    }

    /// `E[e^l]` of one second's error score, exactly, when the monolith
    /// fails at `pm` and the service at `ps`.
    fn expected_e(
        s: &Settings,
        reference: &[Counts; 2],
        nm: u32,
        ns: u32,
        pm: f64,
        ps: f64,
    ) -> f64 {
        let (fm, fs) = (binomial_pmf(nm, pm), binomial_pmf(ns, ps));
        let mut sum = 0.0;
        for (xm, wm) in fm.iter().enumerate() {
            for (xs, ws) in fs.iter().enumerate() {
                let batch = [counts(nm, xm as u32, 5), counts(ns, xs as u32, 5)];
                sum += wm * ws * error_score(s, reference, &batch).exp();
            }
        }
        sum
    }

    #[test]
    fn the_error_score_is_an_e_value_for_every_monolith_rate() {
        // Whatever the alternative the window suggests, the counts per
        // second and the monolith's rate, on the boundary (service =
        // monolith + margin) and inside the null: E[e^l] <= 1.
        for d in [0.0, 0.02, 0.1] {
            let s = Settings {
                max_error_rate_increase: d,
                ..Settings::default()
            };
            for (ref_m, ref_s) in [
                ((1000, 10), (100, 1)),
                ((300, 30), (300, 90)),
                ((50, 0), (500, 400)),
            ] {
                let reference = [counts(ref_m.0, ref_m.1, 5), counts(ref_s.0, ref_s.1, 5)];
                for (nm, ns) in [(1, 1), (9, 1), (90, 10), (10, 10), (3, 40)] {
                    for pm in [0.0, 0.001, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0 - d] {
                        for ps in [pm + d, (pm + d) / 2.0, 0.0] {
                            let e = expected_e(&s, &reference, nm, ns, pm, ps.min(1.0));
                            assert!(
                                e <= 1.0 + 1e-9,
                                "E = {e} at d {d}, n {nm}/{ns}, rates {pm}/{ps}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_error_score_is_positive_on_average_for_a_regression() {
        let s = Settings::default();
        let reference = [counts(2700, 27, 5), counts(300, 18, 5)];
        // Monolith 1 %, service 6 %: 90 and 10 requests a second.
        let (fm, fs) = (binomial_pmf(90, 0.01), binomial_pmf(10, 0.06));
        let mut mean = 0.0;
        for (xm, wm) in fm.iter().enumerate() {
            for (xs, ws) in fs.iter().enumerate() {
                let batch = [counts(90, xm as u32, 5), counts(10, xs as u32, 5)];
                mean += wm * ws * error_score(&s, &reference, &batch);
            }
        }
        // Within 10 % of the information about 6 % against the 3 %
        // boundary at 10 requests a second (0.120 nats).
        assert!((0.105..0.125).contains(&mean), "{mean}");
        // No monolith request in the second: no evidence.
        let batch = [Counts::default(), counts(10, 10, 5)];
        assert_eq!(error_score(&s, &reference, &batch), 0.0);
    }

    #[test]
    fn thresholds_follow_the_daily_budget() {
        let s = Settings::default();
        let b = Bounds::of(&s);
        assert!((b.errors - (86_400f64 / 0.05).ln()).abs() < 1e-12);
        let with_latency = Settings {
            max_latency_ratio: Some(2.0),
            fleet_size: 10,
            ..s
        };
        let b = Bounds::of(&with_latency);
        assert!((b.errors - (86_400f64 / 0.0025).ln()).abs() < 1e-12);
        assert!((b.latency - (86_400f64 / 0.00125).ln()).abs() < 1e-12);
    }

    #[test]
    fn a_service_failing_ten_percent_against_a_healthy_monolith_trips_within_a_minute() {
        let s = Settings::default();
        let mut st = State::default();
        // 90 monolith requests a second, none failing; 10 service requests,
        // one failing: about 30 s of evidence after the window fills.
        let (t, trip) = feed(&s, &mut st, T0, 120, counts(90, 0, 5), counts(10, 1, 5)).unwrap();
        assert!(t - T0 < 60, "tripped after {} s", t - T0);
        assert_eq!(trip.reason, Reason::Errors);
        assert!(trip.statistic >= trip.bound);
        assert_eq!(st.tripped, Some(Reason::Errors));
        assert_eq!(st.evidence_bp(&s), [10_000, 0]);
        // Sticky: nothing more is judged.
        let judged = st.judged_s;
        assert_eq!(
            feed(&s, &mut st, t + 1, 10, counts(90, 0, 5), counts(10, 0, 5)),
            None
        );
        assert_eq!(st.judged_s, judged);
    }

    #[test]
    fn both_sides_failing_alike_raise_no_evidence() {
        let s = Settings::default();
        let mut st = State::default();
        // 10 % on both sides, exactly, for an hour.
        assert_eq!(
            feed(&s, &mut st, T0, 3600, counts(100, 10, 5), counts(10, 1, 5)),
            None
        );
        assert_eq!(st.evidence_bp(&s), [0, 0]);
        // A shared outage: both at 50 %.
        assert_eq!(
            feed(
                &s,
                &mut st,
                T0 + 3600,
                60,
                counts(100, 50, 5),
                counts(10, 5, 5)
            ),
            None
        );
        assert_eq!(st.evidence_bp(&s), [0, 0]);
    }

    #[test]
    fn nothing_is_judged_below_min_requests() {
        let s = Settings::default();
        let mut st = State::default();
        // The service gets 1 request a second: 30 in the 30 s window < 50.
        assert_eq!(
            feed(&s, &mut st, T0, 600, counts(100, 0, 5), counts(1, 1, 5)),
            None
        );
        assert_eq!(st.statistic, [0.0, 0.0]);
    }

    #[test]
    fn seconds_are_judged_after_the_grace_and_late_counts_go_to_the_next() {
        let s = Settings::default();
        let mut st = State::default();
        let mut local = Batches::default();
        local.add(T0 * 1000 + 500, Side::Service, true, 5);
        assert_eq!(st.tick(&s, &local, (T0 + 1) * 1000), None);
        // The first tick starts judging at the grace.
        assert_eq!(st.judged_s, T0 + 1 - GRACE_S - 1);
        // Second T0 is judged GRACE_S seconds after its end, not before.
        let judged_at = (T0 + 1 + GRACE_S) * 1000;
        assert_eq!(st.tick(&s, &Batches::default(), judged_at - 1), None);
        assert_eq!(st.judged_s, T0 - 1);
        assert_eq!(st.tick(&s, &Batches::default(), judged_at), None);
        assert_eq!(st.judged_s, T0);
        assert_eq!(st.window.totals(s.window_s, T0 * 1000)[1].errors, 1);
        // A worker's count of a judged second joins the next one.
        let mut late = Batches::default();
        late.add(T0 * 1000 + 900, Side::Monolith, false, 5);
        st.tick(&s, &late, judged_at + 10);
        assert_eq!(st.window.totals(s.window_s, T0 * 1000)[0].requests, 0);
        st.tick(&s, &Batches::default(), judged_at + 1000);
        assert_eq!(st.window.totals(s.window_s, (T0 + 1) * 1000)[0].requests, 1);
    }

    fn latency_settings(ratio: f64) -> Settings {
        Settings {
            max_latency_ratio: Some(ratio),
            ..Settings::default()
        }
    }

    #[test]
    fn latency_never_trips_on_a_one_bucket_difference() {
        // 108 ms against 107 ms is one bucket apart (bucket(107) = 27,
        // bucket(108) = 28); every request, for an hour, at the smallest
        // ratio.
        assert_eq!(bucket(108), bucket(107) + 1);
        let s = latency_settings(1.19);
        let mut st = State::default();
        assert_eq!(
            feed(
                &s,
                &mut st,
                T0,
                3600,
                counts(100, 0, 107),
                counts(30, 0, 108)
            ),
            None
        );
        assert_eq!(st.statistic[1], 0.0);
    }

    #[test]
    fn a_service_three_times_slower_trips_on_latency() {
        let s = latency_settings(1.5);
        let mut st = State::default();
        let (t, trip) = feed(&s, &mut st, T0, 300, counts(90, 0, 20), counts(10, 0, 60)).unwrap();
        assert_eq!(trip.reason, Reason::Latency);
        assert!(t - T0 < 60, "tripped after {} s", t - T0);
        assert_eq!(st.evidence_bp(&s), [0, 10_000]);
    }

    #[test]
    fn the_latency_bound_needs_enough_monolith_requests() {
        let b = Bounds::of(&latency_settings(1.5));
        // ln(1/beta) = ln(4 x 86,400 / 0.05) = 15.75: mu > 31.5, n > 630.
        assert_eq!(
            latency_bound_ms(1.5, b.ln_inv_beta, &counts(600, 0, 20)),
            None
        );
        let c = counts(700, 0, 20);
        assert_eq!(
            latency_bound_ms(1.5, b.ln_inv_beta, &c),
            Some(1.5 * bucket_upper_ms(bucket(20)))
        );
        // Buckets entirely above 1.5 x 22.6 ms = 33.9 ms: (38.1, 45.3] and
        // up; 38 ms is in (32, 38.1], partly below.
        assert_eq!(slower_than(&counts(10, 0, 40), 33.9), 10);
        assert_eq!(slower_than(&counts(10, 0, 38), 33.9), 0);
    }

    #[test]
    fn bucket_bounds() {
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
    fn state_round_trips_and_rejects_junk() {
        let s = Settings::default();
        let mut st = State::default();
        assert_eq!(State::decode(&st.encode()), Some(st.clone()));
        assert_eq!(State::decode(&[]), Some(State::default()));
        feed(&s, &mut st, T0, 100, counts(90, 1, 7), counts(10, 1, 9));
        st.tripped = Some(Reason::Latency);
        let bytes = st.encode();
        assert_eq!(State::decode(&bytes), Some(st));
        assert_eq!(State::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(State::decode(&[9, 0]), None);
        assert_eq!(State::decode(&[VERSION, 7]), None);
        assert_eq!(State::decode(&[VERSION, 0]), None);
    }

    #[test]
    fn a_trip_written_by_the_previous_layout_is_kept() {
        // Version 1 (the fixed-level test's state): version, trip, and a
        // window of ten slices, as the previous release wrote it.
        let v1 = include_bytes!("../tests/fixtures/guard_state_v1.bin");
        assert_eq!(v1.len(), 2 + 10 * (8 + 2 * (8 + 4 * 64)));
        let st = State::decode(v1).unwrap();
        assert_eq!(st.tripped, Some(Reason::Errors));
        assert_eq!(st.window, Window::default());
        // The short forms it wrote too.
        assert_eq!(
            State::decode(&[1, 2]).unwrap().tripped,
            Some(Reason::Latency)
        );
        assert_eq!(State::decode(&[1, 0]).unwrap(), State::default());
        assert_eq!(State::decode(&v1[..v1.len() - 1]), None);
        // A tripped state stays tripped on the new code's tick.
        let mut st = st;
        let s = Settings::default();
        assert_eq!(
            feed(&s, &mut st, T0, 5, counts(90, 0, 5), counts(10, 0, 5)),
            None
        );
        assert_eq!(st.tripped, Some(Reason::Errors));
    }

    #[test]
    fn the_trip_line_gives_both_sides_and_the_evidence() {
        let t = Trip {
            reason: Reason::Errors,
            monolith: counts(400, 3, 10),
            service: counts(80, 12, 10),
            statistic: 14.5678,
            bound: 14.3623,
        };
        assert_eq!(
            t.to_string(),
            "service 12/80 5xx (15.0 %), monolith 3/400 5xx (0.8 %); evidence 14.57 >= bound 14.36"
        );
        let t = Trip {
            reason: Reason::Latency,
            monolith: counts(100, 0, 20),
            service: counts(100, 0, 60),
            statistic: 15.1,
            bound: 15.06,
        };
        assert_eq!(
            t.to_string(),
            "service p95 64 ms (100 requests), monolith p95 23 ms (100 requests); evidence 15.10 >= bound 15.06"
        );
    }
}
