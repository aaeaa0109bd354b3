//! `grpc-load --url http://HOST:PORT [--seconds S] [--concurrency C]`: a
//! small gRPC load generator for the bench (tonic client, one HTTP/2
//! connection, C unary `RateLimitService/ShouldRateLimit` RPCs in flight)
//! for S seconds (bounded: at most 600), then one line
//! `GRPCJSON {"requests", "duration_us", "errors", "latency_us": {"50", ..}}`
//! in the shape the bench reads from wrk.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tonic::transport::Channel;

const USAGE: &str = "usage: grpc-load --url http://HOST:PORT [--seconds S] [--concurrency C]";

fn parse() -> Result<(String, u64, usize), String> {
    let mut url = None;
    let mut seconds = 8;
    let mut concurrency = 32;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = Some(value),
            "--seconds" => {
                seconds = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=600).contains(s))
                    .ok_or(format!("--seconds: 1 to 600, got {value:?}"))?
            }
            "--concurrency" => {
                concurrency = value
                    .parse()
                    .ok()
                    .filter(|c| (1..=1024).contains(c))
                    .ok_or(format!("--concurrency: 1 to 1024, got {value:?}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((url.ok_or("--url is required")?, seconds, concurrency))
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let (url, seconds, concurrency) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("grpc-load: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let channel = match Channel::from_shared(url.clone()) {
        Ok(c) => c.timeout(Duration::from_secs(5)).connect().await,
        Err(e) => {
            eprintln!("grpc-load: {url}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let channel = match channel {
        Ok(c) => c,
        Err(e) => {
            eprintln!("grpc-load: {url}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut c = RateLimitServiceClient::new(channel.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                match c.should_rate_limit(RateLimitRequest::default()).await {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, e)) = r {
            lat.extend(l);
            errors += e;
        }
    }
    let duration_us = start.elapsed().as_micros() as u64;
    lat.sort_unstable();
    let mut pct = serde_json::Map::new();
    for (k, q) in [
        ("50", 50.0),
        ("75", 75.0),
        ("90", 90.0),
        ("95", 95.0),
        ("99", 99.0),
        ("99.9", 99.9),
    ] {
        pct.insert(k.into(), serde_json::json!(percentile(&lat, q)));
    }
    println!(
        "GRPCJSON {}",
        serde_json::json!({
            "requests": lat.len() as u64 + errors,
            "duration_us": duration_us,
            "errors": errors,
            "non2xx": errors,
            "socket_errors": 0,
            "latency_us": pct,
        })
    );
    std::process::ExitCode::SUCCESS
}
