//! traffic-shift: strangler-fig traffic shifting inside Envoy.
//!
//! A proxy-wasm HTTP filter that, per route, hashes a request key into one of
//! 10,000 buckets and sends a configured share of the route's traffic to a new
//! service and the rest to the monolith.
//!
//! Where things live:
//! - [`config`]: plugin configuration JSON -> validated [`config::Config`];
//!   every error names its field path.
//! - [`fields`]: which fields differ, counted with a process-wide bound.
//! - [`decision`]: why a request went where it went (traces, access logs).
//! - [`breaker`]: the outlier-detection state machine (injected clock).
//! - [`guard`]: rolls a route back when its service does worse than the
//!   monolith (CUSUM detectors on per-second e-values with a false-trip
//!   bound per 24 h; injected clock).
//! - `guard_sim` (native only): the Monte-Carlo that drives [`guard`] for
//!   `traffic-shift guard-sim`.
//! - [`grpc`]: which requests are gRPC, status codes, failure codes.
//! - [`hash`]: the bucket formula (FNV-1a 64, a compatibility contract).
//! - [`headers`]: the request headers as one serialized map, read in place.
//! - [`ramp`]: ramp schedules (percent as a function of time), RFC 3339.
//! - [`routes`]: the route table (first match wins, cost flat in route count).
//! - [`shadow`]: shadow compare (the side not chosen answers too; verdicts,
//!   learned noise); [`compare`]: JSON bodies compared field by field.
//! - `callout` (native only): a call's answer as a native host collects
//!   it, and the mailbox that carries it to the worker that sent the call.
//! - [`cookie`]: finding one cookie in a `Cookie` header.
//! - [`stats`]: every stat name, the label regexes, response accounting.
//! - `envoy/` (native only, for the CLI): the Envoy bootstrap a
//!   configuration needs, and a lint of an existing one against it.
//! - [`flow`]: the request flow (request, response, breaker and guard
//!   state, shadow calls, the tick), written once over a `Host` and a
//!   `Stream` trait; tested natively with a fake host.
//! - `filter/` (wasm32 only): the proxy-wasm host: callbacks that call the
//!   flow, and the host calls behind its traits. Nothing in the core or
//!   the flow knows about proxy-wasm.
//! - `module/` (native, feature `module`): the Envoy dynamic-module host:
//!   `extern "C"` hooks that call the same flow (`make module`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod breaker;
#[cfg(not(target_arch = "wasm32"))]
pub mod callout;
pub mod compare;
pub mod config;
pub mod cookie;
pub mod decision;
#[cfg(not(target_arch = "wasm32"))]
pub mod envoy;
pub mod fields;
pub mod flow;
pub mod grpc;
pub mod guard;
#[cfg(not(target_arch = "wasm32"))]
pub mod guard_sim;
pub mod hash;
pub mod headers;
pub mod ramp;
pub mod routes;
pub mod shadow;
pub mod stats;
mod wire;

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(all(feature = "module", not(target_arch = "wasm32")))]
mod module;
