//! `traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT...` (the Envoy
//! bootstrap a configuration needs) and the `--envoy BOOTSTRAP.yaml` lint
//! of `check`. The YAML is built in `traffic_shift::envoy`.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use traffic_shift::config::Config;
use traffic_shift::envoy::bootstrap::{
    self, shell_word, unwritable_target_header, Address, FilterSource, Spec, DEFAULT_ADMIN,
    DEFAULT_LISTEN, DEFAULT_NODE, DEFAULT_WASM,
};
use traffic_shift::envoy::lint::{lint, Severity};
use traffic_shift::envoy::named_clusters;

use super::quoted;

pub const USAGE: &str = "usage: traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT... [--listen HOST:PORT] [--admin HOST:PORT] [--wasm PATH] [--node ID] [--ecds-file PATH | --ads HOST:PORT] [--otlp HOST:PORT] [--h2 NAME]... [--module], or PLUGIN.json --routes-only, or PLUGIN.json --ecds-resource VERSION [--wasm PATH]";

pub const HELP: &str = "traffic-shift envoy PLUGIN.json --cluster NAME=HOST:PORT... [options]
traffic-shift envoy PLUGIN.json --routes-only
traffic-shift envoy PLUGIN.json --ecds-resource VERSION [--wasm PATH]

Prints the Envoy bootstrap (YAML) a traffic_shift plugin configuration needs:
a listener whose HTTP connection manager strips the target header before
routing, the wasm filter (FAIL_OPEN) with the configuration embedded as it
is, a route per service cluster on the target header then the catch-all to
the monolith, every cluster the configuration names, the stats_tags of the
filter's stats, trace tags and an access log with the decision.
  PLUGIN.json            the configuration; - reads standard input
  --cluster NAME=HOST:PORT
                         the address of cluster NAME, one for every cluster the
                         configuration names (an IP: STATIC, a name: STRICT_DNS)
  --h2 NAME              cluster NAME speaks HTTP/2 (plaintext, h2c) to its
                         upstream, as gRPC servers need; other clusters speak
                         HTTP/1.1 (repeat for several clusters)
  --listen HOST:PORT     the listener (default 127.0.0.1:10000)
  --admin HOST:PORT      the admin interface (default 127.0.0.1:9901)
  --wasm PATH            the filter's .wasm (default
                         target/wasm32-wasip1/release/traffic_shift.wasm)
  --node ID              node id and cluster (default traffic-shift)
  --ecds-file PATH       the filter's configuration from ECDS, the watched file
                         PATH (print it with --ecds-resource)
  --ads HOST:PORT        the filter's configuration from ECDS over ADS, from the
                         control plane at HOST:PORT
  --otlp HOST:PORT       export traces by OTLP/gRPC to a collector at HOST:PORT
  --module               the native Envoy dynamic module (make module) instead
                         of the .wasm, loaded from ENVOY_DYNAMIC_MODULES_SEARCH_PATH
                         (not with --wasm, --ecds-file or --ads)
  --routes-only          print only the route configuration, for a bootstrap of
                         your own
  --ecds-resource VERSION
                         print only the ECDS resource for --ecds-file

Exit status: 0 printed, 1 invalid configuration (every error on stderr, as the
filter logs it), 2 usage error, a missing --cluster or unreadable PLUGIN.json
(one line on stderr).";

const WITH_VALUE: [&str; 10] = [
    "--cluster",
    "--h2",
    "--listen",
    "--admin",
    "--wasm",
    "--node",
    "--ecds-file",
    "--ads",
    "--otlp",
    "--ecds-resource",
];

/// The file's bytes (`-`: stdin) and its name for messages; `Err`: the
/// one line to print, exit 2.
pub fn read_input(file: &OsStr) -> Result<(Vec<u8>, String), String> {
    let shown = match file.to_str() {
        Some(f) => f.to_string(),
        None => file.as_bytes().escape_ascii().to_string(),
    };
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("stdin: {e}"))?;
        return Ok((buf, shown));
    }
    match std::fs::read(file) {
        Ok(b) => Ok((b, shown)),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// Reads and validates a plugin configuration, printing what the CLI
/// prints when it cannot: one line for an unreadable file (exit 2), the
/// lines the filter logs when Envoy refuses the config (exit 1).
pub fn load_config(file: &OsStr) -> Result<(Config, Vec<u8>, String), ExitCode> {
    let (bytes, shown) = read_input(file).map_err(|line| {
        eprintln!("traffic-shift: {line}");
        ExitCode::from(2)
    })?;
    match Config::from_json(&bytes) {
        Ok(c) => Ok((c, bytes, shown)),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("invalid configuration: {e}");
            }
            Err(ExitCode::from(1))
        }
    }
}

