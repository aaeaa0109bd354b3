//! The flow against the fake host: split, override, unmatched requests,
//! breaker (fallback, reject, half-open rounds), guard, shadow verdicts,
//! counters on the tick, live configurations (which one ticks, gauges of
//! a deleted one), breaker keys per filter and their inheritance, and the
//! host calls a request costs.

use std::cell::RefCell;

use super::fake::{Fake, FakeStream};
use super::tick::Live;
use super::{request, response, shadow, tick, Exchange, Host, Next, Plan, Worker};
use crate::breaker::{Breaker, State, Ticket};
use crate::config::Config;
use crate::decision::Reason;

const T0: u64 = 1_800_000_000_000;

/// The id of an [`Env`]'s own configuration.
const ID: u32 = 1;

/// A worker (one host, its live configurations) and a first
/// configuration, [`ID`], of plugin `p`.
struct Env {
    host: Fake,
    live: RefCell<Live>,
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
        Env::on(Fake::new(T0), json)
    }

    /// Configuration `json` on `host` (whose store may hold state already).
    fn on(host: Fake, json: &str) -> Env {
        let live = RefCell::new(Live::default());
        let (plan, worker) = start(&host, &live, ID, "p", json);
        Env {
            host,
            live,
            plan,
            worker,
        }
    }

    /// Another configuration `id` of plugin `plugin` in the same worker,
    /// the newest.
    fn another(&self, id: u32, plugin: &str, json: &str) -> (Plan, Worker) {
        start(&self.host, &self.live, id, plugin, json)
    }

    fn request(&self, headers: &[(&str, &str)], end_of_stream: bool) -> Req {
        request_on(&self.host, &self.plan, &self.worker, headers, end_of_stream)
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
        self.tick_of(ID, &self.plan, &self.worker);
    }

    /// The tick of configuration `id`.
    fn tick_of(&self, id: u32, plan: &Plan, worker: &Worker) {
        tick::tick(&self.host, plan, worker, &self.live.borrow(), id);
    }

    fn metric(&self, name: &str) -> u64 {
        self.host.metric(&format!("traffic_shift.{name}"))
    }
}

/// Starts configuration `id` (`json`) of plugin `plugin` (root_id empty)
/// as the newest in `live`.
fn start(host: &Fake, live: &RefCell<Live>, id: u32, plugin: &str, json: &str) -> (Plan, Worker) {
    let config = Config::from_json(json.as_bytes()).expect("valid config");
    tick::start(host, &mut live.borrow_mut(), id, plugin, "", config)
}

/// A request to configuration `plan` in the worker `worker`.
fn request_on(
    host: &Fake,
    plan: &Plan,
    worker: &Worker,
    headers: &[(&str, &str)],
    end_of_stream: bool,
) -> Req {
    let stream = FakeStream::new(headers);
    let mut exchange = Exchange::default();
    let next = exchange.on_request_headers(host, &stream, plan, worker, end_of_stream);
    Req {
        stream,
        next,
        exchange,
    }
}

