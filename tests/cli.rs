//! The config check CLI, run as a binary.

use std::io::Write;
use std::process::{Command, Stdio};

fn check(json: &str, extra: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_traffic-shift"))
        .args(["check", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI may exit on a usage error before it reads stdin: a broken
    // pipe here is expected then, and the exit code tells the rest.
    let _ = child.stdin.take().unwrap().write_all(json.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const CONFIG: &str = r#"{"monolith": "monolith", "override": {"header": "x-shift-force"},
  "routes": [
    {"name": "orders", "prefix": "/api/orders/", "methods": ["GET", "POST"], "service": "orders_service",
     "percent": 3.63, "salt": "orders-v1", "hash_key": {"cookie": "uid"},
     "ramp": [{"at": "2026-12-01T09:00:00Z", "percent": 10}, {"at": "2026-12-04T09:00:00Z", "percent": 50}],
     "outlier": {"failure_rate": {}, "on_open": "reject"}},
    {"name": "login", "path": "/login", "service": "auth_service", "percent": 0}
  ]}"#;

#[test]
fn a_valid_config_prints_the_plan() {
    let (code, out, err) = check(CONFIG, &["--at", "2026-12-02T00:00:00Z"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let want = r#"-: valid; monolith cluster "monolith", target header "x-shift-target", 2 route(s), evaluated at 2026-12-02T00:00:00Z
override: header x-shift-force (no secret)
route orders: prefix /api/orders/, GET,POST -> service orders_service
  percent now: 10% (1000 bp); key: cookie uid; salt: "orders-v1"
  ramp steps ahead: 2026-12-04T09:00:00Z -> 50%
  outlier: consecutive failures 5, failure rate 50% of >= 20 requests in 10000 ms, failure statuses 500,502,503,504, ejection 30000..300000 ms, 1 half-open probe(s), on open: reject with 503
route login: path /login, any method -> service auth_service
  percent now: 0% (0 bp); key: header x-request-id; salt: ""
  outlier: off
"#;
    assert_eq!(out, want);
}

#[test]
fn a_key_shows_its_bucket_and_side() {
    // Golden vector: salt "orders-v1", key "user-42" -> bucket 362.
    let (code, out, _) = check(
        CONFIG,
        &[
            "--key",
            "user-42",
            "--route",
            "orders",
            "--at",
            "2026-11-01T00:00:00Z",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        out.ends_with("key \"user-42\" on route orders: bucket 362 (salt \"orders-v1\"), shifted below 363 -> service (orders_service)\n"),
        "{out}"
    );
    let (_, out, _) = check(
        CONFIG,
        &["--key", "user-42", "--at", "2026-11-01T00:00:00Z"],
    );
    assert!(out.contains("key \"user-42\" on route login: bucket 7419 (salt \"\"), shifted below 0 -> monolith (monolith)\n"), "{out}");
}

#[test]
fn an_invalid_config_exits_1_with_every_error_as_the_filter_logs_it() {
    let (code, out, err) = check(
        r#"{"monolith": "", "routes": [{"name": "a", "prefix": "/", "service": "s", "percent": 140}]}"#,
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "invalid configuration: monolith: must not be empty\ninvalid configuration: routes[0].percent: must be between 0 and 100, got 140\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = check(CONFIG, &["--route", "nope"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("--route: no route named \"nope\""), "{err}");
    let (code, _, _) = check(CONFIG, &["--at", "tomorrow"]);
    assert_eq!(code, 2);
}
