//! `traffic-shift guard-sim PLUGIN.json --route NAME [options]`: the false-trip
//! probability and time to trip of a route's guard on simulated traffic,
//! driving the filter's own guard core (`traffic_shift::guard_sim`).
//! `traffic-shift guard-sim --table` prints the README's table.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use traffic_shift::guard::{Bounds, Settings};
use traffic_shift::guard_sim::{self, Behaviour, Latency, Outage, Scenario, Summary};

pub const USAGE: &str = "usage: traffic-shift guard-sim PLUGIN.json --route NAME [--rps N] [--split PERCENT] [--monolith-error PERCENT] [--service-error PERCENT] [--latency lognormal:MU,SIGMA|pareto:XM,ALPHA] [--service-slower K] [--after-s S] [--hours H] [--trials N] [--seed N], or traffic-shift guard-sim --table [--trials-scale X]";

const HELP: &str = "traffic-shift guard-sim PLUGIN.json --route NAME [options]
traffic-shift guard-sim --table [--trials-scale X]

Simulates a route's traffic for the route's own guard settings and runs the
filter's guard code on it, a simulated second at a time: prints how often the
guard trips and how long it takes.
  --rps N              requests a second to the route, both sides (default 100)
  --split PERCENT      share sent to the service (default: the route's percent)
  --monolith-error PERCENT   the monolith's 5xx rate (default 1)
  --service-error PERCENT    the service's 5xx rate (default: the monolith's)
  --latency lognormal:MU,SIGMA | pareto:XM,ALPHA
                       the monolith's latency in ms: exp(N(MU, SIGMA)), or Pareto
                       with scale XM ms and tail index ALPHA (default lognormal:3,1,
                       a median of 20 ms)
  --service-slower K   the service's latency is the monolith's times K (default 1)
  --after-s S          the service behaves like the monolith for S seconds, then as
                       given (a regression after S seconds of healthy traffic)
  --hours H            hours simulated after that (default 24)
  --trials N           independent trials (default 100)
  --seed N             random seed (default 1)
  --table              the README's table: the default guard (and max_latency_ratio
                       1.5 for latency) on a grid of rates, splits, error rates and
                       latency distributions; --trials-scale multiplies its trials";

fn value<'a>(rest: &mut impl Iterator<Item = &'a OsString>, flag: &str) -> Result<String, String> {
    rest.next()
        .and_then(|v| v.to_str())
        .map(str::to_string)
        .ok_or(format!("{flag} needs a value"))
}

fn number(text: &str, flag: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or(format!(
            "{flag}: expected a non-negative number, got {text:?}"
        ))
}

fn latency(text: &str) -> Result<Latency, String> {
    let bad = || format!("--latency: expected lognormal:MU,SIGMA or pareto:XM,ALPHA, got {text:?}");
    let (kind, params) = text.split_once(':').ok_or_else(bad)?;
    let (a, b) = params.split_once(',').ok_or_else(bad)?;
    let (a, b) = (
        a.parse::<f64>().map_err(|_| bad())?,
        b.parse::<f64>().map_err(|_| bad())?,
    );
    match kind {
        "lognormal" if b > 0.0 && a.is_finite() => Ok(Latency::LogNormal { mu: a, sigma: b }),
        "pareto" if a > 0.0 && b > 0.0 => Ok(Latency::Pareto { xm: a, alpha: b }),
        _ => Err(bad()),
    }
}

