//! Plugin configuration: JSON bytes in, a validated [`Config`] out.
//!
//! Parse, don't validate: once [`Config::from_json`] returns `Ok`, every
//! invariant the filter relies on holds. On failure it returns every error it
//! found, each naming the field path and the reason, e.g.
//! `routes[1].percent: must be between 0 and 100, got 140`.
//! Unknown fields are errors: a typo must never pass silently.

use std::collections::HashMap;
use std::fmt;

use crate::breaker::{self, OnOpen};
use crate::grpc;
use crate::guard;
use crate::hash;
use crate::ramp::{self, Step};
use crate::routes::{Matcher, PathMatch, RouteTable};
use crate::shadow;

pub mod json;

use json::{Json, ReadError};

/// Default request header carrying the chosen cluster.
pub const DEFAULT_TARGET_HEADER: &str = "x-shift-target";
/// Default hash key: Envoy sets `x-request-id` on every request.
pub const DEFAULT_KEY_HEADER: &str = "x-request-id";
/// Longest route name (route names become stat name segments).
pub const MAX_NAME_LEN: usize = 64;

/// Where a request's hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (name stored lowercase).
    Header(String),
    /// A cookie of the `cookie` request header.
    Cookie(String),
}

/// Which side a request goes to (defined with the decision, so that core
/// modules the configuration imports need not import the configuration).
pub use crate::decision::Target;

/// One validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    /// Envoy cluster of the new service.
    pub service: String,
    /// Share sent to the service, in basis points (percent × 100, 0..=10000).
    pub basis_points: u16,
    pub salt: String,
    /// The route's own key, or the configuration's default.
    pub hash_key: HashKey,
    /// Local outlier detection for the service; `None`: off.
    pub outlier: Option<breaker::Settings>,
    /// Scheduled percent changes, sorted by time (may be empty).
    pub ramp: Vec<Step>,
    /// Rollback when the service does worse than the monolith; `None`: off.
    pub guard: Option<guard::Settings>,
    /// Shadow compare against the side not chosen; `None`: off.
    pub shadow: Option<shadow::Settings>,
    /// The route carries gRPC: its failure codes, stats by `grpc-status`.
    /// `None`: gRPC requests on it still fail by
    /// [`grpc::DEFAULT_FAILURES`], without stats by code.
    pub grpc: Option<grpc::Settings>,
}

/// The QA override: a request carrying `header: service|monolith` (and,
/// with a secret, `<header>-secret: <secret>`) is routed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Lowercase.
    pub header: String,
    /// `<header>-secret`, lowercase.
    pub secret_header: String,
    pub secret: Option<String>,
}

impl Route {
    /// The share in force at `now_ms` (the ramp's step, else `percent`).
    pub fn basis_points_at(&self, now_ms: u64) -> u16 {
        ramp::basis_points_at(self.basis_points, &self.ramp, now_ms)
    }

    /// The side a request with this key goes to at `basis_points`.
    pub fn decide_at(&self, key: Option<&[u8]>, basis_points: u16) -> Target {
        match key {
            Some(k) if !k.is_empty() => {
                if hash::shifted(hash::bucket(self.salt.as_bytes(), k), basis_points) {
                    Target::Service
                } else {
                    Target::Monolith
                }
            }
            _ => Target::Monolith,
        }
    }

    /// The shared-data key of this route's breaker state, if it has one.
    /// It depends on the route's name and service only: a configuration
    /// update that changes the percent, the ramp or any outlier setting
    /// keeps the state (a breaker open during an incident stays open while
    /// its settings are tuned), a new service starts a fresh breaker, and
    /// the number of keys stays bounded by distinct (name, service) pairs.
    ///
    /// This was the key up to issue 20; the filter now keeps the state under
    /// [`Route::breaker_key_in`] and reads this one only to inherit an
    /// earlier release's state.
    pub fn breaker_key(&self) -> Option<String> {
        self.outlier.as_ref()?;
        let id = hash::fnv64(format!("{}|{}", self.name, self.service).as_bytes());
        Some(format!("traffic_shift.breaker.{}.{id:016x}", self.name))
    }

    /// The shared-data key of this route's breaker in the filter
    /// [`Config::filter_identity`] names, if it has one: it depends on the
    /// filter and on the route's name, service and path, so two filters
    /// with one plugin name in one VM keep separate breakers unless they
    /// send the same requests (same path, monolith and target header) to
    /// the same service; a configuration update that changes the percent,
    /// the ramp, the salt or any outlier setting keeps the state.
    pub fn breaker_key_in(&self, filter: u64) -> Option<String> {
        self.outlier.as_ref()?;
        let path = match &self.matcher.path {
            PathMatch::Prefix(p) => format!("prefix:{p}"),
            PathMatch::Exact(p) => format!("path:{p}"),
        };
        let id =
            hash::fnv64(format!("{filter:016x}|{}|{}|{path}", self.name, self.service).as_bytes());
        Some(format!("traffic_shift.breaker.{}.{id:016x}", self.name))
    }

