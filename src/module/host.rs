//! The flow's [`Host`] and [`Stream`] as dynamic-module callbacks.
//!
//! - metrics: defined on the filter configuration while Envoy creates it
//!   ([`Defining`], the only time it accepts new ones) and written through
//!   the configuration's own callbacks from any worker ([`Native`]); the
//!   flow's ids are process-wide (one per name), each configuration maps
//!   them to its own Envoy ids; the shadow field counters, whose labels
//!   are learned at run time, are label sets of one counter defined with
//!   the configuration;
//! - bodies: a body hook's chunk is read only for a shadowed request;
//! - the store the breaker and guard share: process memory behind a
//!   `Mutex` (no host call; every worker and the main thread see it);
//! - calls out: [`OnWorker`], the host the hooks give the flow on a
//!   worker thread, queues each call for the main thread (`calls.rs`) and,
//!   while an answer from its mailbox is delivered, reads that answer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::abi::{self, Buf, ConfigPtr, FilterPtr, Header};
use super::calls::Calls;
use crate::callout::{Answer, Mailbox};
use crate::decision::{Reason, FILTER_STATE_KEY};
use crate::flow::shadow::Call;
use crate::flow::{Host, Stream};
use crate::stats::Kind;

/// One entry of the process-wide store: the value and its version (the
/// compare-and-swap token).
struct Entry {
    value: Vec<u8>,
    cas: u32,
}

/// The breaker's and guard's state, shared by every worker thread.
fn store() -> &'static Mutex<HashMap<String, Entry>> {
    static STORE: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
    STORE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Process-wide metric ids: the id the flow holds for a (kind, name) is
/// the same in every configuration. Envoy numbers metrics per
/// configuration object; the flow zeroes the gauges an old configuration
/// set through the new one (`flow::tick::take_over_gauges`), so an id must
/// not mean another stat there.
#[derive(Default)]
struct Registry {
    names: Vec<(Kind, String)>,
    ids: HashMap<(Kind, String), u32>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// The process-wide id of (kind, name).
fn intern(kind: Kind, name: &str) -> Option<u32> {
    let mut r = registry().lock().ok()?;
    let key = (kind, name.to_string());
    if let Some(id) = r.ids.get(&key) {
        return Some(*id);
    }
    let id = u32::try_from(r.names.len()).ok()?;
    r.names.push(key.clone());
    r.ids.insert(key, id);
    Some(id)
}

/// The (kind, name) of a process-wide id.
fn name_of(id: u32) -> Option<(Kind, String)> {
    registry().lock().ok()?.names.get(id as usize).cloned()
}

/// Defines (kind, name) on Envoy's configuration `config`; Envoy's id.
fn define_on(config: ConfigPtr, kind: Kind, name: &str) -> Option<usize> {
    let mut id: usize = 0;
    let name = Buf::of(name.as_bytes());
    let labels = std::ptr::null();
    // SAFETY: `config` is Envoy's configuration pointer handed to
    // `on_http_filter_config_new`, alive while the configuration is;
    // `name` outlives the call, Envoy copies it.
    let result = unsafe {
        match kind {
            Kind::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                config, name, labels, 0, &mut id,
            ),
            Kind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                config, name, labels, 0, &mut id,
            ),
            Kind::Histogram => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram(
                    config, name, labels, 0, &mut id,
                )
            }
        }
    };
    (result == abi::METRICS_OK).then_some(id)
}

/// The field counter (`fields.rs`): one counter on Envoy's configuration
/// with labels, since field labels are learned after Envoy stops
/// accepting new metrics.
const FIELD_COUNTER: &str = "traffic_shift.shadow_field";
const FIELD_LABELS: [&str; 3] = ["route", "field", "kind"];

