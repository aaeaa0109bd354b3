//! Stats: counters accumulate in VM memory and reach the host on the tick;
//! gauges and histograms go to the host at once.

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

/// Defines `name` with the host; counters also get a local cell.
pub fn define(counters: &mut LocalCounters, kind: Kind, name: &str) -> Metric {
    let t = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
    };
    let id = hostcalls::define_metric(t, name).ok();
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
