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
        Box::new(Root { id, shared: None })
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

/// The gauges of one route, and its guard's shared-data key.
#[derive(Clone)]
struct RouteGauges {
    name: String,
    effective_bp: Metric,
    breaker_state: Option<Metric>,
    guard: Option<(Metric, String)>,
}

/// A configuration live in this VM (its root context not deleted yet):
/// the gauges it sets and the shared-data keys it ticks.
struct Live {
    root: u32,
    gauges: Vec<RouteGauges>,
    breaker_keys: Vec<String>,
}

thread_local! {
    /// Every live configuration of this VM, oldest first. Envoy gives a
    /// root context no identity beyond its plugin name, which two filters
    /// of one VM may share, and a configuration update makes a new root
    /// context while the old one lives on until Envoy deletes it. So
    /// nothing is keyed by plugin name: a key (breaker, guard) is ticked by
    /// the newest live configuration holding it, and a gauge is zeroed, a
    /// guard key released, when the last live configuration setting or
    /// holding it is deleted.
    static LIVE: RefCell<Vec<Live>> = const { RefCell::new(Vec::new()) };
}

/// Whether `root` is the newest live configuration for which `holds` is
/// true.
fn newest(root: u32, holds: impl Fn(&Live) -> bool) -> bool {
    LIVE.with(|l| {
        l.borrow()
            .iter()
            .rev()
            .find(|x| holds(x))
            .is_some_and(|x| x.root == root)
    })
}

/// Registers `root`'s configuration (replacing an earlier one of the same
/// root, whose leftovers are cleared).
fn join(root: u32, shared: &Shared) {
    leave(root);
    let breaker_keys = shared
        .breakers
        .iter()
        .flatten()
        .map(|b| b.key().to_string())
        .collect();
    LIVE.with(|l| {
        l.borrow_mut().push(Live {
            root,
            gauges: shared.gauges(),
            breaker_keys,
        })
    });
}

/// Unregisters `root`: zeroes the gauges only it set (a removed or renamed
/// route, a removed breaker or guard), so that no dashboard or alert reads
/// a stale value, and frees guard state no live configuration uses.
fn leave(root: u32) {
    let Some(gone) = LIVE.with(|l| {
        let mut l = l.borrow_mut();
        let i = l.iter().position(|x| x.root == root)?;
        Some(l.remove(i))
    }) else {
        return;
    };
    LIVE.with(|l| {
        let l = l.borrow();
        let others = || l.iter().flat_map(|x| &x.gauges);
        for g in &gone.gauges {
            let same = || others().filter(|o| o.name == g.name);
            if same().next().is_none() {
                counters::record(g.effective_bp, 0);
            }
            if let Some(state) = g.breaker_state {
                if !same().any(|o| o.breaker_state.is_some()) {
                    counters::record(state, 0);
                }
            }
            if let Some((tripped, key)) = &g.guard {
                if !same().any(|o| o.guard.is_some()) {
                    counters::record(*tripped, 0);
                }
                if !others().any(|o| o.guard.as_ref().is_some_and(|(_, k)| k == key)) {
                    guard::release(key);
                }
            }
        }
    });
}

impl Shared {
    fn new(config: Config, root: u32, filter: u64) -> Shared {
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
                let (slot, n) = breaker::Slot::new(r, filter, bs)?;
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
                    guard: self
                        .guards
                        .get(i)?
                        .as_ref()
                        .map(|g| (g.stats.tripped, g.key.clone())),
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
    /// This root context's id (shadow calls are sent from it; the
    /// configuration's entry in [`LIVE`]).
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Root {
    /// Whether this root ticks shared-data key `key` (breaker or guard):
    /// it is the newest live configuration holding it.
    fn ticks(&self, key: &str) -> bool {
        newest(self.id, |x| {
            x.breaker_keys.iter().any(|k| k == key)
                || x.gauges
                    .iter()
                    .any(|g| g.guard.as_ref().is_some_and(|(_, k)| k == key))
        })
    }

    /// Whether this root keeps route `name`'s effective-percent gauge
    /// current (the newest live configuration with that route).
    fn sets_gauge(&self, name: &str) -> bool {
        newest(self.id, |x| x.gauges.iter().any(|g| g.name == name))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            s.shadows.root_gone();
            leave(self.id);
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
        let property = |name: &str| {
            self.get_property(vec![name])
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let filter = config.filter_identity(&property("plugin_name"), &property("plugin_root_id"));
        log::info!(
            "configured: {} route(s), monolith cluster \"{}\", target header \"{}\"",
            config.routes.len(),
            config.monolith,
            config.target_header
        );
        let shared = Shared::new(config, self.id, filter);
        join(self.id, &shared);
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
        let now = host::now_ms();
        for i in 0..shared.config.routes.len() {
            if let Some((route, settings, slot)) = guard::of(shared, i) {
                if self.ticks(&slot.key) {
                    slot.tick(route, settings, &shared.counters, now);
                }
            }
            if let Some((route, settings, slot)) = breaker::of(shared, i) {
                if self.ticks(slot.key()) {
                    slot.tick(route, settings, &shared.counters, now);
                }
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
            if (!route.ramp.is_empty() || g.is_some()) && self.sets_gauge(&route.name) {
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
