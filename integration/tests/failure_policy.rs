//! What each `failure_policy` does to traffic when the filter's VM traps,
//! with a test-only build whose filter panics on `x-test-trap`.
//! The route sends 100 % to auth_service, so "filter skipped" is visible as
//! the monolith answering.

use std::time::{Duration, Instant};

use integration::{client, send, trap_wasm_path, Bootstrap, Stack, Upstream, CLUSTERS};

const CONFIG: &str = r#"{"monolith": "monolith", "routes": [
    {"name": "all", "prefix": "/all/", "service": "auth_service", "percent": 100}]}"#;

/// (status, served_by) of `n` plain requests.
async fn after(stack: &Stack, n: usize) -> Vec<(u16, Option<String>)> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let s = send(&c, "GET", &stack.envoy.url("/all/x"), &[]).await;
        out.push((s.status, s.served_by));
    }
    out
}

async fn trapped(policy: &str) -> Stack {
    let bootstrap = Bootstrap::shipped()
        .for_test()
        .with_plugin_config(CONFIG)
        .with_wasm(&trap_wasm_path())
        .with_failure_policy(policy);
    let upstreams = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    let stack = Stack::start_bootstrap(bootstrap, 1, upstreams).await;
    let c = client();
    let before = send(&c, "GET", &stack.envoy.url("/all/x"), &[]).await;
    assert_eq!(
        (before.status, before.served_by.as_deref()),
        (200, Some("auth_service"))
    );
    let trap = send(
        &c,
        "GET",
        &stack.envoy.url("/all/x"),
        &[("x-test-trap", "1")],
    )
    .await;
    // The request in flight when the VM traps is lost whatever the policy.
    assert_eq!(trap.status, 503, "{policy}: the trapping request");
    assert!(
        stack.envoy.log().contains("x-test-trap: deliberate trap"),
        "{policy}: no panic logged"
    );
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_the_dead_filter_and_everything_goes_to_the_monolith() {
    let stack = trapped("FAIL_OPEN").await;
    for (status, by) in after(&stack, 20).await {
        assert_eq!((status, by.as_deref()), (200, Some("monolith")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_to_everything_after_a_trap() {
    let stack = trapped("FAIL_CLOSED").await;
    for (status, by) in after(&stack, 20).await {
        assert_eq!((status, by), (503, None));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_starts_a_fresh_vm_and_the_split_comes_back() {
    let stack = trapped("FAIL_RELOAD").await;
    let start = Instant::now();
    let c = client();
    let mut meanwhile = std::collections::BTreeSet::new();
    loop {
        let s = send(&c, "GET", &stack.envoy.url("/all/x"), &[]).await;
        if s.served_by.as_deref() == Some("auth_service") {
            break;
        }
        meanwhile.insert((s.status, s.served_by.clone()));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no reload after 10 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "FAIL_RELOAD: split back after {:?}; meanwhile {meanwhile:?}",
        start.elapsed()
    );
    // Until the fresh VM is up (reload backoff, ~1 s here), requests fail.
    assert!(
        meanwhile
            .iter()
            .all(|(status, by)| *status == 503 && by.is_none()),
        "{meanwhile:?}"
    );
    for (status, by) in after(&stack, 10).await {
        assert_eq!((status, by.as_deref()), (200, Some("auth_service")));
    }
}
