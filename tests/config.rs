//! Configuration: defaults, and the exact text of every kind of error.

use traffic_shift::config::{Config, HashKey};
use traffic_shift::routes::PathMatch;

/// The error messages for `json`, one per error.
fn errors(json: &str) -> Vec<String> {
    match Config::from_json(json.as_bytes()) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e.messages(),
    }
}

/// A configuration with one route whose members are `fields` (raw JSON).
/// To add a field to a valid route, append it: `{OK_ROUTE}, "salt": "x"`.
/// Never repeat one of `OK_ROUTE`'s keys to replace it: a duplicate key
/// refuses the whole configuration (`duplicate_keys_are_refused_at_any_depth`).
fn route(fields: &str) -> String {
    format!(r#"{{"monolith": "monolith", "routes": [{{{fields}}}]}}"#)
}

const OK_ROUTE: &str =
    r#""name": "auth", "prefix": "/api/auth/", "service": "auth_service", "percent": 10"#;

#[test]
fn defaults() {
    let c = Config::from_json(br#"{"monolith": "monolith"}"#).unwrap();
    assert_eq!(c.monolith, "monolith");
    assert_eq!(c.target_header, "x-shift-target");
    assert!(c.routes.is_empty());

    let c = Config::from_json(route(OK_ROUTE).as_bytes()).unwrap();
    let r = &c.routes[0];
    assert_eq!(r.name, "auth");
    assert_eq!(r.matcher.path, PathMatch::Prefix("/api/auth/".into()));
    assert_eq!(r.matcher.methods, None);
    assert_eq!(r.service, "auth_service");
    assert_eq!(r.basis_points, 1000);
    assert_eq!(r.salt, "");
    assert_eq!(r.hash_key, HashKey::Header("x-request-id".into()));
}

#[test]
fn route_hash_key_overrides_the_default_and_header_names_are_lowercased() {
    let c = Config::from_json(
        br#"{"monolith": "m", "target_header": "X-Shift-Target", "hash_key": {"cookie": "sid"},
             "routes": [
               {"name": "a", "path": "/a", "service": "s", "percent": 1},
               {"name": "b", "prefix": "/b", "methods": ["GET", "POST"], "service": "s",
                "percent": 33.33, "salt": "v2", "hash_key": {"header": "X-User-Id"}}
             ]}"#,
    )
    .unwrap();
    assert_eq!(c.target_header, "x-shift-target");
    assert_eq!(c.routes[0].hash_key, HashKey::Cookie("sid".into()));
    assert_eq!(c.routes[0].matcher.path, PathMatch::Exact("/a".into()));
    assert_eq!(c.routes[1].hash_key, HashKey::Header("x-user-id".into()));
    assert_eq!(c.routes[1].basis_points, 3333);
    assert_eq!(c.routes[1].salt, "v2");
    assert_eq!(
        c.routes[1].matcher.methods,
        Some(vec!["GET".to_string(), "POST".to_string()])
    );
}

#[test]
fn first_slice_error_list_exact_messages() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        // Invalid JSON.
        (
            r#"{"monolith": "m","#.into(),
            vec!["configuration: invalid JSON: EOF while parsing a value at line 1 column 17"],
        ),
        ("".into(), vec!["configuration: invalid JSON: EOF while parsing a value at line 1 column 0"]),
        ("[]".into(), vec!["configuration: must be an object, got array"]),
        // Wrong types.
        (r#"{"monolith": 7}"#.into(), vec!["monolith: must be a string, got number"]),
        (
            route(r#""name": "auth", "prefix": "/a/", "service": "s", "percent": "10""#),
            vec!["routes[0].percent: must be a number, got string"],
        ),
        (
            r#"{"monolith": "m", "routes": {}}"#.into(),
            vec!["routes: must be an array, got object"],
        ),
        (
            r#"{"monolith": "m", "routes": [7]}"#.into(),
            vec!["routes[0]: must be an object, got number"],
        ),
        // Unknown fields.
        (
            r#"{"monolith": "m", "rotues": []}"#.into(),
            vec!["rotues: unknown field; expected one of: monolith, target_header, hash_key, routes, override"],
        ),
        (
            route(&format!(r#"{OK_ROUTE}, "prcent": 20"#)),
            vec!["routes[0].prcent: unknown field; expected one of: name, prefix, path, methods, service, percent, salt, hash_key, outlier, ramp, guard, shadow, grpc"],
        ),
        (
            r#"{"monolith": "m", "hash_key": {"header": "x-id", "hdr": "x"}}"#.into(),
            vec!["hash_key.hdr: unknown field; expected one of: header, cookie"],
        ),
        // Percent out of range or too precise.
        (
            format!(
                r#"{{"monolith": "m", "routes": [{{{OK_ROUTE}}}, {{"name": "b", "prefix": "/b/", "service": "s", "percent": 140}}]}}"#
            ),
            vec!["routes[1].percent: must be between 0 and 100, got 140"],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "service": "s", "percent": -1"#),
            vec!["routes[0].percent: must be between 0 and 100, got -1"],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "service": "s", "percent": 10.005"#),
            vec!["routes[0].percent: must have at most two decimals, got 10.005"],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "service": "s""#),
            vec!["routes[0].percent: is required"],
        ),
        // Duplicate route name.
        (
            format!(r#"{{"monolith": "m", "routes": [{{{OK_ROUTE}}}, {{{OK_ROUTE}}}]}}"#),
            vec![r#"routes[1].name: duplicate route name "auth" (first used by routes[0])"#],
        ),
        // Both or neither of prefix / path.
        (
            route(r#""name": "a", "prefix": "/a/", "path": "/a", "service": "s", "percent": 1"#),
            vec!["routes[0]: exactly one of prefix or path is required, got both"],
        ),
        (
            route(r#""name": "a", "service": "s", "percent": 1"#),
            vec!["routes[0]: exactly one of prefix or path is required, got neither"],
        ),
        // Empty name or service.
        (
            route(r#""name": "", "prefix": "/a/", "service": "s", "percent": 1"#),
            vec![r#"routes[0].name: must be 1 to 64 characters of A-Z a-z 0-9 _ -, got """#],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "service": "", "percent": 1"#),
            vec!["routes[0].service: must not be empty"],
        ),
        (r#"{"monolith": ""}"#.into(), vec!["monolith: must not be empty"]),
        (r#"{}"#.into(), vec!["monolith: is required"]),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
}

#[test]
fn more_field_errors_exact_messages() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            route(r#""name": "a b", "prefix": "/a/", "service": "s", "percent": 1"#),
            vec![r#"routes[0].name: must be 1 to 64 characters of A-Z a-z 0-9 _ -, got "a b""#],
        ),
        (
            route(&format!(
                r#""name": "{}", "prefix": "/a/", "service": "s", "percent": 1"#,
                "n".repeat(65)
            )),
            vec![Box::leak(
                format!(
                    r#"routes[0].name: must be 1 to 64 characters of A-Z a-z 0-9 _ -, got "{}""#,
                    "n".repeat(65)
                )
                .into_boxed_str(),
            )],
        ),
        (
            route(r#""name": "a", "prefix": "api/", "service": "s", "percent": 1"#),
            vec![r#"routes[0].prefix: must start with "/", got "api/""#],
        ),
        (
            route(r#""name": "a", "path": "/a?b=1", "service": "s", "percent": 1"#),
            vec![
                r##"routes[0].path: must not contain a query or fragment ("?" or "#"), got "/a?b=1""##,
            ],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "methods": [], "service": "s", "percent": 1"#),
            vec!["routes[0].methods: must not be empty (leave it out to match any method)"],
        ),
        (
            route(
                r#""name": "a", "prefix": "/a/", "methods": ["GET", "post", 3], "service": "s", "percent": 1"#,
            ),
            vec![
                r#"routes[0].methods[1]: must be an HTTP method in upper case, such as GET, got "post""#,
                "routes[0].methods[2]: must be a string, got number",
            ],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "service": "s", "percent": 1, "salt": 5"#),
            vec!["routes[0].salt: must be a string, got number"],
        ),
        (
            route(r#""name": "a", "prefix": "/a/", "service": "my service", "percent": 1"#),
            vec![
                r#"routes[0].service: must be an Envoy cluster name without spaces or control characters, got "my service""#,
            ],
        ),
        (
            r#"{"monolith": "m", "target_header": ":path"}"#.into(),
            vec![r#"target_header: must not be a pseudo-header, got ":path""#],
        ),
        (
            r#"{"monolith": "m", "target_header": "x shift"}"#.into(),
            vec![r#"target_header: must be an HTTP header name, got "x shift""#],
        ),
        (
            r#"{"monolith": "m", "hash_key": {}}"#.into(),
            vec!["hash_key: exactly one of header or cookie is required, got neither"],
        ),
        (
            r#"{"monolith": "m", "hash_key": {"header": "a", "cookie": "b"}}"#.into(),
            vec!["hash_key: exactly one of header or cookie is required, got both"],
        ),
        (
            r#"{"monolith": "m", "hash_key": {"cookie": "a=b"}}"#.into(),
            vec![
                r##"hash_key.cookie: must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got "a=b""##,
            ],
        ),
        (
            route(
                r#""name": "a", "prefix": "/a/", "service": "s", "percent": 1, "hash_key": {"header": ""}"#,
            ),
            vec![r#"routes[0].hash_key.header: must be an HTTP header name, got """#],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let got = errors(
        r#"{"monolith": "", "extra": 1, "routes": [
            {"name": "a", "prefix": "/a/", "service": "s", "percent": 140},
            {"name": "a", "service": "", "percent": 1.234}
        ]}"#,
    );
    assert_eq!(
        got,
        vec![
            "extra: unknown field; expected one of: monolith, target_header, hash_key, routes, override",
            "monolith: must not be empty",
            "routes[0].percent: must be between 0 and 100, got 140",
            "routes[1]: exactly one of prefix or path is required, got neither",
            "routes[1].service: must not be empty",
            "routes[1].percent: must have at most two decimals, got 1.234",
            r#"routes[1].name: duplicate route name "a" (first used by routes[0])"#,
        ]
    );
}

#[test]
fn hostile_bytes_never_panic() {
    for input in [
        &b"\xff\xfe\x00"[..],
        b"{\"monolith\": \"\xff\"}",
        b"{\"monolith\": \"m\", \"routes\": [null, true, 1e400]}",
        b"{\"monolith\": \"m\", \"routes\": [{\"percent\": 1e308, \"name\": {}}]}",
        b"nul\x00l",
    ] {
        assert!(Config::from_json(input).is_err());
    }
}

#[test]
fn outlier_defaults_and_overrides() {
    use traffic_shift::breaker::{FailureRate, OnOpen, Settings};
    let c = Config::from_json(route(OK_ROUTE).as_bytes()).unwrap();
    assert_eq!(c.routes[0].outlier, None, "no outlier object: no breaker");

    let c =
        Config::from_json(route(&format!(r#"{OK_ROUTE}, "outlier": {{}}"#)).as_bytes()).unwrap();
    assert_eq!(
        c.routes[0].outlier,
        Some(Settings {
            consecutive_failures: 5,
            failure_rate: None,
            failure_statuses: vec![500, 502, 503, 504],
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            half_open_probes: 1,
            on_open: OnOpen::Fallback,
        })
    );

    let c = Config::from_json(
        route(&format!(
            r#"{OK_ROUTE}, "outlier": {{"consecutive_failures": 0, "failure_rate": {{}},
                "failure_statuses": [503], "base_ejection_ms": 1000, "max_ejection_ms": 1000,
                "half_open_probes": 3, "on_open": "reject"}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].outlier,
        Some(Settings {
            consecutive_failures: 0,
            failure_rate: Some(FailureRate {
                threshold_percent: 50,
                min_requests: 20,
                window_ms: 10_000
            }),
            failure_statuses: vec![503],
            base_ejection_ms: 1000,
            max_ejection_ms: 1000,
            half_open_probes: 3,
            on_open: OnOpen::Reject,
        })
    );
    // A base above the default max raises the max with it.
    let c = Config::from_json(
        route(&format!(
            r#"{OK_ROUTE}, "outlier": {{"base_ejection_ms": 600000}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].outlier.as_ref().unwrap().max_ejection_ms,
        600_000
    );
}

#[test]
fn outlier_errors_exact_messages() {
    let o = |body: &str| route(&format!(r#"{OK_ROUTE}, "outlier": {body}"#));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (o("true"), vec!["routes[0].outlier: must be an object, got boolean"]),
        (
            o(r#"{"consecutive": 5}"#),
            vec!["routes[0].outlier.consecutive: unknown field; expected one of: consecutive_failures, failure_rate, failure_statuses, base_ejection_ms, max_ejection_ms, half_open_probes, on_open"],
        ),
        (
            o(r#"{"consecutive_failures": -1}"#),
            vec!["routes[0].outlier.consecutive_failures: must be an integer between 0 and 1000000, got -1"],
        ),
        (
            o(r#"{"base_ejection_ms": 0}"#),
            vec!["routes[0].outlier.base_ejection_ms: must be an integer between 1 and 86400000, got 0"],
        ),
        (
            o(r#"{"base_ejection_ms": 1.5}"#),
            vec!["routes[0].outlier.base_ejection_ms: must be an integer between 1 and 86400000, got 1.5"],
        ),
        (
            o(r#"{"base_ejection_ms": 5000, "max_ejection_ms": 1000}"#),
            vec!["routes[0].outlier.max_ejection_ms: must not be less than base_ejection_ms (5000), got 1000"],
        ),
        (
            o(r#"{"half_open_probes": 0}"#),
            vec!["routes[0].outlier.half_open_probes: must be an integer between 1 and 1000, got 0"],
        ),
        (
            o(r#"{"failure_rate": {"threshold_percent": 0, "window": 5}}"#),
            vec![
                "routes[0].outlier.failure_rate.window: unknown field; expected one of: threshold_percent, min_requests, window_ms",
                "routes[0].outlier.failure_rate.threshold_percent: must be an integer between 1 and 100, got 0",
            ],
        ),
        (
            o(r#"{"failure_statuses": [500, 404, "503"]}"#),
            vec![
                "routes[0].outlier.failure_statuses[1]: must be a 5xx status code (500 to 599), got 404",
                r#"routes[0].outlier.failure_statuses[2]: must be a 5xx status code (500 to 599), got "503""#,
            ],
        ),
        (
            o(r#"{"failure_statuses": []}"#),
            vec!["routes[0].outlier.failure_statuses: must not be empty (set consecutive_failures to 0 and leave out failure_rate to count only proxy failures)"],
        ),
        (
            o(r#"{"on_open": "drop"}"#),
            vec![r#"routes[0].outlier.on_open: must be "fallback" or "reject", got "drop""#],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
}

#[test]
fn ramp_and_override_parse() {
    use traffic_shift::config::Override;
    use traffic_shift::ramp::Step;
    let c = Config::from_json(
        br#"{"monolith": "m", "override": {"header": "X-Shift-Force", "secret": "s3"},
             "routes": [{"name": "a", "prefix": "/", "service": "s", "percent": 0,
               "ramp": [{"at": "2026-12-01T09:00:00Z", "percent": 10},
                        {"at": "2026-12-04T09:00:00Z", "percent": 50}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.override_header,
        Some(Override {
            header: "x-shift-force".into(),
            secret_header: "x-shift-force-secret".into(),
            secret: Some("s3".into())
        })
    );
    let r = &c.routes[0];
    assert_eq!(
        r.ramp,
        vec![
            Step {
                at_ms: 1_796_115_600_000,
                basis_points: 1000
            },
            Step {
                at_ms: 1_796_374_800_000,
                basis_points: 5000
            }
        ]
    );
    assert_eq!(r.basis_points_at(1_796_115_599_999), 0);
    assert_eq!(r.basis_points_at(1_796_115_600_000), 1000);
    assert_eq!(r.basis_points_at(1_796_374_800_000), 5000);
    let c = Config::from_json(br#"{"monolith": "m", "override": {"header": "x-force"}}"#).unwrap();
    assert_eq!(c.override_header.unwrap().secret, None);
}

#[test]
fn ramp_and_override_errors_exact_messages() {
    let r = |ramp: &str| route(&format!(r#"{OK_ROUTE}, "ramp": {ramp}"#));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (r("{}"), vec!["routes[0].ramp: must be an array, got object"]),
        (r("[]"), vec!["routes[0].ramp: must not be empty (leave it out for a fixed percent)"]),
        (
            r(r#"[{"at": "2026-12-01 09:00", "percent": 10}]"#),
            vec![r#"routes[0].ramp[0].at: must be an RFC 3339 UTC time such as 2026-12-01T09:00:00Z, got "2026-12-01 09:00""#],
        ),
        (
            r(r#"[{"at": "2026-12-04T09:00:00Z", "percent": 10}, {"at": "2026-12-01T09:00:00Z", "percent": 50}]"#),
            vec!["routes[0].ramp[1].at: must be later than the step before it (2026-12-04T09:00:00Z)"],
        ),
        (
            r(r#"[{"at": "2026-12-01T09:00:00Z", "percent": 10}, {"at": "2026-12-01T09:00:00Z", "percent": 50}]"#),
            vec!["routes[0].ramp[1].at: must be later than the step before it (2026-12-01T09:00:00Z)"],
        ),
        (
            r(r#"[{"at": "2026-12-01T09:00:00Z", "percent": 140}]"#),
            vec!["routes[0].ramp[0].percent: must be between 0 and 100, got 140"],
        ),
        (
            r(r#"[{"at": "2026-12-01T09:00:00Z"}]"#),
            vec!["routes[0].ramp[0].percent: is required"],
        ),
        (
            r(r#"[{"when": "2026-12-01T09:00:00Z", "percent": 1}]"#),
            vec![
                "routes[0].ramp[0].when: unknown field; expected one of: at, percent",
                "routes[0].ramp[0].at: is required",
            ],
        ),
        (
            r#"{"monolith": "m", "override": {"secret": "x"}}"#.into(),
            vec!["override.header: is required"],
        ),
        (
            r#"{"monolith": "m", "override": {"header": "x-shift-target"}}"#.into(),
            vec![r#"override.header: must differ from target_header ("x-shift-target")"#],
        ),
        (
            r#"{"monolith": "m", "override": {"header": "x-force", "secret": ""}}"#.into(),
            vec!["override.secret: must not be empty (leave it out for no secret)"],
        ),
        (
            r#"{"monolith": "m", "override": {"header": "x-force", "token": "a"}}"#.into(),
            vec!["override.token: unknown field; expected one of: header, secret"],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
}

#[test]
fn header_collisions_and_headers_the_filter_must_not_own_exact_messages() {
    let m = |rest: &str| format!(r#"{{"monolith": "m", {rest}}}"#);
    let cases: Vec<(String, Vec<&str>)> = vec![
        // The override header against each hash key header.
        (
            m(r#""hash_key": {"header": "x-user-id"}, "override": {"header": "X-User-Id"}"#),
            vec![r#"override.header: must differ from hash_key.header ("x-user-id")"#],
        ),
        (
            m(
                r#""routes": [{"name": "a", "prefix": "/a/", "service": "s", "percent": 1},
                 {"name": "b", "prefix": "/b/", "service": "s", "percent": 1,
                  "hash_key": {"header": "x-user-id"}}],
                "override": {"header": "x-user-id"}"#,
            ),
            vec![r#"override.header: must differ from routes[1].hash_key.header ("x-user-id")"#],
        ),
        // The same key on several fields is fine; each collides.
        (
            m(
                r#""hash_key": {"header": "x-k"}, "routes": [{"name": "a", "prefix": "/a/",
                 "service": "s", "percent": 1, "hash_key": {"header": "x-k"}}],
                "override": {"header": "x-k"}"#,
            ),
            vec![
                r#"override.header: must differ from hash_key.header ("x-k")"#,
                r#"override.header: must differ from routes[0].hash_key.header ("x-k")"#,
            ],
        ),
        // A hash key header against the target header (default or set).
        (
            route(&format!(
                r#"{OK_ROUTE}, "hash_key": {{"header": "x-shift-target"}}"#
            )),
            vec![r#"routes[0].hash_key.header: must differ from target_header ("x-shift-target")"#],
        ),
        (
            m(r#""target_header": "x-backend", "hash_key": {"header": "X-Backend"}"#),
            vec![r#"hash_key.header: must differ from target_header ("x-backend")"#],
        ),
        // The override's secret header against the target and key headers.
        (
            m(r#""target_header": "x-force-secret", "override": {"header": "x-force"}"#),
            vec![
                r#"override.header: its secret header must differ from target_header ("x-force-secret")"#,
            ],
        ),
        (
            m(
                r#""hash_key": {"header": "x-force-secret"}, "override": {"header": "x-force", "secret": "s"}"#,
            ),
            vec![
                r#"override.header: its secret header must differ from hash_key.header ("x-force-secret")"#,
            ],
        ),
        (
            m(
                r#""routes": [{"name": "a", "prefix": "/a/", "service": "s", "percent": 1,
                  "hash_key": {"header": "x-force-secret"}}], "override": {"header": "x-force"}"#,
            ),
            vec![
                r#"override.header: its secret header must differ from routes[0].hash_key.header ("x-force-secret")"#,
            ],
        ),
        // Headers the filter must never own, as target or override header.
        (
            m(r#""target_header": "Authorization""#),
            vec![
                r#"target_header: must not be "authorization" (it carries the client's credentials)"#,
            ],
        ),
        (
            m(r#""override": {"header": "cookie"}"#),
            vec![r#"override.header: must not be "cookie" (it carries the client's cookies)"#],
        ),
        (
            m(r#""target_header": "cookie""#),
            vec![r#"target_header: must not be "cookie" (it carries the client's cookies)"#],
        ),
        (
            m(r#""target_header": "host""#),
            vec![r#"target_header: must not be "host" (it is the request's authority)"#],
        ),
        (
            m(r#""override": {"header": "x-request-id"}"#),
            vec![
                r#"override.header: must not be "x-request-id" (it is Envoy's request id, the default hash key)"#,
            ],
        ),
        (
            m(r#""target_header": "x-request-id""#),
            vec![
                r#"target_header: must not be "x-request-id" (it is Envoy's request id, the default hash key)"#,
            ],
        ),
        (
            m(r#""target_header": "content-length""#),
            vec![r#"target_header: must not be "content-length" (it frames the request body)"#],
        ),
        (
            m(r#""override": {"header": ":authority"}"#),
            vec![r#"override.header: must not be a pseudo-header, got ":authority""#],
        ),
        // `cookie` as a key header: all the cookies; hash_key.cookie is one.
        (
            m(r#""hash_key": {"header": "Cookie"}"#),
            vec![
                r#"hash_key.header: must not be "cookie" (to hash on a cookie, set hash_key.cookie to its name)"#,
            ],
        ),
        (
            route(&format!(
                r#"{OK_ROUTE}, "hash_key": {{"header": "cookie"}}"#
            )),
            vec![
                r#"routes[0].hash_key.header: must not be "cookie" (to hash on a cookie, set routes[0].hash_key.cookie to its name)"#,
            ],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
}

#[test]
fn key_headers_may_be_read_only_headers_and_may_repeat() {
    // Hashing on a header only reads it: credentials, authority, Envoy's
    // request id and pseudo-headers are valid keys, and routes may share one.
    for key in [
        "authorization",
        "host",
        "x-request-id",
        ":authority",
        "x-force-secrets",
    ] {
        let json = format!(
            r#"{{"monolith": "m", "hash_key": {{"header": "{key}"}},
                 "override": {{"header": "x-force", "secret": "s"}},
                 "routes": [{{"name": "a", "prefix": "/a/", "service": "s", "percent": 1,
                              "hash_key": {{"header": "{key}"}}}}]}}"#
        );
        let c = Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(c.routes[0].hash_key, HashKey::Header(key.into()));
    }
}

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            route(&format!(r#"{OK_ROUTE}, "percent": 100"#)),
            vec!["routes[0].percent: duplicate key"],
        ),
        (
            r#"{"monolith": "a", "monolith": "b"}"#.into(),
            vec!["monolith: duplicate key"],
        ),
        // Equal after unescaping.
        (
            r#"{"monolith": "a", "mon\u006flith": "b"}"#.into(),
            vec!["monolith: duplicate key"],
        ),
        // Each repeated key once, in document order, at any depth; nothing
        // else is checked (which of the values was meant is unknowable).
        (
            route(&format!(
                r#"{OK_ROUTE}, "ramp": [{{"at": "2026-12-01T09:00:00Z", "percent": 10}},
                   {{"at": "2026-12-02T09:00:00Z", "at": "2026-12-03T09:00:00Z", "percent": 101}}],
                   "outlier": {{"failure_rate": {{"window_ms": 10, "window_ms": 20, "window_ms": 30}}}},
                   "salt": 1, "salt": 2"#
            )),
            vec![
                "routes[0].ramp[1].at: duplicate key",
                "routes[0].outlier.failure_rate.window_ms: duplicate key",
                "routes[0].salt: duplicate key",
            ],
        ),
        (
            r#"{"monolith": "m", "override": {"header": "x-a"}, "override": {"header": "x-b"}}"#
                .into(),
            vec!["override: duplicate key"],
        ),
        // Inside an unknown field too.
        (
            r#"{"monolith": "m", "extra": [{"k": 1, "k": 1}]}"#.into(),
            vec!["extra[0].k: duplicate key"],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
    // Equal names in different objects are not duplicates.
    let c = Config::from_json(
        br#"{"monolith": "m", "hash_key": {"header": "x-a"}, "routes": [
            {"name": "a", "prefix": "/a/", "service": "s", "percent": 1, "hash_key": {"header": "x-a"}},
            {"name": "b", "prefix": "/b/", "service": "s", "percent": 2}]}"#,
    )
    .unwrap();
    assert_eq!(c.routes.len(), 2);
}

#[test]
fn percents_are_checked_on_their_decimal_text_not_a_rounded_f64() {
    let p = |percent: &str| {
        route(&format!(
            r#""name": "a", "prefix": "/a/", "service": "s", "percent": {percent}"#
        ))
    };
    let r = |percent: &str| {
        route(&format!(
            r#"{OK_ROUTE}, "ramp": [{{"at": "2026-12-01T09:00:00Z", "percent": {percent}}}]"#
        ))
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            p("10.000000001"),
            vec!["routes[0].percent: must have at most two decimals, got 10.000000001"],
        ),
        // Beyond f64's 17 digits: parses to exactly 33.33.
        (
            p("33.3300000000000000001"),
            vec!["routes[0].percent: must have at most two decimals, got 33.3300000000000000001"],
        ),
        (
            p("1e-3"),
            vec!["routes[0].percent: must have at most two decimals, got 1e-3"],
        ),
        (
            p("100.0000000000000000001"),
            vec!["routes[0].percent: must be between 0 and 100, got 100.0000000000000000001"],
        ),
        (
            p("1.5e3"),
            vec!["routes[0].percent: must be between 0 and 100, got 1.5e3"],
        ),
        (
            r("10.000000001"),
            vec!["routes[0].ramp[0].percent: must have at most two decimals, got 10.000000001"],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "config: {json}");
    }
    for (text, bp) in [
        ("10.50", 1050),
        ("10.500", 1050),
        ("1.5e1", 1500),
        ("3333e-2", 3333),
        ("-0", 0),
        ("100.00", 10000),
    ] {
        let c = Config::from_json(p(text).as_bytes()).unwrap();
        assert_eq!(c.routes[0].basis_points, bp, "{text}");
        let c = Config::from_json(r(text).as_bytes()).unwrap();
        assert_eq!(c.routes[0].ramp[0].basis_points, bp, "ramp {text}");
    }
}

#[test]
fn a_leap_second_in_a_ramp_is_the_next_day_s_midnight() {
    let r = |ramp: &str| route(&format!(r#"{OK_ROUTE}, "ramp": {ramp}"#));
    let c = Config::from_json(
        r(r#"[{"at": "2016-12-31T23:59:60Z", "percent": 20}, {"at": "2017-01-01T00:00:01Z", "percent": 30}]"#)
            .as_bytes(),
    )
    .unwrap();
    // 2017-01-01T00:00:00Z
    assert_eq!(c.routes[0].ramp[0].at_ms, 1_483_228_800_000);
    assert_eq!(c.routes[0].basis_points_at(1_483_228_799_999), 1000);
    assert_eq!(c.routes[0].basis_points_at(1_483_228_800_000), 2000);
    // The same instant as midnight, so not later than it.
    assert_eq!(
        errors(&r(
            r#"[{"at": "2016-12-31T23:59:60Z", "percent": 20}, {"at": "2017-01-01T00:00:00Z", "percent": 30}]"#
        )),
        vec!["routes[0].ramp[1].at: must be later than the step before it (2017-01-01T00:00:00Z)"]
    );
    // Only the day's last minute has a 60th second.
    assert_eq!(
        errors(&r(r#"[{"at": "2016-12-31T12:00:60Z", "percent": 20}]"#)),
        vec![
            r#"routes[0].ramp[0].at: must be an RFC 3339 UTC time such as 2026-12-01T09:00:00Z, got "2016-12-31T12:00:60Z""#
        ]
    );
}

/// The shared corpus (also run through Envoy and the CLI by
/// integration/tests/invalid_configs.rs): every config is refused with
/// exactly these messages.
#[test]
fn the_invalid_config_corpus_is_refused_with_the_exact_messages() {
    let corpus: serde_json::Value =
        serde_json::from_str(include_str!("invalid-configs.json")).unwrap();
    let cases = corpus.as_array().unwrap();
    assert!(cases.len() >= 30, "corpus of {} configs", cases.len());
    for case in cases {
        let json = case["config"].as_str().unwrap();
        let want: Vec<&str> = case["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(errors(json), want, "config: {json}");
    }
}

#[test]
fn guard_defaults_and_overrides() {
    use traffic_shift::guard::Settings;
    let c = Config::from_json(route(OK_ROUTE).as_bytes()).unwrap();
    assert_eq!(c.routes[0].guard, None, "no guard object: no guard");
    assert_eq!(c.routes[0].guard_key(), None);

    let c = Config::from_json(route(&format!(r#"{OK_ROUTE}, "guard": {{}}"#)).as_bytes()).unwrap();
    assert_eq!(
        c.routes[0].guard,
        Some(Settings {
            window_s: 30,
            min_requests: 50,
            max_error_rate_increase: 0.02,
            confidence: 0.95,
            max_latency_ratio: None,
            fleet_size: 1,
            epoch: 0,
        })
    );
    let c = Config::from_json(
        route(&format!(
            r#"{OK_ROUTE}, "guard": {{"window_s": 5, "min_requests": 10,
                "max_error_rate_increase": 0, "confidence": 0.99, "max_latency_ratio": 2.5,
                "epoch": 3}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].guard,
        Some(Settings {
            window_s: 5,
            min_requests: 10,
            max_error_rate_increase: 0.0,
            confidence: 0.99,
            max_latency_ratio: Some(2.5),
            fleet_size: 1,
            epoch: 3,
        })
    );
}

#[test]
fn guard_key_changes_with_what_clears_a_trip_only() {
    let key = |fields: &str, guard: &str, extra: &str| {
        let json = format!(
            r#"{{"monolith": "monolith", "routes": [{{{fields}, "guard": {guard}}}{extra}]}}"#
        );
        Config::from_json(json.as_bytes()).unwrap().routes[0]
            .guard_key()
            .unwrap()
    };
    let base = key(OK_ROUTE, "{}", "");
    assert!(base.starts_with("traffic_shift.guard.auth."));
    // Kept: another route, an outlier, the hash key.
    let other = r#", {"name": "o", "prefix": "/o/", "service": "o", "percent": 50}"#;
    assert_eq!(key(OK_ROUTE, "{}", other), base);
    assert_eq!(
        key(
            &format!(r#"{OK_ROUTE}, "outlier": {{}}, "hash_key": {{"header": "x-user-id"}}"#),
            "{}",
            ""
        ),
        base
    );
    // Cleared: percent, salt, service, ramp, guard settings, epoch.
    for changed in [
        key(&OK_ROUTE.replace("10", "11"), "{}", ""),
        key(&format!(r#"{OK_ROUTE}, "salt": "x""#), "{}", ""),
        key(&OK_ROUTE.replace("auth_service", "auth_v2"), "{}", ""),
        key(
            &format!(r#"{OK_ROUTE}, "ramp": [{{"at": "2030-01-01T00:00:00Z", "percent": 50}}]"#),
            "{}",
            "",
        ),
        key(OK_ROUTE, r#"{"window_s": 60}"#, ""),
        key(OK_ROUTE, r#"{"epoch": 1}"#, ""),
    ] {
        assert_ne!(changed, base);
    }
}

#[test]
fn one_number_rule_for_every_numeric_field() {
    // A number is judged by its value however it is written: exponent
    // forms and integral fractions are accepted, in guard, outlier and
    // percent fields alike.
    let c = Config::from_json(
        route(
            r#""name": "auth", "prefix": "/auth/", "service": "auth_service", "percent": 1e1,
            "outlier": {"consecutive_failures": 5.0, "base_ejection_ms": 3e4,
                        "failure_statuses": [5.03e2]},
            "guard": {"confidence": 9.5e-1, "max_error_rate_increase": 2E-2, "window_s": 6e1,
                      "max_latency_ratio": 15e-1}"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let r = &c.routes[0];
    assert_eq!(r.basis_points, 1000);
    let g = r.guard.as_ref().unwrap();
    assert_eq!(
        (
            g.confidence,
            g.max_error_rate_increase,
            g.window_s,
            g.max_latency_ratio
        ),
        (0.95, 0.02, 60, Some(1.5))
    );
    let o = r.outlier.as_ref().unwrap();
    assert_eq!((o.consecutive_failures, o.base_ejection_ms), (5, 30_000));
    assert_eq!(o.failure_statuses, vec![503]);
    // The same value spelled plainly gives the same guard key.
    let key = |guard: &str| {
        Config::from_json(route(&format!(r#"{OK_ROUTE}, "guard": {guard}"#)).as_bytes())
            .unwrap()
            .routes[0]
            .guard_key()
            .unwrap()
    };
    assert_eq!(
        key(r#"{"confidence": 9.5e-1}"#),
        key(r#"{"confidence": 0.95}"#)
    );
    // Out of range or not an integer: the value in the message is the text
    // as written.
    let g = |body: &str| route(&format!(r#"{OK_ROUTE}, "guard": {body}"#));
    for (json, want) in [
        (
            g(r#"{"confidence": 1e0}"#),
            "routes[0].guard.confidence: must be a number from 0.5 to below 1, got 1e0",
        ),
        (
            g(r#"{"window_s": 6.5}"#),
            "routes[0].guard.window_s: must be an integer between 5 and 600, got 6.5",
        ),
        (
            g(r#"{"min_requests": 1e30}"#),
            "routes[0].guard.min_requests: must be an integer between 1 and 1000000, got 1e30",
        ),
    ] {
        assert_eq!(errors(&json), vec![want], "{json}");
    }
}

#[test]
fn guard_errors_exact_messages() {
    let g = |body: &str| route(&format!(r#"{OK_ROUTE}, "guard": {body}"#));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (g("[]"), vec!["routes[0].guard: must be an object, got array"]),
        (
            g(r#"{"window": 30}"#),
            vec!["routes[0].guard.window: unknown field; expected one of: window_s, min_requests, max_error_rate_increase, confidence, max_latency_ratio, fleet_size, epoch"],
        ),
        (
            g(r#"{"window_s": 4}"#),
            vec!["routes[0].guard.window_s: must be an integer between 5 and 600, got 4"],
        ),
        (
            g(r#"{"window_s": 601}"#),
            vec!["routes[0].guard.window_s: must be an integer between 5 and 600, got 601"],
        ),
        (
            g(r#"{"min_requests": 0}"#),
            vec!["routes[0].guard.min_requests: must be an integer between 1 and 1000000, got 0"],
        ),
        (
            g(r#"{"max_error_rate_increase": 2}"#),
            vec!["routes[0].guard.max_error_rate_increase: must be a number between 0 and 1, got 2"],
        ),
        (
            g(r#"{"max_error_rate_increase": "2%"}"#),
            vec![r#"routes[0].guard.max_error_rate_increase: must be a number between 0 and 1, got "2%""#],
        ),
        (
            g(r#"{"confidence": 1}"#),
            vec!["routes[0].guard.confidence: must be a number from 0.5 to below 1, got 1"],
        ),
        (
            g(r#"{"confidence": 0.4}"#),
            vec!["routes[0].guard.confidence: must be a number from 0.5 to below 1, got 0.4"],
        ),
        (
            g(r#"{"max_latency_ratio": 1}"#),
            vec!["routes[0].guard.max_latency_ratio: must be a number above 1 and at most 100, got 1"],
        ),
        (
            g(r#"{"fleet_size": 0}"#),
            vec!["routes[0].guard.fleet_size: must be an integer between 1 and 100000, got 0"],
        ),
        (
            g(r#"{"epoch": -1}"#),
            vec!["routes[0].guard.epoch: must be an integer between 0 and 4294967295, got -1"],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "{json}");
    }
}

#[test]
fn shadow_defaults_and_overrides() {
    use traffic_shift::shadow::{BodyCompare, Settings};
    let c = Config::from_json(route(OK_ROUTE).as_bytes()).unwrap();
    assert_eq!(c.routes[0].shadow, None, "no shadow object: no shadow");

    let c =
        Config::from_json(route(&format!(r#"{OK_ROUTE}, "shadow": {{"percent": 5}}"#)).as_bytes())
            .unwrap();
    assert_eq!(
        c.routes[0].shadow,
        Some(Settings {
            basis_points: 500,
            methods: vec!["GET".into(), "HEAD".into()],
            compare_headers: vec![],
            compare_body: BodyCompare::Off,
            ignore_fields: vec![],
            noise_basis_points: 0,
            log_values: false,
            timeout_ms: 1000,
            max_body_bytes: 65536,
            max_in_flight: 64,
        })
    );

    let c = Config::from_json(
        route(&format!(
            r#"{OK_ROUTE}, "shadow": {{"percent": 0.25, "methods": ["GET", "POST"],
               "compare_headers": ["Content-Type", "etag"], "compare_body": true,
               "timeout_ms": 250, "max_body_bytes": 0, "max_in_flight": 1}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].shadow,
        Some(Settings {
            basis_points: 25,
            methods: vec!["GET".into(), "POST".into()],
            compare_headers: vec!["content-type".into(), "etag".into()],
            compare_body: BodyCompare::Bytes,
            ignore_fields: vec![],
            noise_basis_points: 0,
            log_values: false,
            timeout_ms: 250,
            max_body_bytes: 0,
            max_in_flight: 1,
        })
    );

    let c = Config::from_json(
        route(&format!(
            r#"{OK_ROUTE}, "shadow": {{"percent": 5, "compare_body": "json",
               "ignore_fields": ["/meta/at", "/items/*/etag", "/a~1b"],
               "noise_percent": 12.5, "log_values": true}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    let s = c.routes[0].shadow.clone().unwrap();
    assert_eq!(s.compare_body, BodyCompare::Json);
    assert_eq!(
        s.ignore_fields
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
        ["/meta/at", "/items/*/etag", "/a~1b"]
    );
    assert_eq!((s.noise_basis_points, s.log_values), (1250, true));
}

#[test]
fn shadow_errors_exact_messages() {
    let s = |body: &str| route(&format!(r#"{OK_ROUTE}, "shadow": {body}"#));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (s("true"), vec!["routes[0].shadow: must be an object, got boolean"]),
        (s("{}"), vec!["routes[0].shadow.percent: is required"]),
        (
            s(r#"{"percent": 5, "method": ["GET"]}"#),
            vec!["routes[0].shadow.method: unknown field; expected one of: percent, methods, compare_headers, compare_body, ignore_fields, noise_percent, log_values, timeout_ms, max_body_bytes, max_in_flight"],
        ),
        (
            s(r#"{"percent": 101}"#),
            vec!["routes[0].shadow.percent: must be between 0 and 100, got 101"],
        ),
        (
            s(r#"{"percent": 5.001}"#),
            vec!["routes[0].shadow.percent: must have at most two decimals, got 5.001"],
        ),
        (
            s(r#"{"percent": "5"}"#),
            vec!["routes[0].shadow.percent: must be a number, got string"],
        ),
        (
            s(r#"{"percent": 5, "methods": []}"#),
            vec!["routes[0].shadow.methods: must not be empty (leave it out for GET and HEAD)"],
        ),
        (
            s(r#"{"percent": 5, "methods": ["get"]}"#),
            vec![r#"routes[0].shadow.methods[0]: must be an HTTP method in upper case, such as GET, got "get""#],
        ),
        (
            s(r#"{"percent": 5, "compare_headers": "content-type"}"#),
            vec!["routes[0].shadow.compare_headers: must be an array, got string"],
        ),
        (
            s(r#"{"percent": 5, "compare_headers": [":status"]}"#),
            vec![r#"routes[0].shadow.compare_headers[0]: must not be a pseudo-header (the status is always compared), got ":status""#],
        ),
        (
            s(r#"{"percent": 5, "compare_headers": ["etag", "a b", "ETag"]}"#),
            vec![
                r#"routes[0].shadow.compare_headers[1]: must be an HTTP header name, got "a b""#,
                r#"routes[0].shadow.compare_headers[2]: duplicate header "etag" (first listed at routes[0].shadow.compare_headers[0])"#,
            ],
        ),
        (
            s(r#"{"percent": 5, "compare_headers": [7]}"#),
            vec!["routes[0].shadow.compare_headers[0]: must be a string, got number"],
        ),
        (
            s(r#"{"percent": 5, "compare_body": "yes"}"#),
            vec![r#"routes[0].shadow.compare_body: must be true, false or "json", got "yes""#],
        ),
        (
            s(r#"{"percent": 5, "ignore_fields": ["/at"]}"#),
            vec![r#"routes[0].shadow.ignore_fields: applies to JSON bodies only: set compare_body to "json""#],
        ),
        (
            s(r#"{"percent": 5, "compare_body": "json", "ignore_fields": "/at"}"#),
            vec!["routes[0].shadow.ignore_fields: must be an array, got string"],
        ),
        (
            s(r#"{"percent": 5, "compare_body": "json", "ignore_fields": ["at", "", "/a~2", 5, "/x", "/x"]}"#),
            vec![
                r#"routes[0].shadow.ignore_fields[0]: must be a JSON Pointer starting with "/", got "at""#,
                "routes[0].shadow.ignore_fields[1]: must not be empty (the whole document cannot be ignored)",
                r#"routes[0].shadow.ignore_fields[2]: "~" must be followed by 0 or 1 (RFC 6901), got "/a~2""#,
                "routes[0].shadow.ignore_fields[3]: must be a string, got number",
                r#"routes[0].shadow.ignore_fields[5]: duplicate pointer "/x" (first listed at routes[0].shadow.ignore_fields[4])"#,
            ],
        ),
        (
            s(&format!(
                r#"{{"percent": 5, "compare_body": "json", "ignore_fields": [{}]}}"#,
                (0..65).map(|i| format!("\"/f{i}\"")).collect::<Vec<_>>().join(",")
            )),
            vec!["routes[0].shadow.ignore_fields: must have at most 64 entries, got 65"],
        ),
        (
            s(r#"{"percent": 5, "noise_percent": 120}"#),
            vec!["routes[0].shadow.noise_percent: must be between 0 and 100, got 120"],
        ),
        (
            s(r#"{"percent": 5, "log_values": 1}"#),
            vec!["routes[0].shadow.log_values: must be true or false, got 1"],
        ),
        (
            s(r#"{"percent": 5, "timeout_ms": 0}"#),
            vec!["routes[0].shadow.timeout_ms: must be an integer between 1 and 60000, got 0"],
        ),
        (
            s(r#"{"percent": 5, "max_body_bytes": 16777217}"#),
            vec!["routes[0].shadow.max_body_bytes: must be an integer between 0 and 16777216, got 16777217"],
        ),
        (
            s(r#"{"percent": 5, "max_in_flight": 0}"#),
            vec!["routes[0].shadow.max_in_flight: must be an integer between 1 and 10000, got 0"],
        ),
        (
            r#"{"monolith": "m", "target_header": "x-shift-shadow"}"#.to_string(),
            vec![r#"target_header: must not be "x-shift-shadow" (it marks the filter's shadow requests)"#],
        ),
    ];
    for (json, want) in cases {
        assert_eq!(errors(&json), want, "{json}");
    }
}

#[test]
fn grpc_failure_codes_default_and_errors_exact_messages() {
    use traffic_shift::grpc::{Codes, Settings, DEFAULT_FAILURES};
    let c = Config::from_json(route(OK_ROUTE).as_bytes()).unwrap();
    assert_eq!(
        c.routes[0].grpc, None,
        "no grpc object: default codes, no stats by code"
    );
    let c = Config::from_json(route(&format!(r#"{OK_ROUTE}, "grpc": {{}}"#)).as_bytes()).unwrap();
    assert_eq!(
        c.routes[0].grpc,
        Some(Settings {
            failures: DEFAULT_FAILURES
        })
    );
    let c = Config::from_json(
        route(&format!(
            r#"{OK_ROUTE}, "grpc": {{"failure_codes": ["UNAVAILABLE", "NOT_FOUND"]}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].grpc.unwrap().failures,
        Codes::EMPTY.with(14).with(5)
    );
    let c = Config::from_json(
        route(&format!(r#"{OK_ROUTE}, "grpc": {{"failure_codes": []}}"#)).as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.routes[0].grpc.unwrap().failures,
        Codes::EMPTY,
        "stats only"
    );
    assert_eq!(
        errors(&route(&format!(
            r#"{OK_ROUTE}, "grpc": {{"failure_codes": ["unavailable", 14, "OK"], "codes": 1}}"#
        ))),
        [
            "routes[0].grpc.codes: unknown field; expected one of: failure_codes",
            "routes[0].grpc.failure_codes[0]: must be a gRPC status name other than OK (CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED), got \"unavailable\"",
            "routes[0].grpc.failure_codes[1]: must be a gRPC status name other than OK (CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED), got number",
            "routes[0].grpc.failure_codes[2]: must be a gRPC status name other than OK (CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED), got \"OK\"",
        ]
    );
    assert_eq!(
        errors(&route(&format!(
            r#"{OK_ROUTE}, "grpc": {{"failure_codes": "UNAVAILABLE"}}"#
        ))),
        ["routes[0].grpc.failure_codes: must be an array, got string"]
    );
}

/// A ratio below one latency bucket was valid in the previous release: it
/// is still accepted (a static bootstrap written for it must start), kept as
/// written (the guard's state key hashes it) and judged as 1.19.
#[test]
fn a_latency_ratio_below_one_bucket_is_accepted_and_judged_as_one_bucket() {
    let c = Config::from_json(
        br#"{"monolith": "m", "routes": [{"name": "a", "prefix": "/", "service": "s",
             "percent": 10, "guard": {"max_latency_ratio": 1.1}}]}"#,
    )
    .expect("accepted");
    let g = c.routes[0].guard.as_ref().expect("a guard");
    assert_eq!(g.max_latency_ratio, Some(1.1));
    assert_eq!(
        g.latency_ratio(),
        Some(traffic_shift::guard::MIN_LATENCY_RATIO)
    );
    assert_eq!(traffic_shift::guard::MIN_LATENCY_RATIO, 1.19);
}
