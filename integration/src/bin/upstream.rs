//! A demo upstream that says which cluster served the request.
//!
//! `upstream --name monolith --listen 127.0.0.1:0 [--status 200] [--delay-ms 0] [--threads 2] [--bare]`
//!
//! Prints `listening on ADDR` as its first line of stdout, then answers every
//! request with the configured status, a header `x-served-by: NAME` and a JSON
//! body `{"served_by": NAME, "headers": {...request headers...}}` so tests can
//! see exactly what reached the upstream.
//!
//! Control (for tests, straight to the upstream, not through Envoy):
//! `PUT /__upstream/status/<code>`, `PUT /__upstream/delay-ms/<ms>` and
//! `PUT /__upstream/fail-every/<n>` (every n-th request answers 500; 0: off),
//! `PUT /__upstream/body/<text>` (answer with this body instead of the JSON;
//! `-`: back to the JSON) and `PUT /__upstream/header/<name>=<value>` (add
//! this response header; `-`: none) change how every later request is
//! answered. `PUT /__upstream/api/on` (`off`: back) answers like a real
//! JSON API instead (see [`api_body`]): a per-call `id` and
//! `generated_at`, keys in another order on every upstream but the
//! monolith, and a real difference on paths containing `/differ`. `GET /__upstream/shadows` lists the method and headers of the
//! requests that carried `x-shift-shadow` (the last 1,000), as JSON. `--bare` (for load tests) answers
//! with just the header and the name, to keep the upstream's CPU out of the
//! way of what is measured (a request with `x-bare-json` gets the API
//! mode's JSON instead: the bench's JSON compare variant).
//!
//! WebSocket: a request with `upgrade: websocket` is answered `101` (after
//! the delay, when the configured status is 2xx; otherwise with that status,
//! a refused upgrade) and then echoes: each text message `M` comes back as
//! `NAME: M`, binary messages as they are.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct Opts {
    name: String,
    listen: SocketAddr,
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// Every n-th request answers 500 (0: off); `served` counts them.
    fail_every: AtomicU64,
    served: AtomicU64,
    /// A fixed body instead of the JSON.
    body: Mutex<Option<String>>,
    /// An extra response header.
    header: Mutex<Option<(String, String)>>,
    /// Answer as a JSON API ([`api_body`]).
    api: AtomicBool,
    /// Method and headers of requests carrying `x-shift-shadow`.
    shadows: Mutex<Vec<serde_json::Value>>,
    threads: usize,
    bare: bool,
}

const USAGE: &str = "usage: upstream [--name NAME] [--listen ADDR] [--status CODE] [--delay-ms MS] [--threads N] [--bare]";

const HELP: &str =
    "upstream [--name NAME] [--listen ADDR] [--status CODE] [--delay-ms MS] [--threads N] [--bare]

A demo upstream: answers every request with status CODE (200), after MS
milliseconds (0), a header x-served-by: NAME (upstream) and a JSON body of
the request headers it received (--bare: just NAME). Prints `listening on
ADDR` first; --listen 127.0.0.1:0 (the default) picks a free port. PUT
/__upstream/status/<code> and /__upstream/delay-ms/<ms> change later answers.";

/// `None`: `--help` was asked for.
fn parse_args() -> Result<Option<Opts>, String> {
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "--help" || a == "-h")
    {
        return Ok(None);
    }
    let mut opts = Opts {
        name: "upstream".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        status: AtomicU16::new(200),
        delay_ms: AtomicU64::new(0),
        fail_every: AtomicU64::new(0),
        served: AtomicU64::new(0),
        body: Mutex::new(None),
        header: Mutex::new(None),
        api: AtomicBool::new(false),
        shadows: Mutex::new(Vec::new()),
        threads: 2,
        bare: false,
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        if flag == "--bare" {
            opts.bare = true;
            continue;
        }
        if !["--name", "--listen", "--status", "--delay-ms", "--threads"].contains(&flag.as_str()) {
            return Err(format!("unknown flag {flag:?}"));
        }
        let value = args
            .next()
            .ok_or(format!("{flag} needs a value"))?
            .into_string()
            .map_err(|v| format!("{flag}: not UTF-8: {v:?}"))?;
        match flag.as_str() {
            "--name" => opts.name = value,
            "--listen" => opts.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--status" => {
                let code = value
                    .parse::<u16>()
                    .ok()
                    .filter(|s| StatusCode::from_u16(*s).is_ok())
                    .ok_or(format!("--status: not a status code: {value}"))?;
                opts.status = AtomicU16::new(code);
            }
            "--delay-ms" => {
                opts.delay_ms =
                    AtomicU64::new(value.parse().map_err(|e| format!("--delay-ms: {e}"))?)
            }
            "--threads" => opts.threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Some(opts))
}

