//! Local outlier detection in a real Envoy: process-wide breaker state,
//! fallback, fast-fail, recovery with backoff.

use std::time::{Duration, Instant};

use integration::{send, Stack, Upstream};

/// A client that opens a new connection per request, so that requests are
/// spread over Envoy's workers (a kept-alive connection stays on one).
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn config(outlier: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 100,
              "outlier": {outlier}}}
        ]}}"#
    )
}

fn stack_upstreams(service: Upstream) -> Vec<Upstream> {
    vec![
        Upstream::start("monolith"),
        service,
        Upstream::start("orders_service"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_workers_the_service_takes_at_most_consecutive_failures_then_the_monolith_serves()
{
    let stack = Stack::start_on(
        &config(r#"{"consecutive_failures": 5, "base_ejection_ms": 60000}"#),
        2,
        stack_upstreams(Upstream::with_status("auth_service", 500)),
    )
    .await;
    let c = fresh_connections();
    let mut service_5xx = 0;
    let mut monolith_ok = 0;
    for i in 0..60 {
        let s = send(&c, "GET", &stack.envoy.url("/auth/x"), &[]).await;
        match (s.served_by.as_deref(), s.status) {
            (Some("auth_service"), 500) => service_5xx += 1,
            (Some("monolith"), 200) => monolith_ok += 1,
            other => panic!("request {i}: unexpected {other:?}"),
        }
    }
    // Not per worker: 5 in total, then every request falls back.
    assert_eq!(service_5xx, 5);
    assert_eq!(monolith_ok, 55);

    let m = stack.envoy.metrics().await;
    let workers: Vec<f64> = ["0", "1"]
        .iter()
        .map(|w| {
            m.0.iter()
                .filter(|s| {
                    s.metric == "envoy_listener_worker_downstream_cx_total"
                        && s.labels.get("envoy_worker_id") == Some(w)
                        && s.labels.get("envoy_listener_address") != Some("admin")
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) => v,
                    _ => 0.0,
                })
                .sum()
        })
        .collect();
    assert!(
        workers.iter().all(|&n| n > 0.0),
        "both workers must take connections: {workers:?}"
    );
    let r = [("route", "auth")];
    assert_eq!(m.get("traffic_shift_breaker_opened", &r), 1.0);
    assert_eq!(m.get("traffic_shift_breaker_fallback", &r), 55.0);
    assert_eq!(m.get("traffic_shift_breaker_fast_fail", &r), 0.0);
    assert_eq!(m.get("traffic_shift_breaker_state", &r), 1.0);
    // Fallbacks are counted as monolith requests, never as service outcomes.
    assert_eq!(
        m.get(
            "traffic_shift_rq_total",
            &[("route", "auth"), ("target", "monolith")]
        ),
        55.0
    );
    assert_eq!(
        m.get(
            "traffic_shift_rq_total",
            &[("route", "auth"), ("target", "service")]
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_answers_503_with_retry_after_at_once() {
    let service = Upstream::with_status("auth_service", 500);
    let stack = Stack::start_on(
        &config(r#"{"consecutive_failures": 3, "base_ejection_ms": 30000, "on_open": "reject"}"#),
        1,
        stack_upstreams(service),
    )
    .await;
    let c = integration::client();
    for _ in 0..3 {
        assert_eq!(
            send(&c, "GET", &stack.envoy.url("/auth/x"), &[])
                .await
                .status,
            500
        );
    }
    // From now on the service would take 3 s per request.
    stack.upstreams[1].set("delay-ms", 3000).await;
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let resp = c.get(stack.envoy.url("/auth/x")).send().await.unwrap();
        times.push(t.elapsed());
        assert_eq!(resp.status(), 503);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry), "retry-after {retry}");
        assert_eq!(resp.headers()["x-shift-breaker"], "open");
    }
    times.sort();
    // The issue's bound is 5 ms; we check the median against it (a single
    // request can be delayed by the machine) and every request against a
    // bound far below the service's 3 s.
    assert!(
        times[5] < Duration::from_millis(5),
        "median fast-fail took {:?}",
        times[5]
    );
    assert!(
        times[9] < Duration::from_millis(500),
        "slowest fast-fail took {:?}",
        times[9]
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_fast_fail", &[("route", "auth")]),
        10.0
    );
    // Fast-fails are not service outcomes.
    assert_eq!(
        m.get(
            "traffic_shift_rq_total",
            &[("route", "auth"), ("target", "service")]
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_opens_the_breaker_and_the_monolith_serves() {
    let mut service = Upstream::start("auth_service");
    service.stop();
    let stack = Stack::start_on(
        &config(r#"{"consecutive_failures": 3}"#),
        1,
        stack_upstreams(service),
    )
    .await;
    let c = integration::client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let s = send(&c, "GET", &stack.envoy.url("/auth/x"), &[]).await;
        statuses.push((s.status, s.served_by));
    }
    for (status, by) in &statuses[..3] {
        assert_eq!(
            (*status, by.as_deref()),
            (503, None),
            "connection refused, not yet open"
        );
    }
    for (status, by) in &statuses[3..] {
        assert_eq!((*status, by.as_deref()), (200, Some("monolith")));
    }
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_opened", &[("route", "auth")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_probe_failure_doubles_the_ejection_then_a_healed_service_gets_its_share_back() {
    let stack = Stack::start_on(
        &config(
            r#"{"consecutive_failures": 3, "base_ejection_ms": 1000, "max_ejection_ms": 10000}"#,
        ),
        1,
        stack_upstreams(Upstream::with_status("auth_service", 500)),
    )
    .await;
    let c = integration::client();
    let url = stack.envoy.url("/auth/x");
    // The breaker opens while the third failure passes through Envoy: after
    // it was sent.
    let mut opened = Instant::now();
    for _ in 0..3 {
        opened = Instant::now();
        assert_eq!(send(&c, "GET", &url, &[]).await.status, 500);
    }

    // Poll every 20 ms; the first request the service sees again is a probe.
    // Returns how long after `since` it came back, its status, and when it
    // was sent (a failed probe reopens the breaker after that).
    let next_probe = |since: Instant| {
        let c = c.clone();
        let url = url.clone();
        async move {
            loop {
                let sent = Instant::now();
                let s = send(&c, "GET", &url, &[]).await;
                if s.served_by.as_deref() == Some("auth_service") {
                    return (since.elapsed(), s.status, sent);
                }
                assert_eq!(s.served_by.as_deref(), Some("monolith"));
                assert!(since.elapsed() < Duration::from_secs(8), "no probe");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Lower bounds are exact (each instant is taken before the request that
    // opens the breaker was sent; 50 ms covers clock reads); upper bounds
    // leave 700 ms of slack.
    let (first, status, reopened) = next_probe(opened).await;
    assert_eq!(status, 500, "the first probe fails");
    assert!(
        first >= Duration::from_millis(950) && first < Duration::from_millis(1700),
        "first ejection {first:?}"
    );
    let (second, status, reopened) = next_probe(reopened).await;
    assert_eq!(status, 500);
    assert!(
        second >= Duration::from_millis(1950) && second < Duration::from_millis(2700),
        "second ejection {second:?}"
    );

    // Healed: the next probe (after 3 s) succeeds and the route is back to
    // its configured 100 %.
    stack.upstreams[1].set("status", 200).await;
    let (third, status, _) = next_probe(reopened).await;
    assert_eq!(status, 200);
    assert!(
        third >= Duration::from_millis(2950),
        "third ejection {third:?}"
    );
    for _ in 0..20 {
        let s = send(&c, "GET", &url, &[]).await;
        assert_eq!(
            (s.status, s.served_by.as_deref()),
            (200, Some("auth_service"))
        );
    }
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_opened", &[("route", "auth")]),
        3.0
    );
    assert_eq!(
        m.get("traffic_shift_breaker_state", &[("route", "auth")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolith_failures_never_open_the_service_breaker() {
    let upstreams = vec![
        Upstream::with_status("monolith", 500),
        Upstream::start("auth_service"),
        Upstream::start("orders_service"),
    ];
    let stack = Stack::start_on(
        r#"{"monolith": "monolith", "routes": [
            {"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 50,
             "outlier": {"consecutive_failures": 2}}
        ]}"#,
        1,
        upstreams,
    )
    .await;
    let c = integration::client();
    let ids = integration::random_ids(60);
    let mut monolith_500 = 0;
    for id in &ids {
        let s = send(
            &c,
            "GET",
            &stack.envoy.url("/auth/x"),
            &[("x-request-id", id)],
        )
        .await;
        let want_service = traffic_shift::hash::bucket(b"", id.as_bytes()) < 5000;
        if want_service {
            assert_eq!(
                (s.status, s.served_by.as_deref()),
                (200, Some("auth_service"))
            );
        } else {
            assert_eq!((s.status, s.served_by.as_deref()), (500, Some("monolith")));
            monolith_500 += 1;
        }
    }
    assert!(
        monolith_500 >= 2,
        "enough monolith failures to have tripped a breaker"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_opened", &[("route", "auth")]),
        0.0
    );
    assert_eq!(
        m.get("traffic_shift_breaker_state", &[("route", "auth")]),
        0.0
    );
}

/// The failure-rate trigger with two workers: each counts in its own
/// window and merges on its 1 s tick, so the rate is judged on the other
/// worker's outcomes up to one tick late. The documented bound: at most
/// `min_requests` plus R x (N - 1) / N x 1 s requests reach a failing
/// service (R = 50 requests/s here, N = 2 workers: 20 + 25), against exactly
/// `min_requests` with a strictly shared window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_rate_with_two_workers_opens_within_one_tick_of_the_merged_window() {
    let stack = Stack::start_on(
        &config(
            r#"{"consecutive_failures": 0, "base_ejection_ms": 60000,
                "failure_rate": {"threshold_percent": 50, "min_requests": 20, "window_ms": 10000}}"#,
        ),
        2,
        stack_upstreams(Upstream::with_status("auth_service", 500)),
    )
    .await;
    let c = fresh_connections();
    let mut service_5xx = 0;
    let mut monolith_ok = 0;
    let start = Instant::now();
    for i in 0..150u32 {
        // 50 requests/s.
        let due = start + Duration::from_millis(20 * u64::from(i));
        tokio::time::sleep_until(due.into()).await;
        let s = send(&c, "GET", &stack.envoy.url("/auth/x"), &[]).await;
        match (s.served_by.as_deref(), s.status) {
            (Some("auth_service"), 500) => service_5xx += 1,
            (Some("monolith"), 200) => monolith_ok += 1,
            other => panic!("request {i}: unexpected {other:?}"),
        }
    }
    eprintln!("failure rate, 2 workers: {service_5xx} requests reached the failing service");
    // A tick is 1 s per VM; the bound gets 5 requests (0.1 s) of slack for
    // tick jitter on a loaded machine.
    assert!(
        (20..=20 + 25 + 5).contains(&service_5xx),
        "{service_5xx} requests reached the failing service"
    );
    assert_eq!(service_5xx + monolith_ok, 150);
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_opened", &[("route", "auth")]),
        1.0
    );
}

/// Issue 20, item 1: once the ejection multiplier reset, the breaker was
/// stored as the empty value, which forgot when it closed, so the next
/// tick counted the failures that had opened it (still in the window) and
/// opened it again, and again, until they left the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_breaker_does_not_reopen_on_the_failures_that_opened_it() {
    let stack = Stack::start_on(
        &config(
            r#"{"consecutive_failures": 0, "base_ejection_ms": 1000,
                "failure_rate": {"threshold_percent": 50, "min_requests": 10, "window_ms": 10000}}"#,
        ),
        2,
        stack_upstreams(Upstream::with_status("auth_service", 500)),
    )
    .await;
    let c = fresh_connections();
    let url = stack.envoy.url("/auth/x");
    let mut failures = 0;
    while failures < 30 {
        let s = send(&c, "GET", &url, &[]).await;
        if s.served_by.as_deref() == Some("monolith") {
            break;
        }
        failures += 1;
    }
    assert!(failures < 30, "the failure rate opens it");
    stack.upstreams[1].set("status", 200).await;
    // After the 1 s ejection the next request is the probe; it succeeds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = send(&c, "GET", &url, &[]).await;
        if s.served_by.as_deref() == Some("auth_service") {
            assert_eq!(s.status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "no probe within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closed: 4 s of requests (the multiplier resets after 1 s closed, the
    // tick runs every second) all reach the service.
    let start = Instant::now();
    let mut to_monolith = 0;
    while start.elapsed() < Duration::from_secs(4) {
        let s = send(&c, "GET", &url, &[]).await;
        if s.served_by.as_deref() != Some("auth_service") {
            to_monolith += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(to_monolith, 0);
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get("traffic_shift_breaker_opened", &[("route", "auth")]),
        1.0
    );
}
