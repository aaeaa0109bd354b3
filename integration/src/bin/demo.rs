//! `make run`: the demo. Starts a monolith and two services on fixed loopback
//! ports and Envoy with a shipped config exactly as it is, prints what to
//! curl, and stops everything on Ctrl-C.
//!
//! `demo [--source static|file|grpc]`:
//! - static (`make run`): `envoy/envoy.yaml`, config in the bootstrap;
//! - file (`make run-ecds-file`): `envoy/envoy-ecds-file.yaml`, config from
//!   the watched `envoy/ecds/traffic_shift.yaml`;
//! - grpc (`make run-ecds-grpc`): `envoy/envoy-ecds-grpc.yaml`, config pushed
//!   by the control plane from `envoy/xds/traffic_shift.json`, on every edit.

use integration::xds::{serve_file, PluginSpec, XdsServer};
use integration::{repo_root, Bootstrap, Envoy, Upstream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let source = match args.iter().position(|a| a == "--source") {
        Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
        None => "static".into(),
    };
    let (bootstrap, how_to_change) = match source.as_str() {
        "static" => (
            Bootstrap::shipped(),
            "config: envoy/envoy.yaml (edit it and restart to change a percentage)".to_string(),
        ),
        "file" => (
            Bootstrap::load(&repo_root().join("envoy/envoy-ecds-file.yaml")),
            "config: envoy/ecds/traffic_shift.yaml, watched by Envoy. To change a percentage live:
  cp envoy/ecds/traffic_shift.yaml /tmp/ts.yaml && sed -i 's/\"percent\": 10,/\"percent\": 50,/; s/version_info: .*/version_info: \"2\"/' /tmp/ts.yaml
  cp /tmp/ts.yaml envoy/ecds/.ts.new && mv envoy/ecds/.ts.new envoy/ecds/traffic_shift.yaml
  curl -s localhost:9901/stats | grep extension_config_discovery.http_filter.traffic_shift"
                .to_string(),
        ),
        "grpc" => {
            let spec = PluginSpec {
                name: "traffic_shift".into(),
                root_id: "traffic_shift".into(),
                wasm_path: integration::wasm_path().to_string_lossy().into_owned(),
                failure_policy:
                    envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailOpen,
            };
            let server = match XdsServer::start_on("127.0.0.1:18000", spec).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot start the control plane on 127.0.0.1:18000: {e}");
                    std::process::exit(1);
                }
            };
            let file = repo_root().join("envoy/xds/traffic_shift.json");
            tokio::spawn(serve_file(server, file, true, |m| println!("xds: {m}")));
            (
                Bootstrap::load(&repo_root().join("envoy/envoy-ecds-grpc.yaml")),
                "config: envoy/xds/traffic_shift.json, served over ADS by the control plane on 127.0.0.1:18000.
To change a percentage live, edit and save the file; the control plane checks it, pushes it
and prints Envoy's ACK or NACK here."
                    .to_string(),
            )
        }
        other => {
            eprintln!("demo: --source must be static, file or grpc, got {other:?}");
            std::process::exit(2);
        }
    };
    let upstreams = [
        Upstream::start_with("monolith", "127.0.0.1:18080", &[]),
        Upstream::start_with("auth_service", "127.0.0.1:18081", &[]),
        Upstream::start_with("orders_service", "127.0.0.1:18082", &[]),
    ];
    let envoy = match Envoy::start_with(&bootstrap, 2).await {
        Ok(e) => e,
        Err(f) => {
            eprintln!("envoy did not start (exit {:?}):\n{}", f.exit_code, f.log);
            std::process::exit(1);
        }
    };
    let l = envoy.listener;
    println!(
        "traffic-shift demo: Envoy on http://{l} (admin http://{admin}), pid {pid}
upstreams: {ups}

/api/auth/   -> 10% auth_service, by x-request-id (a fresh id per request):
  for i in $(seq 20); do curl -s -D - -o /dev/null http://{l}/api/auth/login | grep -i x-served-by; done | sort | uniq -c

/api/orders/ -> 50% orders_service, sticky by x-user-id:
  for u in 1 2 3 4 5 6; do echo \"user $u: $(curl -s -D - -o /dev/null -H \"x-user-id: $u\" http://{l}/api/orders/ | grep -i x-served-by)\"; done

anything else -> monolith:
  curl -s http://{l}/ ; echo

{how_to_change}

Ctrl-C stops Envoy and the upstreams.",
        admin = envoy.admin,
        pid = envoy.pid(),
        ups = upstreams
            .iter()
            .map(|u| format!("{}={}", u.name, u.addr))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping");
}
