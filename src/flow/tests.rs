//! The flow against the fake host: split, override, unmatched requests,
//! breaker (fallback, reject, half-open rounds), guard, shadow verdicts,
//! counters on the tick, and the host calls a request costs.

use super::fake::{Fake, FakeStream};
use super::{request, response, shadow, tick, Exchange, Next, Plan, Worker};
use crate::config::Config;
use crate::decision::Reason;

const T0: u64 = 1_800_000_000_000;

struct Env {
    host: Fake,
    plan: Plan,
    worker: Worker,
}

/// One request in flight.
struct Req {
    stream: FakeStream,
    next: Next,
    exchange: Exchange,
}

impl Req {
    /// The cluster the flow wrote in the target header.
    fn target(&self) -> Option<String> {
        self.stream.written("x-shift-target").flatten()
    }
}

fn config(routes: &str, extra: &str) -> String {
    format!(
        r#"{{"monolith": "monolith", "hash_key": {{"header": "x-user"}}, {extra} "routes": [{routes}]}}"#
    )
}

impl Env {
    fn new(json: &str) -> Env {
        let host = Fake::new(T0);
        let config = Config::from_json(json.as_bytes()).expect("valid config");
        let (plan, worker, _) = tick::start(&host, "p", config);
        Env { host, plan, worker }
    }

    fn request(&self, headers: &[(&str, &str)], end_of_stream: bool) -> Req {
        let stream = FakeStream::new(headers);
        let mut exchange = Exchange::default();
        let next = exchange.on_request_headers(
            &self.host,
            &stream,
            &self.plan,
            &self.worker,
            end_of_stream,
        );
        Req {
            stream,
            next,
            exchange,
        }
    }

    /// A GET of `path` by user `user`.
    fn get(&self, path: &str, user: &str) -> Req {
        self.request(
            &[(":method", "GET"), (":path", path), ("x-user", user)],
            true,
        )
    }

    /// The upstream answers (headers only, end of stream).
    fn respond(&self, r: &mut Req, headers: &[(&str, &str)]) {
        r.stream.respond(headers);
        r.exchange
            .on_response_headers(&self.host, &r.stream, &self.plan, &self.worker, true);
    }

    /// The stream is gone.
    fn end(&self, r: &mut Req) {
        r.exchange.end(&self.host, &self.plan, &self.worker);
    }

    fn status(&self, r: &mut Req, status: u16) {
        self.respond(r, &[(":status", &status.to_string())]);
    }

    fn tick(&self) {
        tick::tick(&self.host, &self.plan, &self.worker, true);
    }

    fn metric(&self, name: &str) -> u64 {
        self.host.metric(&format!("traffic_shift.{name}"))
    }
}

const ORDERS: &str =
    r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50}"#;

#[test]
fn split_sends_the_configured_share_and_sticks_to_the_key() {
    let env = Env::new(&config(ORDERS, ""));
    let mut service = 0;
    for i in 0..2000 {
        let mut r = env.get("/orders/1", &format!("user-{i}"));
        assert_eq!(r.next, Next::Continue);
        let t = r.target().expect("target written");
        assert!(t == "orders_service" || t == "monolith", "{t}");
        service += usize::from(t == "orders_service");
        // The same key lands on the same side.
        assert_eq!(env.get("/orders/2", &format!("user-{i}")).target(), Some(t));
        assert_eq!(r.stream.reason.get(), Some(Reason::Split));
        env.status(&mut r, 200);
    }
    // 2000 keys at 50 %: sd 1.1 points; 5 points is ~4.5 sd (a
    // deterministic hash, so this either always passes or never does).
    assert!((900..=1100).contains(&service), "{service} of 2000");
    env.tick();
    assert_eq!(
        env.metric("route.orders.target.service.rq_total"),
        2 * service as u64
    );
    assert_eq!(
        env.metric("route.orders.target.monolith.rq_total"),
        2 * (2000 - service) as u64
    );
    assert_eq!(
        env.metric("route.orders.target.service.rq_2xx"),
        service as u64
    );
    // One latency sample per response, at the manual clock's 0 ms.
    let samples = env
        .host
        .samples("traffic_shift.route.orders.target.service.upstream_rq_time");
    assert_eq!(samples.len(), service);
    assert!(samples.iter().all(|&ms| ms == 0));
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
}

