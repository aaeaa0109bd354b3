//! The breaker's process-wide state in the host's store.
//!
//! One key per (filter, route, service, path) holds the [`Breaker`]; a
//! healthy breaker is the empty value, so the request path's one read copies nothing into the
//! worker, and a success of a request admitted while healthy needs no
//! access at all. Changes are compare-and-swap, retried. Routes with
//! `failure_rate` also count outcomes in a per-worker [`Window`] (worker
//! memory), merged into a second key on the tick and read on a failure.

use std::cell::RefCell;

use super::counters::{self, Metric};
use super::{Host, Plan, Worker};
use crate::breaker::{Admission, Breaker, Settings, State, Ticket, Transition, Window};
use crate::config::Route;
use crate::stats::{BreakerStats, LocalCounters};

/// Compare-and-swap attempts before an update is dropped.
const CAS_ATTEMPTS: usize = 32;

/// The store key listing every breaker key this store ever held (one per
/// line), so their number is observable (`traffic_shift_breaker_keys`).
const REGISTRY_KEY: &str = "traffic_shift.breaker.keys";

/// Where a route's breaker lives and what it reports to.
pub struct Slot {
    key: String,
    /// Routes with `failure_rate`: the merged window's key.
    window_key: Option<String>,
    pub stats: BreakerStats<Metric>,
}

impl Slot {
    /// The store key of the breaker state.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// One worker's outcomes not merged yet (routes with `failure_rate`).
#[derive(Default)]
pub struct Local(RefCell<Window>);

/// How a request bound to the service was admitted, for its outcome.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub ticket: Ticket,
    /// The breaker was healthy when the request was admitted.
    pub healthy: bool,
}

/// Runs `f` on the breaker state at `key` (whose current value may be
/// given) and stores the result, retrying on a concurrent write. `f` may
/// run several times; only the result of the run that was stored is
/// returned.
fn update<R>(
    host: &impl Host,
    key: &str,
    mut first: Option<(Vec<u8>, Option<u32>)>,
    mut f: impl FnMut(&mut Breaker) -> R,
) -> Option<(R, Breaker)> {
    for _ in 0..CAS_ATTEMPTS {
        let (before, cas) = match first.take() {
            Some(read) => read,
            None => host.store_get(key)?,
        };
        let mut b = Breaker::decode(&before).unwrap_or_default();
        let r = f(&mut b);
        let after = b.encode();
        if after == before || host.store_set(key, Some(&after), cas) {
            return Some((r, b));
        }
    }
    log::warn!("breaker {key}: update dropped after {CAS_ATTEMPTS} concurrent writes");
    None
}

