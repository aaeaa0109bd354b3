//! A fake host for native tests of the flow: a manual clock, metrics by
//! name, an in-memory store with compare-and-swap, calls out recorded and
//! answered by the test, and a log of every host call (to check the cost
//! of a request).

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
    answer: RefCell<(Pairs, Vec<u8>)>,
    /// Its trailers.
    answer_trailers: RefCell<Pairs>,
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
        *self.answer.borrow_mut() = (
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_vec(),
        );
    }

    /// Sets the trailers of the answer delivered next.
    pub fn answer_trailers(&self, trailers: &[(&str, &str)]) {
        *self.answer_trailers.borrow_mut() = trailers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
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
        let a = self.answer.borrow();
        a.0.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone().into_bytes())
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.call("call_response_body");
        let a = self.answer.borrow();
        Some(a.1.get(..size)?.to_vec())
    }

    fn call_response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.call("call_response_trailer");
        self.answer_trailers
            .borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone().into_bytes())
    }
}

/// One HTTP stream.
#[derive(Default)]
pub struct FakeStream {
    request: Vec<(String, String)>,
    /// Every header write, in order (`None`: removed).
    pub writes: RefCell<Vec<(String, Option<String>)>>,
    /// A local reply: status, headers, body.
    pub reply: RefCell<Option<(u32, Pairs, Vec<u8>)>>,
    pub reason: Cell<Option<Reason>>,
    response: RefCell<Vec<(String, String)>>,
    trailers: RefCell<Vec<(String, String)>>,
    pub flags: Cell<u64>,
    /// The body chunk just received.
    pub chunk: RefCell<Vec<u8>>,
    pub log: RefCell<Vec<&'static str>>,
}

impl FakeStream {
    pub fn new(request: &[(&str, &str)]) -> FakeStream {
        FakeStream {
            request: request
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..FakeStream::default()
        }
    }

    /// The response headers the upstream sent.
    pub fn respond(&self, headers: &[(&str, &str)]) {
        *self.response.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// The response trailers the upstream sent.
    pub fn trail(&self, trailers: &[(&str, &str)]) {
        *self.trailers.borrow_mut() = trailers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
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
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        headers::serialize(&pairs)
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("request_header");
        self.request
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone().into_bytes())
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
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.call("response_header");
        self.response
            .borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone().into_bytes())
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
        self.trailers
            .borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone().into_bytes())
    }
}
