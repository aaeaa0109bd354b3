//! `traffic-shift check FILE [--key VALUE [--route NAME]] [--at TIME]`
//!
//! Validates a plugin configuration with the filter's own code, for CI
//! pipelines before a config is pushed over xDS. Invalid: every error on
//! stderr, as the filter logs it, exit 1. Valid: the plan (per route: match,
//! service, percent now, ramp steps ahead, outlier settings), and with
//! `--key` which side that key lands on and its bucket. `--at` evaluates
//! ramps at another time (RFC 3339 UTC) instead of now. FILE `-` is stdin.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Read;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use traffic_shift::breaker::OnOpen;
use traffic_shift::config::{Config, HashKey, Route, Target};
use traffic_shift::hash::bucket;
use traffic_shift::ramp::{format_rfc3339_utc, parse_rfc3339_utc};
use traffic_shift::routes::PathMatch;

const USAGE: &str =
    "usage: traffic-shift check FILE [--key VALUE [--route NAME]] [--at RFC3339-UTC]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let (Some("check"), Some(file)) = (args.first().map(String::as_str), args.get(1)) else {
        return Err("traffic-shift: expected `check FILE`".into());
    };
    let mut key = None;
    let mut route_name = None;
    let mut now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rest = args.iter().skip(2);
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--key" => key = Some(value.clone()),
            "--route" => route_name = Some(value.clone()),
            "--at" => {
                now_ms = parse_rfc3339_utc(value)
                    .ok_or(format!("--at: not an RFC 3339 UTC time: {value}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let bytes = if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("stdin: {e}"))?;
        buf
    } else {
        std::fs::read(file).map_err(|e| format!("{file}: {e}"))?
    };
    let config = match Config::from_json(&bytes) {
        Ok(c) => c,
        Err(errors) => {
            // The same lines the filter logs when Envoy refuses the config.
            for e in &errors.0 {
                eprintln!("invalid configuration: {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(name) = &route_name {
        if !config.routes.iter().any(|r| &r.name == name) {
            return Err(format!("--route: no route named {name:?}"));
        }
    }
    print_plan(file, &config, now_ms);
    if let Some(key) = key {
        println!();
        for r in &config.routes {
            if route_name.as_ref().is_none_or(|n| n == &r.name) {
                print_key(&config, r, &key, now_ms);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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

fn print_plan(file: &str, config: &Config, now_ms: u64) {
    println!(
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
        println!("override: header {}{secret}", o.header);
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
        println!(
            "route {}: {matcher}, {methods} -> service {}",
            r.name, r.service
        );
        println!(
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
            println!("  ramp steps ahead: {ahead}");
        }
        match &r.outlier {
            None => println!("  outlier: off"),
            Some(o) => {
                let rate = o.failure_rate.as_ref().map_or("off".to_string(), |f| {
                    format!(
                        "{}% of >= {} requests in {} ms",
                        f.threshold_percent, f.min_requests, f.window_ms
                    )
                });
                let statuses: Vec<String> = o.failure_statuses.iter().map(u16::to_string).collect();
                println!(
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
    }
}

fn print_key(config: &Config, r: &Route, key: &str, now_ms: u64) {
    let bp = r.basis_points_at(now_ms);
    let target = r.decide_at(Some(key.as_bytes()), bp);
    let side = match target {
        Target::Service => "service",
        Target::Monolith => "monolith",
    };
    println!(
        "key {key:?} on route {}: bucket {} (salt {:?}), shifted below {bp} -> {side} ({})",
        r.name,
        bucket(r.salt.as_bytes(), key.as_bytes()),
        r.salt,
        config.cluster(r, target)
    );
}
