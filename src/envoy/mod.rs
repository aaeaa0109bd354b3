//! The Envoy side of a plugin configuration, for the native CLI (never in
//! the wasm build): [`bootstrap`] prints the bootstrap (or just the route
//! configuration, or the ECDS resource) a configuration needs, and [`lint`]
//! checks an existing bootstrap against a configuration.
//!
//! What a bootstrap needs, and both modules agree on:
//! 1. the HTTP connection manager removes the target header before routing
//!    (`early_header_mutation_extensions`), so a client never picks a
//!    backend, even when the filter is skipped;
//! 2. the traffic_shift wasm filter, `FAIL_OPEN`, before the router;
//! 3. per service cluster a route matching `target_header: <service>`, and
//!    no route before it that would catch that traffic; then the catch-all
//!    to the monolith;
//! 4. every cluster the configuration names ([`named_clusters`]);
//! 5. the `stats_tags` of [`crate::stats::STATS_TAGS`].

pub mod bootstrap;
pub mod lint;
mod yaml;

use crate::config::Config;

/// Every Envoy cluster the configuration sends traffic to, once each, in
/// the order it names them, with the field that names it first.
pub fn named_clusters(config: &Config) -> Vec<(&str, String)> {
    let mut out: Vec<(&str, String)> = vec![(config.monolith.as_str(), "monolith".into())];
    for (i, r) in config.routes.iter().enumerate() {
        if !out.iter().any(|(c, _)| *c == r.service) {
            out.push((r.service.as_str(), format!("routes[{i}].service")));
        }
    }
    out
}

/// The service clusters (every named cluster but the monolith), each with
/// the index of the first route sending traffic to it.
pub fn service_clusters(config: &Config) -> Vec<(&str, usize)> {
    let mut out: Vec<(&str, usize)> = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if r.service != config.monolith && !out.iter().any(|(c, _)| *c == r.service) {
            out.push((r.service.as_str(), i));
        }
    }
    out
}
