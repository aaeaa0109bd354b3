//! `traffic-shift check FILE [--key VALUE [--route NAME]] [--at TIME]`
//!
//! Validates a plugin configuration with the filter's own code, for CI
//! pipelines before a config is pushed over xDS. Invalid: every error on
//! stderr, as the filter logs it, exit 1. Valid: the plan (per route: match,
//! service, percent now, ramp steps ahead, outlier settings), and with
//! `--key` which side that key lands on and its bucket. `--at` evaluates
//! ramps at another time (RFC 3339 UTC) instead of now. FILE `-` is stdin.
//! Arguments are taken as bytes: a key or a file name need not be UTF-8.
//! A usage error or an unreadable FILE: one line on stderr, exit 2.
//! `--envoy BOOTSTRAP.yaml` also lints an Envoy bootstrap against the
//! configuration (exit 1 on an error).
//!
//! `traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT...` prints the
//! Envoy bootstrap the configuration needs (`envoy.rs`).
//!
//! `traffic-shift guard-sim PLUGIN.json --route NAME ...` simulates a route's
//! guard on the filter's own guard code (`guard_sim.rs`).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use traffic_shift::breaker::OnOpen;
use traffic_shift::config::{Config, HashKey, Route, Target};
use traffic_shift::hash::{bucket, shifted};
use traffic_shift::ramp::{format_rfc3339_utc, parse_rfc3339_utc};
use traffic_shift::routes::PathMatch;

#[path = "traffic-shift/envoy.rs"]
mod envoy;
#[path = "traffic-shift/guard_sim.rs"]
mod guard_sim;

/// `writeln!` into the output buffer (a `String` cannot fail).
macro_rules! say {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

const USAGE: &str =
    "usage: traffic-shift check FILE [--key VALUE [--route NAME]] [--at RFC3339-UTC] [--envoy BOOTSTRAP.yaml], or traffic-shift envoy --help";

const HELP: &str = "traffic-shift check FILE [--key VALUE [--route NAME]] [--at RFC3339-UTC] [--envoy BOOTSTRAP.yaml]
traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT... (see traffic-shift envoy --help)
traffic-shift guard-sim PLUGIN.json --route NAME ... (see traffic-shift guard-sim --help)

Checks a traffic_shift plugin configuration (JSON) with the filter's own code.
  FILE           the configuration; - reads standard input
  --key VALUE    also show the bucket and side of this request key (any bytes)
  --route NAME   only for this route (default: every route)
  --at TIME      evaluate ramps at TIME (RFC 3339 UTC) instead of now
  --envoy BOOTSTRAP.yaml
                 also check an Envoy bootstrap against it: a route per service
                 before any route catching its traffic, the clusters, the
                 target header stripped before routing, the stats tags, the
                 failure policy (errors and warnings on stderr)

Exit status: 0 valid (the plan is printed), 1 invalid (every error on stderr,
as the filter logs it) or an error in BOOTSTRAP.yaml, 2 usage error or
unreadable FILE (one line on stderr).";

fn main() -> ExitCode {
    // Arguments are bytes on Unix: a key or a file name need not be UTF-8.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (result, usage) = match args.split_first() {
        Some((cmd, rest)) if cmd == "envoy" => (envoy::run(rest), envoy::USAGE),
        Some((cmd, rest)) if cmd == "guard-sim" => (guard_sim::run(rest), guard_sim::USAGE),
        _ => (run(&args), USAGE),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("traffic-shift: {msg} ({usage})");
            ExitCode::from(2)
        }
    }
}

/// `s` as `"..."`: Rust string syntax when it is UTF-8, else ASCII with
/// `\xNN` escapes.
fn quoted(s: &[u8]) -> String {
    match std::str::from_utf8(s) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("\"{}\"", s.escape_ascii()),
    }
}

