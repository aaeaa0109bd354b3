//! Configuring and the tick.
//!
//! [`configure`] defines a configuration's stats and builds its [`Plan`]
//! (and the first [`Worker`]); [`take_over_gauges`] zeroes what the
//! previous configuration of the same plugin set and this one does not. A
//! tick (1 s, per worker) flushes the counters, runs the guards' and
//! breakers' time-driven work and merges their windows, and keeps the
//! effective-percent gauges current when no requests come.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use super::counters::{self, Metric};
use super::{basis_points, breaker, guard, shadow, Host, Plan, Worker};
use crate::config::Config;
use crate::stats::{self, BreakerStats, GuardStats, Kind, LocalCounters, RouteStats};

/// How often each worker flushes its counters and runs the breakers' and
/// ramps' time-driven work. Counters reach Envoy's stats at most this late.
pub const TICK: Duration = Duration::from_secs(1);

/// Defines the stats of `config` and builds its plan and the state of the
/// worker that configured it.
pub fn configure(host: &impl Host, config: Config) -> (Plan, Worker) {
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
            let (slot, n) = breaker::Slot::new(host, r, bs)?;
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
    let shadows = shadow::define(host, &config, &mut c);
    let plan = Plan {
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

/// The gauges a configuration set, by route name, so that the next
/// configuration of the same plugin can zero those it no longer sets.
#[derive(Default)]
struct Gauges {
    generation: u64,
    routes: Vec<RouteGauges>,
}

/// The gauges of one route, and its guard's store key.
#[derive(Clone)]
struct RouteGauges {
    name: String,
    effective_bp: Metric,
    breaker_state: Option<Metric>,
    guard: Option<(Metric, String)>,
}

thread_local! {
    /// Per plugin name: the gauges of the configuration in force in this
    /// worker.
    static IN_FORCE: RefCell<HashMap<String, Gauges>> = RefCell::new(HashMap::new());
}

/// The gauges `plan` sets.
fn gauges(plan: &Plan) -> Vec<RouteGauges> {
    (0..plan.config.routes.len())
        .filter_map(|i| {
            Some(RouteGauges {
                name: plan.config.routes.get(i)?.name.clone(),
                effective_bp: plan.stats.get(i)?.effective_bp,
                breaker_state: plan.breakers.get(i)?.as_ref().map(|b| b.stats.state),
                guard: plan
                    .guards
                    .get(i)?
                    .as_ref()
                    .map(|g| (g.stats.tripped, g.key.clone())),
            })
        })
        .collect()
}

/// Zeroes the gauges the previous configuration of `plugin` set and `plan`
/// does not (a removed or renamed route, a removed breaker or guard), so
/// that no dashboard or alert reads a stale value, and frees guard state no
/// configuration uses any more. Returns this configuration's generation.
pub fn take_over_gauges(host: &impl Host, plugin: &str, plan: &Plan) -> u64 {
    let now = gauges(plan);
    IN_FORCE.with(|m| {
        let mut m = m.borrow_mut();
        let entry = m.entry(plugin.to_string()).or_default();
        for old in &entry.routes {
            let kept = now.iter().find(|r| r.name == old.name);
            if kept.is_none() {
                counters::record(host, old.effective_bp, 0);
            }
            if let (Some(state), None) = (old.breaker_state, kept.and_then(|k| k.breaker_state)) {
                counters::record(host, state, 0);
            }
            if let Some((tripped, key)) = &old.guard {
                let new = kept.and_then(|k| k.guard.as_ref());
                if new.is_none() {
                    counters::record(host, *tripped, 0);
                }
                if new.is_none_or(|(_, k)| k != key) {
                    guard::release(host, key);
                }
            }
        }
        entry.generation += 1;
        entry.routes = now;
        entry.generation
    })
}

/// Whether `generation` is still the latest configuration of `plugin` in
/// this worker (an old configuration may tick until the host drops it).
pub fn in_force(plugin: &str, generation: u64) -> bool {
    IN_FORCE.with(|m| {
        m.borrow()
            .get(plugin)
            .is_some_and(|g| g.generation == generation)
    })
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

/// The tick. `in_force`: from [`in_force`]; an old configuration only
/// flushes its counters.
pub fn tick(host: &impl Host, plan: &Plan, worker: &Worker, in_force: bool) {
    counters::flush(host, &worker.counters);
    shadow::tick(host, plan, worker);
    if !in_force {
        return;
    }
    let c = &worker.counters;
    let now = host.now_ms();
    for i in 0..plan.config.routes.len() {
        if let Some((route, settings, slot, local)) = guard::of(plan, worker, i) {
            slot.tick(host, local, route, settings, c, now);
        }
        if let Some((route, settings, slot, local)) = breaker::of(plan, worker, i) {
            slot.tick(host, local, route, settings, c, now);
        }
    }
    for (i, ((route, s), g)) in plan
        .config
        .routes
        .iter()
        .zip(&plan.stats)
        .zip(&plan.guards)
        .enumerate()
    {
        if !route.ramp.is_empty() || g.is_some() {
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

/// Builds a configuration: the plan, the first worker's state, the gauges
/// taken over from the previous configuration of `plugin` and set; the
/// generation for [`in_force`].
pub fn start(host: &impl Host, plugin: &str, config: Config) -> (Plan, Worker, u64) {
    let (plan, worker) = configure(host, config);
    let generation = take_over_gauges(host, plugin, &plan);
    publish_shares(host, &plan, &worker);
    (plan, worker, generation)
}