/// Defines the field counter on `config`; Envoy's id.
fn define_fields(config: ConfigPtr) -> Option<usize> {
    let mut id: usize = 0;
    let labels: Vec<Buf> = FIELD_LABELS.iter().map(|l| Buf::of(l.as_bytes())).collect();
    // SAFETY: as in `define_on`; the label names outlive the call.
    let result = unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
            config,
            Buf::of(FIELD_COUNTER.as_bytes()),
            labels.as_ptr(),
            labels.len(),
            &mut id,
        )
    };
    (result == abi::METRICS_OK).then_some(id)
}

/// Adds `value` to the field counter `id` of `config` for the field stat
/// named `name` (`fields::stat_name`).
fn write_field(config: ConfigPtr, id: usize, name: &str, value: u64) {
    let Some((route, field, kind)) = crate::fields::parse_stat_name(name) else {
        return;
    };
    let values = [
        Buf::of(route.as_bytes()),
        Buf::of(field.as_bytes()),
        Buf::of(kind.as_str().as_bytes()),
    ];
    // SAFETY: as in `write`; the label values outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config,
            id,
            values.as_ptr(),
            values.len(),
            value,
        );
    }
}

/// Writes `value` to Envoy's metric `id` of `config` (counters: adds it;
/// gauges: sets it; histograms: records it).
fn write(config: ConfigPtr, kind: Kind, id: usize, value: u64) {
    let labels = std::ptr::null();
    // SAFETY: as in `define_on`; the configuration's metric callbacks may
    // be called from any thread.
    unsafe {
        match kind {
            Kind::Counter => {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config, id, labels, 0, value,
                );
            }
            Kind::Gauge => {
                abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    config, id, labels, 0, value,
                );
            }
            Kind::Histogram => {
                abi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                    config, id, labels, 0, value,
                );
            }
        }
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn store_get(key: &str) -> Option<(Vec<u8>, Option<u32>)> {
    let store = store().lock().ok()?;
    Some(match store.get(key) {
        Some(e) => (e.value.clone(), Some(e.cas)),
        None => (Vec::new(), None),
    })
}

fn store_set(key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
    let Ok(mut store) = store().lock() else {
        return false;
    };
    let current = store.get(key).map(|e| e.cas);
    if cas.is_some() && cas != current {
        return false;
    }
    match value {
        Some(v) => {
            let cas = current.unwrap_or(0).wrapping_add(1).max(1);
            store.insert(
                key.to_string(),
                Entry {
                    value: v.to_vec(),
                    cas,
                },
            );
        }
        None => {
            store.remove(key);
        }
    }
    true
}

/// Envoy's filter configuration while it is being created (on the main
/// thread, in `on_http_filter_config_new`): the only time Envoy accepts
/// new metrics. [`Defining::done`] makes the [`Native`] host the workers
/// use.
pub struct Defining {
    pub config: ConfigPtr,
    /// Envoy's id of each process-wide id this configuration defined.
    ids: RefCell<Vec<Option<(Kind, usize)>>>,
    /// Envoy's id of the field counter, if defined.
    fields: Cell<Option<usize>>,
}

impl Defining {
    pub fn new(config: ConfigPtr) -> Defining {
        Defining {
            config,
            ids: RefCell::new(Vec::new()),
            fields: Cell::new(None),
        }
    }

    /// Defines the shadow field counter (for a configuration with shadow
    /// routes).
    pub fn define_fields(&self) {
        self.fields.set(define_fields(self.config));
    }

    /// Envoy's id of process-wide `id` here, defining it (by its name) if
    /// this configuration has not.
    fn envoy_id(&self, id: u32) -> Option<(Kind, usize)> {
        if let Some(Some(e)) = self.ids.borrow().get(id as usize) {
            return Some(*e);
        }
        let (kind, name) = name_of(id)?;
        let e = (kind, define_on(self.config, kind, &name)?);
        let mut ids = self.ids.borrow_mut();
        if ids.len() <= id as usize {
            ids.resize(id as usize + 1, None);
        }
        if let Some(slot) = ids.get_mut(id as usize) {
            *slot = Some(e);
        }
        Some(e)
    }

