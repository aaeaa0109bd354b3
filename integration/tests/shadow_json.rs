//! Shadow compare of real JSON APIs in a real Envoy (one worker): answers
//! with a per-call timestamp, id and etags and another key order on each
//! side. With the noise baseline the noisy fields are learned after a
//! stated warm-up, then the equal path never mismatches and the path that
//! really differs is a mismatch naming that field; with `ignore_fields`
//! the same holds from the first request; a body that is not JSON is
//! compared by bytes; the field label stays bounded when each answer
//! carries hundreds of random keys; a shadow Envoy cannot deliver is an
//! `error`, not a `status` mismatch; a request with trailers (HTTP/2) is
//! shadowed; `max_in_flight` counts uploads whose body is still arriving.
//! The last two fail on the build before these fixes (checked with
//! main's .wasm: 5 `skipped` with trailers, 5 `match` past a cap of 2).

use std::time::{Duration, Instant};

use integration::{client, random_ids, Metrics, Stack};

const RESULTS: [&str; 8] = [
    "match", "noise", "status", "header", "body", "timeout", "error", "skipped",
];

fn result(m: &Metrics, route: &str, r: &str) -> f64 {
    m.value("traffic_shift_shadow", &[("route", route), ("result", r)])
        .unwrap_or(0.0)
}

fn results(m: &Metrics, route: &str) -> Vec<(&'static str, f64)> {
    RESULTS.iter().map(|r| (*r, result(m, route, r))).collect()
}

fn total(m: &Metrics, route: &str) -> f64 {
    results(m, route).iter().map(|(_, v)| v).sum()
}

fn field(m: &Metrics, route: &str, f: &str, kind: &str) -> f64 {
    m.value(
        "traffic_shift_shadow_field",
        &[("route", route), ("field", f), ("kind", kind)],
    )
    .unwrap_or(0.0)
}

/// The `field` label values of route `route`.
fn field_labels(m: &Metrics, route: &str) -> Vec<String> {
    let mut out: Vec<String> =
        m.0.iter()
            .filter(|s| s.metric == "traffic_shift_shadow_field")
            .filter(|s| s.labels.get("route") == Some(route))
            .filter_map(|s| s.labels.get("field").map(String::from))
            .collect();
    out.sort();
    out.dedup();
    out
}

async fn start(config: &str) -> Stack {
    let stack = Stack::start(config).await;
    for u in &stack.upstreams {
        u.set("api", "on").await;
    }
    stack
}

/// `n` GETs of `path`, `parallel` at a time, fresh request ids.
async fn gets(stack: &Stack, path: &str, n: usize, parallel: usize) {
    let c = client();
    let url = stack.envoy.url(path);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in random_ids(n).chunks(n.div_ceil(parallel).max(1)) {
        let (c, url, ids) = (c.clone(), url.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for id in ids {
                let resp = c
                    .get(&url)
                    .header("x-request-id", id)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Scrapes until every route of `want` has its number of results, 10 s at
/// most (a shadow may answer after its primary).
async fn settled(stack: &Stack, want: &[(&str, f64)]) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = stack.envoy.metrics().await;
        if want.iter().all(|(r, n)| total(&m, r) >= *n) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The module compares an answer on the worker's next hook.
        stack.envoy.poke().await;
    }
}

fn route(name: &str, prefix: &str, shadow: &str) -> String {
    format!(
        r#"{{"name": "{name}", "prefix": "{prefix}", "service": "auth_service", "percent": 50,
            "shadow": {{"percent": 100, "compare_body": "json", {shadow}}}}}"#
    )
}

