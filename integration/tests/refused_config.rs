//! What a configuration the filter refuses (`on_configure` returns false)
//! does to Envoy 1.40's ECDS stats, its log and traffic, through the
//! watched file and over gRPC, as the README ("Changing the split live")
//! tells it: `update_success` and `version_text` mean "applied";
//! `config_reload` also moves on a refused update.

use std::time::Duration;

use integration::{client, random_ids, served_by_keys, EcdsFile, Envoy, Stack, Upstream, CLUSTERS};

const ECDS: &str = "extension_config_discovery.http_filter.traffic_shift";

const AT_100: &str = r#"{"monolith": "monolith", "routes": [
    {"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 100}]}"#;
const REFUSED: &str = r#"{"monolith": "monolith", "routes": [
    {"name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 140}]}"#;

/// Makes (version, plugin JSON) the next ECDS version.
type Push = Box<dyn Fn(&str, &str)>;

fn upstreams() -> Vec<Upstream> {
    CLUSTERS.iter().map(|n| Upstream::start(n)).collect()
}

/// The ECDS stats a user reads.
#[derive(Debug, Clone, PartialEq)]
struct Ecds {
    update_success: u64,
    update_rejected: u64,
    config_fail: u64,
    config_reload: u64,
    version_text: Option<serde_json::Value>,
}

async fn ecds(e: &Envoy) -> Ecds {
    Ecds {
        update_success: e.counter(&format!("{ECDS}.update_success")).await,
        update_rejected: e.counter(&format!("{ECDS}.update_rejected")).await,
        config_fail: e.counter(&format!("{ECDS}.config_fail")).await,
        config_reload: e.counter(&format!("{ECDS}.config_reload")).await,
        version_text: e.stat(&format!("{ECDS}.version_text")).await,
    }
}

/// Waits until `done` holds for the ECDS stats (15 s at most).
async fn ecds_when(e: &Envoy, done: impl Fn(&Ecds) -> bool) -> Ecds {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = ecds(e).await;
        if done(&s) || std::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(log: &str, line: &str) -> usize {
    log.lines().filter(|l| l.contains(line)).count()
}

/// Starts v1 (100 % to auth_service, 2 workers), refuses v2, checks the
/// stats, the log and that v1 still decides.
async fn refused_update(kind: &str) {
    let (stack, push): (Stack, Push) = match kind {
        "file" => {
            let f = EcdsFile::new("v1", AT_100);
            let stack = Stack::start_bootstrap(f.bootstrap(), 2, upstreams()).await;
            (stack, Box::new(move |v, json| f.write(v, json)))
        }
        _ => {
            let (stack, server) = Stack::start_ads("v1", AT_100, 2, upstreams()).await;
            let push = move |v: &str, json: &str| server.push(v, json).unwrap();
            (stack, Box::new(push))
        }
    };
    let e = &stack.envoy;
    let before = ecds_when(e, |s| s.update_success == 1 && s.config_reload >= 1).await;
    assert_eq!(before.version_text, Some("v1".into()), "{kind}: {before:?}");
    let log_before = e.log();

    push("v2", REFUSED);
    let after = ecds_when(e, |s| s.update_rejected > before.update_rejected).await;
    // Let anything that follows a rejection land before reading the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = Ecds {
        config_reload: e.counter(&format!("{ECDS}.config_reload")).await,
        ..after
    };
    assert_eq!(after.update_rejected, before.update_rejected + 1, "{kind}");
    assert!(after.config_fail > before.config_fail, "{kind}: {after:?}");
    assert_eq!(after.update_success, before.update_success, "{kind}");
    assert_eq!(after.version_text, Some("v1".into()), "{kind}");
    assert!(
        after.config_reload > before.config_reload,
        "{kind}: config_reload did not move on a refused update: {after:?}"
    );

    // Envoy's log: the filter's reason, then Envoy's own lines. The second
    // says "fail closed" although the plugin is FAIL_OPEN: Envoy 1.40 reads
    // the legacy `fail_open` flag there, not `failure_policy` (README
    // "Changing the split live"). Logged on the main thread and on each
    // worker, asynchronously: at least once.
    let log = e.log();
    let new = log.get(log_before.len()..).unwrap_or_default();
    assert!(new
        .contains("invalid configuration: routes[0].percent: must be between 0 and 100, got 140"));
    assert_eq!(
        count(new, "Plugin traffic_shift failed to load"),
        1,
        "{kind}"
    );
    assert!(
        count(new, "Plugin configured to fail closed failed to load") >= 1,
        "{kind}"
    );

    // Traffic: v1 decides, nothing fails closed.
    let c = client();
    let served = served_by_keys(
        &c,
        &e.url("/api/auth/x"),
        "x-request-id",
        &random_ids(50),
        4,
    )
    .await;
    assert!(
        served.iter().all(|s| s == "auth_service"),
        "{kind}: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_a_refused_update_moves_config_reload_not_version_text() {
    refused_update("file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_a_refused_update_moves_config_reload_not_version_text() {
    refused_update("grpc").await;
}

/// ECDS at start-up with a config the filter refuses, and no earlier one:
/// Envoy starts, but every request on the listener (on the filter's routes
/// or not) gets 500 until a valid version arrives. FAIL_OPEN does not
/// apply: there is no filter configuration at all, not a failed VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_config_over_ecds_answers_500_until_a_valid_one() {
    let f = EcdsFile::new("v1", REFUSED);
    let stack = Stack::start_bootstrap(f.bootstrap(), 2, upstreams()).await;
    let e = &stack.envoy;
    let s = ecds_when(e, |s| s.update_rejected >= 1).await;
    assert_eq!((s.update_rejected, s.update_success), (1, 0), "{s:?}");
    assert_eq!(s.version_text, Some("".into()), "{s:?}");
    let c = client();
    for path in ["/api/auth/x", "/elsewhere"] {
        for _ in 0..5 {
            let r = c.get(e.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 500, "{path}");
        }
    }
    f.write("v2", AT_100);
    let s = ecds_when(e, |s| s.update_success >= 1 && s.config_reload >= 2).await;
    assert_eq!(s.version_text, Some("v2".into()), "{s:?}");
    let served = served_by_keys(
        &c,
        &e.url("/api/auth/x"),
        "x-request-id",
        &random_ids(20),
        4,
    )
    .await;
    assert!(served.iter().all(|s| s == "auth_service"), "{served:?}");
    let r = c.get(e.url("/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
