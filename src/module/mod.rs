//! The dynamic-module host: Envoy loads the crate's native cdylib
//! (`libtraffic_shift.so`, `make module`) with `dlopen` and calls these
//! hooks directly, no VM. They call the same flow as the proxy-wasm
//! callbacks of `src/filter/`.
//!
//! - `abi.rs`: our declarations of the Envoy callbacks we use;
//! - `host.rs`: [`crate::flow::Host`] and [`crate::flow::Stream`] as those
//!   callbacks (metrics through the filter configuration, the breaker's
//!   and guard's store in process memory);
//! - `calls.rs`: shadow calls out, sent from Envoy's main thread.
//!
//! One configuration ([`Shared`]) serves every worker thread: its
//! [`Plan`] is read-only; each worker thread keeps its own [`Worker`]
//! (cells, no atomics) in a thread-local list; the configurations live in
//! the process are one [`Live`] list behind a lock (taken on configuring,
//! on a destroy and on a worker's tick). Counters reach Envoy at each
//! response's headers and trailers and at a stream's end (a native call
//! costs next to nothing); the flow's tick (breaker and guard windows,
//! ramp gauges) runs on a worker's first hook after a second has passed.
//!
//! Shadow compare: a worker queues each call out for the main thread
//! (`calls.rs`), which sends it on the configuration (so it outlives the
//! primary's stream) and posts the answer to the worker's [`Mailbox`]. A
//! worker takes its mail at the start of each of its hooks (one relaxed
//! load when there is none) and hands each answer to
//! `flow::shadow::on_answer`. Envoy offers a module no way to run code on
//! an idle worker, so an answer that arrives while its worker has no
//! stream waits for that worker's next request: with traffic, verdicts lag
//! by the gap between requests; on an idle worker they are counted when
//! the next request comes. A configuration Envoy destroyed with shadows
//! still out (Envoy drops their calls without calling the module) is ended
//! on each worker's next tick ([`end_gone`]): answers already in its
//! mailbox are compared, the rest count as the flow counts abandoned
//! shadows (`error`).
//!
//! Safety: every hook catches unwinding. A caught panic is counted
//! (`traffic_shift.module_panics`), logged through Envoy's log, and the
//! request goes on without a target header (the catch-all route: the
//! monolith).
//!
//! ABI version: the header we wrote the declarations from states
//! "v0.1.0"; Envoy 1.40 expects "v0.2.0", logs that v0.1.0 "is
//! deprecated" and loads the module (the header promises that v0.1.y works
//! with v0.2.x). `integration/tests/module.rs` checks every callback we
//! import against the pinned binary and drives each through Envoy.

mod abi;
mod calls;
mod host;

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use crate::callout::Mailbox;
use crate::config::Config;
use crate::flow::tick::Live;
use crate::flow::{self, Exchange, Host, Next, Plan, Stream, Worker};
use crate::stats::{Kind, PREFIX};
use abi::{Buf, ConfigPtr, FilterPtr};
use calls::Calls;
use host::{Defining, Http, Native, OnWorker};

/// The ABI version our declarations follow (NUL-terminated for Envoy).
const ABI_VERSION: &[u8] = b"v0.1.0\0";

/// One filter configuration, shared by every worker thread.
struct Shared {
    plan: Arc<Plan>,
    host: Native,
    /// This configuration's id in [`live`].
    id: u32,
    /// Host id of `traffic_shift.module_panics`.
    panics: Option<u32>,
    /// Shadow calls out, sent from the main thread.
    calls: Calls,
}

