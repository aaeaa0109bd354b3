//! A small xDS control plane: serves one ECDS resource (the traffic_shift
//! wasm filter's config) over ADS and over the dedicated
//! ExtensionConfigDiscoveryService, state-of-the-world gRPC, with versions and
//! ACK/NACK tracking. Used by the tests and by the `xds` binary.
//!
//! Honest limits: one resource, no delta xDS, ACK/NACK kept per version (not
//! per Envoy node).
//!
//! Facts it relies on (Envoy 1.40): the wire type_url is
//! `TypedExtensionConfig` (the Wasm type only appears in the listener's
//! `type_urls` and inside the resource); Envoy asks for the resource by the
//! HTTP filter's name; a NACK is a request carrying the rejected response's
//! nonce and an `error_detail` (whose message is generic: "Unable to create
//! Wasm plugin traffic_shift"; the field path is in Envoy's log); Envoy
//! remembers the hash of the last config it *tried*, so re-sending bytes it
//! rejected under a new version is ACKed but not applied. [`XdsServer::push`]
//! therefore refuses a resource that was NACKed before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    async_data_source, data_source, AsyncDataSource, DataSource, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::{
    ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::util::pack_any;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// The xDS type_url of ECDS requests/responses. The *inner* type (the Wasm filter config,
/// `WASM_TYPE_URL`) is what the listener's `config_discovery.type_urls` allows.
pub const ECDS_TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Acked,
    /// NACK: `error_detail.message` of Envoy's DiscoveryRequest.
    Nacked(String),
}

/// Static parts of the filter config; `push` supplies version + plugin JSON.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    pub name: String, // ECDS resource name == http_filters[].name == PluginConfig.name == vm_id
    pub root_id: String,
    pub wasm_path: String,
    pub failure_policy: FailurePolicy,
}

struct Snapshot {
    version: String,
    resource: Any,
}

struct Shared {
    spec: PluginSpec,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    outcomes: watch::Sender<HashMap<String, Outcome>>,
    nacked: std::sync::Mutex<Vec<Any>>, // resources Envoy rejected
    next_nonce: AtomicU64,
}

#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
    pub port: u16,
}

impl XdsServer {
    /// Binds 127.0.0.1:0 and serves ADS + ECDS in the background.
    pub async fn start(spec: PluginSpec) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", spec).await
    }

    /// Binds `addr` and serves ADS + ECDS in the background.
    pub async fn start_on(addr: &str, spec: PluginSpec) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            spec,
            snapshot: watch::Sender::new(None),
            outcomes: watch::Sender::new(HashMap::new()),
            nacked: Default::default(),
            next_nonce: AtomicU64::new(1),
        });
        let svc = Svc(shared.clone());
        let server = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(svc.clone()))
            .add_service(ExtensionConfigDiscoveryServiceServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("[xds] server error: {e}");
            }
        });
        Ok(XdsServer { shared, port })
    }

    /// Makes (version, plugin_json) current and sends it on every subscribed stream.
    /// Refuses a resource Envoy already NACKed: Envoy remembers the hash of the last
    /// *attempted* config, so re-sending the rejected bytes under a new version is ACKed
    /// without being applied (seen on 1.40).
    pub fn push(&self, version: &str, plugin_json: &str) -> Result<(), String> {
        let s = &self.shared.spec;
        let vm = VmConfig {
            vm_id: s.name.clone(),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(s.wasm_path.clone())),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let wasm = Wasm {
            config: Some(PluginConfig {
                name: s.name.clone(),
                root_id: s.root_id.clone(),
                vm: Some(plugin_config::Vm::VmConfig(vm)),
                configuration: Some(pack_any(StringValue {
                    value: plugin_json.into(),
                })),
                failure_policy: s.failure_policy as i32,
                ..Default::default()
            }),
        };
        let tec = TypedExtensionConfig {
            name: s.name.clone(),
            typed_config: Some(pack_any(wasm)),
        };
        let snap = Snapshot {
            version: version.into(),
            resource: pack_any(tec),
        };
        if self
            .shared
            .nacked
            .lock()
            .map(|n| n.contains(&snap.resource))
            .unwrap_or(false)
        {
            return Err(format!("{version}: this exact config was NACKed before"));
        }
        self.shared.snapshot.send_replace(Some(Arc::new(snap)));
        Ok(())
    }

    /// Waits until some stream ACKed or NACKed `version` (a NACK wins over an ACK).
    pub async fn wait(&self, version: &str, timeout: Duration) -> Option<Outcome> {
        let mut rx = self.shared.outcomes.subscribe();
        let found = tokio::time::timeout(timeout, rx.wait_for(|m| m.contains_key(version))).await;
        let outcome = found.ok()?.ok().and_then(|m| m.get(version).cloned());
        outcome
    }

    pub fn outcome(&self, version: &str) -> Option<Outcome> {
        self.shared.outcomes.borrow().get(version).cloned()
    }
}

