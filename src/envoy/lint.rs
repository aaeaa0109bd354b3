//! `traffic-shift check PLUGIN.json --envoy BOOTSTRAP.yaml`: an existing
//! Envoy bootstrap checked against a plugin configuration.
//!
//! Errors (the split cannot work as configured):
//! 1. no traffic_shift wasm filter in any HTTP connection manager;
//! 2. a service cluster without a route on `target_header: <service>` in a
//!    virtual host, or with a route before it that would catch its traffic;
//! 3. a cluster the configuration names that the bootstrap does not define;
//! 4. a missing or different `stats_tags` entry of [`STATS_TAGS`];
//! 5. a cluster name defined twice in `static_resources.clusters`.
//!
//! Warnings (it works, with a risk the message names):
//! 6. nothing strips the target header before routing;
//! 7. a failure policy other than `FAIL_OPEN`;
//! 8. what this file does not say: routes from RDS, clusters from CDS, the
//!    filter from ECDS, a route matcher this check cannot evaluate;
//! 9. an HCM that refuses WebSocket upgrades (no `upgrade_configs` entry
//!    `websocket`, and no route enabling it): Envoy answers them 403.

// Indexing a `serde_yaml::Value` never panics: a missing key or index reads
// as `Null`.
#![allow(clippy::indexing_slicing)]

use serde_yaml::Value as Yaml;

use super::{named_clusters, service_clusters};
use crate::config::{Config, Route};
use crate::routes::PathMatch;
use crate::stats::{EARLIER_STATS_TAGS, GRPC_STATUS_TAG, NEWER_STATS_TAGS, STATS_TAGS};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const MODULE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const MUTATION_TYPE: &str =
    "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, a sentence naming where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, m: String) {
        self.push(Severity::Error, m);
    }
    fn warning(&mut self, m: String) {
        self.push(Severity::Warning, m);
    }
    fn push(&mut self, severity: Severity, message: String) {
        let f = Finding { severity, message };
        if !self.0.contains(&f) {
            self.0.push(f);
        }
    }
}

/// An HTTP connection manager carrying the filter, and where it is.
struct Hcm<'a> {
    at: String,
    config: &'a Yaml,
    /// The traffic_shift HTTP filter entry.
    filter: &'a Yaml,
}

/// Every finding, errors first, in the order of the checks above.
pub fn lint(bootstrap: &Yaml, config: &Config) -> Vec<Finding> {
    let mut f = Findings(Vec::new());
    let hcms = filter_hcms(bootstrap);
    if hcms.is_empty() {
        f.error(
            "no HTTP connection manager has the traffic_shift filter (a wasm HTTP filter with root_id traffic_shift, or an http_filters entry named traffic_shift)".into(),
        );
    }
    for hcm in &hcms {
        check_routes(&mut f, hcm, config);
    }
    check_clusters(&mut f, bootstrap, config);
    check_stats_tags(&mut f, bootstrap);
    for hcm in &hcms {
        check_header_stripped(&mut f, hcm, config);
        check_failure_policy(&mut f, hcm);
        check_websocket(&mut f, hcm);
    }
    let mut all = f.0;
    all.sort_by_key(|x| x.severity == Severity::Warning);
    all
}

fn seq(y: &Yaml) -> &[Yaml] {
    y.as_sequence().map_or(&[], Vec::as_slice)
}

fn is_traffic_shift(hf: &Yaml) -> bool {
    hf["name"].as_str() == Some("traffic_shift")
        || (hf["typed_config"]["@type"].as_str() == Some(WASM_TYPE)
            && hf["typed_config"]["config"]["root_id"].as_str() == Some("traffic_shift"))
        || (hf["typed_config"]["@type"].as_str() == Some(MODULE_TYPE)
            && hf["typed_config"]["filter_name"].as_str() == Some("traffic_shift"))
}