    /// The shared-data key of this route's guard, if it has one. It
    /// changes with the route's service, percent, ramp, salt or guard
    /// settings (epoch included): such a configuration clears a trip; any
    /// other update (another route, the hash key, the outlier settings)
    /// keeps it.
    pub fn guard_key(&self) -> Option<String> {
        let g = self.guard.as_ref()?;
        // Floats by their bits: formatting them would add float printing
        // to the .wasm.
        let id = hash::fnv64(
            format!(
                "{}|{}|{}|{:?}|{}|{}|{}|{}|{}|{}|{}{}",
                self.name,
                self.service,
                self.basis_points,
                self.ramp,
                self.salt,
                g.window_s,
                g.min_requests,
                g.max_error_rate_increase.to_bits(),
                g.confidence.to_bits(),
                g.max_latency_ratio.map_or(0, f64::to_bits),
                g.epoch,
                // Absent from keys written before fleet_size existed.
                match g.fleet_size {
                    1 => String::new(),
                    n => format!("|{n}"),
                }
            )
            .as_bytes(),
        );
        Some(format!("traffic_shift.guard.{}.{id:016x}", self.name))
    }

    /// The side a request with this key goes to at the route's `percent`.
    /// A missing (or empty) key goes to the monolith.
    pub fn decide(&self, key: Option<&[u8]>) -> Target {
        self.decide_at(key, self.basis_points)
    }
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Envoy cluster of the monolith.
    pub monolith: String,
    /// Request header the filter writes with the chosen cluster (lowercase).
    pub target_header: String,
    pub routes: Vec<Route>,
    /// The QA override header, if configured.
    pub override_header: Option<Override>,
    table: RouteTable,
}

impl Config {
    /// The first route matching `method` and `path`, with its index.
    pub fn route(&self, method: &[u8], path: &[u8]) -> Option<(usize, &Route)> {
        let i = self.table.find(method, path)?;
        self.routes.get(i).map(|r| (i, r))
    }

    /// The Envoy cluster name for `target` on `route`.
    pub fn cluster<'a>(&'a self, route: &'a Route, target: Target) -> &'a str {
        match target {
            Target::Service => &route.service,
            Target::Monolith => &self.monolith,
        }
    }

    /// Which filter of a VM this configuration belongs to, as far as
    /// anything stable across its updates tells: the plugin name and
    /// root_id Envoy gives (a root context can read no listener property),
    /// the monolith and the target header. Several filters with one plugin
    /// name in one VM are told apart by the rest of the breaker key
    /// ([`Route::breaker_key_in`]).
    pub fn filter_identity(&self, plugin: &str, root_id: &str) -> u64 {
        hash::fnv64(
            format!(
                "{plugin}|{root_id}|{}|{}",
                self.monolith, self.target_header
            )
            .as_bytes(),
        )
    }

    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let mut errs = Errors::default();
        let value = match json::read(bytes) {
            Ok(v) => v,
            Err(ReadError::Syntax(e)) => {
                errs.push("configuration", format!("invalid JSON: {e}"));
                return Err(ConfigErrors(errs.0));
            }
            // Which of two values was meant is anyone's guess: refuse before
            // reading either.
            Err(ReadError::DuplicateKeys(paths)) => {
                for path in paths {
                    errs.push(path, "duplicate key");
                }
                return Err(ConfigErrors(errs.0));
            }
        };
        let config = parse_config(&value, &mut errs);
        match config {
            Some(c) if errs.0.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errs.0)),
        }
    }
}

/// The target a request's override headers force, if valid: `force` is
/// `service` or `monolith`, and when a secret is configured `secret` must
/// equal it (compared in constant time for equal lengths).
pub fn forced_target(o: &Override, force: &[u8], secret: Option<&[u8]>) -> Option<Target> {
    if let Some(want) = &o.secret {
        if !constant_time_eq(want.as_bytes(), secret?) {
            return None;
        }
    }
    match force {
        b"service" => Some(Target::Service),
        b"monolith" => Some(Target::Monolith),
        _ => None,
    }
}

/// Byte equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One configuration error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Every error found in a configuration, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The messages, one per error.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.0 {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A JSON object being read field by field, with its path for errors.
struct Obj<'a> {
    path: String,
    members: &'a [(String, Json)],
}

