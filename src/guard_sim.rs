//! A Monte-Carlo of the guard (native only, for `traffic-shift guard-sim`
//! and tests): simulated traffic drives the filter's own core,
//! [`guard::State::tick`], once a simulated second with a manual clock.
//!
//! Each second both sides' request counts are Poisson draws, their 5xx
//! counts binomial draws and (with a latency trigger) their latency
//! histograms multinomial draws over the guard's buckets: counts per
//! second in batches, not per request, which is what the guard sees. Exact
//! draws for small means; above a mean of 30 (Poisson) or a variance of 30
//! (binomial) a rounded normal approximation. One simulated worker: in
//! Envoy several workers merge their counts into the same state before a
//! second is judged, which gives the same batches.

use crate::guard::{self, Batches, Counts, Settings, Side, State, BUCKETS};

/// A latency distribution, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// `exp(N(mu, sigma))` ms: median `e^mu` ms.
    LogNormal { mu: f64, sigma: f64 },
    /// Pareto with scale `xm` ms and tail index `alpha`.
    Pareto { xm: f64, alpha: f64 },
}

impl Latency {
    pub fn cdf(&self, ms: f64) -> f64 {
        match *self {
            Latency::LogNormal { mu, sigma } => {
                if ms <= 0.0 {
                    0.0
                } else {
                    normal_cdf((ms.ln() - mu) / sigma)
                }
            }
            Latency::Pareto { xm, alpha } => {
                if ms <= xm {
                    0.0
                } else {
                    1.0 - (xm / ms).powf(alpha)
                }
            }
        }
    }

    /// The same distribution `k` times slower.
    pub fn scaled(&self, k: f64) -> Latency {
        match *self {
            Latency::LogNormal { mu, sigma } => Latency::LogNormal {
                mu: mu + k.ln(),
                sigma,
            },
            Latency::Pareto { xm, alpha } => Latency::Pareto { xm: xm * k, alpha },
        }
    }

    /// Probability of each guard bucket.
    fn buckets(&self) -> [f64; BUCKETS] {
        let mut p = [0.0; BUCKETS];
        let mut below = 0.0;
        for (i, slot) in p.iter_mut().enumerate() {
            let upto = if i + 1 == BUCKETS {
                1.0
            } else {
                self.cdf(guard::bucket_upper_ms(i))
            };
            *slot = (upto - below).max(0.0);
            below = upto;
        }
        p
    }
}

fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// xoshiro256** seeded by splitmix64.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller.
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn poisson(&mut self, mean: f64) -> u32 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u32;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0u32, self.uniform());
        while p > limit {
            k += 1;
            p *= self.uniform();
        }
        k
    }

    pub fn binomial(&mut self, n: u32, p: f64) -> u32 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let nf = f64::from(n);
        if nf * p * (1.0 - p) > 30.0 {
            let x = nf * p + (nf * p * (1.0 - p)).sqrt() * self.normal();
            return x.round().clamp(0.0, nf) as u32;
        }
        // Inversion from 0.
        let q = 1.0 - p;
        let ratio = p / q;
        let mut pk = q.powf(nf);
        let mut cdf = pk;
        let u = self.uniform();
        let mut k = 0u32;
        while u > cdf && k < n {
            pk *= ratio * f64::from(n - k) / f64::from(k + 1);
            k += 1;
            cdf += pk;
        }
        k
    }

    /// A latency histogram of `n` draws from bucket probabilities `p`.
    fn histogram(&mut self, n: u32, p: &[f64; BUCKETS], out: &mut [u32; BUCKETS]) {
        let mut left = n;
        let mut mass = 1.0;
        for (o, &pi) in out.iter_mut().zip(p) {
            if left == 0 {
                *o = 0;
                continue;
            }
            let k = if mass <= pi {
                left
            } else {
                self.binomial(left, (pi / mass).min(1.0))
            };
            *o = k;
            left -= k;
            mass -= pi;
        }
    }
}

/// One side's behaviour over a span of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    pub error_rate: f64,
    pub latency: Latency,
}

/// A simulated route.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Requests a second to the route (both sides).
    pub rps: f64,
    /// Share of them to the service (0 to 1).
    pub split: f64,
    pub monolith: Behaviour,
    /// The service before `change_after_s`.
    pub service_before: Behaviour,
    /// The service from `change_after_s` on.
    pub service: Behaviour,
    pub change_after_s: u64,
    /// Seconds simulated (a trial ends at a trip).
    pub seconds: u64,
    /// A shared outage: both sides' 5xx rate raised to a rate drawn
    /// uniformly from `rate` during `[start_s, start_s + length_s)`.
    pub outage: Option<Outage>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    pub start_s: u64,
    pub length_s: u64,
    pub rate: (f64, f64),
}

