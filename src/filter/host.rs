//! Host calls that are not the SDK's own: the whole request header map in
//! one crossing, read in place by [`crate::headers::HeaderMap`]; the clock.

use std::ptr::null_mut;
use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;

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
pub fn request_headers() -> Vec<u8> {
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

/// Milliseconds since the Unix epoch (the clock the core works with).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The host's wall clock, in ms since the epoch.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time().map_or(0, epoch_ms)
}