impl<'a> Obj<'a> {
    /// `v` as an object whose keys are all in `allowed`; reports the type
    /// error or each unknown key.
    fn new(v: &'a Json, path: &str, allowed: &[&str], errs: &mut Errors) -> Option<Obj<'a>> {
        let Json::Object(members) = v else {
            let at = if path.is_empty() {
                "configuration"
            } else {
                path
            };
            errs.push(at, format!("must be an object, got {}", v.kind()));
            return None;
        };
        for (key, _) in members {
            if !allowed.contains(&key.as_str()) {
                errs.push(
                    field_path(path, key),
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Some(Obj {
            path: path.to_string(),
            members,
        })
    }

    fn path(&self, key: &str) -> String {
        field_path(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Json> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn string(&self, key: &str, errs: &mut Errors) -> Option<&'a str> {
        match self.get(key)? {
            Json::String(s) => Some(s),
            other => {
                errs.push(
                    self.path(key),
                    format!("must be a string, got {}", other.kind()),
                );
                None
            }
        }
    }

    fn required_string(&self, key: &str, errs: &mut Errors) -> Option<&'a str> {
        if self.get(key).is_none() {
            errs.push(self.path(key), "is required");
            return None;
        }
        self.string(key, errs)
    }
}

fn parse_config(v: &Json, errs: &mut Errors) -> Option<Config> {
    let obj = Obj::new(
        v,
        "",
        &[
            "monolith",
            "target_header",
            "hash_key",
            "routes",
            "override",
        ],
        errs,
    )?;

    let monolith = obj
        .required_string("monolith", errs)
        .and_then(|s| cluster_name(s, &obj.path("monolith"), errs));
    let target_header = match obj.string("target_header", errs) {
        Some(h) => owned_header_name(h, &obj.path("target_header"), errs),
        None if obj.get("target_header").is_none() => Some(DEFAULT_TARGET_HEADER.to_string()),
        None => None,
    };
    // Every hash_key.header set, with its field path.
    let mut key_headers: Vec<(String, String)> = Vec::new();
    let default_key = match obj.get("hash_key") {
        Some(k) => parse_hash_key(k, &obj.path("hash_key"), &mut key_headers, errs),
        None => Some(HashKey::Header(DEFAULT_KEY_HEADER.to_string())),
    };

    let mut routes = Vec::new();
    match obj.get("routes") {
        None => {}
        Some(Json::Array(items)) => {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("{}[{i}]", obj.path("routes"));
                let route = parse_route(item, &path, default_key.as_ref(), &mut key_headers, errs);
                if let Some(route) = route {
                    routes.push(route);
                }
                if let Some(Json::String(name)) = item.get("name") {
                    if let Some(first) = seen.get(name.as_str()) {
                        errs.push(
                            format!("{path}.name"),
                            format!(
                                "duplicate route name \"{name}\" (first used by routes[{first}])"
                            ),
                        );
                    } else {
                        seen.insert(name, i);
                    }
                }
            }
        }
        Some(other) => errs.push(
            obj.path("routes"),
            format!("must be an array, got {}", other.kind()),
        ),
    }

    let override_header = match obj.get("override") {
        None => Some(None),
        Some(o) => parse_override(o, &obj.path("override"), errs).map(Some),
    };
    header_collisions(
        target_header.as_deref(),
        &key_headers,
        override_header.as_ref().and_then(Option::as_ref),
        errs,
    );

    let table = RouteTable::new(routes.iter().map(|r| r.matcher.clone()).collect());
    Some(Config {
        monolith: monolith?,
        target_header: target_header?,
        routes,
        override_header: override_header?,
        table,
    })
}

fn parse_override(v: &Json, path: &str, errs: &mut Errors) -> Option<Override> {
    let obj = Obj::new(v, path, &["header", "secret"], errs)?;
    let header = obj
        .required_string("header", errs)
        .and_then(|h| owned_header_name(h, &obj.path("header"), errs));
    let secret = match obj.string("secret", errs) {
        Some("") => {
            errs.push(
                obj.path("secret"),
                "must not be empty (leave it out for no secret)",
            );
            None
        }
        Some(s) => Some(Some(s.to_string())),
        None if obj.get("secret").is_none() => Some(None),
        None => None,
    };
    let header = header?;
    Some(Override {
        secret_header: format!("{header}-secret"),
        header,
        secret: secret?,
    })
}

/// `key_headers` collects a header key with its field path (for
/// [`header_collisions`]).
fn parse_hash_key(
    v: &Json,
    path: &str,
    key_headers: &mut Vec<(String, String)>,
    errs: &mut Errors,
) -> Option<HashKey> {
    let obj = Obj::new(v, path, &["header", "cookie"], errs)?;
    let header = obj.string("header", errs);
    let cookie = obj.string("cookie", errs);
    match (obj.get("header"), obj.get("cookie")) {
        (Some(_), Some(_)) => {
            errs.push(
                path,
                "exactly one of header or cookie is required, got both",
            );
            None
        }
        (None, None) => {
            errs.push(
                path,
                "exactly one of header or cookie is required, got neither",
            );
            None
        }
        (Some(_), None) => {
            let at = obj.path("header");
            let name = header_name(header?, &at, errs)?;
            // A header key is the whole header's value: all the cookies.
            if name == "cookie" {
                errs.push(
                    at,
                    format!(
                        "must not be \"cookie\" (to hash on a cookie, set {} to its name)",
                        obj.path("cookie")
                    ),
                );
                return None;
            }
            key_headers.push((at, name.clone()));
            Some(HashKey::Header(name))
        }
        (None, Some(_)) => {
            let name = cookie?;
            if name.is_empty() || !name.bytes().all(is_tchar) {
                errs.push(
                    obj.path("cookie"),
                    format!("must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got \"{name}\""),
                );
                return None;
            }
            Some(HashKey::Cookie(name.to_string()))
        }
    }
}

fn parse_route(
    v: &Json,
    path: &str,
    default_key: Option<&HashKey>,
    key_headers: &mut Vec<(String, String)>,
    errs: &mut Errors,
) -> Option<Route> {
    let obj = Obj::new(
        v,
        path,
        &[
            "name", "prefix", "path", "methods", "service", "percent", "salt", "hash_key",
            "outlier", "ramp", "guard", "shadow", "grpc",
        ],
        errs,
    )?;

    let name = obj.required_string("name", errs).and_then(|n| {
        let ok = (1..=MAX_NAME_LEN).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            errs.push(
                obj.path("name"),
                format!("must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ -, got \"{n}\""),
            );
        }
        ok.then(|| n.to_string())
    });

    let prefix = obj.string("prefix", errs);
    let exact = obj.string("path", errs);
    let path_match = match (obj.get("prefix"), obj.get("path")) {
        (Some(_), Some(_)) => {
            errs.push(path, "exactly one of prefix or path is required, got both");
            None
        }
        (None, None) => {
            errs.push(
                path,
                "exactly one of prefix or path is required, got neither",
            );
            None
        }
        (Some(_), None) => {
            url_path(prefix?, &obj.path("prefix"), errs).map(|p| PathMatch::Prefix(p.into()))
        }
        (None, Some(_)) => {
            url_path(exact?, &obj.path("path"), errs).map(|p| PathMatch::Exact(p.into()))
        }
    };

    let methods = match obj.get("methods") {
        None => Some(None),
        Some(m) => parse_methods(m, &obj.path("methods"), errs).map(Some),
    };

    let service = obj
        .required_string("service", errs)
        .and_then(|s| cluster_name(s, &obj.path("service"), errs));

    let basis_points = match obj.get("percent") {
        None => {
            errs.push(obj.path("percent"), "is required");
            None
        }
        Some(p) => parse_percent(p, &obj.path("percent"), errs),
    };

    let salt = obj.string("salt", errs).map(str::to_string);
    let salt = match (salt, obj.get("salt")) {
        (Some(s), _) => Some(s),
        (None, None) => Some(String::new()),
        (None, Some(_)) => None,
    };

    let hash_key = match obj.get("hash_key") {
        Some(k) => parse_hash_key(k, &obj.path("hash_key"), key_headers, errs),
        None => default_key.cloned(),
    };

    let outlier = match obj.get("outlier") {
        None => Some(None),
        Some(o) => parse_outlier(o, &obj.path("outlier"), errs).map(Some),
    };

    let ramp = match obj.get("ramp") {
        None => Some(Vec::new()),
        Some(r) => parse_ramp(r, &obj.path("ramp"), errs),
    };

    let guard = match obj.get("guard") {
        None => Some(None),
        Some(g) => parse_guard(g, &obj.path("guard"), errs).map(Some),
    };

    let shadow = match obj.get("shadow") {
        None => Some(None),
        Some(s) => parse_shadow(s, &obj.path("shadow"), errs).map(Some),
    };

    let grpc = match obj.get("grpc") {
        None => Some(None),
        Some(g) => parse_grpc(g, &obj.path("grpc"), errs).map(Some),
    };

    Some(Route {
        grpc: grpc?,
        shadow: shadow?,
        guard: guard?,
        ramp: ramp?,
        outlier: outlier?,
        name: name?,
        matcher: Matcher {
            path: path_match?,
            methods: methods?,
        },
        service: service?,
        basis_points: basis_points?,
        salt: salt?,
        hash_key: hash_key?,
    })
}

/// `v` as a non-empty array; `when_empty` completes "must not be empty".
fn non_empty_array<'a>(
    v: &'a Json,
    path: &str,
    when_empty: &str,
    errs: &mut Errors,
) -> Option<&'a Vec<Json>> {
    match v {
        Json::Array(items) if items.is_empty() => {
            errs.push(path, format!("must not be empty ({when_empty})"));
            None
        }
        Json::Array(items) => Some(items),
        other => {
            errs.push(path, format!("must be an array, got {}", other.kind()));
            None
        }
    }
}