#[test]
fn percent_0_and_100_are_exact_and_a_missing_key_goes_to_the_monolith() {
    let routes = r#"{"name": "all", "prefix": "/all/", "service": "new", "percent": 100},
                    {"name": "none", "prefix": "/none/", "service": "new", "percent": 0}"#;
    let env = Env::new(&config(routes, ""));
    for i in 0..200 {
        let user = format!("u{i}");
        assert_eq!(env.get("/all/x", &user).target().as_deref(), Some("new"));
        assert_eq!(
            env.get("/none/x", &user).target().as_deref(),
            Some("monolith")
        );
    }
    let r = env.request(&[(":method", "GET"), (":path", "/all/x")], true);
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert_eq!(r.stream.reason.get(), Some(Reason::KeyMissing));
    env.tick();
    assert_eq!(env.metric("route.all.key_missing"), 1);
}

#[test]
fn override_forces_the_side_and_is_removed() {
    let env = Env::new(&config(
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 0}"#,
        r#""override": {"header": "x-shift-force", "secret": "s3cret"},"#,
    ));
    let headers = [
        (":method", "GET"),
        (":path", "/orders/1"),
        ("x-user", "u"),
        ("x-shift-force", "service"),
        ("x-shift-force-secret", "s3cret"),
    ];
    let r = env.request(&headers, true);
    assert_eq!(r.target().as_deref(), Some("orders_service"));
    assert_eq!(r.stream.reason.get(), Some(Reason::Override));
    assert_eq!(r.stream.written("x-shift-force"), Some(None));
    assert_eq!(r.stream.written("x-shift-force-secret"), Some(None));
    // A wrong secret: the headers still go, the split decides (0 %).
    let mut wrong = headers;
    wrong[4].1 = "guess";
    let r = env.request(&wrong, true);
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert_eq!(r.stream.reason.get(), Some(Reason::Split));
    assert_eq!(r.stream.written("x-shift-force"), Some(None));
    env.tick();
    assert_eq!(env.metric("route.orders.target.service.override"), 1);
    assert_eq!(env.metric("route.orders.target.monolith.override"), 0);
}

#[test]
fn unmatched_requests_are_counted_and_lose_a_client_target_header() {
    let env = Env::new(&config(ORDERS, ""));
    let r = env.request(
        &[
            (":method", "GET"),
            (":path", "/other"),
            ("x-shift-target", "orders_service"),
        ],
        true,
    );
    assert_eq!(r.next, Next::Continue);
    assert!(r.exchange.pending.is_none());
    assert_eq!(r.stream.written("x-shift-target"), Some(None));
    // Without a client copy nothing is written (a write re-runs routing).
    let r = env.request(&[(":method", "GET"), (":path", "/other")], true);
    assert!(r.stream.writes.borrow().is_empty());
    env.tick();
    assert_eq!(env.metric("unmatched"), 2);
}

#[test]
fn counters_reach_the_host_on_the_tick_only_once() {
    let env = Env::new(&config(ORDERS, ""));
    for i in 0..10 {
        env.get("/orders/1", &format!("u{i}"));
    }
    let total = |env: &Env| {
        env.metric("route.orders.target.service.rq_total")
            + env.metric("route.orders.target.monolith.rq_total")
    };
    assert_eq!(total(&env), 0, "counted before the tick");
    env.tick();
    assert_eq!(total(&env), 10);
    env.tick();
    assert_eq!(total(&env), 10, "a second tick adds nothing");
}

fn breaker_env(on_open: &str, probes: u32) -> Env {
    Env::new(&breaker_config(on_open, probes))
}

fn breaker_config(on_open: &str, probes: u32) -> String {
    config(
        &format!(
            r#"{{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 100,
               "outlier": {{"consecutive_failures": 2, "base_ejection_ms": 5000,
                           "half_open_probes": {probes}, "on_open": "{on_open}"}}}}"#
        ),
        "",
    )
}

/// Two failures in a row open the breaker.
fn open(env: &Env) {
    for _ in 0..2 {
        let mut r = env.get("/orders/1", "u");
        assert_eq!(r.target().as_deref(), Some("orders_service"));
        env.status(&mut r, 503);
    }
}

#[test]
fn breaker_open_falls_back_to_the_monolith() {
    let env = breaker_env("fallback", 1);
    open(&env);
    let r = env.get("/orders/1", "u");
    assert_eq!(r.next, Next::Continue);
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert_eq!(r.stream.reason.get(), Some(Reason::BreakerFallback));
    env.tick();
    assert_eq!(env.metric("route.orders.breaker.opened"), 1);
    assert_eq!(env.metric("route.orders.breaker.fallback"), 1);
    assert_eq!(env.metric("route.orders.breaker.state"), 1);
}

