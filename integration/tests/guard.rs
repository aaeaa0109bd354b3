//! The guard in a real Envoy with two workers: a route whose service does
//! worse than the monolith is rolled back within seconds, stays rolled back
//! across unrelated updates and a new .wasm, and comes back when its
//! `epoch` is bumped; both sides failing alike for two minutes never trip
//! it; the evidence gauge shows a regression building before the trip.

use std::time::{Duration, Instant};

use integration::{client, random_ids, Build, EcdsFile, Metrics, Stack, Upstream};

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

fn evidence(m: &Metrics, reason: &str) -> f64 {
    m.get(
        "traffic_shift_guard_evidence_bp",
        &[("route", "auth"), ("reason", reason)],
    )
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
        r#"{"window_s": 60, "min_requests": 20, "max_latency_ratio": 1.5}"#,
        10,
    ))
    .await;
    stack.upstreams[0].set("delay-ms", 20).await;
    stack.upstreams[1].set("delay-ms", 60).await;
    // Ratio 1.5, not 2: a service request counts as slow only when its whole
    // bucket lies above the ratio x the upper edge of the monolith's p95
    // bucket, up to two buckets (1.19^2 = 1.41) of margin; with the
    // monolith's 20 ms under load often in the (26.9, 32] ms bucket, 2 x 32
    // = 64 ms leaves a 60 ms service uncounted.
    // The monolith's p95 bound needs more than 630 monolith requests in the
    // window (a bound that holds for every second of a day), hence the
    // longer window: 6 s of this traffic on an idle machine (100 monolith
    // requests a second), about 40 s under the load of a parallel suite,
    // once 60 s on a machine running four builds beside it: the limit is
    // 120 s (the 2-minute test of this file runs meanwhile, so it costs the
    // suite nothing).
    let took = until_tripped(&stack, Duration::from_secs(120)).await;
    let m = stack.envoy.metrics_now().await;
    let total = |target| {
        m.get(
            "traffic_shift_rq_total",
            &[("route", "auth"), ("target", target)],
        )
    };
    eprintln!(
        "latency evidence {} bp; requests: monolith {}, service {}",
        evidence(&m, "latency"),
        total("monolith"),
        total("service")
    );
    let took = took.expect("the guard did not trip");
    eprintln!("tripped on latency after {took:?} of traffic");
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
    // Batches of 20 until the service has served 50 (at the 50 % split a
    // fixed count of 100 falls below 40 on the service side about 3 % of
    // the time); it then served 50..=69, so exactly 2 failed.
    let mut served = 0;
    for _ in 0..30 {
        if served >= 50 {
            break;
        }
        served += traffic(&stack, 20).await;
    }
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
    assert_eq!(errors, 2.0);
    assert!((50.0..70.0).contains(&service));
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 0.0);
}