/// `PUT /__upstream/<setting>/<value>`: changes a setting, answers 204.
fn control(opts: &Opts, req: &Request<hyper::body::Incoming>) -> Option<Response<Full<Bytes>>> {
    let rest = req.uri().path().strip_prefix("/__upstream/")?;
    if req.method() == hyper::Method::GET && rest == "shadows" {
        let list = opts.shadows.lock().map(|l| l.clone()).unwrap_or_default();
        let body = serde_json::Value::Array(list).to_string();
        return Some(Response::new(Full::new(Bytes::from(body))));
    }
    if req.method() != hyper::Method::PUT {
        return None;
    }
    let (setting, value) = rest.split_once('/')?;
    let ok = match setting {
        "status" => value
            .parse::<u16>()
            .ok()
            .filter(|s| StatusCode::from_u16(*s).is_ok())
            .map(|s| opts.status.store(s, Ordering::SeqCst))
            .is_some(),
        "delay-ms" => value
            .parse::<u64>()
            .map(|d| opts.delay_ms.store(d, Ordering::SeqCst))
            .is_ok(),
        "api" => {
            opts.api.store(value == "on", Ordering::SeqCst);
            value == "on" || value == "off"
        }
        "fail-every" => value
            .parse::<u64>()
            .map(|n| opts.fail_every.store(n, Ordering::SeqCst))
            .is_ok(),
        "body" => opts
            .body
            .lock()
            .map(|mut b| *b = (value != "-").then(|| value.to_string()))
            .is_ok(),
        "header" => {
            let h = match value {
                "-" => Some(None),
                v => v
                    .split_once('=')
                    .filter(|(n, _)| !n.is_empty())
                    .map(|(n, v)| Some((n.to_string(), v.to_string()))),
            };
            h.and_then(|h| opts.header.lock().ok().map(|mut g| *g = h))
                .is_some()
        }
        _ => false,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = if ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::BAD_REQUEST
    };
    Some(resp)
}