#[test]
fn breaker_open_rejects_with_retry_after() {
    let env = breaker_env("reject", 1);
    open(&env);
    env.host.advance(1200);
    let r = env.get("/orders/1", "u");
    assert_eq!(r.next, Next::Stop);
    assert!(r.exchange.pending.is_none());
    assert!(r.target().is_none(), "no target for a rejected request");
    let reply = r.stream.reply.borrow().clone().expect("a local reply");
    assert_eq!(reply.0, 503);
    // 3.8 s left, rounded up.
    assert!(reply.1.contains(&("retry-after".into(), "4".into())));
    assert!(reply.1.contains(&("x-shift-breaker".into(), "open".into())));
    assert_eq!(reply.2, b"service unavailable: circuit breaker open\n");
    env.tick();
    assert_eq!(env.metric("route.orders.breaker.fast_fail"), 1);
}

#[test]
fn half_open_rounds_close_on_success_and_reopen_longer_on_failure() {
    let env = breaker_env("reject", 1);
    open(&env);
    env.host.advance(5000);
    // Round 1: one probe goes through, a second request waits.
    let mut probe = env.get("/orders/1", "u");
    assert_eq!(probe.target().as_deref(), Some("orders_service"));
    let blocked = env.get("/orders/1", "u");
    assert_eq!(blocked.next, Next::Stop);
    env.status(&mut probe, 500);
    // The probe failed: open again, for twice the base ejection.
    let r = env.get("/orders/1", "u");
    let reply = r.stream.reply.borrow().clone().expect("a local reply");
    assert!(
        reply.1.contains(&("retry-after".into(), "10".into())),
        "{reply:?}"
    );
    env.host.advance(10_000);
    // Round 2: the probe succeeds and closes the breaker.
    let mut probe = env.get("/orders/1", "u");
    assert_eq!(probe.next, Next::Continue);
    env.status(&mut probe, 200);
    for _ in 0..3 {
        assert_eq!(env.get("/orders/1", "u").next, Next::Continue);
    }
    env.tick();
    assert_eq!(env.metric("route.orders.breaker.opened"), 2);
    assert_eq!(env.metric("route.orders.breaker.state"), 0);
}

#[test]
fn breaker_state_is_process_wide() {
    let env = breaker_env("fallback", 1);
    open(&env);
    // Another worker of the same process (same store, own state) sees it.
    let other = Worker::new(&env.plan);
    let stream = FakeStream::new(&[(":method", "GET"), (":path", "/orders/1"), ("x-user", "u")]);
    let mut pending = None;
    let bytes = request::read_headers(&stream);
    request::on_request(&env.host, &stream, &env.plan, &other, &bytes, &mut pending);
    assert_eq!(
        stream.written("x-shift-target").flatten().as_deref(),
        Some("monolith")
    );
}

#[test]
fn guard_trip_sets_the_share_to_0() {
    let env = Env::new(&config(
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50,
            "guard": {"window_s": 30, "min_requests": 20}}"#,
        "",
    ));
    let mut users = 0;
    let mut drive = |env: &Env| {
        for _ in 0..200 {
            users += 1;
            let mut r = env.get("/orders/1", &format!("u{users}"));
            let service = r.target().as_deref() == Some("orders_service");
            env.status(&mut r, if service { 500 } else { 200 });
        }
    };
    drive(&env);
    env.tick();
    assert_eq!(env.metric("route.orders.guard.tripped"), 1);
    assert_eq!(
        env.metric("route.orders.guard.trips.reason.errors"),
        0,
        "counted on the next tick"
    );
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 0);
    for i in 0..100 {
        let r = env.get("/orders/1", &format!("after-{i}"));
        assert_eq!(r.target().as_deref(), Some("monolith"));
    }
    env.tick();
    assert_eq!(env.metric("route.orders.guard.trips.reason.errors"), 1);
}

#[test]
fn guard_does_not_trip_when_both_sides_do_alike() {
    let env = Env::new(&config(
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50,
            "guard": {"window_s": 30, "min_requests": 20}}"#,
        "",
    ));
    for i in 0..400 {
        let mut r = env.get("/orders/1", &format!("u{i}"));
        env.status(&mut r, 200);
    }
    env.tick();
    assert_eq!(env.metric("route.orders.guard.tripped"), 0);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
}

fn shadow_env() -> Env {
    Env::new(&config(
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 0,
            "shadow": {"percent": 100, "compare_headers": ["x-v"]}}"#,
        "",
    ))
}

