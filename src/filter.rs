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
//! In `on_http_response_headers`, for matched requests only: read `:status`
//! (and `response.flags` for a 5xx) and the time, and count the outcome.

use std::rc::Rc;
use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::{Config, HashKey, Target, DEFAULT_TARGET_HEADER};
use crate::cookie;
use crate::stats::{self, FailureOrigin, Kind, RouteStats};

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
    unmatched: Id,
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
        for (route, s) in config.routes.iter().zip(&stats) {
            record(s.effective_bp, u64::from(route.basis_points));
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
        }));
        true
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
}

struct Shift {
    /// `None` only if Envoy ever ran a filter whose configuration was
    /// refused; then every request fails safe to the monolith.
    shared: Option<Rc<Shared>>,
    pending: Option<Pending>,
}

impl Context for Shift {}

impl HttpContext for Shift {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            self.set_http_request_header(DEFAULT_TARGET_HEADER, None);
            return Action::Continue;
        };
        let config = &shared.config;
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
        let target = route.decide(key.as_deref());
        self.set_http_request_header(&config.target_header, Some(config.cluster(route, target)));
        if let Some(s) = shared.stats.get(index) {
            if key.as_deref().is_none_or(<[u8]>::is_empty) {
                increment(s.key_missing);
            }
            increment(s.target(target).rq_total);
        }
        self.pending = Some(Pending {
            route: index,
            target,
            start: self.get_current_time(),
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
        let elapsed = self
            .get_current_time()
            .duration_since(p.start)
            .map_or(0, |d| d.as_millis() as u64);
        record(s.upstream_rq_time, elapsed);
        Action::Continue
    }
}
