//! The request flow, written once over a host interface. Each host is an
//! adapter that maps its callbacks to these functions and implements the
//! two traits below with its own calls: `src/filter/` (proxy-wasm),
//! `src/module/` (the native Envoy module), the fake host of the tests
//! (`fake.rs`, also driven by the `flow` fuzz target through `fuzz.rs`).
//!
//! One file per concern:
//!
//! - `exchange.rs`: one HTTP exchange, the steps each stream callback runs
//!   (a host's callbacks call these and nothing else);
//! - `request.rs`: the request path (headers read once, decision, target
//!   header, breaker admission);
//! - `response.rs`: the response path (outcome, counters, histogram,
//!   guard counts, breaker outcome);
//! - `counters.rs`: stats, counters accumulated per worker and flushed on
//!   the tick;
//! - `breaker.rs`: the breaker's process-wide state (a compare-and-swap
//!   store), transitions reported;
//! - `guard.rs`: the guard's counts, judged seconds and trips in the
//!   process-wide store;
//! - `shadow.rs`: shadow calls to the side not chosen, their answers;
//! - `tick.rs`: configuring (stats defined, gauges taken over from the
//!   previous configuration) and the tick.
//!
//! What a configuration needs is split in two: a [`Plan`], read-only and
//! built once (`Send + Sync`: a host whose configuration object is shared
//! by all worker threads holds it in an `Arc`), and a [`Worker`], the
//! mutable state of one worker thread (proxy-wasm: of one VM; its cells are
//! plain `Cell`s, no atomics). The proxy-wasm host keeps both side by side
//! in one `Rc`.

pub mod breaker;
pub mod counters;
pub mod exchange;
pub mod guard;
pub mod request;
pub mod response;
pub mod shadow;
pub mod tick;

// The fake host and the fuzz target's driver: in the unit tests, and with
// the feature `fake-host` for `tests/fuzz` (never in a shipped build).
#[cfg(any(test, feature = "fake-host"))]
pub mod fake;
#[cfg(any(test, feature = "fake-host"))]
pub mod fuzz;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::config::Config;
use crate::decision::Reason;
use crate::stats::{GrpcStats, Kind, LocalCounters, RouteStats, ShadowStats};
pub use counters::Metric;
pub use exchange::Exchange;

/// Process-wide host services: clock, metrics, the store shared by every
/// worker (breaker and guard state), calls out and their answers.
pub trait Host {
    /// The host's wall clock, since the Unix epoch.
    fn now(&self) -> Duration;

    /// The host's wall clock in ms since the epoch (the clock the core
    /// works with).
    fn now_ms(&self) -> u64 {
        self.now().as_millis() as u64
    }

    /// Defines a metric; its id (`None`: the host refused it).
    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32>;
    /// Sets a gauge or records a histogram sample.
    fn record_metric(&self, id: u32, value: u64);
    /// Adds `delta` to a counter.
    fn increment_metric(&self, id: u32, delta: u64);

    /// The store's value at `key` (empty if none) and its compare-and-swap
    /// token; `None` if the host cannot read it.
    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)>;
    /// Stores `value` (`None`: removes it) if `cas` is still current
    /// (`None`: unconditionally); whether it was stored.
    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool;

    /// Sends a call out; its token (`None`: the host refused it). The
    /// answer comes back through [`shadow::on_answer`]. By default a host
    /// sends no calls (the flow counts the shadow `error`), and has no
    /// answer to read.
    fn send_call(&self, _call: shadow::Call) -> Option<u32> {
        None
    }
    /// A header of the answer being delivered.
    fn call_response_header(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }
    /// The body of the answer being delivered (`size` bytes).
    fn call_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        None
    }
    /// A trailer of the answer being delivered (`grpc-status`).
    fn call_response_trailer(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }
}