#[test]
fn shadow_goes_to_the_other_side_without_the_filter_headers() {
    let env = shadow_env();
    let r = env.request(
        &[
            (":method", "GET"),
            (":path", "/orders/1"),
            ("x-user", "u"),
            ("x-shift-target", "forged"),
            ("content-length", "0"),
            ("accept", "*/*"),
        ],
        true,
    );
    assert_eq!(r.target().as_deref(), Some("monolith"));
    let calls = env.host.calls.borrow();
    let (_, call) = calls.first().expect("a shadow call");
    assert_eq!(call.cluster, "orders_service");
    let names: Vec<&[u8]> = call.headers.iter().map(|(k, _)| k.as_slice()).collect();
    assert!(names.contains(&b"accept".as_slice()));
    assert!(names.contains(&b"x-shift-shadow".as_slice()));
    assert!(!names.contains(&b"x-shift-target".as_slice()));
    assert!(!names.contains(&b"content-length".as_slice()));
}

#[test]
fn shadow_verdicts_whichever_side_ends_first() {
    let env = shadow_env();
    // The primary ends first, the shadow agrees.
    let mut r = env.get("/orders/1", "a");
    env.respond(&mut r, &[(":status", "200"), ("x-v", "1")]);
    env.host.answer(&[(":status", "200"), ("x-v", "1")], b"");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 1, 2, 0);
    // The shadow ends first, with another status.
    let mut r = env.get("/orders/1", "b");
    env.host.answer(&[(":status", "500")], b"");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 2, 1, 0);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(
        env.metric("route.orders.shadow.result.status"),
        0,
        "not before the primary"
    );
    env.respond(&mut r, &[(":status", "200"), ("x-v", "1")]);
    // The primary ends first, a header differs.
    let mut r = env.get("/orders/1", "c");
    env.respond(&mut r, &[(":status", "200"), ("x-v", "1")]);
    env.host.answer(&[(":status", "200"), ("x-v", "2")], b"");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 3, 2, 0);
    // The call fails (no headers).
    let mut r = env.get("/orders/1", "d");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 4, 0, 0);
    env.respond(&mut r, &[(":status", "200")]);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.status"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.header"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.error"), 1);
    assert_eq!(env.worker.shadows.in_flight(), 0);
}

#[test]
fn a_primary_gone_early_ends_its_shadow() {
    let env = shadow_env();
    // The stream ends before its response: the shadow's answer finds an
    // incomplete primary.
    let mut r = env.get("/orders/1", "a");
    env.end(&mut r);
    env.host.answer(&[(":status", "200")], b"");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 1, 1, 0);
    // A request whose body never came: skipped.
    let mut r = env.request(
        &[(":method", "GET"), (":path", "/orders/1"), ("x-user", "b")],
        false,
    );
    assert!(
        env.host.calls.borrow().len() == 1,
        "not sent before its body"
    );
    env.end(&mut r);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 2);
    assert_eq!(env.worker.shadows.in_flight(), 0);
}

#[test]
fn a_configuration_going_ends_unanswered_shadows_as_errors() {
    let env = shadow_env();
    let mut r = env.get("/orders/1", "a");
    env.respond(&mut r, &[(":status", "200")]);
    assert_eq!(env.worker.shadows.in_flight(), 1);
    tick::end(&env.host, &env.plan, &env.worker);
    assert_eq!(env.metric("route.orders.shadow.result.error"), 1);
}

#[test]
fn a_split_request_costs_the_same_host_calls_as_before() {
    let env = Env::new(&config(ORDERS, ""));
    env.host.take_log();
    let mut r = env.get("/orders/1", "u");
    // The shipped build reads the header map in one call; the bench's
    // `single-header-reads` build reads :method, :path and the key.
    let read: &[&str] = if request::BULK {
        &["request_headers"]
    } else {
        &["request_header"; 3]
    };
    assert_eq!(
        r.stream.take_log(),
        [read, &["set_request_header"]].concat()
    );
    assert_eq!(env.host.take_log(), ["now"]);
    env.status(&mut r, 200);
    assert_eq!(r.stream.take_log(), ["response_header"]);
    assert_eq!(env.host.take_log(), ["now", "record_metric"]);
    // A 5xx also reads the response flags.
    let mut r = env.get("/orders/1", "u");
    env.status(&mut r, 503);
    assert_eq!(
        r.stream.take_log(),
        [
            read,
            &["set_request_header", "response_header", "response_flags"]
        ]
        .concat()
    );
}

#[test]
fn a_healthy_breaker_costs_one_store_read_and_nothing_on_success() {
    let env = breaker_env("fallback", 1);
    env.host.take_log();
    let mut r = env.get("/orders/1", "u");
    assert_eq!(env.host.take_log(), ["now", "store_get"]);
    env.status(&mut r, 200);
    assert_eq!(env.host.take_log(), ["now", "record_metric"]);
}

