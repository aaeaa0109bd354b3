//! Live configuration over ECDS (watched file and gRPC/ADS) while traffic
//! flows: shifts with zero failed requests, exact decisions after each ACK,
//! other routes untouched, bad updates refused while the old config serves.

use std::collections::HashSet;

use integration::xds::{Outcome, XdsServer};
use integration::{client, random_ids, served_by_keys, EcdsFile, Load, Stack, Upstream, CLUSTERS};
use traffic_shift::hash::bucket;

const ECDS: &str = "extension_config_discovery.http_filter.traffic_shift";

/// Two routes: `shift` moves, `steady` must not.
fn config(shift_percent: u32) -> String {
    format!(
        r#"{{"monolith": "monolith", "routes": [
            {{"name": "shift", "prefix": "/shift/", "service": "auth_service", "percent": {shift_percent}}},
            {{"name": "steady", "prefix": "/steady/", "service": "orders_service", "percent": 33.33, "salt": "st"}}
        ]}}"#
    )
}

/// Invalid updates, each with the message the filter must log. All differ,
/// so Envoy really tries each one.
const INVALID: &[(&str, &str)] = &[
    (
        r#"{"monolith": "monolith", "routes": [{"name": "shift", "prefix": "/shift/", "service": "auth_service", "percent": 140}]}"#,
        "routes[0].percent: must be between 0 and 100, got 140",
    ),
    (
        r#"{"monolith": "monolith", "routes": [{"name": "shift", "prefix": "/shift/", "service": "auth_service", "percnt": 10}]}"#,
        "routes[0].percnt: unknown field",
    ),
    (
        r#"{"monolith": "monolith", "routes": [
            {"name": "a", "prefix": "/a/", "service": "auth_service", "percent": 1},
            {"name": "a", "prefix": "/b/", "service": "auth_service", "percent": 1}]}"#,
        r#"routes[1].name: duplicate route name "a""#,
    ),
    (
        r##"{"monolith": "monolith", "routes": ["##,
        "configuration: invalid JSON",
    ),
];

fn upstreams() -> Vec<Upstream> {
    CLUSTERS.iter().map(|n| Upstream::start(n)).collect()
}

/// How a test changes the configuration and learns that Envoy took it.
enum Source {
    File(EcdsFile),
    Grpc(XdsServer),
}

