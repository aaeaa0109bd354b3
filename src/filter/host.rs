//! The flow's [`Host`] and [`Stream`] as proxy-wasm host calls: the whole
//! request header map in one crossing (read in place by
//! [`crate::headers::HeaderMap`]), the clock, metrics (ids cached per VM),
//! shared data with its compare-and-swap, calls out through the root.
//!
//! Host errors never trap: a failed read is `None`, a failed write is
//! ignored (the SDK's context methods would `unwrap`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ptr::null_mut;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

use super::{shadow, trace};
use crate::decision::Reason;
use crate::flow::shadow::Call;
use crate::flow::{Host, Stream};
use crate::stats::Kind;

extern "C" {
    // The same import the SDK declares (`map_type` 0 = request headers;
    // returns a status, 0 = Ok). Declared here so that the map can be read
    // in place: the SDK's `get_http_request_headers_bytes` builds a `Vec`
    // of owned pairs, two allocations per header.
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

const REQUEST_HEADERS: u32 = 0;

/// Every request header, serialized (one host call, one copy into the VM).
fn request_headers() -> Vec<u8> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host stored a buffer it allocated through the
    // SDK's `proxy_on_memory_allocate` (a boxed slice of exactly `size`
    // bytes), which we now own; this is how the SDK itself takes it.
    unsafe {
        if proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) == 0 && !data.is_null()
        {
            Vec::from_raw_parts(data, size, size)
        } else {
            Vec::new()
        }
    }
}

thread_local! {
    /// Host ids of the metrics this VM defined, by kind and name. Envoy
    /// hands out a new id (and keeps a new entry for the VM's lifetime) on
    /// every `define_metric`, even for a name it knows: without this cache
    /// every configuration update would grow Envoy's memory by an entry per
    /// stat and VM.
    static DEFINED: RefCell<HashMap<(Kind, String), Option<u32>>> = RefCell::new(HashMap::new());
}

/// The host id of `name`, defined once per VM.
fn host_id(kind: Kind, name: &str) -> Option<u32> {
    DEFINED.with(|d| {
        if let Some(id) = d.borrow().get(&(kind, name.to_string())) {
            return *id;
        }
        let t = match kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let id = hostcalls::define_metric(t, name).ok();
        d.borrow_mut().insert((kind, name.to_string()), id);
        id
    })
}

/// The VM as the flow's host. `root`: the root context that sends calls
/// out, while it exists.
pub struct Wasm<'a> {
    pub root: &'a Cell<Option<u32>>,
}

impl Host for Wasm<'_> {
    fn now(&self) -> Duration {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default()
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        host_id(kind, name)
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        let _ = hostcalls::increment_metric(id, delta as i64);
    }

    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        let (bytes, cas) = hostcalls::get_shared_data(key).ok()?;
        Some((bytes.unwrap_or_default(), cas))
    }

    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, value, cas).is_ok()
    }

    fn send_call(&self, call: Call) -> Option<u32> {
        shadow::send(self.root.get()?, call)
    }

    fn call_response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten()
    }

    fn call_response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseTrailers, name)
            .ok()
            .flatten()
    }
}

/// The HTTP stream whose callback is running.
pub struct Http;

impl Stream for Http {
    fn request_headers(&self) -> Vec<u8> {
        request_headers()
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn send_local_reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
        let _ = hostcalls::send_http_response(status, headers, body);
    }

    fn publish_reason(&self, reason: Reason) {
        trace::publish(reason);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn response_flags(&self) -> u64 {
        hostcalls::get_property(vec!["response", "flags"])
            .ok()
            .flatten()
            .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
            .unwrap_or(0)
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
            .ok()
            .flatten()
    }

    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, name)
            .ok()
            .flatten()
    }
}
