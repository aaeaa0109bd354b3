//! Stats: counters accumulate in VM memory and reach the host on the tick;
//! gauges and histograms go to the host at once.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::stats::{CounterId, Kind, LocalCounters};

/// A defined stat.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// A counter in [`LocalCounters`].
    Counter(CounterId),
    /// A gauge or histogram: its host id (`None`: the host refused it).
    Host(Option<u32>),
}

thread_local! {
    /// Host ids of the metrics this VM defined, by kind and name. Envoy
    /// hands out a new id (and keeps a new entry for the VM's lifetime) on
    /// every `define_metric`, even for a name it knows: without this cache
    /// every configuration update would grow Envoy's memory by an entry per
    /// stat and VM.
    static DEFINED: RefCell<HashMap<(Kind, String), Option<u32>>> = RefCell::new(HashMap::new());
}

/// The host id of `name`, defined once per VM.
fn host_id(kind: Kind, name: &str) -> Option<u32> {
    DEFINED.with(|d| {
        if let Some(id) = d.borrow().get(&(kind, name.to_string())) {
            return *id;
        }
        let t = match kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let id = hostcalls::define_metric(t, name).ok();
        d.borrow_mut().insert((kind, name.to_string()), id);
        id
    })
}

/// Defines `name` with the host (once per VM); counters also get a local
/// cell.
pub fn define(counters: &mut LocalCounters, kind: Kind, name: &str) -> Metric {
    let id = host_id(kind, name);
    match kind {
        Kind::Counter => Metric::Counter(counters.register(id)),
        Kind::Gauge | Kind::Histogram => Metric::Host(id),
    }
}

/// Adds one to a counter (VM memory only).
pub fn count(counters: &LocalCounters, m: Metric) {
    if let Metric::Counter(id) = m {
        counters.add(id, 1);
    }
}

/// Sets a gauge or records a histogram sample.
pub fn record(m: Metric, value: u64) {
    if let Metric::Host(Some(id)) = m {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Hands every accumulated delta to the host.
pub fn flush(counters: &LocalCounters) {
    counters.drain(|id, delta| {
        let _ = hostcalls::increment_metric(id, delta as i64);
    });
}
