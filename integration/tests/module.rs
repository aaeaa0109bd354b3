//! The Envoy dynamic module (`make module`) against the pinned Envoy 1.40:
//! the bindings agree with the binary (every callback we import is one it
//! exports, every hook it resolves is one we export), it loads (with the
//! ABI warning the README documents), splits, and refuses a bad
//! configuration with the wasm build's error text; the bootstrap
//! `traffic-shift envoy --module` prints (envoy/envoy-module.yaml) loads it.
//!
//! The behaviour tests (split, stats, breaker) run against the module too:
//! `TRAFFIC_SHIFT_BUILD=module` (see `make integration`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use integration::{
    client, envoy_bin, module_path, random_ids, repo_root, served_by_keys, Bootstrap, Build,
    EcdsFile, Envoy, Stack, Upstream, CLUSTERS,
};
use traffic_shift::hash::bucket;

/// The ELF file behind `envoy_bin()` (the venv's `envoy` is a Python
/// launcher that execs the binary shipped in the package).
fn envoy_elf() -> PathBuf {
    let bin = envoy_bin();
    let head = std::fs::read(&bin).map(|b| b.get(..4) == Some(b"\x7fELF"));
    if head.unwrap_or(false) {
        return bin;
    }
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .filter_map(Result::ok)
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no Envoy binary under {}", lib.display()))
}

