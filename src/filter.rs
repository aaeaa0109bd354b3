//! The proxy-wasm glue: maps host callbacks and host calls to the core.
//!
//! Per request this does, in `on_http_request_headers` only:
//! 1. read `:method` and `:path`, look the route up;
//! 2. unmatched: remove a client-sent target header if there is one;
//! 3. matched: read the hash key (header or cookie), decide, and overwrite
//!    the target header with the chosen cluster. Envoy (ABI 0.2.1) then
//!    re-evaluates the route, whose header match sends the request there.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::{Config, HashKey};
use crate::cookie;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "configured: {} route(s), monolith cluster \"{}\", target header \"{}\"",
                    config.routes.len(),
                    config.monolith,
                    config.target_header
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("invalid configuration: {e}");
                }
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Shift {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Shift {
    /// `None` only if Envoy ever ran a filter whose configuration was
    /// refused; then every request fails safe to the monolith.
    config: Option<Rc<Config>>,
}

impl Context for Shift {}

impl HttpContext for Shift {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            self.set_http_request_header(crate::config::DEFAULT_TARGET_HEADER, None);
            return Action::Continue;
        };
        let method = self.get_http_request_header_bytes(":method");
        let path = self.get_http_request_header_bytes(":path");
        let route = match (&method, &path) {
            (Some(m), Some(p)) => config.route(m, p),
            _ => None,
        };
        let Some(route) = route else {
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
        Action::Continue
    }
}
