//! Stats per route and target, read back from a live Envoy's
//! `/stats/prometheus` with labels parsed.

use integration::{client, random_ids, send, served_by_keys, Stack, Upstream};
use traffic_shift::hash::bucket;

const CONFIG: &str = r#"{"monolith": "monolith", "routes": [
    {"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 33.33},
    {"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 100,
     "hash_key": {"header": "x-user-id"}}
]}"#;

fn rt(route: &'static str, target: &'static str) -> [(&'static str, &'static str); 2] {
    [("route", route), ("target", target)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_per_route_and_target_and_histogram_samples_match() {
    let stack = Stack::start(CONFIG).await;
    let c = client();
    let ids = random_ids(1_000);
    let served = served_by_keys(&c, &stack.envoy.url("/auth/x"), "x-request-id", &ids, 8).await;
    let to_service = ids
        .iter()
        .filter(|id| bucket(b"", id.as_bytes()) < 3333)
        .count();
    assert_eq!(
        served.iter().filter(|s| *s == "auth_service").count(),
        to_service
    );
    // orders: 7 with a key (all to the service at 100%), 3 without.
    for u in 0..7 {
        send(
            &c,
            "GET",
            &stack.envoy.url("/orders/1"),
            &[("x-user-id", &u.to_string())],
        )
        .await;
    }
    for _ in 0..3 {
        send(&c, "GET", &stack.envoy.url("/orders/1"), &[]).await;
    }
    for p in ["/", "/other", "/auth"] {
        send(&c, "GET", &stack.envoy.url(p), &[]).await;
    }

    let expect = [
        ("auth", "service", to_service),
        ("auth", "monolith", 1_000 - to_service),
        ("orders", "service", 7),
        ("orders", "monolith", 3),
    ];
    // Histograms appear at Envoy's stats flush, the wasm build's counters
    // on its tick: wait until both carry every request.
    let m = stack
        .envoy
        .metrics_when(|m| {
            m.value("traffic_shift_unmatched", &[]) == Some(3.0)
                && expect.iter().all(|&(route, target, n)| {
                    let l = rt(route, target);
                    m.value("traffic_shift_upstream_rq_time_count", &l) == Some(n as f64)
                        && m.value("traffic_shift_rq_total", &l) == Some(n as f64)
                })
        })
        .await;
    for (route, target, n) in expect {
        let n = n as f64;
        let l = rt(route, target);
        assert_eq!(
            m.get("traffic_shift_rq_total", &l),
            n,
            "{route}/{target} rq_total"
        );
        let class = |c: &'static str| [l[0], l[1], ("response_code_class", c)];
        assert_eq!(
            m.get("traffic_shift_rq_xx", &class("2")),
            n,
            "{route}/{target} 2xx"
        );
        for c in ["1", "3", "4", "5"] {
            assert_eq!(
                m.get("traffic_shift_rq_xx", &class(c)),
                0.0,
                "{route}/{target} {c}xx"
            );
        }
        // Every request recorded one response time sample.
        assert_eq!(
            m.get("traffic_shift_upstream_rq_time_count", &l),
            n,
            "{route}/{target} histogram"
        );
        for origin in ["app", "proxy"] {
            let f = [l[0], l[1], ("origin", origin)];
            assert_eq!(m.get("traffic_shift_upstream_failure", &f), 0.0);
        }
    }
    assert_eq!(
        m.get("traffic_shift_key_missing", &[("route", "orders")]),
        3.0
    );
    assert_eq!(
        m.get("traffic_shift_key_missing", &[("route", "auth")]),
        0.0
    );
    assert_eq!(m.get("traffic_shift_unmatched", &[]), 3.0);
    // The gauge is the configured percent in basis points.
    assert_eq!(
        m.get("traffic_shift_effective_percent_bp", &[("route", "auth")]),
        3333.0
    );
    assert_eq!(
        m.get("traffic_shift_effective_percent_bp", &[("route", "orders")]),
        10000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_classes_and_application_failures() {
    // auth_service answers 404, orders_service 500; both routes at 100%.
    let upstreams = vec![
        Upstream::start("monolith"),
        Upstream::with_status("auth_service", 404),
        Upstream::with_status("orders_service", 500),
    ];
    let stack = Stack::start_on(
        r#"{"monolith": "monolith", "routes": [
            {"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 100},
            {"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 100}
        ]}"#,
        1,
        upstreams,
    )
    .await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            send(&c, "GET", &stack.envoy.url("/auth/x"), &[])
                .await
                .status,
            404
        );
    }
    for _ in 0..4 {
        assert_eq!(
            send(&c, "GET", &stack.envoy.url("/orders/x"), &[])
                .await
                .status,
            500
        );
    }
    let m = stack.envoy.metrics().await;
    let class = |route, c| {
        [
            ("route", route),
            ("target", "service"),
            ("response_code_class", c),
        ]
    };
    assert_eq!(m.get("traffic_shift_rq_xx", &class("auth", "4")), 5.0);
    assert_eq!(m.get("traffic_shift_rq_xx", &class("auth", "5")), 0.0);
    assert_eq!(m.get("traffic_shift_rq_xx", &class("orders", "5")), 4.0);
    let failure = |route, origin| [("route", route), ("target", "service"), ("origin", origin)];
    // 4xx are not failures; a 500 the upstream sent is an application failure.
    assert_eq!(
        m.get("traffic_shift_upstream_failure", &failure("auth", "app")),
        0.0
    );
    assert_eq!(
        m.get("traffic_shift_upstream_failure", &failure("orders", "app")),
        4.0
    );
    assert_eq!(
        m.get(
            "traffic_shift_upstream_failure",
            &failure("orders", "proxy")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_refuses_connections_counts_as_a_proxy_failure() {
    let mut service = Upstream::start("auth_service");
    service.stop(); // its port now refuses connections
    let upstreams = vec![
        Upstream::start("monolith"),
        service,
        Upstream::start("orders_service"),
    ];
    let stack = Stack::start_on(
        r#"{"monolith": "monolith", "routes": [
            {"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 100}
        ]}"#,
        1,
        upstreams,
    )
    .await;
    let c = client();
    for _ in 0..6 {
        let s = send(&c, "GET", &stack.envoy.url("/auth/x"), &[]).await;
        assert_eq!(s.status, 503);
        assert_eq!(s.served_by, None);
    }
    let m = stack.envoy.metrics().await;
    let l = [("route", "auth"), ("target", "service")];
    assert_eq!(m.get("traffic_shift_rq_total", &l), 6.0);
    assert_eq!(
        m.get(
            "traffic_shift_rq_xx",
            &[l[0], l[1], ("response_code_class", "5")]
        ),
        6.0
    );
    assert_eq!(
        m.get(
            "traffic_shift_upstream_failure",
            &[l[0], l[1], ("origin", "proxy")]
        ),
        6.0
    );
    assert_eq!(
        m.get(
            "traffic_shift_upstream_failure",
            &[l[0], l[1], ("origin", "app")]
        ),
        0.0
    );
}

/// Every `traffic_shift_*` series a PromQL expression selects, with the
/// label names of its selector.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("traffic_shift_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        if tail[end..].starts_with('{') {
            let close = tail[end..].find('}').expect("unclosed selector") + end;
            for matcher in tail[end + 1..close].split(',') {
                let key: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                labels.push(key);
            }
        }
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served_by_envoy() {
    let path = integration::repo_root().join("envoy/grafana/dashboards/traffic-shift.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 8, "dashboard has {} queries", all.len());
    let wanted: Vec<(String, Vec<String>)> = all.iter().flat_map(|e| selectors(e)).collect();
    assert!(wanted
        .iter()
        .any(|(n, _)| n == "traffic_shift_upstream_rq_time_bucket"));

    // The shipped demo config (with a guard on the orders route, for the
    // guard panel, shadow on the auth route, for the shadow panel, and
    // grpc on the orders route, for the gRPC panel), with traffic on a
    // route and off all routes.
    let mut config: serde_json::Value =
        serde_json::from_str(&integration::Bootstrap::shipped().plugin_config()).unwrap();
    config["routes"][1]["guard"] = serde_json::json!({});
    config["routes"][1]["grpc"] = serde_json::json!({});
    // JSON compare: the demo upstreams echo the request headers, and the
    // shadow's carry x-shift-shadow: a differing field for the field panel.
    config["routes"][0]["shadow"] = serde_json::json!({"percent": 100, "compare_body": "json"});
    let stack = Stack::start(&config.to_string()).await;
    let c = client();
    for p in ["/api/auth/login", "/api/orders/1", "/elsewhere"] {
        for _ in 0..20 {
            send(&c, "GET", &stack.envoy.url(p), &[]).await;
        }
    }
    let m = stack
        .envoy
        .metrics_when(|m| {
            m.names().contains("traffic_shift_upstream_rq_time_bucket")
                && m.names().contains("traffic_shift_shadow_field")
        })
        .await;
    let names = m.names();
    for (name, labels) in &wanted {
        assert!(
            names.contains(name),
            "dashboard queries {name}, Envoy does not serve it"
        );
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        for label in labels {
            let has =
                m.0.iter()
                    .any(|s| s.metric == base && s.labels.get(label).is_some());
            assert!(
                has,
                "dashboard selects {name} by label {label}, which Envoy does not set"
            );
        }
    }
}
