//! `make bench`: what the filter costs, against native Envoy routing, in one run.
//!
//! Starts the upstreams and these Envoy variants (one worker each), all
//! built from `envoy/envoy.yaml`:
//!   a   direct route to the monolith, no filter
//!   b   native `weighted_clusters`, 10 % to auth_service (random)
//!   h   native `weighted_clusters` with `use_hash_policy` on x-request-id
//!       (Envoy >= 1.36's sticky split: the native competitor)
//!   c   a Lua filter doing the same hash split (integration/bench/split.lua)
//!   d0  traffic-shift with an empty route table, as the SDK builds it
//!       (every proxy_on_* callback exported: a VM entry each per request)
//!   d   traffic-shift with an empty route table (the wasm floor), as shipped:
//!       the callbacks it does not use are not exported (slim-exports)
//!   s   traffic-shift with the split (10 % of /api/auth/ to auth_service)
//!       and its stats; s15 the same with 15 request headers (c15: Lua
//!       with them); s1, s1-15 a build reading one header per host call
//!       (`--features single-header-reads`) instead of the map in one call
//!   e   (s) plus a breaker on the route
//!   g   (s) plus a guard on the route (errors and latency)
//!   s1k, e1k  (s) and (e) with 1,000 routes configured
//!   snb (s) on a build without the body callbacks exported (what
//!       exporting them for shadow compare costs every request)
//!   w0, w5  (s) plus shadow compare (status, content-type, body) at 0 %
//!       and 5 % of the route's requests
//!   wj5 (s) plus shadow compare of JSON bodies at 5 %: `compare_body:
//!       "json"`, three ignore rules, a noise call on 20 % of the shadowed
//!       requests; its requests carry `x-bare-json`, so the upstreams
//!       answer ~190-byte JSON bodies with a per-call id and timestamp
//!   ga  gRPC (unary, over HTTP/2 to tonic upstreams): direct, no filter
//!   gsp gRPC: traffic-shift split + stats (outcome from grpc-status, read
//!       from the trailers); gs the same with the route's `grpc` block
//!       (stats by gRPC status); gRPC variants are driven by `grpc-load`
//!       (tonic, one HTTP/2 connection, the same number of RPCs in flight
//!       as wrk's connections), not wrk: compare them with each other only
//!   md, m, me, mg, mw0, mw5  the Envoy dynamic module (`make module`): no
//!       routes, split + stats, + breaker, + guard, + shadow at 0 % and 5 %
//!       (the same configs as d, s, e, g, w0, w5)
//! then drives each in turn with wrk (same load, interleaved rounds, so
//! machine drift hits all alike) and reports medians, the per-round ratio
//! to (b) and the targets of issue 11 as medians of per-round ratios.
//! Bounded: rounds x variants x seconds. Every process it starts is killed
//! on exit.
//!
//! Env: BENCH_ROUNDS (5), BENCH_SECONDS (8), BENCH_CONNECTIONS (32),
//! BENCH_OUT (target/bench), BENCH_ONLY (comma-separated variant keys;
//! (b) runs in any case, as the ratios' base),
//! BENCH_BASELINE_WASM (another build of the filter, run with the (s), (e),
//! (g) and (w0) configs as s-base, e-base, g-base and w0-base).
//!
//! `--help` prints the usage. Missing pieces (Envoy, wrk, a variant's
//! `.wasm`: `target/single/` is built by `make bench` only) are one line
//! naming `make bench`, before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use integration::{repo_root, rss_kib, Bootstrap, Envoy, Upstream};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

