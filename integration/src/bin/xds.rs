//! `xds --plugin-config FILE [--listen 127.0.0.1:18000] [--wasm PATH] [--no-check]`
//!
//! A small control plane: serves FILE (the traffic_shift plugin
//! configuration, JSON) to Envoy as ECDS over gRPC (ADS or the dedicated
//! ECDS service; see envoy/envoy-ecds-grpc.yaml). Every change of FILE is
//! checked with the filter's own validation, pushed as the next version, and
//! Envoy's ACK or NACK is printed. `--no-check` pushes invalid files too (to
//! see Envoy refuse them).

use integration::xds::{serve_file, PluginSpec, XdsServer};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:18000".to_string();
    let mut file = None;
    let mut wasm = integration::wasm_path().to_string_lossy().into_owned();
    let mut check = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_default(),
            "--plugin-config" => file = args.next(),
            "--wasm" => wasm = args.next().unwrap_or_default(),
            "--no-check" => check = false,
            other => {
                eprintln!("xds: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let Some(file) = file else {
        eprintln!("usage: xds --plugin-config FILE [--listen ADDR] [--wasm PATH] [--no-check]");
        std::process::exit(2);
    };
    let spec = PluginSpec {
        name: "traffic_shift".into(),
        root_id: "traffic_shift".into(),
        wasm_path: wasm,
        failure_policy: envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailOpen,
    };
    let server = match XdsServer::start_on(&listen, spec).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xds: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("xds: serving {file} as ECDS resource traffic_shift on {listen}");
    serve_file(server, file.into(), check, |m| println!("xds: {m}")).await;
}
