//! The guard in a real Envoy with two workers: a route whose service does
//! worse than the monolith is rolled back within the window plus two ticks,
//! stays rolled back across unrelated updates and comes back when its
//! `epoch` is bumped.

use std::time::{Duration, Instant};

use integration::{client, random_ids, EcdsFile, Metrics, Stack, Upstream};

fn config(guard: &str, other_percent: u32) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 50,
              "guard": {guard}}},
            {{"name": "orders", "prefix": "/orders/", "service": "orders_service",
              "percent": {other_percent}}}
        ]}}"#
    )
}

async fn start(json: &str) -> (Stack, EcdsFile) {
    let ecds = EcdsFile::new("v1", json);
    let upstreams = ["monolith", "auth_service", "orders_service"]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    (
        Stack::start_bootstrap(ecds.bootstrap(), 2, upstreams).await,
        ecds,
    )
}

/// `n` requests with fresh ids to `/auth/x`, 8 at a time, whatever their
/// status; how many the service served.
async fn traffic(stack: &Stack, n: usize) -> usize {
    let c = client();
    let url = stack.envoy.url("/auth/x");
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in random_ids(n).chunks(n.div_ceil(8).max(1)) {
        let (c, url, ids) = (c.clone(), url.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut service = 0;
            for id in ids {
                let resp = c
                    .get(&url)
                    .header("x-request-id", id)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                if resp.headers().get("x-served-by").map(|v| v.as_bytes()) == Some(b"auth_service")
                {
                    service += 1;
                }
            }
            service
        });
    }
    let mut service = 0;
    while let Some(r) = tasks.join_next().await {
        service += r.unwrap_or_else(|e| panic!("{e}"));
    }
    service
}

fn auth(m: &Metrics, name: &str) -> f64 {
    m.get(name, &[("route", "auth")])
}

fn trips(m: &Metrics, reason: &str) -> f64 {
    m.get(
        "traffic_shift_guard_trips",
        &[("route", "auth"), ("reason", reason)],
    )
}

/// Sends traffic until the guard trips or `limit` passes; the time it took.
async fn until_tripped(stack: &Stack, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        traffic(stack, 100).await;
        let m = stack.envoy.metrics_now().await;
        if auth(&m, "traffic_shift_guard_tripped") == 1.0 {
            return Some(start.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_failing_ten_percent_is_rolled_back_and_stays_until_the_epoch_changes() {
    let guard = r#"{"window_s": 10, "min_requests": 50}"#;
    let (stack, ecds) = start(&config(guard, 10)).await;
    stack.upstreams[1].set("fail-every", 10).await;

    // Within the window plus two ticks of the first failures.
    let took = until_tripped(&stack, Duration::from_secs(12))
        .await
        .expect("the guard did not trip");
    eprintln!("guard tripped after {took:?} of traffic");
    let m = stack.envoy.metrics().await;
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 1.0);
    assert_eq!(trips(&m, "errors"), 1.0);
    assert_eq!(trips(&m, "latency"), 0.0);
    assert_eq!(auth(&m, "traffic_shift_effective_percent_bp"), 0.0);
    // Every worker has it: nothing reaches the service any more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(traffic(&stack, 200).await, 0);

    // An update of another route keeps the trip.
    ecds.apply(&stack.envoy, "v2", &config(guard, 20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(traffic(&stack, 200).await, 0);
    let m = stack.envoy.metrics().await;
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 1.0);

    // Bumping the epoch clears it.
    stack.upstreams[1].set("fail-every", 0).await;
    ecds.apply(
        &stack.envoy,
        "v3",
        &config(r#"{"window_s": 10, "min_requests": 50, "epoch": 1}"#, 20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let to_service = traffic(&stack, 200).await;
    // 50 % of 200 fresh ids; 4 standard deviations of a binomial(200, 0.5)
    // is about 28.
    assert!(
        (100 - 28..=100 + 28).contains(&to_service),
        "{to_service} of 200 reached the service"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 0.0);
    assert_eq!(auth(&m, "traffic_shift_effective_percent_bp"), 5000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_failing_alike_do_not_trip() {
    let (stack, _ecds) = start(&config(r#"{"window_s": 10, "min_requests": 50}"#, 10)).await;
    stack.upstreams[0].set("fail-every", 10).await;
    stack.upstreams[1].set("fail-every", 10).await;
    assert_eq!(until_tripped(&stack, Duration::from_secs(6)).await, None);
    let m = stack.envoy.metrics().await;
    assert_eq!(trips(&m, "errors"), 0.0);
    // The service did fail, as often as the monolith.
    let errors_5xx = |target| {
        m.get(
            "traffic_shift_rq_xx",
            &[
                ("route", "auth"),
                ("target", target),
                ("response_code_class", "5"),
            ],
        )
    };
    assert!(errors_5xx("service") >= 20.0 && errors_5xx("monolith") >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_three_times_slower_trips_on_latency() {
    let (stack, _ecds) = start(&config(
        r#"{"window_s": 10, "min_requests": 20, "max_latency_ratio": 2}"#,
        10,
    ))
    .await;
    stack.upstreams[0].set("delay-ms", 20).await;
    stack.upstreams[1].set("delay-ms", 60).await;
    assert!(until_tripped(&stack, Duration::from_secs(12))
        .await
        .is_some());
    let m = stack.envoy.metrics().await;
    assert_eq!(trips(&m, "latency"), 1.0);
    assert_eq!(trips(&m, "errors"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_requests_or_two_errors_in_fifty_do_not_trip() {
    // Every service request fails, but fewer than min_requests complete
    // on the service side in the window.
    let (stack, _ecds) = start(&config(r#"{"window_s": 30, "min_requests": 100}"#, 10)).await;
    stack.upstreams[1].set("status", 500).await;
    traffic(&stack, 120).await; // about 60 to each side
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = stack.envoy.metrics().await;
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 0.0);
    drop(stack);

    // 2 errors in about 50 service requests against a 2 % threshold.
    let (stack, _ecds) = start(&config(r#"{"window_s": 30, "min_requests": 40}"#, 10)).await;
    stack.upstreams[1].set("fail-every", 25).await;
    traffic(&stack, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = stack.envoy.metrics().await;
    let service = m.get(
        "traffic_shift_rq_total",
        &[("route", "auth"), ("target", "service")],
    );
    let errors = m.get(
        "traffic_shift_rq_xx",
        &[
            ("route", "auth"),
            ("target", "service"),
            ("response_code_class", "5"),
        ],
    );
    eprintln!("{errors} errors in {service} service requests");
    assert!(errors <= 2.0 && service >= 40.0);
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 0.0);
}
