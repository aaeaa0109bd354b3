//! Soak: continuous load with configuration updates every few seconds
//! (percent changes, and now and then a config the filter refuses), bounded
//! in time. No request may fail; Envoy's RSS and the number of breaker
//! state keys in shared data must stay bounded. SOAK_SECONDS (default 30;
//! `make soak` runs longer) sets the duration.

use std::time::{Duration, Instant};

use integration::{rss_kib, EcdsFile, Load, Stack, Upstream, CLUSTERS};

fn config(percent: u32, generation: u32) -> String {
    // The salt changes nothing about the breaker key (name, service, outlier),
    // so percent and salt updates reuse the same state keys.
    format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "a", "prefix": "/a/", "service": "auth_service", "percent": {percent},
              "salt": "g{generation}", "outlier": {{}}}},
            {{"name": "b", "prefix": "/b/", "service": "orders_service", "percent": {percent},
              "hash_key": {{"cookie": "uid"}}, "outlier": {{"consecutive_failures": 3}}}}
        ]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_config_updates_stays_bounded_and_error_free() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let ecds = EcdsFile::new("0", &config(10, 0));
    let upstreams = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    let stack = Stack::start_bootstrap(ecds.bootstrap(), 2, upstreams).await;
    let urls = ["/a/x", "/b/y", "/elsewhere"]
        .iter()
        .map(|p| stack.envoy.url(p))
        .collect();

    // Warm up, then take the baseline.
    let warm = Load::start(Vec::clone(&urls), 16);
    tokio::time::sleep(Duration::from_secs(3)).await;
    warm.stop().await;
    let rss_start = rss_kib(stack.envoy.pid());
    let keys_start = stack
        .envoy
        .metrics()
        .await
        .get("traffic_shift_breaker_keys", &[]);

    let load = Load::start(urls, 16);
    let start = Instant::now();
    let mut updates = 0u32;
    let mut refused = 0u32;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        updates += 1;
        let json = if updates.is_multiple_of(5) {
            refused += 1;
            r#"{"monolith": "monolith", "routes": [{"name": "a", "prefix": "/a/", "service": "auth_service", "percent": 140}]}"#.to_string()
        } else {
            config(if updates.is_multiple_of(2) { 10 } else { 50 }, updates)
        };
        ecds.write(&updates.to_string(), &json);
    }
    let report = load.stop().await;
    let rss_end = rss_kib(stack.envoy.pid());
    let m = stack.envoy.metrics().await;
    let keys_end = m.get("traffic_shift_breaker_keys", &[]);
    let e = "extension_config_discovery.http_filter.traffic_shift";
    let rejected = stack.envoy.counter(&format!("{e}.update_rejected")).await;
    eprintln!(
        "soak: {} requests in {seconds} s, {updates} config updates ({refused} refused by the filter, Envoy counted {rejected}), \
         RSS {rss_start} -> {rss_end} KiB ({:+} KiB), breaker keys {keys_start} -> {keys_end}",
        report.requests,
        rss_end as i64 - rss_start as i64
    );
    assert_eq!(
        (report.non_2xx, report.connection_errors),
        (0, 0),
        "failed requests: {:?}",
        report.failures
    );
    assert!(report.requests > 1_000);
    assert!(
        rejected >= u64::from(refused.saturating_sub(1)),
        "refused updates were applied"
    );
    // Two routes with a breaker: two state keys, whatever the number of
    // updates (percent and salt are not part of a breaker's identity).
    assert_eq!((keys_start, keys_end), (2.0, 2.0));
    // Config updates replace the plugin's root context; 32 MiB is far above
    // the noise of a few hundred thousand requests and far below a leak per
    // update of the config (the whole VM is ~30 MiB).
    assert!(
        rss_end < rss_start + 32 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
}
