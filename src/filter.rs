//! The proxy-wasm glue: maps host callbacks and host calls to the core.
//!
//! Per request, in `on_http_request_headers`:
//! 1. read `:method` and `:path`, look the route up;
//! 2. unmatched: count it, remove a client-sent target header if any, done;
//! 3. matched: read the hash key (header or cookie), decide, overwrite the
//!    target header with the chosen cluster (Envoy, ABI 0.2.1, then
//!    re-evaluates the route, whose header match sends the request there),
//!    count the request and note the time.
//!
//! When the route has a breaker and the split chose the service, the
//! breaker's process-wide state (shared data, compare-and-swap) decides
//! whether the service gets the request, a probe, or neither (fallback to
//! the monolith, or a 503 with `Retry-After`).
//!
//! In `on_http_response_headers`, for matched requests only: read `:status`
//! (and `response.flags` for a 5xx) and the time, count the outcome, and feed
//! outcomes of requests sent to the service to the breaker.
//!
//! A tick (1 s, per VM) runs the breaker's time-driven transitions and keeps
//! the state and effective-percent gauges current when no requests come.
//!
//! With an `override` configured, the override headers are read and removed
//! on every request; a valid one replaces the split's decision.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::breaker::{Admission, Breaker, OnOpen, Transition};
use crate::config::{
    forced_target, Config, HashKey, Override, Route, Target, DEFAULT_TARGET_HEADER,
};
use crate::cookie;
use crate::stats::{self, BreakerStats, FailureOrigin, Kind, RouteStats};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

type Id = Option<u32>;

/// Everything one configuration needs, shared by its HTTP contexts.
struct Shared {
    config: Config,
    /// Index = route index.
    stats: Vec<RouteStats<Id>>,
    /// Index = route index; `None` for routes without `outlier`.
    breakers: Vec<Option<BreakerSlot>>,
    unmatched: Id,
}

/// Where a route's breaker state lives and what it reports to.
struct BreakerSlot {
    key: String,
    stats: BreakerStats<Id>,
}

/// How often each VM runs the breakers' time-driven transitions.
const TICK: Duration = Duration::from_secs(1);
/// Compare-and-swap attempts before an update is dropped.
const CAS_ATTEMPTS: usize = 32;

/// Milliseconds since the Unix epoch (the clock the core works with).
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_ms() -> u64 {
    hostcalls::get_current_time().map_or(0, epoch_ms)
}

/// Runs `f` on the breaker state stored at `key` and stores the result,
/// retrying on a concurrent write. `f` may run several times; only the
/// result of the run that was stored is returned.
fn update_breaker<R>(key: &str, mut f: impl FnMut(&mut Breaker) -> R) -> Option<(R, Breaker)> {
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = hostcalls::get_shared_data(key).ok()?;
        let before = bytes.unwrap_or_default();
        let mut b = Breaker::decode(&before).unwrap_or_default();
        let r = f(&mut b);
        let after = b.encode();
        if after == before || hostcalls::set_shared_data(key, Some(&after), cas).is_ok() {
            return Some((r, b));
        }
    }
    log::warn!("breaker {key}: update dropped after {CAS_ATTEMPTS} concurrent writes");
    None
}

/// The shared-data key listing every breaker key this vm_id ever created
/// (one per line), so their number is observable
/// (`traffic_shift_breaker_keys`).
const REGISTRY_KEY: &str = "traffic_shift.breaker.keys";