/// A GET of `path` by user `user` to configuration `plan`, answered
/// `status` (the cluster it went to).
fn get_answered(
    host: &Fake,
    plan: &Plan,
    worker: &Worker,
    path: &str,
    user: &str,
    status: u16,
) -> Option<String> {
    let headers = [(":method", "GET"), (":path", path), ("x-user", user)];
    let mut r = request_on(host, plan, worker, &headers, true);
    r.stream.respond(&[(":status", &status.to_string())]);
    r.exchange
        .on_response_headers(host, &r.stream, plan, worker, true);
    r.target()
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

/// One second of traffic on guarded route `path` of configuration `plan`:
/// `per_s` requests by new users (`users` counts them), each answered
/// `status(service, n)` (`n`: the how-manieth request of that side this
/// second); then the clock moves 1 s. The guard judges a second on the
/// tick after its grace (1 s), never from one request.
fn guard_second(
    env: &Env,
    (plan, worker): (&Plan, &Worker),
    path: &str,
    users: &mut usize,
    per_s: usize,
    status: impl Fn(bool, usize) -> u16,
) {
    let mut n = [0, 0];
    for _ in 0..per_s {
        *users += 1;
        let user = format!("u{users}");
        let headers = [
            (":method", "GET"),
            (":path", path),
            ("x-user", user.as_str()),
        ];
        let mut r = request_on(&env.host, plan, worker, &headers, true);
        let service = r.target().as_deref() != Some("monolith");
        let side = &mut n[usize::from(service)];
        let code = status(service, *side);
        *side += 1;
        r.stream.respond(&[(":status", &code.to_string())]);
        r.exchange
            .on_response_headers(&env.host, &r.stream, plan, worker, true);
    }
    env.host.advance(1000);
}

/// A service failing every request against a monolith failing none.
fn service_fails(service: bool, _: usize) -> u16 {
    if service {
        500
    } else {
        200
    }
}

#[test]
fn guard_trip_sets_the_share_to_0() {
    let env = Env::new(&config(GUARDED, ""));
    let mut users = 0;
    // 100 requests a second at 50 %, the service failing all of them, the
    // monolith none: the first judged second fills the window to
    // min_requests (20 a side), the next ones trip it (each worth far more
    // than the threshold's 14.4 nats); with the grace, within 5 s.
    let mut seconds = 0;
    while env.metric("route.orders.guard.tripped") == 0 {
        assert!(seconds < 5, "no trip after {seconds} s");
        let plan = (&env.plan, &env.worker);
        guard_second(&env, plan, "/orders/1", &mut users, 100, service_fails);
        env.tick();
        seconds += 1;
    }
    assert!(
        seconds >= 3,
        "tripped before a second was judged: {seconds} s"
    );
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
    let env = Env::new(&config(GUARDED, ""));
    let mut users = 0;
    // Both sides failing every 10th request of theirs each second, 100
    // requests a second at 50 %, for 5 minutes: far more than the
    // regression above needs to trip, and no trip.
    let every_tenth = |_: bool, n: usize| if n.is_multiple_of(10) { 500 } else { 200 };
    for _ in 0..300 {
        let plan = (&env.plan, &env.worker);
        guard_second(&env, plan, "/orders/1", &mut users, 100, every_tenth);
        env.tick();
    }
    assert_eq!(env.metric("route.orders.guard.tripped"), 0);
    assert_eq!(env.metric("route.orders.guard.trips.reason.errors"), 0);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
    assert!(
        env.metric("route.orders.guard.evidence_bp.reason.errors") < 5000,
        "{}",
        env.metric("route.orders.guard.evidence_bp.reason.errors")
    );
}

#[test]
fn the_guard_s_evidence_gauges_are_recorded_on_the_tick() {
    let env = Env::new(&config(GUARDED, ""));
    let errors = "route.orders.guard.evidence_bp.reason.errors";
    let latency = "route.orders.guard.evidence_bp.reason.latency";
    let mut users = 0;
    // Healthy seconds: the window fills, no evidence.
    for _ in 0..5 {
        let plan = (&env.plan, &env.worker);
        guard_second(&env, plan, "/orders/1", &mut users, 100, |_, _| 200);
        env.tick();
    }
    assert_eq!((env.metric(errors), env.metric(latency)), (0, 0));
    // One second with the service failing a fifth of its requests: no
    // gauge moves per request, nor on the tick at its end (the second's
    // grace), the next tick judges it and records the evidence, below a
    // trip (1411 bp here).
    let fifth = |service: bool, n: usize| {
        if service && n.is_multiple_of(5) {
            500
        } else {
            200
        }
    };
    let plan = (&env.plan, &env.worker);
    guard_second(&env, plan, "/orders/1", &mut users, 100, fifth);
    assert_eq!(env.metric(errors), 0);
    env.tick();
    assert_eq!(env.metric(errors), 0);
    let plan = (&env.plan, &env.worker);
    guard_second(&env, plan, "/orders/1", &mut users, 100, |_, _| 200);
    env.host.take_log();
    env.tick();
    let log = env.host.take_log();
    assert!(log.contains(&"record_metric"), "{log:?}");
    let bp = env.metric(errors);
    assert!((1..10_000).contains(&bp), "{bp}");
    assert_eq!(env.metric("route.orders.guard.tripped"), 0);
    // No latency trigger configured: its gauge stays 0.
    assert_eq!(env.metric(latency), 0);
    // A trip reads 10,000.
    let mut seconds = 0;
    while env.metric("route.orders.guard.tripped") == 0 {
        assert!(seconds < 5, "no trip after {seconds} s");
        let plan = (&env.plan, &env.worker);
        guard_second(&env, plan, "/orders/1", &mut users, 100, service_fails);
        env.tick();
        seconds += 1;
    }
    assert_eq!(env.metric(errors), 10_000);
    // The configuration goes: every guard gauge goes to 0.
    env.live.borrow_mut().leave(&env.host, ID);
    assert_eq!(env.metric(errors), 0);
    assert_eq!(env.metric("route.orders.guard.tripped"), 0);
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
    // The single-header build also reads `content-type` (is it gRPC?).
    let content_type: &[&str] = if request::BULK {
        &[]
    } else {
        &["request_header"]
    };
    assert_eq!(
        r.stream.take_log(),
        [read, &["set_request_header"], content_type].concat()
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
            &["set_request_header"],
            content_type,
            &["response_header", "response_flags"]
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

const GUARDED: &str = r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50,
    "guard": {"window_s": 30, "min_requests": 20}}"#;

#[test]
fn an_old_configuration_only_flushes_on_its_tick() {
    let env = Env::new(&config(GUARDED, ""));
    env.get("/orders/1", "u");
    // An update: the same routes in a newer configuration, the old one
    // not deleted yet.
    let (plan, worker) = env.another(2, "p", &config(GUARDED, ""));
    env.host.take_log();
    env.tick();
    // The flush, and the clock read before the keys are asked.
    assert_eq!(env.host.take_log(), ["increment_metric", "now"]);
    assert_eq!(
        env.metric("route.orders.target.service.rq_total")
            + env.metric("route.orders.target.monolith.rq_total"),
        1
    );
    // The newer one ticks the guard key and refreshes the gauge.
    env.tick_of(2, &plan, &worker);
    let log = env.host.take_log();
    assert!(log.contains(&"store_get"), "{log:?}");
    assert!(log.contains(&"record_metric"), "{log:?}");
}

#[test]
fn a_deleted_configuration_zeroes_the_gauges_only_it_set() {
    let env = Env::new(&config(GUARDED, ""));
    let guard_key = env.plan.guards[0].as_ref().expect("a guard").key.clone();
    // One outcome merged on the tick: the guard key holds a window.
    let mut r = env.get("/orders/1", "u");
    env.status(&mut r, 200);
    env.tick();
    assert!(env
        .host
        .store_get(&guard_key)
        .expect("readable")
        .1
        .is_some());
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
    let other = r#"{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 10}"#;
    let (plan, _worker) = env.another(2, "p", &config(other, ""));
    // The old configuration still serves until the host deletes it.
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
    assert_eq!(env.metric("route.auth.effective_percent_bp"), 1000);
    assert!(env.live.borrow().sets_gauge(ID, "orders"));
    assert!(env.live.borrow().sets_gauge(2, "auth"));
    env.live.borrow_mut().leave(&env.host, ID);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 0);
    assert_eq!(env.metric("route.orders.guard.tripped"), 0);
    assert_eq!(env.metric("route.auth.effective_percent_bp"), 1000);
    assert_eq!(
        env.host.store_get(&guard_key),
        Some((Vec::new(), None)),
        "the guard key no live configuration holds is released"
    );
    // The last one going zeroes the rest.
    drop(plan);
    env.live.borrow_mut().leave(&env.host, 2);
    assert_eq!(env.metric("route.auth.effective_percent_bp"), 0);
}

#[test]
fn a_guard_key_held_by_a_newer_configuration_is_kept() {
    let env = Env::new(&config(GUARDED, ""));
    let guard_key = env.plan.guards[0].as_ref().expect("a guard").key.clone();
    let mut r = env.get("/orders/1", "u");
    env.status(&mut r, 200);
    env.tick();
    let (plan, _worker) = env.another(2, "p", &config(GUARDED, ""));
    assert_eq!(
        plan.guards[0].as_ref().map(|g| g.key.clone()),
        Some(guard_key.clone())
    );
    env.live.borrow_mut().leave(&env.host, ID);
    assert!(env
        .host
        .store_get(&guard_key)
        .expect("readable")
        .1
        .is_some());
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
}

/// A new `.wasm` with the same `vm_id`: fresh VMs (a fresh [`Live`]) on
/// the same store, while the old VM's configuration leaves with no newer
/// one of its filter in its VM. The trip must stay in the store for the
/// new VMs (it did not: the old VM released the guard key on leaving).
#[test]
fn a_trip_outlives_the_old_module_s_configuration_leaving() {
    let env = Env::new(&config(GUARDED, ""));
    let mut users = 0;
    let mut seconds = 0;
    while env.metric("route.orders.guard.tripped") == 0 {
        assert!(seconds < 5, "no trip after {seconds} s");
        let plan = (&env.plan, &env.worker);
        guard_second(&env, plan, "/orders/1", &mut users, 100, service_fails);
        env.tick();
        seconds += 1;
    }
    // The new module's worker configures, then the old one's goes.
    let fresh = RefCell::new(Live::default());
    let (plan, worker) = start(&env.host, &fresh, 7, "p", &config(GUARDED, ""));
    env.live.borrow_mut().leave(&env.host, ID);
    tick::tick(&env.host, &plan, &worker, &fresh.borrow(), 7);
    assert_eq!(env.metric("route.orders.guard.tripped"), 1);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 0);
    let to = get_answered(&env.host, &plan, &worker, "/orders/1", "new-user", 200);
    assert_eq!(to.as_deref(), Some("monolith"));
    // Another filter's newer configuration in the old worker is no
    // replacement either: the key stays.
    let env = Env::new(&config(GUARDED, ""));
    let key = env.plan.guards[0].as_ref().expect("a guard").key.clone();
    let mut r = env.get("/orders/1", "u");
    env.status(&mut r, 200);
    env.tick();
    let other = r#"{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 10}"#;
    let other = format!(r#"{{"monolith": "legacy", "routes": [{other}]}}"#);
    let _other = env.another(2, "p", &other);
    env.live.borrow_mut().leave(&env.host, ID);
    let stored = env.host.store_get(&key).expect("readable");
    assert!(stored.1.is_some(), "the guard key was released");
}

/// A new `.wasm` on the same `vm_id`: the new VMs configure, then the old
/// VMs' configurations leave with nothing of theirs replacing them in their
/// VM, and zero the gauges they set. The new configuration's next tick puts
/// a plain route's share back (before, only ramped and guarded routes were
/// refreshed on the tick, and a plain route read 0 until the next update).
#[test]
fn an_upgrade_s_old_configuration_leaving_zeroes_a_share_for_one_tick_at_most() {
    let plain =
        r#"{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 50}"#;
    let env = Env::new(&config(plain, ""));
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
    let fresh = RefCell::new(Live::default());
    let (plan, worker) = start(&env.host, &fresh, 7, "p", &config(plain, ""));
    env.live.borrow_mut().leave(&env.host, ID);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 0);
    tick::tick(&env.host, &plan, &worker, &fresh.borrow(), 7);
    assert_eq!(env.metric("route.orders.effective_percent_bp"), 5000);
}

