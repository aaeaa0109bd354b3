//! Two HTTP filters with the same plugin name (`traffic_shift`) and the
//! same vm_id in one Envoy, each on its own listener with its own plugin
//! configuration: one VM per worker holds both, each with its own root
//! context. Each filter must keep its own breakers, tick, and gauges.

use std::net::SocketAddr;

use integration::{send, Bootstrap, Stack, Upstream};
use serde_yaml::Value as Yaml;

/// The shipped bootstrap with a second listener `ingress_b`, a copy of the
/// first; listener `ingress` runs `a`, `ingress_b` runs `b`.
fn two_listeners(a: &str, b: &str) -> Bootstrap {
    let mut boot = Bootstrap::shipped().for_test();
    let listeners = boot.0["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap();
    let mut second = listeners[0].clone();
    second["name"] = Yaml::from("ingress_b");
    listeners.push(second);
    for (i, json) in [a, b].into_iter().enumerate() {
        let hfs = listeners[i]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_sequence_mut()
            .unwrap();
        let tc = &mut hfs[0]["typed_config"]["config"];
        assert_eq!(tc["name"].as_str(), Some("traffic_shift"));
        tc["configuration"]["value"] = Yaml::from(json);
    }
    boot
}

/// The address Envoy bound for listener `name`.
async fn listener(stack: &Stack, name: &str) -> SocketAddr {
    let text = stack.envoy.admin_get("/listeners?format=json").await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let l = v["listener_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}: {text}"));
    let sa = &l["local_address"]["socket_address"];
    format!(
        "{}:{}",
        sa["address"].as_str().unwrap(),
        sa["port_value"].as_u64().unwrap()
    )
    .parse()
    .unwrap()
}

fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Requests to `http://addr<path>`; how many the service answered.
async fn to_service(addr: SocketAddr, path: &str, n: usize) -> usize {
    let c = fresh_connections();
    let mut service = 0;
    for _ in 0..n {
        let s = send(&c, "GET", &format!("http://{addr}{path}"), &[]).await;
        match s.served_by.as_deref() {
            Some("auth_service") => service += 1,
            Some("monolith") => {}
            other => panic!("unexpected answer {} from {other:?}", s.status),
        }
    }
    service
}

/// Route `auth` on `prefix` to auth_service at 100 %, breaker after 3
/// failures.
fn auth(prefix: &str, extra: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [{{"name": "auth", "prefix": "{prefix}", "service": "auth_service", "percent": 100, "outlier": {{"consecutive_failures": 3, "base_ejection_ms": 60000}}{extra}}}]}}"#
    )
}

async fn failing_auth(a: &str, b: &str) -> Stack {
    Stack::start_bootstrap(
        two_listeners(a, b),
        2,
        vec![
            Upstream::start("monolith"),
            Upstream::with_status("auth_service", 500),
            Upstream::start("orders_service"),
        ],
    )
    .await
}

/// Issue 20, item 5: the breaker key was `traffic_shift.breaker.<route>.<hash
/// of route and service>`, the same in both filters, so failures seen by
/// one filter opened the other's breaker. Now the key also holds the
/// filter (plugin name, root_id, monolith, target header) and the route's
/// path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_filters_with_one_plugin_name_keep_their_own_breakers() {
    let stack = failing_auth(&auth("/auth/", ""), &auth("/login/", "")).await;
    let a = listener(&stack, "ingress").await;
    let b = listener(&stack, "ingress_b").await;
    assert_eq!(
        to_service(a, "/auth/x", 10).await,
        3,
        "3 failures open a's breaker"
    );
    assert_eq!(
        to_service(b, "/login/x", 10).await,
        3,
        "b's breaker is its own: it opens after its own 3 failures"
    );
    assert_eq!(
        to_service(a, "/auth/x", 5).await,
        0,
        "a's breaker is still open"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(m.get("traffic_shift_breaker_keys", &[]), 2.0);
}

/// By design: two filters sending the same requests (same route, path,
/// service, monolith and target header) to the same Envoy cluster share
/// its breaker, whatever their percent or salt (here the salt differs, so
/// each filter has a configuration of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_filters_sending_the_same_requests_share_the_breaker() {
    let stack = failing_auth(
        &auth("/auth/", r#", "salt": "a""#),
        &auth("/auth/", r#", "salt": "b""#),
    )
    .await;
    let a = listener(&stack, "ingress").await;
    let b = listener(&stack, "ingress_b").await;
    assert_eq!(to_service(a, "/auth/x", 10).await, 3);
    assert_eq!(to_service(b, "/auth/x", 10).await, 0);
}

/// Issue 20, item 5: the configuration in force was kept per plugin name,
/// so the filter configured last zeroed the other's gauges (and released
/// its guard keys), and only it ticked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_filters_with_one_plugin_name_keep_their_own_gauges() {
    let a = r#"{"monolith": "monolith", "routes": [{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 100}]}"#;
    let b = r#"{"monolith": "monolith", "routes": [{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50}]}"#;
    let stack = Stack::start_bootstrap(
        two_listeners(a, b),
        2,
        vec![
            Upstream::start("monolith"),
            Upstream::start("auth_service"),
            Upstream::start("orders_service"),
        ],
    )
    .await;
    let m = stack.envoy.metrics().await;
    assert_eq!(
        (
            m.get("traffic_shift_effective_percent_bp", &[("route", "auth")]),
            m.get("traffic_shift_effective_percent_bp", &[("route", "orders")]),
        ),
        (10000.0, 5000.0)
    );
}
