//! `make run`: the demo. Starts a monolith and two services on fixed loopback
//! ports and Envoy with a shipped config exactly as it is, prints what to
//! curl, and stops everything on Ctrl-C.
//!
//! `demo [--source static|file|grpc] [--free-ports]`:
//! - static (`make run`): `envoy/envoy.yaml`, config in the bootstrap;
//! - file (`make run-ecds-file`): `envoy/envoy-ecds-file.yaml`, config from
//!   the watched `envoy/ecds/traffic_shift.yaml`;
//! - grpc (`make run-ecds-grpc`): `envoy/envoy-ecds-grpc.yaml`, config pushed
//!   by the control plane from `envoy/xds/traffic_shift.json`, on every edit.
//!
//! The banner shows the split of the configuration file as it was at start
//! (a live change is not reflected in it). A user error (unknown argument,
//! unreadable or invalid config file, port in use, missing binary) is one
//! line on stderr and exit 1 (2 for a usage error), before anything starts.
//!
//! Logs: Envoy's log goes to `target/demo/envoy.log` and its stdout (the
//! access log) to `target/demo/access.log` (with `--free-ports`, under
//! `target/demo/<demo pid>/`), both kept after it stops; the banner says
//! so, and the filter's own log lines at warning or above (a refused
//! configuration, breaker transitions, guard trips, shadow mismatches) are
//! also printed on the terminal as they come.
//!
//! Lifecycle: SIGINT (Ctrl-C), SIGTERM and SIGHUP stop Envoy and the
//! upstreams (killed and reaped), then the demo exits 0. Should the demo
//! itself be killed (SIGKILL, a crash), its children get SIGKILL from the
//! kernel (`integration::die_with_parent`). `--free-ports` picks free
//! loopback ports instead of the fixed ones (the banner shows them), for
//! running it next to another demo or in tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use integration::xds::{serve_file, PluginSpec, XdsServer};
use integration::{
    envoy_bin, repo_root, upstream_bin, wasm_path, Bootstrap, Envoy, LogFiles, Upstream,
};
use serde_yaml::Value as Yaml;
use traffic_shift::config::{Config, HashKey};
use traffic_shift::routes::PathMatch;

const USAGE: &str = "usage: demo [--source static|file|grpc] [--free-ports]";

const HELP: &str = "demo [--source static|file|grpc] [--free-ports]

Starts the demo upstreams (monolith 127.0.0.1:18080, auth_service :18081,
orders_service :18082) and Envoy with a shipped config as it is, on
127.0.0.1:10000 (admin 127.0.0.1:9901). Ctrl-C, SIGTERM or SIGHUP stops
everything; if the demo is killed, Envoy and the upstreams die with it.
  --source static  envoy/envoy.yaml, the filter config in the bootstrap (default, make run)
  --source file    envoy/envoy-ecds-file.yaml, config from the watched
                   envoy/ecds/traffic_shift.yaml (make run-ecds-file)
  --source grpc    envoy/envoy-ecds-grpc.yaml, config pushed over ADS from
                   envoy/xds/traffic_shift.json by a control plane on
                   127.0.0.1:18000 (make run-ecds-grpc)
  --free-ports     free loopback ports instead of the fixed ones (shown at start)";

const UPSTREAMS: [(&str, &str); 3] = [
    ("monolith", "127.0.0.1:18080"),
    ("auth_service", "127.0.0.1:18081"),
    ("orders_service", "127.0.0.1:18082"),
];
const CONTROL_PLANE: &str = "127.0.0.1:18000";

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Static,
    File,
    Grpc,
}

/// `None`: `--help` was asked for; else the source and `--free-ports`.
fn parse_args() -> Result<Option<(Source, bool)>, String> {
    let mut source = Source::Static;
    let mut free_ports = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--help" || a == "-h" {
            return Ok(None);
        }
        if a == "--free-ports" {
            free_ports = true;
            continue;
        }
        if a != "--source" {
            return Err(format!("unknown argument {:?}", a.to_string_lossy()));
        }
        let value = args.next().ok_or("--source needs a value")?;
        source = match value.to_str() {
            Some("static") => Source::Static,
            Some("file") => Source::File,
            Some("grpc") => Source::Grpc,
            _ => {
                return Err(format!(
                    "--source must be static, file or grpc, got {:?}",
                    value.to_string_lossy()
                ))
            }
        };
    }
    Ok(Some((source, free_ports)))
}

/// One line on stderr, exit 1.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("demo: {msg}");
    std::process::exit(1)
}

/// `path` relative to the repository, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn load_yaml(path: &Path) -> Result<Yaml, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", shown(path)))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: not YAML: {e}", shown(path)))
}