/// Every HCM (static listeners) whose `http_filters` carry the filter.
fn filter_hcms(b: &Yaml) -> Vec<Hcm<'_>> {
    let mut out = Vec::new();
    for l in seq(&b["static_resources"]["listeners"]) {
        let name = l["name"].as_str().unwrap_or("?");
        for (ci, chain) in seq(&l["filter_chains"]).iter().enumerate() {
            for nf in seq(&chain["filters"]) {
                let tc = &nf["typed_config"];
                if tc["@type"].as_str() != Some(HCM_TYPE) {
                    continue;
                }
                if let Some(hf) = seq(&tc["http_filters"])
                    .iter()
                    .find(|hf| is_traffic_shift(hf))
                {
                    let at = if seq(&l["filter_chains"]).len() > 1 {
                        format!("listener {name} filter_chains[{ci}]")
                    } else {
                        format!("listener {name}")
                    };
                    out.push(Hcm {
                        at,
                        config: tc,
                        filter: hf,
                    });
                }
            }
        }
    }
    out
}

/// The requests of a filter route: a path prefix, or one exact path.
fn route_paths(r: &Route) -> (&str, bool) {
    match &r.matcher.path {
        PathMatch::Prefix(p) => (p.as_str(), true),
        PathMatch::Exact(p) => (p.as_str(), false),
    }
}

/// How much of the requests of a filter route that carry
/// `target_header: <service>` an Envoy route's match takes.
#[derive(Debug, PartialEq)]
enum Cover {
    None,
    /// Every one of them.
    All,
    /// Some of them (why not all, for the message).
    Some(String),
    /// A matcher this check does not evaluate (named).
    Unknown(String),
}

impl Cover {
    /// Both `self` and `other` must match (the fields of one route match).
    fn and(self, other: Cover) -> Cover {
        match (self, other) {
            (Cover::None, _) | (_, Cover::None) => Cover::None,
            (Cover::Unknown(a), _) | (_, Cover::Unknown(a)) => Cover::Unknown(a),
            (Cover::Some(a), _) | (_, Cover::Some(a)) => Cover::Some(a),
            (Cover::All, Cover::All) => Cover::All,
        }
    }

    fn of(b: bool) -> Cover {
        if b {
            Cover::All
        } else {
            Cover::None
        }
    }
}