    /// The host the workers use, with every metric defined so far.
    pub fn done(self) -> Native {
        Native {
            config: self.config,
            ids: self.ids.into_inner().into_boxed_slice(),
            fields: self.fields.get(),
        }
    }
}

impl Host for Defining {
    fn now(&self) -> Duration {
        now()
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        let id = intern(kind, name)?;
        self.envoy_id(id).map(|_| id)
    }

    fn record_metric(&self, id: u32, value: u64) {
        if let Some((kind, e)) = self.envoy_id(id) {
            write(self.config, kind, e, value);
        }
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        if let Some((kind, e)) = self.envoy_id(id) {
            write(self.config, kind, e, delta);
        }
    }

    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        store_get(key)
    }

    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        store_set(key, value, cas)
    }
}

/// Envoy's filter configuration as the flow's host, on any thread (metrics
/// are written through the configuration).
pub struct Native {
    pub config: ConfigPtr,
    /// Envoy's id of each process-wide metric id, for this configuration.
    ids: Box<[Option<(Kind, usize)>]>,
    /// Envoy's id of the field counter, if defined.
    fields: Option<usize>,
}

impl Native {
    fn write(&self, id: u32, value: u64) {
        match (self.ids.get(id as usize), self.fields) {
            (Some(Some((kind, e))), _) => write(self.config, *kind, *e, value),
            // A field counter (the registry's lock: once per field and
            // flush).
            (_, Some(f)) => {
                if let Some((_, name)) = name_of(id) {
                    write_field(self.config, f, &name, value);
                }
            }
            _ => {}
        }
    }
}

impl Host for Native {
    fn now(&self) -> Duration {
        now()
    }

    /// Envoy refuses new metrics once the configuration exists; a shadow
    /// field counter is a label set of the field counter defined with it.
    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        let field = kind == Kind::Counter && crate::fields::parse_stat_name(name).is_some();
        if !field || self.fields.is_none() {
            return None;
        }
        intern(kind, name)
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.write(id, value);
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        self.write(id, delta);
    }

    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        store_get(key)
    }

    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        store_set(key, value, cas)
    }
}

/// The flow's host on a worker thread: Envoy's configuration (metrics,
/// clock, store), its calls out with this worker's mailbox, and while an
/// answer is being delivered, that answer.
#[derive(Clone, Copy)]
pub struct OnWorker<'a> {
    pub native: &'a Native,
    pub calls: &'a Calls,
    pub mailbox: &'a Arc<Mailbox>,
    pub answer: Option<&'a Answer>,
}

impl Host for OnWorker<'_> {
    fn now(&self) -> Duration {
        now()
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        self.native.define_metric(kind, name)
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.native.write(id, value);
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        self.native.write(id, delta);
    }

    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        store_get(key)
    }

    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        store_set(key, value, cas)
    }

    fn send_call(&self, call: Call) -> Option<u32> {
        self.calls.send(call, self.mailbox)
    }

    fn call_response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.answer?.header(name)
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.answer?.body(size)
    }

    fn call_response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.answer?.trailer(name)
    }
}

/// The HTTP stream whose hook is running.
pub struct Http {
    pub filter: FilterPtr,
    /// A request header was written: the route must be picked again.
    pub rerouted: Cell<bool>,
}

impl Http {
    pub fn new(filter: FilterPtr) -> Http {
        Http {
            filter,
            rerouted: Cell::new(false),
        }
    }

