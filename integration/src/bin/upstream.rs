//! A demo upstream that says which cluster served the request.
//!
//! `upstream --name monolith --listen 127.0.0.1:0 [--status 200] [--delay-ms 0] [--threads 2] [--bare]`
//!
//! Prints `listening on ADDR` as its first line of stdout, then answers every
//! request with the configured status, a header `x-served-by: NAME` and a JSON
//! body `{"served_by": NAME, "headers": {...request headers...}}` so tests can
//! see exactly what reached the upstream. `--bare` (for load tests) answers
//! with just the header and the name, to keep the upstream's CPU out of the
//! way of what is measured.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
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
    status: StatusCode,
    delay: Duration,
    threads: usize,
    bare: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        name: "upstream".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        status: StatusCode::OK,
        delay: Duration::ZERO,
        threads: 2,
        bare: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bare" {
            opts.bare = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => opts.name = value,
            "--listen" => opts.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--status" => {
                opts.status = value
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(format!("--status: not a status code: {value}"))?
            }
            "--delay-ms" => {
                opts.delay =
                    Duration::from_millis(value.parse().map_err(|e| format!("--delay-ms: {e}"))?)
            }
            "--threads" => opts.threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(opts)
}

async fn handle(opts: Arc<Opts>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if !opts.delay.is_zero() {
        tokio::time::sleep(opts.delay).await;
    }
    if opts.bare {
        let mut resp = Response::new(Full::new(Bytes::from(opts.name.clone())));
        *resp.status_mut() = opts.status;
        if let Ok(v) = opts.name.parse() {
            resp.headers_mut().insert("x-served-by", v);
        }
        return resp;
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
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = opts.status;
    if let Ok(v) = opts.name.parse() {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("upstream: {e}");
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
                .await;
        });
    }
}
