//! Stats: counters accumulate in worker memory and reach the host on the
//! tick; gauges and histograms go to the host at once.

use super::Host;
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
pub fn define(host: &impl Host, counters: &mut LocalCounters, kind: Kind, name: &str) -> Metric {
    let id = host.define_metric(kind, name);
    match kind {
        Kind::Counter => Metric::Counter(counters.register(id)),
        Kind::Gauge | Kind::Histogram => Metric::Host(id),
    }
}

/// Adds one to a counter (worker memory only).
pub fn count(counters: &LocalCounters, m: Metric) {
    if let Metric::Counter(id) = m {
        counters.add(id, 1);
    }
}

/// Sets a gauge or records a histogram sample.
pub fn record(host: &impl Host, m: Metric, value: u64) {
    if let Metric::Host(Some(id)) = m {
        host.record_metric(id, value);
    }
}

/// Hands every accumulated delta to the host.
pub fn flush(host: &impl Host, counters: &LocalCounters) {
    counters.drain(|id, delta| host.increment_metric(id, delta));
}
