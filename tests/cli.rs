//! The config check CLI, run as a binary.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};

fn check(json: &str, extra: &[&str]) -> (i32, String, String) {
    let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    check_os(json, &extra)
}

/// `traffic-shift check - EXTRA...` with arguments as raw bytes.
fn check_os(json: &str, extra: &[&OsStr]) -> (i32, String, String) {
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
    split(child.wait_with_output().unwrap())
}

/// The CLI run with `args` (no stdin).
fn cli(args: &[&OsStr]) -> (i32, String, String) {
    split(
        Command::new(env!("CARGO_BIN_EXE_traffic-shift"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

/// Exit code (`None`, i.e. killed by a signal such as a panic's abort,
/// fails here), stdout, stderr.
fn split(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A user error: exit 2 and exactly one line on stderr, never a panic.
fn assert_one_line_error(code: i32, err: &str, names: &str) {
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.ends_with('\n') && err.contains(names), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

const CONFIG: &str = r#"{"monolith": "monolith", "override": {"header": "x-shift-force"},
  "routes": [
    {"name": "orders", "prefix": "/api/orders/", "methods": ["GET", "POST"], "service": "orders_service",
     "percent": 3.63, "salt": "orders-v1", "hash_key": {"cookie": "uid"},
     "ramp": [{"at": "2026-12-01T09:00:00Z", "percent": 10}, {"at": "2026-12-04T09:00:00Z", "percent": 50}],
     "outlier": {"failure_rate": {}, "on_open": "reject"},
     "guard": {"max_latency_ratio": 2.5, "epoch": 2}},
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
  guard: window 30 s, at least 50 requests a side; errors: service 5xx rate above the monolith's + 2 points at 95% confidence; latency: service p95 above 2.5x the monolith's; epoch 2
route login: path /login, any method -> service auth_service
  percent now: 0% (0 bp); key: header x-request-id; salt: ""
  outlier: off
  guard: off
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
        out.ends_with("key \"user-42\" on route orders: bucket 362 (salt \"orders-v1\"), below the threshold 363 (3.63%) -> service (orders_service)\n"),
        "{out}"
    );
    let (_, out, _) = check(
        CONFIG,
        &["--key", "user-42", "--at", "2026-11-01T00:00:00Z"],
    );
    assert!(out.contains("key \"user-42\" on route login: bucket 7419 (salt \"\"), not below the threshold 0 (0%) -> monolith (monolith)\n"), "{out}");
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
    assert_one_line_error(code, &err, "--route: no route named \"nope\"");
    let (code, _, err) = check(CONFIG, &["--at", "tomorrow"]);
    assert_one_line_error(code, &err, "--at: not an RFC 3339 UTC time: tomorrow");
    let (code, out, err) = check(CONFIG, &["--kye", "user-42"]);
    assert_one_line_error(code, &err, "unknown argument \"--kye\"");
    assert_eq!(out, "");
    let (code, _, err) = check(CONFIG, &["--key"]);
    assert_one_line_error(code, &err, "--key needs a value");
    let (code, _, err) = check_os(CONFIG, &[OsStr::new("--route"), OsStr::from_bytes(b"\xff")]);
    assert_one_line_error(code, &err, "--route: not UTF-8: \"\\xff\"");
    let (code, _, err) = cli(&[OsStr::new("chekc"), OsStr::new("x.json")]);
    assert_one_line_error(code, &err, "unknown command \"chekc\"");
    let (code, _, err) = cli(&[]);
    assert_one_line_error(code, &err, "expected `check FILE`");
    let (code, _, err) = cli(&[OsStr::new("check"), OsStr::new("/nonexistent/ts.json")]);
    assert_one_line_error(
        code,
        &err,
        "/nonexistent/ts.json: No such file or directory",
    );
}

#[test]
fn help_prints_the_usage_and_exits_0() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["check", "--help"],
        &["check", "x.json", "--help"],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let (code, out, err) = cli(&args);
        assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
        assert!(
            out.starts_with(
                "traffic-shift check FILE [--key VALUE [--route NAME]] [--at RFC3339-UTC]\n"
            ),
            "{out}"
        );
        assert!(out.contains("Exit status: 0 valid"), "{out}");
    }
    // As the value of --key, --help is a key like any other.
    let (code, out, _) = check(CONFIG, &["--key", "--help", "--route", "login"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("key \"--help\" on route login: bucket "),
        "{out}"
    );
}

/// Salt "s", key bytes ff fe: bucket 6683 (a golden vector), shifted from
/// 66.84 % (threshold 6684) on, not at 66.83 %.
const SALT_S: &str = r#"{"monolith": "monolith", "routes": [
    {"name": "a", "prefix": "/", "service": "svc", "percent": PCT, "salt": "s"}]}"#;

#[test]
fn a_non_utf8_key_is_hashed_as_bytes() {
    let key = OsStr::from_bytes(b"\xff\xfe");
    let (code, out, err) = check_os(&SALT_S.replace("PCT", "66.84"), &[OsStr::new("--key"), key]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.ends_with("key \"\\xff\\xfe\" on route a: bucket 6683 (salt \"s\"), below the threshold 6684 (66.84%) -> service (svc)\n"),
        "{out}"
    );
    let (code, out, _) = check_os(&SALT_S.replace("PCT", "66.83"), &[OsStr::new("--key"), key]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("key \"\\xff\\xfe\" on route a: bucket 6683 (salt \"s\"), not below the threshold 6683 (66.83%) -> monolith (monolith)\n"),
        "{out}"
    );
}

#[test]
fn an_empty_key_goes_to_the_monolith_and_says_why() {
    // At 100 % every hashed key is shifted, but the filter never hashes an empty key.
    let (code, out, _) = check(&SALT_S.replace("PCT", "100"), &["--key", ""]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("\nkey \"\" on route a: empty key -> monolith (monolith)\n"),
        "{out}"
    );
}

#[test]
fn a_non_utf8_file_name_is_read() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let name = [
        b"ts-".as_slice(),
        b"\xff\xfe",
        format!("-{}.json", std::process::id()).as_bytes(),
    ]
    .concat();
    let path = dir.join(OsStr::from_bytes(&name));
    std::fs::write(&path, SALT_S.replace("PCT", "10")).unwrap();
    let (code, out, err) = cli(&[OsStr::new("check"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!((code, err.as_str()), (0, ""));
    let shown = format!(
        "{}/ts-\\xff\\xfe-{}.json: valid; ",
        dir.display(),
        std::process::id()
    );
    assert!(out.starts_with(&shown), "{out}");
}