/// One HTTP stream as the host shows it to the flow.
pub trait Stream {
    /// Every request header, serialized in [`crate::headers`]'s layout
    /// (one host call); empty when the host reads headers one by one.
    fn request_headers(&self) -> Vec<u8>;
    /// One request header's first value (one host call).
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    /// Answers the request locally; the upstream is never asked.
    fn send_local_reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>);
    /// The decision's reason, for spans and access logs (hosts may skip
    /// reasons [`Reason::published`] leaves out).
    fn publish_reason(&self, reason: Reason);
    /// One response header's first value.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Envoy's `response.flags` (read only for a 5xx).
    fn response_flags(&self) -> u64;
    /// The request body chunk just received (`size` bytes).
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// The response body chunk just received (`size` bytes).
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// One response trailer's first value (called only from the response
    /// trailers callback, for gRPC requests).
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>>;
}

/// What the host does with the stream after a flow step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// A local reply was sent: stop the stream here.
    Stop,
}

/// One configuration, as every worker reads it. Read-only after
/// [`tick::configure`].
pub struct Plan {
    pub config: Config,
    /// Which filter it belongs to ([`Config::filter_identity`]).
    pub filter: u64,
    /// Index = route index.
    pub stats: Vec<RouteStats<Metric>>,
    /// Index = route index; `None` for routes without `outlier`.
    pub breakers: Vec<Option<breaker::Slot>>,
    /// Index = route index; `None` for routes without `guard`.
    pub guards: Vec<Option<guard::Slot>>,
    /// Index = route index; `None` for routes without `grpc`.
    pub grpc: Vec<Option<GrpcStats<Metric>>>,
    /// Index = route index; `None` for routes without `shadow`.
    pub shadows: Vec<Option<ShadowStats<Metric>>>,
    pub unmatched: Metric,
    /// Host id of every counter, by [`crate::stats::CounterId`].
    counter_ids: Vec<Option<u32>>,
}

/// One worker's state for a [`Plan`].
pub struct Worker {
    pub counters: LocalCounters,
    /// Index = route index (empty windows for routes without a breaker).
    breakers: Vec<breaker::Local>,
    /// Index = route index.
    guards: Vec<guard::Local>,
    shadows: shadow::Shadows,
}

impl Worker {
    /// A worker's state for `plan` (the first worker's comes from
    /// [`tick::configure`]).
    pub fn new(plan: &Plan) -> Worker {
        Worker::with_counters(plan, LocalCounters::with_host_ids(&plan.counter_ids))
    }

    /// `counters`: cells for every counter of `plan`.
    fn with_counters(plan: &Plan, counters: LocalCounters) -> Worker {
        Worker {
            counters,
            breakers: plan
                .config
                .routes
                .iter()
                .map(|_| Default::default())
                .collect(),
            guards: plan
                .config
                .routes
                .iter()
                .map(|_| Default::default())
                .collect(),
            shadows: shadow::Shadows::new(&plan.config),
        }
    }
}

/// A decided request waiting for its response.
#[derive(Debug)]
pub struct Pending {
    pub route: usize,
    pub target: crate::config::Target,
    pub start_ms: u64,
    /// Sent to the service under a breaker: how it was admitted.
    pub admitted: Option<breaker::Admitted>,
    /// A gRPC request (`content-type`, see [`crate::grpc::is_grpc`]): its
    /// outcome is its `grpc-status`.
    pub grpc: bool,
}

/// The share in force for route `index` at `now`: 0 while its guard is
/// tripped, else its percent or ramp step.
pub fn basis_points(plan: &Plan, worker: &Worker, index: usize, now: u64) -> u16 {
    match plan.config.routes.get(index) {
        Some(_) if guard::tripped(plan, worker, index) => 0,
        Some(r) => r.basis_points_at(now),
        None => 0,
    }
}

#[cfg(test)]
mod threads {
    fn send_sync<T: Send + Sync>() {}

    /// A native host shares the plan between worker threads.
    #[test]
    fn plan_is_send_and_sync() {
        send_sync::<super::Plan>();
    }
}
