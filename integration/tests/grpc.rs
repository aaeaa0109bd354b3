//! gRPC through a real Envoy to real tonic servers (`grpc-upstream`) over
//! HTTP/2 clusters: the outcome is the `grpc-status` (trailers-only
//! responses and trailers), the breaker opens on UNAVAILABLE and not on a
//! code outside the failure set, the guard trips on a gRPC error rate,
//! stats by code are exact.

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use integration::{Bootstrap, Metrics, Stack, Upstream};
use tonic::transport::Channel;
use tonic::Code;

/// One route `orders` for both services (unary
/// `/envoy.service.ratelimit.v3.RateLimitService/`, streaming
/// `/envoy.service.discovery.v3.AggregatedDiscoveryService/`), to
/// `orders_service`.
fn config(percent: u32, extra: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "orders", "prefix": "/envoy.service.", "service": "orders_service",
              "percent": {percent} {extra}}}
        ]}}"#
    )
}

/// Envoy (one worker) in front of gRPC upstreams `monolith` and
/// `orders_service` (HTTP/2 clusters); `auth_service` is an idle HTTP one.
async fn start(json: &str, monolith: &[&str], service: &[&str]) -> Stack {
    let bootstrap = Bootstrap::shipped()
        .for_test()
        .with_plugin_config(json)
        .with_http2("monolith")
        .with_http2("orders_service");
    let upstreams = vec![
        Upstream::grpc("monolith", monolith),
        Upstream::start("auth_service"),
        Upstream::grpc("orders_service", service),
    ];
    Stack::start_bootstrap(bootstrap, 1, upstreams).await
}

async fn channel(stack: &Stack) -> Channel {
    Channel::from_shared(format!("http://{}", stack.envoy.listener))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to Envoy: {e}"))
}

/// One unary RPC: who answered (the message's `raw_body`), or the code.
async fn unary(c: &mut RateLimitServiceClient<Channel>) -> Result<String, Code> {
    match c.should_rate_limit(RateLimitRequest::default()).await {
        Ok(r) => Ok(String::from_utf8_lossy(&r.into_inner().raw_body).into_owned()),
        Err(s) => Err(s.code()),
    }
}

/// One streaming RPC: who sent the message, and the stream's final code.
async fn streaming(c: &mut AggregatedDiscoveryServiceClient<Channel>) -> (String, Code) {
    let req = tokio_stream::iter(vec![DiscoveryRequest::default()]);
    let mut stream = match c.stream_aggregated_resources(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (String::new(), s.code()),
    };
    let mut from = String::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => from = m.version_info,
            Ok(None) => return (from, Code::Ok),
            Err(s) => return (from, s.code()),
        }
    }
}

fn orders(m: &Metrics, name: &str) -> f64 {
    m.get(name, &[("route", "orders")])
}

fn code(m: &Metrics, target: &str, status: &str) -> f64 {
    m.get(
        "traffic_shift_grpc_rq",
        &[
            ("route", "orders"),
            ("target", target),
            ("grpc_status", status),
        ],
    )
}

