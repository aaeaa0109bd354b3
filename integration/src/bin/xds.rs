//! `xds --plugin-config FILE [--listen 127.0.0.1:18000] [--wasm PATH] [--no-check]`
//!
//! A small control plane: serves FILE (the traffic_shift plugin
//! configuration, JSON) to Envoy as ECDS over gRPC (ADS or the dedicated
//! ECDS service; see envoy/envoy-ecds-grpc.yaml). Every change of FILE is
//! checked with the filter's own validation, pushed as the next version, and
//! Envoy's ACK or NACK is printed. `--no-check` pushes invalid files too (to
//! see Envoy refuse them).
//!
//! A user error (unknown argument, missing or unreadable FILE, address in
//! use) is one line on stderr and a non-zero exit.

use std::path::PathBuf;

use integration::xds::{serve_file, PluginSpec, XdsServer};

const USAGE: &str = "usage: xds --plugin-config FILE [--listen ADDR] [--wasm PATH] [--no-check]";

const HELP: &str = "xds --plugin-config FILE [--listen 127.0.0.1:18000] [--wasm PATH] [--no-check]

Serves FILE (the traffic_shift plugin configuration, JSON) to Envoy as the
ECDS resource traffic_shift over gRPC (ADS or the ECDS service), with
failure_policy FAIL_OPEN. Every change of FILE is checked with the filter's
own validation, pushed as the next version, and Envoy's ACK or NACK printed.
  --plugin-config FILE  the plugin configuration to serve (required)
  --listen ADDR         where to listen (default 127.0.0.1:18000)
  --wasm PATH           the .wasm path as Envoy sees it (default: this
                        repository's target/wasm32-wasip1/release/traffic_shift.wasm)
  --no-check            push files the filter would refuse too (to see Envoy NACK them)";

struct Opts {
    listen: String,
    file: PathBuf,
    wasm: String,
    check: bool,
}

/// `None`: `--help` was asked for.
fn parse_args() -> Result<Option<Opts>, String> {
    let mut listen = "127.0.0.1:18000".to_string();
    let mut file = None;
    let mut wasm = integration::wasm_path().to_string_lossy().into_owned();
    let mut check = true;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let flag = a.to_string_lossy().into_owned();
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--no-check" => check = false,
            "--listen" | "--plugin-config" | "--wasm" => {
                let value = args.next().ok_or(format!("{flag} needs a value"))?;
                if flag == "--plugin-config" {
                    file = Some(PathBuf::from(value));
                    continue;
                }
                let value = value
                    .into_string()
                    .map_err(|v| format!("{flag}: not UTF-8: {v:?}"))?;
                if flag == "--listen" {
                    listen = value;
                } else {
                    wasm = value;
                }
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let file = file.ok_or("--plugin-config FILE is required")?;
    Ok(Some(Opts {
        listen,
        file,
        wasm,
        check,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("xds: {e} ({USAGE})");
            std::process::exit(2);
        }
    };
    let file = opts.file;
    // Later reads that fail are retried (an editor may replace the file);
    // at start, a missing or unreadable file is a mistake.
    if let Err(e) = std::fs::read(&file) {
        eprintln!("xds: {}: {e}", file.display());
        std::process::exit(1);
    }
    let spec = PluginSpec {
        name: "traffic_shift".into(),
        root_id: "traffic_shift".into(),
        wasm_path: opts.wasm,
        failure_policy: envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailOpen,
    };
    let listen = opts.listen;
    let server = match XdsServer::start_on(&listen, spec).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xds: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "xds: serving {} as ECDS resource traffic_shift on {listen}",
        file.display()
    );
    serve_file(server, file, opts.check, |m| println!("xds: {m}")).await;
}