fn parse_ramp(v: &Json, path: &str, errs: &mut Errors) -> Option<Vec<Step>> {
    let items = non_empty_array(v, path, "leave it out for a fixed percent", errs)?;
    let mut steps: Vec<Step> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let at_path = format!("{path}[{i}]");
        let Some(obj) = Obj::new(item, &at_path, &["at", "percent"], errs) else {
            ok = false;
            continue;
        };
        let at = obj.required_string("at", errs).and_then(|t| {
            let ms = ramp::parse_rfc3339_utc(t);
            if ms.is_none() {
                errs.push(
                    obj.path("at"),
                    format!(
                        "must be an RFC 3339 UTC time such as 2026-12-01T09:00:00Z, got \"{t}\""
                    ),
                );
            }
            ms
        });
        let bp = match obj.get("percent") {
            None => {
                errs.push(obj.path("percent"), "is required");
                None
            }
            Some(p) => parse_percent(p, &obj.path("percent"), errs),
        };
        match (at, bp) {
            (Some(at_ms), Some(basis_points)) => {
                if let Some(prev) = steps.last().filter(|p| p.at_ms >= at_ms) {
                    errs.push(
                        obj.path("at"),
                        format!(
                            "must be later than the step before it ({})",
                            ramp::format_rfc3339_utc(prev.at_ms)
                        ),
                    );
                    ok = false;
                }
                steps.push(Step {
                    at_ms,
                    basis_points,
                });
            }
            _ => ok = false,
        }
    }
    ok.then_some(steps)
}

/// Longest ejection or window accepted: one day.
const MAX_MS: u64 = 86_400_000;

/// An optional integer field in `min..=max`: `Some(None)` when absent,
/// `None` (error reported) when invalid.
fn uint(obj: &Obj<'_>, key: &str, min: u64, max: u64, errs: &mut Errors) -> Option<Option<u64>> {
    let Some(v) = obj.get(key) else {
        return Some(None);
    };
    match v.as_u64().filter(|n| (min..=max).contains(n)) {
        Some(n) => Some(Some(n)),
        None => {
            errs.push(
                obj.path(key),
                format!("must be an integer between {min} and {max}, got {v}"),
            );
            None
        }
    }
}

