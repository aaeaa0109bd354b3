//! A fake host for native tests of the flow: a manual clock, metrics by
//! name, an in-memory store with compare-and-swap, calls out recorded and
//! answered by the test, and a log of every host call (to check the cost
//! of a request). Headers are bytes, as Envoy hands them over.
//!
//! Built for the unit tests, and with the feature `fake-host` for the
//! `flow` fuzz target (`tests/fuzz`, through [`super::fuzz`]).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use super::shadow::Call;
use super::{Host, Stream};
use crate::decision::Reason;
use crate::headers;
use crate::stats::Kind;

/// A header list.
type Pairs = Vec<(String, String)>;
/// A header list as bytes.
type BytePairs = Vec<(Vec<u8>, Vec<u8>)>;

fn to_bytes(pairs: &[(&str, &str)]) -> BytePairs {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The first value of `name` in `pairs`.
fn first(pairs: &[(Vec<u8>, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    pairs
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.clone())
}

/// The process-wide side.
#[derive(Default)]
pub struct Fake {
    now_ms: Cell<u64>,
    /// Index = metric id.
    metrics: RefCell<Vec<(Kind, String)>>,
    /// Counter sums and gauge values, by id.
    values: RefCell<HashMap<u32, u64>>,
    /// Histogram samples, by id.
    samples: RefCell<HashMap<u32, Vec<u64>>>,
    /// Value and version of each key.
    store: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// Calls sent, with their token.
    pub calls: RefCell<Vec<(u32, Call)>>,
    /// The answer being delivered: headers, body.
    answer: RefCell<(BytePairs, Vec<u8>)>,
    /// Its trailers.
    answer_trailers: RefCell<BytePairs>,
    /// Every host call, by name.
    pub log: RefCell<Vec<&'static str>>,
}

impl Fake {
    pub fn new(now_ms: u64) -> Fake {
        let f = Fake::default();
        f.now_ms.set(now_ms);
        f
    }

    pub fn advance(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
    }

    /// The wall clock steps back `ms` (as a host's can).
    pub fn step_back(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get().saturating_sub(ms));
    }

    fn id(&self, name: &str) -> Option<u32> {
        self.metrics
            .borrow()
            .iter()
            .position(|(_, n)| n == name)
            .map(|i| i as u32)
    }

    /// A counter's sum or a gauge's value as the host has it (0 if never
    /// set); panics on a name never defined.
    pub fn metric(&self, name: &str) -> u64 {
        let id = self.id(name).unwrap_or_else(|| panic!("no metric {name}"));
        self.values.borrow().get(&id).copied().unwrap_or(0)
    }

    /// Every metric name defined so far.
    pub fn names(&self) -> Vec<String> {
        self.metrics
            .borrow()
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// A histogram's samples.
    pub fn samples(&self, name: &str) -> Vec<u64> {
        let id = self.id(name).unwrap_or_else(|| panic!("no metric {name}"));
        self.samples.borrow().get(&id).cloned().unwrap_or_default()
    }

    /// Sets the answer [`shadow::on_answer`](super::shadow::on_answer)
    /// reads next.
    pub fn answer(&self, headers: &[(&str, &str)], body: &[u8]) {
        self.answer_bytes(to_bytes(headers), body.to_vec());
    }

    /// [`Fake::answer`] with headers of any bytes.
    pub fn answer_bytes(&self, headers: BytePairs, body: Vec<u8>) {
        *self.answer.borrow_mut() = (headers, body);
    }

    /// Sets the trailers of the answer delivered next.
    pub fn answer_trailers(&self, trailers: &[(&str, &str)]) {
        self.answer_trailers_bytes(to_bytes(trailers));
    }

    /// [`Fake::answer_trailers`] with trailers of any bytes.
    pub fn answer_trailers_bytes(&self, trailers: BytePairs) {
        *self.answer_trailers.borrow_mut() = trailers;
    }

    /// Forgets the host calls logged so far.
    pub fn take_log(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.log.borrow_mut())
    }

    fn call(&self, name: &'static str) {
        self.log.borrow_mut().push(name);
    }
}

impl Host for Fake {
    fn now(&self) -> Duration {
        self.call("now");
        Duration::from_millis(self.now_ms.get())
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        let mut m = self.metrics.borrow_mut();
        // As the proxy-wasm host's cache: one id per kind and name.
        if let Some(i) = m.iter().position(|(k, n)| *k == kind && n == name) {
            return Some(i as u32);
        }
        m.push((kind, name.to_string()));
        Some(m.len() as u32 - 1)
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.call("record_metric");
        let kind = self.metrics.borrow().get(id as usize).map(|(k, _)| *k);
        match kind {
            Some(Kind::Histogram) => self.samples.borrow_mut().entry(id).or_default().push(value),
            _ => {
                self.values.borrow_mut().insert(id, value);
            }
        }
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        self.call("increment_metric");
        *self.values.borrow_mut().entry(id).or_default() += delta;
    }

    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.call("store_get");
        Some(match self.store.borrow().get(key) {
            Some((v, version)) => (v.clone(), Some(*version)),
            None => (Vec::new(), None),
        })
    }

    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        self.call("store_set");
        let mut store = self.store.borrow_mut();
        let current = store.get(key).map(|(_, v)| *v);
        if cas.is_some() && cas != current {
            return false;
        }
        match value {
            Some(v) => {
                store.insert(key.to_string(), (v.to_vec(), current.unwrap_or(0) + 1));
            }
            None => {
                store.remove(key);
            }
        }
        true
    }

    fn send_call(&self, call: Call) -> Option<u32> {
        self.call("send_call");
        let mut calls = self.calls.borrow_mut();
        let token = calls.len() as u32 + 1;
        calls.push((token, call));
        Some(token)
    }

    fn call_response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("call_response_header");
        first(&self.answer.borrow().0, name)
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.call("call_response_body");
        let a = self.answer.borrow();
        Some(a.1.get(..size)?.to_vec())
    }

    fn call_response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.call("call_response_trailer");
        first(&self.answer_trailers.borrow(), name)
    }
}