fn run(args: &[OsString]) -> Result<ExitCode, String> {
    let help = |a: &OsString| a == "--help" || a == "-h";
    // --help in any flag position (not as the value of --key).
    let mut flags = args.iter().skip(2).step_by(2);
    if args.first().is_some_and(help) || args.get(1).is_some_and(help) || flags.any(help) {
        let _ = writeln!(std::io::stdout(), "{HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(cmd), Some(file)) = (args.first(), args.get(1)) else {
        return Err("expected `check FILE` or `envoy PLUGIN.json`".into());
    };
    if cmd != "check" {
        return Err(format!("unknown command {}", quoted(cmd.as_bytes())));
    }
    let mut key: Option<&OsStr> = None;
    let mut bootstrap_file: Option<&OsStr> = None;
    let mut route_name = None;
    let mut now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rest = args.iter().skip(2);
    while let Some(flag) = rest.next() {
        let flag_text = quoted(flag.as_bytes());
        let known = ["--key", "--route", "--at", "--envoy"];
        if !known.iter().any(|k| flag == k) {
            return Err(format!("unknown argument {flag_text}"));
        }
        let value = rest
            .next()
            .ok_or(format!("{} needs a value", flag.to_string_lossy()))?;
        if flag == "--key" {
            key = Some(value);
            continue;
        }
        if flag == "--envoy" {
            bootstrap_file = Some(value);
            continue;
        }
        let Some(text) = value.to_str() else {
            return Err(format!(
                "{}: not UTF-8: {}",
                flag.to_string_lossy(),
                quoted(value.as_bytes())
            ));
        };
        if flag == "--route" {
            route_name = Some(text.to_string());
        } else {
            now_ms =
                parse_rfc3339_utc(text).ok_or(format!("--at: not an RFC 3339 UTC time: {text}"))?;
        }
    }
    let (config, _, shown) = match envoy::load_config(file) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    if let Some(name) = &route_name {
        if !config.routes.iter().any(|r| &r.name == name) {
            return Err(format!("--route: no route named {name:?}"));
        }
    }
    let bootstrap = match bootstrap_file.map(envoy::read_bootstrap).transpose() {
        Ok(b) => b,
        Err(line) => {
            eprintln!("traffic-shift: {line}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut out = String::new();
    print_plan(&mut out, &shown, &config, now_ms);
    if let Some(key) = key {
        say!(out);
        for r in &config.routes {
            if route_name.as_ref().is_none_or(|n| n == &r.name) {
                print_key(&mut out, &config, r, key.as_bytes(), now_ms);
            }
        }
    }
    let lint_failed = bootstrap.is_some_and(|(b, name)| {
        say!(out);
        envoy::print_lint(&mut out, &b, &name, &config)
    });
    // A closed stdout (`| head`) is not an error of the check.
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(if lint_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `x` with at most 6 decimals and no trailing zeros: `0.07 * 100.0` is
/// `7`, not `7.000000000000001`.
fn short(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn percent(bp: u16) -> String {
    let s = format!("{}.{:02}", bp / 100, bp % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_string() + "%"
}

fn key_source(k: &HashKey) -> String {
    match k {
        HashKey::Header(h) => format!("header {h}"),
        HashKey::Cookie(c) => format!("cookie {c}"),
    }
}

fn print_plan(out: &mut String, file: &str, config: &Config, now_ms: u64) {
    say!(
        out,
        "{file}: valid; monolith cluster {:?}, target header {:?}, {} route(s), evaluated at {}",
        config.monolith,
        config.target_header,
        config.routes.len(),
        format_rfc3339_utc(now_ms)
    );
    if let Some(o) = &config.override_header {
        let secret = if o.secret.is_some() {
            format!(" with secret header {}", o.secret_header)
        } else {
            " (no secret)".into()
        };
        say!(out, "override: header {}{secret}", o.header);
    }
    for r in &config.routes {
        let matcher = match &r.matcher.path {
            PathMatch::Prefix(p) => format!("prefix {p}"),
            PathMatch::Exact(p) => format!("path {p}"),
        };
        let methods = r
            .matcher
            .methods
            .as_ref()
            .map_or("any method".to_string(), |m| m.join(","));
        say!(
            out,
            "route {}: {matcher}, {methods} -> service {}",
            r.name,
            r.service
        );
        say!(
            out,
            "  percent now: {} ({} bp); key: {}; salt: {:?}",
            percent(r.basis_points_at(now_ms)),
            r.basis_points_at(now_ms),
            key_source(&r.hash_key),
            r.salt
        );
        let ahead: Vec<String> = r
            .ramp
            .iter()
            .filter(|s| s.at_ms > now_ms)
            .map(|s| {
                format!(
                    "{} -> {}",
                    format_rfc3339_utc(s.at_ms),
                    percent(s.basis_points)
                )
            })
            .collect();
        if !r.ramp.is_empty() {
            let ahead = if ahead.is_empty() {
                "none (ramp complete)".into()
            } else {
                ahead.join(", ")
            };
            say!(out, "  ramp steps ahead: {ahead}");
        }
        match &r.outlier {
            None => say!(out, "  outlier: off"),
            Some(o) => {
                let rate = o.failure_rate.as_ref().map_or("off".to_string(), |f| {
                    format!(
                        "{}% of >= {} requests in {} ms",
                        f.threshold_percent, f.min_requests, f.window_ms
                    )
                });
                let statuses: Vec<String> = o.failure_statuses.iter().map(u16::to_string).collect();
                say!(out,
                    "  outlier: consecutive failures {}, failure rate {rate}, failure statuses {}, ejection {}..{} ms, {} half-open probe(s), on open: {}",
                    o.consecutive_failures,
                    statuses.join(","),
                    o.base_ejection_ms,
                    o.max_ejection_ms,
                    o.half_open_probes,
                    match o.on_open {
                        OnOpen::Fallback => "fallback to the monolith",
                        OnOpen::Reject => "reject with 503",
                    }
                );
            }
        }
        match &r.guard {
            None => say!(out, "  guard: off"),
            Some(g) => {
                let latency = match (g.max_latency_ratio, g.latency_ratio()) {
                    (Some(x), Some(judged)) if x < judged => format!(
                        "service p95 above {}x the monolith's ({} as configured: below one latency bucket, judged as {})",
                        short(judged),
                        short(x),
                        short(judged)
                    ),
                    (Some(x), _) => format!("service p95 above {}x the monolith's", short(x)),
                    _ => "off".to_string(),
                };
                let fleet = match g.fleet_size {
                    1 => String::new(),
                    n => format!(" across a fleet of {n} proxies"),
                };
                say!(out,
                    "  guard: errors: service 5xx rate above the monolith's + {} points; latency: {latency}; false trips at most {}% per 24 h{fleet} (confidence {}%); estimates over {} s, at least {} requests a side; epoch {}",
                    short(g.max_error_rate_increase * 100.0),
                    short((1.0 - g.confidence) * 100.0),
                    short(g.confidence * 100.0),
                    g.window_s,
                    g.min_requests,
                    g.epoch
                );
            }
        }
        if let Some(w) = &r.shadow {
            let headers = match w.compare_headers.as_slice() {
                [] => String::new(),
                h => format!(", headers {}", h.join(", ")),
            };
            let body = match w.compare_body {
                traffic_shift::shadow::BodyCompare::Off => String::new(),
                traffic_shift::shadow::BodyCompare::Bytes => {
                    format!(", body (up to {} bytes)", w.max_body_bytes)
                }
                traffic_shift::shadow::BodyCompare::Json => {
                    let ignored = match w.ignore_fields.as_slice() {
                        [] => String::new(),
                        f => format!(
                            ", ignoring {}",
                            f.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    let noise = match w.noise_basis_points {
                        0 => String::new(),
                        bp => format!(", noise baseline on {} of them", percent(bp)),
                    };
                    format!(
                        ", JSON body fields (up to {} bytes{ignored}{noise})",
                        w.max_body_bytes
                    )
                }
            };
            say!(out,
                "  shadow: {} ({} bp) of {} requests also sent to the side not chosen; compared: status{headers}{body}; timeout {} ms; at most {} in flight per worker",
                percent(w.basis_points),
                w.basis_points,
                w.methods.join(", "),
                w.timeout_ms,
                w.max_in_flight
            );
            if w.repeats_writes() {
                say!(out, "  shadow warning: methods with side effects are listed: each shadowed one runs on both sides (a shared database sees the write twice)");
            }
        }
    }
}

/// Which side `key` lands on and why, as the filter decides it.
fn print_key(out: &mut String, config: &Config, r: &Route, key: &[u8], now_ms: u64) {
    let bp = r.basis_points_at(now_ms);
    let target = r.decide_at(Some(key), bp);
    let side = match target {
        Target::Service => "service",
        Target::Monolith => "monolith",
    };
    let why = if key.is_empty() {
        // The filter never hashes an empty key, whatever the percent.
        "empty key".to_string()
    } else {
        let b = bucket(r.salt.as_bytes(), key);
        let cmp = if shifted(b, bp) { "below" } else { "not below" };
        format!(
            "bucket {b} (salt {:?}), {cmp} the threshold {bp} ({})",
            r.salt,
            percent(bp)
        )
    };
    say!(
        out,
        "key {} on route {}: {why} -> {side} ({})",
        quoted(key),
        r.name,
        config.cluster(r, target)
    );
}