// SAFETY: `Native` holds Envoy's filter-configuration pointer, which Envoy
// keeps alive while the configuration exists (we hold it no longer) and
// whose metric callbacks may be called from any thread; the plan is
// `Send + Sync`. `Calls` holds Envoy's configuration scheduler, whose
// commit any thread may call (it posts to the main thread's dispatcher)
// and which is deleted only when the last reference to `Shared` goes; its
// queues are behind locks.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// The configurations live in the process (one list: every worker shares
/// them): which one ticks a breaker or guard key, refreshes a gauge, what a
/// destroyed one alone set ([`flow::tick::Live`]).
fn live() -> MutexGuard<'static, Live> {
    static LIVE: OnceLock<Mutex<Live>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(Live::default()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The id of the next configuration.
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// One worker thread's state for a configuration.
struct Local {
    worker: Worker,
    /// When this worker's next tick is due (ms since the epoch).
    next_tick: Cell<u64>,
    /// Answers to this worker's calls out, posted by the main thread.
    mailbox: Arc<Mailbox>,
    /// The configuration's plan, kept to end this state once Envoy
    /// destroyed the configuration ([`end_gone`]).
    plan: Arc<Plan>,
}

thread_local! {
    /// This worker thread's state, per configuration alive.
    static WORKERS: RefCell<Vec<(Weak<Shared>, Rc<Local>)>> = const { RefCell::new(Vec::new()) };
}

/// This worker thread's state for `shared` (made on its first stream).
fn local(shared: &Arc<Shared>) -> Rc<Local> {
    WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        if let Some((_, l)) = w
            .iter()
            .find(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(shared)))
        {
            return l.clone();
        }
        let l = Rc::new(Local {
            worker: Worker::new(&shared.plan),
            next_tick: Cell::new(0),
            mailbox: Arc::new(Mailbox::default()),
            plan: shared.plan.clone(),
        });
        w.push((Arc::downgrade(shared), l.clone()));
        l
    })
}

/// Hands the answers in `mailbox` to the flow (one relaxed load when
/// there are none); the differing fields they found reach their counters
/// now, as the verdicts do at the stream's next flush (not at the next
/// tick). `host`: the worker's host, no answer being delivered.
fn take_mail(host: &OnWorker, plan: &Plan, worker: &Worker, mailbox: &Mailbox) {
    if !mailbox.has_mail() {
        return;
    }
    for d in mailbox.take() {
        let (num_headers, body_size) = d.sizes();
        let h = OnWorker {
            answer: d.answer.as_ref(),
            ..*host
        };
        flow::shadow::on_answer(&h, plan, worker, d.token, num_headers, body_size);
    }
    flow::shadow::tick(host, plan, worker);
}

/// Ends this worker's state for configurations Envoy destroyed (on the
/// tick): answers already in their mailbox are compared; shadows still
/// out end as the flow ends them (`flow::tick::end`; Envoy dropped their
/// calls with the configuration); counted through `host`, a live
/// configuration (the same stat names: a route it kept counts on).
fn end_gone(host: &OnWorker) {
    let gone: Vec<Rc<Local>> = WORKERS.with(|w| {
        let mut gone = Vec::new();
        w.borrow_mut().retain(|(s, l)| {
            let alive = s.strong_count() > 0;
            if !alive {
                gone.push(l.clone());
            }
            alive
        });
        gone
    });
    for l in gone {
        let h = OnWorker {
            mailbox: &l.mailbox,
            ..*host
        };
        take_mail(&h, &l.plan, &l.worker, &l.mailbox);
        flow::tick::end(&h, &l.plan, &l.worker);
    }
}

/// The flow's host for `shared` on this worker (no answer being
/// delivered).
fn on_worker<'a>(shared: &'a Shared, local: &'a Local) -> OnWorker<'a> {
    OnWorker {
        native: &shared.host,
        calls: &shared.calls,
        mailbox: &local.mailbox,
        answer: None,
    }
}

/// One HTTP stream.
struct Filter {
    shared: Arc<Shared>,
    local: Rc<Local>,
    exchange: Exchange,
}

impl Filter {
    /// The flow's host on this worker (no answer being delivered).
    fn host(&self) -> OnWorker<'_> {
        on_worker(&self.shared, &self.local)
    }

    /// Runs the flow's tick when due on this worker.
    fn tick(&self) {
        let (s, l) = (&*self.shared, &*self.local);
        let now = s.host.now_ms();
        if now < l.next_tick.get() {
            return;
        }
        l.next_tick.set(now + flow::tick::TICK.as_millis() as u64);
        flow::tick::tick(&self.host(), &s.plan, &l.worker, &live(), s.id);
        end_gone(&self.host());
    }

    /// Hands the answers the main thread posted to this worker to the
    /// flow ([`take_mail`]).
    fn poll(&self) {
        let l = &*self.local;
        take_mail(&self.host(), &self.shared.plan, &l.worker, &l.mailbox);
    }

    /// The size of the body chunk `body` (received request or response),
    /// read only for a shadowed request (0 otherwise: the flow reads no
    /// body then).
    fn chunk_size(&self, http: &Http, body: u32) -> usize {
        match self.exchange.shadow {
            Some(_) => http.body_size(body),
            None => 0,
        }
    }

    /// Counts a caught panic.
    fn panicked(&self) {
        if let Some(id) = self.shared.panics {
            self.shared.host.increment_metric(id, 1);
        }
    }
}