fn registry_len(registry: &[u8]) -> usize {
    registry
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// Adds `key` to the registry (compare-and-swap, retried); the number of
/// keys registered.
fn register_key(host: &impl Host, key: &str) -> Option<usize> {
    for _ in 0..CAS_ATTEMPTS {
        let (mut registry, cas) = host.store_get(REGISTRY_KEY)?;
        if registry.split(|&b| b == b'\n').any(|l| l == key.as_bytes()) {
            return Some(registry_len(&registry));
        }
        registry.extend_from_slice(key.as_bytes());
        registry.push(b'\n');
        if host.store_set(REGISTRY_KEY, Some(&registry), cas) {
            return Some(registry_len(&registry));
        }
    }
    None
}

/// Logs a transition, counts openings, sets the state gauge.
fn report(
    host: &impl Host,
    route: &Route,
    stats: &BreakerStats<Metric>,
    c: &LocalCounters,
    t: &Transition,
) {
    if t.to == State::Open {
        counters::count(c, stats.opened);
        log::warn!(
            "breaker of route \"{}\" (service {}): {:?} -> Open: {}; service ejected for {} ms",
            route.name,
            route.service,
            t.from,
            t.reason,
            t.ejection_ms
        );
    } else {
        log::warn!(
            "breaker of route \"{}\" (service {}): {:?} -> {:?}: {}",
            route.name,
            route.service,
            t.from,
            t.to,
            t.reason
        );
    }
    counters::record(host, stats.state, t.to as u64);
}

/// A key never written in this process inherits the state an earlier
/// release kept under the route's key without filter identity
/// ([`Route::breaker_key`]), so an upgrade (new `.wasm`, same vm_id) keeps
/// an open breaker open. Once the key was written it never looks back (an
/// old state cannot come back after the breaker closed). The old key is
/// left as it is (a rollback reads it).
fn inherit(host: &impl Host, key: &str, legacy: Option<String>) {
    let Some(legacy) = legacy else {
        return;
    };
    // No compare-and-swap token: the key was never written.
    if !matches!(host.store_get(key), Some((_, None))) {
        return;
    }
    let Some((old, _)) = host.store_get(&legacy) else {
        return;
    };
    if old.is_empty() || Breaker::decode(&old).is_none() {
        return;
    }
    if host.store_set(key, Some(&old), None) {
        log::info!("breaker {key}: state inherited from {legacy}");
    }
}

impl Slot {
    /// The slot of `route` in the filter `filter`
    /// ([`crate::config::Config::filter_identity`]), if it has a breaker;
    /// inherits an earlier release's state ([`inherit`]), registers its key
    /// and returns the number of breaker keys known.
    pub fn new(
        host: &impl Host,
        route: &Route,
        filter: u64,
        stats: BreakerStats<Metric>,
    ) -> Option<(Slot, Option<usize>)> {
        let key = route.breaker_key_in(filter)?;
        inherit(host, &key, route.breaker_key());
        let keys = register_key(host, &key);
        let rate = route.outlier.as_ref()?.failure_rate.as_ref();
        Some((
            Slot {
                window_key: rate.map(|_| format!("{key}.window")),
                key,
                stats,
            },
            keys,
        ))
    }

    /// Request path, for a request the split sent to the service: one read
    /// of the state; a write only when the breaker is not healthy and the
    /// admission changes it (a probe slot, a time-driven transition).
    /// Also says whether the breaker was healthy.
    pub fn admit(
        &self,
        host: &impl Host,
        route: &Route,
        s: &Settings,
        c: &LocalCounters,
        now: u64,
    ) -> (Admission, bool) {
        let Some((bytes, cas)) = host.store_get(&self.key) else {
            return (Admission::Pass, false);
        };
        if bytes.is_empty() {
            return (Admission::Pass, true);
        }
        match update(host, &self.key, Some((bytes, cas)), |b| b.admit(s, now)) {
            Some(((admission, t), _)) => {
                if let Some(t) = t {
                    report(host, route, &self.stats, c, &t);
                }
                (admission, false)
            }
            None => (Admission::Pass, false),
        }
    }

    /// Response path: the outcome of a request sent to the service. No
    /// store access for a success admitted while the breaker was healthy
    /// (the common case); otherwise one compare-and-swap (plus one read of
    /// the merged window for a failure on a failure-rate route).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        host: &impl Host,
        local: &Local,
        route: &Route,
        s: &Settings,
        c: &LocalCounters,
        now: u64,
        failure: bool,
        a: Admitted,
    ) {
        let rate = s.failure_rate.as_ref();
        if let Some(rate) = rate {
            local.0.borrow_mut().add(rate.window_ms, now, failure);
        }
        if !failure && a.healthy && a.ticket == Ticket::Pass {
            return;
        }
        let window = match (&self.window_key, rate, failure) {
            (Some(key), Some(rate), true) => {
                let mut w = host
                    .store_get(key)
                    .and_then(|(b, _)| Window::decode(&b))
                    .unwrap_or_default();
                w.merge(&local.0.borrow(), rate.window_ms, now);
                Some(w)
            }
            _ => None,
        };
        let stored = update(host, &self.key, None, |b| {
            b.record(s, now, failure, a.ticket, window.as_ref())
        });
        if let Some((Some(t), _)) = stored {
            report(host, route, &self.stats, c, &t);
        }
    }

    /// The tick: merges this worker's window into the shared one, runs the
    /// time-driven transitions and the failure-rate check, sets the gauge.
    pub fn tick(
        &self,
        host: &impl Host,
        local: &Local,
        route: &Route,
        s: &Settings,
        c: &LocalCounters,
        now: u64,
    ) {
        let merged = match (&self.window_key, &s.failure_rate) {
            (Some(k), Some(rate)) => self.merge(host, local, k, rate.window_ms, now),
            _ => None,
        };
        let stored = update(host, &self.key, None, |b| {
            b.advance(s, now)
                .or_else(|| b.check_rate(s, now, merged.as_ref()?))
        });
        if let Some((t, b)) = stored {
            if let Some(t) = t {
                report(host, route, &self.stats, c, &t);
            }
            counters::record(host, self.stats.state, b.state() as u64);
        }
    }

    /// Adds the local window into the shared one; the merged window.
    fn merge(
        &self,
        host: &impl Host,
        local: &Local,
        key: &str,
        window_ms: u64,
        now: u64,
    ) -> Option<Window> {
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = host.store_get(key)?;
            let mut w = Window::decode(&bytes).unwrap_or_default();
            let l = local.0.borrow();
            if l.is_empty() {
                return Some(w);
            }
            w.merge(&l, window_ms, now);
            drop(l);
            if host.store_set(key, Some(&w.encode()), cas) {
                local.0.borrow_mut().clear();
                return Some(w);
            }
        }
        None
    }
}

/// The slot, settings and worker window of route `index`, if it has a
/// breaker.
pub fn of<'a>(
    plan: &'a Plan,
    worker: &'a Worker,
    index: usize,
) -> Option<(&'a Route, &'a Settings, &'a Slot, &'a Local)> {
    let route = plan.config.routes.get(index)?;
    let settings = route.outlier.as_ref()?;
    let slot = plan.breakers.get(index)?.as_ref()?;
    let local = worker.breakers.get(index)?;
    Some((route, settings, slot, local))
}