/// `n` requests with fresh ids to `/auth/x` at `rps` a second, 4 at a time.
async fn paced(stack: &Stack, n: usize, rps: f64) {
    let c = client();
    let url = stack.envoy.url("/auth/x");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in random_ids(n).into_iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rps);
        tokio::time::sleep_until(at.into()).await;
        let (c, url) = (c.clone(), url.clone());
        tasks.spawn(async move {
            let _ = c.get(&url).header("x-request-id", id).send().await;
        });
        while tasks.len() >= 4 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_failing_ten_percent_for_two_minutes_never_trip() {
    // The guard's defaults (estimates over 30 s, 50 requests a side), 20
    // rq/s split 50 %: ten requests a second a side, as in the issue.
    let (stack, _ecds) = start(&config(r#"{}"#, 10)).await;
    stack.upstreams[0].set("fail-every", 10).await;
    stack.upstreams[1].set("fail-every", 10).await;
    let load = paced(&stack, 2400, 20.0);
    // Sample the evidence every second while the load runs.
    let sampler = async {
        let mut highest: f64 = 0.0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(122) {
            let m = stack.envoy.metrics_now().await;
            highest = highest.max(evidence(&m, "errors"));
            assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 0.0);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        highest
    };
    let ((), highest) = tokio::join!(load, sampler);
    eprintln!("highest error evidence in 2 minutes: {highest} bp");
    let m = stack.envoy.metrics().await;
    assert_eq!(trips(&m, "errors"), 0.0);
    // The issue's "evidence stays below 1": below the trip (10,000 bp) at
    // every sample; tighter, below a quarter of it (the simulator's largest
    // over 24 h at these rates is about 12 %).
    assert!(highest < 2_500.0, "evidence reached {highest} bp");
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
    // About 120 of 1,200 a side failed.
    assert!(errors_5xx("service") >= 80.0 && errors_5xx("monolith") >= 80.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_failing_thirty_percent_raises_the_evidence_then_trips() {
    let (stack, ecds) = start(&config(r#"{"window_s": 10, "min_requests": 20}"#, 10)).await;
    // About 30 %: 3 of every 10 service requests (fail-every 3 is 33 %).
    stack.upstreams[1].set("fail-every", 3).await;
    let load = paced(&stack, 1200, 40.0);
    let watch = async {
        let (mut rising, mut tripped_after) = (Vec::new(), None);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) && tripped_after.is_none() {
            let m = stack.envoy.metrics_now().await;
            let e = evidence(&m, "errors");
            if auth(&m, "traffic_shift_guard_tripped") == 1.0 {
                tripped_after = Some(start.elapsed());
                assert_eq!(e, 10_000.0);
            } else if e > 0.0 {
                rising.push(e);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (rising, tripped_after)
    };
    let ((), (rising, tripped_after)) = tokio::join!(load, watch);
    eprintln!("evidence before the trip: {rising:?} bp; tripped after {tripped_after:?}");
    assert!(tripped_after.is_some(), "never tripped");
    assert!(
        rising.iter().any(|&e| e < 10_000.0),
        "no evidence seen between 0 and the trip"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(trips(&m, "errors"), 1.0);
    assert_eq!(evidence(&m, "latency"), 0.0);

    // The guard removed from the route: its gauges read 0, not a stale
    // trip or evidence.
    let unguarded = config("{}", 10).replace(
        r#",
              "guard": {}"#,
        "",
    );
    assert!(!unguarded.contains("guard"), "{unguarded}");
    ecds.apply(&stack.envoy, "v2", &unguarded).await;
    let m = stack.envoy.metrics().await;
    if Build::current() == Build::Module {
        // The module's stats go with its old configuration's scope
        // (README "Two builds"): no stale value either.
        let gone = m.value("traffic_shift_guard_tripped", &[("route", "auth")]);
        assert_eq!(gone, None);
        return;
    }
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 0.0);
    assert_eq!(evidence(&m, "errors"), 0.0);
}

/// A copy of `wasm` with a custom section appended: other bytes, the same
/// code (Envoy starts fresh VMs for it).
fn other_bytes(wasm: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    let name = b"traffic-shift-test";
    let payload = b"upgrade";
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("traffic_shift.other.wasm");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// Rewrites the ECDS resource to load `wasm` (same plugin config, same
/// vm_id) and waits until Envoy applied it.
async fn switch_wasm(stack: &Stack, ecds: &EcdsFile, version: &str, wasm: &std::path::Path) {
    const ECDS: &str = "extension_config_discovery.http_filter.traffic_shift";
    let accepted = stack.envoy.counter(&format!("{ECDS}.update_success")).await;
    let file = ecds.dir.path().join(EcdsFile::FILE);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    doc["version_info"] = serde_yaml::Value::from(version);
    let cfg = &mut doc["resources"][0]["typed_config"]["config"];
    cfg["vm_config"]["code"]["local"]["filename"] =
        serde_yaml::Value::from(wasm.to_string_lossy().into_owned());
    let tmp = ecds.dir.path().join(".switch.yaml");
    std::fs::write(
        &tmp,
        serde_yaml::to_string(&doc).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while stack.envoy.counter(&format!("{ECDS}.update_success")).await <= accepted {
        assert!(Instant::now() < deadline, "Envoy never applied {version}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_survives_a_new_wasm_with_the_same_vm_id() {
    if Build::current() == Build::Module {
        // A wasm matter (VMs and vm_id).
        return;
    }
    // TRAFFIC_SHIFT_PREVIOUS_WASM (optional): the previous release's .wasm,
    // which writes the trip in its own state layout (version 1); without
    // it, this build trips and a byte-different copy of it reads the trip.
    let current = integration::wasm_path();
    let previous = std::env::var_os("TRAFFIC_SHIFT_PREVIOUS_WASM").map(std::path::PathBuf::from);
    let guard = r#"{"window_s": 10, "min_requests": 50}"#;
    let (stack, ecds) = start(&config(guard, 10)).await;
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let first = match &previous {
        Some(p) => {
            switch_wasm(&stack, &ecds, "v1-previous", p).await;
            p.clone()
        }
        None => current.clone(),
    };
    eprintln!("tripping with {}", first.display());
    stack.upstreams[1].set("fail-every", 10).await;
    until_tripped(&stack, Duration::from_secs(20))
        .await
        .expect("the guard did not trip");
    stack.upstreams[1].set("fail-every", 0).await;

    let next = match previous {
        Some(_) => current,
        None => other_bytes(&current, scratch.path()),
    };
    const VMS: &str = "wasm.envoy.wasm.runtime.v8.created";
    let vms = stack.envoy.counter(VMS).await;
    switch_wasm(&stack, &ecds, "v2-new-wasm", &next).await;
    // The new VMs read the trip on their first tick.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        traffic(&stack, 200).await,
        0,
        "the service got traffic after the upgrade"
    );
    let m = stack.envoy.metrics().await;
    assert_eq!(auth(&m, "traffic_shift_guard_tripped"), 1.0);
    assert_eq!(auth(&m, "traffic_shift_effective_percent_bp"), 0.0);
    // Envoy did start fresh VMs for the new bytes.
    assert!(stack.envoy.counter(VMS).await > vms);
}
