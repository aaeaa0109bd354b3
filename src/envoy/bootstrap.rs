//! The Envoy bootstrap a plugin configuration needs, as YAML text
//! (`traffic-shift envoy`). A fixed template: the values put into it are
//! names, addresses and the configuration's own text, embedded verbatim.
//!
//! The shipped `envoy/*.yaml` are printed by this (`make envoy-configs`);
//! a test checks that they are.

use std::fmt::Write as _;

use super::yaml::{indent, literal_block, scalar};
use super::{named_clusters, service_clusters};
use crate::config::Config;
use crate::stats::{GRPC_STATUS_TAG, STATS_TAGS};

/// `HOST:PORT`, as given (`[::1]:80` is host `::1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// Parses `HOST:PORT`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Address, String> {
        let (host, port) = s.rsplit_once(':').ok_or(format!("not HOST:PORT: {s:?}"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("not HOST:PORT: {s:?}"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("not a port (0-65535): {port:?} in {s:?}"))?;
        Ok(Address {
            host: host.to_string(),
            port,
        })
    }

    /// An IP address (a STATIC cluster) rather than a name (STRICT_DNS).
    fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// `socket_address: {address: HOST, port_value: PORT}`.
    fn yaml(&self) -> String {
        format!(
            "socket_address: {{address: {}, port_value: {}}}",
            scalar(&self.host),
            self.port
        )
    }
}

/// Where the filter's own configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSource {
    /// In the bootstrap.
    Inline,
    /// ECDS from a watched file (its directory is watched).
    EcdsFile(String),
    /// ECDS over ADS (gRPC) from a control plane, cluster `xds`.
    Ads(Address),
}

/// Everything a bootstrap is made of.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub config: &'a Config,
    /// The configuration's text, embedded as it is.
    pub config_json: &'a str,
    /// An address for each of [`named_clusters`], in that order.
    pub clusters: Vec<(String, Address)>,
    /// Clusters that speak HTTP/2 to their upstream (gRPC services).
    pub h2: Vec<String>,
    pub listen: Address,
    pub admin: Address,
    pub wasm: String,
    /// The dynamic-module build instead of the .wasm (`--module`).
    pub module: bool,
    pub node: String,
    pub source: FilterSource,
    /// An OpenTelemetry collector (OTLP/gRPC) to export traces to.
    pub otlp: Option<Address>,
    /// The command that printed it, one `--flag value` per element, for the
    /// header comment.
    pub command: Vec<String>,
}

/// The clusters the bootstrap adds itself: the ADS control plane (with
/// [`FilterSource::Ads`]) and the OpenTelemetry collector (with `otlp`).
/// A configuration naming either cannot get a bootstrap with that option.
pub const ADS_CLUSTER: &str = "xds";
pub const OTLP_CLUSTER: &str = "otel_collector";

/// The defaults of `traffic-shift envoy`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10000";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
pub const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/traffic_shift.wasm";
pub const DEFAULT_NODE: &str = "traffic-shift";

/// Why `target_header` cannot be written into Envoy's formats, if so: the
/// CEL expressions quote it with `'` and the access log format is
/// delimited by `%`. (Both are valid header characters.)
pub fn unwritable_target_header(config: &Config) -> Option<String> {
    let h = &config.target_header;
    h.contains(['\'', '%']).then(|| {
        format!("target_header {h:?}: ' and % cannot be written into Envoy's CEL and access log formats")
    })
}

/// The header comment: what printed this file.
fn provenance(out: &mut String, what: &str, command: &[String]) {
    let _ = writeln!(out, "# {what}, printed by");
    let last = command.len().saturating_sub(1);
    for (i, part) in command.iter().enumerate() {
        let lead = if i == 0 { "#   " } else { "#     " };
        let cont = if i < last { " \\" } else { "" };
        let _ = writeln!(out, "{lead}{part}{cont}");
    }
}