fn log(level: u32, message: &str) {
    // SAFETY: the message outlives the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(level, Buf::of(message.as_bytes())) }
}

/// # Safety
/// `ptr`: a pointer [`envoy_dynamic_module_on_http_filter_new`] returned,
/// not yet destroyed; Envoy calls a stream's hooks on one thread, one at a
/// time.
unsafe fn filter<'a>(ptr: *const c_void) -> Option<&'a mut Filter> {
    // SAFETY: the caller's contract.
    unsafe { (ptr as *mut Filter).as_mut() }
}

/// Runs one stream step on the filter behind `filter_module`, catching a
/// panic (counted and logged; the stream goes on); the hook then answers
/// "continue".
///
/// # Safety
/// See [`filter`]; `filter_envoy` is valid during the hook.
unsafe fn stream_step(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
    step: impl FnOnce(&mut Filter, &Http),
) -> u32 {
    // SAFETY: the caller's contract.
    if let Some(f) = unsafe { filter(filter_module) } {
        let http = Http::new(filter_envoy);
        let run = || {
            f.poll();
            step(&mut *f, &http)
        };
        if catch_unwind(AssertUnwindSafe(run)).is_err() {
            f.panicked();
        }
    }
    abi::CONTINUE
}

/// The flow's `log` records (shadow mismatches, configuration warnings)
/// into Envoy's log, as the proxy-wasm SDK does for the wasm build.
struct EnvoyLog;

impl ::log::Log for EnvoyLog {
    fn enabled(&self, metadata: &::log::Metadata) -> bool {
        metadata.level() <= ::log::Level::Info
    }

    fn log(&self, record: &::log::Record) {
        let level = match record.level() {
            ::log::Level::Error => abi::LOG_ERROR,
            ::log::Level::Warn => abi::LOG_WARN,
            ::log::Level::Info => abi::LOG_INFO,
            _ => abi::LOG_DEBUG,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Loaded: a panic (caught by the hook it happens in) is logged through
/// Envoy's log, not printed on its stderr; so are the flow's `log` records.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    std::panic::set_hook(Box::new(|info| {
        log(
            abi::LOG_ERROR,
            &format!("caught panic (request sent on): {info}"),
        );
    }));
    static LOGGER: EnvoyLog = EnvoyLog;
    if ::log::set_logger(&LOGGER).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Info);
    }
    ABI_VERSION.as_ptr()
}

/// Reads and checks the configuration (the same JSON, the same errors as
/// the wasm build); null refuses it (Envoy keeps the previous one on an
/// update).
///
/// # Safety
/// Envoy's contract: `config_envoy` is its configuration object, `name`
/// and `config` valid during the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigPtr,
    name: Buf,
    config: Buf,
) -> *const c_void {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's contract (above).
        let (name, bytes) = unsafe { (name.bytes().unwrap_or(&[]), config.bytes().unwrap_or(&[])) };
        let plugin = String::from_utf8_lossy(name).into_owned();
        let config = match Config::from_json(bytes) {
            Ok(config) => config,
            Err(errors) => {
                for e in &errors.0 {
                    log(abi::LOG_ERROR, &format!("invalid configuration: {e}"));
                }
                return std::ptr::null();
            }
        };
        log(
            abi::LOG_INFO,
            &format!(
                "configured: {} route(s), monolith cluster \"{}\", target header \"{}\"",
                config.routes.len(),
                config.monolith,
                config.target_header
            ),
        );
        let defining = Defining::new(config_envoy);
        if config.routes.iter().any(|r| r.shadow.is_some()) {
            defining.define_fields();
        }
        let panics = defining.define_metric(Kind::Counter, &format!("{PREFIX}.module_panics"));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // The module has one name for the filter (`filter_name`): it and
        // the configuration name the breaker keys.
        let (plan, _first) = flow::tick::start(&defining, &mut live(), id, &plugin, "", config);
        let host = defining.done();
        let shared = Arc::new(Shared {
            plan: Arc::new(plan),
            host,
            id,
            panics,
            calls: Calls::new(config_envoy),
        });
        Arc::into_raw(shared) as *const c_void
    }))
    .unwrap_or(std::ptr::null())
}