const OUTLIER: &str = r#", "outlier": {"consecutive_failures": 5, "base_ejection_ms": 60000,
                          "on_open": "fallback"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_opens_the_breaker_after_consecutive_failures_and_falls_back() {
    let stack = start(&config(100, OUTLIER), &[], &["--code", "14"]).await;
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(unary(&mut c).await);
    }
    // Trailers-only UNAVAILABLE from the service 5 times, then the monolith.
    let failed = answers
        .iter()
        .filter(|a| **a == Err(Code::Unavailable))
        .count();
    let monolith = answers
        .iter()
        .filter(|a| a.as_deref() == Ok("monolith"))
        .count();
    assert_eq!((failed, monolith), (5, 25), "{answers:?}");
    assert!(answers[..5].iter().all(|a| *a == Err(Code::Unavailable)));
    let m = stack.envoy.metrics().await;
    assert_eq!(orders(&m, "traffic_shift_breaker_opened"), 1.0);
    assert_eq!(orders(&m, "traffic_shift_breaker_fallback"), 25.0);
    let service = [("route", "orders"), ("target", "service")];
    assert_eq!(
        m.get(
            "traffic_shift_upstream_failure",
            &[service[0], service[1], ("origin", "app")]
        ),
        5.0
    );
    // Every RPC is an HTTP 200.
    assert_eq!(
        m.get(
            "traffic_shift_rq_xx",
            &[service[0], service[1], ("response_code_class", "2")]
        ),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_counts_at_its_trailers() {
    let stack = start(&config(100, OUTLIER), &[], &["--code", "14"]).await;
    let mut c = AggregatedDiscoveryServiceClient::new(channel(&stack).await);
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(streaming(&mut c).await);
    }
    // A message, then UNAVAILABLE in the trailers: 5 streams, then the
    // monolith's (message, OK).
    let expected: Vec<(String, Code)> = (0..8)
        .map(|i| {
            if i < 5 {
                ("orders_service".to_string(), Code::Unavailable)
            } else {
                ("monolith".to_string(), Code::Ok)
            }
        })
        .collect();
    assert_eq!(answers, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_outside_the_failure_set_does_not_count() {
    // NOT_FOUND (5) is not in the default set.
    let stack = start(&config(100, OUTLIER), &[], &["--code", "5"]).await;
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    for i in 0..30 {
        assert_eq!(unary(&mut c).await, Err(Code::NotFound), "RPC {i}");
    }
    let m = stack.envoy.metrics().await;
    assert_eq!(orders(&m, "traffic_shift_breaker_opened"), 0.0);
    assert_eq!(orders(&m, "traffic_shift_breaker_fallback"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_by_grpc_status_are_exact() {
    let stack = start(
        &config(100, r#", "grpc": {}"#),
        &[],
        &["--code", "14", "--fail-percent", "30"],
    )
    .await;
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    let mut s = AggregatedDiscoveryServiceClient::new(channel(&stack).await);
    // 20 unary + 10 streams share the upstream's count: 30 % of 30 fail.
    for _ in 0..20 {
        let _ = unary(&mut c).await;
    }
    for _ in 0..10 {
        let _ = streaming(&mut s).await;
    }
    let m = stack.envoy.metrics().await;
    assert_eq!(code(&m, "service", "OK"), 21.0);
    assert_eq!(code(&m, "service", "UNAVAILABLE"), 9.0);
    assert_eq!(code(&m, "service", "other"), 0.0);
    assert_eq!(code(&m, "monolith", "OK"), 0.0);
    let series =
        m.0.iter()
            .filter(|x| x.metric == "traffic_shift_grpc_rq")
            .count();
    assert_eq!(series, 36, "17 codes + other, per target");
}

/// `n` unary RPCs, 8 at a time, on fresh x-request-ids (Envoy makes
/// them); how many the service answered or failed.
async fn traffic(stack: &Stack, n: usize) {
    let ch = channel(stack).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = RateLimitServiceClient::new(ch.clone());
        tasks.spawn(async move {
            for _ in 0..n / 8 {
                let _ = unary(&mut c).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

const GUARD: &str = r#", "guard": {"window_s": 30, "min_requests": 50}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_trips_on_a_grpc_error_rate_against_a_healthy_monolith() {
    // Service 60 % UNAVAILABLE, monolith 0 %: far apart whatever the test.
    let stack = start(
        &config(50, GUARD),
        &[],
        &["--code", "14", "--fail-percent", "60"],
    )
    .await;
    let mut tripped = false;
    for _ in 0..10 {
        traffic(&stack, 200).await;
        let m = stack.envoy.metrics().await;
        if orders(&m, "traffic_shift_guard_tripped") == 1.0 {
            tripped = true;
            break;
        }
    }
    assert!(tripped, "the guard did not trip within 2,000 RPCs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_does_not_trip_when_both_sides_are_healthy() {
    let stack = start(&config(50, GUARD), &[], &[]).await;
    traffic(&stack, 1000).await;
    let m = stack.envoy.metrics().await;
    assert_eq!(orders(&m, "traffic_shift_guard_tripped"), 0.0);
    // Both sides served.
    let ok = |t: &str| {
        m.get(
            "traffic_shift_rq_xx",
            &[
                ("route", "orders"),
                ("target", t),
                ("response_code_class", "2"),
            ],
        )
    };
    assert!(ok("service") > 300.0 && ok("monolith") > 300.0);
}

fn shadow(m: &Metrics, result: &str) -> f64 {
    m.get(
        "traffic_shift_shadow",
        &[("route", "orders"), ("result", result)],
    )
}

/// Scrapes until route `orders` has `n` shadow results, 10 s at most,
/// poking the worker between scrapes (the module compares an answer on
/// the worker's next hook).
async fn shadows_settled(stack: &Stack, n: f64) -> Metrics {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut m = stack.envoy.metrics().await;
    loop {
        let total: f64 = ["match", "header", "body", "error", "skipped", "timeout"]
            .iter()
            .map(|r| {
                m.value(
                    "traffic_shift_shadow",
                    &[("route", "orders"), ("result", r)],
                )
                .unwrap_or(0.0)
            })
            .sum();
        if total >= n || std::time::Instant::now() > deadline {
            return m;
        }
        stack.envoy.poke().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = stack.envoy.metrics_now().await;
    }
}

const SHADOW: &str =
    r#", "grpc": {}, "shadow": {"percent": 100, "methods": ["POST"], "compare_body": true}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_shadow_matches_equal_answers_and_not_another_grpc_status() {
    // The monolith answers; the service is the shadow. Same message bytes.
    let same = ["--message", "same"];
    let stack = start(&config(0, SHADOW), &same, &same).await;
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    for _ in 0..10 {
        assert_eq!(unary(&mut c).await.as_deref(), Ok("same"));
    }
    let m = shadows_settled(&stack, 10.0).await;
    assert_eq!(shadow(&m, "match"), 10.0);
    assert_eq!(
        shadow(&m, "header") + shadow(&m, "body") + shadow(&m, "skipped"),
        0.0
    );
    drop(stack);

    // The shadow fails with UNAVAILABLE (trailers-only): a mismatch each time.
    let stack = start(
        &config(0, SHADOW),
        &same,
        &["--message", "same", "--code", "14"],
    )
    .await;
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    for _ in 0..10 {
        assert_eq!(unary(&mut c).await.as_deref(), Ok("same"));
    }
    let m = shadows_settled(&stack, 10.0).await;
    assert_eq!(shadow(&m, "header"), 10.0);
    assert_eq!(shadow(&m, "match"), 0.0);
    drop(stack);

    // Other message bytes, same status: `body`.
    let stack = start(&config(0, SHADOW), &same, &["--message", "other"]).await;
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    for _ in 0..10 {
        assert_eq!(unary(&mut c).await.as_deref(), Ok("same"));
    }
    let m = shadows_settled(&stack, 10.0).await;
    assert_eq!(shadow(&m, "body"), 10.0);
    assert_eq!(shadow(&m, "match"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_shadow_envoy_cannot_deliver_is_an_error() {
    // The shadow's service is gone: Envoy answers the call itself with a
    // trailers-only UNAVAILABLE whose grpc-message is its local-reply
    // text (a client sent straight to that service reads `upstream connect
    // error or disconnect/reset before headers. reset reason: remote
    // connection failure`): `error`, not a `header` mismatch (seen
    // before the rule: 5 of 5 `header`).
    let same = ["--message", "same"];
    let mut stack = start(&config(0, SHADOW), &same, &same).await;
    stack.upstreams[2].stop();
    let mut c = RateLimitServiceClient::new(channel(&stack).await);
    for _ in 0..5 {
        assert_eq!(unary(&mut c).await.as_deref(), Ok("same"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut m = stack.envoy.metrics().await;
    while shadow(&m, "error") + shadow(&m, "header") < 5.0 && std::time::Instant::now() < deadline {
        stack.envoy.poke().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = stack.envoy.metrics().await;
    }
    assert_eq!((shadow(&m, "error"), shadow(&m, "header")), (5.0, 0.0));
}