/// The traffic_shift plugin configuration (JSON text) in a bootstrap or an
/// ECDS resource file: the `configuration.value` next to
/// `root_id: traffic_shift`, wherever it is.
fn plugin_config_in(y: &Yaml) -> Option<String> {
    match y {
        Yaml::Mapping(m) => {
            if y["root_id"].as_str() == Some("traffic_shift") {
                if let Some(v) = y["configuration"]["value"].as_str() {
                    return Some(v.to_string());
                }
            }
            m.values().find_map(plugin_config_in)
        }
        Yaml::Sequence(s) => s.iter().find_map(plugin_config_in),
        _ => None,
    }
}

fn socket_address(y: &Yaml) -> Option<SocketAddr> {
    let sa = &y["socket_address"];
    let ip = sa["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Envoy's admin and listener addresses in the bootstrap.
fn envoy_addresses(b: &Yaml) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    if let Some(a) = socket_address(&b["admin"]["address"]) {
        out.push(("Envoy admin".to_string(), a));
    }
    if let Some(ls) = b["static_resources"]["listeners"].as_sequence() {
        for l in ls {
            if let Some(a) = socket_address(&l["address"]) {
                let name = l["name"].as_str().unwrap_or("listener");
                out.push((format!("Envoy listener {name}"), a));
            }
        }
    }
    out
}

/// Fails with one line if one of the fixed ports is taken.
fn check_ports_free(ports: &[(String, SocketAddr)]) {
    for (what, addr) in ports {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            fail(format!("{addr} ({what}) is not available: {e}"));
        }
    }
}

fn percent(bp: u16) -> String {
    let s = format!("{}.{:02}", bp / 100, bp % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_string() + "%"
}

/// What the starting config does, per route, with a curl line to see it.
fn describe(config: &Config, l: SocketAddr) -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = String::new();
    for r in &config.routes {
        let (shown_path, path) = match &r.matcher.path {
            PathMatch::Prefix(p) => (format!("{p}*"), p.clone()),
            PathMatch::Exact(p) => (p.clone(), p.clone()),
        };
        let method = match &r.matcher.methods {
            Some(m) if !m.iter().any(|m| m == "GET") => {
                format!(" -X {}", m.first().map_or("GET", String::as_str))
            }
            _ => String::new(),
        };
        let methods = r
            .matcher
            .methods
            .as_ref()
            .map_or(String::new(), |m| format!(" ({})", m.join(",")));
        let ramp = if r.ramp.iter().any(|s| s.at_ms > now_ms) {
            " (a ramp step is ahead: `traffic-shift check` shows when)"
        } else {
            ""
        };
        let pct = percent(r.basis_points_at(now_ms));
        let url = format!("http://{l}{path}");
        let (how, try_it) = match &r.hash_key {
            HashKey::Header(h) if h == "x-request-id" => (
                "by x-request-id (a fresh id per request)".to_string(),
                format!("for i in $(seq 20); do curl -s{method} -D - -o /dev/null {url} | grep -i x-served-by; done | sort | uniq -c"),
            ),
            key => {
                let (what, header) = match key {
                    HashKey::Header(h) => (format!("header {h}"), format!("{h}: $u")),
                    HashKey::Cookie(c) => (format!("cookie {c}"), format!("cookie: {c}=$u")),
                };
                // A WebSocket route keyed on the user: each connection of a
                // user on the same side (the upstreams echo with their name).
                let ws = format!("ws://{l}{path}");
                (
                    format!("sticky by {what}"),
                    format!("for u in 1 2 3 4 5 6; do echo \"user $u: $(curl -s{method} -D - -o /dev/null -H \"{header}\" {url} | grep -i x-served-by)\"; done\n  WebSocket: for u in 1 2 3 4 5 6; do target/tools/ws {ws} --header \"{header}\" --send \"hi from $u\"; done"),
                )
            }
        };
        out += &format!(
            "{shown_path}{methods} -> {pct} {}, {how}{ramp}:\n  {try_it}\n\n",
            r.service
        );
    }
    out + &format!(
        "anything else -> {}:\n  curl -s http://{l}/ ; echo\n",
        config.monolith
    )
}

fn plugin_spec() -> PluginSpec {
    PluginSpec {
        name: "traffic_shift".into(),
        root_id: "traffic_shift".into(),
        wasm_path: wasm_path().to_string_lossy().into_owned(),
        failure_policy: envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailOpen,
    }
}