pub fn run(args: &[OsString]) -> Result<ExitCode, String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let _ = writeln!(std::io::stdout(), "{HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().is_some_and(|a| a == "--table") {
        let mut scale = 1.0;
        let mut rest = args.iter().skip(1);
        while let Some(flag) = rest.next() {
            match flag.to_str() {
                Some("--trials-scale") => {
                    scale = number(&value(&mut rest, "--trials-scale")?, "--trials-scale")?
                }
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        table(scale);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(file) = args.first() else {
        return Err("expected PLUGIN.json".into());
    };
    let (config, _, _) = match super::envoy::load_config(file) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut route_name = None;
    let (mut rps, mut split) = (100.0, None);
    let (mut me, mut se) = (1.0, None);
    let mut lat = Latency::LogNormal {
        mu: 3.0,
        sigma: 1.0,
    };
    let (mut slower, mut after_s, mut hours, mut trials, mut seed) = (1.0, 0.0, 24.0, 100.0, 1.0);
    let mut rest = args.iter().skip(1);
    while let Some(flag) = rest.next() {
        let f = flag.to_str().unwrap_or("");
        let v = value(&mut rest, f)?;
        match f {
            "--route" => route_name = Some(v),
            "--rps" => rps = number(&v, f)?,
            "--split" => split = Some(number(&v, f)? / 100.0),
            "--monolith-error" => me = number(&v, f)?,
            "--service-error" => se = Some(number(&v, f)?),
            "--latency" => lat = latency(&v)?,
            "--service-slower" => slower = number(&v, f)?,
            "--after-s" => after_s = number(&v, f)?,
            "--hours" => hours = number(&v, f)?,
            "--trials" => trials = number(&v, f)?,
            "--seed" => seed = number(&v, f)?,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let name = route_name.ok_or("--route NAME is required")?;
    let route = config
        .routes
        .iter()
        .find(|r| r.name == name)
        .ok_or(format!("no route named {name:?}"))?;
    let Some(s) = &route.guard else {
        return Err(format!("route {name:?} has no guard"));
    };
    let split = split.unwrap_or(f64::from(route.basis_points) / 10_000.0);
    if !(split > 0.0 && split < 1.0) {
        return Err("--split: must be above 0 and below 100".into());
    }
    let monolith = Behaviour {
        error_rate: me / 100.0,
        latency: lat,
    };
    let service = Behaviour {
        error_rate: se.unwrap_or(me) / 100.0,
        latency: lat.scaled(slower.max(1e-9)),
    };
    let seconds = after_s as u64 + (hours * 3600.0) as u64;
    // A service like the monolith: every trip is false, and the evidence
    // is followed to the end.
    let same = service == monolith;
    let sc = Scenario {
        rps,
        split,
        monolith,
        service_before: monolith,
        service,
        change_after_s: if same { seconds } else { after_s as u64 },
        seconds,
        outage: None,
    };
    let trials = (trials as u32).max(1);
    let sum = guard_sim::run(s, &sc, trials, seed as u64);
    let mut out = String::new();
    let b = Bounds::of(s);
    let _ = writeln!(
        out,
        "route {name}: {rps} rq/s, {}% to the service; 5xx monolith {me}%, service {}%; service latency x{slower}",
        split * 100.0,
        se.unwrap_or(me)
    );
    let _ = writeln!(
        out,
        "thresholds: errors {:.2} nats{}",
        b.errors,
        if s.max_latency_ratio.is_some() {
            format!(", latency {:.2} nats", b.latency)
        } else {
            String::new()
        }
    );
    if after_s > 0.0 {
        let _ = writeln!(
            out,
            "{} of {trials} trials tripped in the first {after_s} s (false trips)",
            sum.early_trips
        );
    }
    let _ = writeln!(
        out,
        "{} of {trials} trials tripped within {hours} h{}: {}",
        sum.tripped(),
        if after_s > 0.0 { " after that" } else { "" },
        upper_bound_note(sum.tripped(), trials)
    );
    let q = |p| {
        sum.quantile_s(p)
            .map_or("-".to_string(), |t| format!("{t} s"))
    };
    let _ = writeln!(out, "time to trip: median {}, p95 {}", q(0.5), q(0.95));
    let _ = writeln!(
        out,
        "largest evidence while the service behaved like the monolith (share of the trip threshold): median {}, p95 {}",
        pct_bp(sum.evidence_quantile(0.5)),
        pct_bp(sum.evidence_quantile(0.95))
    );
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

fn pct_bp(bp: u64) -> String {
    format!("{}.{:02} %", bp / 100, bp % 100)
}

/// "p = k/n (95 % upper bound u)" with an exact upper bound for k = 0 (3/n
/// rule) and a normal one above.
fn upper_bound_note(k: usize, n: u32) -> String {
    let n = f64::from(n);
    let p = k as f64 / n;
    let upper = if k == 0 {
        1.0 - 0.05f64.powf(1.0 / n)
    } else {
        (p + 1.96 * (p * (1.0 - p) / n).sqrt()).min(1.0)
    };
    format!(
        "P = {:.1} % (95 % upper bound {:.1} %)",
        p * 100.0,
        upper * 100.0
    )
}

fn default_latency() -> Latency {
    Latency::LogNormal {
        mu: 3.0,
        sigma: 1.0,
    }
}

/// KL divergence of Bernoulli(p1) from Bernoulli(p0), nats.
fn kl(p1: f64, p0: f64) -> f64 {
    p1 * (p1 / p0).ln() + (1.0 - p1) * ((1.0 - p1) / (1.0 - p0)).ln()
}

struct Case {
    base: f64,
    service_rps: f64,
    split: f64,
}

fn scenario(c: &Case, service: Behaviour, monolith: Behaviour, seconds: u64) -> Scenario {
    Scenario {
        rps: c.service_rps / c.split,
        split: c.split,
        monolith,
        service_before: service,
        service,
        change_after_s: seconds,
        seconds,
        outage: None,
    }
}

/// The README's table.
fn table(scale: f64) {
    let t = |n: f64| ((n * scale).round() as u32).max(1);
    let mut stdout = std::io::stdout();
    let mut say = |s: String| {
        let _ = writeln!(stdout, "{s}");
    };
    let errors_only = Settings::default();
    let with_latency = Settings {
        max_latency_ratio: Some(1.5),
        ..Settings::default()
    };
    let day = 86_400;
    let bases = [0.001, 0.01, 0.05, 0.10, 0.30];
    let rates = [1.0, 10.0, 100.0, 1000.0];
    let splits = [0.01, 0.10, 0.50];

    // 1. Errors: equal sides and the boundary.
    let n1 = t(4.0);
    say(format!(
        "1. Errors, no change, default guard (margin 2 points, confidence 0.95): {n1} trials of 24 h per cell\n"
    ));
    say("| base 5xx | service rq/s | split | equal: trips | equal: max evidence (p50 / max) | boundary (+2 points): trips | boundary: max evidence (p50 / max) |".into());
    say("|---|---|---|---|---|---|---|".into());
    let (mut total, mut trips) = (0u32, 0usize);
    let mut seed = 1;
    for &base in &bases {
        for &rps in &rates {
            for &split in &splits {
                let c = Case {
                    base,
                    service_rps: rps,
                    split,
                };
                let m = Behaviour {
                    error_rate: base,
                    latency: default_latency(),
                };
                let mut cells = Vec::new();
                for extra in [0.0, errors_only.max_error_rate_increase] {
                    let s = Behaviour {
                        error_rate: base + extra,
                        ..m
                    };
                    seed += 1;
                    let sum = guard_sim::run(&errors_only, &scenario(&c, s, m, day), n1, seed);
                    total += n1;
                    trips += sum.tripped();
                    cells.push(format!(
                        "{}/{n1} | {} / {}",
                        sum.tripped(),
                        pct_bp(sum.evidence_quantile(0.5)),
                        pct_bp(sum.evidence_quantile(1.0))
                    ));
                }
                say(format!(
                    "| {} % | {rps} | {} % | {} | {} |",
                    base * 100.0,
                    split * 100.0,
                    cells.first().map_or("", |s| s.as_str()),
                    cells.get(1).map_or("", |s| s.as_str())
                ));
            }
        }
    }
    say(format!(
        "\nAll cells: {trips} trips in {total} route-days ({}).\n",
        upper_bound_note(trips, total)
    ));

    // 2. Latency, equal sides.
    let n2 = t(2.0);
    let dists = [
        (
            "log-normal sigma 0.3",
            Latency::LogNormal {
                mu: 3.0,
                sigma: 0.3,
            },
        ),
        (
            "log-normal sigma 1.0",
            Latency::LogNormal {
                mu: 3.0,
                sigma: 1.0,
            },
        ),
        (
            "log-normal sigma 1.5",
            Latency::LogNormal {
                mu: 3.0,
                sigma: 1.5,
            },
        ),
        (
            "Pareto alpha 1.5",
            Latency::Pareto {
                xm: 10.0,
                alpha: 1.5,
            },
        ),
    ];
    say(format!(
        "2. Latency, identical sides, max_latency_ratio 1.5 (and the error trigger, both sides 1 % 5xx): {n2} trials of 24 h per cell\n"
    ));
    say("| latency | service rq/s | split | trips | max evidence (p50 / max) |".into());
    say("|---|---|---|---|---|".into());
    let (mut total, mut trips) = (0u32, 0usize);
    for (label, lat) in dists {
        for &rps in &rates {
            for &split in &splits {
                let c = Case {
                    base: 0.01,
                    service_rps: rps,
                    split,
                };
                let m = Behaviour {
                    error_rate: c.base,
                    latency: lat,
                };
                seed += 1;
                let sum = guard_sim::run(&with_latency, &scenario(&c, m, m, day), n2, seed);
                total += n2;
                trips += sum.tripped();
                say(format!(
                    "| {label} | {rps} | {} % | {}/{n2} | {} / {} |",
                    split * 100.0,
                    sum.tripped(),
                    pct_bp(sum.evidence_quantile(0.5)),
                    pct_bp(sum.evidence_quantile(1.0))
                ));
            }
        }
    }
    say(format!(
        "\nAll cells: {trips} trips in {total} route-days ({}).\n",
        upper_bound_note(trips, total)
    ));

    // 3. Shared outages.
    let n3 = t(1000.0);
    say(format!(
        "3. A 30 s shared outage (both sides 30-50 % 5xx, uniformly drawn) on a 0.5 % base, 10 service rq/s at 10 %, after 10 min of traffic: {n3} outages\n"
    ));
    let m = Behaviour {
        error_rate: 0.005,
        latency: default_latency(),
    };
    let sc = Scenario {
        rps: 100.0,
        split: 0.10,
        monolith: m,
        service_before: m,
        service: m,
        change_after_s: 720,
        seconds: 720,
        outage: Some(Outage {
            start_s: 600,
            length_s: 30,
            rate: (0.30, 0.50),
        }),
    };
    seed += 1;
    let sum = guard_sim::run(&errors_only, &sc, n3, seed);
    say(format!(
        "{} of {n3} outages tripped the guard ({}); largest evidence p50 {}, max {}\n",
        sum.tripped(),
        upper_bound_note(sum.tripped(), n3),
        pct_bp(sum.evidence_quantile(0.5)),
        pct_bp(sum.evidence_quantile(1.0))
    ));

    // 4. Detection.
    let n4 = t(200.0);
    say(format!(
        "4. Time to trip, 10 service rq/s at 10 % (monolith 90 rq/s), {n4} trials each; the floor is Lorden's h / KL, KL the information per second about the change against the null's boundary, h the method's threshold\n"
    ));
    say("| change | after | median | p95 | tripped | floor h/KL |".into());
    say("|---|---|---|---|---|---|".into());
    let c = Case {
        base: 0.01,
        service_rps: 10.0,
        split: 0.10,
    };
    let healthy = Behaviour {
        error_rate: c.base,
        latency: default_latency(),
    };
    let he = Bounds::of(&errors_only).errors;
    let hl = Bounds::of(&with_latency).latency;
    let d = errors_only.max_error_rate_increase;
    let mut cases: Vec<(String, Settings, Behaviour, f64)> = Vec::new();
    for extra in [0.05, 0.20] {
        let p1 = c.base + extra;
        let floor = he / (c.service_rps * kl(p1, c.base + d));
        cases.push((
            format!("service +{} points 5xx (1 % monolith)", extra * 100.0),
            errors_only.clone(),
            Behaviour {
                error_rate: p1,
                ..healthy
            },
            floor,
        ));
    }
    for (label, lat) in [
        (
            "sigma 0.3",
            Latency::LogNormal {
                mu: 3.0,
                sigma: 0.3,
            },
        ),
        (
            "sigma 1.0",
            Latency::LogNormal {
                mu: 3.0,
                sigma: 1.0,
            },
        ),
    ] {
        // The null's boundary: service p95 = 1.5 x the monolith's; the
        // share of a 3x slower service above it.
        let Latency::LogNormal { sigma, .. } = lat else {
            continue;
        };
        let z95 = 1.644_853_6;
        let above = 1.0 - normal_cdf(z95 + (1.5f64 / 3.0).ln() / sigma);
        let floor = hl / (c.service_rps * kl(above, 0.05));
        cases.push((
            format!("service latency x3 (log-normal {label}, max_latency_ratio 1.5)"),
            with_latency.clone(),
            Behaviour {
                error_rate: c.base,
                latency: lat.scaled(3.0),
            },
            floor,
        ));
    }
    for (label, s, service, floor) in cases {
        for after in [0u64, 6 * 3600] {
            let monolith = Behaviour {
                latency: match service.latency {
                    Latency::LogNormal { sigma, .. } => Latency::LogNormal { mu: 3.0, sigma },
                    other => other,
                },
                ..healthy
            };
            let sc = Scenario {
                rps: c.service_rps / c.split,
                split: c.split,
                monolith,
                service_before: monolith,
                service,
                change_after_s: after,
                seconds: after + 3600,
                outage: None,
            };
            seed += 1;
            let sum: Summary =
                guard_sim::run(&s, &sc, if after > 0 { n4 / 4 } else { n4 }.max(1), seed);
            let q = |p| {
                sum.quantile_s(p)
                    .map_or("-".to_string(), |t| format!("{t} s"))
            };
            say(format!(
                "| {label} | {} | {} | {} | {}/{} | {:.0} s |",
                if after > 0 { "6 h healthy" } else { "start" },
                q(0.5),
                q(0.95),
                sum.tripped(),
                sum.trials,
                floor
            ));
        }
    }
}

fn normal_cdf(z: f64) -> f64 {
    // Abramowitz-Stegun 26.2.17, error below 7.5e-8.
    let t = 1.0 / (1.0 + 0.231_641_9 * z.abs());
    let poly = t
        * (0.319_381_530
            + t * (-0.356_563_782
                + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    let tail = (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * poly;
    if z >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}
