//! Shadow calls out of the filter, sent from the root context.
//!
//! Where the answers land. Envoy makes every call on the plugin's root
//! context (proxy-wasm-cpp-host `http_call` uses `root_context()`), so the
//! call outlives the request; but the Rust SDK 0.2.5 delivers
//! `on_http_call_response` to the context that was *active* when the call
//! was made (`register_callout` records `active_id`) and drops it if that
//! context is gone. A shadow slower than its primary would be lost. So the
//! call is made while the root is the active context: the request path
//! puts it in [`OUTBOX`] and calls the SDK's own `proxy_on_queue_ready`
//! entry point for the root (a plain function call inside the module; no
//! queue, no host round trip; the export itself is not shipped), whose
//! `on_queue_ready` sends it. Every answer then reaches
//! [`crate::flow::shadow::on_answer`] through the root, which lives as long
//! as the configuration, whether the primary is still streaming or long
//! done. The orchestration (draw, table, verdicts) is the flow's
//! (`src/flow/shadow.rs`).

use std::cell::{Cell, RefCell};
use std::time::Duration;

use proxy_wasm::hostcalls;

use crate::flow::shadow::Call;

/// The `queue_id` that means "send the call in [`OUTBOX`]" (no real queue
/// is ever registered by this filter).
pub const WAKE: u32 = u32::MAX;

extern "C" {
    /// The SDK's export (proxy-wasm 0.2.5 `dispatcher.rs`): sets the active
    /// context to `context_id` (a root) and calls its `on_queue_ready`.
    fn proxy_on_queue_ready(context_id: u32, queue_id: u32);
}

thread_local! {
    /// The call handed to the root, then the token (or failure) back.
    static OUTBOX: RefCell<Option<Call>> = const { RefCell::new(None) };
    static SENT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Sends `call` from the root context `root` (see the module doc); its
/// token.
pub fn send(root: u32, call: Call) -> Option<u32> {
    OUTBOX.with(|o| *o.borrow_mut() = Some(call));
    SENT.with(|s| s.set(None));
    // SAFETY: the SDK's own exported entry point, called as the host would
    // call it, on a root context that exists (`root` is cleared when that
    // root is dropped); it borrows the SDK's table of roots, which no HTTP
    // callback holds.
    unsafe { proxy_on_queue_ready(root, WAKE) };
    OUTBOX.with(|o| o.borrow_mut().take());
    SENT.with(Cell::take)
}

/// The root's side of [`send`]: called in `on_queue_ready(WAKE)`, with the
/// root as the SDK's active context.
pub fn send_outbox() {
    let Some(call) = OUTBOX.with(|o| o.borrow_mut().take()) else {
        return;
    };
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?)))
        .collect();
    let token = hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        call.body.as_deref(),
        vec![],
        Duration::from_millis(u64::from(call.timeout_ms)),
    );
    SENT.with(|s| s.set(token.ok()));
}