/// Issue 20, item 5: two filters with one plugin name in one worker (two
/// listeners, each with its own configuration). Both live: each ticks its
/// own keys, neither zeroes the other's gauges, and their breakers are
/// apart (the key holds the filter and the route's path).
#[test]
fn two_configurations_of_one_plugin_name_both_tick_with_their_own_keys() {
    let breaker = |prefix: &str| {
        format!(
            r#"{{"name": "orders", "prefix": "{prefix}", "service": "orders_service", "percent": 100,
                "outlier": {{"consecutive_failures": 2, "base_ejection_ms": 5000}}}}"#
        )
    };
    let a_json = config(
        &format!(
            r#"{}, {{"name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 50,
                     "guard": {{"window_s": 30, "min_requests": 20}}}}"#,
            breaker("/orders/")
        ),
        "",
    );
    let env = Env::new(&a_json);
    let (b_plan, b_worker) = env.another(2, "p", &config(&breaker("/shop/"), ""));
    let (a, b) = ((&env.plan, &env.worker), (&b_plan, &b_worker));
    let key = |plan: &Plan| plan.breakers[0].as_ref().map(|s| s.key().to_string());
    let (a_key, b_key) = (key(a.0).expect("a breaker"), key(b.0).expect("a breaker"));
    assert_ne!(a_key, b_key, "one route name, one service, two filters");
    {
        let live = env.live.borrow();
        assert!(live.ticks(ID, &a_key) && live.ticks(2, &b_key));
        assert!(!live.ticks(ID, &b_key) && !live.ticks(2, &a_key));
    }
    // b's configuration left a's gauges alone.
    assert_eq!(env.metric("route.auth.effective_percent_bp"), 5000);
    assert_eq!(env.metric("breaker_keys"), 2);
    // a's failures open a's breaker only.
    for _ in 0..2 {
        let to = get_answered(&env.host, a.0, a.1, "/orders/1", "u", 503);
        assert_eq!(to.as_deref(), Some("orders_service"));
    }
    let to = |(plan, worker): (&Plan, &Worker), path| {
        get_answered(&env.host, plan, worker, path, "u", 200)
    };
    assert_eq!(to(a, "/orders/1").as_deref(), Some("monolith"));
    assert_eq!(to(b, "/shop/1").as_deref(), Some("orders_service"));
    // a, the older, still ticks its guard: the service fails, it trips
    // (within 5 s, as in guard_trip_sets_the_share_to_0).
    let mut users = 0;
    for _ in 0..5 {
        guard_second(&env, a, "/auth/1", &mut users, 100, service_fails);
        env.tick_of(2, b.0, b.1);
        env.tick_of(ID, a.0, a.1);
    }
    assert_eq!(env.metric("route.auth.guard.tripped"), 1);
    assert_eq!(env.metric("route.auth.effective_percent_bp"), 0);
    // a's tick ran its breaker's time-driven work: half-open after the
    // ejection.
    env.host.advance(5000);
    env.tick_of(2, b.0, b.1);
    env.tick_of(ID, a.0, a.1);
    let stored = env.host.store_get(&a_key).expect("readable").0;
    assert_eq!(
        Breaker::decode(&stored).map(|b| b.state()),
        Some(State::HalfOpen)
    );
    let stored = env.host.store_get(&b_key).expect("readable").0;
    assert!(stored.is_empty(), "b's breaker is healthy");
}

