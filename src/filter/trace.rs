//! The decision's reason as Envoy filter state, for spans and log lines.
//!
//! One host call, and only for a reason other than a split
//! ([`Reason::published`]): the common request publishes nothing and the
//! shipped configs tag it `split` from the target header alone.

use crate::decision::{Reason, PROPERTY};

extern "C" {
    // The same import the SDK declares (returns a status, 0 = Ok). Declared
    // here because the SDK's `set_property` panics (traps the VM) on any
    // other status; a reason Envoy refuses is not worth a request.
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// Publishes `reason` as filter state `wasm.shift_reason` (nothing for a
/// split). Errors are ignored: the span then reads as a split.
pub fn publish(reason: Reason) {
    let Some(value) = reason.published() else {
        return;
    };
    // A one-segment property path is the segment itself (the SDK joins
    // segments with NUL bytes).
    // SAFETY: both buffers outlive the call; the host only reads them.
    unsafe {
        proxy_set_property(
            PROPERTY.as_ptr(),
            PROPERTY.len(),
            value.as_ptr(),
            value.len(),
        );
    }
}