/// A shell word for the header comment: as it is when it needs no quotes.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,[]".contains(&b));
    if plain {
        s.to_string()
    } else if s.chars().any(char::is_control) {
        format!("$'{}'", s.escape_default())
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The whole bootstrap.
pub fn bootstrap(spec: &Spec) -> String {
    let c = spec.config;
    let th = &c.target_header;
    let mut out = String::new();
    provenance(
        &mut out,
        "Envoy bootstrap for the traffic_shift filter",
        &spec.command,
    );
    let _ = write!(
        out,
        "# Change the plugin configuration or the flags and print it again rather
# than editing this file; `traffic-shift check PLUGIN.json --envoy FILE`
# lints a bootstrap edited by hand.
#
# How routing works:
# 1. early_header_mutation strips any {th} a client sent, before
#    routing and before any filter: clients can never pick a backend, even if
#    the filter is skipped.
# 2. The traffic_shift filter matches the request against its routes, hashes
#    the key and writes {th}: <cluster>. Envoy re-evaluates the
#    route after the header change.
# 3. One route per service matches on that header; the catch-all sends
#    everything else to the monolith. If the filter is ever skipped, traffic
#    fails safe to the monolith.
"
    );
    if spec.module {
        let _ = write!(
            out,
            "#
# The filter is the native dynamic module (`make module`), not the .wasm:
# Envoy loads libtraffic_shift.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH
# (e.g. ENVOY_DYNAMIC_MODULES_SEARCH_PATH=target/module envoy -c FILE). It
# runs inside Envoy with Envoy's privileges and is built for one Envoy
# version (README \"Two builds\").
"
        );
    }
    match &spec.source {
        FilterSource::Inline => {}
        FilterSource::EcdsFile(path) => {
            let _ = write!(
                out,
                "#
# The filter's configuration comes from ECDS, read from the watched file
# {path} (printed by `traffic-shift envoy
# PLUGIN.json --ecds-resource VERSION`). To change it live, write a new version next to it and rename
# it over the old one (an atomic move; editors that write in place may not
# be seen). Envoy counts it in extension_config_discovery.http_filter.
# traffic_shift.update_success (or update_rejected + config_fail when the
# filter refuses it, and the previous config keeps serving).
"
            );
        }
        FilterSource::Ads(a) => {
            let _ = write!(
                out,
                "#
# The filter's configuration comes from ECDS over gRPC (ADS), from the
# control plane at {}:{} (cluster xds), which pushes every change.
",
                a.host, a.port
            );
        }
    }
    let _ = write!(
        out,
        "node:\n  id: {node}\n  cluster: {node}\n",
        node = scalar(&spec.node)
    );
    if matches!(spec.source, FilterSource::Ads(_)) {
        out.push_str(
            "dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {cluster_name: xds}
",
        );
    }
    out.push_str(&stats_config());
    let _ = write!(
        out,
        "admin:
  address:
    {}
static_resources:
  listeners:
  - name: ingress
    address:
      {}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          # WebSocket upgrades (HTTP/1.1 Upgrade): without this Envoy refuses
          # them with 403. The filter decides once, on the upgrade request.
          upgrade_configs:
          - upgrade_type: websocket
          # WebSockets over HTTP/2 (extended CONNECT, RFC 8441): Envoy turns
          # them into HTTP/1.1 upgrades before the filters.
          http2_protocol_options: {{allow_connect: true}}
",
        spec.admin.yaml(),
        spec.listen.yaml()
    );
    out.push_str(&indent(&tracing_and_access_log(c, spec.otlp.is_some()), 10));
    let _ = write!(
        out,
        "          early_header_mutation_extensions:
          - name: strip-client-target
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: {}
          route_config:
",
        scalar(th)
    );
    out.push_str(&indent(&route_config(c), 12));
    out.push_str("          http_filters:\n          - name: traffic_shift\n");
    match &spec.source {
        FilterSource::Inline => {
            out.push_str("            typed_config:\n");
            let tc = if spec.module {
                module_typed_config(spec.config_json)
            } else {
                wasm_typed_config(c, spec.config_json, &spec.wasm)
            };
            out.push_str(&indent(&tc, 14));
        }
        FilterSource::EcdsFile(path) => {
            let dir = match path.rsplit_once('/') {
                Some(("", _)) => "/",
                Some((d, _)) => d,
                None => ".",
            };
            let _ = write!(
                out,
                "            config_discovery:
              config_source:
                path_config_source:
                  path: {}
                  watched_directory: {{path: {}}}
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
",
                scalar(path),
                scalar(dir)
            );
        }
        FilterSource::Ads(_) => out.push_str(
            "            config_discovery:
              config_source:
                ads: {}
                resource_api_version: V3
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
",
        ),
    }
    out.push_str(
        "          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
",
    );
    if let FilterSource::Ads(a) = &spec.source {
        out.push_str(&grpc_cluster(ADS_CLUSTER, a, Some("connect_timeout: 1s")));
    }
    for (name, _) in named_clusters(c) {
        if let Some((_, a)) = spec.clusters.iter().find(|(n, _)| n == name) {
            if spec.h2.iter().any(|h| h == name) {
                out.push_str(&grpc_cluster(&scalar(name), a, None));
                continue;
            }
            let _ = write!(
                out,
                "  - name: {n}
    type: {t}
    load_assignment:
      cluster_name: {n}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{{a}}}}}
",
                n = scalar(name),
                t = cluster_type(a),
                a = a.yaml()
            );
        }
    }
    if let Some(a) = &spec.otlp {
        out.push_str(&grpc_cluster(OTLP_CLUSTER, a, None));
    }
    out
}

