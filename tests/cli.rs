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
  guard: errors: service 5xx rate above the monolith's + 2 points; latency: service p95 above 2.5x the monolith's; false trips at most 5% per 24 h (confidence 95%); estimates over 30 s, at least 50 requests a side; epoch 2
route login: path /login, any method -> service auth_service
  percent now: 0% (0 bp); key: header x-request-id; salt: ""
  outlier: off
  guard: off
"#;
    assert_eq!(out, want);
}

#[test]
fn the_guard_plan_has_no_float_noise() {
    // 0.07 x 100 is 7.000000000000001 in f64, 0.57 x 100 56.99999999999999;
    // exponent forms are the same numbers.
    let json = r#"{"monolith": "m", "routes": [{"name": "a", "prefix": "/a/", "service": "s",
        "percent": 10, "guard": {"max_error_rate_increase": 7e-2, "confidence": 0.57,
        "max_latency_ratio": 1.3, "fleet_size": 4}}]}"#;
    let (code, out, err) = check(json, &[]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("  guard: errors: service 5xx rate above the monolith's + 7 points; latency: service p95 above 1.3x the monolith's; false trips at most 43% per 24 h across a fleet of 4 proxies (confidence 57%); estimates over 30 s, at least 50 requests a side; epoch 0\n"),
        "{out}"
    );
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
                "traffic-shift check FILE [--key VALUE [--route NAME]] [--at RFC3339-UTC] [--envoy BOOTSTRAP.yaml]\ntraffic-shift envoy PLUGIN.json "
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

// ---- `traffic-shift envoy` and `check --envoy` ----

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The CLI run in the repository root with `args` (no stdin).
fn cli_in_repo(args: &[&str]) -> (i32, String, String) {
    split(
        Command::new(env!("CARGO_BIN_EXE_traffic-shift"))
            .args(args)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

/// The command a generated file says printed it: the lines after
/// "printed by", `\`-continued.
fn printed_by(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut lines = text.lines().skip_while(|l| !l.ends_with(", printed by"));
    lines.next();
    for l in lines {
        let l = l.strip_prefix('#').unwrap().trim();
        let more = l.ends_with(" \\");
        words.extend(
            l.trim_end_matches(" \\")
                .split_whitespace()
                .map(str::to_string),
        );
        if !more {
            break;
        }
    }
    assert_eq!(words.first().map(String::as_str), Some("traffic-shift"));
    words.split_off(1)
}

#[test]
fn the_shipped_envoy_configs_are_what_traffic_shift_envoy_prints() {
    let shipped = [
        "envoy/envoy.yaml",
        "envoy/compose-envoy.yaml",
        "envoy/envoy-ecds-file.yaml",
        "envoy/envoy-ecds-grpc.yaml",
        "envoy/envoy-module.yaml",
        "envoy/ecds/traffic_shift.yaml",
    ];
    for f in shipped {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        let args = printed_by(&text);
        assert_eq!(args[..2], ["envoy", "envoy/plugin.json"], "{f}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = cli_in_repo(&args);
        // The shipped native configs keep the documented relative path,
        // and the generator says so on stderr (the compose one is absolute).
        let wasm = args
            .iter()
            .position(|a| *a == "--wasm")
            .map_or(DEFAULT_WASM, |i| args[i + 1]);
        let note = if wasm.starts_with('/') {
            String::new()
        } else {
            relative_note(wasm)
        };
        assert_eq!((code, err.as_str()), (0, note.as_str()), "{f}");
        assert!(
            out == text,
            "{f} is not what `traffic-shift {}` prints: run `make envoy-configs`",
            args.join(" ")
        );
    }
    // The control plane's file (make run-ecds-grpc) is the plugin config.
    assert_eq!(
        std::fs::read(repo().join("envoy/xds/traffic_shift.json")).unwrap(),
        std::fs::read(repo().join("envoy/plugin.json")).unwrap(),
        "envoy/xds/traffic_shift.json is a copy of envoy/plugin.json: run `make envoy-configs`"
    );
}

const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/traffic_shift.wasm";

/// What `traffic-shift envoy` says on stderr when the `.wasm` path it
/// prints is relative.
fn relative_note(wasm: &str) -> String {
    format!(
        "traffic-shift: note: the .wasm path {wasm} is relative: Envoy opens it from the directory it runs in (elsewhere it exits with \"Invalid path: {wasm}\"); pass an absolute --wasm to run the bootstrap from anywhere\n"
    )
}

#[test]
fn envoy_notes_a_relative_wasm_path_on_stderr_only() {
    let clusters = [
        "--cluster",
        "legacy=10.0.0.1:80",
        "--cluster",
        "pay:v2=10.0.0.2:80",
    ];
    let with = |extra: &[&str]| {
        let args: Vec<&str> = ["envoy", "-"].iter().chain(extra).copied().collect();
        check_like(&args, ODD)
    };
    // The default path and any other relative one: the note, and the
    // bootstrap on stdout as before.
    let (code, out, err) = with(&clusters);
    assert_eq!((code, err), (0, relative_note(DEFAULT_WASM)));
    assert!(
        out.contains(&format!("filename: {DEFAULT_WASM}}}")),
        "{out}"
    );
    let rel = [&clusters[..], &["--wasm", "build/ts.wasm"]].concat();
    let (code, _, err) = with(&rel);
    assert_eq!((code, err), (0, relative_note("build/ts.wasm")));
    // An absolute path: nothing on stderr.
    let abs = [&clusters[..], &["--wasm", "/opt/ts/traffic_shift.wasm"]].concat();
    let (code, out, err) = with(&abs);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("filename: /opt/ts/traffic_shift.wasm}"),
        "{out}"
    );
    // The ECDS resource prints the path too; the route configuration does not.
    let (code, _, err) = with(&["--ecds-resource", "3"]);
    assert_eq!((code, err), (0, relative_note(DEFAULT_WASM)));
    let (code, _, err) = with(&["--routes-only"]);
    assert_eq!((code, err.as_str()), (0, ""));
}

/// One service on an exact path, a cluster name YAML must quote, a
/// configuration text a literal block cannot carry (it starts with a space).
const ODD: &str = r#" {"monolith": "legacy", "target_header": "x-side", "routes": [
  {"name": "a", "path": "/pay", "service": "pay:v2", "percent": 5},
  {"name": "b", "prefix": "/b/", "service": "legacy", "percent": 5}]}"#;