/// `traffic-shift envoy ARGS` (ARGS after `envoy`).
pub fn run(args: &[OsString]) -> Result<ExitCode, String> {
    // --help anywhere a flag can be (not as a flag's value).
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "--help" || a == "-h" {
            let _ = writeln!(std::io::stdout(), "{HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        i += if WITH_VALUE.iter().any(|f| a == *f) {
            2
        } else {
            1
        };
    }
    let Some(file) = args.first() else {
        return Err("expected `envoy PLUGIN.json`".into());
    };
    let mut command = vec![format!(
        "traffic-shift envoy {}",
        shell_word(&file.to_string_lossy())
    )];
    let mut clusters: Vec<(String, Address)> = Vec::new();
    let mut h2: Vec<String> = Vec::new();
    let mut single: Vec<(&'static str, String)> = Vec::new();
    let mut routes_only = false;
    let mut module = false;
    let mut rest = args.iter().skip(1);
    while let Some(flag) = rest.next() {
        if flag == "--routes-only" {
            routes_only = true;
            command.push("--routes-only".into());
            continue;
        }
        if flag == "--module" {
            module = true;
            command.push("--module".into());
            continue;
        }
        let Some(name) = WITH_VALUE.iter().copied().find(|f| flag == *f) else {
            return Err(format!("unknown argument {}", quoted(flag.as_bytes())));
        };
        let value = rest.next().ok_or(format!("{name} needs a value"))?;
        let Some(value) = value.to_str() else {
            return Err(format!("{name}: not UTF-8: {}", quoted(value.as_bytes())));
        };
        command.push(format!("{name} {}", shell_word(value)));
        if name == "--cluster" {
            let (cluster, addr) = value
                .split_once('=')
                .ok_or(format!("--cluster: expected NAME=HOST:PORT, got {value:?}"))?;
            let addr = Address::parse(addr).map_err(|e| format!("--cluster {cluster}: {e}"))?;
            if clusters.iter().any(|(c, _)| c == cluster) {
                return Err(format!("--cluster {cluster} given twice"));
            }
            clusters.push((cluster.to_string(), addr));
        } else if name == "--h2" {
            if h2.iter().any(|c| c == value) {
                return Err(format!("--h2 {value} given twice"));
            }
            h2.push(value.to_string());
        } else if single.iter().any(|(n, _)| *n == name) {
            return Err(format!("{name} given twice"));
        } else {
            single.push((name, value.to_string()));
        }
    }
    let get = |name: &str| {
        single
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    let address = |name: &str, default: &str| match get(name) {
        Some(v) => Address::parse(v).map_err(|e| format!("{name}: {e}")),
        None => Address::parse(default),
    };
    // What applies to which output.
    if routes_only && get("--ecds-resource").is_some() {
        return Err("--routes-only and --ecds-resource: choose one".into());
    }
    let piece = if routes_only {
        Some("--routes-only")
    } else {
        get("--ecds-resource").map(|_| "--ecds-resource")
    };
    if let Some(piece) = piece {
        let allowed: &[&str] = if piece == "--ecds-resource" {
            &["--ecds-resource", "--wasm"]
        } else {
            &[]
        };
        if !clusters.is_empty() {
            return Err(format!("{piece} prints no clusters: drop --cluster"));
        }
        if !h2.is_empty() {
            return Err(format!("{piece} prints no clusters: drop --h2"));
        }
        if let Some((n, _)) = single.iter().find(|(n, _)| !allowed.contains(n)) {
            return Err(format!("{n} does not apply to {piece}"));
        }
    }
    if get("--ecds-file").is_some() && get("--ads").is_some() {
        return Err("--ecds-file and --ads: choose one".into());
    }
    if module {
        if let Some(piece) = piece {
            return Err(format!("--module does not apply to {piece}"));
        }
        for n in ["--wasm", "--ecds-file", "--ads"] {
            if get(n).is_some() {
                return Err(format!("{n} does not apply to --module"));
            }
        }
    }
    let listen = address("--listen", DEFAULT_LISTEN)?;
    let admin = address("--admin", DEFAULT_ADMIN)?;
    let source = match (get("--ecds-file"), get("--ads")) {
        (Some(p), _) => FilterSource::EcdsFile(p.to_string()),
        (None, Some(a)) => FilterSource::Ads(Address::parse(a).map_err(|e| format!("--ads: {e}"))?),
        (None, None) => FilterSource::Inline,
    };
    let otlp = get("--otlp")
        .map(|a| Address::parse(a).map_err(|e| format!("--otlp: {e}")))
        .transpose()?;

    let (config, bytes, shown) = match load_config(file) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    // A configuration the filter accepts is valid JSON, hence UTF-8.
    let json = String::from_utf8_lossy(&bytes);
    if let Some(why) = unwritable_target_header(&config) {
        return Err(format!("{shown}: {why}"));
    }
    let out = match piece {
        Some("--routes-only") => bootstrap::routes_only(&config, &command),
        Some(_) => bootstrap::ecds_resource(
            &config,
            &json,
            get("--wasm").unwrap_or(DEFAULT_WASM),
            get("--ecds-resource").unwrap_or("1"),
            &command,
        ),
        None => {
            let named = named_clusters(&config);
            let own = [
                (
                    matches!(source, FilterSource::Ads(_)),
                    "--ads",
                    bootstrap::ADS_CLUSTER,
                    "the control plane",
                ),
                (
                    otlp.is_some(),
                    "--otlp",
                    bootstrap::OTLP_CLUSTER,
                    "the trace collector",
                ),
            ];
            for (used, flag, own, what) in own {
                if let Some((n, field)) = named.iter().find(|(n, _)| used && *n == own) {
                    return Err(format!(
                        "cluster {n} ({field}): {flag} adds a cluster of that name ({what}); rename it in the configuration"
                    ));
                }
            }
            if let Some((c, _)) = clusters
                .iter()
                .find(|(c, _)| !named.iter().any(|(n, _)| n == c))
            {
                let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "--cluster {c}: {shown} names no cluster {c:?} (it names {})",
                    names.join(", ")
                ));
            }
            let missing: Vec<String> = named
                .iter()
                .filter(|(n, _)| !clusters.iter().any(|(c, _)| c == n))
                .map(|(n, field)| format!("{n} ({field})"))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "missing --cluster NAME=HOST:PORT for {} of {shown}",
                    missing.join(", ")
                ));
            }
            if let Some(c) = h2.iter().find(|c| !clusters.iter().any(|(n, _)| n == *c)) {
                return Err(format!("--h2 {c}: no --cluster {c}=HOST:PORT"));
            }
            bootstrap::bootstrap(&Spec {
                config: &config,
                config_json: &json,
                clusters,
                h2,
                listen,
                admin,
                wasm: get("--wasm").unwrap_or(DEFAULT_WASM).to_string(),
                module,
                node: get("--node").unwrap_or(DEFAULT_NODE).to_string(),
                source,
                otlp,
                command,
            })
        }
    };
    if piece != Some("--routes-only") {
        if let Some(note) = relative_wasm_note(get("--wasm").unwrap_or(DEFAULT_WASM)) {
            eprintln!("{note}");
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// The one-line note (stderr) for a printed `.wasm` path that is relative:
/// Envoy opens it from the directory it runs in, and dies with `Invalid
/// path` anywhere else.
pub fn relative_wasm_note(wasm: &str) -> Option<String> {
    (!std::path::Path::new(wasm).is_absolute()).then(|| {
        format!(
            "traffic-shift: note: the .wasm path {wasm} is relative: Envoy opens it from the directory it runs in (elsewhere it exits with \"Invalid path: {wasm}\"); pass an absolute --wasm to run the bootstrap from anywhere"
        )
    })
}

/// `check --envoy BOOTSTRAP`: reads it (`Err`: one line, exit 2).
pub fn read_bootstrap(file: &OsStr) -> Result<(serde_yaml::Value, String), String> {
    let (bytes, shown) = read_input(file)?;
    let y = serde_yaml::from_slice(&bytes)
        .map_err(|e| format!("{shown}: not YAML: {}", e.to_string().replace('\n', " ")))?;
    Ok((y, shown))
}

/// Prints the findings (stderr) and a summary line (stdout); whether
/// there was an error.
pub fn print_lint(
    out: &mut String,
    bootstrap: &serde_yaml::Value,
    shown: &str,
    config: &Config,
) -> bool {
    let findings = lint(bootstrap, config);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    for f in &findings {
        let level = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        eprintln!("{shown}: {level}: {}", f.message);
    }
    let _ = std::fmt::Write::write_fmt(
        out,
        format_args!(
            "{shown}: {} error(s), {} warning(s) against this configuration\n",
            errors,
            findings.len() - errors
        ),
    );
    errors > 0
}
