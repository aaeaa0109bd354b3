//! `check --envoy` (src/envoy/lint.rs) against every bootstrap `traffic-shift
//! envoy` can print, and against the route shapes of Envoy's route
//! documentation (`config.route.v3.RouteMatch` and `RouteAction` fields)
//! put before the service routes. The lint must never report a false
//! error: a shape it cannot judge is a warning.

use serde_yaml::Value as Yaml;
use traffic_shift::config::Config;
use traffic_shift::envoy::bootstrap::{self, Address, FilterSource, Spec};
use traffic_shift::envoy::lint::{lint, Finding, Severity};
use traffic_shift::envoy::named_clusters;

const CONFIGS: &[&str] = &[
    include_str!("../envoy/plugin.json"),
    // Exact paths, two routes to one service, a route whose service is the
    // monolith, another target header.
    r#"{"monolith": "legacy", "target_header": "X-Backend",
        "routes": [
          {"name": "login", "path": "/login", "service": "auth", "percent": 5},
          {"name": "logout", "path": "/logout", "service": "auth", "percent": 5},
          {"name": "old", "prefix": "/old/", "service": "legacy", "percent": 50},
          {"name": "all", "prefix": "/", "service": "new_app", "percent": 1}
        ]}"#,
    // No routes at all.
    r#"{"monolith": "monolith", "routes": []}"#,
];

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

/// Every bootstrap the generator prints for `json`: inline, ECDS file and
/// ADS, each with and without OTLP (with OTLP, every cluster speaks HTTP/2:
/// `--h2`), and inline with the dynamic module.
fn bootstraps(json: &str) -> Vec<(String, String)> {
    let config = Config::from_json(json.as_bytes()).unwrap();
    let clusters: Vec<(String, Address)> = named_clusters(&config)
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.to_string(), addr(&format!("127.0.0.1:{}", 18080 + i))))
        .collect();
    let mut out = Vec::new();
    for source in [
        FilterSource::Inline,
        FilterSource::EcdsFile("/etc/envoy/ecds/traffic_shift.yaml".into()),
        FilterSource::Ads(addr("xds.internal:18000")),
    ] {
        let modules: &[bool] = match source {
            FilterSource::Inline => &[false, true],
            _ => &[false],
        };
        for (otlp, &module) in [None, Some(addr("127.0.0.1:4317"))]
            .into_iter()
            .flat_map(|o| modules.iter().map(move |m| (o.clone(), m)))
        {
            let spec = Spec {
                config: &config,
                config_json: json,
                clusters: clusters.clone(),
                listen: addr("127.0.0.1:10000"),
                admin: addr("127.0.0.1:9901"),
                wasm: "traffic_shift.wasm".into(),
                module,
                node: "n".into(),
                source: source.clone(),
                otlp: otlp.clone(),
                h2: match otlp {
                    Some(_) => clusters.iter().map(|(n, _)| n.clone()).collect(),
                    None => Vec::new(),
                },
                command: vec!["envoy".into()],
            };
            out.push((
                format!("{source:?} otlp {} module {module}", otlp.is_some()),
                bootstrap::bootstrap(&spec),
            ));
        }
    }
    out
}

fn findings(yaml: &str, json: &str) -> Vec<Finding> {
    let b: Yaml = serde_yaml::from_str(yaml).unwrap();
    lint(&b, &Config::from_json(json.as_bytes()).unwrap())
}

fn errors(f: &[Finding]) -> Vec<&str> {
    f.iter()
        .filter(|x| x.severity == Severity::Error)
        .map(|x| x.message.as_str())
        .collect()
}

#[test]
fn every_printed_bootstrap_passes() {
    for json in CONFIGS {
        for (what, yaml) in bootstraps(json) {
            let f = findings(&yaml, json);
            assert_eq!(errors(&f), Vec::<&str>::new(), "{what}\n{json}");
            let warnings: Vec<&str> = f.iter().map(|x| x.message.as_str()).collect();
            let ecds = !what.starts_with("Inline");
            assert_eq!(warnings.len(), usize::from(ecds), "{what}: {warnings:?}");
        }
    }
}

