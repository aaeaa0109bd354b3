//! Shadow calls out of the module, sent from Envoy's main thread.
//!
//! Why the main thread. A call Envoy makes for a stream
//! (`..._http_filter_http_callout`) is cancelled when that stream is
//! destroyed, so a shadow slower than its primary would be lost. A call
//! made on the filter configuration lives as long as the configuration,
//! but it uses the main thread's cluster manager and may only be made
//! there. So:
//!
//! 1. a worker's [`Calls::send`] queues the call with a token and its
//!    [`Mailbox`], and commits the configuration's scheduler (a post to
//!    the main thread's dispatcher; one post per batch: [`Calls::woken`]);
//! 2. on the main thread, `on_http_filter_config_scheduled` runs
//!    [`Calls::start_queued`]: each call becomes a configuration HTTP
//!    stream (`..._config_start_http_stream`, the request sent whole); one
//!    that cannot start is answered at once as failed;
//! 3. the stream's hooks (headers, body chunks, trailers) fill an owned
//!    [`Answer`]; at its end (complete: the answer; reset: failed) it is
//!    posted to the worker's mailbox;
//! 4. the worker takes its mail on its next hook and hands each answer to
//!    `flow::shadow::on_answer` (`mod.rs`, `Filter::poll`).
//!
//! A stream rather than a one-shot call: the one-shot answer
//! (`..._config_http_callout_done`) carries headers and body but not
//! trailers, and a gRPC answer's `grpc-status` is a trailer.
//!
//! When the configuration is destroyed, Envoy resets its open streams
//! without calling the module; the queued and open calls are dropped here
//! with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::abi::{self, Buf, ConfigPtr, Header, SchedulerPtr};
use crate::callout::{self, Answer, Delivered, Mailbox, Pairs};
use crate::flow::shadow::Call;

/// A call queued by a worker.
struct Queued {
    call: Call,
    token: u32,
    mailbox: Arc<Mailbox>,
}

/// A call under way: whom to answer, what came so far.
struct Open {
    token: u32,
    mailbox: Arc<Mailbox>,
    answer: Answer,
}

/// One configuration's calls out.
pub struct Calls {
    /// Null if Envoy gave none (then no call is sent).
    scheduler: SchedulerPtr,
    /// A post to the main thread is on its way.
    woken: AtomicBool,
    queued: Mutex<Vec<Queued>>,
    /// By Envoy's stream id (main thread only; a lock for `Sync`, never
    /// contended).
    open: Mutex<HashMap<u64, Open>>,
    next_token: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Copies Envoy's header array.
///
/// # Safety
/// `ptr` valid for `n` headers whose buffers are valid (during the hook).
unsafe fn pairs(ptr: *const Header, n: usize) -> Pairs {
    if ptr.is_null() || n == 0 {
        return Pairs::new();
    }
    // SAFETY: the caller's contract.
    let headers = unsafe { std::slice::from_raw_parts(ptr, n) };
    headers
        .iter()
        // SAFETY: as above; copied at once.
        .map(|h| unsafe {
            (
                h.key.bytes().unwrap_or_default().to_vec(),
                h.value.bytes().unwrap_or_default().to_vec(),
            )
        })
        .collect()
}

impl Calls {
    /// On the main thread, while Envoy creates the configuration.
    pub fn new(config: ConfigPtr) -> Calls {
        // SAFETY: `config` is the configuration Envoy is creating; the
        // scheduler is deleted in `Drop`.
        let scheduler =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        Calls {
            scheduler,
            woken: AtomicBool::new(false),
            queued: Mutex::new(Vec::new()),
            open: Mutex::new(HashMap::new()),
            next_token: AtomicU32::new(1),
        }
    }

    /// On a worker: queues `call` for the main thread; its token (`None`:
    /// no scheduler, the call is refused).
    pub fn send(&self, call: Call, mailbox: &Arc<Mailbox>) -> Option<u32> {
        if self.scheduler.is_null() {
            return None;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        lock(&self.queued).push(Queued {
            call,
            token,
            mailbox: mailbox.clone(),
        });
        if !self.woken.swap(true, Ordering::SeqCst) {
            // SAFETY: the scheduler lives as long as `self` (deleted in
            // `Drop`, when no worker holds the configuration any more);
            // commit posts to the main thread's dispatcher, which any
            // thread may do.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                    self.scheduler,
                    0,
                )
            };
        }
        Some(token)
    }

    /// On the main thread (the scheduled event): starts every queued call.
    pub fn start_queued(&self, config: ConfigPtr) {
        // Cleared before taking: a call queued meanwhile posts again.
        self.woken.store(false, Ordering::SeqCst);
        let queued = std::mem::take(&mut *lock(&self.queued));
        for q in queued {
            self.start(config, q);
        }
    }

    fn start(&self, config: ConfigPtr, q: Queued) {
        let body = q.call.body.as_deref();
        let pairs = callout::request_headers(&q.call.headers, body);
        let headers: Vec<Header> = pairs
            .iter()
            .map(|(k, v)| Header {
                key: Buf::of(k),
                value: Buf::of(v),
            })
            .collect();
        let mut id = 0u64;
        // SAFETY: main thread, `config` valid during the hook; every
        // buffer outlives the call (Envoy copies them).
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                config,
                &mut id,
                Buf::of(q.call.cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                body.map_or(Buf::NULL, Buf::of),
                true,
                u64::from(q.call.timeout_ms),
            )
        };
        if result == abi::CALLOUT_STARTED {
            lock(&self.open).insert(
                id,
                Open {
                    token: q.token,
                    mailbox: q.mailbox,
                    answer: Answer::default(),
                },
            );
        } else {
            q.mailbox.post(Delivered {
                token: q.token,
                answer: None,
            });
        }
    }

    /// A call's response headers.
    ///
    /// # Safety
    /// See [`pairs`].
    pub unsafe fn on_headers(&self, id: u64, headers: *const Header, n: usize) {
        if let Some(o) = lock(&self.open).get_mut(&id) {
            // SAFETY: the caller's contract.
            o.answer.headers = unsafe { pairs(headers, n) };
        }
    }

    /// A chunk of a call's response body.
    ///
    /// # Safety
    /// `chunks` valid for `n` buffers, each valid (during the hook).
    pub unsafe fn on_data(&self, id: u64, chunks: *const Buf, n: usize) {
        if chunks.is_null() || n == 0 {
            return;
        }
        if let Some(o) = lock(&self.open).get_mut(&id) {
            // SAFETY: the caller's contract.
            for c in unsafe { std::slice::from_raw_parts(chunks, n) } {
                // SAFETY: as above.
                o.answer.add_body(unsafe { c.bytes() }.unwrap_or_default());
            }
        }
    }

    /// A call's response trailers.
    ///
    /// # Safety
    /// See [`pairs`].
    pub unsafe fn on_trailers(&self, id: u64, trailers: *const Header, n: usize) {
        if let Some(o) = lock(&self.open).get_mut(&id) {
            // SAFETY: the caller's contract.
            o.answer.trailers = unsafe { pairs(trailers, n) };
        }
    }

    /// A call ended: complete (`answered`) or reset; its worker gets it.
    pub fn on_end(&self, id: u64, answered: bool) {
        let Some(o) = lock(&self.open).remove(&id) else {
            return;
        };
        o.mailbox.post(Delivered {
            token: o.token,
            answer: answered.then_some(o.answer),
        });
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        if !self.scheduler.is_null() {
            // SAFETY: from `scheduler_new`, deleted once; the last
            // reference to the configuration is going, so no worker can
            // commit it any more.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                    self.scheduler,
                )
            };
        }
    }
}
