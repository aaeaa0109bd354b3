//! Plugin configuration: JSON bytes in, a validated [`Config`] out.
//!
//! Parse, don't validate: once [`Config::from_json`] returns `Ok`, every
//! invariant the filter relies on holds. On failure it returns every error it
//! found, each naming the field path and the reason, e.g.
//! `routes[1].percent: must be between 0 and 100, got 140`.
//! Unknown fields are errors: a typo must never pass silently.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::breaker::{self, OnOpen};
use crate::hash;
use crate::ramp::{self, Step};
use crate::routes::{Matcher, PathMatch, RouteTable};

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

/// Which side a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Monolith,
    Service,
}

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
    /// It changes when the route's name, service or outlier settings change
    /// (a fresh breaker) but not with its percent, so ramping keeps the
    /// state and the number of keys stays bounded by distinct
    /// (name, service, outlier) combinations.
    pub fn breaker_key(&self) -> Option<String> {
        let o = self.outlier.as_ref()?;
        let identity = format!(
            "{}|{}|{}|{:?}|{:?}|{}|{}|{}|{:?}",
            self.name,
            self.service,
            o.consecutive_failures,
            o.failure_rate,
            o.failure_statuses,
            o.base_ejection_ms,
            o.max_ejection_ms,
            o.half_open_probes,
            o.on_open
        );
        let id = hash::fnv64(identity.as_bytes());
        Some(format!("traffic_shift.breaker.{}.{id:016x}", self.name))
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

    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let mut errs = Errors::default();
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                errs.push("configuration", format!("invalid JSON: {e}"));
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

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A JSON object being read field by field, with its path for errors.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// `v` as an object whose keys are all in `allowed`; reports the type
    /// error or each unknown key.
    fn new(v: &'a Value, path: &str, allowed: &[&str], errs: &mut Errors) -> Option<Obj<'a>> {
        let Value::Object(map) = v else {
            let at = if path.is_empty() {
                "configuration"
            } else {
                path
            };
            errs.push(at, format!("must be an object, got {}", kind(v)));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                errs.push(
                    field_path(path, key),
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Some(Obj {
            path: path.to_string(),
            map,
        })
    }

    fn path(&self, key: &str) -> String {
        field_path(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn string(&self, key: &str, errs: &mut Errors) -> Option<&'a str> {
        match self.map.get(key)? {
            Value::String(s) => Some(s),
            other => {
                errs.push(
                    self.path(key),
                    format!("must be a string, got {}", kind(other)),
                );
                None
            }
        }
    }

    fn required_string(&self, key: &str, errs: &mut Errors) -> Option<&'a str> {
        if !self.map.contains_key(key) {
            errs.push(self.path(key), "is required");
            return None;
        }
        self.string(key, errs)
    }
}

fn parse_config(v: &Value, errs: &mut Errors) -> Option<Config> {
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
        Some(h) => header_name(h, &obj.path("target_header"), false, errs),
        None if obj.get("target_header").is_none() => Some(DEFAULT_TARGET_HEADER.to_string()),
        None => None,
    };
    let default_key = match obj.get("hash_key") {
        Some(k) => parse_hash_key(k, &obj.path("hash_key"), errs),
        None => Some(HashKey::Header(DEFAULT_KEY_HEADER.to_string())),
    };

    let mut routes = Vec::new();
    match obj.get("routes") {
        None => {}
        Some(Value::Array(items)) => {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("{}[{i}]", obj.path("routes"));
                if let Some(route) = parse_route(item, &path, default_key.as_ref(), errs) {
                    routes.push(route);
                }
                if let Some(Value::String(name)) = item.get("name") {
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
            format!("must be an array, got {}", kind(other)),
        ),
    }

    let override_header = match obj.get("override") {
        None => Some(None),
        Some(o) => {
            parse_override(o, &obj.path("override"), target_header.as_deref(), errs).map(Some)
        }
    };

    let table = RouteTable::new(routes.iter().map(|r| r.matcher.clone()).collect());
    Some(Config {
        monolith: monolith?,
        target_header: target_header?,
        routes,
        override_header: override_header?,
        table,
    })
}

fn parse_override(
    v: &Value,
    path: &str,
    target_header: Option<&str>,
    errs: &mut Errors,
) -> Option<Override> {
    let obj = Obj::new(v, path, &["header", "secret"], errs)?;
    let header = obj
        .required_string("header", errs)
        .and_then(|h| header_name(h, &obj.path("header"), false, errs));
    let header = match header {
        Some(h) if Some(h.as_str()) == target_header => {
            errs.push(
                obj.path("header"),
                format!("must differ from target_header (\"{h}\")"),
            );
            None
        }
        other => other,
    };
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

fn parse_hash_key(v: &Value, path: &str, errs: &mut Errors) -> Option<HashKey> {
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
            header_name(header?, &obj.path("header"), true, errs).map(HashKey::Header)
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
    v: &Value,
    path: &str,
    default_key: Option<&HashKey>,
    errs: &mut Errors,
) -> Option<Route> {
    let obj = Obj::new(
        v,
        path,
        &[
            "name", "prefix", "path", "methods", "service", "percent", "salt", "hash_key",
            "outlier", "ramp",
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
        Some(k) => parse_hash_key(k, &obj.path("hash_key"), errs),
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

    Some(Route {
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
    v: &'a Value,
    path: &str,
    when_empty: &str,
    errs: &mut Errors,
) -> Option<&'a Vec<Value>> {
    match v {
        Value::Array(items) if items.is_empty() => {
            errs.push(path, format!("must not be empty ({when_empty})"));
            None
        }
        Value::Array(items) => Some(items),
        other => {
            errs.push(path, format!("must be an array, got {}", kind(other)));
            None
        }
    }
}

fn parse_ramp(v: &Value, path: &str, errs: &mut Errors) -> Option<Vec<Step>> {
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
            let got = match v {
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            errs.push(
                obj.path(key),
                format!("must be an integer between {min} and {max}, got {got}"),
            );
            None
        }
    }
}

fn parse_outlier(v: &Value, path: &str, errs: &mut Errors) -> Option<breaker::Settings> {
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
        Some(Value::Array(items)) if items.is_empty() => {
            errs.push(
                obj.path("failure_statuses"),
                "must not be empty (set consecutive_failures to 0 and leave out failure_rate to count only proxy failures)",
            );
            None
        }
        Some(Value::Array(items)) => {
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
                format!("must be an array, got {}", kind(other)),
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

/// Percent (0..=100, at most two decimals) -> basis points.
fn parse_percent(v: &Value, path: &str, errs: &mut Errors) -> Option<u16> {
    let Value::Number(n) = v else {
        errs.push(path, format!("must be a number, got {}", kind(v)));
        return None;
    };
    let p = n.as_f64()?;
    if !(0.0..=100.0).contains(&p) {
        errs.push(path, format!("must be between 0 and 100, got {n}"));
        return None;
    }
    let scaled = p * 100.0;
    let bp = scaled.round();
    // 1e-6 absorbs binary floating point (33.33 * 100 = 3332.9999999999995)
    // while any third decimal (>= 0.001 % = 0.1 bp) is far above it.
    if (scaled - bp).abs() > 1e-6 {
        errs.push(path, format!("must have at most two decimals, got {n}"));
        return None;
    }
    Some(bp as u16)
}

fn parse_methods(v: &Value, path: &str, errs: &mut Errors) -> Option<Vec<String>> {
    let items = non_empty_array(v, path, "leave it out to match any method", errs)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match item {
            Value::String(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                out.push(m.clone())
            }
            Value::String(m) => {
                errs.push(
                    at,
                    format!("must be an HTTP method in upper case, such as GET, got \"{m}\""),
                );
                ok = false;
            }
            other => {
                errs.push(at, format!("must be a string, got {}", kind(other)));
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

/// A header name, lowercased. Pseudo-headers (`:authority`) only where
/// `allow_pseudo`.
fn header_name(s: &str, path: &str, allow_pseudo: bool, errs: &mut Errors) -> Option<String> {
    let body = match s.strip_prefix(':') {
        Some(rest) if allow_pseudo => rest,
        _ => s,
    };
    if body.is_empty() || !body.bytes().all(is_tchar) {
        errs.push(path, format!("must be an HTTP header name, got \"{s}\""));
        return None;
    }
    Some(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_to_basis_points() {
        let mut errs = Errors::default();
        let bp = |v: Value, errs: &mut Errors| parse_percent(&v, "p", errs);
        assert_eq!(bp(serde_json::json!(0), &mut errs), Some(0));
        assert_eq!(bp(serde_json::json!(10), &mut errs), Some(1000));
        assert_eq!(bp(serde_json::json!(33.33), &mut errs), Some(3333));
        assert_eq!(bp(serde_json::json!(0.07), &mut errs), Some(7));
        assert_eq!(bp(serde_json::json!(99.99), &mut errs), Some(9999));
        assert_eq!(bp(serde_json::json!(100), &mut errs), Some(10000));
        assert!(errs.0.is_empty());
    }
}