const PATH: &str = "/api/auth/login";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hcm(b: &mut Bootstrap) -> &mut Yaml {
    &mut b.0["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn yaml(s: &str) -> Yaml {
    serde_yaml::from_str(s).unwrap_or_else(|e| panic!("bad yaml {s}: {e}"))
}

const ROUTER: &str = r#"{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#;

/// A plugin config with `n` routes; the one the bench requests hit
/// (`/api/auth/`, 10 % to auth_service, optionally with a breaker) is in
/// the middle of the table, the others are prefixes and exact paths of
/// other services.
fn split_config(n: usize, outlier: bool) -> String {
    split_config_with(n, if outlier { r#", "outlier": {}"# } else { "" })
}

/// As [`split_config`], with `extra` members on the route the bench hits.
fn split_config_with(n: usize, extra: &str) -> String {
    let hit = n / 2;
    let routes: Vec<String> = (0..n)
        .map(|i| {
            if i == hit {
                let o = extra;
                return format!(
                    r#"{{"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 10{o}}}"#
                );
            }
            let matcher = if i % 3 == 2 {
                format!(r#""path": "/api/v1/svc{i}/items""#)
            } else {
                format!(r#""prefix": "/api/v1/svc{i}/""#)
            };
            format!(
                r#"{{"name": "r{i}", {matcher}, "service": "orders_service", "percent": 10, "salt": "s{i}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"monolith": "monolith", "routes": [{}]}}"#,
        routes.join(",")
    )
}

/// The guard of the (g) variants.
const GUARD: &str = r#", "guard": {"max_latency_ratio": 2}"#;

/// The bench route's `shadow` member at `percent`.
/// Shadow compare of JSON bodies (the wj5 variant).
const SHADOW_JSON: &str = r#", "shadow": {"percent": 5, "compare_headers": ["content-type"], "compare_body": "json", "ignore_fields": ["/id", "/generated_at", "/items/*/etag"], "noise_percent": 20}"#;

fn shadow(percent: u32) -> String {
    format!(
        r#", "shadow": {{"percent": {percent}, "compare_headers": ["content-type"], "compare_body": true}}"#
    )
}

/// Extra request headers of the browser-like variant (with Host and the
/// x-request-id Envoy adds, 15 headers reach the filter).
const BROWSER_HEADERS: &[&str] = &[
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.9",
    "Accept-Encoding: gzip, deflate, br",
    "Cookie: session=abc123; theme=dark; cart=42",
    "Referer: https://shop.example.com/",
    "X-Forwarded-Proto: https",
    "Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "Cache-Control: no-cache",
    "Sec-Fetch-Mode: navigate",
];

/// One bench variant.
struct Variant {
    key: &'static str,
    name: String,
    bootstrap: Bootstrap,
    /// Extra request headers wrk sends.
    headers: &'static [&'static str],
    /// Driven by `grpc-load` (unary RPCs) instead of wrk.
    grpc: bool,
}

fn variant(key: &'static str, name: &str, bootstrap: Bootstrap) -> Variant {
    Variant {
        key,
        name: name.to_string(),
        bootstrap,
        headers: &[],
        grpc: false,
    }
}

/// The unary RPC of the gRPC variants.
const GRPC_PREFIX: &str = "/envoy.service.ratelimit.v3.RateLimitService/";

/// The gRPC variants' plugin config: 10 % of the RPCs to orders_service;
/// `extra` on the route.
fn grpc_split_config(extra: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [{{"name": "rpc", "prefix": "{GRPC_PREFIX}", "service": "orders_service", "percent": 10{extra}}}]}}"#
    )
}

/// `base` with monolith and orders_service at the gRPC upstreams (when
/// started) over HTTP/2.
fn grpc_base(base: &Bootstrap, addrs: Option<(SocketAddr, SocketAddr)>) -> Bootstrap {
    let mut b = base
        .clone()
        .with_http2("monolith")
        .with_http2("orders_service");
    if let Some((m, o)) = addrs {
        b = b
            .with_cluster_address("monolith", m)
            .with_cluster_address("orders_service", o);
    }
    b
}

/// The variants, built from the shipped config (the order of this list is
/// the order of every round).
fn variants(base: &Bootstrap, grpc: &Bootstrap) -> Vec<Variant> {
    let mut a = base.clone();
    hcm(&mut a)["http_filters"] = Yaml::Sequence(vec![yaml(ROUTER)]);
    hcm(&mut a)["route_config"]["virtual_hosts"][0]["routes"] =
        yaml("[{match: {prefix: /}, route: {cluster: monolith}}]");

    let mut b = a.clone();
    hcm(&mut b)["route_config"]["virtual_hosts"][0]["routes"] = yaml(
        "[{match: {prefix: /}, route: {weighted_clusters: {clusters: [
            {name: auth_service, weight: 10}, {name: monolith, weight: 90}]}}}]",
    );

    // Envoy >= 1.36's own sticky split: the cluster is picked from a hash
    // of the route's hash_policy (here x-request-id, like our filter).
    let mut h = a.clone();
    hcm(&mut h)["route_config"]["virtual_hosts"][0]["routes"] = yaml(
        "[{match: {prefix: /api/auth/}, route: {
            hash_policy: [{header: {header_name: x-request-id}}],
            weighted_clusters: {use_hash_policy: true, clusters: [
              {name: auth_service, weight: 10}, {name: monolith, weight: 90}]}}},
          {match: {prefix: /}, route: {cluster: monolith}}]",
    );

    let lua = std::fs::read_to_string(repo_root().join("integration/bench/split.lua"))
        .unwrap_or_else(|e| panic!("split.lua: {e}"));
    let mut c = base.clone();
    let mut lua_filter = yaml(
        r#"{name: envoy.filters.http.lua, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, default_source_code: {inline_string: ""}}}"#,
    );
    lua_filter["typed_config"]["default_source_code"]["inline_string"] = Yaml::from(lua);
    hcm(&mut c)["http_filters"] = Yaml::Sequence(vec![lua_filter, yaml(ROUTER)]);

    let d = base
        .clone()
        .with_plugin_config(r#"{"monolith": "monolith", "routes": []}"#);
    let sdk_wasm = integration::wasm_path().with_extension("sdk-exports.wasm");
    let d0 = d.clone().with_wasm(&sdk_wasm);
    let s = base.clone().with_plugin_config(&split_config(1, false));
    let e = base.clone().with_plugin_config(&split_config(1, true));

    let single_wasm =
        integration::repo_root().join("target/single/wasm32-wasip1/release/traffic_shift.wasm");
    let s1 = s.clone().with_wasm(&single_wasm);
    let mut out = vec![
        variant("a", "direct, no filter", a),
        variant("b", "native weighted_clusters (random)", b),
        variant("h", "native weighted_clusters, use_hash_policy", h),
        variant("c", "Lua hash split", c.clone()),
        Variant {
            headers: BROWSER_HEADERS,
            ..variant("c15", "Lua hash split, 15 headers", c)
        },
        variant("d0", "traffic-shift, no routes, all SDK exports", d0),
        variant("d", "traffic-shift, no routes (wasm floor)", d),
        variant("s", "traffic-shift, split + stats", s.clone()),
        Variant {
            headers: BROWSER_HEADERS,
            ..variant("s15", "traffic-shift, split + stats, 15 headers", s)
        },
        variant(
            "s1",
            "traffic-shift, split + stats, one call per header",
            s1.clone(),
        ),
        Variant {
            headers: BROWSER_HEADERS,
            ..variant(
                "s1-15",
                "traffic-shift, split + stats, one call per header, 15 headers",
                s1,
            )
        },
        variant("e", "traffic-shift, split + stats + breaker", e),
        variant(
            "g",
            "traffic-shift, split + stats + guard",
            base.clone()
                .with_plugin_config(&split_config_with(1, GUARD)),
        ),
        variant(
            "s1k",
            "traffic-shift, split + stats, 1,000 routes",
            base.clone().with_plugin_config(&split_config(1_000, false)),
        ),
        variant(
            "e1k",
            "traffic-shift, split + stats + breaker, 1,000 routes",
            base.clone().with_plugin_config(&split_config(1_000, true)),
        ),
        variant(
            "snb",
            "traffic-shift, split + stats, no body callbacks exported",
            base.clone()
                .with_plugin_config(&split_config(1, false))
                .with_wasm(&integration::wasm_path().with_extension("no-body.wasm")),
        ),
        variant(
            "w0",
            "traffic-shift, split + stats + shadow at 0 %",
            base.clone()
                .with_plugin_config(&split_config_with(1, &shadow(0))),
        ),
        variant(
            "w5",
            "traffic-shift, split + stats + shadow at 5 %",
            base.clone()
                .with_plugin_config(&split_config_with(1, &shadow(5))),
        ),
        Variant {
            headers: &["X-Bare-Json: 1"],
            ..variant(
                "wj5",
                "traffic-shift, split + stats + JSON shadow compare at 5 %",
                base.clone()
                    .with_plugin_config(&split_config_with(1, SHADOW_JSON)),
            )
        },
    ];
    let mut ga = grpc.clone();
    hcm(&mut ga)["http_filters"] = Yaml::Sequence(vec![yaml(ROUTER)]);
    hcm(&mut ga)["route_config"]["virtual_hosts"][0]["routes"] =
        yaml("[{match: {prefix: /}, route: {cluster: monolith}}]");
    let grpc_variant = |key, name, bootstrap| Variant {
        grpc: true,
        ..variant(key, name, bootstrap)
    };
    out.push(grpc_variant("ga", "gRPC: direct, no filter", ga));
    out.push(grpc_variant(
        "gsp",
        "gRPC: traffic-shift, split + stats",
        grpc.clone().with_plugin_config(&grpc_split_config("")),
    ));
    out.push(grpc_variant(
        "gs",
        "gRPC: traffic-shift, split + stats + stats by gRPC status",
        grpc.clone()
            .with_plugin_config(&grpc_split_config(r#", "grpc": {}"#)),
    ));
    // The dynamic module with the same configs (the bootstrap's wasm
    // filter turned into the module filter, same JSON).
    let module = |json: &str| base.clone().with_plugin_config(json).as_module();
    out.extend([
        variant(
            "md",
            "module, no routes",
            module(r#"{"monolith": "monolith", "routes": []}"#),
        ),
        variant(
            "m",
            "module, split + stats",
            module(&split_config(1, false)),
        ),
        variant(
            "me",
            "module, split + stats + breaker",
            module(&split_config(1, true)),
        ),
        variant(
            "mg",
            "module, split + stats + guard",
            module(&split_config_with(1, GUARD)),
        ),
        variant(
            "mw0",
            "module, split + stats + shadow at 0 %",
            module(&split_config_with(1, &shadow(0))),
        ),
        variant(
            "mw5",
            "module, split + stats + shadow at 5 %",
            module(&split_config_with(1, &shadow(5))),
        ),
    ]);
    // BENCH_BASELINE_WASM: another build of the filter (e.g. the previous
    // release) with the (s) and (e) configs, to compare in the same run.
    if let Some(old) = std::env::var_os("BENCH_BASELINE_WASM") {
        let old = PathBuf::from(old);
        out.push(variant(
            "s-base",
            "baseline build, split + stats",
            base.clone()
                .with_plugin_config(&split_config(1, false))
                .with_wasm(&old),
        ));
        out.push(variant(
            "e-base",
            "baseline build, split + stats + breaker",
            base.clone()
                .with_plugin_config(&split_config(1, true))
                .with_wasm(&old),
        ));
        out.push(variant(
            "g-base",
            "baseline build, split + stats + guard",
            base.clone()
                .with_plugin_config(&split_config_with(1, GUARD))
                .with_wasm(&old),
        ));
        out.push(grpc_variant(
            "gsp-base",
            "gRPC: baseline build, split + stats",
            grpc.clone()
                .with_plugin_config(&grpc_split_config(""))
                .with_wasm(&old),
        ));
        out.push(variant(
            "w0-base",
            "baseline build, split + stats + shadow at 0 %",
            base.clone()
                .with_plugin_config(&split_config_with(1, &shadow(0)))
                .with_wasm(&old),
        ));
    }
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let keep: Vec<&str> = only.split(',').collect();
        // (b) always runs: every ratio is to it.
        out.retain(|v| v.key == "b" || keep.contains(&v.key));
    }
    out
}

/// The targets of issue 11, as `(label, numerator, denominator, goal)`:
/// medians of per-round req/s ratios (`p99:` compares p99 latencies,
/// lower is better).
const TARGETS: &[(&str, &str, &str, f64)] = &[
    ("split + stats vs Lua", "s", "c", 1.05),
    ("split + stats vs SDK floor", "s", "d0", 0.95),
    ("split + stats vs native use_hash_policy", "s", "h", 0.90),
    ("+ breaker vs split + stats", "e", "s", 0.97),
    ("+ guard vs split + stats", "g", "s", 0.0),
    (
        "module split + stats vs native use_hash_policy",
        "m",
        "h",
        0.95,
    ),
    ("module split + stats vs wasm split + stats", "m", "s", 0.0),
    ("module split + stats vs Lua", "m", "c", 0.0),
    ("module + breaker vs module split + stats", "me", "m", 0.97),
    ("module + guard vs module split + stats", "mg", "m", 0.97),
    (
        "module + shadow at 0 % vs module split + stats",
        "mw0",
        "m",
        0.97,
    ),
    (
        "module + shadow at 5 % vs module split + stats",
        "mw5",
        "m",
        0.0,
    ),
    (
        "p99: module split + stats vs native use_hash_policy",
        "p99:m",
        "h",
        0.0,
    ),
    ("body callbacks exported vs not", "s", "snb", 0.0),
    ("+ shadow at 0 % vs split + stats", "w0", "s", 0.0),
    ("+ shadow at 5 % vs split + stats", "w5", "s", 0.0),
    ("gRPC: split + stats vs direct", "gsp", "ga", 0.0),
    (
        "gRPC: + stats by gRPC status vs split + stats",
        "gs",
        "gsp",
        0.0,
    ),
    (
        "gRPC: split + stats vs baseline build",
        "gsp",
        "gsp-base",
        0.0,
    ),
    ("JSON shadow at 5 % vs byte shadow at 5 %", "wj5", "w5", 0.0),
    ("+ JSON shadow at 5 % vs split + stats", "wj5", "s", 0.0),
    ("split + stats vs baseline build", "s", "s-base", 0.0),
    ("p99: + breaker vs SDK floor", "p99:e", "d0", 1.10),
    ("1,000 routes vs 1: split + stats", "s1k", "s", 0.97),
    ("1,000 routes vs 1: + breaker", "e1k", "e", 0.97),
    ("split + stats vs Lua, 15 headers", "s15", "c15", 1.05),
    (
        "header map in one call vs one call per header, 5 headers",
        "s",
        "s1",
        0.0,
    ),
    (
        "header map in one call vs one call per header, 15 headers",
        "s15",
        "s1-15",
        0.0,
    ),
];

/// Pins every thread of `pid` to `cpus` (taskset -a -p).
fn pin(pid: u32, cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("warning: could not pin pid {pid} to CPU {cpus}");
    }
}

fn wrk(
    url: &str,
    seconds: u64,
    connections: u64,
    load_cpu: Option<&str>,
    headers: &[&str],
) -> Value {
    let script = repo_root().join("integration/bench/report.lua");
    let mut cmd = match load_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk (make bench installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .unwrap_or_else(|| panic!("wrk printed no result:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("wrk result {line}: {e}"))
}

/// `grpc-load` against `url` (its result in wrk's shape).
fn grpc_load(url: &str, seconds: u64, concurrency: u64, load_cpu: Option<&str>) -> Value {
    let bin = integration::sibling_bin("grpc-load");
    let mut cmd = match load_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd
        .args(["--url", url])
        .args(["--seconds", &seconds.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("GRPCJSON "))
        .unwrap_or_else(|| {
            panic!(
                "grpc-load printed no result:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("grpc-load result {line}: {e}"))
}

/// One load run of a variant: wrk, or grpc-load for a gRPC variant.
fn drive(
    v: &Variant,
    envoy: &Envoy,
    seconds: u64,
    connections: u64,
    load_cpu: Option<&str>,
) -> Value {
    if v.grpc {
        grpc_load(&envoy.url(""), seconds, connections, load_cpu)
    } else {
        wrk(&envoy.url(PATH), seconds, connections, load_cpu, v.headers)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

const HELP: &str = "bench (settings from BENCH_* variables; run it with make bench)

What the filter costs, against native Envoy routing, Lua and the wasm floor.
`make bench` builds everything it needs first (the filter,
its build reading one header per call into target/single/, the tools, wrk,
matplotlib), then plots target/bench/latency.png and runs the native benchmarks.

Starts the demo upstreams and one Envoy per variant (one worker each), drives
them with wrk in interleaved rounds and writes target/bench/results.md and
results.json. Variants: a b h c c15 d0 d s s15 s1 s1-15 snb e g s1k e1k w0 w5 wj5 ga gsp gs
(README, \"What it costs\").

Environment:
  BENCH_ROUNDS=5 BENCH_SECONDS=8 BENCH_CONNECTIONS=32  rounds, wrk seconds and connections
  BENCH_ONLY=s,snb          run only these variants (and (b), the base of every ratio)
  BENCH_BASELINE_WASM=FILE  add s-base, e-base, g-base, w0-base, gsp-base: those configs on another build
  BENCH_OUT=DIR             output directory (target/bench)
  BENCH_PIN=0               do not pin Envoy to CPU 0 and the load to CPU 1";

/// One line on stderr, exit 1.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

/// `--help` prints the usage and exits 0; any other argument is a usage
/// error (the bench takes its settings from the environment).
fn parse_args() {
    if let Some(a) = std::env::args_os().nth(1) {
        if a == "--help" || a == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        eprintln!(
            "bench: unknown argument {:?} (usage: bench, settings from BENCH_* variables; bench --help)",
            a.to_string_lossy()
        );
        std::process::exit(2);
    }
}

/// Every `.wasm` file a bootstrap loads.
fn wasm_files(y: &Yaml, out: &mut Vec<PathBuf>) {
    match y {
        Yaml::Mapping(m) => {
            if let Some(f) = y["vm_config"]["code"]["local"]["filename"].as_str() {
                out.push(repo_root().join(f));
            }
            m.values().for_each(|v| wasm_files(v, out));
        }
        Yaml::Sequence(s) => s.iter().for_each(|v| wasm_files(v, out)),
        _ => {}
    }
}

/// The most telling line of a failed Envoy's log: its last critical
/// message, else its last error, without the log prefix.
fn failure_reason(log: &str) -> Option<&str> {
    let pick = |level: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains(level))
            .map(|l| l.rsplit_once("] ").map_or(l, |(_, m)| m))
    };
    pick("][critical][").or_else(|| pick("][error]["))
}

/// Whether `program` is an executable file on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Fails with one line if something the selected variants need is missing.
fn check_prerequisites(variants: &[Variant]) {
    let envoy = integration::envoy_bin();
    if !envoy.is_file() {
        fail(format!(
            "no Envoy at {} (run `make bench`, which installs and builds everything first)",
            envoy.display()
        ));
    }
    if !on_path("wrk") {
        fail("wrk is not installed (run `make bench`, which installs it)");
    }
    for v in variants {
        let mut files = Vec::new();
        wasm_files(&v.bootstrap.0, &mut files);
        if let Some(f) = files.iter().find(|f| !f.is_file()) {
            fail(format!(
                "variant {} needs {}, which is not built (run `make bench`, which builds every variant's filter first; or leave the variant out with BENCH_ONLY)",
                v.key,
                f.display()
            ));
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    parse_args();
    let rounds = env_num("BENCH_ROUNDS", 5);
    let seconds = env_num("BENCH_SECONDS", 8);
    let connections = env_num("BENCH_CONNECTIONS", 32);
    // With two or more CPUs, Envoy gets CPU 0 to itself and the load
    // generator and upstreams share CPU 1, so what is measured is Envoy's
    // own work. BENCH_PIN=0 turns this off.
    let pinned = env_num("BENCH_PIN", 1) == 1
        && std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            >= 2;
    let load_cpu = pinned.then_some("1");
    let out_dir = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench"));
    let shipped = Bootstrap::shipped().for_test();
    check_prerequisites(&variants(&shipped, &grpc_base(&shipped, None)));
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| fail(format!("{}: {e}", out_dir.display())));

    let upstreams: Vec<Upstream> = ["monolith", "auth_service", "orders_service"]
        .iter()
        .map(|n| Upstream::start_with(n, "127.0.0.1:0", &["--threads", "1", "--bare"]))
        .collect();
    let grpc_upstreams = [
        Upstream::grpc("grpc-monolith", &[]),
        Upstream::grpc("grpc-orders", &[]),
    ];
    if pinned {
        for u in upstreams.iter().chain(&grpc_upstreams) {
            pin(u.pid(), "1");
        }
    }
    let refs: Vec<&Upstream> = upstreams.iter().collect();
    let mut base = Bootstrap::shipped().for_test().with_upstreams(&refs);
    // The shipped config's access log (a line per request on stdout) and
    // span tags would add the same cost to every variant and so compress
    // every ratio: the bench measures routing and the filter alone.
    if let Some(m) = hcm(&mut base).as_mapping_mut() {
        m.remove("access_log");
        m.remove("tracing");
    }

    let grpc = grpc_base(
        &base,
        Some((grpc_upstreams[0].addr, grpc_upstreams[1].addr)),
    );
    let mut envoys = Vec::new();
    for v in variants(&base, &grpc) {
        let envoy = match Envoy::start_with(&v.bootstrap, 1).await {
            Ok(e) => e,
            Err(f) => {
                let log = out_dir.join(format!("envoy-{}.log", v.key));
                let _ = std::fs::write(&log, &f.log);
                fail(format!(
                    "variant {} did not start (exit {:?}): {} (its whole log: {})",
                    v.key,
                    f.exit_code,
                    failure_reason(&f.log).unwrap_or("no error in its log"),
                    log.display()
                ))
            }
        };
        if pinned {
            pin(envoy.pid(), "0");
        }
        envoys.push((v, envoy));
    }

    // Sanity: every variant answers 200 and splits as intended.
    let client = integration::client();
    println!("variant check (200 requests each to {PATH}):");
    for (v, envoy) in &envoys {
        let (key, name) = (v.key, &v.name);
        if v.grpc {
            let r = grpc_load(&envoy.url(""), 1, 4, None);
            let errors = r["errors"].as_u64().unwrap_or(1);
            assert_eq!(errors, 0, "variant {key}: {r}");
            println!(
                "  {key} {name:<40} {} RPCs in 1 s, no errors",
                r["requests"]
            );
            continue;
        }
        let mut by: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..200 {
            let resp = client
                .get(envoy.url(PATH))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                resp.status(),
                200,
                "variant {key} answered {}",
                resp.status()
            );
            let served = resp
                .headers()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            *by.entry(served).or_default() += 1;
        }
        println!("  {key} {name:<40} {by:?}");
    }

    // Warm-up, then interleaved rounds.
    for (v, envoy) in &envoys {
        drive(v, envoy, 2, connections, load_cpu);
    }
    let mut runs: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for round in 1..=rounds {
        let mut line = format!("round {round}/{rounds}:");
        for (v, envoy) in &envoys {
            let key = v.key;
            let mut r = drive(v, envoy, seconds, connections, load_cpu);
            let rps = r["requests"].as_f64().unwrap_or(0.0)
                / (r["duration_us"].as_f64().unwrap_or(1.0) / 1e6);
            r["rps"] = json!(rps);
            r["rss_kib"] = json!(rss_kib(envoy.pid()));
            line.push_str(&format!(" {key}={rps:.0}"));
            runs.entry(key).or_default().push(r);
        }
        println!("{line} req/s");
    }

    // Per-round ratios to (b), then medians.
    let native: Vec<f64> = runs["b"]
        .iter()
        .map(|r| r["rps"].as_f64().unwrap_or(0.0))
        .collect();
    let mut summary = Vec::new();
    let mut tripped_guards = Vec::new();
    for (Variant { key, name, .. }, envoy) in &envoys {
        // A guard that tripped during the run sends every request of its
        // route to the monolith: the variant then measured another path.
        let tripped: f64 = envoy
            .metrics()
            .await
            .0
            .iter()
            .filter(|s| s.metric == "traffic_shift_guard_tripped")
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
            .sum();
        if tripped > 0.0 {
            tripped_guards.push(*key);
        }
        let rs = &runs[key];
        let get = |f: &dyn Fn(&Value) -> f64| median(rs.iter().map(f).collect());
        let ratio = median(
            rs.iter()
                .zip(&native)
                .map(|(r, n)| r["rps"].as_f64().unwrap_or(0.0) / n)
                .collect(),
        );
        let mut pct = serde_json::Map::new();
        for q in ["50", "75", "90", "95", "99", "99.9"] {
            pct.insert(
                q.into(),
                json!(get(&|r| r["latency_us"][q].as_f64().unwrap_or(0.0))),
            );
        }
        let errors: f64 = rs
            .iter()
            .map(|r| {
                r["socket_errors"].as_f64().unwrap_or(0.0) + r["non2xx"].as_f64().unwrap_or(0.0)
            })
            .sum();
        summary.push(json!({
            "key": key, "name": name,
            "rps": get(&|r| r["rps"].as_f64().unwrap_or(0.0)),
            "ratio_to_native": ratio,
            "latency_us": pct,
            "rss_mib": get(&|r| r["rss_kib"].as_f64().unwrap_or(0.0)) / 1024.0,
            "errors": errors,
            "guard_tripped": tripped > 0.0,
        }));
    }

    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |s| s.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let pin_note = if pinned {
        " pinned to CPU 0 (wrk and upstreams on CPU 1)"
    } else {
        ""
    };
    let mut md = format!(
        "{date}, {machine}; Envoy 1.40.0 --concurrency 1{pin_note}, wrk -t1 -c{connections} -d{seconds}s, \
         {rounds} interleaved rounds, medians; ratio = median of per-round req/s ratios to (b).\n\n\
         | variant | req/s | ratio to (b) | p50 ms | p99 ms | RSS MiB | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for s in &summary {
        md.push_str(&format!(
            "| ({}) {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {} |\n",
            s["key"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or(""),
            s["rps"].as_f64().unwrap_or(0.0),
            s["ratio_to_native"].as_f64().unwrap_or(0.0),
            s["latency_us"]["50"].as_f64().unwrap_or(0.0) / 1000.0,
            s["latency_us"]["99"].as_f64().unwrap_or(0.0) / 1000.0,
            s["rss_mib"].as_f64().unwrap_or(0.0),
            s["errors"].as_f64().unwrap_or(0.0),
        ));
    }
    // The targets: medians of per-round ratios between two variants.
    let per_round = |key: &str, f: &dyn Fn(&Value) -> f64| -> Option<Vec<f64>> {
        Some(runs.get(key)?.iter().map(f).collect())
    };
    let rps = |r: &Value| r["rps"].as_f64().unwrap_or(0.0);
    let p99 = |r: &Value| r["latency_us"]["99"].as_f64().unwrap_or(0.0);
    let mut targets = Vec::new();
    if !tripped_guards.is_empty() {
        md.push_str(&format!(
            "\nA guard tripped during the run in ({}): its route then sent every request to the monolith.\n",
            tripped_guards.join("), (")
        ));
    }
    md.push_str("\n| target | ratio | goal | |\n|---|---:|---:|---|\n");
    for (label, num, den, goal) in TARGETS {
        let (num, f): (&str, &dyn Fn(&Value) -> f64) = match num.strip_prefix("p99:") {
            Some(k) => (k, &p99),
            None => (num, &rps),
        };
        let (Some(a), Some(b)) = (per_round(num, f), per_round(den, f)) else {
            continue;
        };
        let ratio = median(a.iter().zip(&b).map(|(x, y)| x / y).collect());
        let lower_is_better = label.starts_with("p99:");
        let verdict = if *goal == 0.0 {
            "(measured)"
        } else if (lower_is_better && ratio <= *goal) || (!lower_is_better && ratio >= *goal) {
            "met"
        } else {
            "missed"
        };
        let op = if lower_is_better { "≤" } else { "≥" };
        let goal_text = if *goal == 0.0 {
            String::from("—")
        } else {
            format!("{op} {goal:.2}")
        };
        md.push_str(&format!(
            "| {label} ({num}/{den}) | {ratio:.3} | {goal_text} | {verdict} |\n"
        ));
        targets.push(json!({"target": label, "num": num, "den": den, "ratio": ratio, "goal": goal, "verdict": verdict}));
    }
    let results = json!({"date": date, "targets": targets, "machine": machine, "rounds": rounds, "seconds": seconds,
        "connections": connections, "pinned": pinned, "summary": summary, "runs": runs});
    let json_path = out_dir.join("results.json");
    let md_path = out_dir.join("results.md");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&md_path, &md).unwrap_or_else(|e| panic!("{e}"));
    println!("\n{md}");
    println!("wrote {} and {}", md_path.display(), json_path.display());
}