impl Source {
    /// Applies `json` as `version`; `Ok` once Envoy has it in force on every
    /// worker, `Err` when Envoy refused it.
    async fn apply(&self, stack: &Stack, version: &str, json: &str) -> Result<(), String> {
        let e = &stack.envoy;
        let reloads = e.counter(&format!("{ECDS}.config_reload")).await;
        let rejected = e.counter(&format!("{ECDS}.update_rejected")).await;
        let accepted = e.counter(&format!("{ECDS}.update_success")).await;
        match self {
            Source::File(f) => {
                f.write(version, json);
                // Either accepted or refused. (config_reload moves on both,
                // so it only tells, after a success, that workers have it.)
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
                loop {
                    if e.counter(&format!("{ECDS}.update_rejected")).await > rejected {
                        return Err("rejected".into());
                    }
                    if e.counter(&format!("{ECDS}.update_success")).await > accepted {
                        e.wait_counter(&format!("{ECDS}.config_reload"), reloads + 1)
                            .await;
                        return Ok(());
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "Envoy never read version {version}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            Source::Grpc(server) => {
                server
                    .push(version, json)
                    .map_err(|e| format!("push refused: {e}"))?;
                match server
                    .wait(version, std::time::Duration::from_secs(15))
                    .await
                {
                    Some(Outcome::Acked) => {
                        // The ACK leaves the main thread before the workers
                        // swap configs; config_reload counts the swap.
                        e.wait_counter(&format!("{ECDS}.config_reload"), reloads + 1)
                            .await;
                        Ok(())
                    }
                    Some(Outcome::Nacked(m)) => Err(m),
                    None => panic!("no ACK/NACK for version {version}"),
                }
            }
        }
    }
}

async fn start(kind: &str) -> (Stack, Source) {
    match kind {
        "file" => {
            let ecds = EcdsFile::new("v0", &config(0));
            let stack = Stack::start_bootstrap(ecds.bootstrap(), 2, upstreams()).await;
            (stack, Source::File(ecds))
        }
        _ => {
            let (stack, server) = Stack::start_ads("v0", &config(0), 2, upstreams()).await;
            (stack, Source::Grpc(server))
        }
    }
}

/// 0 -> 10 -> 50 -> 100 -> 0 % under 16 connections of load.
async fn shift_under_load(kind: &str) {
    let (stack, source) = start(kind).await;
    let urls = ["/shift/a", "/steady/b", "/elsewhere"]
        .iter()
        .map(|p| stack.envoy.url(p))
        .collect();
    let load = Load::start(urls, 16);
    let c = client();
    let keys = random_ids(1_000);
    let mut previous: Option<HashSet<String>> = None;
    let steady_before =
        served_by_keys(&c, &stack.envoy.url("/steady/x"), "x-request-id", &keys, 8).await;
    for (step, percent) in [10u32, 50, 100, 0].into_iter().enumerate() {
        let version = format!("v{}", step + 1);
        source
            .apply(&stack, &version, &config(percent))
            .await
            .unwrap();
        assert_eq!(
            stack.envoy.stat(&format!("{ECDS}.version_text")).await,
            Some(serde_json::Value::from(version.clone())),
            "the version in force is visible"
        );
        // Every decision after the switch follows the new percent exactly
        // (which also puts the share inside any binomial tolerance).
        let served =
            served_by_keys(&c, &stack.envoy.url("/shift/x"), "x-request-id", &keys, 8).await;
        let bp = (percent * 100) as u16;
        let mut shifted = HashSet::new();
        for (k, s) in keys.iter().zip(&served) {
            let want = if bucket(b"", k.as_bytes()) < bp {
                "auth_service"
            } else {
                "monolith"
            };
            assert_eq!(s, want, "{kind} {version} ({percent}%): key {k}");
            if s == "auth_service" {
                shifted.insert(k.clone());
            }
        }
        // Going up, no key moves back to the monolith.
        if let (Some(prev), true) = (&previous, percent > 0) {
            assert!(prev.is_subset(&shifted), "{version}: a key moved back");
        }
        previous = Some(shifted);
        // The other route's decisions never change.
        let steady =
            served_by_keys(&c, &stack.envoy.url("/steady/x"), "x-request-id", &keys, 8).await;
        assert_eq!(steady, steady_before, "{version}: route steady changed");
    }
    let report = load.stop().await;
    assert!(report.requests > 1_000, "the load ran: {report:?}");
    assert_eq!(
        (report.non_2xx, report.connection_errors),
        (0, 0),
        "{kind}: failed requests during shifts: {:?}",
        report.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_ecds_shifts_under_load_with_zero_failed_requests() {
    shift_under_load("file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ecds_shifts_under_load_with_zero_failed_requests() {
    shift_under_load("grpc").await;
}

/// Who served 50 fresh request ids on route `shift`.
async fn fifty_on_shift(c: &reqwest::Client, stack: &Stack) -> Vec<String> {
    served_by_keys(
        c,
        &stack.envoy.url("/shift/x"),
        "x-request-id",
        &random_ids(50),
        4,
    )
    .await
}

/// Each invalid update is refused (Envoy's stats move, the log names the
/// field) while the previous config keeps serving; the next valid one wins.
async fn refuse_bad_updates(kind: &str) {
    let (stack, source) = start(kind).await;
    source.apply(&stack, "good-1", &config(100)).await.unwrap();
    let load = Load::start(
        vec![stack.envoy.url("/shift/a"), stack.envoy.url("/steady/b")],
        8,
    );
    let c = client();
    for (i, (json, message)) in INVALID.iter().enumerate() {
        let fails = stack.envoy.counter(&format!("{ECDS}.config_fail")).await;
        let version = format!("bad-{i}");
        let refused = source.apply(&stack, &version, json).await;
        assert!(refused.is_err(), "{kind}: {version} was accepted");
        assert!(stack.envoy.counter(&format!("{ECDS}.config_fail")).await > fails);
        assert!(
            stack
                .envoy
                .log()
                .contains(&format!("invalid configuration: {message}")),
            "{kind}: the log does not name the field of {version}: {message}"
        );
        assert_eq!(
            stack.envoy.stat(&format!("{ECDS}.version_text")).await,
            Some(serde_json::Value::from("good-1"))
        );
        // Still 100 %.
        let served = fifty_on_shift(&c, &stack).await;
        assert!(
            served.iter().all(|s| s == "auth_service"),
            "{kind} after {version}: {served:?}"
        );
    }
    source.apply(&stack, "good-2", &config(0)).await.unwrap();
    let served = fifty_on_shift(&c, &stack).await;
    assert!(served.iter().all(|s| s == "monolith"));
    let report = load.stop().await;
    assert_eq!(
        (report.non_2xx, report.connection_errors),
        (0, 0),
        "{kind}: failed requests around refused updates: {:?}",
        report.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_ecds_refuses_bad_updates_and_keeps_serving() {
    refuse_bad_updates("file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ecds_refuses_bad_updates_and_keeps_serving() {
    refuse_bad_updates("grpc").await;
}
