//! Traces and access log lines carry the decision and its reason: the
//! shipped `tracing` block and access log format, run by a real Envoy whose
//! OpenTelemetry tracer (the provider of `envoy/compose-envoy.yaml`) exports
//! over OTLP/gRPC to a receiver inside the test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::{client, random_ids, repo_root, send, Bootstrap, Envoy, Upstream};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_yaml::Value as Yaml;
use tokio_stream::wrappers::TcpListenerStream;
use traffic_shift::config::{Config, Target};
use traffic_shift::decision::{Reason, FILTER_STATE_KEY};

/// An OTLP/gRPC trace receiver on a free loopback port, keeping every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        (r, addr)
    }

    /// The attributes of the span of the request sent with `?case=<case>`,
    /// waiting for Envoy's exporter (it flushes every 5 s).
    async fn span_of(&self, case: &str) -> Vec<(String, String)> {
        let url_end = format!("?case={case}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let spans = self.0.lock().unwrap();
                let found = spans.iter().map(attributes).find(|attrs| {
                    attrs
                        .iter()
                        .any(|(k, v)| k == "http.url" && v.ends_with(&url_end))
                });
                if let Some(attrs) = found {
                    return attrs;
                }
                assert!(
                    Instant::now() < deadline,
                    "no span for case {case} among {} spans",
                    spans.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn attributes(s: &Span) -> Vec<(String, String)> {
    s.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn tag<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn hcm(root: &mut Yaml) -> &mut Yaml {
    &mut root["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn yaml(s: &str) -> Yaml {
    serde_yaml::from_str(s).unwrap()
}

const PLUGIN_CONFIG: &str = r#"{"monolith": "monolith",
  "override": {"header": "x-shift-force"},
  "routes": [
    {"name": "all", "prefix": "/all/", "service": "auth_service", "percent": 100},
    {"name": "none", "prefix": "/none/", "service": "auth_service", "percent": 0},
    {"name": "keyed", "prefix": "/keyed/", "service": "auth_service", "percent": 100,
     "hash_key": {"header": "x-user-id"}},
    {"name": "fb", "prefix": "/fb/", "service": "orders_service", "percent": 100,
     "outlier": {"consecutive_failures": 1, "base_ejection_ms": 60000, "on_open": "fallback"}},
    {"name": "rj", "prefix": "/rj/", "service": "orders_service", "percent": 100,
     "outlier": {"consecutive_failures": 1, "base_ejection_ms": 60000, "on_open": "reject"}},
    {"name": "guarded", "prefix": "/guarded/", "service": "orders_service", "percent": 50,
     "hash_key": {"header": "x-user-id"}, "guard": {"window_s": 5, "min_requests": 20}}
  ]}"#;

/// A user the `guarded` route's split (50 %, salt "") gives the service:
/// bucket 1996 (a golden vector).
const GUARDED_USER: &str = "a";

/// `envoy/envoy.yaml` for a test, with the OpenTelemetry provider and
/// collector cluster of `envoy/compose-envoy.yaml` pointed at `collector`,
/// the access log written to `log` (same format), and one more tag: the
/// filter state as published, to see what the filter itself set.
fn traced_bootstrap(collector: SocketAddr, log: &std::path::Path) -> Bootstrap {
    let mut b = Bootstrap::shipped()
        .for_test()
        .with_plugin_config(PLUGIN_CONFIG);
    let compose = Bootstrap::load(&repo_root().join("envoy/compose-envoy.yaml"));
    let mut compose_root = compose.0.clone();
    let provider = hcm(&mut compose_root)["tracing"]["provider"].clone();
    let otel_cluster = compose.0["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "otel_collector")
        .expect("compose-envoy.yaml has an otel_collector cluster")
        .clone();

    let h = hcm(&mut b.0);
    h["tracing"]["provider"] = provider;
    h["tracing"]["custom_tags"]
        .as_sequence_mut()
        .unwrap()
        .push(yaml(&format!(
            "{{tag: published, value: '%FILTER_STATE({FILTER_STATE_KEY}:PLAIN)%'}}"
        )));
    let logger = &mut h["access_log"][0];
    logger["name"] = Yaml::from("envoy.access_loggers.file");
    logger["typed_config"]["@type"] =
        Yaml::from("type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog");
    logger["typed_config"]["path"] = Yaml::from(log.to_string_lossy().into_owned());

    let mut cluster = otel_cluster;
    cluster["type"] = Yaml::from("STATIC");
    b.0["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
        .push(cluster);
    b.with_cluster_address("otel_collector", collector)
}

/// One request of the test: its case name, path and extra headers, and
/// what the span and the log line must say.
struct Case {
    name: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// `None`: answered by Envoy (the filter's breaker reply).
    served_by: Option<&'static str>,
    /// The target tag (`None`: no target header: outside the filter's
    /// routes, or answered by the filter).
    target: Option<&'static str>,
    /// `None`: a request outside the filter's routes (no reason tag).
    reason: Option<Reason>,
}

const CASES: &[Case] = &[
    Case {
        name: "split-service",
        path: "/all/x",
        headers: &[],
        served_by: Some("auth_service"),
        target: Some("auth_service"),
        reason: Some(Reason::Split),
    },
    Case {
        name: "split-monolith",
        path: "/none/x",
        headers: &[],
        served_by: Some("monolith"),
        target: Some("monolith"),
        reason: Some(Reason::Split),
    },
    Case {
        name: "override",
        path: "/none/x",
        headers: &[("x-shift-force", "service")],
        served_by: Some("auth_service"),
        target: Some("auth_service"),
        reason: Some(Reason::Override),
    },
    Case {
        name: "key-missing",
        path: "/keyed/x",
        headers: &[],
        served_by: Some("monolith"),
        target: Some("monolith"),
        reason: Some(Reason::KeyMissing),
    },
    // The service answers 500: the breaker opens on this one failure...
    Case {
        name: "breaker-trips",
        path: "/fb/x",
        headers: &[],
        served_by: Some("orders_service"),
        target: Some("orders_service"),
        reason: Some(Reason::Split),
    },
    // ... and the next request the split gives the service falls back.
    Case {
        name: "breaker-fallback",
        path: "/fb/x",
        headers: &[],
        served_by: Some("monolith"),
        target: Some("monolith"),
        reason: Some(Reason::BreakerFallback),
    },
    // The same with `on_open: reject`: the filter answers 503 itself, no
    // target header is written, the reason says why.
    Case {
        name: "reject-trips",
        path: "/rj/x",
        headers: &[],
        served_by: Some("orders_service"),
        target: Some("orders_service"),
        reason: Some(Reason::Split),
    },
    Case {
        name: "breaker-reject",
        path: "/rj/x",
        headers: &[],
        served_by: None,
        target: None,
        reason: Some(Reason::BreakerReject),
    },
    // The guard of `guarded` is tripped before these requests (see the
    // test): a user the split gives the service goes to the monolith...
    Case {
        name: "guard",
        path: "/guarded/x",
        headers: &[("x-user-id", GUARDED_USER)],
        served_by: Some("monolith"),
        target: Some("monolith"),
        reason: Some(Reason::Guard),
    },
    // ... and a user the split gives the monolith is still a split.
    Case {
        name: "guard-monolith-side",
        path: "/guarded/x",
        headers: &[("x-user-id", "42")],
        served_by: Some("monolith"),
        target: Some("monolith"),
        reason: Some(Reason::Split),
    },
    Case {
        name: "unmatched",
        path: "/elsewhere",
        headers: &[],
        served_by: Some("monolith"),
        target: None,
        reason: None,
    },
];

/// Trips the guard of route `guarded` (its service, orders_service,
/// answers 500 to every request; the monolith 200) with requests from
/// fresh users, without a `case` (no span or log line is looked at).
async fn trip_the_guard(envoy: &Envoy) {
    let c = client();
    let url = envoy.url("/guarded/trip");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for id in random_ids(50) {
            send(&c, "GET", &url, &[("x-user-id", &id)]).await;
        }
        let m = envoy.metrics().await;
        if m.value("traffic_shift_guard_tripped", &[("route", "guarded")]) == Some(1.0) {
            // The request path reads the trip from VM memory, refreshed on
            // the tick: two ticks and it is there.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        }
    }
    panic!("the guard of route guarded did not trip in 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_log_lines_carry_the_decision_and_its_reason() {
    let (receiver, collector) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let upstreams = [
        Upstream::start("monolith"),
        Upstream::start("auth_service"),
        Upstream::with_status("orders_service", 500),
    ];
    let refs: Vec<&Upstream> = upstreams.iter().collect();
    let bootstrap = traced_bootstrap(collector, &log).with_upstreams(&refs);
    let envoy = Envoy::start(&bootstrap)
        .await
        .unwrap_or_else(|f| panic!("envoy did not start:\n{}", f.log));

    // The users of the guard cases are on the documented sides of the split.
    let config = Config::from_json(PLUGIN_CONFIG.as_bytes()).unwrap();
    let guarded = config.routes.iter().find(|r| r.name == "guarded").unwrap();
    assert_eq!(
        guarded.decide_at(Some(GUARDED_USER.as_bytes()), 5000),
        Target::Service
    );
    assert_eq!(guarded.decide_at(Some(b"42"), 5000), Target::Monolith);
    trip_the_guard(&envoy).await;

    let c = client();
    for case in CASES {
        let url = envoy.url(&format!("{}?case={}", case.path, case.name));
        let s = send(&c, "GET", &url, case.headers).await;
        assert_eq!(s.served_by.as_deref(), case.served_by, "{}", case.name);
        if case.reason == Some(Reason::BreakerReject) {
            assert_eq!(s.status, 503, "{}", case.name);
        }
    }

    for case in CASES {
        let attrs = receiver.span_of(case.name).await;
        let got = (
            tag(&attrs, "traffic_shift.target"),
            tag(&attrs, "traffic_shift.reason"),
        );
        let reason = case.reason.map(Reason::as_str);
        assert_eq!(got, (case.target, reason), "{}: {attrs:?}", case.name);
        // What the filter published itself: nothing for a split (no host
        // call), the reason otherwise.
        let published = case.reason.and_then(Reason::published);
        assert_eq!(tag(&attrs, "published"), published, "{}", case.name);
    }

    // The access log (flushed every second by Envoy); the guard's trip
    // wrote lines before the cases', so wait for every case's own line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let all = CASES
            .iter()
            .all(|c| text.contains(&format!("?case={} ", c.name)));
        if all || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for case in CASES {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("?case={} ", case.name)))
            .unwrap_or_else(|| panic!("no log line for {} in:\n{text}", case.name));
        let target = case.target.unwrap_or("-");
        let reason = case.reason.map_or("-", Reason::as_str);
        assert!(
            line.contains(&format!(" shift_target={target} shift_reason={reason} ")),
            "{}: {line}",
            case.name
        );
    }
}

/// The `tracing` block and the access log format of a shipped config.
fn tracing_and_log(file: &str) -> (Yaml, String) {
    let mut b = Bootstrap::load(&repo_root().join(file));
    let h = hcm(&mut b.0);
    let format = h["access_log"][0]["typed_config"]["log_format"]["text_format_source"]
        ["inline_string"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: no access log format"))
        .to_string();
    (h["tracing"].clone(), format)
}

#[test]
fn every_shipped_config_tags_spans_and_logs_with_the_filters_target_header_and_reason() {
    let config = Config::from_json(Bootstrap::shipped().plugin_config().as_bytes()).unwrap();
    let header = config.target_header.as_str();
    // The CEL expression: the published reason, else "split" when the
    // filter wrote the target header, else nothing (no tag) or "-" (log).
    let reason = |none: &str| {
        format!(
            "%CEL('{FILTER_STATE_KEY}' in filter_state ? filter_state['{FILTER_STATE_KEY}'] : \
             ('{header}' in request.headers ? '{}' : '{none}'))%",
            Reason::Split.as_str()
        )
    };
    for file in [
        "envoy/envoy.yaml",
        "envoy/envoy-ecds-file.yaml",
        "envoy/envoy-ecds-grpc.yaml",
        "envoy/compose-envoy.yaml",
    ] {
        let (tracing, format) = tracing_and_log(file);
        let tags = tracing["custom_tags"].as_sequence().unwrap();
        assert_eq!(tags[0]["tag"], "traffic_shift.target", "{file}");
        assert_eq!(tags[0]["request_header"]["name"], header, "{file}");
        assert_eq!(tags[1]["tag"], "traffic_shift.reason", "{file}");
        assert_eq!(tags[1]["value"], reason("").as_str(), "{file}");
        let upper = header.to_ascii_uppercase();
        assert!(
            format.contains(&format!(
                " shift_target=%REQ({upper})% shift_reason={} ",
                reason("-")
            )),
            "{file}: {format}"
        );
    }
}

#[test]
fn the_compose_exports_otlp_to_the_collector_which_forwards_to_jaeger() {
    let (tracing, _) = tracing_and_log("envoy/compose-envoy.yaml");
    let p = &tracing["provider"];
    assert_eq!(p["name"], "envoy.tracers.opentelemetry");
    let cluster = p["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();
    let b = Bootstrap::load(&repo_root().join("envoy/compose-envoy.yaml"));
    let c = b.0["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster}"));
    let sa = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    let endpoint = format!(
        "{}:{}",
        sa["address"].as_str().unwrap(),
        sa["port_value"].as_u64().unwrap()
    );
    assert_eq!(endpoint, "otel-collector:4317");
    assert!(
        !c["typed_extension_protocol_options"].is_null(),
        "gRPC needs HTTP/2"
    );

    let compose: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("envoy/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let services = &compose["services"];
    for (name, image) in [
        ("otel-collector", "otel/opentelemetry-collector:"),
        ("jaeger", "jaegertracing/all-in-one:"),
    ] {
        let i = services[name]["image"].as_str().unwrap();
        assert!(i.starts_with(image), "{name}: {i}");
        let tag = &i[image.len()..];
        assert!(
            tag.split('.').count() == 3 && tag.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{name}: pin an exact version, got {i}"
        );
    }
    assert_eq!(
        services["otel-collector"]["volumes"][0],
        "./otel-collector.yaml:/etc/otelcol/config.yaml:ro"
    );
    let collector: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("envoy/otel-collector.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    assert_eq!(
        collector["exporters"]["otlp/jaeger"]["endpoint"],
        "jaeger:4317"
    );
    let pipeline = &collector["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"], yaml("[otlp]"));
    assert_eq!(pipeline["exporters"], yaml("[otlp/jaeger]"));
}