#[test]
fn routes_only_prints_a_route_per_service_then_the_catch_all() {
    let (code, out, err) = check_like(&["envoy", "-", "--routes-only"], ODD);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        r#"# The route configuration of the traffic_shift filter, printed by
#   traffic-shift envoy - \
#     --routes-only
# Put it under the HTTP connection manager's route_config (or serve it
# by RDS). The bootstrap must also strip x-side before routing
# (early_header_mutation_extensions) and define every cluster named here;
# `traffic-shift check PLUGIN.json --envoy BOOTSTRAP.yaml` checks that.
name: shift
virtual_hosts:
- name: app
  domains: ["*"]
  routes:
  - match:
      prefix: "/"
      headers:
      - name: x-side
        string_match: {exact: "pay:v2"}
    route: {cluster: "pay:v2"}
  - match: {prefix: "/"}
    route: {cluster: legacy}
"#
    );
}

/// The CLI with `args`, `stdin` on standard input.
fn check_like(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_traffic-shift"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    split(child.wait_with_output().unwrap())
}

#[test]
fn envoy_embeds_the_config_text_and_names_every_cluster() {
    let (code, out, err) = check_like(
        &[
            "envoy",
            "-",
            "--cluster",
            "legacy=10.0.0.1:80",
            "--cluster",
            "pay:v2=pay.internal:8443",
            "--listen",
            "[::1]:8080",
        ],
        ODD,
    );
    assert_eq!((code, err), (0, relative_note(DEFAULT_WASM)));
    let value = serde_json::Value::from(ODD).to_string();
    for piece in [
        "      socket_address: {address: \"::1\", port_value: 8080}\n",
        &format!("                  value: {value}\n"),
        "              - remove: x-side\n",
        "  - name: legacy\n    type: STATIC\n",
        "  - name: \"pay:v2\"\n    type: STRICT_DNS\n",
        "        - endpoint: {address: {socket_address: {address: pay.internal, port_value: 8443}}}\n",
        "%REQ(X-SIDE)%",
    ] {
        assert!(out.contains(piece), "{piece:?} not in\n{out}");
    }
}

