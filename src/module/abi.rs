//! Our own declarations of the part of Envoy's dynamic-module ABI this
//! module uses, written from Envoy's C header
//! (`source/extensions/dynamic_modules/abi/abi.h`, ABI "v0.1.0" as the
//! copy we read states; Envoy 1.40 loads it, see `mod.rs`). Only what we
//! call is declared; each name is checked against the pinned binary by
//! `integration/tests/module.rs`.
//!
//! C enums are passed and returned as `u32`; a C `{ptr, length}` struct
//! passed by value is [`Buf`].

use std::ffi::c_void;

/// The header's `envoy_dynamic_module_type_{module,envoy}_buffer`: a
/// pointer and a length (who owns it depends on the direction).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buf {
    pub ptr: *const u8,
    pub len: usize,
}

impl Buf {
    pub const NULL: Buf = Buf {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn of(bytes: &[u8]) -> Buf {
        Buf {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes, if any.
    ///
    /// # Safety
    /// `ptr` must be valid for `len` bytes for `'a` (Envoy's buffers: until
    /// the end of the current hook).
    pub unsafe fn bytes<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
        }
    }
}

/// The header's `envoy_dynamic_module_type_{module,envoy}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    pub key: Buf,
    pub value: Buf,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADER: u32 = 0;
pub const RESPONSE_HEADER: u32 = 2;
pub const RESPONSE_TRAILER: u32 = 3;

/// `envoy_dynamic_module_type_attribute_id_ResponseFlags` (the 18th
/// attribute of the enum).
pub const ATTRIBUTE_RESPONSE_FLAGS: u32 = 17;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_OK: u32 = 0;

/// `..._request_headers_status_Continue` / `_StopIteration` (the other
/// statuses we return, body/trailers/response `Continue`, are 0 too).
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// `envoy_dynamic_module_type_http_body_type`: the chunk a body hook
/// received.
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const RECEIVED_RESPONSE_BODY: u32 = 2;

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
pub const CALLOUT_STARTED: u32 = 0;

pub type ConfigPtr = *mut c_void;
pub type FilterPtr = *mut c_void;
/// A configuration scheduler (`..._http_filter_config_scheduler_module_ptr`):
/// Envoy allocates it, the module deletes it.
pub type SchedulerPtr = *mut c_void;

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: Buf);

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigPtr,
        name: Buf,
        label_names: *const Buf,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigPtr,
        name: Buf,
        label_names: *const Buf,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigPtr,
        name: Buf,
        label_names: *const Buf,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigPtr,
        id: usize,
        label_values: *const Buf,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigPtr,
        id: usize,
        label_values: *const Buf,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: ConfigPtr,
        id: usize,
        label_values: *const Buf,
        label_values_len: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterPtr,
        header_type: u32,
        key: Buf,
        result: *mut Buf,
        index: usize,
        count: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterPtr,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterPtr,
        header_type: u32,
        result: *mut Header,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterPtr,
        header_type: u32,
        key: Buf,
        value: Buf,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterPtr,
        status: u32,
        headers: *const Header,
        headers_len: usize,
        body: Buf,
        details: Buf,
    );

    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterPtr,
        key: Buf,
        value: Buf,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterPtr);

    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter: FilterPtr,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterPtr,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterPtr,
        body_type: u32,
        result: *mut Buf,
    ) -> bool;

    /// Posts `event_id` to the main thread's dispatcher; Envoy then calls
    /// `envoy_dynamic_module_on_http_filter_config_scheduled` there.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigPtr,
    ) -> SchedulerPtr;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: SchedulerPtr,
    );

    /// A call out on the configuration (main thread only: it uses the
    /// main thread's cluster manager); the answer comes in the
    /// `..._config_http_stream_*` hooks. Returns an init result.
    pub fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        config: ConfigPtr,
        stream_id: *mut u64,
        cluster: Buf,
        headers: *const Header,
        headers_len: usize,
        body: Buf,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterPtr,
        attribute: u32,
        result: *mut u64,
    ) -> bool;
}