/// Issue 20, item 5, on upgrade: a release before the filter identity kept
/// the breaker under [`crate::config::Route::breaker_key`]. A new key
/// inherits that state once (an open breaker stays open) and never looks
/// back; the old key stays for a rollback.
#[test]
fn an_upgrade_inherits_the_breaker_of_the_key_without_filter_identity() {
    let json = breaker_config("fallback", 1);
    let config = Config::from_json(json.as_bytes()).expect("valid config");
    let route = &config.routes[0];
    let settings = route.outlier.clone().expect("an outlier");
    let legacy = route.breaker_key().expect("a breaker");
    let mut open = Breaker::default();
    for _ in 0..2 {
        open.record(&settings, T0 - 1000, true, Ticket::Pass, None);
    }
    assert_eq!(open.state(), State::Open);
    let host = Fake::new(T0);
    assert!(host.store_set(&legacy, Some(&open.encode()), None));
    let env = Env::on(host, &json);
    let key = env.plan.breakers[0]
        .as_ref()
        .expect("a breaker")
        .key()
        .to_string();
    assert_ne!(key, legacy);
    let r = env.get("/orders/1", "u");
    assert_eq!(r.target().as_deref(), Some("monolith"), "still open");
    assert_eq!(r.stream.reason.get(), Some(Reason::BreakerFallback));
    // The ejection ends, a probe succeeds: closed.
    env.host.advance(5000);
    let mut probe = env.get("/orders/1", "u");
    assert_eq!(probe.target().as_deref(), Some("orders_service"));
    env.status(&mut probe, 200);
    // A configuration update: the key was written, the old state (still
    // there, open) is not read again.
    let (plan, worker) = env.another(2, "p", &json);
    let to = get_answered(&env.host, &plan, &worker, "/orders/1", "u", 200);
    assert_eq!(to.as_deref(), Some("orders_service"));
    let old = env.host.store_get(&legacy).expect("readable").0;
    assert_eq!(
        Breaker::decode(&old).map(|b| b.state()),
        Some(State::Open),
        "left for a rollback"
    );
}

/// Issue 20, item 2 through the flow: an update raising
/// `failure_rate.window_ms` keeps the window's key; the failures counted
/// after it still open the breaker.
#[test]
fn a_raised_failure_rate_window_still_trips() {
    let rate = |window_ms: u64| {
        config(
            &format!(
                r#"{{"name": "orders", "prefix": "/orders/", "service": "orders_service", "percent": 100,
                    "outlier": {{"consecutive_failures": 0, "base_ejection_ms": 5000,
                                "failure_rate": {{"threshold_percent": 50, "min_requests": 20, "window_ms": {window_ms}}}}}}}"#
            ),
            "",
        )
    };
    let env = Env::new(&rate(1000));
    for i in 0..10 {
        let mut r = env.get("/orders/1", &format!("u{i}"));
        env.status(&mut r, 200);
        env.host.advance(100);
    }
    env.tick();
    let (plan, worker) = env.another(2, "p", &rate(10_000));
    env.live.borrow_mut().leave(&env.host, ID);
    let mut to_service = 0;
    for i in 0..60 {
        let to = get_answered(
            &env.host,
            &plan,
            &worker,
            "/orders/1",
            &format!("f{i}"),
            500,
        );
        to_service += usize::from(to.as_deref() == Some("orders_service"));
        env.host.advance(50);
        if i % 20 == 19 {
            env.tick_of(2, &plan, &worker);
        }
    }
    // min_requests 20 at 100 % failures: open at the 20th failure.
    assert_eq!(to_service, 20);
    env.tick_of(2, &plan, &worker);
    assert_eq!(env.metric("route.orders.breaker.opened"), 1);
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
    fn call_response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.with(|h| h.call_response_trailer(name))
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
    let (plan, _) = tick::configure(&host, config, 0);
    let mut live = Live::default();
    live.join(&host, ID, &plan);
    let (plan, live) = (std::sync::Arc::new(plan), &live);
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
                response::on_response(host, &stream, &plan, &worker, pending, true);
            }
            tick::tick(host, &plan, &worker, live, ID);
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

// gRPC: the outcome is the `grpc-status`.

/// A unary or streaming RPC to `/orders.Orders/Get` by user `user`.
fn rpc(env: &Env, user: &str) -> Req {
    env.request(
        &[
            (":method", "POST"),
            (":path", "/orders.Orders/Get"),
            ("content-type", "application/grpc"),
            ("x-user", user),
        ],
        false,
    )
}

/// The upstream answers 200 and then trailers with `grpc-status: code`.
fn grpc_trailers(env: &Env, r: &mut Req, code: &str) {
    r.stream
        .respond(&[(":status", "200"), ("content-type", "application/grpc")]);
    r.exchange
        .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
    r.stream.trail(&[("grpc-status", code)]);
    r.exchange
        .on_response_trailers(&env.host, &r.stream, &env.plan, &env.worker);
}

fn grpc_config(grpc: &str, outlier: &str, percent: u32) -> String {
    config(
        &format!(
            r#"{{"name": "orders", "prefix": "/orders.Orders/", "service": "orders_service",
                "percent": {percent} {grpc} {outlier}}}"#
        ),
        "",
    )
}

const OUTLIER: &str = r#", "outlier": {"consecutive_failures": 3, "base_ejection_ms": 5000,
                                       "on_open": "fallback"}"#;

#[test]
fn grpc_unavailable_in_trailers_opens_the_breaker() {
    let env = Env::new(&grpc_config("", OUTLIER, 100));
    for _ in 0..3 {
        let mut r = rpc(&env, "u");
        assert_eq!(r.target().as_deref(), Some("orders_service"));
        grpc_trailers(&env, &mut r, "14");
    }
    let r = rpc(&env, "u");
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert_eq!(r.stream.reason.get(), Some(Reason::BreakerFallback));
    env.tick();
    assert_eq!(env.metric("route.orders.breaker.opened"), 1);
    // A 200 each time, and three failures of the application.
    assert_eq!(env.metric("route.orders.target.service.rq_2xx"), 3);
    assert_eq!(
        env.metric("route.orders.target.service.upstream_failure.origin.app"),
        3
    );
}

#[test]
fn grpc_trailers_only_response_settles_at_the_headers() {
    let env = Env::new(&grpc_config("", OUTLIER, 100));
    for _ in 0..3 {
        let mut r = rpc(&env, "u");
        // Envoy's own answer for a refused connection: 200, UNAVAILABLE,
        // a response flag.
        r.stream.flags.set(0x20);
        r.stream.respond(&[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "14"),
        ]);
        r.exchange
            .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, true);
        // No trailers follow: the outcome is already in.
        r.exchange
            .on_response_trailers(&env.host, &r.stream, &env.plan, &env.worker);
    }
    assert_eq!(rpc(&env, "u").target().as_deref(), Some("monolith"));
    env.tick();
    assert_eq!(
        env.metric("route.orders.target.service.upstream_failure.origin.proxy"),
        3
    );
}

#[test]
fn grpc_codes_outside_the_failure_set_do_not_count() {
    // NOT_FOUND (5) is a client's problem; CANCELLED (1) not in the default.
    let env = Env::new(&grpc_config("", OUTLIER, 100));
    for code in ["5", "1", "5", "1", "0", "3"] {
        let mut r = rpc(&env, "u");
        grpc_trailers(&env, &mut r, code);
    }
    assert_eq!(rpc(&env, "u").target().as_deref(), Some("orders_service"));
    // A route's own set: NOT_FOUND counts, UNAVAILABLE no longer does.
    let env = Env::new(&grpc_config(
        r#", "grpc": {"failure_codes": ["NOT_FOUND"]}"#,
        OUTLIER,
        100,
    ));
    for _ in 0..3 {
        let mut r = rpc(&env, "u");
        grpc_trailers(&env, &mut r, "14");
    }
    assert_eq!(rpc(&env, "u").target().as_deref(), Some("orders_service"));
    for _ in 0..3 {
        let mut r = rpc(&env, "u");
        grpc_trailers(&env, &mut r, "5");
    }
    assert_eq!(rpc(&env, "u").target().as_deref(), Some("monolith"));
}

