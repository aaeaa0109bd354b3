//! Configuring and the tick.
//!
//! [`configure`] defines a configuration's stats and builds its [`Plan`]
//! (and the first [`Worker`]); [`Live`] lists the configurations live in a
//! worker, says which of them ticks a store key or refreshes a gauge, and
//! zeroes what a deleted configuration alone set. A tick (1 s, per worker)
//! flushes the counters, runs the guards' and breakers' time-driven work
//! and merges their windows, and keeps the effective-percent gauges current
//! when no requests come.

use std::time::Duration;

use super::counters::{self, Metric};
use super::{basis_points, breaker, guard, shadow, Host, Plan, Worker};
use crate::config::Config;
use crate::stats::{self, BreakerStats, GrpcStats, GuardStats, Kind, LocalCounters, RouteStats};

/// How often each worker flushes its counters and runs the breakers' and
/// ramps' time-driven work. Counters reach Envoy's stats at most this late.
pub const TICK: Duration = Duration::from_secs(1);

/// Defines the stats of `config` and builds its plan and the state of the
/// worker that configured it. `filter`: which filter the configuration
/// belongs to ([`Config::filter_identity`]), for its breaker keys.
pub fn configure(host: &impl Host, config: Config, filter: u64) -> (Plan, Worker) {
    for (i, r) in config.routes.iter().enumerate() {
        let ratio = r.guard.as_ref().and_then(|g| g.max_latency_ratio);
        if ratio.is_some_and(|x| x < crate::guard::MIN_LATENCY_RATIO) {
            log::warn!(
                "routes[{i}].guard.max_latency_ratio is below one latency bucket: judged as 1.19"
            );
        }
    }
    let mut c = LocalCounters::default();
    let stats: Vec<RouteStats<Metric>> = config
        .routes
        .iter()
        .map(|r| {
            RouteStats::define(&r.name, &mut |k, n: &str| {
                counters::define(host, &mut c, k, n)
            })
        })
        .collect();
    let mut keys = None;
    let breakers = config
        .routes
        .iter()
        .map(|r| {
            r.outlier.as_ref()?;
            let bs = BreakerStats::define(&r.name, &mut |k, n: &str| {
                counters::define(host, &mut c, k, n)
            });
            let (slot, n) = breaker::Slot::new(host, r, filter, bs)?;
            keys = n.or(keys);
            Some(slot)
        })
        .collect();
    let guards = config
        .routes
        .iter()
        .map(|r| {
            r.guard.as_ref()?;
            let gs = GuardStats::define(&r.name, &mut |k, n: &str| {
                counters::define(host, &mut c, k, n)
            });
            guard::Slot::new(r, gs)
        })
        .collect();
    if let Some(n) = keys {
        let gauge = counters::define(host, &mut c, Kind::Gauge, &stats::breaker_keys_name());
        counters::record(host, gauge, n as u64);
    }
    let grpc = config
        .routes
        .iter()
        .map(|r| {
            r.grpc.as_ref()?;
            Some(GrpcStats::define(&r.name, &mut |k, n: &str| {
                counters::define(host, &mut c, k, n)
            }))
        })
        .collect();
    let shadows = shadow::define(host, &config, &mut c);
    let plan = Plan {
        grpc,
        filter,
        shadows,
        unmatched: counters::define(host, &mut c, Kind::Counter, &stats::unmatched_name()),
        stats,
        breakers,
        guards,
        counter_ids: c.host_ids().to_vec(),
        config,
    };
    let worker = Worker::with_counters(&plan, c);
    (plan, worker)
}

/// The gauges of one route, and its guard's store key.
#[derive(Clone)]
struct RouteGauges {
    name: String,
    effective_bp: Metric,
    breaker_state: Option<Metric>,
    /// The guard's gauges (tripped, evidence by reason) and store key.
    guard: Option<([Metric; 3], String)>,
}

/// One live configuration: the gauges it sets and the breaker keys it
/// holds.
struct Entry {
    id: u32,
    /// Which filter it belongs to ([`Plan::filter`]).
    filter: u64,
    gauges: Vec<RouteGauges>,
    breaker_keys: Vec<String>,
}

