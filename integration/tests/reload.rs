//! The breaker and the gauges across configuration updates (file ECDS, two
//! workers): a breaker keeps its state when only its settings change, and
//! the gauges of a removed route or breaker read 0 instead of their last
//! value.

use std::time::Duration;

use integration::{send, EcdsFile, Stack, Upstream};

fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Sends `n` requests to `/auth/x`; how many the service answered.
async fn to_service(stack: &Stack, n: usize) -> usize {
    let c = fresh_connections();
    let mut service = 0;
    for _ in 0..n {
        let s = send(&c, "GET", &stack.envoy.url("/auth/x"), &[]).await;
        match s.served_by.as_deref() {
            Some("auth_service") => service += 1,
            Some("monolith") => {}
            other => panic!("unexpected answer {} from {other:?}", s.status),
        }
    }
    service
}

fn auth(outlier: &str) -> String {
    format!(
        r#"{{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 100{outlier}}}"#
    )
}

fn config(routes: &[String]) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [{}]}}"#,
        routes.join(", ")
    )
}

async fn failing_service_stack(first: &str) -> (Stack, EcdsFile) {
    let ecds = EcdsFile::new("v1", first);
    let stack = Stack::start_bootstrap(
        ecds.bootstrap(),
        2,
        vec![
            Upstream::start("monolith"),
            Upstream::with_status("auth_service", 500),
            Upstream::start("orders_service"),
        ],
    )
    .await;
    (stack, ecds)
}

/// Issue 15, defect 6: changing an outlier setting during an incident used
/// to give the breaker a new key, sending traffic straight back to the
/// failing service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stays_open_when_its_settings_change() {
    let (stack, ecds) = failing_service_stack(&config(&[auth(
        r#", "outlier": {"consecutive_failures": 3, "base_ejection_ms": 60000}"#,
    )]))
    .await;
    assert_eq!(to_service(&stack, 20).await, 3, "3 failures open it");

    ecds.apply(&stack.envoy,
        "v2",
        &config(&[auth(
            r#", "outlier": {"consecutive_failures": 4, "base_ejection_ms": 90000, "half_open_probes": 2}"#,
        )]),
    )
    .await;
    assert_eq!(
        to_service(&stack, 20).await,
        0,
        "the breaker of (auth, auth_service) is still open"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_state", &[("route", "auth")]),
        1.0
    );
    assert_eq!(
        m.get("traffic_shift_breaker_opened", &[("route", "auth")]),
        1.0
    );
}

/// Issue 15, defect 6: a removed route, or a route whose breaker was
/// removed, kept its last gauge values, so a "breaker open" alert could fire
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_of_removed_routes_and_breakers_read_zero() {
    let orders =
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50}"#;
    let (stack, ecds) = failing_service_stack(&config(&[
        auth(r#", "outlier": {"consecutive_failures": 3, "base_ejection_ms": 60000}"#),
        orders.to_string(),
    ]))
    .await;
    assert_eq!(to_service(&stack, 10).await, 3);
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_state", &[("route", "auth")]),
        1.0
    );
    assert_eq!(
        m.get("traffic_shift_effective_percent_bp", &[("route", "orders")]),
        5000.0
    );

    // The breaker and the orders route go.
    ecds.apply(&stack.envoy, "v2", &config(&[auth("")])).await;
    // Old root contexts may tick a little longer: give them two ticks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_state", &[("route", "auth")]),
        0.0
    );
    assert_eq!(
        m.get("traffic_shift_effective_percent_bp", &[("route", "orders")]),
        0.0
    );
    assert_eq!(
        m.get("traffic_shift_effective_percent_bp", &[("route", "auth")]),
        10000.0
    );
    // Without its breaker the route sends everything to the service again.
    assert_eq!(to_service(&stack, 5).await, 5);
}