#[test]
fn envoy_usage_errors_are_one_line_naming_the_flag() {
    let plugin = "envoy/plugin.json";
    let monolith = "monolith=127.0.0.1:1";
    let cases: [(&[&str], &str); 9] = [
        (
            &["envoy", plugin, "--cluster", monolith],
            "traffic-shift: missing --cluster NAME=HOST:PORT for auth_service (routes[0].service), orders_service (routes[1].service) of envoy/plugin.json",
        ),
        (
            &["envoy", plugin, "--cluster", "billing=127.0.0.1:1"],
            "traffic-shift: --cluster billing: envoy/plugin.json names no cluster \"billing\" (it names monolith, auth_service, orders_service)",
        ),
        (
            &["envoy", plugin, "--cluster", "monolith=127.0.0.1"],
            "traffic-shift: --cluster monolith: not HOST:PORT: \"127.0.0.1\"",
        ),
        (
            &["envoy", plugin, "--cluster", "monolith"],
            "traffic-shift: --cluster: expected NAME=HOST:PORT, got \"monolith\"",
        ),
        (
            &["envoy", plugin, "--cluster", monolith, "--cluster", monolith],
            "traffic-shift: --cluster monolith given twice",
        ),
        (
            &["envoy", plugin, "--listen", "localhost:http"],
            "traffic-shift: --listen: not a port (0-65535): \"http\" in \"localhost:http\"",
        ),
        (
            &["envoy", plugin, "--routes-only", "--cluster", monolith],
            "traffic-shift: --routes-only prints no clusters: drop --cluster",
        ),
        (
            &["envoy", plugin, "--ecds-file", "a.yaml", "--ads", "127.0.0.1:1"],
            "traffic-shift: --ecds-file and --ads: choose one",
        ),
        (
            &["envoy", plugin, "--lisen", "127.0.0.1:1"],
            "traffic-shift: unknown argument \"--lisen\"",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = cli_in_repo(args);
        assert_one_line_error(code, &err, want);
        assert!(
            err.starts_with(&format!(
                "{want} (usage: traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT... "
            )),
            "{err}"
        );
        assert_eq!(out, "", "{args:?}");
    }
    let (code, _, err) = cli_in_repo(&["envoy", "/nonexistent/ts.json", "--routes-only"]);
    assert_one_line_error(
        code,
        &err,
        "traffic-shift: /nonexistent/ts.json: No such file or directory",
    );
    let (code, out, err) = check_like(&["envoy", "-", "--routes-only"], r#"{"monolith": ""}"#);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "invalid configuration: monolith: must not be empty\n");
    let (code, out, err) = cli_in_repo(&["envoy", "--help"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.starts_with("traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT... [options]\n"),
        "{out}"
    );
}

/// `check envoy/plugin.json --envoy` on a copy of `envoy/envoy.yaml`
/// edited by `edit`: exit code, stderr.
fn lint_copy(edit: impl Fn(String) -> String) -> (i32, String, String) {
    let text = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("lint-{}-{:x}.yaml", std::process::id(), {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        edited.hash(&mut h);
        h.finish()
    }));
    std::fs::write(&path, edited).unwrap();
    let (code, out, err) = cli_in_repo(&[
        "check",
        "envoy/plugin.json",
        "--envoy",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&path);
    let shown = path.to_str().unwrap();
    (code, out.replace(shown, "COPY"), err.replace(shown, "COPY"))
}

fn replaced(from: &str, to: &str) -> impl Fn(String) -> String {
    let (from, to) = (from.to_string(), to.to_string());
    move |t: String| t.replacen(&from, &to, 1)
}

const ROUTES: &str = "              routes:\n";
const STRIP: &str = "          early_header_mutation_extensions:
          - name: strip-client-target
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: x-shift-target
";

#[test]
fn check_envoy_passes_the_shipped_configs() {
    for (f, warnings) in [
        ("envoy/envoy.yaml", 0),
        ("envoy/compose-envoy.yaml", 0),
        ("envoy/envoy-ecds-file.yaml", 1),
        ("envoy/envoy-ecds-grpc.yaml", 1),
        ("envoy/envoy-module.yaml", 0),
    ] {
        let (code, out, err) = cli_in_repo(&["check", "envoy/plugin.json", "--envoy", f]);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(
            out.ends_with(&format!(
                "\n{f}: 0 error(s), {warnings} warning(s) against this configuration\n"
            )),
            "{out}"
        );
        if warnings == 1 {
            assert_eq!(err, format!("{f}: warning: listener ingress: the traffic_shift filter comes from ECDS (config_discovery): its failure_policy is in the ECDS resource, not checked\n"));
        }
    }
}

#[test]
fn check_envoy_finds_a_route_catching_service_traffic_first() {
    let (code, out, err) = lint_copy(replaced(
        ROUTES,
        &format!("{ROUTES}              - match: {{prefix: \"/api/\"}}\n                route: {{cluster: monolith}}\n"),
    ));
    assert_eq!(code, 1);
    assert_eq!(err, "COPY: error: listener ingress: virtual host app: routes[0] (prefix /api/ to cluster monolith) matches requests of route auth (prefix /api/auth/) before any route on x-shift-target: auth_service, so they never reach auth_service
COPY: error: listener ingress: virtual host app: routes[0] (prefix /api/ to cluster monolith) matches requests of route orders (prefix /api/orders/) before any route on x-shift-target: orders_service, so they never reach orders_service
");
    assert!(
        out.ends_with("\nCOPY: 2 error(s), 0 warning(s) against this configuration\n"),
        "{out}"
    );
    // A route elsewhere, or on another value of the header, is no catch.
    let (code, _, err) = lint_copy(replaced(
        ROUTES,
        &format!("{ROUTES}              - match: {{prefix: \"/static/\"}}\n                route: {{cluster: monolith}}\n              - match: {{prefix: \"/\", headers: [{{name: x-shift-target, string_match: {{exact: other}}}}]}}\n                route: {{cluster: monolith}}\n"),
    ));
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn check_envoy_finds_a_missing_service_route_and_cluster() {
    let orders_route = "              - match:
                  prefix: \"/\"
                  headers:
                  - name: x-shift-target
                    string_match: {exact: orders_service}
                route: {cluster: orders_service}
";
    let orders_cluster = "  - name: orders_service
    type: STATIC
    load_assignment:
      cluster_name: orders_service
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18082}}}
";
    let (code, _, err) = lint_copy(|t| {
        t.replacen(orders_route, "", 1)
            .replacen(orders_cluster, "", 1)
    });
    assert_eq!(code, 1);
    assert_eq!(err, "COPY: error: listener ingress: virtual host app: routes[1] (prefix / to cluster monolith) matches requests of route orders (prefix /api/orders/) before any route on x-shift-target: orders_service, so they never reach orders_service
COPY: error: cluster orders_service (routes[1].service) is not defined in static_resources.clusters
");
    // Without the catch-all either, nothing routes the service's traffic.
    let (code, _, err) = lint_copy(|t| {
        t.replacen(orders_route, "", 1).replacen(
            "              - match: {prefix: \"/\"}\n                route: {cluster: monolith}\n",
            "",
            1,
        )
    });
    assert_eq!(code, 1);
    assert_eq!(err, "COPY: error: listener ingress: virtual host app: no route sends x-shift-target: orders_service to cluster orders_service (routes[1].service), so route orders (prefix /api/orders/) never reaches it\n");
}

#[test]
fn check_envoy_warns_about_the_header_and_the_failure_policy() {
    let (code, out, err) = lint_copy(|t| {
        t.replacen(STRIP, "", 1).replacen(
            "failure_policy: FAIL_OPEN",
            "failure_policy: FAIL_CLOSED",
            1,
        )
    });
    assert_eq!(code, 0, "warnings only");
    assert_eq!(err, "COPY: warning: listener ingress: nothing removes x-shift-target before routing (early_header_mutation_extensions with a HeaderMutation `remove: x-shift-target`): the filter replaces a client's copy whenever it runs, but when it is skipped (a failed VM with FAIL_OPEN) a client sending x-shift-target: <service> picks the backend itself
COPY: warning: listener ingress: the traffic_shift filter's failure_policy is FAIL_CLOSED (the default): once its VM fails, every later request on this listener gets 503; with FAIL_OPEN Envoy skips the filter and the catch-all route sends traffic to the monolith
");
    assert!(
        out.ends_with("\nCOPY: 0 error(s), 2 warning(s) against this configuration\n"),
        "{out}"
    );
    let (_, _, err) = lint_copy(replaced(
        "failure_policy: FAIL_OPEN",
        "failure_policy: FAIL_RELOAD",
    ));
    assert_eq!(err, "COPY: warning: listener ingress: the traffic_shift filter's failure_policy is FAIL_RELOAD: after a VM failure, requests get 503 until Envoy has reloaded the VM (a backoff from 1 s); with FAIL_OPEN Envoy skips the filter and the catch-all route sends traffic to the monolith\n");
}

const UPGRADES: &str = "          upgrade_configs:\n          - upgrade_type: websocket\n";

/// Issue 23: a bootstrap that refuses WebSocket upgrades gets a warning;
/// a route that enables them itself is enough.
#[test]
fn check_envoy_warns_when_websocket_upgrades_are_refused() {
    let warning = "COPY: warning: listener ingress: the HTTP connection manager refuses WebSocket upgrades (Envoy answers them 403): add upgrade_configs: [{upgrade_type: websocket}] to let them through; the filter splits them like any request\n";
    let (code, out, err) = lint_copy(replaced(UPGRADES, ""));
    assert_eq!((code, err.as_str()), (0, warning));
    assert!(
        out.ends_with("\nCOPY: 0 error(s), 1 warning(s) against this configuration\n"),
        "{out}"
    );
    let (_, _, err) = lint_copy(replaced(
        "- upgrade_type: websocket\n",
        "- {upgrade_type: WebSocket, enabled: false}\n",
    ));
    assert_eq!(err, warning);
    let (_, _, err) = lint_copy(|t| {
        t.replacen(UPGRADES, "", 1).replacen(
            "route: {cluster: monolith}",
            "route: {cluster: monolith, upgrade_configs: [{upgrade_type: websocket}]}",
            1,
        )
    });
    assert_eq!(err, "");
}

#[test]
fn check_envoy_warns_about_an_earlier_releases_stats_tag() {
    // A bootstrap generated before the `noise` result existed keeps
    // working: its other results are labelled; a warning says what is not.
    let (code, _, err) =
        lint_copy(|t| t.replacen("  - tag_name: field\n", "  - tag_name: field_x\n", 1));
    assert_eq!(code, 0);
    assert_eq!(err, "COPY: warning: stats_config.stats_tags has no tag field (regex '^(?:wasmcustom|dynamicmodulescustom)\\.traffic_shift\\.route\\.[A-Za-z0-9_-]+\\.shadow_field(\\.field\\.([A-Za-z0-9_-]+))\\.kind\\.(diff|noise)$'), added by a later release: traffic-shift's shadow field counters keep it in their name
");
    let (code, _, err) = lint_copy(|t| t.replacen("(match|noise|status", "(match|status", 1));
    assert_eq!(code, 0);
    assert_eq!(err, "COPY: warning: stats_config.stats_tags: tag result has an earlier release's regex: result \"noise\" is not labelled; traffic-shift's stats need '^(?:wasmcustom|dynamicmodulescustom)\\.traffic_shift\\..+(\\.result\\.(match|noise|status|header|body|timeout|error|skipped))$'
");
}

#[test]
fn check_envoy_finds_missing_stats_tags_and_a_missing_filter() {
    let (code, _, err) = lint_copy(|t| {
        t.replacen("  - tag_name: route\n", "  - tag_name: route_name\n", 1)
            .replacen("(errors|latency)", "(errors)", 1)
    });
    assert_eq!(code, 1);
    assert_eq!(err, "COPY: error: stats_config.stats_tags has no tag route (regex '^(?:wasmcustom|dynamicmodulescustom)\\.traffic_shift(\\.route\\.([A-Za-z0-9_-]+))\\.'): traffic-shift's stats lose that label
COPY: error: stats_config.stats_tags: tag reason has regex '^(?:wasmcustom|dynamicmodulescustom)\\.traffic_shift\\..+(\\.reason\\.(errors))$', traffic-shift's stats need '^(?:wasmcustom|dynamicmodulescustom)\\.traffic_shift\\..+(\\.reason\\.(errors|latency))$'
");
    let (code, _, err) = lint_copy(|t| {
        t.replacen(
            "          - name: traffic_shift\n",
            "          - name: shift\n",
            1,
        )
        .replacen("root_id: traffic_shift", "root_id: shift", 1)
    });
    assert_eq!(code, 1);
    assert_eq!(err, "COPY: error: no HTTP connection manager has the traffic_shift filter (a wasm HTTP filter with root_id traffic_shift, or an http_filters entry named traffic_shift)\n");
}

#[test]
fn check_envoy_usage_errors_are_one_line() {
    let (code, out, err) = cli_in_repo(&[
        "check",
        "envoy/plugin.json",
        "--envoy",
        "/nonexistent/envoy.yaml",
    ]);
    assert_one_line_error(
        code,
        &err,
        "traffic-shift: /nonexistent/envoy.yaml: No such file or directory",
    );
    assert_eq!(out, "");
    let (code, _, err) = lint_copy(|t| t + "  - [\n");
    assert_one_line_error(code, &err, "traffic-shift: COPY: not YAML: ");
}

/// Issue 20, item 6: a configuration naming a cluster `xds` (with `--ads`)
/// or `otel_collector` (with `--otlp`) got a bootstrap with two clusters of
/// that name, which Envoy refuses.
#[test]
fn envoy_refuses_a_cluster_named_like_one_it_adds() {
    let config = |service: &str| {
        format!(
            r#"{{"monolith": "monolith", "routes": [{{"name": "a", "prefix": "/a/", "service": "{service}", "percent": 10}}]}}"#
        )
    };
    for (service, flag, what) in [
        ("xds", "--ads", "the control plane"),
        ("otel_collector", "--otlp", "the trace collector"),
    ] {
        let cluster = format!("{service}=127.0.0.1:2");
        let args = [
            "envoy",
            "-",
            "--cluster",
            "monolith=127.0.0.1:1",
            "--cluster",
            &cluster,
            flag,
            "127.0.0.1:3",
        ];
        let (code, out, err) = check_like(&args, &config(service));
        assert_one_line_error(
            code,
            &err,
            &format!("traffic-shift: cluster {service} (routes[0].service): {flag} adds a cluster of that name ({what}); rename it in the configuration"),
        );
        assert_eq!(out, "");
        // Without the flag the name is free (stderr: only the note on the
        // default, relative, .wasm path).
        let (code, _, err) = check_like(&args[..6], &config(service));
        assert_eq!((code, err), (0, relative_note(DEFAULT_WASM)));
    }
}

/// Issue 20, item 6: `check --envoy` reports a cluster defined twice.
#[test]
fn check_envoy_finds_a_cluster_defined_twice() {
    let (code, out, err) = lint_copy(|t| {
        t.replacen(
            "  - name: orders_service\n",
            "  - name: auth_service\n    type: STATIC\n  - name: orders_service\n",
            1,
        )
    });
    assert_eq!(code, 1, "{out}");
    assert_eq!(err, "COPY: error: static_resources.clusters: cluster auth_service is defined 2 times (Envoy refuses the bootstrap)\n");
}

const AUTH_ROUTE: &str = "              - match:
                  prefix: \"/\"
                  headers:
                  - name: x-shift-target
                    string_match: {exact: auth_service}
                route: {cluster: auth_service}
";

/// Issue 20, item 7: `case_sensitive: false` was ignored.
#[test]
fn check_envoy_reads_case_insensitive_paths() {
    let (code, out, err) = lint_copy(replaced(
        ROUTES,
        &format!("{ROUTES}              - match: {{prefix: \"/API/AUTH/\", case_sensitive: false}}\n                route: {{cluster: monolith}}\n"),
    ));
    assert_eq!(code, 1, "{out}");
    assert_eq!(err, "COPY: error: listener ingress: virtual host app: routes[0] (prefix /API/AUTH/ case-insensitive to cluster monolith) matches requests of route auth (prefix /api/auth/) before any route on x-shift-target: auth_service, so they never reach auth_service\n");
}

/// Issue 20, item 7: other match fields on the service route were ignored:
/// with `grpc: {}` only gRPC requests take it, the rest fall to the
/// catch-all.
#[test]
fn check_envoy_finds_a_service_route_that_matches_only_some_requests() {
    for (extra, why) in [
        ("grpc: {}", "gRPC requests only"),
        (
            "query_parameters: [{name: v, present_match: true}]",
            "query parameter v",
        ),
        (
            "runtime_fraction: {default_value: {numerator: 50}, runtime_key: k}",
            "a runtime fraction",
        ),
        (
            "headers: [{name: x-shift-target, string_match: {exact: auth_service}}, {name: \":method\", string_match: {exact: GET}}]",
            "header :method",
        ),
    ] {
        let service_route = AUTH_ROUTE.replacen(
            "                  prefix: \"/\"\n                  headers:\n                  - name: x-shift-target\n                    string_match: {exact: auth_service}\n",
            &format!("                  prefix: \"/\"\n                  {}\n", if extra.starts_with("headers") {
                extra.to_string()
            } else {
                format!("headers: [{{name: x-shift-target, string_match: {{exact: auth_service}}}}]\n                  {extra}")
            }),
            1,
        );
        let (code, out, err) = lint_copy(replaced(AUTH_ROUTE, &service_route));
        assert_eq!(code, 1, "{extra}: {out}");
        assert_eq!(err, format!("COPY: error: listener ingress: virtual host app: routes[2] (prefix / to cluster monolith) matches requests of route auth (prefix /api/auth/) that routes[0] to auth_service leaves out ({why}), so they never reach auth_service\n"), "{extra}");
    }
}

/// Issue 20, item 8: valid route shapes were reported as errors.
#[test]
fn check_envoy_accepts_cluster_header_and_earlier_routes_to_the_service() {
    // One route for every service: the cluster named by the header.
    let orders_route = AUTH_ROUTE.replace("auth_service", "orders_service");
    let (code, out, err) = lint_copy(|t| {
        t.replacen(&orders_route, "", 1).replacen(
            AUTH_ROUTE,
            "              - match:\n                  prefix: \"/\"\n                  headers: [{name: x-shift-target, present_match: true}]\n                route: {cluster_header: x-shift-target}\n",
            1,
        )
    });
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // An earlier, more specific route to the same service cluster.
    let (code, out, err) = lint_copy(replaced(
        ROUTES,
        &format!("{ROUTES}              - match: {{prefix: \"/api/auth/v2/\", headers: [{{name: x-shift-target, string_match: {{exact: auth_service}}}}]}}\n                route: {{cluster: auth_service, timeout: 5s}}\n"),
    ));
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // A shape it cannot judge: a warning, never an error.
    let (code, out, err) = lint_copy(replaced(
        ROUTES,
        &format!("{ROUTES}              - match: {{prefix: \"/api/\"}}\n                route: {{cluster_specifier_plugin: picker}}\n"),
    ));
    assert_eq!(code, 0, "{out}");
    assert_eq!(err, "COPY: warning: listener ingress: virtual host app: routes[0] (prefix /api/) sends requests of route auth (prefix /api/auth/) to cluster_specifier_plugin picker, cannot check whether they reach auth_service
COPY: warning: listener ingress: virtual host app: routes[0] (prefix /api/) sends requests of route orders (prefix /api/orders/) to cluster_specifier_plugin picker, cannot check whether they reach orders_service
");
}

#[test]
fn envoy_h2_makes_a_cluster_speak_http2_and_names_unknown_clusters() {
    let all = [
        "envoy",
        "envoy/plugin.json",
        "--cluster",
        "monolith=127.0.0.1:1",
        "--cluster",
        "auth_service=127.0.0.1:2",
        "--cluster",
        "orders_service=127.0.0.1:3",
    ];
    let args: Vec<&str> = all
        .iter()
        .chain(&["--h2", "orders_service"])
        .copied()
        .collect();
    let (code, out, _) = cli_in_repo(&args);
    assert_eq!(code, 0);
    let orders = out
        .split("  - name: orders_service\n")
        .nth(1)
        .expect("the orders_service cluster");
    let orders = orders.split("  - name: ").next().unwrap();
    assert!(
        orders.contains("explicit_http_config:\n          http2_protocol_options: {}"),
        "{orders}"
    );
    let monolith = out.split("  - name: monolith\n").nth(1).unwrap();
    let monolith = monolith.split("  - name: ").next().unwrap();
    assert!(!monolith.contains("http2_protocol_options"), "{monolith}");
    let args: Vec<&str> = all.iter().chain(&["--h2", "billing"]).copied().collect();
    let (code, _, err) = cli_in_repo(&args);
    assert_one_line_error(
        code,
        &err,
        "traffic-shift: --h2 billing: no --cluster billing=HOST:PORT",
    );
    let args: Vec<&str> = all
        .iter()
        .chain(&["--h2", "monolith", "--h2", "monolith"])
        .copied()
        .collect();
    let (code, _, err) = cli_in_repo(&args);
    assert_one_line_error(code, &err, "traffic-shift: --h2 monolith given twice");
}

#[test]
fn check_envoy_warns_when_the_grpc_status_tag_is_missing() {
    // A bootstrap generated before the tag existed.
    let (code, out, err) = lint_copy(|t| {
        let start = t.find("  - tag_name: grpc_status\n").unwrap();
        let end = start + t[start..].find("\n    regex: ").unwrap();
        let end = end + 1 + t[end + 1..].find('\n').unwrap() + 1;
        format!("{}{}", &t[..start], &t[end..])
    });
    assert_eq!(code, 0, "a warning only");
    assert_eq!(err, "COPY: warning: stats_config.stats_tags has no tag grpc_status (regex '^(?:wasmcustom|dynamicmodulescustom)\\.traffic_shift\\..+\\.grpc_rq(\\.code\\.([A-Z_]+|other))$'): the counts by gRPC status of routes with grpc keep the code in the stat name (regenerate the bootstrap with traffic-shift envoy)\n");
    assert!(out.contains("0 error(s), 1 warning(s)"), "{out}");
}

/// `traffic-shift guard-sim FILE ARGS...` on a temporary plugin file.
fn guard_sim(json: &str, args: &[&str]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("guard-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plugin.json");
    std::fs::write(&file, json).unwrap();
    let mut all: Vec<&OsStr> = vec![OsStr::new("guard-sim"), file.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    let out = cli(&all);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

const GUARDED: &str = r#"{"monolith": "m", "routes": [
    {"name": "auth", "prefix": "/a/", "service": "s", "percent": 10, "guard": {}},
    {"name": "open", "prefix": "/o/", "service": "o", "percent": 10}]}"#;

#[test]
fn guard_sim_runs_the_route_s_guard_and_refuses_what_it_cannot_run() {
    // A service failing half its requests against a 1 % monolith, 100 rq/s
    // at 10 %: every trial trips within minutes.
    let (code, out, err) = guard_sim(
        GUARDED,
        &[
            "--route",
            "auth",
            "--service-error",
            "50",
            "--hours",
            "0.1",
            "--trials",
            "5",
        ],
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.contains("thresholds: errors 14.36 nats\n"), "{out}");
    assert!(out.contains("5 of 5 trials tripped within 0.1 h"), "{out}");
    // Equal sides: the evidence is reported, no trip in 0.1 h.
    let (code, out, _) = guard_sim(
        GUARDED,
        &["--route", "auth", "--hours", "0.1", "--trials", "2"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("0 of 2 trials tripped"), "{out}");

    let (code, _, err) = guard_sim(GUARDED, &["--route", "open"]);
    assert_one_line_error(code, &err, "route \"open\" has no guard");
    let (code, _, err) = guard_sim(GUARDED, &["--route", "nope"]);
    assert_one_line_error(code, &err, "no route named \"nope\"");
    let (code, _, err) = guard_sim(GUARDED, &["--route", "auth", "--latency", "normal:1,2"]);
    assert_one_line_error(
        code,
        &err,
        "--latency: expected lognormal:MU,SIGMA or pareto:XM,ALPHA",
    );
    let (code, _, err) = guard_sim(GUARDED, &[]);
    assert_one_line_error(code, &err, "--route NAME is required");
}

#[test]
fn check_envoy_accepts_the_previous_releases_wasm_only_stats_tags() {
    // Bootstraps printed before the dynamic module matched `wasmcustom.`
    // only; they still label every stat of the wasm build.
    let (code, out, err) =
        lint_copy(|t| t.replace("(?:wasmcustom|dynamicmodulescustom)", "wasmcustom"));
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.ends_with("\nCOPY: 0 error(s), 0 warning(s) against this configuration\n"),
        "{out}"
    );
}