/// envoy/plugin.json's inline bootstrap with `route` inserted first.
fn with_first_route(route: &str) -> Vec<Finding> {
    let json = CONFIGS[0];
    let (_, yaml) = bootstraps(json).remove(0);
    let mut b: Yaml = serde_yaml::from_str(&yaml).unwrap();
    let r: Yaml = serde_yaml::from_str(route).unwrap();
    let routes = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .unwrap();
    routes.insert(0, r);
    lint(&b, &Config::from_json(json.as_bytes()).unwrap())
}

/// What a route put before the generated ones does to plugin.json's routes
/// (auth: prefix /api/auth/, orders: prefix /api/orders/).
#[derive(Debug, PartialEq)]
enum Verdict {
    /// No finding: it takes none of the service traffic, or sends it to the
    /// service.
    Fine,
    /// Errors naming it as catching service traffic, this many.
    Catches(usize),
    /// Warnings only.
    CannotCheck,
}

fn verdict(route: &str) -> Verdict {
    let f = with_first_route(route);
    let e = errors(&f);
    if !e.is_empty() {
        assert!(
            e.iter().all(|m| m.contains("routes[0] (")),
            "{route}: {e:?}"
        );
        return Verdict::Catches(e.len());
    }
    if f.is_empty() {
        Verdict::Fine
    } else {
        Verdict::CannotCheck
    }
}

