//! A small WebSocket client: tries a WebSocket route by hand, and measures
//! one (the bench's WebSocket variant).
//!
//! `ws URL [--header NAME:VALUE]... [--send TEXT]...`: connects, sends each
//! TEXT (default `hello`), prints each reply, closes.
//!
//! `ws URL --bench [--connections 32] [--seconds 5] [--key-header NAME]`:
//! `connections` connections each sending a 32-byte text message and
//! waiting for its echo, for `seconds`; each connection gets its own
//! `NAME: bench-<i>` header (default `x-user`). Prints one JSON line:
//! connections, messages, messages per second, echo latency p50/p99 in µs,
//! the side each connection landed on.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "ws URL [--header NAME:VALUE]... [--send TEXT]... | ws URL --bench [--connections N] [--seconds S] [--key-header NAME]";

struct Opts {
    url: String,
    headers: Vec<(String, String)>,
    send: Vec<String>,
    bench: bool,
    connections: usize,
    seconds: u64,
    key_header: String,
}

fn parse_args() -> Result<Opts, String> {
    // Lossy: a non-UTF-8 argument is named in the error, never a panic.
    let mut args = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    let mut opts = Opts {
        url: String::new(),
        headers: Vec::new(),
        send: Vec::new(),
        bench: false,
        connections: 32,
        seconds: 5,
        key_header: "x-user".into(),
    };
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--bench" => opts.bench = true,
            "--header" => {
                let v = value("--header")?;
                let (n, v) = v
                    .split_once(':')
                    .ok_or(format!("--header: not NAME:VALUE: {v:?}"))?;
                opts.headers.push((n.trim().into(), v.trim().into()));
            }
            "--send" => opts.send.push(value("--send")?),
            "--connections" => {
                opts.connections = value("--connections")?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--seconds" => {
                opts.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--key-header" => opts.key_header = value("--key-header")?,
            "-h" | "--help" => return Err(String::new()),
            u if u.starts_with("--") => return Err(format!("unknown flag {u:?}")),
            u if opts.url.is_empty() => opts.url = u.into(),
            u => return Err(format!("one URL only, got another: {u:?}")),
        }
    }
    if opts.url.is_empty() {
        return Err("no URL".into());
    }
    if opts.send.is_empty() {
        opts.send.push("hello".into());
    }
    Ok(opts)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a connection to `url` with `headers`.
async fn connect(url: &str, headers: &[(String, String)]) -> Result<Ws, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    for (n, v) in headers {
        let n = HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}"))?;
        let v = HeaderValue::from_str(v).map_err(|e| format!("{v}: {e}"))?;
        req.headers_mut().insert(n, v);
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            Err(format!("{url}: refused: HTTP {}", r.status()))
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// Sends `text`, waits for the text echo.
async fn exchange(ws: &mut Ws, text: &str) -> Result<String, String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(m) = ws.next().await {
        match m.map_err(|e| e.to_string())? {
            Message::Text(t) => return Ok(t.as_str().to_string()),
            Message::Close(_) => return Err("closed by the server".into()),
            _ => {}
        }
    }
    Err("connection ended".into())
}

async fn by_hand(o: &Opts) -> Result<(), String> {
    let mut ws = connect(&o.url, &o.headers).await?;
    for text in &o.send {
        println!("{}", exchange(&mut ws, text).await?);
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn bench(o: &Opts) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(o.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.connections {
        let mut headers = o.headers.clone();
        headers.push((o.key_header.clone(), format!("bench-{i}")));
        let url = o.url.clone();
        tasks.spawn(async move {
            let mut ws = connect(&url, &headers).await?;
            let mut latencies = Vec::new();
            let mut side = String::new();
            let msg = "0123456789abcdef0123456789abcdef";
            while Instant::now() < until {
                let t = Instant::now();
                let reply = exchange(&mut ws, msg).await?;
                latencies.push(t.elapsed().as_micros() as u64);
                if side.is_empty() {
                    side = reply.split(':').next().unwrap_or_default().to_string();
                }
            }
            let _ = ws.close(None).await;
            Ok::<_, String>((latencies, side))
        });
    }
    let mut all = Vec::new();
    let mut sides = std::collections::BTreeMap::<String, usize>::new();
    while let Some(r) = tasks.join_next().await {
        let (l, side) = r.map_err(|e| e.to_string())??;
        all.extend(l);
        *sides.entry(side).or_default() += 1;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let out = serde_json::json!({
        "connections": o.connections,
        "seconds": o.seconds,
        "messages": all.len(),
        "per_second": all.len() as f64 / o.seconds.max(1) as f64,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "sides": sides,
    });
    println!("{out}");
    Ok(())
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("ws: {e} (usage: {USAGE})");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ws: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(async {
        if opts.bench {
            bench(&opts).await
        } else {
            by_hand(&opts).await
        }
    });
    if let Err(e) = r {
        eprintln!("ws: {e}");
        std::process::exit(1);
    }
}
