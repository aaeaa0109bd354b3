//! The Envoy configs in `envoy/`: valid for Envoy 1.40, consistent with the
//! filter, the compose variant in step with the native one, and the demo
//! config doing what the README says.

use integration::{
    client, random_ids, repo_root, send, served_by_keys, validate, wasm_path, Bootstrap, Stack,
    CLUSTERS,
};
use serde_yaml::Value as Yaml;
use traffic_shift::config::Config;

#[test]
fn envoy_yaml_passes_envoy_validate() {
    let (ok, out) = validate(&repo_root().join("envoy/envoy.yaml"));
    assert!(ok, "envoy --mode validate failed:\n{out}");
    assert!(
        out.contains("configuration 'envoy/envoy.yaml' OK") || out.contains(" OK"),
        "{out}"
    );
}

#[test]
fn compose_envoy_yaml_passes_envoy_validate() {
    // The compose file mounts the .wasm at /etc/envoy/; validation loads the
    // module, so point it at the local build. Nothing else changes.
    let mut b = Bootstrap::load(&repo_root().join("envoy/compose-envoy.yaml"));
    set_wasm_filename(&mut b.0, &wasm_path().to_string_lossy());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compose-envoy.yaml");
    std::fs::write(&path, b.to_yaml()).unwrap();
    let (ok, out) = validate(&path);
    assert!(ok, "envoy --mode validate failed:\n{out}");
}

