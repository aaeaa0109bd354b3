//! The Istio manifests in envoy/istio/: we cannot run Istio here, so they
//! are parsed, their plugin config must pass the filter's own check (the
//! same code as `traffic-shift check`), and the routing must match it.

use integration::repo_root;
use serde_yaml::Value as Yaml;
use traffic_shift::config::Config;

fn docs(file: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo_root().join("envoy/istio").join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_wasmplugin_config_passes_the_check_and_the_routing_matches_it() {
    let plugin_docs = docs("wasmplugin.yaml");
    let plugin = kind(&plugin_docs, "WasmPlugin")[0];
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_OPEN");
    assert_eq!(plugin["spec"]["phase"], "UNSPECIFIED_PHASE");
    assert!(plugin["spec"]["url"]
        .as_str()
        .unwrap()
        .starts_with("oci://"));
    let json = serde_json::to_string(&plugin["spec"]["pluginConfig"]).unwrap();
    let config =
        Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("pluginConfig refused:\n{e}"));

    let routing = docs("routing.yaml");
    let vs = kind(&routing, "VirtualService")[0];
    let http = vs["spec"]["http"].as_sequence().unwrap();
    for r in &config.routes {
        let matched = http.iter().any(|h| {
            h["match"][0]["headers"][config.target_header.as_str()]["exact"] == r.service.as_str()
        });
        assert!(
            matched,
            "no VirtualService route on {}: {}",
            config.target_header, r.service
        );
    }
    let last = http.last().unwrap();
    assert!(
        last["match"].is_null(),
        "the last route must be the catch-all"
    );
    assert!(last["route"][0]["destination"]["host"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}.", config.monolith)));
    assert_eq!(kind(&routing, "DestinationRule").len(), 2);

    let strip = docs("envoyfilter-strip-target.yaml");
    let patch = &kind(&strip, "EnvoyFilter")[0]["spec"]["configPatches"][0]["patch"]["value"];
    assert_eq!(
        patch["typed_config"]["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
            [0]["remove"],
        config.target_header.as_str()
    );
}
