//! `make bench`: what the filter costs, against native Envoy routing, in one run.
//!
//! Starts the upstreams and five Envoy variants (one worker each), all built
//! from `envoy/envoy.yaml`:
//!   a  direct route to the monolith, no filter
//!   b  native `weighted_clusters`, 10 % to auth_service
//!   c  a Lua filter doing the same hash split (integration/bench/split.lua)
//!   d0 traffic-shift with an empty route table, as the SDK builds it
//!      (every proxy_on_* callback exported: a VM entry each per request)
//!   d  traffic-shift with an empty route table (the wasm floor), as shipped:
//!      the callbacks it does not use are not exported (slim-exports)
//!   e  traffic-shift with the split (10 % of /api/auth/ to auth_service),
//!      its stats and a breaker on the route
//! then drives each in turn with wrk (same load, interleaved rounds
//! a b c d e, a b c d e, ... so machine drift hits all alike) and reports
//! medians and the per-round ratio to (b). Bounded: rounds x variants x
//! seconds. Every process it starts is killed on exit.
//!
//! Env: BENCH_ROUNDS (5), BENCH_SECONDS (8), BENCH_CONNECTIONS (32),
//! BENCH_OUT (target/bench).

use std::collections::BTreeMap;
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

/// The variants, keyed a..e, built from the shipped config.
fn variants(base: &Bootstrap) -> Vec<(&'static str, &'static str, Bootstrap)> {
    // (the order of this list is the order of every round)
    let split_config = r#"{"monolith": "monolith", "routes": [
        {"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 10,
         "outlier": {}}]}"#;

    let mut a = base.clone();
    hcm(&mut a)["http_filters"] = Yaml::Sequence(vec![yaml(ROUTER)]);
    hcm(&mut a)["route_config"]["virtual_hosts"][0]["routes"] =
        yaml("[{match: {prefix: /}, route: {cluster: monolith}}]");

    let mut b = a.clone();
    hcm(&mut b)["route_config"]["virtual_hosts"][0]["routes"] = yaml(
        "[{match: {prefix: /}, route: {weighted_clusters: {clusters: [
            {name: auth_service, weight: 10}, {name: monolith, weight: 90}]}}}]",
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
    let e = base.clone().with_plugin_config(split_config);

    vec![
        ("a", "direct, no filter", a),
        ("b", "native weighted_clusters", b),
        ("c", "Lua hash split", c),
        ("d0", "traffic-shift, no routes, all SDK exports", d0),
        ("d", "traffic-shift, no routes (wasm floor)", d),
        ("e", "traffic-shift, split + stats + breaker", e),
    ]
}

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

fn wrk(url: &str, seconds: u64, connections: u64, load_cpu: Option<&str>) -> Value {
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
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
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("{e}"));

    let upstreams: Vec<Upstream> = ["monolith", "auth_service", "orders_service"]
        .iter()
        .map(|n| Upstream::start_with(n, "127.0.0.1:0", &["--threads", "1", "--bare"]))
        .collect();
    if pinned {
        for u in &upstreams {
            pin(u.pid(), "1");
        }
    }
    let refs: Vec<&Upstream> = upstreams.iter().collect();
    let base = Bootstrap::shipped().for_test().with_upstreams(&refs);

    let mut envoys = Vec::new();
    for (key, name, bootstrap) in variants(&base) {
        let envoy = match Envoy::start_with(&bootstrap, 1).await {
            Ok(e) => e,
            Err(f) => panic!("variant {key} did not start:\n{}", f.log),
        };
        if pinned {
            pin(envoy.pid(), "0");
        }
        envoys.push((key, name, envoy));
    }

    // Sanity: every variant answers 200 and splits as intended.
    let client = integration::client();
    println!("variant check (200 requests each to {PATH}):");
    for (key, name, envoy) in &envoys {
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
    for (_, _, envoy) in &envoys {
        wrk(&envoy.url(PATH), 2, connections, load_cpu);
    }
    let mut runs: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for round in 1..=rounds {
        let mut line = format!("round {round}/{rounds}:");
        for (key, _, envoy) in &envoys {
            let mut r = wrk(&envoy.url(PATH), seconds, connections, load_cpu);
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
    for (key, name, _) in &envoys {
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
    let results = json!({"date": date, "machine": machine, "rounds": rounds, "seconds": seconds,
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
