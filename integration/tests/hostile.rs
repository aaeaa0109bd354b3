//! Hostile request input in a real Envoy: huge paths and header values up
//! to Envoy's limits, thousands of cookies, duplicate key headers, forged
//! target and override headers. Every request gets a normal answer with the
//! documented decision; never a 5xx from the filter.

use integration::{client, send, Stack};
use reqwest::header::{HeaderMap, HeaderValue};
use traffic_shift::hash::bucket;

const CONFIG: &str = r#"{"monolith": "monolith",
    "override": {"header": "x-shift-force", "secret": "s"},
    "routes": [
        {"name": "h", "prefix": "/h/", "service": "auth_service", "percent": 50,
         "hash_key": {"header": "x-user-id"}},
        {"name": "c", "prefix": "/c/", "service": "orders_service", "percent": 50,
         "hash_key": {"cookie": "uid"}},
        {"name": "all", "prefix": "/all/", "service": "auth_service", "percent": 100}
    ]}"#;

fn side(key: &[u8], service: &str) -> String {
    if bucket(b"", key) < 5000 {
        service.to_string()
    } else {
        "monolith".to_string()
    }
}

/// Envoy's default limit on request headers is 60 KiB in total; these stay
/// just under it.
const BIG: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_paths_and_key_values_get_the_documented_decision() {
    let stack = Stack::start(CONFIG).await;
    let c = client();
    let path = format!("/all/{}", "a".repeat(BIG));
    let s = send(&c, "GET", &stack.envoy.url(&path), &[]).await;
    assert_eq!(
        (s.status, s.served_by.as_deref()),
        (200, Some("auth_service"))
    );
    let s = send(
        &c,
        "GET",
        &stack.envoy.url(&format!("/{}", "x".repeat(BIG))),
        &[],
    )
    .await;
    assert_eq!((s.status, s.served_by.as_deref()), (200, Some("monolith")));

    for fill in [b'k', b'z', b'~'] {
        let key = vec![fill; BIG];
        let value = String::from_utf8(key.clone()).unwrap();
        let s = send(
            &c,
            "GET",
            &stack.envoy.url("/h/x"),
            &[("x-user-id", &value)],
        )
        .await;
        assert_eq!(s.status, 200);
        assert_eq!(s.served_by, Some(side(&key, "auth_service")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_cookies_and_odd_bytes_in_them() {
    let stack = Stack::start(CONFIG).await;
    let c = client();
    for (n, uid) in [
        (3000, &b"user-1"[..]),
        (2500, b"\xff\xfe\x80"),
        (10, b"user-2"),
    ] {
        let mut cookie: Vec<u8> = (0..n)
            .flat_map(|i| format!("c{i}=v{i}; ").into_bytes())
            .collect();
        cookie.extend_from_slice(b"uid=");
        cookie.extend_from_slice(uid);
        let resp = c
            .get(stack.envoy.url("/c/x"))
            .header("cookie", HeaderValue::from_bytes(&cookie).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{n} cookies");
        let served = resp.headers()["x-served-by"].to_str().unwrap().to_string();
        assert_eq!(served, side(uid, "orders_service"), "{n} cookies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_key_headers_use_the_first_value() {
    let stack = Stack::start(CONFIG).await;
    let c = client();
    let mut checked = 0;
    for i in 0..40 {
        let (a, b) = (format!("first-{i}"), format!("second-{i}"));
        let mut h = HeaderMap::new();
        h.append("x-user-id", HeaderValue::from_str(&a).unwrap());
        h.append("x-user-id", HeaderValue::from_str(&b).unwrap());
        let resp = c
            .get(stack.envoy.url("/h/x"))
            .headers(h)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let served = resp.headers()["x-served-by"].to_str().unwrap().to_string();
        // Only keys where the first value and the others disagree tell.
        let first = side(a.as_bytes(), "auth_service");
        if first != side(b.as_bytes(), "auth_service") {
            assert_eq!(served, first, "{a} / {b}");
            checked += 1;
        }
    }
    assert!(checked > 5, "too few telling pairs: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_target_and_override_headers_on_every_route_change_nothing() {
    let stack = Stack::start(CONFIG).await;
    let c = client();
    for (path, key) in [
        ("/h/x", "u-1"),
        ("/c/x", "u-2"),
        ("/all/x", "u-3"),
        ("/none", "u-4"),
    ] {
        for forged in ["auth_service", "orders_service", "monolith", "", "\u{7f}"] {
            let headers = [
                ("x-shift-target", forged),
                ("x-shift-force", "service"),
                ("x-shift-force-secret", "wrong"),
                ("x-user-id", key),
            ];
            let Ok(_) = HeaderValue::from_str(forged) else {
                continue;
            };
            let s = send(&c, "GET", &stack.envoy.url(path), &headers).await;
            assert!(s.status < 500, "{path} {forged:?}: {}", s.status);
            let want = match path {
                "/h/x" => side(key.as_bytes(), "auth_service"),
                "/all/x" => "auth_service".into(),
                _ => "monolith".into(), // no uid cookie on /c/, unmatched /none
            };
            assert_eq!(s.served_by, Some(want), "{path} forged {forged:?}");
            for h in ["x-shift-force", "x-shift-force-secret"] {
                assert!(
                    !s.upstream_headers.contains_key(h),
                    "{h} reached the upstream"
                );
            }
        }
    }
}