fn parse_outlier(v: &Json, path: &str, errs: &mut Errors) -> Option<breaker::Settings> {
    let obj = Obj::new(
        v,
        path,
        &[
            "consecutive_failures",
            "failure_rate",
            "failure_statuses",
            "base_ejection_ms",
            "max_ejection_ms",
            "half_open_probes",
            "on_open",
        ],
        errs,
    )?;
    let d = breaker::Settings::default();
    let consecutive = uint(&obj, "consecutive_failures", 0, 1_000_000, errs);
    let base = uint(&obj, "base_ejection_ms", 1, MAX_MS, errs);
    let max = uint(&obj, "max_ejection_ms", 1, MAX_MS, errs);
    let probes = uint(&obj, "half_open_probes", 1, 1_000, errs);

    let failure_rate = match obj.get("failure_rate") {
        None => Some(None),
        Some(fr) => {
            let fpath = obj.path("failure_rate");
            Obj::new(
                fr,
                &fpath,
                &["threshold_percent", "min_requests", "window_ms"],
                errs,
            )
            .and_then(|f| {
                let threshold = uint(&f, "threshold_percent", 1, 100, errs);
                let min_requests = uint(&f, "min_requests", 1, 1_000_000, errs);
                let window = uint(&f, "window_ms", 10, MAX_MS, errs);
                Some(Some(breaker::FailureRate {
                    threshold_percent: threshold?.unwrap_or(50) as u32,
                    min_requests: min_requests?.unwrap_or(20) as u32,
                    window_ms: window?.unwrap_or(10_000),
                }))
            })
        }
    };

    let statuses = match obj.get("failure_statuses") {
        None => Some(d.failure_statuses.clone()),
        Some(Json::Array(items)) if items.is_empty() => {
            errs.push(
                obj.path("failure_statuses"),
                "must not be empty (set consecutive_failures to 0 and leave out failure_rate to count only proxy failures)",
            );
            None
        }
        Some(Json::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_u64().filter(|n| (500..=599).contains(n)) {
                    Some(n) => out.push(n as u16),
                    None => errs.push(
                        format!("{}[{i}]", obj.path("failure_statuses")),
                        format!("must be a 5xx status code (500 to 599), got {item}"),
                    ),
                }
            }
            (out.len() == items.len()).then_some(out)
        }
        Some(other) => {
            errs.push(
                obj.path("failure_statuses"),
                format!("must be an array, got {}", other.kind()),
            );
            None
        }
    };

    let on_open = match obj.string("on_open", errs) {
        None if obj.get("on_open").is_none() => Some(OnOpen::Fallback),
        None => None,
        Some("fallback") => Some(OnOpen::Fallback),
        Some("reject") => Some(OnOpen::Reject),
        Some(other) => {
            errs.push(
                obj.path("on_open"),
                format!("must be \"fallback\" or \"reject\", got \"{other}\""),
            );
            None
        }
    };

    let base_ms = base?.unwrap_or(d.base_ejection_ms);
    let max_ms = max?.unwrap_or(d.max_ejection_ms.max(base_ms));
    if max_ms < base_ms {
        errs.push(
            obj.path("max_ejection_ms"),
            format!("must not be less than base_ejection_ms ({base_ms}), got {max_ms}"),
        );
        return None;
    }
    Some(breaker::Settings {
        consecutive_failures: consecutive?.map_or(d.consecutive_failures, |n| n as u32),
        failure_rate: failure_rate?,
        failure_statuses: statuses?,
        base_ejection_ms: base_ms,
        max_ejection_ms: max_ms,
        half_open_probes: probes?.map_or(d.half_open_probes, |n| n as u32),
        on_open: on_open?,
    })
}

/// An optional number field: `Some(None)` when absent, `None` (error
/// reported) when not a number or outside what `ok` accepts (`range` names
/// the accepted values in the message). Any JSON spelling of a number
/// (`0.95`, `9.5e-1`) is judged by its value, as every numeric field is.
fn number(
    obj: &Obj<'_>,
    key: &str,
    ok: impl Fn(f64) -> bool,
    range: &str,
    errs: &mut Errors,
) -> Option<Option<f64>> {
    let Some(v) = obj.get(key) else {
        return Some(None);
    };
    match v.as_f64().filter(|n| n.is_finite() && ok(*n)) {
        Some(n) => Some(Some(n)),
        None => {
            errs.push(obj.path(key), format!("must be a number {range}, got {v}"));
            None
        }
    }
}

fn parse_guard(v: &Json, path: &str, errs: &mut Errors) -> Option<guard::Settings> {
    let obj = Obj::new(
        v,
        path,
        &[
            "window_s",
            "min_requests",
            "max_error_rate_increase",
            "confidence",
            "max_latency_ratio",
            "fleet_size",
            "epoch",
        ],
        errs,
    )?;
    let d = guard::Settings::default();
    let window_s = uint(&obj, "window_s", 5, 600, errs);
    let min_requests = uint(&obj, "min_requests", 1, 1_000_000, errs);
    let increase = number(
        &obj,
        "max_error_rate_increase",
        |n| (0.0..=1.0).contains(&n),
        "between 0 and 1",
        errs,
    );
    let confidence = number(
        &obj,
        "confidence",
        |n| (0.5..1.0).contains(&n),
        "from 0.5 to below 1",
        errs,
    );
    let ratio = number(
        &obj,
        "max_latency_ratio",
        // Above 1, as an earlier release accepted; below
        // guard::MIN_LATENCY_RATIO (one latency bucket) it is judged as that.
        |n| n > 1.0 && n <= 100.0,
        "above 1 and at most 100",
        errs,
    );
    let fleet_size = uint(&obj, "fleet_size", 1, 100_000, errs);
    let epoch = uint(&obj, "epoch", 0, u64::from(u32::MAX), errs);
    Some(guard::Settings {
        window_s: window_s?.map_or(d.window_s, |n| n as u32),
        min_requests: min_requests?.map_or(d.min_requests, |n| n as u32),
        max_error_rate_increase: increase?.unwrap_or(d.max_error_rate_increase),
        confidence: confidence?.unwrap_or(d.confidence),
        max_latency_ratio: ratio?,
        fleet_size: fleet_size?.map_or(d.fleet_size, |n| n as u32),
        epoch: epoch?.unwrap_or(d.epoch),
    })
}

