//! `make run`: the demo. Starts a monolith and two services on fixed loopback
//! ports and Envoy with `envoy/envoy.yaml` exactly as shipped, prints what to
//! curl, and stops everything on Ctrl-C.

use integration::{Bootstrap, Envoy, Upstream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let upstreams = [
        Upstream::start_with("monolith", "127.0.0.1:18080", &[]),
        Upstream::start_with("auth_service", "127.0.0.1:18081", &[]),
        Upstream::start_with("orders_service", "127.0.0.1:18082", &[]),
    ];
    let envoy = match Envoy::start_with(&Bootstrap::shipped(), 2).await {
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
