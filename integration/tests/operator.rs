//! Operator features in a real Envoy: ramp schedules and the QA override.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration::{client, random_ids, send, served_by_keys, Stack};
use traffic_shift::hash::bucket;
use traffic_shift::ramp::format_rfc3339_utc;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleeps until the wall clock passes `at_ms` plus a margin.
async fn until(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_moves_the_percent_at_its_steps() {
    // Steps a few seconds ahead (whole seconds: RFC 3339 without fraction).
    let base = (now_ms() / 1000 + 1) * 1000;
    // Room in each phase for its requests and a scrape after a tick (the
    // gauge follows on the tick), on a loaded machine.
    let (at1, at2) = (base + 6_000, base + 10_000);
    let config = format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 0,
              "ramp": [{{"at": "{}", "percent": 50}}, {{"at": "{}", "percent": 100}}]}}]}}"#,
        format_rfc3339_utc(at1),
        format_rfc3339_utc(at2)
    );
    let stack = Stack::start(&config).await;
    let c = client();
    let keys = random_ids(300);
    let url = stack.envoy.url("/auth/x");
    let gauge = |m: &integration::Metrics| {
        m.get("traffic_shift_effective_percent_bp", &[("route", "auth")])
    };

    // Before the first step: the route's own percent (0).
    assert!(
        now_ms() + 1_000 < at1,
        "the machine took too long to start Envoy"
    );
    let before = served_by_keys(&c, &url, "x-request-id", &keys, 8).await;
    assert!(now_ms() < at1, "requests ran into the first step");
    assert!(before.iter().all(|s| s == "monolith"));
    let m = stack.envoy.metrics().await;
    assert!(now_ms() < at1, "the scrape ran into the first step");
    assert_eq!(gauge(&m), 0.0);

    // At 50 %: exactly the keys of the formula, and the gauge follows
    // (the tick updates it every second).
    until(at1 + 1_500).await;
    let mid = served_by_keys(&c, &url, "x-request-id", &keys, 8).await;
    for (k, s) in keys.iter().zip(&mid) {
        let want = if bucket(b"", k.as_bytes()) < 5000 {
            "auth_service"
        } else {
            "monolith"
        };
        assert_eq!(s, want, "key {k} at 50%");
    }
    assert!(now_ms() < at2, "requests ran into the second step");
    // A tick has run since the step (1.5 s ago): scrape now, before the
    // next step can move the gauge again.
    let m = stack.envoy.metrics_now().await;
    assert!(now_ms() < at2, "the scrape ran into the second step");
    assert_eq!(gauge(&m), 5000.0);

    until(at2 + 1_500).await;
    let after = served_by_keys(&c, &url, "x-request-id", &keys, 8).await;
    assert!(after.iter().all(|s| s == "auth_service"));
    assert_eq!(gauge(&stack.envoy.metrics().await), 10000.0);
}

const OVERRIDE: &str = r#"{"monolith": "monolith",
    "override": {"header": "x-shift-force", "secret": "qa-2026"},
    "routes": [
        {"name": "none", "prefix": "/none/", "service": "auth_service", "percent": 0},
        {"name": "all", "prefix": "/all/", "service": "orders_service", "percent": 100}
    ]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_forces_either_side_only_with_the_secret_and_never_reaches_upstream() {
    let stack = Stack::start(OVERRIDE).await;
    let c = client();
    /// (path, request headers, expected cluster)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "/none/x",
            &[
                ("x-shift-force", "service"),
                ("x-shift-force-secret", "qa-2026"),
            ],
            "auth_service",
        ),
        (
            "/all/x",
            &[
                ("x-shift-force", "monolith"),
                ("x-shift-force-secret", "qa-2026"),
            ],
            "monolith",
        ),
        // Wrong, missing or partial secret, or a bad value: the split decides.
        (
            "/none/x",
            &[
                ("x-shift-force", "service"),
                ("x-shift-force-secret", "qa-2025"),
            ],
            "monolith",
        ),
        (
            "/none/x",
            &[
                ("x-shift-force", "service"),
                ("x-shift-force-secret", "qa-2026x"),
            ],
            "monolith",
        ),
        ("/none/x", &[("x-shift-force", "service")], "monolith"),
        ("/all/x", &[("x-shift-force", "monolith")], "orders_service"),
        (
            "/none/x",
            &[
                ("x-shift-force", "SERVICE"),
                ("x-shift-force-secret", "qa-2026"),
            ],
            "monolith",
        ),
        (
            "/none/x",
            &[("x-shift-force-secret", "qa-2026")],
            "monolith",
        ),
        // Unmatched paths always go to the monolith.
        (
            "/other",
            &[
                ("x-shift-force", "service"),
                ("x-shift-force-secret", "qa-2026"),
            ],
            "monolith",
        ),
    ];
    for (path, headers, want) in cases {
        let s = send(&c, "GET", &stack.envoy.url(path), headers).await;
        assert_eq!(s.served_by.as_deref(), Some(*want), "{path} {headers:?}");
        for h in ["x-shift-force", "x-shift-force-secret"] {
            assert!(
                !s.upstream_headers.contains_key(h),
                "{h} reached the upstream on {path} {headers:?}"
            );
        }
    }
    let m = stack.envoy.metrics().await;
    assert_eq!(
        m.get(
            "traffic_shift_override",
            &[("route", "none"), ("target", "service")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "traffic_shift_override",
            &[("route", "all"), ("target", "monolith")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "traffic_shift_override",
            &[("route", "none"), ("target", "monolith")]
        ),
        0.0
    );
}