fn parse_grpc(v: &Json, path: &str, errs: &mut Errors) -> Option<grpc::Settings> {
    let obj = Obj::new(v, path, &["failure_codes"], errs)?;
    let Some(codes) = obj.get("failure_codes") else {
        return Some(grpc::Settings::default());
    };
    let path = obj.path("failure_codes");
    let Json::Array(items) = codes else {
        errs.push(path, format!("must be an array, got {}", codes.kind()));
        return None;
    };
    let mut set = grpc::Codes::EMPTY;
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item {
            Json::String(name) if grpc::code(name).is_some_and(|c| c > 0) => {
                set = set.with(grpc::code(name).unwrap_or(0));
            }
            _ => {
                ok = false;
                let got = match item {
                    Json::String(name) => format!("\"{name}\""),
                    other => other.kind().to_string(),
                };
                errs.push(
                    format!("{path}[{i}]"),
                    format!(
                        "must be a gRPC status name other than OK ({}), got {got}",
                        grpc::NAMES.get(1..).unwrap_or_default().join(", ")
                    ),
                );
            }
        }
    }
    ok.then_some(grpc::Settings { failures: set })
}

fn parse_shadow(v: &Json, path: &str, errs: &mut Errors) -> Option<shadow::Settings> {
    let obj = Obj::new(
        v,
        path,
        &[
            "percent",
            "methods",
            "compare_headers",
            "compare_body",
            "ignore_fields",
            "noise_percent",
            "log_values",
            "timeout_ms",
            "max_body_bytes",
            "max_in_flight",
        ],
        errs,
    )?;
    let basis_points = match obj.get("percent") {
        None => {
            errs.push(obj.path("percent"), "is required");
            None
        }
        Some(p) => parse_percent(p, &obj.path("percent"), errs),
    };
    let methods = match obj.get("methods") {
        None => Some(shadow::DEFAULT_METHODS.map(String::from).to_vec()),
        Some(m) => {
            let at = obj.path("methods");
            non_empty_array(m, &at, "leave it out for GET and HEAD", errs)
                .and_then(|_| parse_methods(m, &at, errs))
        }
    };
    let compare_headers = match obj.get("compare_headers") {
        None => Some(Vec::new()),
        Some(Json::Array(items)) => {
            let mut out: Vec<String> = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let at = format!("{}[{i}]", obj.path("compare_headers"));
                let name = match item {
                    Json::String(h) => header_name(h, &at, errs),
                    other => {
                        errs.push(
                            at.as_str(),
                            format!("must be a string, got {}", other.kind()),
                        );
                        None
                    }
                };
                match name {
                    Some(n) if n.starts_with(':') => {
                        errs.push(
                            at,
                            format!(
                                "must not be a pseudo-header (the status is always compared), got \"{n}\""
                            ),
                        );
                        ok = false;
                    }
                    Some(n) => {
                        if let Some(first) = out.iter().position(|o| *o == n) {
                            errs.push(
                                at,
                                format!(
                                    "duplicate header \"{n}\" (first listed at {}[{first}])",
                                    obj.path("compare_headers")
                                ),
                            );
                            ok = false;
                        }
                        out.push(n);
                    }
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        Some(other) => {
            errs.push(
                obj.path("compare_headers"),
                format!("must be an array, got {}", other.kind()),
            );
            None
        }
    };
    let compare_body = match obj.get("compare_body") {
        None | Some(Json::Bool(false)) => Some(shadow::BodyCompare::Off),
        Some(Json::Bool(true)) => Some(shadow::BodyCompare::Bytes),
        Some(Json::String(m)) if m == "json" => Some(shadow::BodyCompare::Json),
        Some(other) => {
            errs.push(
                obj.path("compare_body"),
                format!("must be true, false or \"json\", got {other}"),
            );
            None
        }
    };
    let ignore_fields = parse_ignore_fields(&obj, compare_body, errs);
    let noise = match obj.get("noise_percent") {
        None => Some(0),
        Some(p) => parse_percent(p, &obj.path("noise_percent"), errs),
    };
    let log_values = match obj.get("log_values") {
        None => Some(false),
        Some(Json::Bool(b)) => Some(*b),
        Some(other) => {
            errs.push(
                obj.path("log_values"),
                format!("must be true or false, got {other}"),
            );
            None
        }
    };
    let timeout = uint(&obj, "timeout_ms", 1, 60_000, errs);
    let max_body = uint(&obj, "max_body_bytes", 0, 16_777_216, errs);
    let max_in_flight = uint(&obj, "max_in_flight", 1, 10_000, errs);
    Some(shadow::Settings {
        basis_points: basis_points?,
        methods: methods?,
        compare_headers: compare_headers?,
        compare_body: compare_body?,
        ignore_fields: ignore_fields?,
        noise_basis_points: noise?,
        log_values: log_values?,
        timeout_ms: timeout?.map_or(shadow::DEFAULT_TIMEOUT_MS, |n| n as u32),
        max_body_bytes: max_body?.map_or(shadow::DEFAULT_MAX_BODY_BYTES, |n| n as u32),
        max_in_flight: max_in_flight?.map_or(shadow::DEFAULT_MAX_IN_FLIGHT, |n| n as u32),
    })
}

/// Most `ignore_fields` entries per route.
pub const MAX_IGNORE_FIELDS: usize = 64;

/// `ignore_fields`: JSON Pointers (see [`crate::compare`]), only with
/// `compare_body: "json"`.
fn parse_ignore_fields(
    obj: &Obj<'_>,
    mode: Option<shadow::BodyCompare>,
    errs: &mut Errors,
) -> Option<Vec<crate::compare::Pointer>> {
    let at = obj.path("ignore_fields");
    let items = match obj.get("ignore_fields") {
        None => return Some(Vec::new()),
        Some(Json::Array(items)) => items,
        Some(other) => {
            errs.push(at, format!("must be an array, got {}", other.kind()));
            return None;
        }
    };
    if mode.is_some_and(|m| m != shadow::BodyCompare::Json) {
        errs.push(
            at,
            "applies to JSON bodies only: set compare_body to \"json\"",
        );
        return None;
    }
    if items.len() > MAX_IGNORE_FIELDS {
        errs.push(
            at,
            format!(
                "must have at most {MAX_IGNORE_FIELDS} entries, got {}",
                items.len()
            ),
        );
        return None;
    }
    let mut out: Vec<(usize, crate::compare::Pointer)> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Json::String(text) = item else {
            errs.push(here, format!("must be a string, got {}", item.kind()));
            ok = false;
            continue;
        };
        match crate::compare::Pointer::parse(text) {
            Ok(p) => {
                if let Some((first, _)) = out.iter().find(|(_, o)| o.as_str() == p.as_str()) {
                    errs.push(
                        here,
                        format!("duplicate pointer \"{text}\" (first listed at {at}[{first}])"),
                    );
                    ok = false;
                }
                out.push((i, p));
            }
            Err(reason) => {
                errs.push(here, reason);
                ok = false;
            }
        }
    }
    ok.then(|| out.into_iter().map(|(_, p)| p).collect())
}

/// Percent (0..=100, at most two decimals) -> basis points.
fn parse_percent(v: &Json, path: &str, errs: &mut Errors) -> Option<u16> {
    let Json::Number(text) = v else {
        errs.push(path, format!("must be a number, got {}", v.kind()));
        return None;
    };
    match basis_points(text) {
        Ok(bp) => Some(bp),
        Err(TooMuch::Range) => {
            errs.push(path, format!("must be between 0 and 100, got {text}"));
            None
        }
        Err(TooMuch::Precision) => {
            errs.push(path, format!("must have at most two decimals, got {text}"));
            None
        }
    }
}

/// Why a percent's text is refused.
#[derive(Debug, PartialEq, Eq)]
enum TooMuch {
    /// Below 0 or above 100.
    Range,
    /// A fraction of a basis point: more than two decimals.
    Precision,
}

/// A JSON number's text (`10`, `33.33`, `1.5e1`, `-0`) as basis points
/// (percent × 100), computed exactly on the decimal digits: `f64` would
/// take `10.000000001` for `10`. Trailing zeros are not precision
/// (`10.500` is 1050 bp).
fn basis_points(text: &str) -> Result<u16, TooMuch> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        // The JSON grammar leaves only overflow as a parse error: a huge
        // exponent, saturated.
        Some((m, e)) => (
            m,
            e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            }),
        ),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // value × 100 = digits × 10^scale
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    let scale = exponent
        .saturating_add(2)
        .saturating_sub(frac.len() as i64)
        .saturating_add((digits.len() - significant.len()) as i64);
    if significant.is_empty() {
        return Ok(0); // zero, whatever its sign or exponent
    }
    if negative {
        return Err(TooMuch::Range);
    }
    // Digits of the integer part of value × 100; more than 5 is >= 100000.
    let int_len = (significant.len() as i64).saturating_add(scale);
    if int_len > 5 {
        return Err(TooMuch::Range);
    }
    let int_part: u64 = if scale >= 0 {
        format!("{significant}{}", "0".repeat(scale as usize))
            .parse()
            .map_err(|_| TooMuch::Range)?
    } else {
        let keep = usize::try_from(int_len).unwrap_or(0);
        significant.get(..keep).unwrap_or("").parse().unwrap_or(0)
    };
    // With a fraction left (scale < 0), 10000 and up is above 100 %.
    if int_part > 10_000 || (scale < 0 && int_part >= 10_000) {
        return Err(TooMuch::Range);
    }
    if scale < 0 {
        return Err(TooMuch::Precision);
    }
    u16::try_from(int_part).map_err(|_| TooMuch::Range)
}