fn cluster_type(a: &Address) -> &'static str {
    if a.is_ip() {
        "STATIC"
    } else {
        "STRICT_DNS"
    }
}

/// A cluster speaking HTTP/2 (gRPC): the xDS and OTLP clusters, and
/// `--h2` clusters.
fn grpc_cluster(name: &str, a: &Address, extra: Option<&str>) -> String {
    let extra = extra.map_or(String::new(), |e| format!("    {e}\n"));
    format!(
        "  - name: {name}
    type: {t}
{extra}    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{{a}}}}}
",
        t = cluster_type(a),
        a = a.yaml()
    )
}

/// `stats_config` with [`STATS_TAGS`] and [`GRPC_STATUS_TAG`].
fn stats_config() -> String {
    let mut out = String::from(
        "stats_config:
  # Labels for traffic-shift's stats (see README \"Metrics\"): the first
  # capture group is cut from the name, the inner one becomes the label.
  stats_tags:
",
    );
    for (name, regex) in STATS_TAGS.iter().chain([&GRPC_STATUS_TAG]) {
        // Single-quoted: backslashes stay as they are ('' is a quote).
        let _ = write!(
            out,
            "  - tag_name: {name}\n    regex: '{}'\n",
            regex.replace('\'', "''")
        );
    }
    out
}

/// The HCM's `tracing` and `access_log`: spans and log lines carry the
/// decision (the target header) and its reason (filter state
/// `wasm.shift_reason`, set only when the decision is not a split).
fn tracing_and_access_log(c: &Config, otlp: bool) -> String {
    let th = &c.target_header;
    let reason = |none: &str| {
        format!(
            "%CEL('wasm.shift_reason' in filter_state ? filter_state['wasm.shift_reason'] : ('{th}' in request.headers ? 'split' : '{none}'))%"
        )
    };
    let mut out = format!(
        "# With tracing on, Envoy by default packs the trace decision into the
# x-request-id UUID (it rewrites one hex digit of the client's id), which
# would change the hash key of every request keyed by x-request-id (the
# default): keep the id as the client or Envoy first set it.
request_id_extension:
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig
    pack_trace_reason: false
# Traces and access log lines carry the decision (README \"Tracing\"):
# the target header the filter wrote, and why. The filter publishes
# the reason as filter state wasm.shift_reason only when it is not
# a split (one host call on those requests, none on the common
# one); the CEL expression reads a request with the target header
# and no reason as \"split\", and gives nothing on requests outside
# the filter's routes (no tag).
tracing:
  custom_tags:
  - tag: traffic_shift.target
    request_header: {{name: {}}}
  - tag: traffic_shift.reason
    value: \"{}\"
",
        scalar(th),
        reason("")
    );
    if otlp {
        out.push_str(
            "  # OTLP over gRPC to the compose's OpenTelemetry collector, which
  # forwards to Jaeger (otel-collector.yaml).
  provider:
    name: envoy.tracers.opentelemetry
    typed_config:
      \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
      service_name: traffic-shift-envoy
      grpc_service:
        envoy_grpc: {cluster_name: otel_collector}
        timeout: 1s
",
        );
    }
    let _ = write!(
        out,
        "access_log:
- name: envoy.access_loggers.stdout
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
    log_format:
      text_format_source:
        inline_string: \"[%START_TIME%] \\\"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\\\" %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION% %UPSTREAM_CLUSTER% shift_target=%REQ({})% shift_reason={} request_id=%REQ(X-REQUEST-ID)%\\n\"
",
        th.to_ascii_uppercase(),
        reason("-")
    );
    out
}