/// Everything but what must differ between a native run and containers:
/// node id, bind addresses, upstream addresses and DNS type, .wasm path,
/// and the trace exporter (the compose has a collector to export to; the
/// native config only tags spans, for whatever provider a user adds).
fn normalized(mut b: Bootstrap) -> Yaml {
    let root = &mut b.0;
    root["node"] = Yaml::Null;
    root["admin"]["address"]["socket_address"]["address"] = Yaml::Null;
    for l in root["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap()
    {
        l["address"]["socket_address"]["address"] = Yaml::Null;
        if let Some(t) =
            l["filter_chains"][0]["filters"][0]["typed_config"]["tracing"].as_mapping_mut()
        {
            t.remove("provider");
        }
    }
    if let Some(clusters) = root["static_resources"]["clusters"].as_sequence_mut() {
        clusters.retain(|c| c["name"] != "otel_collector");
    }
    for c in root["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
    {
        c["type"] = Yaml::Null;
        c["load_assignment"]["endpoints"] = Yaml::Null;
    }
    set_wasm_filename(root, "");
    b.0
}

fn set_wasm_filename(root: &mut Yaml, to: &str) {
    for l in root["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap()
    {
        for hf in l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_sequence_mut()
            .unwrap()
        {
            if hf["name"] == "traffic_shift" {
                hf["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
                    Yaml::from(to);
            }
        }
    }
}

#[test]
fn compose_config_is_envoy_yaml_with_container_addresses_only() {
    let native = normalized(Bootstrap::shipped());
    let compose = normalized(Bootstrap::load(
        &repo_root().join("envoy/compose-envoy.yaml"),
    ));
    assert_eq!(
        serde_yaml::to_string(&native).unwrap(),
        serde_yaml::to_string(&compose).unwrap(),
        "envoy/compose-envoy.yaml drifted from envoy/envoy.yaml"
    );
}

#[test]
fn routing_is_consistent_with_the_filter_config() {
    let b = Bootstrap::shipped();
    let config =
        Config::from_json(b.plugin_config().as_bytes()).expect("shipped plugin config is valid");
    let hcm =
        &b.0["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];

    // The early mutation strips exactly the header the filter writes.
    assert_eq!(
        hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"][0]["remove"],
        Yaml::from(config.target_header.as_str())
    );
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence()
        .unwrap();
    // Every service has a header-match route to its cluster.
    for r in &config.routes {
        let found = routes.iter().any(|route| {
            route["route"]["cluster"] == r.service.as_str()
                && route["match"]["headers"][0]["name"] == config.target_header.as_str()
                && route["match"]["headers"][0]["string_match"]["exact"] == r.service.as_str()
        });
        assert!(
            found,
            "no route matching {}: {} in envoy.yaml",
            config.target_header, r.service
        );
    }
    // The last route is the catch-all to the monolith: fail safe.
    let last = routes.last().unwrap();
    assert_eq!(
        last["match"],
        serde_yaml::from_str::<Yaml>("{prefix: /}").unwrap()
    );
    assert_eq!(
        last["route"]["cluster"],
        Yaml::from(config.monolith.as_str())
    );
    // Every cluster named by the filter exists.
    let clusters: Vec<&str> = b.0["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(clusters, CLUSTERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_config_splits_auth_by_request_and_orders_by_user() {
    // Stack::start replaces the plugin config: start from the shipped one.
    let shipped = Bootstrap::shipped().plugin_config();
    let stack = Stack::start(&shipped).await;
    let c = client();
    let served = served_by_keys(
        &c,
        &stack.envoy.url("/api/auth/login"),
        "x-request-id",
        &random_ids(2000),
        8,
    )
    .await;
    let shifted = served.iter().filter(|s| *s == "auth_service").count();
    // 10% of 2000: mean 200, sigma 13.4; 4 sigma = 54 (see split.rs).
    assert!(
        (146..=254).contains(&shifted),
        "{shifted} of 2000 shifted at 10%"
    );

    let mut per_user = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..50 {
            let s = send(
                &c,
                "GET",
                &stack.envoy.url("/api/orders/1"),
                &[("x-user-id", &user.to_string())],
            )
            .await;
            let who = s.served_by.unwrap();
            if round == 0 {
                per_user.insert(user, who);
            } else {
                assert_eq!(per_user[&user], who, "user {user} moved between requests");
            }
        }
    }
    assert!(
        per_user.values().any(|s| s == "orders_service")
            && per_user.values().any(|s| s == "monolith")
    );
    let s = send(&c, "GET", &stack.envoy.url("/"), &[]).await;
    assert_eq!(s.served_by.as_deref(), Some("monolith"));
}

#[test]
fn stats_tags_are_the_ones_the_filter_names_its_stats_for() {
    let b = Bootstrap::shipped();
    let tags: Vec<(String, String)> = b.0["stats_config"]["stats_tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tag_name"].as_str().unwrap().to_string(),
                t["regex"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = traffic_shift::stats::STATS_TAGS
        .iter()
        .chain([&traffic_shift::stats::GRPC_STATUS_TAG])
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    assert_eq!(tags, want);
}

#[test]
fn ecds_configs_pass_envoy_validate() {
    for f in ["envoy/envoy-ecds-file.yaml", "envoy/envoy-ecds-grpc.yaml"] {
        let path = repo_root().join(f);
        let (ok, out) = validate(&path);
        assert!(ok, "{f}: envoy --mode validate failed:\n{out}");
    }
}

/// `envoy.yaml` with the traffic_shift filter reduced to its name and the
/// ADS pieces dropped: what every config variant must share.
fn without_filter_source(mut b: Bootstrap) -> Yaml {
    let root = &mut b.0;
    for key in ["dynamic_resources"] {
        if let Some(m) = root.as_mapping_mut() {
            m.remove(key);
        }
    }
    if let Some(clusters) = root["static_resources"]["clusters"].as_sequence_mut() {
        clusters.retain(|c| c["name"] != "xds");
    }
    for hf in root["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_sequence_mut()
        .unwrap()
    {
        if hf["name"] == "traffic_shift" {
            *hf = serde_yaml::from_str("{name: traffic_shift}").unwrap();
        }
    }
    b.0
}

#[test]
fn ecds_configs_are_envoy_yaml_but_for_the_filter_config_source() {
    let native = without_filter_source(Bootstrap::shipped());
    for f in ["envoy/envoy-ecds-file.yaml", "envoy/envoy-ecds-grpc.yaml"] {
        let other = without_filter_source(Bootstrap::load(&repo_root().join(f)));
        // Mapping equality ignores key order.
        assert!(native == other, "{f} drifted from envoy/envoy.yaml");
    }
}

#[test]
fn the_three_config_sources_carry_the_same_filter_config() {
    // The static bootstrap, the ECDS file and the control plane's JSON file.
    let static_json = Bootstrap::shipped().plugin_config();
    let ecds: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("envoy/ecds/traffic_shift.yaml")).unwrap(),
    )
    .unwrap();
    let wasm = &ecds["resources"][0]["typed_config"]["config"];
    let file_json = wasm["configuration"]["value"].as_str().unwrap();
    let grpc_json =
        std::fs::read_to_string(repo_root().join("envoy/xds/traffic_shift.json")).unwrap();
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(parse(&static_json), parse(file_json));
    assert_eq!(parse(&static_json), parse(&grpc_json));
    assert_eq!(wasm["failure_policy"], "FAIL_OPEN");
}

#[test]
fn the_built_filter_exports_only_the_callbacks_it_uses() {
    let bytes = std::fs::read(wasm_path()).unwrap();
    let mut callbacks = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let wasmparser::Payload::ExportSection(reader) = payload.unwrap() {
            for e in reader {
                let name = e.unwrap().name;
                if name.starts_with("proxy_on_") {
                    callbacks.push(name.to_string());
                }
            }
        }
    }
    callbacks.sort();
    assert_eq!(
        callbacks,
        [
            "proxy_on_configure",
            "proxy_on_context_create",
            "proxy_on_delete",
            "proxy_on_http_call_response",
            "proxy_on_memory_allocate",
            "proxy_on_request_body",
            "proxy_on_request_headers",
            "proxy_on_request_trailers",
            "proxy_on_response_body",
            "proxy_on_response_headers",
            "proxy_on_response_trailers",
            "proxy_on_tick",
            "proxy_on_vm_start",
        ],
        "make build slims the SDK's exports (integration/src/bin/slim-exports.rs)"
    );
}