#[test]
fn an_old_configuration_only_flushes_on_its_tick() {
    let env = Env::new(&config(
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50,
            "guard": {"window_s": 30, "min_requests": 20}}"#,
        "",
    ));
    env.get("/orders/1", "u");
    env.host.take_log();
    tick::tick(&env.host, &env.plan, &env.worker, false);
    assert_eq!(env.host.take_log(), ["increment_metric"]);
    assert_eq!(
        env.metric("route.orders.target.service.rq_total")
            + env.metric("route.orders.target.monolith.rq_total"),
        1
    );
}

#[test]
fn a_new_configuration_zeroes_the_gauges_of_a_removed_route() {
    let env = Env::new(&config(ORDERS, ""));
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
    let other = r#"{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 10}"#;
    let config = Config::from_json(config(other, "").as_bytes()).expect("valid config");
    let (_plan, _worker, generation) = tick::start(&env.host, "p", config);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 0);
    assert_eq!(env.metric("route.auth.effective_percent_bp"), 1000);
    assert!(tick::in_force("p", generation));
    assert!(!tick::in_force("p", generation - 1));
}

/// A host shared by threads: the fake behind a lock.
struct Locked(std::sync::Mutex<Fake>);

impl Locked {
    fn with<R>(&self, f: impl FnOnce(&Fake) -> R) -> R {
        f(&self.0.lock().expect("not poisoned"))
    }
}

impl super::Host for Locked {
    fn now(&self) -> std::time::Duration {
        self.with(|h| h.now())
    }
    fn define_metric(&self, kind: crate::stats::Kind, name: &str) -> Option<u32> {
        self.with(|h| h.define_metric(kind, name))
    }
    fn record_metric(&self, id: u32, value: u64) {
        self.with(|h| h.record_metric(id, value))
    }
    fn increment_metric(&self, id: u32, delta: u64) {
        self.with(|h| h.increment_metric(id, delta))
    }
    fn store_get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        self.with(|h| h.store_get(key))
    }
    fn store_set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        self.with(|h| h.store_set(key, value, cas))
    }
    fn send_call(&self, call: super::shadow::Call) -> Option<u32> {
        self.with(|h| h.send_call(call))
    }
    fn call_response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.with(|h| h.call_response_header(name))
    }
    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.with(|h| h.call_response_body(size))
    }
}

/// Two worker threads share one plan (as a native host's configuration
/// object), each with its own worker state: a breaker one opens sends the
/// other's requests to the monolith, and both workers' counters add up.
#[test]
fn worker_threads_share_one_plan() {
    let host = Locked(std::sync::Mutex::new(Fake::new(T0)));
    let json = breaker_config("fallback", 1);
    let config = Config::from_json(json.as_bytes()).expect("valid config");
    let (plan, _) = tick::configure(&host, config);
    let plan = std::sync::Arc::new(plan);
    let worker = |failing: bool| {
        let (host, plan) = (&host, plan.clone());
        move || {
            let worker = Worker::new(&plan);
            let mut targets = Vec::new();
            for _ in 0..2 {
                let stream =
                    FakeStream::new(&[(":method", "GET"), (":path", "/orders/1"), ("x-user", "u")]);
                let mut pending = None;
                let bytes = request::read_headers(&stream);
                request::on_request(host, &stream, &plan, &worker, &bytes, &mut pending);
                targets.push(stream.written("x-shift-target").flatten());
                stream.respond(&[(":status", if failing { "503" } else { "200" })]);
                response::on_response(host, &stream, &plan, &worker, pending);
            }
            tick::tick(host, &plan, &worker, true);
            targets
        }
    };
    std::thread::scope(|s| {
        let first = s.spawn(worker(true)).join().expect("first worker");
        assert_eq!(
            first,
            [Some("orders_service".into()), Some("orders_service".into())]
        );
        let second = s.spawn(worker(false)).join().expect("second worker");
        assert_eq!(second, [Some("monolith".into()), Some("monolith".into())]);
    });
    let total = |t: &str| {
        host.with(|h| h.metric(&format!("traffic_shift.route.orders.target.{t}.rq_total")))
    };
    assert_eq!(total("service"), 2);
    assert_eq!(total("monolith"), 2);
}

