//! The proxy-wasm glue: maps host callbacks and host calls to the core.
//! One file per host concern:
//!
//! - `request.rs`: the request path (headers read once, decision, target
//!   header, breaker admission);
//! - `response.rs`: the response path (outcome, counters, histogram,
//!   breaker outcome);
//! - `breaker.rs`: the breaker's process-wide state in shared data;
//! - `counters.rs`: stats, counters accumulated per VM and flushed on tick;
//! - `guard.rs`: the guard's windows and trips in shared data;
//! - `host.rs`: the bulk header read and the clock.
//! - `trace.rs`: the decision's reason as filter state (spans, logs).
//! - `shadow.rs`: shadow calls to the side not chosen, their answers.
//!
//! This file holds the contexts and their callbacks, each a short list of
//! steps. A tick (1 s, per VM) flushes the counters, runs the breakers'
//! time-driven transitions and merges their windows, and keeps the
//! effective-percent gauges current when no requests come.

mod breaker;
mod counters;
mod guard;
mod host;
mod request;
mod response;
mod shadow;
mod trace;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::{Config, Target};
use crate::stats::{self, BreakerStats, GuardStats, Kind, LocalCounters, RouteStats};
use counters::Metric;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, shared: None, plugin: String::new(), generation: 0 })
    });
}}

/// How often each VM flushes its counters and runs the breakers' and
/// ramps' time-driven work. Counters reach Envoy's stats at most this late.
const TICK: Duration = Duration::from_secs(1);

/// Everything one configuration needs, shared by its HTTP contexts.
pub(crate) struct Shared {
    config: Config,
    /// Index = route index.
    stats: Vec<RouteStats<Metric>>,
    /// Index = route index; `None` for routes without `outlier`.
    breakers: Vec<Option<breaker::Slot>>,
    /// Index = route index; `None` for routes without `guard`.
    guards: Vec<Option<guard::Slot>>,
    unmatched: Metric,
    counters: LocalCounters,
    shadows: shadow::Shadows,
}

impl Drop for Shared {
    /// Counts of requests that finished after the last tick.
    fn drop(&mut self) {
        shadow::abandon(self);
        counters::flush(&self.counters);
    }
}

/// The gauges a configuration set, by route name, so that the next
/// configuration of the same plugin can zero those it no longer sets.
#[derive(Default)]
struct Gauges {
    generation: u64,
    routes: Vec<RouteGauges>,
}

/// The gauges of one route, and its guard's shared-data key.
#[derive(Clone)]
struct RouteGauges {
    name: String,
    effective_bp: Metric,
    breaker_state: Option<Metric>,
    /// The guard's gauges (tripped, evidence by reason) and key.
    guard: Option<([Metric; 3], String)>,
}

thread_local! {
    /// Per plugin name: the gauges of the configuration in force in this VM.
    static IN_FORCE: RefCell<HashMap<String, Gauges>> = RefCell::new(HashMap::new());
}

impl Shared {
    fn new(config: Config, root: u32) -> Shared {
        let mut c = LocalCounters::default();
        let stats: Vec<RouteStats<Metric>> = config
            .routes
            .iter()
            .map(|r| RouteStats::define(&r.name, &mut |k, n: &str| counters::define(&mut c, k, n)))
            .collect();
        let mut keys = None;
        let breakers = config
            .routes
            .iter()
            .map(|r| {
                r.outlier.as_ref()?;
                let bs =
                    BreakerStats::define(&r.name, &mut |k, n: &str| counters::define(&mut c, k, n));
                let (slot, n) = breaker::Slot::new(r, bs)?;
                keys = n.or(keys);
                Some(slot)
            })
            .collect();
        let guards = config
            .routes
            .iter()
            .map(|r| {
                r.guard.as_ref()?;
                let gs =
                    GuardStats::define(&r.name, &mut |k, n: &str| counters::define(&mut c, k, n));
                guard::Slot::new(r, gs)
            })
            .collect();
        if let Some(n) = keys {
            let gauge = counters::define(&mut c, Kind::Gauge, &stats::breaker_keys_name());
            counters::record(gauge, n as u64);
        }
        let shadows = shadow::Shadows::new(&config, root, &mut c);
        Shared {
            shadows,
            unmatched: counters::define(&mut c, Kind::Counter, &stats::unmatched_name()),
            config,
            stats,
            breakers,
            guards,
            counters: c,
        }
    }

    /// The gauges this configuration sets.
    fn gauges(&self) -> Vec<RouteGauges> {
        (0..self.config.routes.len())
            .filter_map(|i| {
                Some(RouteGauges {
                    name: self.config.routes.get(i)?.name.clone(),
                    effective_bp: self.stats.get(i)?.effective_bp,
                    breaker_state: self.breakers.get(i)?.as_ref().map(|b| b.stats.state),
                    guard: self.guards.get(i)?.as_ref().map(|g| {
                        let st = &g.stats;
                        let gauges = [st.tripped, st.evidence_errors, st.evidence_latency];
                        (gauges, g.key.clone())
                    }),
                })
            })
            .collect()
    }