fn parse_methods(v: &Json, path: &str, errs: &mut Errors) -> Option<Vec<String>> {
    let items = non_empty_array(v, path, "leave it out to match any method", errs)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match item {
            Json::String(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                out.push(m.clone())
            }
            Json::String(m) => {
                errs.push(
                    at,
                    format!("must be an HTTP method in upper case, such as GET, got \"{m}\""),
                );
                ok = false;
            }
            other => {
                errs.push(at, format!("must be a string, got {}", other.kind()));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn cluster_name(s: &str, path: &str, errs: &mut Errors) -> Option<String> {
    if s.is_empty() {
        errs.push(path, "must not be empty");
        return None;
    }
    if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        errs.push(
            path,
            format!(
                "must be an Envoy cluster name without spaces or control characters, got {s:?}"
            ),
        );
        return None;
    }
    Some(s.to_string())
}

fn url_path<'a>(s: &'a str, path: &str, errs: &mut Errors) -> Option<&'a str> {
    if !s.starts_with('/') {
        errs.push(path, format!("must start with \"/\", got \"{s}\""));
        return None;
    }
    if s.contains(['?', '#']) {
        errs.push(
            path,
            format!("must not contain a query or fragment (\"?\" or \"#\"), got \"{s}\""),
        );
        return None;
    }
    Some(s)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header name, lowercased; a pseudo-header (`:authority`) is one too.
fn header_name(s: &str, path: &str, errs: &mut Errors) -> Option<String> {
    let body = s.strip_prefix(':').unwrap_or(s);
    if body.is_empty() || !body.bytes().all(is_tchar) {
        errs.push(path, format!("must be an HTTP header name, got \"{s}\""));
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// Headers the filter must never write or remove, with why. The target and
/// override headers are removed from client requests (and the target one
/// overwritten with a cluster name): either would destroy what these carry.
const NOT_OWNED: [(&str, &str); 11] = [
    ("authorization", "it carries the client's credentials"),
    ("proxy-authorization", "it carries the client's credentials"),
    ("cookie", "it carries the client's cookies"),
    ("host", "it is the request's authority"),
    (
        "x-request-id",
        "it is Envoy's request id, the default hash key",
    ),
    ("content-length", "it frames the request body"),
    ("transfer-encoding", "it frames the request body"),
    ("connection", "it is a hop-by-hop header"),
    ("te", "it is a hop-by-hop header"),
    ("upgrade", "it is a hop-by-hop header"),
    (
        crate::shadow::SHADOW_HEADER,
        "it marks the filter's shadow requests",
    ),
];

/// A header the filter owns (`target_header`, `override.header`): a header
/// name, not a pseudo-header and not in [`NOT_OWNED`].
fn owned_header_name(s: &str, path: &str, errs: &mut Errors) -> Option<String> {
    let name = header_name(s, path, errs)?;
    if name.starts_with(':') {
        errs.push(path, format!("must not be a pseudo-header, got \"{s}\""));
        return None;
    }
    if let Some((_, why)) = NOT_OWNED.iter().find(|(n, _)| *n == name) {
        errs.push(path, format!("must not be \"{name}\" ({why})"));
        return None;
    }
    Some(name)
}

/// The headers of one configuration must be distinct, each with one job:
/// the target header (written by the filter), the override header and its
/// secret header `<override.header>-secret` (read, then removed) and every
/// hash key header (read, left alone). Equal key headers on several routes
/// are fine. Each collision is reported at the later field of the
/// configuration's order (target_header, hash keys, override), naming the
/// earlier one.
fn header_collisions(
    target: Option<&str>,
    key_headers: &[(String, String)],
    over: Option<&Override>,
    errs: &mut Errors,
) {
    for (path, key) in key_headers {
        if Some(key.as_str()) == target {
            errs.push(
                path.as_str(),
                format!("must differ from target_header (\"{key}\")"),
            );
        }
    }
    let Some(o) = over else {
        return;
    };
    let others = target
        .map(|t| ("target_header", t))
        .into_iter()
        .chain(key_headers.iter().map(|(p, k)| (p.as_str(), k.as_str())));
    for (field, name) in others {
        if o.header == name {
            errs.push(
                "override.header",
                format!("must differ from {field} (\"{name}\")"),
            );
        }
        if o.secret_header == name {
            errs.push(
                "override.header",
                format!("its secret header must differ from {field} (\"{name}\")"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_to_basis_points() {
        let mut errs = Errors::default();
        let mut bp = |text: &str| {
            let v = json::read(text.as_bytes()).unwrap();
            parse_percent(&v, "p", &mut errs)
        };
        for (text, want) in [
            ("0", 0),
            ("-0", 0),
            ("0.0e5", 0),
            ("10", 1000),
            ("33.33", 3333),
            ("0.07", 7),
            ("99.99", 9999),
            ("100", 10000),
            ("100.000", 10000),
            ("10.500", 1050),
            ("1e1", 1000),
            ("1.5E+1", 1500),
            ("1e-2", 1),
            ("0.1e2", 1000),
        ] {
            assert_eq!(bp(text), Some(want), "{text}");
        }
        assert!(errs.0.is_empty());
    }

    #[test]
    fn percent_precision_and_range_are_exact() {
        for (text, want) in [
            ("10.000000001", TooMuch::Precision),
            ("10.0000000000000000000001", TooMuch::Precision),
            ("33.333", TooMuch::Precision),
            ("1e-3", TooMuch::Precision),
            ("1e-999999999999999999999", TooMuch::Precision),
            ("99.999", TooMuch::Precision),
            ("100.000000001", TooMuch::Range),
            ("100.01", TooMuch::Range),
            ("101", TooMuch::Range),
            ("1e3", TooMuch::Range),
            ("1e999999999999999999999", TooMuch::Range),
            ("12345678901234567890", TooMuch::Range),
            ("-1", TooMuch::Range),
            ("-0.001", TooMuch::Range),
        ] {
            assert_eq!(basis_points(text), Err(want), "{text}");
        }
    }
}