#[test]
fn grpc_web_and_plain_requests_keep_the_http_outcome() {
    let env = Env::new(&grpc_config("", OUTLIER, 100));
    for _ in 0..3 {
        let mut r = env.request(
            &[
                (":method", "POST"),
                (":path", "/orders.Orders/Get"),
                ("content-type", "application/grpc-web+proto"),
                ("x-user", "u"),
            ],
            false,
        );
        grpc_trailers(&env, &mut r, "14");
    }
    assert_eq!(rpc(&env, "u").target().as_deref(), Some("orders_service"));
}

#[test]
fn grpc_latency_is_time_to_headers_and_stats_count_by_code() {
    let env = Env::new(&grpc_config(r#", "grpc": {}"#, "", 100));
    let mut r = rpc(&env, "u");
    env.host.advance(7);
    r.stream
        .respond(&[(":status", "200"), ("content-type", "application/grpc")]);
    r.exchange
        .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
    // A long stream: its outcome comes later, its latency does not.
    env.host.advance(5000);
    r.stream.trail(&[("grpc-status", "13")]);
    r.exchange
        .on_response_trailers(&env.host, &r.stream, &env.plan, &env.worker);
    assert_eq!(
        env.host
            .samples("traffic_shift.route.orders.target.service.upstream_rq_time"),
        [7]
    );
    for code in ["0", "0", "14", "99"] {
        let mut r = rpc(&env, "u");
        grpc_trailers(&env, &mut r, code);
    }
    // A stream gone before its trailers: `other`, settled when it ends.
    let mut r = rpc(&env, "u");
    r.stream
        .respond(&[(":status", "200"), ("content-type", "application/grpc")]);
    r.exchange
        .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
    env.end(&mut r);
    env.tick();
    let code = |c: &str| env.metric(&format!("route.orders.target.service.grpc_rq.code.{c}"));
    assert_eq!(
        (
            code("OK"),
            code("INTERNAL"),
            code("UNAVAILABLE"),
            code("other")
        ),
        (2, 1, 1, 2)
    );
    assert_eq!(code("NOT_FOUND"), 0);
    assert_eq!(
        env.metric("route.orders.target.monolith.grpc_rq.code.OK"),
        0
    );
    assert_eq!(
        env.metric("route.orders.target.service.upstream_failure.origin.app"),
        2
    );
}

#[test]
fn grpc_guard_trips_on_the_service_error_rate() {
    let guard = r#", "guard": {"window_s": 30, "min_requests": 20}"#;
    // The guard judges second by second (after a one-second grace): 40 RPCs
    // a second, ticked each second, for at most 10 s.
    let env = Env::new(&grpc_config("", guard, 50));
    for second in 0..10 {
        for i in 0..40 {
            let mut r = rpc(&env, &format!("u{second}-{i}"));
            let service = r.target().as_deref() == Some("orders_service");
            grpc_trailers(&env, &mut r, if service { "14" } else { "0" });
        }
        env.host.advance(1000);
        env.tick();
    }
    assert_eq!(env.metric("route.orders.guard.tripped"), 1);
    // Both sides failing alike (all UNAVAILABLE): no trip.
    let env = Env::new(&grpc_config("", guard, 50));
    for second in 0..10 {
        for i in 0..40 {
            let mut r = rpc(&env, &format!("u{second}-{i}"));
            grpc_trailers(&env, &mut r, "14");
        }
        env.host.advance(1000);
        env.tick();
    }
    assert_eq!(env.metric("route.orders.guard.tripped"), 0);
}

#[test]
fn grpc_costs_one_header_read_for_the_status_and_one_trailer_read() {
    let env = Env::new(&grpc_config("", "", 100));
    let mut r = rpc(&env, "u");
    r.stream.take_log();
    env.host.take_log();
    grpc_trailers(&env, &mut r, "0");
    assert_eq!(
        r.stream.take_log(),
        ["response_header", "response_header", "response_trailer"]
    );
    assert_eq!(env.host.take_log(), ["now", "record_metric", "now"]);
}

/// A route with `grpc` and a shadow of every POST (gRPC), comparing the
/// message bytes when `body`.
fn grpc_shadow_env(body: bool) -> Env {
    Env::new(&grpc_config(
        &format!(
            r#", "grpc": {{}}, "shadow": {{"percent": 100, "methods": ["POST"], "compare_body": {body}}}"#
        ),
        "",
        0,
    ))
}

/// A unary RPC carrying one message.
fn unary_rpc(env: &Env, message: &[u8]) -> Req {
    let mut r = rpc(env, "u");
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    *r.stream.chunk.borrow_mut() = body.clone();
    r.exchange.on_request_body(
        &env.host,
        &r.stream,
        &env.plan,
        &env.worker,
        body.len(),
        true,
    );
    r
}

/// The primary answers: headers, one message, trailers with `code`.
fn grpc_answer(env: &Env, r: &mut Req, message: &[u8], code: &str) {
    r.stream
        .respond(&[(":status", "200"), ("content-type", "application/grpc")]);
    r.exchange
        .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    *r.stream.chunk.borrow_mut() = body.clone();
    r.exchange.on_response_body(
        &env.host,
        &r.stream,
        &env.plan,
        &env.worker,
        body.len(),
        false,
    );
    r.stream.trail(&[("grpc-status", code)]);
    r.exchange
        .on_response_trailers(&env.host, &r.stream, &env.plan, &env.worker);
}

/// The shadow's answer `token`: 200, one message, `grpc-status` in the
/// trailers (`trailers_only`: in the headers, no message).
fn grpc_shadow_answer(env: &Env, token: u32, message: &[u8], code: &str, trailers_only: bool) {
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    if trailers_only {
        env.host
            .answer(&[(":status", "200"), ("grpc-status", code)], b"");
        env.host.answer_trailers(&[]);
        shadow::on_answer(&env.host, &env.plan, &env.worker, token, 2, 0);
    } else {
        env.host.answer(&[(":status", "200")], &body);
        env.host.answer_trailers(&[("grpc-status", code)]);
        shadow::on_answer(&env.host, &env.plan, &env.worker, token, 1, body.len());
    }
}

#[test]
fn grpc_shadow_compares_the_status_from_trailers_or_headers() {
    let env = grpc_shadow_env(false);
    // Equal answers: match (the primary is done only at its trailers).
    let mut r = unary_rpc(&env, b"q");
    assert_eq!(env.host.calls.borrow().len(), 1, "one shadow call");
    grpc_answer(&env, &mut r, b"a", "0");
    grpc_shadow_answer(&env, 1, b"a", "0", false);
    // The shadow fails trailers-only with UNAVAILABLE: a mismatch.
    let mut r = unary_rpc(&env, b"q");
    grpc_answer(&env, &mut r, b"a", "0");
    grpc_shadow_answer(&env, 2, b"", "14", true);
    // The shadow answers first, the primary's trailers differ.
    let mut r = unary_rpc(&env, b"q");
    grpc_shadow_answer(&env, 3, b"a", "0", false);
    grpc_answer(&env, &mut r, b"a", "13");
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.header"), 2);
    assert_eq!(env.worker.shadows.in_flight(), 0);
}

#[test]
fn grpc_shadow_compares_message_bytes_and_skips_streams() {
    let env = grpc_shadow_env(true);
    let mut r = unary_rpc(&env, b"q");
    grpc_answer(&env, &mut r, b"same", "0");
    grpc_shadow_answer(&env, 1, b"same", "0", false);
    let mut r = unary_rpc(&env, b"q");
    grpc_answer(&env, &mut r, b"mine", "0");
    grpc_shadow_answer(&env, 2, b"your", "0", false);
    // A client stream: two messages in the request body, not shadowed.
    let mut r = rpc(&env, "u");
    let body = [0, 0, 0, 0, 1, b'a', 0, 0, 0, 0, 1, b'b'];
    *r.stream.chunk.borrow_mut() = body.to_vec();
    r.exchange.on_request_body(
        &env.host,
        &r.stream,
        &env.plan,
        &env.worker,
        body.len(),
        true,
    );
    assert_eq!(env.host.calls.borrow().len(), 2, "no third call");
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.body"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 1);
}

// ---- WebSocket upgrades (issue 23) ----

/// A WebSocket upgrade request by `user` (the stream goes on: frames follow).
fn upgrade(host: &Fake, plan: &Plan, worker: &Worker, path: &str, user: &str) -> Req {
    let headers = [
        (":method", "GET"),
        (":path", path),
        ("x-user", user),
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
    ];
    request_on(host, plan, worker, &headers, false)
}

/// `n` frames each way through the body callbacks of `plan`; every host
/// call they made (stream and host).
fn frames(host: &Fake, plan: &Plan, worker: &Worker, r: &mut Req, n: usize) -> Vec<&'static str> {
    host.take_log();
    r.stream.take_log();
    for _ in 0..n {
        *r.stream.chunk.borrow_mut() = b"\x81\x05hello".to_vec();
        r.exchange
            .on_request_body(host, &r.stream, plan, worker, 7, false);
        r.exchange
            .on_response_body(host, &r.stream, plan, worker, 7, false);
        host.advance(100);
    }
    let mut calls = host.take_log();
    calls.extend(r.stream.take_log());
    calls
}

/// The upstream accepts the upgrade (`101`, the stream goes on).
fn switch(host: &Fake, plan: &Plan, worker: &Worker, r: &mut Req) {
    r.stream
        .respond(&[(":status", "101"), ("upgrade", "websocket")]);
    r.exchange
        .on_response_headers(host, &r.stream, plan, worker, false);
}

/// The decision is made once, on the upgrade request: frames in both
/// directions make no host call and write no header, across a
/// configuration update (a new plan for new streams; an open stream keeps
/// the one it started with, as the proxy-wasm host's stream context keeps
/// its `Rc`), a ramp step and a guard trip. Connections already open stay
/// on their side until they close.
#[test]
fn an_upgraded_connection_stays_on_its_side_and_its_frames_cost_nothing() {
    let env = Env::new(&config(
        r#"{"name": "ws", "prefix": "/ws/", "service": "chat_service", "percent": 0,
            "ramp": [{"at": "2027-01-15T08:00:05Z", "percent": 50}],
            "guard": {"window_s": 30, "min_requests": 20}}"#,
        "",
    ));
    let (host, plan, worker) = (&env.host, &env.plan, &env.worker);
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let mut open: Vec<Req> = users
        .iter()
        .map(|u| upgrade(host, plan, worker, "/ws/chat", u))
        .collect();
    for r in &mut open {
        assert_eq!(r.next, Next::Continue);
        assert_eq!(
            r.target().as_deref(),
            Some("monolith"),
            "0 % before the ramp"
        );
        switch(host, plan, worker, r);
    }
    // 5 s of frames: the ramp step to 50 % passes meanwhile.
    for r in &mut open {
        let calls = frames(host, plan, worker, r, 3);
        assert!(calls.is_empty(), "frames made host calls: {calls:?}");
    }
    host.advance(5000);
    // The same users reconnecting now: some go to the service.
    let mut again: Vec<Req> = users
        .iter()
        .map(|u| upgrade(host, plan, worker, "/ws/chat", u))
        .collect();
    let moved = again
        .iter()
        .filter(|r| r.target().as_deref() == Some("chat_service"))
        .count();
    assert!((1..20).contains(&moved), "{moved} of 20 at 50 %");
    for r in &mut again {
        switch(host, plan, worker, r);
    }
    // The guard trips (service responses 5xx, the monolith's 2xx).
    // (Judged second by second after a one-second grace: 40 requests a
    // second, ticked each second, for at most 10 s.)
    for second in 0..10 {
        for i in 0..40 {
            let mut r = env.get("/ws/chat", &format!("g{second}-{i}"));
            let service = r.target().as_deref() == Some("chat_service");
            env.status(&mut r, if service { 500 } else { 200 });
        }
        host.advance(1000);
        env.tick();
    }
    assert_eq!(env.metric("route.ws.guard.tripped"), 1);
    // Open connections on either side: frames still cost nothing, nothing
    // is rewritten, no local reply; they stay until they close.
    for r in open.iter_mut().chain(again.iter_mut()) {
        let before = r.stream.writes.borrow().clone();
        let calls = frames(host, plan, worker, r, 3);
        assert!(calls.is_empty(), "frames made host calls: {calls:?}");
        assert_eq!(*r.stream.writes.borrow(), before);
        assert!(r.stream.reply.borrow().is_none());
        env.end(r);
    }
    // A user the split sends to the service reconnects after the trip: to
    // the monolith.
    let on_service = users
        .iter()
        .zip(&again)
        .find(|(_, r)| r.target().as_deref() == Some("chat_service"))
        .map(|(u, _)| u.as_str())
        .unwrap_or_default();
    let r = upgrade(host, plan, worker, "/ws/chat", on_service);
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert_eq!(r.stream.reason.get(), Some(Reason::Guard));
    // A configuration update: new streams get the new plan, an open one
    // keeps its own and its side.
    let mut kept = upgrade(host, plan, worker, "/ws/chat", "u1");
    let (plan2, worker2) = env.another(
        2,
        "p",
        &config(
            r#"{"name": "ws", "prefix": "/ws/", "service": "chat_service", "percent": 100}"#,
            "",
        ),
    );
    let r2 = upgrade(host, &plan2, &worker2, "/ws/chat", "u1");
    assert_eq!(r2.target().as_deref(), Some("chat_service"));
    switch(host, plan, worker, &mut kept);
    assert!(frames(host, plan, worker, &mut kept, 3).is_empty());
    assert_eq!(kept.target().as_deref(), Some("monolith"));
}