/// The most telling line of a failed Envoy's log: its last critical
/// message, else its last error, without the log prefix.
fn envoy_failure_reason(log: &str) -> Option<&str> {
    let pick = |level: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains(level))
            .map(|l| l.rsplit_once("] ").map_or(l, |(_, m)| m))
    };
    pick("][critical][").or_else(|| pick("][error]["))
}

/// Where the demo keeps Envoy's log and access log: `target/demo/`, or a
/// directory of its own with `--free-ports` (another demo may be running).
fn log_files(free_ports: bool) -> LogFiles {
    let mut dir = repo_root().join("target/demo");
    if free_ports {
        dir = dir.join(std::process::id().to_string());
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", shown(&dir))));
    LogFiles {
        log: dir.join("envoy.log"),
        stdout: dir.join("access.log"),
    }
}

/// A line of Envoy's log the terminal should see: the filter's own
/// (`wasm log ...`) at warning or above, as `envoy: <level>: <message>`.
fn filter_line(line: &str) -> Option<String> {
    let level = ["warning", "error", "critical"]
        .into_iter()
        .find(|l| line.contains(&format!("][{l}][")))?;
    let (_, message) = line.split_once("] wasm log ")?;
    Some(format!("envoy: {level}: {message}"))
}

/// Prints the filter's warnings and errors from Envoy's log as they are
/// written (polled every 200 ms).
async fn follow(log: PathBuf) {
    use std::io::{Read, Seek, SeekFrom};
    let mut at = 0u64;
    let mut partial = String::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Ok(mut f) = std::fs::File::open(&log) else {
            continue;
        };
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(at)).is_err() || f.read_to_end(&mut bytes).is_err() {
            continue;
        }
        at += bytes.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some((line, rest)) = partial.split_once('\n') {
            if let Some(l) = filter_line(line) {
                println!("{l}");
            }
            partial = rest.to_string();
        }
    }
}

/// A panic (a bug, never a user error) is one line too; unwinding then
/// stops the children (their owners' `Drop`).
fn one_line_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!("demo: internal error: {}{at}", msg.replace('\n', " "));
    }));
}

