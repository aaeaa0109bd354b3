//! The guard's host side: outcomes counted per worker in worker memory,
//! merged into the host's store on the tick (where due seconds are judged),
//! a trip published there once and read back by every worker on its next
//! tick (so a trip reaches all workers within about two ticks). The request
//! path only reads a flag in worker memory; the evidence gauges are written
//! on the tick.

use std::cell::{Cell, RefCell};

use super::counters::{self, Metric};
use super::{Host, Plan, Worker};
use crate::config::{Route, Target};
use crate::guard::{Batches, Reason, Settings, Side, State};
use crate::stats::{GuardStats, LocalCounters};

/// Compare-and-swap attempts before a merge is left for the next tick.
const CAS_ATTEMPTS: usize = 32;

/// One route's guard.
pub struct Slot {
    pub key: String,
    pub stats: GuardStats<Metric>,
}

/// One route's guard in one worker.
#[derive(Default)]
pub struct Local {
    /// This worker's outcomes not merged yet, by second.
    batches: RefCell<Batches>,
    /// The trip as last read from the store.
    tripped: Cell<bool>,
}

impl Local {
    /// Request path: whether the route is rolled back.
    pub fn tripped(&self) -> bool {
        self.tripped.get()
    }

    /// Response path: counts one completed request (worker memory only).
    pub fn observe(&self, _s: &Settings, now: u64, target: Target, status: u16, latency_ms: u64) {
        let side = match target {
            Target::Monolith => Side::Monolith,
            Target::Service => Side::Service,
        };
        self.batches
            .borrow_mut()
            .add(now, side, status >= 500, latency_ms);
    }
}

impl Slot {
    pub fn new(route: &Route, stats: GuardStats<Metric>) -> Option<Slot> {
        Some(Slot {
            key: route.guard_key()?,
            stats,
        })
    }

    /// The tick: merges this worker's counts, judges the seconds that are
    /// due (unless already tripped), publishes a trip, reads the trip state
    /// and the evidence.
    #[allow(clippy::too_many_arguments)]
    pub fn tick(
        &self,
        host: &impl Host,
        local: &Local,
        route: &Route,
        s: &Settings,
        c: &LocalCounters,
        now: u64,
    ) {
        for _ in 0..CAS_ATTEMPTS {
            let Some((bytes, cas)) = host.store_get(&self.key) else {
                return;
            };
            let mut state = State::decode(&bytes).unwrap_or_default();
            let before = (state.tripped, state.judged_s);
            let batches = local.batches.borrow();
            let dirty = !batches.is_empty() && state.tripped.is_none();
            let trip = state.tick(s, &batches, now);
            drop(batches);
            let changed = dirty || before != (state.tripped, state.judged_s);
            let stored = !changed || host.store_set(&self.key, Some(&state.encode()), cas);
            if !stored {
                continue;
            }
            *local.batches.borrow_mut() = Batches::default();
            if let Some(t) = trip {
                counters::count(
                    c,
                    match t.reason {
                        Reason::Errors => self.stats.trips_errors,
                        Reason::Latency => self.stats.trips_latency,
                    },
                );
                log::warn!(
                    "guard of route \"{}\" (service {}) tripped on {}: {t} (over the last {} s); \
                     every request of the route goes to the monolith until its configuration changes",
                    route.name,
                    route.service,
                    t.reason.as_str(),
                    s.window_s
                );
            }
            local.tripped.set(state.tripped.is_some());
            counters::record(host, self.stats.tripped, u64::from(local.tripped.get()));
            let [errors, latency] = state.evidence_bp(s);
            counters::record(host, self.stats.evidence_errors, errors);
            counters::record(host, self.stats.evidence_latency, latency);
            return;
        }
    }
}

/// The guard of route `index`, if it has one.
pub fn of<'a>(
    plan: &'a Plan,
    worker: &'a Worker,
    index: usize,
) -> Option<(&'a Route, &'a Settings, &'a Slot, &'a Local)> {
    let route = plan.config.routes.get(index)?;
    let settings = route.guard.as_ref()?;
    let slot = plan.guards.get(index)?.as_ref()?;
    let local = worker.guards.get(index)?;
    Some((route, settings, slot, local))
}

/// Whether route `index` is rolled back by its guard.
pub fn tripped(plan: &Plan, worker: &Worker, index: usize) -> bool {
    of(plan, worker, index).is_some_and(|(_, _, _, g)| g.tripped())
}

/// Frees a guard key no configuration uses any more (the value goes; the
/// key name stays in the store, a few bytes).
pub fn release(host: &impl Host, key: &str) {
    let _ = host.store_set(key, None, None);
}