/// A `101` counts in `rq_1xx` and is no failure; the latency sample is the
/// time to the `101`, never the connection's lifetime.
#[test]
fn a_101_counts_as_1xx_with_the_time_to_the_101() {
    let env = Env::new(&config(
        r#"{"name": "ws", "prefix": "/ws/", "service": "chat_service", "percent": 100}"#,
        "",
    ));
    let mut r = upgrade(&env.host, &env.plan, &env.worker, "/ws/chat", "u");
    env.host.advance(7);
    switch(&env.host, &env.plan, &env.worker, &mut r);
    frames(&env.host, &env.plan, &env.worker, &mut r, 100);
    env.end(&mut r);
    env.tick();
    assert_eq!(env.metric("route.ws.target.service.rq_total"), 1);
    assert_eq!(env.metric("route.ws.target.service.rq_1xx"), 1);
    assert_eq!(env.metric("route.ws.target.service.rq_2xx"), 0);
    assert_eq!(
        env.metric("route.ws.target.service.upstream_failure.origin.app"),
        0
    );
    assert_eq!(
        env.metric("route.ws.target.service.upstream_failure.origin.proxy"),
        0
    );
    assert_eq!(
        env.host
            .samples("traffic_shift.route.ws.target.service.upstream_rq_time"),
        vec![7],
        "10 s of frames later"
    );
}