/// The route configuration (`RouteConfiguration`): per service cluster a
/// route on `target_header: <service>`, then the catch-all to the monolith.
pub fn route_config(c: &Config) -> String {
    let mut out = String::from(
        "name: shift
virtual_hosts:
- name: app
  domains: [\"*\"]
  routes:
",
    );
    for (service, _) in service_clusters(c) {
        let _ = write!(
            out,
            "  - match:
      prefix: \"/\"
      headers:
      - name: {}
        string_match: {{exact: {s}}}
    route: {{cluster: {s}}}
",
            scalar(&c.target_header),
            s = scalar(service)
        );
    }
    let _ = write!(
        out,
        "  - match: {{prefix: \"/\"}}\n    route: {{cluster: {}}}\n",
        scalar(&c.monolith)
    );
    out
}

/// `--routes-only`: the route configuration alone, for a bootstrap of
/// one's own (under the HCM's `route_config`, or served by RDS).
pub fn routes_only(c: &Config, command: &[String]) -> String {
    let mut out = String::new();
    provenance(
        &mut out,
        "The route configuration of the traffic_shift filter",
        command,
    );
    let _ = write!(
        out,
        "# Put it under the HTTP connection manager's route_config (or serve it
# by RDS). The bootstrap must also strip {th} before routing
# (early_header_mutation_extensions) and define every cluster named here;
# `traffic-shift check PLUGIN.json --envoy BOOTSTRAP.yaml` checks that.
",
        th = c.target_header
    );
    out + &route_config(c)
}

/// The Wasm filter's `typed_config` (a `envoy.extensions.filters.http.wasm.v3.Wasm`).
fn wasm_typed_config(c: &Config, json: &str, wasm: &str) -> String {
    let mut out = format!(
        "\"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
config:
  name: traffic_shift
  root_id: traffic_shift
  # FAIL_OPEN: if the VM fails, Envoy skips the filter, no
  # {th} is written and every request takes the
  # catch-all route to the monolith: traffic keeps flowing to
  # the side that still has all the code.
  failure_policy: FAIL_OPEN
  vm_config:
    vm_id: traffic_shift
    runtime: envoy.wasm.runtime.v8
    code:
      local: {{filename: {}}}
  configuration:
    \"@type\": type.googleapis.com/google.protobuf.StringValue
",
        scalar(wasm),
        th = c.target_header
    );
    match literal_block(json, 6) {
        Some((indicator, lines)) => {
            let _ = write!(out, "    value: {indicator}\n{lines}");
        }
        None => {
            let _ = writeln!(out, "    value: {}", scalar(json));
        }
    }
    out
}

/// The dynamic-module filter's `typed_config` (a
/// `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`):
/// the same configuration JSON, as a `StringValue`.
fn module_typed_config(json: &str) -> String {
    let mut out = String::from(
        "\"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
dynamic_module_config: {name: traffic_shift}
filter_name: traffic_shift
filter_config:
  \"@type\": type.googleapis.com/google.protobuf.StringValue
",
    );
    match literal_block(json, 4) {
        Some((indicator, lines)) => {
            let _ = write!(out, "  value: {indicator}\n{lines}");
        }
        None => {
            let _ = writeln!(out, "  value: {}", scalar(json));
        }
    }
    out
}

/// `--ecds-resource VERSION`: the ECDS resource carrying the filter and its
/// configuration, for a bootstrap printed with `--ecds-file`.
pub fn ecds_resource(
    c: &Config,
    json: &str,
    wasm: &str,
    version: &str,
    command: &[String],
) -> String {
    let mut out = String::new();
    provenance(
        &mut out,
        "The ECDS resource of the traffic_shift filter (its configuration)",
        command,
    );
    let _ = write!(
        out,
        "# for a bootstrap printed with --ecds-file. Replace this file atomically
# (write elsewhere, then mv) to change it live; bump version_info so
# Envoy's version_text shows which one is in force.
version_info: {}
resources:
- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig
  name: traffic_shift
  typed_config:
",
        serde_json::Value::from(version)
    );
    out + &indent(&wasm_typed_config(c, json, wasm), 4)
}