/// # Safety
/// `ptr`: from [`envoy_dynamic_module_on_http_filter_config_new`], once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: *const c_void) {
    if !ptr.is_null() {
        // SAFETY: the pointer came from `Arc::into_raw`; Envoy destroys it
        // once, after its last stream.
        let _ = catch_unwind(|| {
            let shared = unsafe { Arc::from_raw(ptr as *const Shared) };
            // The gauges only it set read 0, guard state no live
            // configuration uses is freed.
            live().leave(&shared.host, shared.id);
        });
    }
}

/// # Safety
/// `config`: from [`envoy_dynamic_module_on_http_filter_config_new`], alive.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: FilterPtr,
) -> *const c_void {
    if config.is_null() {
        return std::ptr::null();
    }
    catch_unwind(|| {
        let config = config as *const Shared;
        // SAFETY: `config` came from `Arc::into_raw` and Envoy keeps it
        // alive during this call; we take a reference of our own.
        let shared = unsafe {
            Arc::increment_strong_count(config);
            Arc::from_raw(config)
        };
        let local = local(&shared);
        Box::into_raw(Box::new(Filter {
            shared,
            local,
            exchange: Exchange::default(),
        })) as *const c_void
    })
    .unwrap_or(std::ptr::null())
}

/// # Safety
/// See [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's contract.
    let Some(f) = (unsafe { filter(filter_module) }) else {
        return abi::CONTINUE;
    };
    let http = Http::new(filter_envoy);
    let next = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(feature = "test-trap")]
        #[allow(clippy::panic)]
        if http.request_header("x-test-trap").is_some() {
            panic!("x-test-trap: deliberate panic (test-trap build)");
        }
        f.tick();
        f.poll();
        let (s, l) = (&*f.shared, &*f.local);
        f.exchange
            .on_request_headers(&on_worker(s, l), &http, &s.plan, &l.worker, end_of_stream)
    }));
    let next = next.unwrap_or_else(|_| {
        f.panicked();
        // The catch-all route: the monolith.
        http.set_request_header(&f.shared.plan.config.target_header, None);
        Next::Continue
    });
    if http.rerouted.get() {
        // Envoy picked the route before the filters ran and does not pick
        // it again by itself after a module sets a header. Measured on
        // 1.40 (README "Two builds"): this call re-picks the route (header-
        // matched routes and `cluster_header` alike);
        // `clear_route_cluster_cache` keeps the route chosen (the catch-all:
        // the monolith) and on a `cluster_header` route gave 503 NC.
        // SAFETY: `filter_envoy` is valid during the hook.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy) };
    }
    match next {
        Next::Continue => abi::CONTINUE,
        Next::Stop => abi::STOP_ITERATION,
    }
}

/// # Safety
/// See [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        stream_step(filter_envoy, filter_module, |f, http| {
            let size = f.chunk_size(http, abi::RECEIVED_REQUEST_BODY);
            let (s, l) = (&*f.shared, &*f.local);
            f.exchange.on_request_body(
                &on_worker(s, l),
                http,
                &s.plan,
                &l.worker,
                size,
                end_of_stream,
            );
        })
    }
}

/// # Safety
/// See [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        stream_step(filter_envoy, filter_module, |f, http| {
            f.tick();
            let (s, l) = (&*f.shared, &*f.local);
            let host = on_worker(s, l);
            f.exchange
                .on_response_headers(&host, http, &s.plan, &l.worker, end_of_stream);
            flow::counters::flush(&host, &l.worker.counters);
        })
    }
}

/// # Safety
/// See [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        stream_step(filter_envoy, filter_module, |f, http| {
            let size = f.chunk_size(http, abi::RECEIVED_RESPONSE_BODY);
            let (s, l) = (&*f.shared, &*f.local);
            f.exchange.on_response_body(
                &on_worker(s, l),
                http,
                &s.plan,
                &l.worker,
                size,
                end_of_stream,
            );
        })
    }
}

/// Request trailers: a shadowed request's side ends here.
///
/// # Safety
/// See [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        stream_step(filter_envoy, filter_module, |f, _| {
            let (s, l) = (&*f.shared, &*f.local);
            f.exchange
                .on_request_trailers(&on_worker(s, l), &s.plan, &l.worker);
        })
    }
}

/// Response trailers: a gRPC response's outcome (`grpc-status`).
///
/// # Safety
/// See [`filter`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter_envoy: FilterPtr,
    filter_module: *const c_void,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        stream_step(filter_envoy, filter_module, |f, http| {
            let (s, l) = (&*f.shared, &*f.local);
            let host = on_worker(s, l);
            f.exchange
                .on_response_trailers(&host, http, &s.plan, &l.worker);
            flow::counters::flush(&host, &l.worker.counters);
        })
    }
}