/// Every configuration live in one worker (proxy-wasm: one VM; its root
/// contexts not deleted yet), oldest first. A host keeps one per worker,
/// or one per process if its configurations are shared by every worker.
///
/// Envoy gives a configuration no identity beyond its plugin name, which
/// two filters of one VM may share, and a configuration update makes a new
/// configuration while the old one lives on until Envoy deletes it. So
/// nothing here is keyed by plugin name:
///
/// 1. a store key (breaker, guard) is ticked by the newest live
///    configuration holding it ([`Live::ticks`]);
/// 2. a route's effective-percent gauge is refreshed by the newest live
///    configuration with that route ([`Live::sets_gauge`]);
/// 3. when a configuration leaves ([`Live::leave`]), the gauges no other
///    live configuration sets are zeroed, and the guard keys no other live
///    configuration holds are released if a newer live configuration of
///    the same filter replaced it here. Without one the worker may be
///    going with its module (a new `.wasm`: fresh VMs with the same
///    `vm_id` share the store and read the trip from it), so the key is
///    left (a few kilobytes) rather than a rollback forgotten.
#[derive(Default)]
pub struct Live(Vec<Entry>);

impl Live {
    /// Whether `id` is the newest live configuration for which `holds` is
    /// true.
    fn newest(&self, id: u32, holds: impl Fn(&Entry) -> bool) -> bool {
        self.0
            .iter()
            .rev()
            .find(|x| holds(x))
            .is_some_and(|x| x.id == id)
    }

    /// Whether configuration `id` ticks store key `key` (breaker or
    /// guard): it is the newest live configuration holding it.
    pub fn ticks(&self, id: u32, key: &str) -> bool {
        self.newest(id, |x| {
            x.breaker_keys.iter().any(|k| k == key)
                || x.gauges
                    .iter()
                    .any(|g| g.guard.as_ref().is_some_and(|(_, k)| k == key))
        })
    }

    /// Whether configuration `id` keeps route `name`'s effective-percent
    /// gauge current: it is the newest live configuration with that route.
    pub fn sets_gauge(&self, id: u32, name: &str) -> bool {
        self.newest(id, |x| x.gauges.iter().any(|g| g.name == name))
    }

    /// Registers configuration `id` as the newest (replacing an earlier one
    /// of the same id, whose leftovers are cleared as by [`Live::leave`]).
    pub fn join(&mut self, host: &impl Host, id: u32, plan: &Plan) {
        let earlier = self.remove(id);
        self.0.push(Entry {
            id,
            filter: plan.filter,
            gauges: gauges(plan),
            breaker_keys: plan
                .breakers
                .iter()
                .flatten()
                .map(|b| b.key().to_string())
                .collect(),
        });
        if let Some((gone, _)) = earlier {
            // Its replacement is the configuration just joined.
            self.clear(host, &gone, true);
        }
    }

    /// Unregisters configuration `id` (the host deleted it): zeroes the
    /// gauges only it set (a removed or renamed route, a removed breaker
    /// or guard), so that no dashboard or alert reads a stale value, and
    /// frees guard state no live configuration uses if a newer one of the
    /// same filter replaced it (rule 3).
    pub fn leave(&mut self, host: &impl Host, id: u32) {
        if let Some((gone, replaced)) = self.remove(id) {
            self.clear(host, &gone, replaced);
        }
    }

    /// A configuration that left earlier (its id no longer live) is gone
    /// now: its last stream ended. Those streams may have opened or closed
    /// a breaker after it left, setting that breaker's state gauge again,
    /// so the state gauges of its routes that no live configuration sets
    /// go back to 0 (rule 3 once more). A host that drops a configuration
    /// after its last stream and only then calls [`Live::leave`] needs no
    /// call here.
    pub fn gone(&self, host: &impl Host, plan: &Plan) {
        let others = || self.0.iter().flat_map(|x| &x.gauges);
        for g in gauges(plan) {
            let Some(state) = g.breaker_state else {
                continue;
            };
            if !others().any(|o| o.name == g.name && o.breaker_state.is_some()) {
                counters::record(host, state, 0);
            }
        }
    }

    /// Removes `id`'s entry; it, and whether a newer live configuration
    /// of the same filter replaced it.
    fn remove(&mut self, id: u32) -> Option<(Entry, bool)> {
        let i = self.0.iter().position(|x| x.id == id)?;
        let gone = self.0.remove(i);
        let replaced = self.0.iter().skip(i).any(|x| x.filter == gone.filter);
        Some((gone, replaced))
    }

