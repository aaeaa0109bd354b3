//! `traffic-shift check PLUGIN.json --envoy BOOTSTRAP.yaml`: an existing
//! Envoy bootstrap checked against a plugin configuration.
//!
//! Errors (the split cannot work as configured):
//! 1. no traffic_shift wasm filter in any HTTP connection manager;
//! 2. a service cluster without a route on `target_header: <service>` in a
//!    virtual host, or with a route before it that would catch its traffic;
//! 3. a cluster the configuration names that the bootstrap does not define;
//! 4. a missing or different `stats_tags` entry of [`STATS_TAGS`].
//!
//! Warnings (it works, with a risk the message names):
//! 5. nothing strips the target header before routing;
//! 6. a failure policy other than `FAIL_OPEN`;
//! 7. what this file does not say: routes from RDS, clusters from CDS, the
//!    filter from ECDS, a route matcher this check cannot evaluate.

// Indexing a `serde_yaml::Value` never panics: a missing key or index reads
// as `Null`.
#![allow(clippy::indexing_slicing)]

use serde_yaml::Value as Yaml;

use super::{named_clusters, service_clusters};
use crate::config::{Config, Route};
use crate::routes::PathMatch;
use crate::stats::{EARLIER_STATS_TAGS, NEWER_STATS_TAGS, STATS_TAGS};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
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

/// What an Envoy route's match does to the requests of a filter route
/// that carry `target_header: service`.
#[derive(PartialEq)]
enum Catch {
    /// Matches none of them.
    None,
    /// Matches some or all of them.
    Some,
    /// Uses a matcher this check does not evaluate (named).
    Unknown(String),
}

/// Whether Envoy route match `m` can match a request of the filter route
/// `(path, is_prefix)` carrying `header: value`. Other header matchers and
/// query parameters depend on the client: they may match.
fn catches(m: &Yaml, (path, is_prefix): (&str, bool), header: &str, value: &str) -> Catch {
    let by_path = if let Some(p) = m["prefix"].as_str() {
        path.starts_with(p) || (is_prefix && p.starts_with(path))
    } else if let Some(p) = m["path"].as_str() {
        if is_prefix {
            p.starts_with(path)
        } else {
            p == path
        }
    } else if let Some(p) = m["path_separated_prefix"].as_str() {
        path.starts_with(p) || (is_prefix && p.starts_with(path))
    } else {
        let how = ["safe_regex", "connect_matcher", "path_match_policy"]
            .into_iter()
            .find(|k| !m[*k].is_null())
            .unwrap_or("no path matcher");
        return Catch::Unknown(how.to_string());
    };
    if !by_path {
        return Catch::None;
    }
    for h in seq(&m["headers"]) {
        let name = h["name"].as_str().unwrap_or("");
        if !name.eq_ignore_ascii_case(header) {
            continue;
        }
        let invert = h["invert_match"].as_bool() == Some(true);
        let sm = &h["string_match"];
        let exact = sm["exact"].as_str().or(h["exact_match"].as_str());
        let matched = if let Some(e) = exact {
            e == value
        } else if let Some(p) = sm["prefix"].as_str().or(h["prefix_match"].as_str()) {
            value.starts_with(p)
        } else if let Some(s) = sm["suffix"].as_str().or(h["suffix_match"].as_str()) {
            value.ends_with(s)
        } else if let Some(s) = sm["contains"].as_str() {
            value.contains(s)
        } else if let Some(p) = h["present_match"].as_bool() {
            p
        } else if sm.is_null() && h["safe_regex_match"].is_null() && h["range_match"].is_null() {
            // A name alone: present.
            true
        } else {
            return Catch::Unknown(format!("a header matcher on {name}"));
        };
        if matched == invert {
            return Catch::None;
        }
    }
    Catch::Some
}