/// The path matcher of a route match against the filter route's paths
/// (`is_prefix`: every path starting with `path`, else exactly `path`).
/// `case_sensitive: false` compares both lower-cased.
fn cover_path(m: &Yaml, (path, is_prefix): (&str, bool)) -> Cover {
    let folded = m["case_sensitive"].as_bool() == Some(false);
    let fold = |s: &str| {
        if folded {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let p = fold(path);
    if let Some(q) = m["prefix"].as_str().map(fold) {
        if p.starts_with(&q) {
            Cover::All
        } else if is_prefix && q.starts_with(&p) {
            Cover::Some(format!("only the longer prefix {q}"))
        } else {
            Cover::None
        }
    } else if let Some(q) = m["path"].as_str().map(fold) {
        if !is_prefix {
            Cover::of(p == q)
        } else if q.starts_with(&p) {
            Cover::Some(format!("only the path {q}"))
        } else {
            Cover::None
        }
    } else if let Some(q) = m["path_separated_prefix"].as_str().map(fold) {
        // `q` itself, or `q/...`.
        let segment = format!("{q}/");
        if p.starts_with(&segment) || (!is_prefix && p == q) {
            Cover::All
        } else if is_prefix && (q.starts_with(&p) || p == q) {
            Cover::Some(format!("only path_separated_prefix {q}"))
        } else {
            Cover::None
        }
    } else {
        let how = ["safe_regex", "connect_matcher", "path_match_policy"]
            .into_iter()
            .find(|k| !m[*k].is_null())
            .unwrap_or("no path matcher");
        Cover::Unknown(how.to_string())
    }
}

/// One header matcher against requests carrying `header: value` (other
/// headers depend on the client: some requests).
fn cover_header(h: &Yaml, header: &str, value: &str) -> Cover {
    let name = h["name"].as_str().unwrap_or("");
    if !name.eq_ignore_ascii_case(header) {
        return Cover::Some(format!("header {name}"));
    }
    let sm = &h["string_match"];
    let folded = sm["ignore_case"].as_bool() == Some(true);
    let fold = |s: &str| {
        if folded {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let v = fold(value);
    let matched = if let Some(e) = sm["exact"].as_str().or(h["exact_match"].as_str()) {
        v == fold(e)
    } else if let Some(p) = sm["prefix"].as_str().or(h["prefix_match"].as_str()) {
        v.starts_with(&fold(p))
    } else if let Some(x) = sm["suffix"].as_str().or(h["suffix_match"].as_str()) {
        v.ends_with(&fold(x))
    } else if let Some(x) = sm["contains"].as_str().or(h["contains_match"].as_str()) {
        v.contains(&fold(x))
    } else if let Some(p) = h["present_match"].as_bool() {
        p
    } else if sm.is_null()
        && h["safe_regex_match"].is_null()
        && h["range_match"].is_null()
        && h["string_match"].is_null()
    {
        // A name alone: present.
        true
    } else {
        return Cover::Unknown(format!("a header matcher on {name}"));
    };
    Cover::of(matched != (h["invert_match"].as_bool() == Some(true)))
}

/// What route match `m` takes of the requests of a filter route carrying
/// `header: value`: the path matcher and every other field of the match.
fn cover(m: &Yaml, paths: (&str, bool), header: &str, value: &str) -> Cover {
    let mut c = cover_path(m, paths);
    let Some(fields) = m.as_mapping() else {
        return c;
    };
    for (k, v) in fields {
        let k = k.as_str().unwrap_or("");
        let more = match k {
            "prefix"
            | "path"
            | "path_separated_prefix"
            | "case_sensitive"
            | "safe_regex"
            | "connect_matcher"
            | "path_match_policy" => continue,
            "headers" => seq(v)
                .iter()
                .fold(Cover::All, |c, h| c.and(cover_header(h, header, value))),
            "query_parameters" => match seq(v) {
                [] => Cover::All,
                [q, ..] => Cover::Some(format!(
                    "query parameter {}",
                    q["name"].as_str().unwrap_or("?")
                )),
            },
            "grpc" => Cover::Some("gRPC requests only".into()),
            "runtime_fraction" => Cover::Some("a runtime fraction".into()),
            "tls_context" => Cover::Some("tls_context".into()),
            "dynamic_metadata" if seq(v).is_empty() => Cover::All,
            "dynamic_metadata" => Cover::Some("dynamic_metadata".into()),
            "filter_state" if seq(v).is_empty() => Cover::All,
            "filter_state" => Cover::Some("filter_state".into()),
            other => Cover::Unknown(format!("the match field {other}")),
        };
        c = c.and(more);
    }
    c
}

/// Where an Envoy route sends requests carrying `header: service`.
enum Reach {
    /// To cluster `service`.
    Service,
    /// Elsewhere (a cluster, a redirect, a direct response).
    Other,
    /// Somewhere this check does not evaluate (named).
    Unknown(String),
}

fn reach(r: &Yaml, header: &str, service: &str) -> Reach {
    let a = &r["route"];
    if a.is_null() {
        return if ["redirect", "direct_response", "non_forwarding_action"]
            .iter()
            .any(|k| !r[*k].is_null())
        {
            Reach::Other
        } else {
            Reach::Unknown("an action this check does not know".into())
        };
    }
    if let Some(c) = a["cluster"].as_str() {
        return if c == service {
            Reach::Service
        } else {
            Reach::Other
        };
    }
    if let Some(h) = a["cluster_header"].as_str() {
        return if h.eq_ignore_ascii_case(header) {
            Reach::Service
        } else {
            Reach::Unknown(format!("the cluster named by header {h}"))
        };
    }
    let weighted = seq(&a["weighted_clusters"]["clusters"]);
    if !weighted.is_empty() {
        return if weighted.iter().all(|w| w["name"].as_str() == Some(service)) {
            Reach::Service
        } else {
            Reach::Other
        };
    }
    let how = [
        "cluster_specifier_plugin",
        "inline_cluster_specifier_plugin",
    ]
    .into_iter()
    .find(|k| !a[*k].is_null());
    match how {
        Some(k) => Reach::Unknown(match a[k]["cluster_specifier_plugin_name"].as_str() {
            Some(n) => format!("{k} {n}"),
            None => match a[k].as_str() {
                Some(n) => format!("{k} {n}"),
                None => k.to_string(),
            },
        }),
        None => Reach::Unknown("a route action this check does not know".into()),
    }
}

/// How an Envoy route reads in a message: its path matcher and headers.
fn describe(r: &Yaml) -> String {
    let m = &r["match"];
    let mut path = ["prefix", "path", "path_separated_prefix"]
        .into_iter()
        .find_map(|k| m[k].as_str().map(|v| format!("{k} {v}")))
        .unwrap_or_else(|| "another path matcher".into());
    if m["case_sensitive"].as_bool() == Some(false) {
        path.push_str(" case-insensitive");
    }
    let headers: Vec<&str> = seq(&m["headers"])
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    let a = &r["route"];
    let to = match (a["cluster"].as_str(), a["cluster_header"].as_str()) {
        (Some(c), _) => format!(" to cluster {c}"),
        (None, Some(h)) => format!(" to the cluster named by {h}"),
        _ if !a["weighted_clusters"].is_null() => " to weighted clusters".into(),
        _ if !r["redirect"].is_null() => " (a redirect)".into(),
        _ if !r["direct_response"].is_null() => " (a direct response)".into(),
        _ => String::new(),
    };
    if headers.is_empty() {
        format!("{path}{to}")
    } else {
        format!("{path}, headers {}{to}", headers.join(","))
    }
}

/// The route's traffic of `service` in one virtual host: walks the routes
/// in order as Envoy does (the first match wins) for the requests of
/// filter route `r` that carry `target_header: service`.
fn check_service_traffic(
    f: &mut Findings,
    at: &str,
    routes: &[Yaml],
    config: &Config,
    (r, service, first): (&Route, &str, usize),
) {
    let th = &config.target_header;
    let paths = route_paths(r);
    let shown = if paths.1 {
        format!("prefix {}", paths.0)
    } else {
        format!("path {}", paths.0)
    };
    // The first earlier route to the service that takes only some of them.
    let mut partial: Option<(usize, String)> = None;
    let mut unsure = false;
    for (i, er) in routes.iter().enumerate() {
        let c = cover(&er["match"], paths, th, service);
        match (c, reach(er, th, service)) {
            (Cover::None, _) => {}
            (Cover::All, Reach::Service) => return,
            (Cover::Some(why), Reach::Service) => {
                partial.get_or_insert((i, why));
            }
            (Cover::All | Cover::Some(_), Reach::Other) => {
                let msg = match &partial {
                    None => format!(
                        "{at}: routes[{i}] ({}) matches requests of route {} ({shown}) before any route on {th}: {service}, so they never reach {service}",
                        describe(er),
                        r.name
                    ),
                    Some((j, why)) => format!(
                        "{at}: routes[{i}] ({}) matches requests of route {} ({shown}) that routes[{j}] to {service} leaves out ({why}), so they never reach {service}",
                        describe(er),
                        r.name
                    ),
                };
                f.error(msg);
                return;
            }
            (c, Reach::Unknown(to)) => {
                f.warning(format!(
                    "{at}: routes[{i}] ({}) sends requests of route {} ({shown}) to {to}, cannot check whether they reach {service}",
                    describe(er),
                    r.name
                ));
                if c == Cover::All {
                    return;
                }
                unsure = true;
            }
            (Cover::Unknown(how), Reach::Service) => {
                f.warning(format!(
                    "{at}: routes[{i}] uses {how}, not checked: it may send only some requests of route {} ({shown}) to {service}",
                    r.name
                ));
                unsure = true;
            }
            (Cover::Unknown(how), Reach::Other) => f.warning(format!(
                "{at}: routes[{i}] uses {how}, not checked: if it matches requests of route {} ({shown}) they never reach {service}",
                r.name
            )),
        }
    }
    if unsure {
        f.warning(format!(
            "{at}: cannot check whether every request of route {} ({shown}) with {th}: {service} reaches {service}",
            r.name
        ));
        return;
    }
    match partial {
        Some((j, why)) => f.error(format!(
            "{at}: routes[{j}] sends requests of route {} ({shown}) with {th}: {service} to {service}, but {why}, and no later route takes the rest (routes[{first}].service)",
            r.name
        )),
        None => f.error(format!(
            "{at}: no route sends {th}: {service} to cluster {service} (routes[{first}].service), so route {} ({shown}) never reaches it",
            r.name
        )),
    }
}

fn check_routes(f: &mut Findings, hcm: &Hcm, config: &Config) {
    let rc = &hcm.config["route_config"];
    if rc.is_null() {
        if let Some(name) = hcm.config["rds"]["route_config_name"].as_str() {
            f.warning(format!(
                "{}: routes come from RDS (route_config_name {name}), not checked",
                hcm.at
            ));
        } else if !hcm.config["scoped_routes"].is_null() {
            f.warning(format!(
                "{}: routes come from scoped_routes, not checked",
                hcm.at
            ));
        } else {
            f.error(format!("{}: no route_config", hcm.at));
        }
        return;
    }
    let services = service_clusters(config);
    for vh in seq(&rc["virtual_hosts"]) {
        let vh_name = vh["name"].as_str().unwrap_or("?");
        let routes = seq(&vh["routes"]);
        let at = format!("{}: virtual host {vh_name}", hcm.at);
        if !vh["matcher"].is_null() {
            f.warning(format!(
                "{at}: routes by a matcher tree (matcher), not checked"
            ));
            continue;
        }
        if !serves(routes, config) {
            f.warning(format!(
                "{at}: routes to none of the configuration's clusters, not checked (if the filter's traffic comes to this virtual host, it never reaches a service)"
            ));
            continue;
        }
        for &(service, first) in &services {
            for r in config.routes.iter().filter(|r| r.service == service) {
                check_service_traffic(f, &at, routes, config, (r, service, first));
            }
        }
    }
}

/// Whether a virtual host routes to any cluster the configuration names
/// (or to the cluster a header names): one serving other sites is not
/// the filter's.
fn serves(routes: &[Yaml], config: &Config) -> bool {
    let named = named_clusters(config);
    let known = |c: Option<&str>| c.is_some_and(|c| named.iter().any(|(n, _)| *n == c));
    routes.iter().any(|r| {
        let a = &r["route"];
        known(a["cluster"].as_str())
            || !a["cluster_header"].is_null()
            || seq(&a["weighted_clusters"]["clusters"])
                .iter()
                .any(|w| known(w["name"].as_str()))
    })
}

fn check_clusters(f: &mut Findings, b: &Yaml, config: &Config) {
    let defined: Vec<&str> = seq(&b["static_resources"]["clusters"])
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, name) in defined.iter().enumerate() {
        let n = defined.iter().filter(|d| *d == name).count();
        if n > 1 && !defined[..i].contains(name) {
            f.error(format!(
                "static_resources.clusters: cluster {name} is defined {n} times (Envoy refuses the bootstrap)"
            ));
        }
    }
    let cds = !b["dynamic_resources"]["cds_config"].is_null();
    for (name, field) in named_clusters(config) {
        if defined.contains(&name) {
            continue;
        }
        if cds {
            f.warning(format!(
                "cluster {name} ({field}) is not in static_resources.clusters; it must come from CDS (not checked)"
            ));
        } else {
            f.error(format!(
                "cluster {name} ({field}) is not defined in static_resources.clusters"
            ));
        }
    }
}

fn check_stats_tags(f: &mut Findings, b: &Yaml) {
    let tags = seq(&b["stats_config"]["stats_tags"]);
    for (name, regex) in STATS_TAGS {
        match tags.iter().find(|t| t["tag_name"].as_str() == Some(name)) {
            None if NEWER_STATS_TAGS.contains(name) => f.warning(format!(
                "stats_config.stats_tags has no tag {name} (regex '{regex}'), added by a later release: traffic-shift's shadow field counters keep it in their name"
            )),
            None => f.error(format!(
                "stats_config.stats_tags has no tag {name} (regex '{regex}'): traffic-shift's stats lose that label"
            )),
            // The regex of a release before the dynamic module (the wasm
            // build's stats only) still labels the wasm build's stats.
            Some(t)
                if t["regex"].as_str() != Some(regex)
                    && t["regex"].as_str() != Some(&wasm_only(regex)) =>
            {
                match EARLIER_STATS_TAGS
                    .iter()
                    .find(|(n, r, _)| {
                        n == name && t["regex"].as_str().map(wasm_only).as_deref() == Some(*r)
                    })
                {
                    Some((_, _, missing)) => f.warning(format!(
                        "stats_config.stats_tags: tag {name} has an earlier release's regex: {missing}; traffic-shift's stats need '{regex}'"
                    )),
                    None => f.error(format!(
                        "stats_config.stats_tags: tag {name} has regex '{}', traffic-shift's stats need '{regex}'",
                        t["regex"].as_str().unwrap_or("")
                    )),
                }
            }
            Some(_) => {}
        }
    }
    check_grpc_status_tag(f, tags);
}

/// The gRPC status label came after the first release: a bootstrap
/// without it still works (gRPC counts keep the code in the stat name).
fn check_grpc_status_tag(f: &mut Findings, tags: &[Yaml]) {
    let (name, regex) = GRPC_STATUS_TAG;
    match tags.iter().find(|t| t["tag_name"].as_str() == Some(name)) {
        None => f.warning(format!(
            "stats_config.stats_tags has no tag {name} (regex '{regex}'): the counts by gRPC status of routes with grpc keep the code in the stat name (regenerate the bootstrap with traffic-shift envoy)"
        )),
        // A bootstrap printed before the dynamic module (wasm stats only)
        // still labels the wasm build's stats.
        Some(t)
            if t["regex"].as_str() != Some(regex)
                && t["regex"].as_str() != Some(&wasm_only(regex)) =>
        {
            f.warning(format!(
                "stats_config.stats_tags: tag {name} has regex '{}', traffic-shift's stats need '{regex}'",
                t["regex"].as_str().unwrap_or("")
            ))
        }
        Some(_) => {}
    }
}

/// A [`STATS_TAGS`] (or [`GRPC_STATUS_TAG`]) regex as the previous release wrote it: for the wasm
/// build's `wasmcustom.` stats only.
fn wasm_only(regex: &str) -> String {
    regex.replacen("(?:wasmcustom|dynamicmodulescustom)", "wasmcustom", 1)
}

fn check_header_stripped(f: &mut Findings, hcm: &Hcm, config: &Config) {
    let th = &config.target_header;
    let stripped = seq(&hcm.config["early_header_mutation_extensions"])
        .iter()
        .filter(|e| e["typed_config"]["@type"].as_str() == Some(MUTATION_TYPE))
        .flat_map(|e| seq(&e["typed_config"]["mutations"]))
        .any(|m| {
            m["remove"]
                .as_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(th))
        });
    if !stripped {
        f.warning(format!(
            "{}: nothing removes {th} before routing (early_header_mutation_extensions with a HeaderMutation `remove: {th}`): the filter replaces a client's copy whenever it runs, but when it is skipped (a failed VM with FAIL_OPEN) a client sending {th}: <service> picks the backend itself",
            hcm.at
        ));
    }
}

fn check_failure_policy(f: &mut Findings, hcm: &Hcm) {
    let tc = &hcm.filter["typed_config"];
    if tc.is_null() {
        if !hcm.filter["config_discovery"].is_null() {
            f.warning(format!(
                "{}: the traffic_shift filter comes from ECDS (config_discovery): its failure_policy is in the ECDS resource, not checked",
                hcm.at
            ));
        }
        return;
    }
    // The dynamic module has no failure policy: it catches its own panics
    // and lets the request go on.
    if tc["@type"].as_str() == Some(MODULE_TYPE) {
        return;
    }
    let c = &tc["config"];
    let policy = c["failure_policy"].as_str();
    let fail_open = c["fail_open"].as_bool() == Some(true);
    let what = match (policy, fail_open) {
        (Some("FAIL_OPEN"), _) => return,
        (None | Some("UNSPECIFIED"), true) => {
            f.warning(format!(
                "{}: the traffic_shift filter sets the deprecated fail_open: true; use failure_policy: FAIL_OPEN",
                hcm.at
            ));
            return;
        }
        (Some("FAIL_RELOAD"), _) => "FAIL_RELOAD: after a VM failure, requests get 503 until Envoy has reloaded the VM (a backoff from 1 s)",
        (Some(p), _) if p != "FAIL_CLOSED" && p != "UNSPECIFIED" => {
            f.warning(format!(
                "{}: the traffic_shift filter's failure_policy {p} is not one this check knows; FAIL_OPEN sends traffic to the monolith when the VM fails",
                hcm.at
            ));
            return;
        }
        _ => "FAIL_CLOSED (the default): once its VM fails, every later request on this listener gets 503",
    };
    f.warning(format!(
        "{}: the traffic_shift filter's failure_policy is {what}; with FAIL_OPEN Envoy skips the filter and the catch-all route sends traffic to the monolith",
        hcm.at
    ));
}

/// Whether `upgrade_configs` (an HCM's or a route's) has a `websocket`
/// entry, and whether it enables or refuses it (`enabled` defaults to
/// true). Envoy compares upgrade types case-insensitively.
fn websocket_upgrade(upgrade_configs: &Yaml) -> Option<bool> {
    seq(upgrade_configs)
        .iter()
        .find(|u| {
            u["upgrade_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
        })
        .map(|u| u["enabled"].as_bool() != Some(false))
}

/// Warning 9: WebSocket upgrades refused. Envoy allows an upgrade when the
/// HCM enables it and the route does not refuse it, or when the route
/// enables it itself; an inline route table with a route enabling it is
/// taken as intended. Routes from RDS are not read (warning 8 says so).
fn check_websocket(f: &mut Findings, hcm: &Hcm) {
    if websocket_upgrade(&hcm.config["upgrade_configs"]) == Some(true) {
        return;
    }
    let route_enables = seq(&hcm.config["route_config"]["virtual_hosts"])
        .iter()
        .flat_map(|vh| seq(&vh["routes"]))
        .any(|r| websocket_upgrade(&r["route"]["upgrade_configs"]) == Some(true));
    if route_enables || !hcm.config["rds"].is_null() {
        return;
    }
    f.warning(format!(
        "{}: the HTTP connection manager refuses WebSocket upgrades (Envoy answers them 403): add upgrade_configs: [{{upgrade_type: websocket}}] to let them through; the filter splits them like any request",
        hcm.at
    ));
}