/// SIGINT, SIGTERM and SIGHUP, caught from the start: one arriving while
/// things start stops them as soon as they have started.
struct StopSignals([(tokio::signal::unix::Signal, &'static str); 3]);

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let one = |kind: SignalKind, name: &'static str| {
            signal(kind)
                .map(|s| (s, name))
                .unwrap_or_else(|e| fail(format!("cannot handle {name}: {e}")))
        };
        StopSignals([
            one(SignalKind::interrupt(), "SIGINT"),
            one(SignalKind::terminate(), "SIGTERM"),
            one(SignalKind::hangup(), "SIGHUP"),
        ])
    }

    /// The name of the first of them to arrive.
    async fn recv(&mut self) -> &'static str {
        let [(int, a), (term, b), (hup, c)] = &mut self.0;
        tokio::select! {
            _ = int.recv() => a,
            _ = term.recv() => b,
            _ = hup.recv() => c,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    one_line_panics();
    let mut stop = StopSignals::install();
    let (source, free_ports) = match parse_args() {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("demo: {e} ({USAGE})");
            std::process::exit(2);
        }
    };
    let root = repo_root();
    let (bootstrap_path, config_path): (PathBuf, PathBuf) = match source {
        Source::Static => (root.join("envoy/envoy.yaml"), root.join("envoy/envoy.yaml")),
        Source::File => (
            root.join("envoy/envoy-ecds-file.yaml"),
            root.join("envoy/ecds/traffic_shift.yaml"),
        ),
        Source::Grpc => (
            root.join("envoy/envoy-ecds-grpc.yaml"),
            root.join("envoy/xds/traffic_shift.json"),
        ),
    };
    let mut bootstrap = Bootstrap(load_yaml(&bootstrap_path).unwrap_or_else(|e| fail(e)));

    // The starting configuration, from the file actually used.
    let json = if source == Source::Grpc {
        std::fs::read_to_string(&config_path)
            .unwrap_or_else(|e| fail(format!("{}: {e}", shown(&config_path))))
    } else {
        let y = load_yaml(&config_path).unwrap_or_else(|e| fail(e));
        plugin_config_in(&y).unwrap_or_else(|| {
            fail(format!(
                "{}: no traffic_shift plugin configuration in it",
                shown(&config_path)
            ))
        })
    };
    let config = match Config::from_json(json.as_bytes()) {
        Ok(c) => c,
        Err(errors) => fail(format!(
            "{}: the filter would refuse this configuration: {}",
            shown(&config_path),
            errors
                .0
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )),
    };

    for (what, path) in [
        ("Envoy", envoy_bin()),
        ("the filter", wasm_path()),
        ("the upstream", upstream_bin()),
    ] {
        if !path.is_file() {
            fail(format!(
                "{what} is not built: no {} (run `make build envoy` and `cargo build --profile tools -p integration --bins`)",
                path.display()
            ));
        }
    }
    let mut ports: Vec<(String, SocketAddr)> = UPSTREAMS
        .iter()
        .filter_map(|(n, a)| Some((format!("upstream {n}"), a.parse().ok()?)))
        .collect();
    ports.extend(envoy_addresses(&bootstrap.0));
    if source == Source::Grpc {
        if let Ok(a) = CONTROL_PLANE.parse() {
            ports.push(("control plane".into(), a));
        }
    }
    if free_ports {
        // Admin and listener on port 0 (Envoy reports what it got).
        bootstrap = bootstrap.for_test();
    } else {
        check_ports_free(&ports);
    }
    let control_plane = if free_ports {
        "127.0.0.1:0"
    } else {
        CONTROL_PLANE
    };

    let how_to_change = match source {
        Source::Static => {
            "To change a percentage: edit envoy/plugin.json, run `make envoy-configs` (it prints
envoy/envoy.yaml and the others from it) and restart the demo."
                .to_string()
        }
        Source::File => "To change a percentage live (Envoy watches the file; from the repository root):
  cp envoy/ecds/traffic_shift.yaml /tmp/ts-saved.yaml    # save it as it is, to roll back to
  sed 's/\"percent\": 10,/\"percent\": 50,/; s/version_info: .*/version_info: \"2\"/' /tmp/ts-saved.yaml > envoy/ecds/.ts.new
  mv envoy/ecds/.ts.new envoy/ecds/traffic_shift.yaml    # the change, as one atomic rename
  curl -s localhost:9901/stats | grep -E 'http_filter.traffic_shift.(update_success|update_rejected|version_text)'
  cp /tmp/ts-saved.yaml envoy/ecds/.ts.new && mv envoy/ecds/.ts.new envoy/ecds/traffic_shift.yaml    # roll back"
            .to_string(),
        Source::Grpc => {
            let server = XdsServer::start_on(control_plane, plugin_spec())
                .await
                .unwrap_or_else(|e| {
                    fail(format!(
                        "cannot start the control plane on {control_plane}: {e}"
                    ))
                });
            let at = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
            bootstrap = bootstrap.with_cluster_address("xds", at);
            tokio::spawn(serve_file(server, config_path.clone(), true, |m| {
                println!("xds: {m}")
            }));
            format!("The control plane on {at} serves envoy/xds/traffic_shift.json over ADS.
To change a percentage live, edit and save the file; the control plane checks it, pushes it
and prints Envoy's ACK or NACK here.")
        }
    };
    let upstreams = UPSTREAMS.map(|(name, addr)| {
        Upstream::start_with(name, if free_ports { "127.0.0.1:0" } else { addr }, &[])
    });
    if free_ports {
        bootstrap = bootstrap.with_upstreams(&upstreams.each_ref());
    }
    let logs = log_files(free_ports);
    let envoy = match Envoy::start_logged(&bootstrap, 2, &logs).await {
        Ok(e) => e,
        Err(f) => {
            let reason = envoy_failure_reason(&f.log).unwrap_or("no error in its log");
            fail(format!(
                "Envoy did not start (exit {:?}): {reason} (its log: {})",
                f.exit_code,
                shown(&logs.log)
            ));
        }
    };
    let l = envoy.listener;
    println!(
        "traffic-shift demo: Envoy on http://{l} (admin http://{admin}), pid {pid}
upstreams: {ups}

The split at start, from {config_file} (a later change is not shown here):

{split}
{how_to_change}

Logs, kept after the demo stops: Envoy's log in {log} (the filter's warnings
and errors, such as a refused configuration, are also printed here as
\"envoy: ...\"), the access log (a line per request, with shift_target= and
shift_reason=) in {access}.

Ctrl-C (or SIGTERM, SIGHUP) stops Envoy and the upstreams.",
        admin = envoy.admin,
        pid = envoy.pid(),
        ups = upstreams
            .iter()
            .map(|u| format!("{}={}", u.name, u.addr))
            .collect::<Vec<_>>()
            .join(" "),
        config_file = shown(&config_path),
        split = describe(&config, l),
        log = shown(&logs.log),
        access = shown(&logs.stdout),
    );
    tokio::spawn(follow(logs.log.clone()));
    let why = stop.recv().await;
    println!("stopping ({why}): Envoy and the upstreams");
    drop(envoy);
    drop(upstreams);
}