/// What trials of a scenario gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub trials: u32,
    /// Seconds from `change_after_s` to each trip (a trip before it counts
    /// as 0), sorted.
    pub trip_after_s: Vec<u64>,
    /// Trips before `change_after_s` (false trips while the service was
    /// `service_before`).
    pub early_trips: u32,
    /// The largest evidence (either trigger, basis points) each trial
    /// reached before `change_after_s` or the end, sorted.
    pub max_evidence_bp: Vec<u64>,
}

impl Summary {
    pub fn tripped(&self) -> usize {
        self.trip_after_s.len()
    }

    /// The `q` quantile of the time to trip over all trials (`None` when
    /// fewer than that share tripped).
    pub fn quantile_s(&self, q: f64) -> Option<u64> {
        let i = (q * f64::from(self.trials)).ceil() as usize;
        self.trip_after_s.get(i.max(1) - 1).copied()
    }

    pub fn evidence_quantile(&self, q: f64) -> u64 {
        let i = ((q * self.max_evidence_bp.len() as f64).ceil() as usize).max(1) - 1;
        self.max_evidence_bp.get(i).copied().unwrap_or(0)
    }
}

/// Starts at a fixed wall-clock time; the guard sees only differences.
const T0_S: u64 = 1_700_000_000;

/// Runs `trials` independent trials of `sc` under guard settings `s`.
pub fn run(s: &Settings, sc: &Scenario, trials: u32, seed: u64) -> Summary {
    let latency = s.max_latency_ratio.is_some();
    let pm = sc.monolith.latency.buckets();
    let ps_before = sc.service_before.latency.buckets();
    let ps_after = sc.service.latency.buckets();
    let mut out = Summary {
        trials,
        trip_after_s: Vec::new(),
        early_trips: 0,
        max_evidence_bp: Vec::new(),
    };
    let mut rng = Rng::new(seed);
    for _ in 0..trials {
        let mut state = State::default();
        let outage_rate = sc
            .outage
            .map(|o| o.rate.0 + (o.rate.1 - o.rate.0) * rng.uniform());
        let mut max_bp = 0;
        for t in 0..sc.seconds {
            let after = t >= sc.change_after_s;
            let svc = if after {
                &sc.service
            } else {
                &sc.service_before
            };
            let in_outage = sc
                .outage
                .is_some_and(|o| t >= o.start_s && t < o.start_s + o.length_s);
            let rate = |base: f64| match outage_rate {
                Some(r) if in_outage => r.max(base),
                _ => base,
            };
            let second = T0_S + t;
            let mut local = Batches::default();
            for (side, mean, err, p) in [
                (
                    Side::Monolith,
                    sc.rps * (1.0 - sc.split),
                    rate(sc.monolith.error_rate),
                    &pm,
                ),
                (
                    Side::Service,
                    sc.rps * sc.split,
                    rate(svc.error_rate),
                    if after { &ps_after } else { &ps_before },
                ),
            ] {
                let n = rng.poisson(mean);
                if n == 0 {
                    continue;
                }
                let mut c = Counts {
                    requests: n,
                    errors: rng.binomial(n, err),
                    ..Counts::default()
                };
                if latency {
                    rng.histogram(n, p, &mut c.latency);
                } else {
                    c.latency[0] = n;
                }
                local.add_counts(second, side, &c);
            }
            // The tick one second later, as the filter's.
            let trip = state.tick(s, &local, (second + 1) * 1000 + 17);
            if !after {
                max_bp = max_bp.max(state.evidence_bp(s).into_iter().max().unwrap_or(0));
            }
            if trip.is_some() {
                if after {
                    out.trip_after_s.push(t - sc.change_after_s);
                } else {
                    out.early_trips += 1;
                    out.trip_after_s.push(0);
                }
                break;
            }
        }
        out.max_evidence_bp.push(max_bp);
    }
    out.trip_after_s.sort_unstable();
    out.max_evidence_bp.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_their_means() {
        let mut r = Rng::new(7);
        let n = 20_000;
        for (mean, tol) in [(0.3, 0.02), (5.0, 0.1), (200.0, 1.0)] {
            let m: f64 = (0..n).map(|_| f64::from(r.poisson(mean))).sum::<f64>() / n as f64;
            assert!((m - mean).abs() < tol, "poisson({mean}) mean {m}");
        }
        for (k, p) in [(10, 0.05), (100, 0.3), (5000, 0.01), (1000, 0.9)] {
            let m: f64 = (0..n).map(|_| f64::from(r.binomial(k, p))).sum::<f64>() / n as f64;
            let want = f64::from(k) * p;
            // 5 standard errors of the mean.
            let tol = 5.0 * (want * (1.0 - p) / n as f64).sqrt();
            assert!((m - want).abs() < tol, "binomial({k}, {p}) mean {m}");
        }
        assert!((normal_cdf(1.644_853_6) - 0.95).abs() < 1e-6);
    }
}