    /// The share in force for route `index` at `now`: 0 while its guard is
    /// tripped, else its percent or ramp step.
    fn basis_points(&self, index: usize, now: u64) -> u16 {
        match self.config.routes.get(index) {
            Some(_) if guard::tripped(self, index) => 0,
            Some(r) => r.basis_points_at(now),
            None => 0,
        }
    }
}

struct Root {
    /// This root context's id (shadow calls are sent from it).
    id: u32,
    shared: Option<Rc<Shared>>,
    /// This plugin's name (the configurations of one filter share it).
    plugin: String,
    /// Which configuration of the plugin this root holds, in this VM.
    generation: u64,
}

impl Root {
    /// Zeroes the gauges the previous configuration of this plugin set and
    /// this one does not (a removed or renamed route, a removed breaker or
    /// guard), so that no dashboard or alert reads a stale value, and frees
    /// guard state no configuration uses any more. Returns this
    /// configuration's generation.
    fn take_over_gauges(&self, shared: &Shared) -> u64 {
        let now = shared.gauges();
        IN_FORCE.with(|m| {
            let mut m = m.borrow_mut();
            let entry = m.entry(self.plugin.clone()).or_default();
            for old in &entry.routes {
                let kept = now.iter().find(|r| r.name == old.name);
                if kept.is_none() {
                    counters::record(old.effective_bp, 0);
                }
                if let (Some(state), None) = (old.breaker_state, kept.and_then(|k| k.breaker_state))
                {
                    counters::record(state, 0);
                }
                if let Some((gauges, key)) = &old.guard {
                    let new = kept.and_then(|k| k.guard.as_ref());
                    if new.is_none() {
                        for g in gauges {
                            counters::record(*g, 0);
                        }
                    }
                    if new.is_none_or(|(_, k)| k != key) {
                        guard::release(key);
                    }
                }
            }
            entry.generation += 1;
            entry.routes = now;
            entry.generation
        })
    }

    /// Whether this root's configuration is still the plugin's latest in
    /// this VM (an old root may tick until Envoy deletes it).
    fn in_force(&self) -> bool {
        IN_FORCE.with(|m| {
            m.borrow()
                .get(&self.plugin)
                .is_some_and(|g| g.generation == self.generation)
        })
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            s.shadows.root_gone();
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        if let Some(s) = &self.shared {
            shadow::on_answer(s, token, headers, body);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("invalid configuration: {e}");
                }
                return false;
            }
        };
        self.plugin = self
            .get_property(vec!["plugin_name"])
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        log::info!(
            "configured: {} route(s), monolith cluster \"{}\", target header \"{}\"",
            config.routes.len(),
            config.monolith,
            config.target_header
        );
        let shared = Shared::new(config, self.id);
        self.generation = self.take_over_gauges(&shared);
        let now = host::now_ms();
        for (i, s) in shared.stats.iter().enumerate() {
            counters::record(s.effective_bp, u64::from(shared.basis_points(i, now)));
        }
        self.shared = Some(Rc::new(shared));
        let _ = hostcalls::set_tick_period(TICK);
        self.on_tick();
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        counters::flush(&shared.counters);
        if !self.in_force() {
            return;
        }
        let now = host::now_ms();
        for i in 0..shared.config.routes.len() {
            if let Some((route, settings, slot)) = guard::of(shared, i) {
                slot.tick(route, settings, &shared.counters, now);
            }
            if let Some((route, settings, slot)) = breaker::of(shared, i) {
                slot.tick(route, settings, &shared.counters, now);
            }
        }
        for (i, ((route, s), g)) in shared
            .config
            .routes
            .iter()
            .zip(&shared.stats)
            .zip(&shared.guards)
            .enumerate()
        {
            if !route.ramp.is_empty() || g.is_some() {
                counters::record(s.effective_bp, u64::from(shared.basis_points(i, now)));
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if queue_id == shadow::WAKE {
            shadow::send_outbox();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Shift {
            shared: self.shared.clone(),
            pending: None,
            shadow: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A decided request waiting for its response.
struct Pending {
    route: usize,
    target: Target,
    start_ms: u64,
    /// Sent to the service under a breaker: how it was admitted.
    admitted: Option<breaker::Admitted>,
}

struct Shift {
    /// `None` only if Envoy ever ran a filter whose configuration was
    /// refused; then the filter does nothing (every request takes the
    /// catch-all route to the monolith).
    shared: Option<Rc<Shared>>,
    pending: Option<Pending>,
    /// A shadowed request's side of the comparison.
    shadow: Option<shadow::Primary>,
}

impl Context for Shift {}

impl HttpContext for Shift {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        #[allow(clippy::panic)]
        if self.get_http_request_header_bytes("x-test-trap").is_some() {
            panic!("x-test-trap: deliberate trap (test-trap build)");
        }
        let headers = Self::read_request_headers();
        let action = self.on_request(&headers);
        self.start_shadow(headers, end_of_stream);
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.shadow_request_body(body_size, end_of_stream);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.shadow_response_headers(end_of_stream);
        self.on_response()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.shadow_response_body(body_size, end_of_stream);
        Action::Continue
    }
}