#[test]
fn shadow_carries_the_request_body_and_compares_response_bodies() {
    let env = Env::new(&config(
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 0,
            "shadow": {"percent": 100, "methods": ["POST"], "compare_body": true,
                       "max_body_bytes": 8}}"#,
        "",
    ));
    let post = [(":method", "POST"), (":path", "/orders/1"), ("x-user", "u")];
    let body = |r: &mut Req, chunk: &[u8], end: bool| {
        *r.stream.chunk.borrow_mut() = chunk.to_vec();
        r.exchange.on_request_body(
            &env.host,
            &r.stream,
            &env.plan,
            &env.worker,
            chunk.len(),
            end,
        );
    };
    let answer = |r: &mut Req, token: u32, primary: &[u8], shadow: &[u8]| {
        r.stream.respond(&[(":status", "200")]);
        r.exchange
            .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
        *r.stream.chunk.borrow_mut() = primary.to_vec();
        r.exchange.on_response_body(
            &env.host,
            &r.stream,
            &env.plan,
            &env.worker,
            primary.len(),
            true,
        );
        env.host.answer(&[(":status", "200")], shadow);
        shadow::on_answer(&env.host, &env.plan, &env.worker, token, 1, shadow.len());
    };
    // The body in two chunks; sent with the last one.
    let mut r = env.request(&post, false);
    body(&mut r, b"ab", false);
    assert!(
        env.host.calls.borrow().is_empty(),
        "sent before the body ended"
    );
    body(&mut r, b"cd", true);
    assert_eq!(
        env.host.calls.borrow().first().map(|(_, c)| c.body.clone()),
        Some(Some(b"abcd".to_vec()))
    );
    answer(&mut r, 1, b"same", b"same");
    // Bodies that differ.
    let mut r = env.request(&post, false);
    body(&mut r, b"x", true);
    answer(&mut r, 2, b"mine", b"your");
    // A request body over max_body_bytes: never sent.
    let mut r = env.request(&post, false);
    body(&mut r, b"123456789", true);
    assert_eq!(env.host.calls.borrow().len(), 2);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.body"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 1);
    // GET is not among the methods: not shadowed.
    env.get("/orders/1", "u");
    assert_eq!(env.host.calls.borrow().len(), 2);
}

/// A shadow route with `shadow` settings `s` (JSON object members).
fn shadow_env_with(s: &str) -> Env {
    Env::new(&config(
        &format!(
            r#"{{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 0,
                "shadow": {{"percent": 100, {s}}}}}"#
        ),
        "",
    ))
}

fn post(env: &Env) -> Req {
    env.request(
        &[(":method", "POST"), (":path", "/orders/1"), ("x-user", "u")],
        false,
    )
}

fn send_body(env: &Env, r: &mut Req, chunk: &[u8], end: bool) {
    *r.stream.chunk.borrow_mut() = chunk.to_vec();
    r.exchange.on_request_body(
        &env.host,
        &r.stream,
        &env.plan,
        &env.worker,
        chunk.len(),
        end,
    );
}

/// The primary answers `headers` and `body` (one chunk, end of stream).
fn respond_with_body(env: &Env, r: &mut Req, headers: &[(&str, &str)], body: &[u8]) {
    r.stream.respond(headers);
    r.exchange
        .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
    *r.stream.chunk.borrow_mut() = body.to_vec();
    r.exchange.on_response_body(
        &env.host,
        &r.stream,
        &env.plan,
        &env.worker,
        body.len(),
        true,
    );
}

#[test]
fn max_in_flight_counts_a_shadow_from_its_admission() {
    // Before: the cap was checked at the request headers but counted at
    // dispatch, so uploads still collecting their body all passed it.
    let env = shadow_env_with(r#""methods": ["POST"], "max_in_flight": 1"#);
    let mut a = post(&env);
    let mut b = post(&env);
    send_body(&env, &mut a, b"one", true);
    send_body(&env, &mut b, b"two", true);
    assert_eq!(env.host.calls.borrow().len(), 1, "one call: the cap is 1");
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 1);
    // A request that never sends its body gives its place back.
    env.host.answer(&[(":status", "200")], b"");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 1, 1, 0);
    let mut c = post(&env);
    env.end(&mut c);
    let mut d = post(&env);
    send_body(&env, &mut d, b"four", true);
    assert_eq!(env.host.calls.borrow().len(), 2);
    let _ = (&mut a, &mut b);
}

#[test]
fn the_bytes_a_worker_holds_for_shadows_are_bounded() {
    let env =
        shadow_env_with(r#""methods": ["POST"], "max_body_bytes": 16777216, "max_in_flight": 100"#);
    let mb8 = vec![b'x'; 8 << 20];
    let mut reqs: Vec<Req> = (0..5).map(|_| post(&env)).collect();
    for r in &mut reqs {
        send_body(&env, r, &mb8, false);
    }
    // 32 MiB per worker: four 8 MiB uploads fit, the fifth is skipped.
    assert_eq!(env.worker.shadows.held(), 32 << 20);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 1);
    // Dispatching and ending give the bytes back.
    send_body(&env, &mut reqs[0], b"", true);
    assert_eq!(env.worker.shadows.held(), 24 << 20);
    for r in &mut reqs {
        env.end(r);
    }
    assert_eq!(env.worker.shadows.held(), 0);
}