/// Serves `path` (a plugin-config JSON file): pushes it as version 1, then
/// polls it every 500 ms and pushes each change as the next version, after
/// checking it with the filter's own validation unless `check` is false.
/// Reports every step through `say`. Runs until the task is dropped.
pub async fn serve_file(
    server: XdsServer,
    path: std::path::PathBuf,
    check: bool,
    say: impl Fn(String),
) {
    let mut version = 0u64;
    let mut last: Option<String> = None;
    loop {
        let text = std::fs::read_to_string(&path).ok();
        if text.is_some() && text != last {
            last = text.clone();
            let text = text.unwrap_or_default();
            let refused = check
                .then(|| traffic_shift::config::Config::from_json(text.as_bytes()).err())
                .flatten();
            if let Some(errors) = refused {
                say(format!(
                    "{}: not pushed, the filter would refuse it:\n{errors}",
                    path.display()
                ));
            } else {
                version += 1;
                let v = version.to_string();
                match server.push(&v, &text) {
                    Err(e) => say(format!("not pushed: {e}")),
                    Ok(()) => {
                        say(format!("pushed version {v} of {}", path.display()));
                        match server.wait(&v, Duration::from_secs(30)).await {
                            Some(Outcome::Acked) => say(format!("version {v}: ACKed by Envoy")),
                            Some(Outcome::Nacked(m)) => say(format!(
                                "version {v}: NACKed by Envoy: {m} (see Envoy's log for the field)"
                            )),
                            None => say(format!("version {v}: no answer from Envoy yet")),
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Clone)]
struct Svc(Arc<Shared>);

type SotwStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

/// One SotW stream: answer the first ECDS request, then resend on every push; match
/// ACK/NACKs to the version by response_nonce (stale nonces are ignored, as in the xDS spec).
fn serve_stream(shared: Arc<Shared>, mut inbound: Streaming<DiscoveryRequest>) -> SotwStream {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut snap_rx = shared.snapshot.subscribe();
        let mut subscribed = false;
        let mut last: Option<(String, Arc<Snapshot>)> = None; // last sent
        loop {
            let send_now = tokio::select! {
                msg = inbound.message() => {
                    let Ok(Some(req)) = msg else { break };
                    let err = req.error_detail.as_ref().map(|s| s.message.clone());
                    if req.type_url != ECDS_TYPE_URL { continue; }
                    match &last {
                        _ if req.response_nonce.is_empty() => { subscribed = true; true }
                        Some((nonce, snap)) if *nonce == req.response_nonce => {
                            let version = &snap.version;
                            if err.is_some() { if let Ok(mut n) = shared.nacked.lock() { n.push(snap.resource.clone()); } }
                            let outcome = err.map_or(Outcome::Acked, Outcome::Nacked);
                            shared.outcomes.send_modify(|m| {
                                if !matches!(m.get(version), Some(Outcome::Nacked(_))) {
                                    m.insert(version.clone(), outcome);
                                }
                            });
                            false
                        }
                        _ => false, // stale nonce
                    }
                }
                changed = snap_rx.changed() => { if changed.is_err() { break } subscribed }
            };
            // Only mark the snapshot seen when we send it, or a push racing an ACK is lost.
            if !send_now {
                continue;
            }
            let Some(snap) = snap_rx.borrow_and_update().clone() else {
                continue;
            };
            let nonce = shared
                .next_nonce
                .fetch_add(1, Ordering::Relaxed)
                .to_string();
            let resp = DiscoveryResponse {
                version_info: snap.version.clone(),
                resources: vec![snap.resource.clone()],
                type_url: ECDS_TYPE_URL.into(),
                nonce: nonce.clone(),
                ..Default::default()
            };
            last = Some((nonce, snap.clone()));
            if tx.send(Ok(resp)).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;
    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Ok(Response::new(serve_stream(
            self.0.clone(),
            req.into_inner(),
        )))
    }
    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta xDS not supported"))
    }
}

#[tonic::async_trait]
impl ExtensionConfigDiscoveryService for Svc {
    type StreamExtensionConfigsStream = SotwStream;
    type DeltaExtensionConfigsStream = DeltaStream;
    async fn stream_extension_configs(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Ok(Response::new(serve_stream(
            self.0.clone(),
            req.into_inner(),
        )))
    }
    async fn delta_extension_configs(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta xDS not supported"))
    }
    async fn fetch_extension_configs(
        &self,
        _: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("REST fetch not supported"))
    }
}