#[test]
fn route_shapes_of_envoys_documentation() {
    use Verdict::*;
    let cases: &[(&str, Verdict)] = &[
        // Path matchers.
        ("{match: {prefix: /}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /api/auth/}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {prefix: /api/auth/v2/}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {prefix: /static/}, route: {cluster: monolith}}", Fine),
        ("{match: {path: /api/auth/login}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {path: /api}, route: {cluster: monolith}}", Fine),
        ("{match: {prefix: /API/, case_sensitive: false}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /API/, case_sensitive: true}, route: {cluster: monolith}}", Fine),
        ("{match: {path_separated_prefix: /api}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {path_separated_prefix: /api/auth}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {path_separated_prefix: /apix}, route: {cluster: monolith}}", Fine),
        ("{match: {safe_regex: {regex: \"^/api/.*\"}}, route: {cluster: monolith}}", CannotCheck),
        ("{match: {connect_matcher: {}}, route: {cluster: monolith}}", CannotCheck),
        (
            "{match: {path_match_policy: {name: envoy.path.match.uri_template.uri_template_matcher, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig, path_template: \"/api/{x}/**\"}}}, route: {cluster: monolith}}",
            CannotCheck,
        ),
        // Other match fields: they take some requests.
        ("{match: {prefix: /, grpc: {}}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /, headers: [{name: \":method\", string_match: {exact: POST}}]}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /, query_parameters: [{name: debug, present_match: true}]}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /, runtime_fraction: {default_value: {numerator: 50, denominator: HUNDRED}, runtime_key: routing.traffic_shift.helloworld}}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /, tls_context: {presented: true}}, route: {cluster: monolith}}", Catches(2)),
        // Header matchers on the target header itself.
        ("{match: {prefix: /, headers: [{name: x-shift-target, present_match: true}]}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /, headers: [{name: x-shift-target, present_match: true, invert_match: true}]}, route: {cluster: monolith}}", Fine),
        ("{match: {prefix: /, headers: [{name: X-Shift-Target, string_match: {exact: AUTH_SERVICE, ignore_case: true}}]}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {exact: AUTH_SERVICE}}]}, route: {cluster: monolith}}", Fine),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {suffix: _service}}]}, route: {cluster: monolith}}", Catches(2)),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {prefix: orders}}]}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {contains: auth}}]}, route: {cluster: monolith}}", Catches(1)),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {safe_regex: {regex: \".*\"}}}]}, route: {cluster: monolith}}", CannotCheck),
        ("{match: {prefix: /, headers: [{name: x-shift-target, exact_match: auth_service}]}, route: {cluster: monolith}}", Catches(1)),
        // Actions.
        ("{match: {prefix: /}, route: {cluster_header: x-shift-target}}", Fine),
        ("{match: {prefix: /}, route: {cluster_header: x-other}}", CannotCheck),
        ("{match: {prefix: /api/auth/, headers: [{name: x-shift-target, string_match: {exact: auth_service}}]}, route: {cluster: auth_service, prefix_rewrite: /}}", Fine),
        ("{match: {prefix: /api/auth/v2/, headers: [{name: x-shift-target, string_match: {exact: auth_service}}]}, route: {cluster: auth_service}}", Fine),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {exact: auth_service}}]}, route: {weighted_clusters: {clusters: [{name: auth_service, weight: 100}]}}}", Fine),
        ("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: auth_service, weight: 90}, {name: monolith, weight: 10}]}}}", Catches(2)),
        ("{match: {prefix: /}, redirect: {https_redirect: true}}", Catches(2)),
        ("{match: {prefix: /api/auth/}, direct_response: {status: 503, body: {inline_string: down}}}", Catches(1)),
        ("{match: {prefix: /}, route: {cluster_specifier_plugin: picker}}", CannotCheck),
        ("{match: {prefix: /}, route: {inline_cluster_specifier_plugin: {extension: {name: p, typed_config: {\"@type\": type.googleapis.com/google.protobuf.Struct}}}}}", CannotCheck),
        ("{match: {prefix: /, headers: [{name: x-shift-target, string_match: {exact: auth_service}}]}, filter_action: {action: {name: a, typed_config: {\"@type\": type.googleapis.com/google.protobuf.Struct}}}}", CannotCheck),
    ];
    let mut wrong = Vec::new();
    for (route, want) in cases {
        let got = verdict(route);
        if &got != want {
            wrong.push(format!(
                "{route}: want {want:?}, got {got:?}: {:?}",
                with_first_route(route)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A second virtual host for another site (no cluster of the
/// configuration) is not the filter's: a warning, not two errors.
#[test]
fn a_virtual_host_of_another_site_is_not_checked() {
    let json = CONFIGS[0];
    let (_, yaml) = bootstraps(json).remove(0);
    let mut b: Yaml = serde_yaml::from_str(&yaml).unwrap();
    let vh: Yaml = serde_yaml::from_str(
        "{name: admin, domains: [admin.example.com], routes: [{match: {prefix: /}, route: {cluster: admin_ui}}]}",
    )
    .unwrap();
    b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"]
        .as_sequence_mut()
        .unwrap()
        .push(vh);
    let f = lint(&b, &Config::from_json(json.as_bytes()).unwrap());
    assert_eq!(errors(&f), Vec::<&str>::new());
    assert_eq!(f.len(), 1, "{f:?}");
}

/// Route tables this check does not read: a warning each, never "no
/// route".
#[test]
fn a_matcher_tree_and_scoped_routes_cannot_be_checked() {
    let json = CONFIGS[0];
    let config = Config::from_json(json.as_bytes()).unwrap();
    let (_, yaml) = bootstraps(json).remove(0);
    let base: Yaml = serde_yaml::from_str(&yaml).unwrap();
    let mut b = base.clone();
    let vh = &mut b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0];
    vh.as_mapping_mut().unwrap().remove("routes");
    vh["matcher"] =
        serde_yaml::from_str("{matcher_tree: {input: {name: h}, exact_match_map: {map: {}}}}")
            .unwrap();
    let f = lint(&b, &config);
    assert_eq!(errors(&f), Vec::<&str>::new());
    assert_eq!(f.len(), 1, "{f:?}");
    let mut b = base;
    let hcm = &mut b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    hcm.as_mapping_mut().unwrap().remove("route_config");
    hcm["scoped_routes"] = serde_yaml::from_str("{name: s}").unwrap();
    let f = lint(&b, &config);
    assert_eq!(errors(&f), Vec::<&str>::new());
    assert_eq!(f.len(), 1, "{f:?}");
}
