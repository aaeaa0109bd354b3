//! The Envoy Gateway manifests in envoy/gateway/ (we cannot run Envoy
//! Gateway here): parsed, the plugin config passes the filter's own check
//! (the same code as `traffic-shift check`) and is the Istio one, the
//! routing matches it. Then every Kubernetes manifest we ship is checked
//! against the official schemas (`make k8s-schema`), and a misspelt field
//! is shown to fail that check. The dynamic-module manifests
//! (envoy/gateway/module/) have no schema in the pinned package: their
//! field names are checked here against Envoy Gateway's API types.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration::repo_root;
use serde_yaml::Value as Yaml;
use traffic_shift::config::Config;

fn docs(file: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn one(file: &str, kind: &str) -> Yaml {
    let all = docs(file);
    let mut of_kind = all.into_iter().filter(|d| d["kind"] == kind);
    let d = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    assert!(of_kind.next().is_none(), "more than one {kind} in {file}");
    d
}

#[test]
fn the_extension_policy_config_passes_the_check_and_the_routing_matches_it() {
    let policy = one(
        "envoy/gateway/extension-policy.yaml",
        "EnvoyExtensionPolicy",
    );
    assert_eq!(policy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    let wasm = &policy["spec"]["wasm"][0];
    assert_eq!(wasm["failOpen"], true);
    assert_eq!(wasm["code"]["type"], "Image");
    assert!(!wasm["code"]["image"]["url"].as_str().unwrap().is_empty());
    let json = serde_json::to_string(&wasm["config"]).unwrap();
    let config =
        Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("wasm config refused:\n{e}"));
    // The same plugin config as Istio's.
    let istio = one("envoy/istio/wasmplugin.yaml", "WasmPlugin");
    assert_eq!(wasm["config"], istio["spec"]["pluginConfig"]);

    let route = one("envoy/gateway/httproute.yaml", "HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    let target = &policy["spec"]["targetRefs"][0];
    assert_eq!(target["kind"], "HTTPRoute");
    assert_eq!(target["name"], route["metadata"]["name"]);
    assert_eq!(
        policy["metadata"]["namespace"],
        route["metadata"]["namespace"]
    );

    let rules = route["spec"]["rules"].as_sequence().unwrap();
    let header = config.target_header.as_str();
    for r in &config.routes {
        let found = rules.iter().any(|rule| {
            let h = &rule["matches"][0]["headers"][0];
            h["name"] == header
                && h["type"] == "Exact"
                && h["value"] == r.service.as_str()
                && rule["backendRefs"][0]["name"] == r.service.as_str()
        });
        assert!(found, "no HTTPRoute rule on {header}: {}", r.service);
    }
    // The catch-all to the monolith: a path match on / and nothing else.
    let catch_all: Vec<&Yaml> = rules
        .iter()
        .filter(|rule| rule["matches"][0]["headers"].is_null())
        .collect();
    assert_eq!(
        catch_all.len(),
        1,
        "exactly one rule without a header match"
    );
    assert_eq!(
        catch_all[0]["matches"][0]["path"],
        serde_yaml::from_str::<Yaml>("{type: PathPrefix, value: /}").unwrap()
    );
    assert_eq!(
        catch_all[0]["backendRefs"][0]["name"],
        config.monolith.as_str()
    );
    assert_eq!(rules.len(), config.routes.len() + 1);

    // The target header is removed before routing, on the route's Gateway.
    let ctp = one(
        "envoy/gateway/client-traffic-policy.yaml",
        "ClientTrafficPolicy",
    );
    let target = &ctp["spec"]["targetRefs"][0];
    assert_eq!(target["kind"], "Gateway");
    assert_eq!(target["name"], route["spec"]["parentRefs"][0]["name"]);
    assert_eq!(
        ctp["spec"]["headers"]["earlyRequestHeaders"]["remove"],
        serde_yaml::from_str::<Yaml>(&format!("[{header}]")).unwrap()
    );
}

/// The keys of mapping `v` (at `path`) are all in `known`.
fn known_fields(v: &Yaml, path: &str, known: &[&str]) {
    let map = v
        .as_mapping()
        .unwrap_or_else(|| panic!("{path}: not a mapping"));
    for k in map.keys() {
        let k = k
            .as_str()
            .unwrap_or_else(|| panic!("{path}: a key that is no string"));
        assert!(known.contains(&k), "{path}.{k}: unknown field");
    }
}

/// Envoy Gateway's pattern for a module name (DynamicModuleEntry.Name,
/// DynamicModule.Name): `^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`, 1-253 chars.
fn module_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-';
    let end = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=253).contains(&b.len())
        && b.first().is_some_and(end)
        && b.last().is_some_and(end)
        && b.iter().all(inner)
}