/// One HTTP stream.
#[derive(Default)]
pub struct FakeStream {
    request: BytePairs,
    /// Every header write, in order (`None`: removed).
    pub writes: RefCell<Vec<(String, Option<String>)>>,
    /// A local reply: status, headers, body.
    pub reply: RefCell<Option<(u32, Pairs, Vec<u8>)>>,
    pub reason: Cell<Option<Reason>>,
    /// How many reasons were published.
    pub reasons: Cell<u32>,
    response: RefCell<BytePairs>,
    trailers: RefCell<BytePairs>,
    pub flags: Cell<u64>,
    /// The body chunk just received.
    pub chunk: RefCell<Vec<u8>>,
    pub log: RefCell<Vec<&'static str>>,
}

impl FakeStream {
    pub fn new(request: &[(&str, &str)]) -> FakeStream {
        FakeStream::with_bytes(to_bytes(request))
    }

    /// A stream whose request headers are any bytes (repeated names too).
    pub fn with_bytes(request: BytePairs) -> FakeStream {
        FakeStream {
            request,
            ..FakeStream::default()
        }
    }

    /// The response headers the upstream sent.
    pub fn respond(&self, headers: &[(&str, &str)]) {
        self.respond_bytes(to_bytes(headers));
    }

    /// [`FakeStream::respond`] with headers of any bytes.
    pub fn respond_bytes(&self, headers: BytePairs) {
        *self.response.borrow_mut() = headers;
    }

    /// The response trailers the upstream sent.
    pub fn trail(&self, trailers: &[(&str, &str)]) {
        self.trail_bytes(to_bytes(trailers));
    }

    /// [`FakeStream::trail`] with trailers of any bytes.
    pub fn trail_bytes(&self, trailers: BytePairs) {
        *self.trailers.borrow_mut() = trailers;
    }

    /// The value last written to `name` (`Some(None)`: removed).
    pub fn written(&self, name: &str) -> Option<Option<String>> {
        self.writes
            .borrow()
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn take_log(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.log.borrow_mut())
    }

    fn call(&self, name: &'static str) {
        self.log.borrow_mut().push(name);
    }
}

impl Stream for FakeStream {
    fn request_headers(&self) -> Vec<u8> {
        self.call("request_headers");
        let pairs: Vec<(&[u8], &[u8])> = self
            .request
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        headers::serialize(&pairs)
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("request_header");
        first(&self.request, name)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.call("set_request_header");
        self.writes
            .borrow_mut()
            .push((name.to_string(), value.map(String::from)));
    }

    fn send_local_reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) {
        self.call("send_local_reply");
        *self.reply.borrow_mut() = Some((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.unwrap_or_default().to_vec(),
        ));
    }

    fn publish_reason(&self, reason: Reason) {
        // The proxy-wasm host makes a call only for a published reason.
        if reason.published().is_some() {
            self.call("publish_reason");
        }
        self.reason.set(Some(reason));
        self.reasons.set(self.reasons.get() + 1);
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("response_header");
        first(&self.response.borrow(), name)
    }

    fn response_flags(&self) -> u64 {
        self.call("response_flags");
        self.flags.get()
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.call("request_body");
        Some(self.chunk.borrow().get(..size)?.to_vec())
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.call("response_body");
        Some(self.chunk.borrow().get(..size)?.to_vec())
    }

    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.call("response_trailer");
        first(&self.trailers.borrow(), name)
    }
}