    /// Bytes in the body chunk this hook received (`body_type`: request
    /// or response).
    pub fn body_size(&self, body_type: u32) -> usize {
        // SAFETY: `filter` is valid during the hook.
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(self.filter, body_type) }
    }

    /// The body chunk this hook received, if it has `size` bytes.
    fn body(&self, body_type: u32, size: usize) -> Option<Vec<u8>> {
        // SAFETY: `filter` is valid during the hook; `chunks` has room for
        // the count Envoy just gave; the chunks stay valid until the hook
        // ends and we copy them at once.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(
                self.filter,
                body_type,
            );
            let mut chunks = vec![Buf::NULL; n];
            if n == 0
                || !abi::envoy_dynamic_module_callback_http_get_body_chunks(
                    self.filter,
                    body_type,
                    chunks.as_mut_ptr(),
                )
            {
                return None;
            }
            let mut out = Vec::with_capacity(size);
            for c in chunks {
                out.extend_from_slice(c.bytes().unwrap_or_default());
            }
            (out.len() == size).then_some(out)
        }
    }

    fn header(&self, header_type: u32, name: &str) -> Option<Vec<u8>> {
        let mut value = Buf::NULL;
        // SAFETY: `filter` is the stream's pointer, valid during the hook;
        // Envoy's value stays valid until the hook ends or a header is set,
        // and we copy it at once.
        unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.filter,
                header_type,
                Buf::of(name.as_bytes()),
                &mut value,
                0,
                std::ptr::null_mut(),
            );
            value.bytes().map(<[u8]>::to_vec)
        }
    }
}

/// Every request header in [`crate::headers`]'s layout.
fn serialize(headers: &[Header]) -> Vec<u8> {
    // SAFETY (for the `bytes` calls): Envoy's header buffers are valid
    // until the end of the hook and we copy them here.
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|h| unsafe { (h.key.bytes().unwrap_or(&[]), h.value.bytes().unwrap_or(&[])) })
        .collect();
    let size: usize = pairs.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in &pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in &pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

impl Stream for Http {
    fn request_headers(&self) -> Vec<u8> {
        // SAFETY: `filter` is valid during the hook; `buf` has room for
        // the count Envoy just gave.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_headers_size(
                self.filter,
                abi::REQUEST_HEADER,
            );
            let mut buf = vec![
                Header {
                    key: Buf::NULL,
                    value: Buf::NULL
                };
                n
            ];
            if n == 0
                || !abi::envoy_dynamic_module_callback_http_get_headers(
                    self.filter,
                    abi::REQUEST_HEADER,
                    buf.as_mut_ptr(),
                )
            {
                return Vec::new();
            }
            serialize(&buf)
        }
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.header(abi::REQUEST_HEADER, name)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let value = value.map_or(Buf::NULL, |v| Buf::of(v.as_bytes()));
        // SAFETY: both buffers outlive the call; Envoy copies them.
        let set = unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.filter,
                abi::REQUEST_HEADER,
                Buf::of(name.as_bytes()),
                value,
            )
        };
        if set {
            self.rerouted.set(true);
        }
    }

    fn send_local_reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
        let headers: Vec<Header> = headers
            .iter()
            .map(|(k, v)| Header {
                key: Buf::of(k.as_bytes()),
                value: Buf::of(v.as_bytes()),
            })
            .collect();
        // SAFETY: every buffer outlives the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.filter,
                status,
                headers.as_ptr(),
                headers.len(),
                body.map_or(Buf::NULL, Buf::of),
                Buf::NULL,
            );
        }
    }

    fn publish_reason(&self, reason: Reason) {
        let Some(value) = reason.published() else {
            return;
        };
        // SAFETY: both buffers outlive the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.filter,
                Buf::of(FILTER_STATE_KEY.as_bytes()),
                Buf::of(value.as_bytes()),
            );
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.header(abi::RESPONSE_HEADER, name)
    }

    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.header(abi::RESPONSE_TRAILER, name)
    }

    fn response_flags(&self) -> u64 {
        let mut flags = 0u64;
        // SAFETY: `filter` is valid during the hook; `flags` outlives it.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.filter,
                abi::ATTRIBUTE_RESPONSE_FLAGS,
                &mut flags,
            )
        };
        if ok {
            flags
        } else {
            0
        }
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.body(abi::RECEIVED_REQUEST_BODY, size)
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.body(abi::RECEIVED_RESPONSE_BODY, size)
    }
}