/// The breaker: a completed upgrade is a success (it ends a run of
/// failures); a refused one (503 from the service) or one Envoy fails
/// before the `101` (a reset: 503 with `response.flags` set) is a failure;
/// once open, new connections fall back to the monolith.
#[test]
fn the_breaker_counts_a_101_as_success_and_a_refused_upgrade_as_failure() {
    let env = Env::new(&config(
        r#"{"name": "ws", "prefix": "/ws/", "service": "chat_service", "percent": 100,
            "outlier": {"consecutive_failures": 2, "base_ejection_ms": 5000,
                        "on_open": "fallback"}}"#,
        "",
    ));
    let (host, plan, worker) = (&env.host, &env.plan, &env.worker);
    let refused = |flags: u64| {
        let mut r = upgrade(host, plan, worker, "/ws/chat", "u");
        assert_eq!(r.target().as_deref(), Some("chat_service"));
        r.stream.flags.set(flags);
        env.status(&mut r, 503);
    };
    // failure, success, failure: never two in a row.
    refused(0);
    let mut ok = upgrade(host, plan, worker, "/ws/chat", "u");
    switch(host, plan, worker, &mut ok);
    refused(0);
    env.tick();
    assert_eq!(env.metric("route.ws.breaker.opened"), 0);
    // Reset before the 101 (Envoy's 503, upstream connection termination).
    refused(0x40);
    env.tick();
    assert_eq!(env.metric("route.ws.breaker.opened"), 1);
    assert_eq!(
        env.metric("route.ws.target.service.upstream_failure.origin.app"),
        2
    );
    assert_eq!(
        env.metric("route.ws.target.service.upstream_failure.origin.proxy"),
        1
    );
    let r = upgrade(host, plan, worker, "/ws/chat", "u");
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert_eq!(r.stream.reason.get(), Some(Reason::BreakerFallback));
    // The connection opened before the breaker did is left alone.
    let calls = frames(host, plan, worker, &mut ok, 3);
    assert!(calls.is_empty(), "{calls:?}");
}

