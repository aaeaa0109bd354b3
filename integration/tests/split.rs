//! The split itself, in a real Envoy running the shipped `envoy/envoy.yaml`.

use integration::{
    client, random_ids, send, served_by_keys, Bootstrap, Envoy, Stack, Upstream, CLUSTERS,
};
use traffic_shift::hash::bucket;

/// Requests in flight at once (2-core machines).
const CONCURRENCY: usize = 8;

const SPLIT_CONFIG: &str = r#"{
  "monolith": "monolith",
  "routes": [
    {"name": "p10", "prefix": "/p10/", "service": "auth_service", "percent": 10},
    {"name": "p33", "prefix": "/p33/", "service": "orders_service", "percent": 33.33, "salt": "orders-v1"},
    {"name": "p50", "prefix": "/p50/", "service": "auth_service", "percent": 50}
  ]
}"#;

/// The cluster the formula picks for `key` (the decision contract).
fn expected(salt: &str, key: &str, basis_points: u16, service: &str) -> String {
    if bucket(salt.as_bytes(), key.as_bytes()) < basis_points {
        service.to_string()
    } else {
        "monolith".to_string()
    }
}

/// Asserts `hits` out of `n` is within 4 standard deviations of the binomial
/// expectation `n * p`. Random UUIDs hashed by FNV-1a are, for this purpose,
/// independent draws with P(shift) = p; a 4-sigma band fails a correct filter
/// with probability ~6e-5 per check, so the test is not flaky, while a wrong
/// share (say 11% instead of 10% over 20,000 requests, 4.7 sigma) fails it.
fn assert_binomial(hits: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let off = (hits as f64 - mean).abs();
    assert!(
        off <= 4.0 * sigma,
        "{what}: {hits} of {n} shifted, expected {mean:.0} ± {:.0} (4 sigma)",
        4.0 * sigma
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_matches_the_percent_and_every_decision_matches_the_formula() {
    let stack = Stack::start(SPLIT_CONFIG).await;
    let c = client();
    let n = 20_000;
    for (path, salt, bp, service, p) in [
        ("/p10/x", "", 1000u16, "auth_service", 0.10),
        ("/p33/x", "orders-v1", 3333, "orders_service", 0.3333),
    ] {
        let ids = random_ids(n);
        let served = served_by_keys(
            &c,
            &stack.envoy.url(path),
            "x-request-id",
            &ids,
            CONCURRENCY,
        )
        .await;
        let shifted = served.iter().filter(|s| *s == service).count();
        let monolith = served.iter().filter(|s| *s == "monolith").count();
        assert_eq!(
            shifted + monolith,
            n,
            "{path}: every request served by one of the two"
        );
        assert_binomial(shifted, n, p, path);
        // Exactness: every single decision equals the formula computed here.
        for (id, got) in ids.iter().zip(&served) {
            assert_eq!(*got, expected(salt, id, bp, service), "{path} id {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_always_gets_the_same_target_and_raising_the_percent_never_moves_a_key_back() {
    let stack = Stack::start(SPLIT_CONFIG).await;
    let c = client();
    let ids = random_ids(500);
    // Stickiness: five passes over the same ids give identical answers.
    let first = served_by_keys(
        &c,
        &stack.envoy.url("/p10/a"),
        "x-request-id",
        &ids,
        CONCURRENCY,
    )
    .await;
    for _ in 0..4 {
        let again = served_by_keys(
            &c,
            &stack.envoy.url("/p10/a"),
            "x-request-id",
            &ids,
            CONCURRENCY,
        )
        .await;
        assert_eq!(again, first);
    }
    // Monotonic ramp: /p10/ and /p50/ share the salt, so they are the same
    // keys at 10% and at 50%.
    let at50 = served_by_keys(
        &c,
        &stack.envoy.url("/p50/a"),
        "x-request-id",
        &ids,
        CONCURRENCY,
    )
    .await;
    let shifted10 = first.iter().filter(|s| *s == "auth_service").count();
    assert!(shifted10 > 0, "some of 500 ids must be shifted at 10%");
    for ((id, a), b) in ids.iter().zip(&first).zip(&at50) {
        if a == "auth_service" {
            assert_eq!(b, "auth_service", "id {id} shifted at 10% but not at 50%");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_paths_and_methods_go_to_the_monolith_and_clients_cannot_pick_a_backend() {
    let stack = Stack::start(
        r#"{"monolith": "monolith", "routes": [
            {"name": "all", "prefix": "/all/", "service": "auth_service", "percent": 100},
            {"name": "none", "prefix": "/none/", "service": "auth_service", "percent": 0},
            {"name": "posts", "path": "/write", "methods": ["POST"], "service": "orders_service", "percent": 100}
        ]}"#,
    )
    .await;
    let c = client();
    let url = |p: &str| stack.envoy.url(p);

    let s = send(&c, "GET", &url("/all/x"), &[]).await;
    assert_eq!(s.served_by.as_deref(), Some("auth_service"));
    assert_eq!(s.upstream_headers["x-shift-target"], "auth_service");

    for (method, path) in [
        ("GET", "/elsewhere"),
        ("GET", "/all"),
        ("GET", "/write"),
        ("PUT", "/write"),
        ("POST", "/write/x"),
    ] {
        let s = send(&c, method, &url(path), &[]).await;
        assert_eq!(s.served_by.as_deref(), Some("monolith"), "{method} {path}");
    }
    let s = send(&c, "POST", &url("/write?x=1"), &[]).await;
    assert_eq!(s.served_by.as_deref(), Some("orders_service"));

    // A client-sent target header changes nothing, matched or not, and never
    // reaches the upstream.
    for (path, want) in [
        ("/elsewhere", "monolith"),
        ("/none/x", "monolith"),
        ("/all/x", "auth_service"),
    ] {
        for forged in ["auth_service", "orders_service", "monolith", ""] {
            let written = (path != "/elsewhere").then_some(want);
            let forged = [("x-shift-target", forged)];
            forged_target_changes_nothing(&c, "GET", &url(path), &forged, want, written).await;
        }
    }
}

/// Sends `forged` target headers: the request must still be served by
/// `want`, and the upstream must see `written` as the target header (the
/// filter's own value on a matched route, none on an unmatched one).
async fn forged_target_changes_nothing(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    forged: &[(&str, &str)],
    want: &str,
    written: Option<&str>,
) {
    let s = send(c, method, url, forged).await;
    assert_eq!(
        s.served_by.as_deref(),
        Some(want),
        "{method} {url} with forged {forged:?}"
    );
    let seen = s
        .upstream_headers
        .get("x-shift-target")
        .and_then(|v| v.as_str());
    assert_eq!(
        seen, written,
        "{method} {url} with forged {forged:?}: target header upstream"
    );
}

/// The shipped bootstrap strips a client's `x-shift-target` before any
/// filter runs (the HCM's `early_header_mutation_extensions`), so the test
/// above never reaches the filter's own removal. Without that guard the
/// filter alone must keep a forged target header from choosing a backend or
/// reaching one, on unmatched requests (it removes the header) as on
/// matched ones (it overwrites it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_early_header_mutation_the_filter_itself_drops_a_forged_target_header() {
    let mut bootstrap = Bootstrap::shipped().for_test().with_plugin_config(
        r#"{"monolith": "monolith", "routes": [
            {"name": "all", "prefix": "/all/", "service": "auth_service", "percent": 100},
            {"name": "none", "prefix": "/none/", "service": "auth_service", "percent": 0},
            {"name": "posts", "path": "/write", "methods": ["POST"], "service": "orders_service", "percent": 100}
        ]}"#,
    );
    let hcm = &mut bootstrap.0["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"];
    let removed = hcm
        .as_mapping_mut()
        .and_then(|m| m.remove("early_header_mutation_extensions"));
    assert!(
        removed.is_some(),
        "the shipped bootstrap's HCM has no early_header_mutation_extensions any more"
    );
    let upstreams: Vec<Upstream> = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
    let stack = Stack::start_bootstrap(bootstrap, 1, upstreams).await;
    let c = client();
    for (method, path, want) in [
        ("GET", "/elsewhere", "monolith"),
        ("PUT", "/write", "monolith"),
        ("GET", "/none/x", "monolith"),
        ("GET", "/all/x", "auth_service"),
    ] {
        for forged in [
            &[("x-shift-target", "auth_service")][..],
            &[("x-shift-target", "orders_service")],
            &[("x-shift-target", "monolith")],
            &[("x-shift-target", "")],
            // Two copies: both must go.
            &[
                ("x-shift-target", "orders_service"),
                ("x-shift-target", "auth_service"),
            ],
        ] {
            // Matched: the filter's own value; unmatched: none at all.
            let written = (path != "/elsewhere" && method == "GET").then_some(want);
            let url = stack.envoy.url(path);
            forged_target_changes_nothing(&c, method, &url, forged, want, written).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_and_header_keys_work_and_a_missing_key_goes_to_the_monolith() {
    let stack = Stack::start(
        r#"{"monolith": "monolith", "routes": [
            {"name": "c", "prefix": "/c/", "service": "auth_service", "percent": 50, "salt": "c",
             "hash_key": {"cookie": "uid"}},
            {"name": "u", "prefix": "/u/", "service": "orders_service", "percent": 100,
             "hash_key": {"header": "X-User-Id"}},
            {"name": "cu", "prefix": "/cu/", "service": "orders_service", "percent": 100,
             "hash_key": {"cookie": "uid"}}
        ]}"#,
    )
    .await;
    let c = client();
    let mut shifted = 0;
    for id in random_ids(400) {
        let cookie = format!("theme=dark; uid={id}; lang=en");
        let s = send(&c, "GET", &stack.envoy.url("/c/x"), &[("cookie", &cookie)]).await;
        let want = expected("c", &id, 5000, "auth_service");
        assert_eq!(s.served_by.as_deref(), Some(want.as_str()), "uid {id}");
        shifted += usize::from(want == "auth_service");
    }
    assert!(
        shifted > 0 && shifted < 400,
        "a 50% split of 400 keys shifts some, not all"
    );

    // 100% routes: with a key the service, without one the monolith.
    let s = send(&c, "GET", &stack.envoy.url("/u/x"), &[("x-user-id", "42")]).await;
    assert_eq!(s.served_by.as_deref(), Some("orders_service"));
    for headers in [
        vec![],
        vec![("x-user-id", "")],
        vec![("x-request-id", "r-1")],
    ] {
        let s = send(&c, "GET", &stack.envoy.url("/u/x"), &headers).await;
        assert_eq!(s.served_by.as_deref(), Some("monolith"), "{headers:?}");
    }
    for headers in [
        vec![],
        vec![("cookie", "uidx=1; xuid=2")],
        vec![("cookie", "uid=")],
    ] {
        let s = send(&c, "GET", &stack.envoy.url("/cu/x"), &headers).await;
        assert_eq!(s.served_by.as_deref(), Some("monolith"), "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_with_the_same_config_agree_on_every_key() {
    let a = Stack::start(SPLIT_CONFIG).await;
    let b = Stack::start(SPLIT_CONFIG).await;
    let c = client();
    let ids = random_ids(5_000);
    let from_a = served_by_keys(
        &c,
        &a.envoy.url("/p33/k"),
        "x-request-id",
        &ids,
        CONCURRENCY,
    )
    .await;
    let from_b = served_by_keys(
        &c,
        &b.envoy.url("/p33/k"),
        "x-request-id",
        &ids,
        CONCURRENCY,
    )
    .await;
    assert_eq!(from_a.len(), 5_000);
    for ((id, x), y) in ids.iter().zip(&from_a).zip(&from_b) {
        assert_eq!(x, y, "the two proxies disagree on id {id}");
    }
    assert!(from_a.iter().any(|s| s == "orders_service") && from_a.iter().any(|s| s == "monolith"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_makes_envoy_refuse_to_start_and_the_log_names_the_field() {
    let bootstrap = Bootstrap::shipped().for_test().with_plugin_config(
        r#"{"monolith": "monolith", "routes": [
            {"name": "a", "prefix": "/a/", "service": "auth_service", "percent": 10},
            {"name": "b", "prefix": "/b/", "service": "auth_service", "percent": 140}
        ]}"#,
    );
    let failed = match Envoy::start(&bootstrap).await {
        Ok(_) => panic!("envoy started with percent 140"),
        Err(f) => f,
    };
    assert_ne!(failed.exit_code, Some(0), "envoy must exit with an error");
    assert!(
        failed.log.contains(
            "invalid configuration: routes[1].percent: must be between 0 and 100, got 140"
        ),
        "log does not name the field:\n{}",
        failed.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_keys_are_hashed_as_raw_bytes() {
    let stack = Stack::start(
        r#"{"monolith": "monolith", "routes": [
            {"name": "h", "prefix": "/h/", "service": "auth_service", "percent": 50,
             "hash_key": {"header": "x-user-id"}},
            {"name": "c", "prefix": "/c/", "service": "auth_service", "percent": 50,
             "hash_key": {"cookie": "uid"}}
        ]}"#,
    )
    .await;
    let c = client();
    let mut sides = std::collections::HashSet::new();
    for i in 0u8..64 {
        let key = [0xff, b'a' + i % 26, 0xfe, 0x80 | i];
        let want = if bucket(b"", &key) < 5000 {
            "auth_service"
        } else {
            "monolith"
        };
        sides.insert(want);
        let mut cookie = b"a=1; uid=".to_vec();
        cookie.extend_from_slice(&key);
        for (path, name, value) in [
            ("/h/x", "x-user-id", key.to_vec()),
            ("/c/x", "cookie", cookie),
        ] {
            let value = reqwest::header::HeaderValue::from_bytes(&value).unwrap();
            let resp = c
                .get(stack.envoy.url(path))
                .header(name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let served = resp.headers()["x-served-by"].to_str().unwrap().to_string();
            assert_eq!(served, want, "{path} key {key:?}");
        }
    }
    assert_eq!(sides.len(), 2, "64 keys at 50% reach both sides");
}
