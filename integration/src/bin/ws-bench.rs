//! `ws-bench`: what the filter costs a WebSocket route, against native
//! Envoy routing with upgrades on (the shipped `envoy/envoy.yaml`, one
//! worker), driven by the `ws --bench` client (echo round trips of a
//! 32-byte text message on N connections, each its own `x-user`).
//!
//! Variants, started one at a time in interleaved rounds:
//!   a  no filter, every connection to the monolith
//!   h  native `weighted_clusters` with `use_hash_policy` on x-user, 10 %
//!   s  traffic-shift, route /ws/ keyed on x-user, 10 % to auth_service
//!   snb  (s) on the build without the body callbacks exported (`make
//!      build` writes it): what a frame's VM callback costs
//!   w  (s) with `shadow` at 100 % (upgrades are never shadowed)
//!
//! Env: WS_BENCH_ROUNDS (3), WS_BENCH_SECONDS (4), WS_BENCH_CONNECTIONS
//! (16). Prints one line per run and the medians; messages/s is the
//! throughput of round trips (each one frame in each direction through
//! Envoy). Every process it starts is killed on exit.

use std::collections::BTreeMap;
use std::process::Command;

use integration::{Bootstrap, Envoy, Upstream, CLUSTERS};
use serde_yaml::Value as Yaml;

const ROUTER: &str = r#"{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn yaml(s: &str) -> Yaml {
    serde_yaml::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn hcm(b: &mut Bootstrap) -> &mut Yaml {
    &mut b.0["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn chat(extra: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "hash_key": {{"header": "x-user"}},
            "routes": [{{"name": "chat", "prefix": "/ws/", "service": "auth_service",
                        "percent": 10 {extra}}}]}}"#
    )
}

fn variants(base: &Bootstrap) -> Vec<(&'static str, Bootstrap)> {
    let mut a = base.clone();
    hcm(&mut a)["http_filters"] = Yaml::Sequence(vec![yaml(ROUTER)]);
    hcm(&mut a)["route_config"]["virtual_hosts"][0]["routes"] =
        yaml("[{match: {prefix: /}, route: {cluster: monolith}}]");
    let mut h = a.clone();
    hcm(&mut h)["route_config"]["virtual_hosts"][0]["routes"] = yaml(
        "[{match: {prefix: /ws/}, route: {
            hash_policy: [{header: {header_name: x-user}}],
            weighted_clusters: {use_hash_policy: true, clusters: [
              {name: auth_service, weight: 10}, {name: monolith, weight: 90}]}}},
          {match: {prefix: /}, route: {cluster: monolith}}]",
    );
    let s = base.clone().with_plugin_config(&chat(""));
    let w = base
        .clone()
        .with_plugin_config(&chat(r#", "shadow": {"percent": 100}"#));
    let snb = s
        .clone()
        .with_wasm(&integration::wasm_path().with_extension("no-body.wasm"));
    vec![("a", a), ("h", h), ("s", s), ("snb", snb), ("w", w)]
}

/// The `ws` client next to this binary.
fn ws_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("ws")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() {
    if let Some(a) = std::env::args_os().nth(1) {
        if a == "--help" || a == "-h" {
            println!("ws-bench (no arguments): the filter on a WebSocket route against native Envoy with upgrades on; variants a (no filter), h (native use_hash_policy), s (traffic-shift), snb (s without body callbacks), w (s with shadow); env WS_BENCH_ROUNDS (3), WS_BENCH_SECONDS (4), WS_BENCH_CONNECTIONS (16)");
            return;
        }
        eprintln!(
            "ws-bench: unknown argument {:?} (usage: ws-bench, settings in WS_BENCH_* variables)",
            a.to_string_lossy()
        );
        std::process::exit(2);
    }
    let rounds = env_num("WS_BENCH_ROUNDS", 3);
    let seconds = env_num("WS_BENCH_SECONDS", 4);
    let connections = env_num("WS_BENCH_CONNECTIONS", 16);
    let upstreams: Vec<Upstream> = CLUSTERS
        .iter()
        .map(|n| Upstream::start_with(n, "127.0.0.1:0", &["--threads", "1"]))
        .collect();
    let refs: Vec<&Upstream> = upstreams.iter().collect();
    let base = Bootstrap::shipped().for_test().with_upstreams(&refs);
    let variants = variants(&base);
    let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut p50: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (key, bootstrap) in &variants {
            let envoy = match Envoy::start_with(bootstrap, 1).await {
                Ok(e) => e,
                Err(f) => {
                    eprintln!("ws-bench: variant {key}: Envoy did not start:\n{}", f.log);
                    std::process::exit(1);
                }
            };
            let url = envoy.url("/ws/chat").replacen("http://", "ws://", 1);
            let out = Command::new(ws_bin())
                .args([&url, "--bench", "--connections", &connections.to_string()])
                .args(["--seconds", &seconds.to_string()])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", ws_bin()));
            drop(envoy);
            let text = String::from_utf8_lossy(&out.stdout);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
                eprintln!(
                    "ws-bench: variant {key}: ws failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::process::exit(1);
            };
            println!("round {round} {key}: {v}");
            results
                .entry(key)
                .or_default()
                .push(v["per_second"].as_f64().unwrap_or(0.0));
            p50.entry(key)
                .or_default()
                .push(v["p50_us"].as_f64().unwrap_or(0.0));
        }
    }
    let base = median(results.get("a").cloned().unwrap_or_default());
    println!("variant  messages/s (median of {rounds})  ratio to a  echo p50 µs");
    for (key, _) in &variants {
        let m = median(results.get(key).cloned().unwrap_or_default());
        let l = median(p50.get(key).cloned().unwrap_or_default());
        println!("{key:8} {m:>10.0} {:>24.2} {l:>12.0}", m / base.max(1.0));
    }
}