/// Shadow compare never shadows an upgrade: no call, no frame copied, no
/// result counted, the connection unaffected.
#[test]
fn an_upgrade_is_never_shadowed() {
    let env = shadow_env();
    let mut r = upgrade(&env.host, &env.plan, &env.worker, "/orders/ws", "u");
    assert_eq!(r.target().as_deref(), Some("monolith"));
    assert!(r.exchange.shadow.is_none());
    switch(&env.host, &env.plan, &env.worker, &mut r);
    let calls = frames(&env.host, &env.plan, &env.worker, &mut r, 5);
    assert!(calls.is_empty(), "{calls:?}");
    env.end(&mut r);
    assert!(env.host.calls.borrow().is_empty(), "no shadow call");
    // A plain GET of the same route is still shadowed.
    env.get("/orders/1", "u");
    assert_eq!(env.host.calls.borrow().len(), 1);
    env.tick();
    for v in crate::shadow::Verdict::ALL {
        let name = format!("route.orders.shadow.result.{}", v.as_str());
        assert_eq!(env.metric(&name), 0, "{name}");
    }
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
        tick::tick(&env.host, &env.plan, worker, &env.live.borrow(), ID);
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
    let id = std::cell::Cell::new(ID);
    let again = |s: &str| {
        id.set(id.get() + 1);
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
        let mut live = env.live.borrow_mut();
        tick::start(&env.host, &mut live, id.get(), "p", "", c).1
    };
    // Same settings (another route config around it is fine): kept.
    let w = again(shadow);
    assert_eq!(w.shadows.noise_comparisons(0), 1);
    // Changed shadow settings: learned afresh.
    let w = again(r#""compare_body": "json", "noise_percent": 50"#);
    assert_eq!(w.shadows.noise_comparisons(0), 0);
}

// Both: a JSON shadow whose primary answer ends with trailers, and gRPC
// under "json".

#[test]
fn a_json_primary_ending_with_trailers_is_compared_at_its_trailers() {
    // Before the response trailers were read, such a primary never
    // completed and its request ended `skipped`.
    let env = shadow_env_with(r#""compare_body": "json""#);
    let ok = [(":status", "200"), ("content-type", "application/json")];
    for (token, shadow_body) in [(1, r#"{"b": 2, "a": 1}"#), (2, r#"{"a": 1, "b": 3}"#)] {
        let mut r = env.get("/orders/1", "u");
        r.stream.respond(&ok);
        r.exchange
            .on_response_headers(&env.host, &r.stream, &env.plan, &env.worker, false);
        let body = br#"{"a": 1, "b": 2}"#;
        *r.stream.chunk.borrow_mut() = body.to_vec();
        r.exchange.on_response_body(
            &env.host,
            &r.stream,
            &env.plan,
            &env.worker,
            body.len(),
            false,
        );
        r.stream.trail(&[("x-checksum", "1")]);
        r.exchange
            .on_response_trailers(&env.host, &r.stream, &env.plan, &env.worker);
        env.host.answer(&ok, shadow_body.as_bytes());
        shadow::on_answer(
            &env.host,
            &env.plan,
            &env.worker,
            token,
            2,
            shadow_body.len(),
        );
        env.end(&mut r);
    }
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.body"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 0);
    assert_eq!(env.worker.shadows.held(), 0);
    assert_eq!(env.worker.shadows.in_flight(), 0);
}

#[test]
fn grpc_shadow_under_json_compares_message_bytes() {
    let env = Env::new(&grpc_config(
        r#", "grpc": {}, "shadow": {"percent": 100, "methods": ["POST"], "compare_body": "json"}"#,
        "",
        0,
    ));
    let mut r = unary_rpc(&env, b"q");
    grpc_answer(&env, &mut r, b"same", "0");
    grpc_shadow_answer(&env, 1, b"same", "0", false);
    let mut r = unary_rpc(&env, b"q");
    grpc_answer(&env, &mut r, b"mine", "0");
    grpc_shadow_answer(&env, 2, b"your", "0", false);
    let mut r = unary_rpc(&env, b"q");
    grpc_answer(&env, &mut r, b"same", "0");
    grpc_shadow_answer(&env, 3, b"", "14", true);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.body"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.header"), 1);
    assert_eq!(env.worker.shadows.held(), 0);
    assert_eq!(env.worker.shadows.in_flight(), 0);
}

#[test]
fn a_grpc_stream_not_shadowed_gives_back_its_admission() {
    // max_in_flight 1: a client stream (two messages) is skipped at
    // dispatch; its slot is free again for the next unary call.
    let env = Env::new(&grpc_config(
        r#", "grpc": {}, "shadow": {"percent": 100, "methods": ["POST"], "max_in_flight": 1}"#,
        "",
        0,
    ));
    let mut r = rpc(&env, "u");
    let body = [0, 0, 0, 0, 1, b'a', 0, 0, 0, 0, 1, b'b'];
    *r.stream.chunk.borrow_mut() = body.to_vec();
    r.exchange.on_request_body(
        &env.host,
        &r.stream,
        &env.plan,
        &env.worker,
        body.len(),
        true,
    );
    assert_eq!(env.host.calls.borrow().len(), 0);
    assert_eq!(env.worker.shadows.held(), 0);
    let mut r = unary_rpc(&env, b"q");
    assert_eq!(env.host.calls.borrow().len(), 1, "the slot was given back");
    grpc_answer(&env, &mut r, b"a", "0");
    grpc_shadow_answer(&env, 1, b"a", "0", false);
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.skipped"), 1);
    assert_eq!(env.metric("route.orders.shadow.result.match"), 1);
}

#[test]
fn a_grpc_shadow_envoy_answered_itself_is_an_error() {
    // Envoy answers a gRPC call it cannot deliver with a trailers-only
    // UNAVAILABLE carrying its local-reply text; a service's own
    // UNAVAILABLE stays a `header` mismatch.
    let env = grpc_shadow_env(false);
    for (token, message) in [
        (1, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"),
        (2, "no healthy upstream"),
        (3, "orders_service fails this RPC"),
    ] {
        let mut r = unary_rpc(&env, b"q");
        grpc_answer(&env, &mut r, b"a", "0");
        env.host.answer(
            &[
                (":status", "200"),
                ("grpc-status", "14"),
                ("grpc-message", message),
            ],
            b"",
        );
        env.host.answer_trailers(&[]);
        shadow::on_answer(&env.host, &env.plan, &env.worker, token, 3, 0);
    }
    env.tick();
    assert_eq!(env.metric("route.orders.shadow.result.error"), 2);
    assert_eq!(env.metric("route.orders.shadow.result.header"), 1);
    assert_eq!(env.worker.shadows.in_flight(), 0);
}

#[test]
fn a_breaker_state_set_after_its_configuration_left_is_zeroed_when_it_goes() {
    // Found by the `flow` fuzz target: in proxy-wasm a configuration's
    // root context leaves (its gauges zeroed) before its last streams end;
    // a response of one of them that opened the breaker set the state
    // gauge of a route no configuration had any more, and it read "open"
    // for good.
    let env = breaker_env("fallback", 1);
    let mut a = env.get("/orders/1", "a");
    let mut b = env.get("/orders/1", "b");
    assert_eq!(a.target().as_deref(), Some("orders_service"));
    // An update renames the route; the old configuration's root goes.
    let renamed = config(&ORDERS.replace(r#""orders""#, r#""orders2""#), "");
    let _newer = env.another(2, "p", &renamed);
    env.live.borrow_mut().leave(&env.host, ID);
    assert_eq!(env.metric("route.orders.breaker.state"), 0);
    env.status(&mut a, 500);
    env.status(&mut b, 500);
    let open = State::Open as u64;
    assert_eq!(
        env.metric("route.orders.breaker.state"),
        open,
        "while it runs"
    );
    env.end(&mut a);
    env.end(&mut b);
    // Its last stream ended: the host drops it.
    tick::end(&env.host, &env.plan, &env.worker);
    env.live.borrow().gone(&env.host, &env.plan);
    assert_eq!(env.metric("route.orders.breaker.state"), 0);
}

/// The `flow` fuzz target's driver on its seeds (`tests/fuzz/seeds/flow`)
/// and on pseudo-random inputs: every invariant it checks holds.
#[test]
fn the_fuzz_driver_keeps_its_invariants_on_the_seeds_and_random_inputs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/flow");
    let mut seeds = 0;
    for entry in std::fs::read_dir(dir).expect("seeds") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        super::fuzz::run(&data);
        seeds += 1;
    }
    assert!(seeds > 0);
    // SplitMix64: a fixed sequence, the same inputs every run.
    let mut state = 7u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for _ in 0..RANDOM_INPUTS {
        let len = 64 + next() as usize % 1024;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        super::fuzz::run(&data);
    }
}

/// Inputs the unit test above runs (the fuzzer runs millions).
const RANDOM_INPUTS: usize = 300;