/// The module manifests, field by field against Envoy Gateway's API types
/// (envoyproxy/gateway v1.8.0: api/v1alpha1/envoyproxy_types.go
/// `EnvoyProxySpec.DynamicModules []DynamicModuleEntry json:"dynamicModules"`,
/// api/v1alpha1/envoyextensionypolicy_types.go
/// `EnvoyExtensionPolicySpec.DynamicModule []DynamicModule json:"dynamicModule"`,
/// api/v1alpha1/dynamic_module_types.go for both entries): the schema
/// package we pin has neither field (see the test below).
#[test]
fn the_module_manifests_allowlist_and_attach_the_module_with_the_wasm_config() {
    let dir = "envoy/gateway/module";
    let proxy = one(&format!("{dir}/envoy-proxy.yaml"), "EnvoyProxy");
    assert_eq!(proxy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    known_fields(&proxy["spec"], "EnvoyProxy spec", &["dynamicModules"]);
    let entries = proxy["spec"]["dynamicModules"].as_sequence().unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    known_fields(
        entry,
        "dynamicModules[0]",
        &["name", "source", "doNotClose", "loadGlobally"],
    );
    let module = entry["name"].as_str().unwrap();
    assert!(module_name_ok(module), "module name {module:?}");
    let source = &entry["source"];
    known_fields(
        source,
        "dynamicModules[0].source",
        &["type", "local", "remote"],
    );
    // A union on `type` (default Local): Local needs `local`, Remote needs
    // `remote` and no `local`.
    assert_eq!(source["type"], "Local");
    assert!(source["remote"].is_null());
    known_fields(
        &source["local"],
        "dynamicModules[0].source.local",
        &["path"],
    );
    let path = source["local"]["path"].as_str().unwrap();
    assert!(path.starts_with('/'), "an absolute path: {path}");
    assert!(path.ends_with("/libtraffic_shift.so"), "{path}");

    let policy = one(
        &format!("{dir}/extension-policy.yaml"),
        "EnvoyExtensionPolicy",
    );
    assert_eq!(policy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    known_fields(
        &policy["spec"],
        "EnvoyExtensionPolicy spec",
        &["targetRefs", "dynamicModule"],
    );
    let attached = policy["spec"]["dynamicModule"].as_sequence().unwrap();
    assert_eq!(attached.len(), 1);
    let dm = &attached[0];
    known_fields(
        dm,
        "dynamicModule[0]",
        &["name", "filterName", "config", "terminalFilter"],
    );
    assert_eq!(dm["name"], module, "the module the EnvoyProxy allowlists");
    assert_eq!(dm["filterName"], "traffic_shift");
    assert!(dm["terminalFilter"].is_null(), "not a terminal filter");
    assert_eq!(
        proxy["metadata"]["namespace"],
        policy["metadata"]["namespace"]
    );

    // The plugin config passes the filter's check and is the wasm policy's.
    let json = serde_json::to_string(&dm["config"]).unwrap();
    Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("module config refused:\n{e}"));
    let wasm = one(
        "envoy/gateway/extension-policy.yaml",
        "EnvoyExtensionPolicy",
    );
    assert_eq!(dm["config"], wasm["spec"]["wasm"][0]["config"]);
    assert_eq!(policy["spec"]["targetRefs"], wasm["spec"]["targetRefs"]);
}

/// The pinned `@kubernetes-models/envoy-gateway` 2.0.0 has no schema for
/// the dynamic-module fields: the module manifests stay out of `make
/// k8s-schema`. When a package version adds them, this fails: move
/// envoy/gateway/module/ into the schema check then.
#[test]
fn the_pinned_schema_package_has_no_dynamic_module_fields() {
    let dir = repo_root().join("envoy/gateway/module");
    let files = vec![
        dir.join("envoy-proxy.yaml"),
        dir.join("extension-policy.yaml"),
    ];
    let (ok, out) = schema_check(&files);
    assert!(!ok, "{out}");
    for error in [
        "(EnvoyProxy traffic-shift-module): spec.dynamicModules: unknown field",
        "(EnvoyExtensionPolicy traffic-shift-module): spec.dynamicModule: unknown field",
    ] {
        assert!(out.contains(error), "expected {error:?} in:\n{out}");
    }
    assert_eq!(out.lines().count(), 2, "nothing else fails:\n{out}");
}

/// Every Kubernetes manifest we ship that the pinned schemas cover (not
/// envoy/gateway/module/).
fn manifests() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["envoy/istio", "envoy/gateway"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs the schema check (integration/k8s-schema/check.mjs, installed by
/// `make k8s-schema-deps`); returns (success, stderr + stdout).
fn schema_check(files: &[PathBuf]) -> (bool, String) {
    let tool = repo_root().join("integration/k8s-schema");
    assert!(
        tool.join("node_modules/.installed").is_file(),
        "the schema packages are not installed: run `make k8s-schema-deps`"
    );
    let out = Command::new("node")
        .arg(tool.join("check.mjs"))
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn every_shipped_manifest_matches_the_official_schema() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    let (ok, out) = schema_check(&files);
    assert!(ok, "{out}");
}

/// A copy of `file` with `from` replaced (once) by `to`, in `dir`.
fn broken_copy(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    let path = dir.join(Path::new(file).file_name().unwrap());
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn a_misspelt_field_fails_the_schema_check() {
    let dir = tempfile::tempdir().unwrap();
    for (file, from, to, error) in [
        (
            "envoy/gateway/extension-policy.yaml",
            "failOpen: true",
            "failopen: true",
            "(EnvoyExtensionPolicy traffic-shift): spec.wasm[0].failopen: unknown field",
        ),
        (
            "envoy/gateway/client-traffic-policy.yaml",
            "earlyRequestHeaders:",
            "earlyRequestHeader:",
            "(ClientTrafficPolicy traffic-shift-strip-target): spec.headers.earlyRequestHeader: unknown field",
        ),
        (
            "envoy/gateway/httproute.yaml",
            "backendRefs:",
            "backendRef:",
            "(HTTPRoute shop): spec.rules[0].backendRef: unknown field",
        ),
        (
            "envoy/istio/wasmplugin.yaml",
            "failStrategy: FAIL_OPEN",
            "failStrategey: FAIL_OPEN",
            "(WasmPlugin traffic-shift): spec.failStrategey: unknown field",
        ),
        (
            "envoy/istio/routing.yaml",
            "consecutive5xxErrors: 5",
            "consecutive5xxErrors: five",
            "(DestinationRule auth-service): data/spec/trafficPolicy/outlierDetection/consecutive5xxErrors must be integer",
        ),
    ] {
        let copy = broken_copy(dir.path(), file, from, to);
        let (ok, out) = schema_check(&[copy]);
        assert!(!ok, "{file} with {to:?} passed:\n{out}");
        assert!(out.contains(error), "{file}: expected {error:?} in:\n{out}");
    }
}