/// Answers a WebSocket upgrade `101` and echoes on the upgraded connection.
fn websocket(opts: &Arc<Opts>, req: &mut Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    // RFC 8441 clients (WebSocket over HTTP/2) send no key and Envoy's
    // conversion to HTTP/1.1 adds none: answered without an accept header.
    let accept = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let upgrade = hyper::upgrade::on(req);
    let name = opts.name.clone();
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(m)) = ws.next().await {
            let reply = match m {
                Message::Text(t) => Message::text(format!("{name}: {}", t.as_str())),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                // Pings are answered by the library on the next write.
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut resp = answer(
        opts,
        StatusCode::SWITCHING_PROTOCOLS,
        Bytes::new(),
        false,
        None,
    );
    let h = resp.headers_mut();
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    if let Some(Ok(v)) = accept.map(|a| a.parse()) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn handle(opts: Arc<Opts>, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if let Some(resp) = control(&opts, &req) {
        return resp;
    }
    let delay = opts.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut status =
        StatusCode::from_u16(opts.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let every = opts.fail_every.load(Ordering::SeqCst);
    let n = opts.served.fetch_add(1, Ordering::SeqCst) + 1;
    if every > 0 && n.is_multiple_of(every) {
        status = StatusCode::INTERNAL_SERVER_ERROR;
    }
    let is_websocket = req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_websocket && status.is_success() {
        return websocket(&opts, &mut req);
    }
    if req.headers().contains_key("x-shift-shadow") {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_string(), v.into())
            })
            .collect();
        if let Ok(mut l) = opts.shadows.lock() {
            if l.len() >= 1_000 {
                l.remove(0);
            }
            l.push(serde_json::json!({"method": req.method().as_str(), "headers": headers}));
        }
    }
    let extra = opts.header.lock().ok().and_then(|h| h.clone());
    let extra = extra.and_then(|(n, v)| {
        Some((
            hyper::header::HeaderName::from_bytes(n.as_bytes()).ok()?,
            hyper::header::HeaderValue::from_str(&v).ok()?,
        ))
    });
    if let Some(fixed) = opts.body.lock().ok().and_then(|b| b.clone()) {
        return answer(&opts, status, Bytes::from(fixed), true, extra);
    }
    if opts.api.load(Ordering::SeqCst) {
        let (body, json) = api_body(&opts.name, req.uri().path(), n);
        return answer(&opts, status, Bytes::from(body), json, extra);
    }
    if opts.bare && req.headers().contains_key("x-bare-json") {
        // The bench's JSON variant: the API mode's body at `/`.
        let (body, json) = api_body(&opts.name, "/", n);
        return answer(&opts, status, Bytes::from(body), json, None);
    }
    if opts.bare {
        return answer(&opts, status, Bytes::from(opts.name.clone()), false, None);
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let body = serde_json::json!({"served_by": opts.name, "headers": headers}).to_string();
    answer(&opts, status, Bytes::from(body), true, extra)
}

/// SplitMix64, for per-call values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The body of the JSON API mode, and whether it is JSON. Every call gets
/// its own `id` and `generated_at` and its own `etag` in each item; the
/// monolith writes its keys in one order and every other upstream in
/// reverse (and `price` as `1.0`); on a path containing `/differ` the
/// other upstreams answer `price` 2 (a real difference); `/random` adds
/// 200 keys of random names; `/text` answers plain text (`/text-differ`:
/// another text on the other upstreams).
fn api_body(name: &str, path: &str, n: u64) -> (String, bool) {
    let monolith = name == "monolith";
    if path.contains("/text") {
        let differ = path.contains("/text-differ") && !monolith;
        let text = if differ {
            "hello, new world"
        } else {
            "hello, world"
        };
        return (text.to_string(), false);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = mix(n ^ (nanos as u64));
    let price = match (monolith, path.contains("/differ")) {
        (true, _) => "1",
        (false, false) => "1.0",
        (false, true) => "2",
    };
    let mut members = vec![
        format!(r#""id": "{name}-{n}""#),
        format!(r#""generated_at": {nanos}"#),
        format!(r#""path": {}"#, serde_json::Value::from(path)),
        format!(r#""price": {price}"#),
        format!(
            r#""items": [{{"sku": "a", "etag": "{:x}"}}, {{"sku": "b", "etag": "{:x}"}}]"#,
            mix(seed),
            mix(seed + 1)
        ),
    ];
    if path.contains("/random") {
        members.extend((0..200u64).map(|i| format!(r#""k{:x}": 1"#, mix(seed + 2 + i))));
    }
    if !monolith {
        members.reverse();
    }
    (format!("{{{}}}", members.join(", ")), true)
}

/// A response with `x-served-by`, the JSON content type when `json`, and
/// the extra header if one is set.
fn answer(
    opts: &Opts,
    status: StatusCode,
    body: Bytes,
    json: bool,
    extra: Option<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = opts.name.parse() {
        resp.headers_mut().insert("x-served-by", v);
    }
    if json {
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    if let Some((n, v)) = extra {
        resp.headers_mut().insert(n, v);
    }
    resp
}

fn main() {
    let opts = match parse_args() {
        Ok(Some(o)) => Arc::new(o),
        Ok(None) => {
            println!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("upstream: {e} ({USAGE})");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(serve(opts)),
        Err(e) => {
            eprintln!("upstream: cannot start runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn serve(opts: Arc<Opts>) {
    let listener = match TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: cannot listen on {}: {e}", opts.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(opts.listen);
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let opts = opts.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let opts = opts.clone();
                async move { Ok::<_, Infallible>(handle(opts, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}
