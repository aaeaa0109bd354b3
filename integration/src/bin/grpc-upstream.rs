//! A gRPC upstream (tonic, HTTP/2 cleartext) for tests and the bench.
//!
//! `grpc-upstream --name NAME --listen 127.0.0.1:0 [--code N] [--fail-percent P] [--message TEXT]`
//!
//! Prints `listening on ADDR` as its first line of stdout, then serves two
//! services whose messages come with envoy-types (no code generation here):
//!
//! - unary `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`:
//!   answers `RateLimitResponse { raw_body: TEXT }` (TEXT defaults to NAME),
//!   or fails with gRPC status N (a trailers-only response, as tonic sends
//!   an error before any message);
//! - streaming `envoy.service.discovery.v3.AggregatedDiscoveryService/
//!   StreamAggregatedResources`: sends one `DiscoveryResponse {
//!   version_info: NAME }`, then ends with status N in the trailers (or OK).
//!
//! P percent of the RPCs fail (default 100 when `--code` is given, else 0),
//! spread evenly and deterministically: RPC i (from 0) fails when
//! `floor((i+1)·P/100) > floor(i·P/100)`. The unary RPCs and the streams
//! share the count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};

const USAGE: &str =
    "usage: grpc-upstream [--name NAME] [--listen ADDR] [--code N] [--fail-percent P] [--message TEXT]";

#[derive(Clone)]
struct Svc(Arc<Opts>);

struct Opts {
    name: String,
    message: String,
    code: Code,
    fail_percent: u64,
    served: AtomicU64,
}

impl Opts {
    /// The status this RPC ends with (`None`: OK).
    fn next_failure(&self) -> Option<Status> {
        let i = self.served.fetch_add(1, Ordering::Relaxed);
        let p = self.fail_percent;
        ((i + 1) * p / 100 > i * p / 100)
            .then(|| Status::new(self.code, format!("{} fails this RPC", self.name)))
    }
}

#[tonic::async_trait]
impl RateLimitService for Svc {
    async fn should_rate_limit(
        &self,
        _: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        if let Some(s) = self.0.next_failure() {
            return Err(s);
        }
        Ok(Response::new(RateLimitResponse {
            raw_body: self.0.message.clone().into_bytes(),
            ..Default::default()
        }))
    }
}

type Sotw = ReceiverStream<Result<DiscoveryResponse, Status>>;
type Delta = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = Sotw;
    type DeltaAggregatedResourcesStream = Delta;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Sotw>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx
            .send(Ok(DiscoveryResponse {
                version_info: self.0.name.clone(),
                ..Default::default()
            }))
            .await;
        if let Some(s) = self.0.next_failure() {
            let _ = tx.send(Err(s)).await;
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Delta>, Status> {
        Err(Status::unimplemented("no delta"))
    }
}

fn parse(args: &[String]) -> Result<(Opts, SocketAddr), String> {
    let mut name = "grpc-upstream".to_string();
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut code = None;
    let mut fail_percent = None;
    let mut message = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = value.clone(),
            "--listen" => listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--code" => {
                let n: i32 = value.parse().map_err(|e| format!("--code: {e}"))?;
                code = Some(Code::from_i32(n));
            }
            "--fail-percent" => {
                let p: u64 = value.parse().map_err(|e| format!("--fail-percent: {e}"))?;
                if p > 100 {
                    return Err(format!("--fail-percent: at most 100, got {p}"));
                }
                fail_percent = Some(p);
            }
            "--message" => message = Some(value.clone()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let fail_percent = fail_percent.unwrap_or(if code.is_some() { 100 } else { 0 });
    Ok((
        Opts {
            message: message.unwrap_or_else(|| name.clone()),
            name,
            code: code.unwrap_or(Code::Unavailable),
            fail_percent,
            served: AtomicU64::new(0),
        },
        listen,
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (opts, listen) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("grpc-upstream: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("grpc-upstream: {listen}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("listening on {a}"),
        Err(e) => {
            eprintln!("grpc-upstream: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    let svc = Svc(Arc::new(opts));
    let server = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(svc.clone()))
        .add_service(AggregatedDiscoveryServiceServer::new(svc))
        .serve_with_incoming(TcpListenerStream::new(listener));
    if let Err(e) = server.await {
        eprintln!("grpc-upstream: {e}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
