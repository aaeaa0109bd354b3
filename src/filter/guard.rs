//! The guard's host side: outcomes counted per worker in VM memory, merged
//! into shared data on the tick (where due seconds are judged), a trip
//! published there once and read back by every worker on its next tick (so
//! a trip reaches all workers within about two ticks). The request path
//! only reads a flag in VM memory; the evidence gauges are written on the
//! tick.

use std::cell::{Cell, RefCell};

use proxy_wasm::hostcalls;

use super::counters::{self, Metric};
use super::Shared;
use crate::config::{Route, Target};
use crate::guard::{Batches, Reason, Settings, Side, State};
use crate::stats::{GuardStats, LocalCounters};

/// Compare-and-swap attempts before a merge is left for the next tick.
const CAS_ATTEMPTS: usize = 32;

/// One route's guard in this VM.
pub struct Slot {
    pub key: String,
    pub stats: GuardStats<Metric>,
    /// This worker's outcomes not merged yet.
    local: RefCell<Batches>,
    /// The trip as last read from shared data.
    tripped: Cell<bool>,
}

impl Slot {
    pub fn new(route: &Route, stats: GuardStats<Metric>) -> Option<Slot> {
        Some(Slot {
            key: route.guard_key()?,
            stats,
            local: RefCell::new(Batches::default()),
            tripped: Cell::new(false),
        })
    }

    /// Request path: whether the route is rolled back.
    pub fn tripped(&self) -> bool {
        self.tripped.get()
    }

    /// Response path: counts one completed request (VM memory only).
    pub fn observe(&self, _s: &Settings, now: u64, target: Target, status: u16, latency_ms: u64) {
        let side = match target {
            Target::Monolith => Side::Monolith,
            Target::Service => Side::Service,
        };
        self.local
            .borrow_mut()
            .add(now, side, status >= 500, latency_ms);
    }

    /// The tick: merges this worker's counts, judges the seconds that are
    /// due (unless already tripped), publishes a trip, reads the trip state
    /// and the evidence.
    pub fn tick(&self, route: &Route, s: &Settings, c: &LocalCounters, now: u64) {
        for _ in 0..CAS_ATTEMPTS {
            let Ok((bytes, cas)) = hostcalls::get_shared_data(&self.key) else {
                return;
            };
            let mut state = State::decode(&bytes.unwrap_or_default()).unwrap_or_default();
            let before = (state.tripped, state.judged_s);
            let local = self.local.borrow();
            let dirty = !local.is_empty() && state.tripped.is_none();
            let trip = state.tick(s, &local, now);
            drop(local);
            let changed = dirty || before != (state.tripped, state.judged_s);
            let stored = !changed
                || hostcalls::set_shared_data(&self.key, Some(&state.encode()), cas).is_ok();
            if !stored {
                continue;
            }
            *self.local.borrow_mut() = Batches::default();
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
            self.tripped.set(state.tripped.is_some());
            counters::record(self.stats.tripped, u64::from(self.tripped.get()));
            let [errors, latency] = state.evidence_bp(s);
            counters::record(self.stats.evidence_errors, errors);
            counters::record(self.stats.evidence_latency, latency);
            return;
        }
    }
}

/// The guard of route `index`, if it has one.
pub fn of(shared: &Shared, index: usize) -> Option<(&Route, &Settings, &Slot)> {
    let route = shared.config.routes.get(index)?;
    let settings = route.guard.as_ref()?;
    let slot = shared.guards.get(index)?.as_ref()?;
    Some((route, settings, slot))
}

/// Whether route `index` is rolled back by its guard.
pub fn tripped(shared: &Shared, index: usize) -> bool {
    of(shared, index).is_some_and(|(_, _, g)| g.tripped())
}

/// Frees a guard key no configuration uses any more (the value goes; the
/// key name stays in shared data, a few bytes).
pub fn release(key: &str) {
    let _ = hostcalls::set_shared_data(key, None, None);
}