    /// Zeroes what `gone` set and no live configuration does; frees the
    /// guard keys it held and no live configuration does if `replaced`.
    fn clear(&self, host: &impl Host, gone: &Entry, replaced: bool) {
        let others = || self.0.iter().flat_map(|x| &x.gauges);
        for g in &gone.gauges {
            let same = || others().filter(|o| o.name == g.name);
            if same().next().is_none() {
                counters::record(host, g.effective_bp, 0);
            }
            if let Some(state) = g.breaker_state {
                if !same().any(|o| o.breaker_state.is_some()) {
                    counters::record(host, state, 0);
                }
            }
            if let Some((gauges, key)) = &g.guard {
                if !same().any(|o| o.guard.is_some()) {
                    for gauge in gauges {
                        counters::record(host, *gauge, 0);
                    }
                }
                if replaced && !others().any(|o| o.guard.as_ref().is_some_and(|(_, k)| k == key)) {
                    guard::release(host, key);
                }
            }
        }
    }
}

/// The gauges `plan` sets.
fn gauges(plan: &Plan) -> Vec<RouteGauges> {
    (0..plan.config.routes.len())
        .filter_map(|i| {
            Some(RouteGauges {
                name: plan.config.routes.get(i)?.name.clone(),
                effective_bp: plan.stats.get(i)?.effective_bp,
                breaker_state: plan.breakers.get(i)?.as_ref().map(|b| b.stats.state),
                guard: plan.guards.get(i)?.as_ref().map(|g| {
                    let st = &g.stats;
                    let gauges = [st.tripped, st.evidence_errors, st.evidence_latency];
                    (gauges, g.key.clone())
                }),
            })
        })
        .collect()
}

/// Sets every route's effective-percent gauge (on configuring).
pub fn publish_shares(host: &impl Host, plan: &Plan, worker: &Worker) {
    let now = host.now_ms();
    for (i, s) in plan.stats.iter().enumerate() {
        counters::record(
            host,
            s.effective_bp,
            u64::from(basis_points(plan, worker, i, now)),
        );
    }
}

/// The tick of configuration `id` (one of `live`): flushes its counters
/// and its shadow field counters ([`shadow::tick`]);
/// ticks the guard and breaker keys it is the newest to hold and refreshes
/// the gauges of the routes it is the newest to have (an old configuration
/// that a newer one replaced only flushes).
pub fn tick(host: &impl Host, plan: &Plan, worker: &Worker, live: &Live, id: u32) {
    counters::flush(host, &worker.counters);
    shadow::tick(host, plan, worker);
    let c = &worker.counters;
    let now = host.now_ms();
    for i in 0..plan.config.routes.len() {
        if let Some((route, settings, slot, local)) = guard::of(plan, worker, i) {
            if live.ticks(id, &slot.key) {
                slot.tick(host, local, route, settings, c, now);
            }
        }
        if let Some((route, settings, slot, local)) = breaker::of(plan, worker, i) {
            if live.ticks(id, slot.key()) {
                slot.tick(host, local, route, settings, c, now);
            }
        }
    }
    for (i, (route, s)) in plan.config.routes.iter().zip(&plan.stats).enumerate() {
        // Every route, not only ramped and guarded ones: when a new `.wasm`
        // replaces the VMs, the old VMs' configurations leave after the new
        // ones configured and zero the gauges only they set in their VM
        // ([`Live::leave`]); the next tick puts the share back.
        if live.sets_gauge(id, &route.name) {
            counters::record(
                host,
                s.effective_bp,
                u64::from(basis_points(plan, worker, i, now)),
            );
        }
    }
}

/// The configuration is going (the host dropped it and its last request
/// is done): shadows never answered end as `error`, counters go to the
/// host.
pub fn end(host: &impl Host, plan: &Plan, worker: &Worker) {
    shadow::abandon(plan, worker);
    counters::flush(host, &worker.counters);
    shadow::tick(host, plan, worker);
}

/// Builds configuration `id` of the filter the host names `plugin`
/// (`root_id`: the host's second name for it, empty if none): the plan,
/// the first worker's state; joins it to `live` as the newest and sets its
/// gauges.
pub fn start(
    host: &impl Host,
    live: &mut Live,
    id: u32,
    plugin: &str,
    root_id: &str,
    config: Config,
) -> (Plan, Worker) {
    let filter = config.filter_identity(plugin, root_id);
    let (plan, worker) = configure(host, config, filter);
    live.join(host, id, &plan);
    publish_shares(host, &plan, &worker);
    (plan, worker)
}
