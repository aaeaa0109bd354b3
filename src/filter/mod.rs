//! The proxy-wasm host: callbacks that call the flow (`src/flow/`), and
//! the host calls behind its traits.
//!
//! - `host.rs`: [`crate::flow::Host`] and [`crate::flow::Stream`] as host
//!   calls (the bulk header read, the clock, metrics, shared data, calls
//!   out, bodies);
//! - `shadow.rs`: sending a call out from the root context;
//! - `trace.rs`: the decision's reason as filter state (spans, logs).
//!
//! This file holds the contexts and their callbacks, each a short list of
//! steps, and [`LIVE`], this VM's live configurations. A tick (1 s, per
//! VM) runs [`flow::tick::tick`].

mod host;
mod shadow;
mod trace;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::Config;
use crate::flow::{self, Exchange, Next, Plan, Worker};
use host::{Http, Wasm};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, shared: None })
    });
}}

/// Everything one configuration needs in this VM, shared by its HTTP
/// contexts: the flow's plan and this VM's worker state.
pub(crate) struct Shared {
    plan: Plan,
    worker: Worker,
    /// The root context that sends shadow calls, while it exists.
    root: Cell<Option<u32>>,
}

impl Shared {
    fn host(&self) -> Wasm<'_> {
        Wasm { root: &self.root }
    }
}

impl Drop for Shared {
    /// Shadows never answered; counts of requests that finished after the
    /// last tick.
    fn drop(&mut self) {
        flow::tick::end(&self.host(), &self.plan, &self.worker);
        // Its root context left first (`Root::drop`); its streams may have
        // set a breaker's state gauge since.
        let _ = LIVE.try_with(|l| {
            if let Ok(l) = l.try_borrow() {
                l.gone(&self.host(), &self.plan);
            }
        });
    }
}

thread_local! {
    /// Every configuration live in this VM (its root context not deleted
    /// yet), by root context id: which one ticks a shared-data key or
    /// refreshes a gauge, what a deleted one alone set.
    static LIVE: RefCell<flow::tick::Live> = RefCell::new(flow::tick::Live::default());
}

struct Root {
    /// This root context's id (shadow calls are sent from it; the
    /// configuration's id in [`LIVE`]).
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            s.root.set(None);
            let _ = LIVE.try_with(|l| l.borrow_mut().leave(&s.host(), self.id));
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        if let Some(s) = &self.shared {
            flow::shadow::on_answer(&s.host(), &s.plan, &s.worker, token, headers, body);
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
        // A root context can read these (not listener_direction or
        // listener_metadata); they name the filter for its breaker keys.
        let property = |name: &str| {
            self.get_property(vec![name])
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let (plugin, root_id) = (property("plugin_name"), property("plugin_root_id"));
        log::info!(
            "configured: {} route(s), monolith cluster \"{}\", target header \"{}\"",
            config.routes.len(),
            config.monolith,
            config.target_header
        );
        let root = Cell::new(Some(self.id));
        let (plan, worker) = LIVE.with(|l| {
            let host = Wasm { root: &root };
            flow::tick::start(
                &host,
                &mut l.borrow_mut(),
                self.id,
                &plugin,
                &root_id,
                config,
            )
        });
        self.shared = Some(Rc::new(Shared { plan, worker, root }));
        let _ = hostcalls::set_tick_period(flow::tick::TICK);
        self.on_tick();
        true
    }

    fn on_tick(&mut self) {
        let Some(s) = &self.shared else {
            return;
        };
        LIVE.with(|l| flow::tick::tick(&s.host(), &s.plan, &s.worker, &l.borrow(), self.id));
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if queue_id == shadow::WAKE {
            shadow::send_outbox();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Shift {
            shared: self.shared.clone(),
            exchange: Exchange::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Shift {
    /// `None` only if Envoy ever ran a filter whose configuration was
    /// refused; then the filter does nothing (every request takes the
    /// catch-all route to the monolith).
    shared: Option<Rc<Shared>>,
    exchange: Exchange,
}

impl Drop for Shift {
    /// A shadowed request whose stream went early ends as incomplete.
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            self.exchange.end(&s.host(), &s.plan, &s.worker);
        }
    }
}

fn action(next: Next) -> Action {
    match next {
        Next::Continue => Action::Continue,
        Next::Stop => Action::Pause,
    }
}

impl Context for Shift {}

impl HttpContext for Shift {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        #[allow(clippy::panic)]
        if self.get_http_request_header_bytes("x-test-trap").is_some() {
            panic!("x-test-trap: deliberate trap (test-trap build)");
        }
        let Some(s) = &self.shared else {
            return action(flow::request::unconfigured(&Http));
        };
        let next =
            self.exchange
                .on_request_headers(&s.host(), &Http, &s.plan, &s.worker, end_of_stream);
        action(next)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(s) = &self.shared {
            let (host, plan, worker) = (&s.host(), &s.plan, &s.worker);
            self.exchange
                .on_request_body(host, &Http, plan, worker, body_size, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(s) = &self.shared {
            self.exchange
                .on_request_trailers(&s.host(), &s.plan, &s.worker);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(s) = &self.shared {
            let (host, plan, worker) = (&s.host(), &s.plan, &s.worker);
            self.exchange
                .on_response_headers(host, &Http, plan, worker, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(s) = &self.shared {
            let (host, plan, worker) = (&s.host(), &s.plan, &s.worker);
            self.exchange
                .on_response_trailers(host, &Http, plan, worker);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(s) = &self.shared {
            let (host, plan, worker) = (&s.host(), &s.plan, &s.worker);
            self.exchange
                .on_response_body(host, &Http, plan, worker, body_size, end_of_stream);
        }
        Action::Continue
    }
}