/// The route for `service`: a header match `target_header` exact `service`
/// (nothing else but the path), covering every path of the filter route,
/// to cluster `service`.
fn is_service_route(
    r: &Yaml,
    (path, is_prefix): (&str, bool),
    header: &str,
    service: &str,
) -> bool {
    let m = &r["match"];
    let covers = match (m["prefix"].as_str(), m["path"].as_str()) {
        (Some(p), _) => path.starts_with(p),
        (None, Some(p)) => !is_prefix && p == path,
        _ => false,
    };
    let headers = seq(&m["headers"]);
    let on_target = headers.len() == 1
        && headers.iter().all(|h| {
            h["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(header))
                && h["invert_match"].as_bool() != Some(true)
                && (h["string_match"]["exact"].as_str() == Some(service)
                    || h["exact_match"].as_str() == Some(service))
        });
    covers
        && on_target
        && seq(&m["query_parameters"]).is_empty()
        && r["route"]["cluster"].as_str() == Some(service)
}

/// How an Envoy route reads in a message: its path matcher and headers.
fn describe(r: &Yaml) -> String {
    let m = &r["match"];
    let path = ["prefix", "path", "path_separated_prefix"]
        .into_iter()
        .find_map(|k| m[k].as_str().map(|v| format!("{k} {v}")))
        .unwrap_or_else(|| "another path matcher".into());
    let headers: Vec<&str> = seq(&m["headers"])
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    let to = match r["route"]["cluster"].as_str() {
        Some(c) => format!(" to cluster {c}"),
        None if !r["redirect"].is_null() => " (a redirect)".into(),
        None if !r["direct_response"].is_null() => " (a direct response)".into(),
        None => String::new(),
    };
    if headers.is_empty() {
        format!("{path}{to}")
    } else {
        format!("{path}, headers {}{to}", headers.join(","))
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
        } else {
            f.error(format!("{}: no route_config", hcm.at));
        }
        return;
    }
    let th = &config.target_header;
    for vh in seq(&rc["virtual_hosts"]) {
        let vh_name = vh["name"].as_str().unwrap_or("?");
        let routes = seq(&vh["routes"]);
        for (service, first) in service_clusters(config) {
            for r in config.routes.iter().filter(|r| r.service == service) {
                let paths = route_paths(r);
                let shown = if paths.1 {
                    format!("prefix {}", paths.0)
                } else {
                    format!("path {}", paths.0)
                };
                let mut found = false;
                for (i, er) in routes.iter().enumerate() {
                    if is_service_route(er, paths, th, service) {
                        found = true;
                        break;
                    }
                    match catches(&er["match"], paths, th, service) {
                        Catch::None => {}
                        Catch::Some => {
                            f.error(format!(
                                "{}: virtual host {vh_name}: routes[{i}] ({}) matches requests of route {} ({shown}) before any route on {th}: {service}, so they never reach {service}",
                                hcm.at,
                                describe(er),
                                r.name
                            ));
                            found = true;
                            break;
                        }
                        Catch::Unknown(how) => f.warning(format!(
                            "{}: virtual host {vh_name}: routes[{i}] uses {how}, not checked: if it matches requests of route {} ({shown}) they never reach {service}",
                            hcm.at, r.name
                        )),
                    }
                }
                if !found {
                    f.error(format!(
                        "{}: virtual host {vh_name}: no route sends {th}: {service} to cluster {service} (routes[{first}].service), so route {} ({shown}) never reaches it",
                        hcm.at, r.name
                    ));
                }
            }
        }
    }
}

fn check_clusters(f: &mut Findings, b: &Yaml, config: &Config) {
    let defined: Vec<&str> = seq(&b["static_resources"]["clusters"])
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
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
            Some(t) if t["regex"].as_str() != Some(regex) => match EARLIER_STATS_TAGS
                .iter()
                .find(|(n, r, _)| n == name && t["regex"].as_str() == Some(*r))
            {
                Some((_, _, missing)) => f.warning(format!(
                    "stats_config.stats_tags: tag {name} has an earlier release's regex: {missing}; traffic-shift's stats need '{regex}'"
                )),
                None => f.error(format!(
                "stats_config.stats_tags: tag {name} has regex '{}', traffic-shift's stats need '{regex}'",
                t["regex"].as_str().unwrap_or("")
                )),
            },
            Some(_) => {}
        }
    }
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