#[test]
fn a_request_with_trailers_is_shadowed() {
    // Before: the last body chunk of such a request is not end_of_stream,
    // so its call was never sent and it ended `skipped`.
    let env = shadow_env_with(r#""methods": ["POST"]"#);
    let mut r = post(&env);
    send_body(&env, &mut r, b"payload", false);
    assert!(env.host.calls.borrow().is_empty());
    r.exchange
        .on_request_trailers(&env.host, &env.plan, &env.worker);
    assert_eq!(
        env.host.calls.borrow().first().map(|(_, c)| c.body.clone()),
        Some(Some(b"payload".to_vec()))
    );
    env.status(&mut r, 200);
    env.host.answer(&[(":status", "200")], b"");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 1, 1, 0);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 0);
}

#[test]
fn a_shadow_envoy_answered_itself_is_an_error_not_a_status() {
    // Before: Envoy's own 503 (no healthy upstream, connect failure,
    // overflow) was compared as the service's answer: `status`.
    let env = shadow_env_with(r#""compare_headers": []"#);
    for body in [
        &b"no healthy upstream"[..],
        b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
    ] {
        let mut r = env.get("/orders/1", "u");
        env.status(&mut r, 200);
        env.host
            .answer(&[(":status", "503"), ("content-type", "text/plain")], body);
        let token = env.host.calls.borrow().len() as u32;
        shadow::on_answer(&env.host, &env.plan, &env.worker, token, 2, body.len());
    }
    // The service's own 503 is still a status mismatch.
    let mut r = env.get("/orders/1", "u");
    env.status(&mut r, 200);
    env.host.answer(&[(":status", "503")], b"maintenance");
    shadow::on_answer(&env.host, &env.plan, &env.worker, 4, 1, 11);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.error"), 3);
    assert_eq!(env.metric("route.orders.shadow.result.status"), 1);
}

#[test]
fn json_bodies_match_up_to_key_order_ignored_fields_and_noise() {
    let env = shadow_env_with(
        r#""compare_body": "json", "ignore_fields": ["/id"], "noise_percent": 100"#,
    );
    let ok = [(":status", "200"), ("content-type", "application/json")];
    // Request 1: the shadow (service, token 1) and the noise call
    // (monolith, token 2).
    let mut r = env.get("/orders/1", "u");
    {
        let calls = env.host.calls.borrow();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1.cluster, "orders_service");
        assert_eq!(calls[1].1.cluster, "monolith");
        assert!(calls[1]
            .1
            .headers
            .contains(&(b"x-shift-shadow".to_vec(), b"noise".to_vec())));
    }
    let monolith = |at: u32, v: u32| format!(r#"{{"id": "m{at}", "at": {at}, "v": {v}}}"#);
    let service = |at: u32, v: u32| format!(r#"{{"v": {v}.0, "at": {at}, "id": "s{at}"}}"#);
    let mut token = 0;
    let mut one = |env: &Env, at: u32, v: u32| {
        let mut r = env.get("/orders/1", "u");
        respond_with_body(env, &mut r, &ok, monolith(at, 1).as_bytes());
        token += 2;
        let b = service(at + 1, v);
        env.host.answer(&ok, b.as_bytes());
        shadow::on_answer(&env.host, &env.plan, &env.worker, token + 1, 2, b.len());
        let n = monolith(at + 2, 1);
        env.host.answer(&ok, n.as_bytes());
        shadow::on_answer(&env.host, &env.plan, &env.worker, token + 2, 2, n.len());
    };
    respond_with_body(&env, &mut r, &ok, monolith(1, 1).as_bytes());
    let b = service(1, 1);
    env.host.answer(&ok, b.as_bytes());
    shadow::on_answer(&env.host, &env.plan, &env.worker, 1, 2, b.len());
    env.tick();
    assert_eq!(
        env.metric("route.orders.shadow.result.match"),
        1,
        "same at, /id ignored, key order and 1.0 = 1"
    );
    let n = monolith(2, 1);
    env.host.answer(&ok, n.as_bytes());
    shadow::on_answer(&env.host, &env.plan, &env.worker, 2, 2, n.len());
    // Warm-up: /at is not yet known noisy after one old-vs-old comparison.
    one(&env, 10, 1);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.body"), 1);
    // Two comparisons with /at differing: noisy from now on.
    one(&env, 20, 1);
    one(&env, 30, 2);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.noise"), 1);
    assert_eq!(
        env.metric("route.orders.shadow.result.body"),
        2,
        "/v differs: still a mismatch"
    );
    assert_eq!(env.worker.shadows.held(), 0);
}

#[test]
fn a_compressed_json_body_is_skipped_and_a_non_json_one_compared_by_bytes() {
    let env = shadow_env_with(r#""compare_body": "json""#);
    let mut r = env.get("/orders/1", "u");
    respond_with_body(
        &env,
        &mut r,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"\x1f\x8b..",
    );
    env.host.answer(
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"\x1f\x8b..",
    );
    shadow::on_answer(&env.host, &env.plan, &env.worker, 1, 3, 4);
    let mut r = env.get("/orders/1", "u");
    respond_with_body(
        &env,
        &mut r,
        &[(":status", "200"), ("content-type", "text/plain")],
        b"a b",
    );
    env.host.answer(
        &[(":status", "200"), ("content-type", "text/plain")],
        b"a  b",
    );
    shadow::on_answer(&env.host, &env.plan, &env.worker, 2, 2, 4);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.body"), 1);
}

#[test]
fn differing_fields_are_counted_with_a_process_wide_bound() {
    let env = shadow_env_with(r#""compare_body": "json""#);
    let second = super::Worker::new(&env.plan);
    let ok = [(":status", "200"), ("content-type", "application/json")];
    // Every answer carries 50 keys of its own on each side: hostile
    // randomness. Two workers, 4 requests each.
    let mut token = 0;
    for (w, worker) in [&env.worker, &second].into_iter().enumerate() {
        for i in 0..4 {
            let keys = |side: &str| {
                (0..50)
                    .map(|k| format!(r#""{side}{w}_{i}_{k}": 1"#))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let stream = super::fake::FakeStream::new(&[
                (":method", "GET"),
                (":path", "/orders/1"),
                ("x-user", "u"),
            ]);
            let mut x = Exchange::default();
            x.on_request_headers(&env.host, &stream, &env.plan, worker, true);
            stream.respond(&ok);
            x.on_response_headers(&env.host, &stream, &env.plan, worker, false);
            let body = format!(r#"{{"same": 1, "v": 1, {}}}"#, keys("p"));
            *stream.chunk.borrow_mut() = body.clone().into_bytes();
            x.on_response_body(&env.host, &stream, &env.plan, worker, body.len(), true);
            let b = format!(r#"{{"same": 1, "v": 2, {}}}"#, keys("s"));
            env.host.answer(&ok, b.as_bytes());
            token += 1;
            shadow::on_answer(&env.host, &env.plan, worker, token, 2, b.len());
        }
        tick::tick(&env.host, &env.plan, worker, true);
    }
    let labels: Vec<String> = env
        .host
        .names()
        .into_iter()
        .filter(|n| n.contains(".shadow_field."))
        .collect();
    assert!(
        labels.len() <= crate::fields::MAX_FIELDS_PER_ROUTE + 1,
        "{} labels",
        labels.len()
    );
    let metric = |f: &str| {
        env.host.metric(&format!(
            "traffic_shift.route.orders.shadow_field.field.{f}.kind.diff"
        ))
    };
    assert_eq!(metric("v"), 8, "the real field, in both workers");
    // Per request: /v plus 100 one-sided keys, of which the log names 16
    // (compare::MAX_FIELDS); the first worker's first tick admits up to
    // 32 labels, everything else is `other`.
    let counted: u64 = labels.iter().map(|n| env.host.metric(n)).sum();
    assert_eq!(counted, 8 * crate::compare::MAX_FIELDS as u64);
    assert!(metric("other") > 0);
    assert_eq!(env.metric("route.orders.shadow.result.body"), 8);
}

#[test]
fn learned_noise_survives_a_configuration_that_keeps_the_route_settings() {
    let shadow = r#""compare_body": "json", "noise_percent": 100"#;
    let env = shadow_env_with(shadow);
    let ok = [(":status", "200"), ("content-type", "application/json")];
    let mut r = env.get("/orders/1", "u");
    respond_with_body(&env, &mut r, &ok, br#"{"at": 1}"#);
    env.host.answer(&ok, br#"{"at": 2}"#);
    shadow::on_answer(&env.host, &env.plan, &env.worker, 2, 2, 9);
    assert_eq!(env.worker.shadows.noise_comparisons(0), 1);
    let again = |s: &str| {
        let c = Config::from_json(
            config(
                &format!(
                    r#"{{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 0,
                        "shadow": {{"percent": 100, {s}}}}}"#
                ),
                "",
            )
            .as_bytes(),
        )
        .unwrap();
        tick::start(&env.host, "p", c).1
    };
    // Same settings (another route config around it is fine): kept.
    let w = again(shadow);
    assert_eq!(w.shadows.noise_comparisons(0), 1);
    // Changed shadow settings: learned afresh.
    let w = again(r#""compare_body": "json", "noise_percent": 50"#);
    assert_eq!(w.shadows.noise_comparisons(0), 0);
}