/// `nm -D` symbols of `file` (`defined`: defined ones, else undefined ones).
fn dynamic_symbols(file: &PathBuf, defined: bool) -> BTreeSet<String> {
    let which = if defined {
        "--defined-only"
    } else {
        "--undefined-only"
    };
    let out = Command::new("nm")
        .args(["-D", which])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("nm (binutils): {e}"));
    assert!(out.status.success(), "nm -D {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[test]
fn every_callback_the_module_imports_is_exported_by_the_pinned_envoy() {
    let module = module_path();
    assert!(
        module.exists(),
        "{} missing: run `make module`",
        module.display()
    );
    let imported: Vec<String> = dynamic_symbols(&module, false)
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(imported.len() >= 10, "imports: {imported:?}");
    let exported = dynamic_symbols(&envoy_elf(), true);
    let missing: Vec<&String> = imported.iter().filter(|s| !exported.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "the pinned Envoy does not export {missing:?}: the bindings (src/module/abi.rs) and Envoy disagree"
    );
}

#[test]
fn the_module_exports_every_http_filter_hook_the_pinned_envoy_names() {
    let out = Command::new("strings")
        .arg(envoy_elf())
        .output()
        .unwrap_or_else(|e| panic!("strings (binutils): {e}"));
    let named: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("envoy_dynamic_module_on_http_filter")
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(named.len() >= 20, "hooks named by Envoy: {named:?}");
    let ours = dynamic_symbols(&module_path(), true);
    let missing: Vec<&String> = named.iter().filter(|h| !ours.contains(*h)).collect();
    assert!(missing.is_empty(), "the module does not export {missing:?}");
    assert!(ours.contains("envoy_dynamic_module_on_program_init"));
}

const CONFIG: &str = r#"{
  "monolith": "monolith",
  "routes": [
    {"name": "p50", "prefix": "/p50/", "service": "orders_service", "percent": 50}
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_loads_the_module_and_every_decision_matches_the_formula() {
    let upstreams: Vec<Upstream> = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    // The bootstrap `traffic-shift envoy --module` printed.
    let bootstrap = Bootstrap::load(&repo_root().join("envoy/envoy-module.yaml"))
        .for_test()
        .with_plugin_config(CONFIG);
    // Two workers: one configuration object serves both.
    let stack = Stack::start_bootstrap(bootstrap, 2, upstreams).await;
    let log = stack.envoy.log();
    // The ABI version the bindings were written against (README "Two
    // builds"): Envoy 1.40 warns and loads it.
    assert!(
        log.contains("Dynamic module ABI version v0.1.0 is deprecated"),
        "no ABI warning in the log:\n{log}"
    );
    let ids = random_ids(2_000);
    let served = served_by_keys(
        &client(),
        &stack.envoy.url("/p50/x"),
        "x-request-id",
        &ids,
        8,
    )
    .await;
    for (id, got) in ids.iter().zip(&served) {
        let want = if bucket(b"", id.as_bytes()) < 5000 {
            "orders_service"
        } else {
            "monolith"
        };
        assert_eq!(got, want, "id {id}");
    }
    let m = stack.envoy.metrics().await;
    let shifted = served.iter().filter(|s| *s == "orders_service").count() as f64;
    assert_eq!(
        m.get(
            "traffic_shift_rq_total",
            &[("route", "p50"), ("target", "service")]
        ),
        shifted
    );
    assert_eq!(m.get("traffic_shift_module_panics", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_names_the_field_as_the_wasm_build_does() {
    let bootstrap = Bootstrap::shipped()
        .for_test()
        .as_module()
        .with_plugin_config(
            r#"{"monolith": "monolith", "routes": [
            {"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 140}]}"#,
        );
    let failed = match Envoy::start(&bootstrap).await {
        Ok(_) => panic!("Envoy started with a refused configuration"),
        Err(f) => f,
    };
    assert!(
        failed.log.contains(
            "invalid configuration: routes[0].percent: must be between 0 and 100, got 140"
        ),
        "log:\n{}",
        failed.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_caught_counted_and_the_request_goes_to_the_monolith() {
    // The test-trap build (`make integration` copies it next to the
    // module): a request carrying x-test-trap panics inside the hook.
    let trap = module_path().with_file_name("libtraffic_shift_trap.so");
    assert!(
        trap.exists(),
        "{} missing: run `make integration`",
        trap.display()
    );
    let mut bootstrap = Bootstrap::shipped()
        .for_test()
        .as_module()
        .with_plugin_config(
            r#"{"monolith": "monolith", "routes": [
                {"name": "all", "prefix": "/", "service": "orders_service", "percent": 100}]}"#,
        );
    set_module_name(&mut bootstrap, "traffic_shift_trap");
    let upstreams: Vec<Upstream> = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    let stack = Stack::start_bootstrap(bootstrap, 1, upstreams).await;
    let c = client();
    let url = stack.envoy.url("/x");
    let trapped = integration::send(&c, "GET", &url, &[("x-test-trap", "1")]).await;
    assert_eq!(trapped.status, 200, "{trapped:?}");
    assert_eq!(
        trapped.served_by.as_deref(),
        Some("monolith"),
        "{trapped:?}"
    );
    // Envoy goes on, and so does the module.
    let next = integration::send(&c, "GET", &url, &[]).await;
    assert_eq!(
        next.served_by.as_deref(),
        Some("orders_service"),
        "{next:?}"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(m.get("traffic_shift_module_panics", &[]), 1.0);
    // Logged through Envoy's log, where it happened.
    assert!(
        stack
            .envoy
            .log()
            .contains("caught panic (request sent on): panicked at src/module/mod.rs"),
        "{}",
        stack.envoy.log()
    );
}

/// Loads `lib<name>.so` instead of `libtraffic_shift.so`.
fn set_module_name(b: &mut Bootstrap, name: &str) {
    let hfs = &mut b.0["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let seq = hfs
        .as_sequence_mut()
        .unwrap_or_else(|| panic!("no http_filters"));
    let f = seq
        .iter_mut()
        .find(|f| f["name"] == "traffic_shift")
        .unwrap_or_else(|| panic!("no traffic_shift filter"));
    f["typed_config"]["dynamic_module_config"]["name"] = serde_yaml::Value::from(name);
}

/// The module's ECDS resource (file-based ECDS) carrying `json`.
fn at_percent(percent: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": {percent}}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_over_ecds_applies_and_a_refused_one_keeps_the_last_good() {
    const ECDS: &str = "extension_config_discovery.http_filter.traffic_shift";
    let ecds = EcdsFile::for_build(Build::Module, "1", &at_percent("100"));
    let upstreams: Vec<Upstream> = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    let stack = Stack::start_bootstrap(ecds.bootstrap(), 2, upstreams).await;
    let e = &stack.envoy;
    let c = client();
    let url = e.url("/api/auth/x");
    let served = |ids: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move { served_by_keys(&c, &url, "x-request-id", &random_ids(ids), 4).await }
    };
    assert_eq!(
        e.wait_counter(&format!("{ECDS}.update_success"), 1).await,
        1
    );
    assert!(served(50).await.iter().all(|s| s == "auth_service"));

    // Waits for config_reload too: update_success moves before the workers
    // have the new configuration.
    ecds.apply(e, "2", &at_percent("0")).await;
    assert!(served(50).await.iter().all(|s| s == "monolith"));

    ecds.write("3", &at_percent("140"));
    assert_eq!(
        e.wait_counter(&format!("{ECDS}.update_rejected"), 1).await,
        1
    );
    // The last good configuration (0 %) keeps serving.
    assert!(served(50).await.iter().all(|s| s == "monolith"));
    assert_eq!(e.counter(&format!("{ECDS}.update_success")).await, 2);
    assert!(e
        .log()
        .contains("invalid configuration: routes[0].percent: must be between 0 and 100, got 140"));
}

/// Shadows still out when Envoy destroys their configuration (a live
/// update): Envoy drops their calls without telling the module; the
/// worker ends them as the flow ends abandoned shadows (`error`, counted
/// through the new configuration on the worker's next tick), so none is
/// lost from the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_out_when_their_configuration_goes_end_as_errors() {
    const ECDS: &str = "extension_config_discovery.http_filter.traffic_shift";
    let shadowed = |version: &str| {
        format!(
            r#"{{"monolith": "monolith", "routes": [
                {{"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 0,
                  "shadow": {{"percent": 100, "timeout_ms": 5000, "compare_headers": ["x-v{version}"]}}}}]}}"#
        )
    };
    let ecds = EcdsFile::for_build(Build::Module, "1", &shadowed("1"));
    let upstreams: Vec<Upstream> = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    let stack = Stack::start_bootstrap(ecds.bootstrap(), 1, upstreams).await;
    let e = &stack.envoy;
    assert_eq!(
        e.wait_counter(&format!("{ECDS}.update_success"), 1).await,
        1
    );
    // The shadow side (the service) answers after 3 s.
    stack.upstreams[1].set("delay-ms", 3000).await;
    let c = client();
    for _ in 0..5 {
        let resp = c.get(e.url("/api/auth/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let result = |m: &integration::Metrics, r: &str| {
        m.value("traffic_shift_shadow", &[("route", "auth"), ("result", r)])
            .unwrap_or(0.0)
    };
    let m = e.metrics_now().await;
    let out: f64 = ["match", "header", "error", "timeout", "skipped"]
        .iter()
        .map(|r| result(&m, r))
        .sum();
    assert_eq!(out, 0.0, "the 5 shadows are still out");
    ecds.write("2", &shadowed("2"));
    assert_eq!(
        e.wait_counter(&format!("{ECDS}.update_success"), 2).await,
        2
    );
    stack.upstreams[1].set("delay-ms", 0).await;
    // Requests of the new configuration (their shadows answer at once)
    // until the worker's tick has ended the old one's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut m = e.metrics_now().await;
    while result(&m, "error") < 5.0 && std::time::Instant::now() < deadline {
        let _ = c.get(e.url("/elsewhere")).send().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        m = e.metrics_now().await;
    }
    assert_eq!(result(&m, "error"), 5.0, "{}", e.log());
    assert_eq!(result(&m, "match") + result(&m, "header"), 0.0);
}