/// The warm-up of the noise baseline, stated: with `noise_percent: 100`
/// a field is noisy once two old-vs-old comparisons saw it differ
/// (`NOISE_MIN_COUNT`, and at least 10 % of them); 10 sequential requests
/// per route leave room for noise answers that come back after their
/// request's verdict.
const WARM_UP: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noise_baseline_learns_timestamps_and_ids_then_names_the_real_field() {
    let config = format!(
        r#"{{"monolith": "monolith", "routes": [{}, {}]}}"#,
        route("same", "/same/", r#""noise_percent": 100"#),
        route("differ", "/differ/", r#""noise_percent": 100"#),
    );
    let stack = start(&config).await;
    gets(&stack, "/same/a", WARM_UP, 1).await;
    gets(&stack, "/differ/a", WARM_UP, 1).await;
    let before = settled(&stack, &[("same", 10.0), ("differ", 10.0)]).await;

    gets(&stack, "/same/a", 60, 4).await;
    gets(&stack, "/differ/a", 60, 4).await;
    let m = settled(&stack, &[("same", 70.0), ("differ", 70.0)]).await;
    let delta = |route: &str, r: &str| result(&m, route, r) - result(&before, route, r);
    assert_eq!(
        delta("same", "match") + delta("same", "noise"),
        60.0,
        "after the warm-up every request of the equal path is equal up to noise: {:?}",
        results(&m, "same")
    );
    assert_eq!(
        delta("differ", "body"),
        60.0,
        "every request of the differing path is a mismatch: {:?}",
        results(&m, "differ")
    );
    let fd = field(&m, "differ", "price", "diff") - field(&before, "differ", "price", "diff");
    assert_eq!(fd, 60.0, "each names /price");
    for noisy in ["generated_at", "id", "items_x_etag"] {
        assert!(
            field(&m, "same", noisy, "noise") > 0.0,
            "{noisy} seen differing between two monolith answers: {:?}",
            field_labels(&m, "same")
        );
        assert_eq!(
            field(&m, "differ", noisy, "diff"),
            field(&before, "differ", noisy, "diff"),
            "{noisy}: no longer a difference after the warm-up"
        );
    }
    // The log line names the field, not its values (log_values is off).
    let log = stack.envoy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("shadow mismatch (body) on route \"differ\""))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("differing fields: /price")),
        "{lines:?}"
    );
    assert!(
        !log.contains("first field's values"),
        "values are not logged"
    );
    // The noise calls went to the monolith, marked as such.
    let seen = reqwest::get(format!(
        "http://{}/__upstream/shadows",
        stack.upstreams[0].addr
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .text()
    .await
    .unwrap_or_default();
    assert!(seen.contains(r#""x-shift-shadow":"noise""#), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_fields_hold_from_the_first_request_and_text_is_compared_by_bytes() {
    let ignore = r#""ignore_fields": ["/id", "/generated_at", "/items/*/etag"]"#;
    let config = format!(
        r#"{{"monolith": "monolith", "routes": [{}, {}, {}, {}]}}"#,
        route("same", "/same/", ignore),
        route(
            "differ",
            "/differ/",
            &format!(r#"{ignore}, "log_values": true"#)
        ),
        route("text", "/text/", ignore),
        route("textd", "/text-differ/", ignore),
    );
    let stack = start(&config).await;
    for p in ["/same/a", "/differ/a", "/text/a", "/text-differ/a"] {
        gets(&stack, p, 30, 4).await;
    }
    let m = settled(
        &stack,
        &[
            ("same", 30.0),
            ("differ", 30.0),
            ("text", 30.0),
            ("textd", 30.0),
        ],
    )
    .await;
    assert_eq!(
        result(&m, "same", "match"),
        30.0,
        "{:?}",
        results(&m, "same")
    );
    assert_eq!(
        result(&m, "differ", "body"),
        30.0,
        "{:?}",
        results(&m, "differ")
    );
    assert_eq!(field(&m, "differ", "price", "diff"), 30.0);
    assert_eq!(field_labels(&m, "differ"), ["price"]);
    assert_eq!(
        result(&m, "text", "match"),
        30.0,
        "{:?}",
        results(&m, "text")
    );
    assert_eq!(
        result(&m, "textd", "body"),
        30.0,
        "{:?}",
        results(&m, "textd")
    );
    assert_eq!(
        field(&m, "textd", "body", "diff"),
        30.0,
        "bytes: field body"
    );
    // log_values: the first differing field's two values (price 1 on the
    // monolith, 2 on the service, whichever served).
    let log = stack.envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("shadow mismatch (body) on route \"differ\""))
        .unwrap_or_else(|| panic!("no mismatch line:\n{log}"));
    assert!(
        line.contains("differing fields: /price; first field's values: 1 vs 2")
            || line.contains("differing fields: /price; first field's values: 2 vs 1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_label_stays_bounded_with_hundreds_of_random_keys() {
    let config = format!(
        r#"{{"monolith": "monolith", "routes": [{}]}}"#,
        route("random", "/random/", r#""noise_percent": 50"#),
    );
    let stack = start(&config).await;
    gets(&stack, "/random/a", 60, 4).await;
    let m = settled(&stack, &[("random", 60.0)]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The module's tick runs on a worker's hook.
    stack.envoy.poke().await;
    let m2 = stack.envoy.metrics().await;
    let labels = field_labels(&m2, "random");
    assert!(
        labels.len() <= 33,
        "at most 32 fields and other: {}",
        labels.len()
    );
    assert!(labels.contains(&"other".to_string()), "{labels:?}");
    assert_eq!(
        result(&m, "random", "body"),
        60.0,
        "{:?}",
        results(&m, "random")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_envoy_cannot_deliver_is_an_error_and_sizes_are_said_only_when_read() {
    let config = r#"{"monolith": "monolith", "routes": [
        {"name": "down", "prefix": "/down/", "service": "auth_service", "percent": 0,
         "shadow": {"percent": 100, "compare_body": "json"}},
        {"name": "nobody", "prefix": "/nobody/", "service": "orders_service", "percent": 0,
         "shadow": {"percent": 100}}]}"#;
    let mut stack = start(config).await;
    stack.upstreams[1].stop();
    stack.upstreams[2].set("status", 500).await;
    gets(&stack, "/down/a", 20, 2).await;
    gets(&stack, "/nobody/a", 5, 1).await;
    let m = settled(&stack, &[("down", 20.0), ("nobody", 5.0)]).await;
    assert_eq!(
        result(&m, "down", "error"),
        20.0,
        "Envoy's own 503 (connect failure): {:?}",
        results(&m, "down")
    );
    assert_eq!(result(&m, "nobody", "status"), 5.0);
    let log = stack.envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("shadow mismatch (status) on route \"nobody\""))
        .unwrap_or_else(|| panic!("no mismatch line:\n{log}"));
    assert!(line.contains("body not compared"), "{line}");
}

/// A POST over HTTP/2 (prior knowledge) with a body and request trailers.
async fn post_with_trailers(addr: std::net::SocketAddr, path: &str) -> u16 {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    tokio::spawn(conn);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", hyper::header::HeaderValue::from_static("abc"));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(tokio_stream::iter(frames));
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("x-request-id", uuid::Uuid::new_v4().to_string())
        .body(body)
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = send
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("h2 request: {e}"));
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_trailers_is_shadowed_and_the_cap_counts_uploads_still_arriving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = r#"{"monolith": "monolith", "routes": [
        {"name": "trail", "prefix": "/trail/", "service": "auth_service", "percent": 0,
         "shadow": {"percent": 100, "methods": ["POST"]}},
        {"name": "up", "prefix": "/up/", "service": "orders_service", "percent": 0,
         "shadow": {"percent": 100, "methods": ["POST"], "max_in_flight": 2}}]}"#;
    let stack = Stack::start(config).await;
    for u in &stack.upstreams {
        u.set("body", "same").await;
    }
    let addr: std::net::SocketAddr = stack
        .envoy
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    // The monolith (the primary) answers after 300 ms: it answers without
    // reading the body, and a response complete before the request's
    // trailers reach the filter ends the stream early (`skipped`; seen in
    // 4 of 5 runs without the delay, on the shadow branch's own build too).
    stack.upstreams[0].set("delay-ms", 300).await;
    for _ in 0..5 {
        assert_eq!(post_with_trailers(addr, "/trail/a").await, 200);
    }
    // Five uploads: headers and half the body, all at once; then the rest.
    // The monolith (the primary) answers after 1 s: an upstream that
    // answers before the body is complete ends the stream early, and an
    // incomplete request is `skipped` anyway.
    stack.upstreams[0].set("delay-ms", 1000).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(b"POST /up/a HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\nab")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in &mut conns {
        s.write_all(b"cd").await.unwrap_or_else(|e| panic!("{e}"));
    }
    for s in &mut conns {
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }
    let m = settled(&stack, &[("trail", 5.0), ("up", 5.0)]).await;
    assert_eq!(
        (result(&m, "up", "match"), result(&m, "up", "skipped")),
        (2.0, 3.0),
        "max_in_flight 2 counts uploads from their headers: {:?}",
        results(&m, "up")
    );
    assert_eq!(
        result(&m, "trail", "match"),
        5.0,
        "shadowed when the trailers came: {:?}",
        results(&m, "trail")
    );
}