/// The stream is gone: the flow's end, then the stream's state.
///
/// # Safety
/// See [`filter`]; Envoy calls this once, last.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module: *const c_void) {
    if filter_module.is_null() {
        return;
    }
    // SAFETY: the pointer came from `Box::into_raw`; Envoy destroys it once.
    let mut f = unsafe { Box::from_raw(filter_module as *mut Filter) };
    let r = catch_unwind(AssertUnwindSafe(|| {
        f.poll();
        let shadowed = f.exchange.shadow.is_some();
        let (s, l) = (&*f.shared, &*f.local);
        let host = on_worker(s, l);
        f.exchange.end(&host, &s.plan, &l.worker);
        flow::counters::flush(&host, &l.worker.counters);
        if shadowed {
            // A verdict this stream ended: its differing fields reach
            // their counters with it.
            flow::shadow::tick(&host, &s.plan, &l.worker);
        }
    }));
    if r.is_err() {
        f.panicked();
    }
}

/// Runs `f` on the configuration behind `config_module` (a main-thread
/// event of its calls out), catching a panic.
///
/// # Safety
/// `config_module`: from [`envoy_dynamic_module_on_http_filter_config_new`],
/// not destroyed (Envoy calls these hooks only while the configuration
/// exists).
unsafe fn on_config(config_module: *const c_void, f: impl FnOnce(&Shared)) {
    // SAFETY: the caller's contract.
    let Some(shared) = (unsafe { (config_module as *const Shared).as_ref() }) else {
        return;
    };
    if catch_unwind(AssertUnwindSafe(|| f(shared))).is_err() {
        if let Some(id) = shared.panics {
            shared.host.increment_metric(id, 1);
        }
    }
}

/// Main thread: workers queued calls out; they start here.
///
/// # Safety
/// Envoy's contract: see [`on_config`]; `config_envoy` valid during the
/// hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigPtr,
    config_module: *const c_void,
    _event_id: u64,
) {
    // SAFETY: the caller's contract.
    unsafe { on_config(config_module, |s| s.calls.start_queued(config_envoy)) }
}

/// Main thread: a call's response headers.
///
/// # Safety
/// See [`on_config`]; `headers` valid for `n` during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigPtr,
    config_module: *const c_void,
    stream_id: u64,
    headers: *const abi::Header,
    n: usize,
    _end_stream: bool,
) {
    // SAFETY: the caller's contract.
    unsafe { on_config(config_module, |s| s.calls.on_headers(stream_id, headers, n)) }
}

/// Main thread: a chunk of a call's response body.
///
/// # Safety
/// See [`on_config`]; `chunks` valid for `n` during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigPtr,
    config_module: *const c_void,
    stream_id: u64,
    chunks: *const Buf,
    n: usize,
    _end_stream: bool,
) {
    // SAFETY: the caller's contract.
    unsafe { on_config(config_module, |s| s.calls.on_data(stream_id, chunks, n)) }
}

/// Main thread: a call's response trailers (gRPC: `grpc-status`).
///
/// # Safety
/// See [`on_config`]; `trailers` valid for `n` during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigPtr,
    config_module: *const c_void,
    stream_id: u64,
    trailers: *const abi::Header,
    n: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        on_config(config_module, |s| {
            s.calls.on_trailers(stream_id, trailers, n)
        })
    }
}

/// Main thread: a call is answered; its worker gets the answer.
///
/// # Safety
/// See [`on_config`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigPtr,
    config_module: *const c_void,
    stream_id: u64,
) {
    // SAFETY: the caller's contract.
    unsafe { on_config(config_module, |s| s.calls.on_end(stream_id, true)) }
}

/// Main thread: a call failed (reset); its worker gets a failed answer.
///
/// # Safety
/// See [`on_config`].
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigPtr,
    config_module: *const c_void,
    stream_id: u64,
    _reason: u32,
) {
    // SAFETY: the caller's contract.
    unsafe { on_config(config_module, |s| s.calls.on_end(stream_id, false)) }
}

// The hooks Envoy resolves and we do not use: each does nothing (the
// status ones answer "continue"). Extra C arguments are ignored.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply() -> u32 {
    abi::CONTINUE
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset() {}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark()
{
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark()
{
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done() {}
/// No per-route configuration (null refuses one).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new() -> *const c_void {
    std::ptr::null()
}
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy() {}