fn registry_len(registry: &[u8]) -> usize {
    registry
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// Adds `key` to the registry (compare-and-swap, retried).
fn register_key(key: &str) {
    for _ in 0..CAS_ATTEMPTS {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(REGISTRY_KEY) else {
            return;
        };
        let mut registry = bytes.unwrap_or_default();
        if registry.split(|&b| b == b'\n').any(|l| l == key.as_bytes()) {
            return;
        }
        registry.extend_from_slice(key.as_bytes());
        registry.push(b'\n');
        if hostcalls::set_shared_data(REGISTRY_KEY, Some(&registry), cas).is_ok() {
            return;
        }
    }
}

/// Logs a transition and counts openings.
fn report(route: &Route, slot: &BreakerSlot, t: &Transition) {
    if t.to == crate::breaker::State::Open {
        increment(slot.stats.opened);
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
}

fn define(kind: Kind, name: &str) -> Id {
    let t = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
    };
    hostcalls::define_metric(t, name).ok()
}

fn increment(id: Id) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

fn record(id: Id, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

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
        let stats: Vec<RouteStats<Id>> = config
            .routes
            .iter()
            .map(|r| RouteStats::define(&r.name, &mut define))
            .collect();
        let now = now_ms();
        for (route, s) in config.routes.iter().zip(&stats) {
            record(s.effective_bp, u64::from(route.basis_points_at(now)));
        }
        let breakers: Vec<Option<BreakerSlot>> = config
            .routes
            .iter()
            .map(|r| {
                let key = r.breaker_key()?;
                // Create the key if absent, so that every later update is a
                // compare-and-swap (a set without CAS on a missing key could
                // lose a concurrent transition).
                if let Ok((None, _)) = hostcalls::get_shared_data(&key) {
                    let _ =
                        hostcalls::set_shared_data(&key, Some(&Breaker::default().encode()), None);
                }
                register_key(&key);
                Some(BreakerSlot {
                    stats: BreakerStats::define(&r.name, &mut define),
                    key,
                })
            })
            .collect();
        if let Ok((Some(registry), _)) = hostcalls::get_shared_data(REGISTRY_KEY) {
            let gauge = define(Kind::Gauge, &stats::breaker_keys_name());
            record(gauge, registry_len(&registry) as u64);
        }
        if breakers.iter().any(Option::is_some) || config.routes.iter().any(|r| !r.ramp.is_empty())
        {
            let _ = hostcalls::set_tick_period(TICK);
        }
        log::info!(
            "configured: {} route(s), monolith cluster \"{}\", target header \"{}\"",
            config.routes.len(),
            config.monolith,
            config.target_header
        );
        self.shared = Some(Rc::new(Shared {
            unmatched: define(Kind::Counter, &stats::unmatched_name()),
            config,
            stats,
            breakers,
        }));
        self.on_tick();
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = now_ms();
        for (route, s) in shared.config.routes.iter().zip(&shared.stats) {
            if !route.ramp.is_empty() {
                record(s.effective_bp, u64::from(route.basis_points_at(now)));
            }
        }
        for (route, slot) in shared.config.routes.iter().zip(&shared.breakers) {
            let (Some(settings), Some(slot)) = (&route.outlier, slot) else {
                continue;
            };
            if let Some((t, b)) = update_breaker(&slot.key, |b| b.advance(settings, now)) {
                if let Some(t) = t {
                    report(route, slot, &t);
                }
                record(slot.stats.state, b.state() as u64);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Shift {
            shared: self.shared.clone(),
            pending: None,
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
    start: SystemTime,
    /// Sent to the service under a breaker (`Some(true)`: as a probe): its
    /// outcome goes to the breaker.
    breaker_probe: Option<bool>,
}

struct Shift {
    /// `None` only if Envoy ever ran a filter whose configuration was
    /// refused; then every request fails safe to the monolith.
    shared: Option<Rc<Shared>>,
    pending: Option<Pending>,
}

impl Context for Shift {}

impl Shift {
    /// Reads and removes the override headers; the forced target if the
    /// request carries a valid one.
    fn take_override(&self, o: &Override) -> Option<Target> {
        let force = self.get_http_request_header_bytes(&o.header);
        let secret = match o.secret {
            Some(_) => self.get_http_request_header_bytes(&o.secret_header),
            None => None,
        };
        if force.is_some() {
            self.set_http_request_header(&o.header, None);
        }
        if secret.is_some() {
            self.set_http_request_header(&o.secret_header, None);
        }
        forced_target(o, force.as_deref()?, secret.as_deref())
    }
}

impl HttpContext for Shift {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        #[allow(clippy::panic)]
        if self.get_http_request_header_bytes("x-test-trap").is_some() {
            panic!("x-test-trap: deliberate trap (test-trap build)");
        }
        let Some(shared) = self.shared.clone() else {
            self.set_http_request_header(DEFAULT_TARGET_HEADER, None);
            return Action::Continue;
        };
        let config = &shared.config;
        let forced = config
            .override_header
            .as_ref()
            .and_then(|o| self.take_override(o));
        let method = self.get_http_request_header_bytes(":method");
        let path = self.get_http_request_header_bytes(":path");
        let route = match (&method, &path) {
            (Some(m), Some(p)) => config.route(m, p),
            _ => None,
        };
        let Some((index, route)) = route else {
            increment(shared.unmatched);
            // Clients must never pick a backend: drop their copy. Only when
            // present, since a header change makes Envoy re-run routing.
            if self
                .get_http_request_header_bytes(&config.target_header)
                .is_some()
            {
                self.set_http_request_header(&config.target_header, None);
            }
            return Action::Continue;
        };
        let key = match &route.hash_key {
            HashKey::Header(name) => self.get_http_request_header_bytes(name),
            HashKey::Cookie(name) => self
                .get_http_request_header_bytes("cookie")
                .and_then(|h| cookie::find(&h, name.as_bytes()).map(<[u8]>::to_vec)),
        };
        let now = self.get_current_time();
        let now_ms = epoch_ms(now);
        let stats = shared.stats.get(index);
        if let Some(s) = stats {
            if key.as_deref().is_none_or(<[u8]>::is_empty) {
                increment(s.key_missing);
            }
        }
        let mut target = match forced {
            Some(t) => {
                if let Some(s) = stats {
                    increment(s.target(t).overrides);
                }
                t
            }
            None => route.decide_at(key.as_deref(), route.basis_points_at(now_ms)),
        };
        let mut breaker_probe = None;
        let slot = shared.breakers.get(index).and_then(Option::as_ref);
        if let (Target::Service, Some(settings), Some(slot)) = (target, &route.outlier, slot) {
            // A forced request is not the breaker's to stop, but its
            // outcome is the service's.
            let admission = if forced.is_some() {
                Admission::Pass
            } else {
                match update_breaker(&slot.key, |b| b.admit(settings, now_ms)) {
                    Some(((admission, t), b)) => {
                        if let Some(t) = t {
                            report(route, slot, &t);
                            record(slot.stats.state, b.state() as u64);
                        }
                        admission
                    }
                    None => Admission::Pass,
                }
            };
            match admission {
                Admission::Pass => breaker_probe = Some(false),
                Admission::Probe => breaker_probe = Some(true),
                Admission::Blocked { .. } if settings.on_open == OnOpen::Fallback => {
                    increment(slot.stats.fallback);
                    target = Target::Monolith;
                }
                Admission::Blocked { retry_after_ms } => {
                    increment(slot.stats.fast_fail);
                    let seconds = retry_after_ms.div_ceil(1000).max(1).to_string();
                    self.send_http_response(
                        503,
                        vec![("retry-after", &seconds), ("x-shift-breaker", "open")],
                        Some(b"service unavailable: circuit breaker open\n"),
                    );
                    return Action::Pause;
                }
            }
        }
        self.set_http_request_header(&config.target_header, Some(config.cluster(route, target)));
        if let Some(s) = stats {
            increment(s.target(target).rq_total);
        }
        self.pending = Some(Pending {
            route: index,
            target,
            start: now,
            breaker_probe,
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(p) = self.pending.take() else {
            return Action::Continue;
        };
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        let Some(s) = shared.stats.get(p.route) else {
            return Action::Continue;
        };
        let s = s.target(p.target);
        let route = shared.config.routes.get(p.route);
        let status = self
            .get_http_response_header_bytes(":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let flags = if stats::needs_flags(status) {
            self.get_property(vec!["response", "flags"])
                .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
                .unwrap_or(0)
        } else {
            0
        };
        let outcome = stats::classify(status, flags);
        if let Some(id) = outcome.class.and_then(|c| s.rq_class.get(c)) {
            increment(*id);
        }
        match outcome.failure {
            Some(FailureOrigin::App) => increment(s.failure_app),
            Some(FailureOrigin::Proxy) => increment(s.failure_proxy),
            None => {}
        }
        // One clock read serves the histogram and the breaker.
        let now = self.get_current_time();
        let elapsed = now
            .duration_since(p.start)
            .map_or(0, |d| d.as_millis() as u64);
        record(s.upstream_rq_time, elapsed);

        let slot = shared.breakers.get(p.route).and_then(Option::as_ref);
        if let (Some(probe), Some(route), Some(slot)) = (p.breaker_probe, route, slot) {
            if let Some(settings) = &route.outlier {
                let failure = settings.is_failure(status, flags != 0);
                let now = epoch_ms(now);
                if let Some((Some(t), b)) =
                    update_breaker(&slot.key, |b| b.record(settings, now, failure, probe))
                {
                    report(route, slot, &t);
                    record(slot.stats.state, b.state() as u64);
                }
            }
        }
        Action::Continue
    }
}
