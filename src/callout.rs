//! A call out's answer as a native host collects it, and the mailbox that
//! carries it to the worker thread that sent the call.
//!
//! The dynamic module sends calls from Envoy's main thread (a call made
//! there outlives the stream that asked for it) and Envoy answers them
//! there; the flow's state for the call is the sending worker's. So the
//! main thread copies each answer into an owned [`Answer`] and posts it to
//! that worker's [`Mailbox`]; the worker takes its mail on its next hook.
//! No Envoy types here: the module's glue is `src/module/calls.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Body bytes an answer holds at most; the rest is only counted (a body
/// this large is over any `max_body_bytes` the flow compares).
pub const MAX_ANSWER_BODY: usize = 32 * 1024 * 1024;

/// A header or trailer list: (name, value) pairs in the order received.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a call answered: headers (`:status` among them), body, trailers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    pub headers: Pairs,
    /// The body's first [`MAX_ANSWER_BODY`] bytes.
    pub body: Vec<u8>,
    /// Body bytes received in all.
    pub body_len: usize,
    pub trailers: Pairs,
}

/// The first value of `name` (ASCII case-insensitive) in `pairs`.
fn first(pairs: &Pairs, name: &str) -> Option<Vec<u8>> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.clone())
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        first(&self.headers, name)
    }

    pub fn trailer(&self, name: &str) -> Option<Vec<u8>> {
        first(&self.trailers, name)
    }

    /// The body's first `size` bytes; `None` if the answer did not hold
    /// its whole body.
    pub fn body(&self, size: usize) -> Option<Vec<u8>> {
        if self.body.len() < self.body_len {
            return None;
        }
        self.body
            .get(..size.min(self.body.len()))
            .map(<[u8]>::to_vec)
    }

    /// One more body chunk.
    pub fn add_body(&mut self, chunk: &[u8]) {
        self.body_len = self.body_len.saturating_add(chunk.len());
        let room = MAX_ANSWER_BODY.saturating_sub(self.body.len());
        if chunk.len() <= room {
            self.body.extend_from_slice(chunk);
        }
    }
}

/// One answer for a worker: the call's token and what it answered
/// (`None`: the call failed or could not start).
#[derive(Debug, PartialEq, Eq)]
pub struct Delivered {
    pub token: u32,
    pub answer: Option<Answer>,
}

impl Delivered {
    /// The flow's view of it (`flow::shadow::on_answer`): header count (0:
    /// failed) and body size.
    pub fn sizes(&self) -> (usize, usize) {
        self.answer
            .as_ref()
            .map_or((0, 0), |a| (a.headers.len(), a.body_len))
    }
}

/// One worker's answers, posted from any thread. Checking for mail is one
/// relaxed load; the lock is taken only when there is some.
#[derive(Debug, Default)]
pub struct Mailbox {
    mail: AtomicBool,
    queue: Mutex<Vec<Delivered>>,
}

impl Mailbox {
    pub fn post(&self, d: Delivered) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(d);
        self.mail.store(true, Ordering::Release);
    }

    /// Whether answers may be waiting (a hint: [`Mailbox::take`] decides).
    pub fn has_mail(&self) -> bool {
        self.mail.load(Ordering::Relaxed)
    }

    /// Every answer waiting, oldest first.
    pub fn take(&self) -> Vec<Delivered> {
        // Cleared before taking: an answer posted meanwhile sets it again.
        self.mail.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A call's request headers as sent: the call's own, then
/// `content-length` when it has a body (the flow drops the request's own
/// framing headers; the proxy-wasm host sets it the same way).
pub fn request_headers(headers: &Pairs, body: Option<&[u8]>) -> Pairs {
    let mut out = headers.clone();
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        out.push((b"content-length".to_vec(), b.len().to_string().into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Pairs {
        p.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn headers_and_trailers_are_found_by_name_first_value_first() {
        let a = Answer {
            headers: pairs(&[(":status", "200"), ("X-Version", "1"), ("x-version", "2")]),
            trailers: pairs(&[("grpc-status", "0")]),
            ..Answer::default()
        };
        assert_eq!(a.header(":status"), Some(b"200".to_vec()));
        assert_eq!(a.header("x-version"), Some(b"1".to_vec()));
        assert_eq!(a.header("grpc-status"), None);
        assert_eq!(a.trailer("grpc-status"), Some(b"0".to_vec()));
        assert_eq!(a.trailer("x-version"), None);
    }

    #[test]
    fn the_body_is_the_chunks_joined_and_cut_at_the_size_asked() {
        let mut a = Answer::default();
        a.add_body(b"hello ");
        a.add_body(b"");
        a.add_body(b"world");
        assert_eq!(a.body_len, 11);
        assert_eq!(a.body(11), Some(b"hello world".to_vec()));
        assert_eq!(a.body(5), Some(b"hello".to_vec()));
        assert_eq!(a.body(100), Some(b"hello world".to_vec()));
    }

    #[test]
    fn a_body_past_the_bound_is_counted_not_held() {
        let mut a = Answer::default();
        a.add_body(&vec![b'x'; MAX_ANSWER_BODY]);
        a.add_body(b"more");
        assert_eq!(a.body_len, MAX_ANSWER_BODY + 4);
        assert_eq!(a.body.len(), MAX_ANSWER_BODY);
        assert_eq!(a.body(10), None);
    }

    #[test]
    fn a_failed_call_has_no_headers_for_the_flow() {
        let failed = Delivered {
            token: 3,
            answer: None,
        };
        assert_eq!(failed.sizes(), (0, 0));
        let mut a = Answer {
            headers: pairs(&[(":status", "200"), ("a", "b")]),
            ..Answer::default()
        };
        a.add_body(b"abc");
        let ok = Delivered {
            token: 4,
            answer: Some(a),
        };
        assert_eq!(ok.sizes(), (2, 3));
    }

    #[test]
    fn mail_posted_from_another_thread_is_taken_once_in_order() {
        let m = std::sync::Arc::new(Mailbox::default());
        assert!(!m.has_mail());
        assert!(m.take().is_empty());
        let poster = m.clone();
        std::thread::spawn(move || {
            for token in 1..=3 {
                poster.post(Delivered {
                    token,
                    answer: None,
                });
            }
        })
        .join()
        .unwrap();
        assert!(m.has_mail());
        let tokens: Vec<u32> = m.take().iter().map(|d| d.token).collect();
        assert_eq!(tokens, [1, 2, 3]);
        assert!(!m.has_mail());
        assert!(m.take().is_empty());
    }

    #[test]
    fn a_body_gets_its_content_length_and_nothing_else_changes() {
        let h = pairs(&[(":method", "POST"), (":path", "/a"), (":authority", "x")]);
        let mut want = h.clone();
        want.push((b"content-length".to_vec(), b"5".to_vec()));
        assert_eq!(request_headers(&h, Some(b"hello")), want);
        assert_eq!(request_headers(&h, Some(b"")), h);
        assert_eq!(request_headers(&h, None), h);
    }
}
