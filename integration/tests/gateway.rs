//! The Envoy Gateway manifests in envoy/gateway/ (we cannot run Envoy
//! Gateway here): parsed, the plugin config passes the filter's own check
//! (the same code as `traffic-shift check`) and is the Istio one, the
//! routing matches it. Then every Kubernetes manifest we ship is checked
//! against the official schemas (`make k8s-schema`), and a misspelt field
//! is shown to fail that check.

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

/// Every Kubernetes manifest we ship.
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
