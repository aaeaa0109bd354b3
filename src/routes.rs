//! The route table: which configured route a request belongs to.
//!
//! Semantics follow Envoy's own `prefix` / `path` route matchers: the match is
//! case-sensitive and made on `:path` without its query string; the first
//! route in configuration order that matches (path and, if listed, method)
//! wins.
//!
//! Cost is flat in the number of routes: exact paths sit in a hash map and
//! prefixes in a byte trie, so a lookup walks the request path once whatever
//! the size of the table.

use std::collections::HashMap;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path (without query) starts with this.
    Prefix(String),
    /// The path (without query) equals this.
    Exact(String),
}

/// What the table needs to know of each route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Vec<String>>,
}

impl Matcher {
    fn accepts_method(&self, method: &[u8]) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list.iter().any(|m| m.as_bytes() == method),
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    /// Children by next byte, sorted by byte.
    edges: Vec<(u8, u32)>,
    /// Routes whose prefix ends here, in configuration order.
    routes: Vec<u32>,
}

/// Index from request (method, path) to the first matching route.
#[derive(Debug)]
pub struct RouteTable {
    matchers: Vec<Matcher>,
    /// Prefix trie; node 0 is the root (the empty prefix).
    nodes: Vec<Node>,
    exact: HashMap<Box<[u8]>, Vec<u32>, fnv::FnvBuildHasher>,
}

impl RouteTable {
    /// Builds the index. Route `i` of the result is `matchers[i]`.
    pub fn new(matchers: Vec<Matcher>) -> Self {
        let mut table = RouteTable {
            matchers: Vec::new(),
            nodes: vec![Node::default()],
            exact: HashMap::default(),
        };
        for (i, m) in matchers.iter().enumerate() {
            let id = i as u32;
            match &m.path {
                PathMatch::Exact(p) => table.exact.entry(p.as_bytes().into()).or_default().push(id),
                PathMatch::Prefix(p) => {
                    let node = table.insert_prefix(p.as_bytes());
                    if let Some(n) = table.nodes.get_mut(node) {
                        n.routes.push(id);
                    }
                }
            }
        }
        table.matchers = matchers;
        table
    }

    fn insert_prefix(&mut self, prefix: &[u8]) -> usize {
        let mut at = 0usize;
        for &b in prefix {
            let next_id = self.nodes.len() as u32;
            let Some(node) = self.nodes.get_mut(at) else {
                return at;
            };
            at = match node.edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => node.edges.get(i).map_or(0, |e| e.1 as usize),
                Err(i) => {
                    node.edges.insert(i, (b, next_id));
                    self.nodes.push(Node::default());
                    next_id as usize
                }
            };
        }
        at
    }

    /// The index of the first route matching `method` and `path`, if any.
    pub fn find(&self, method: &[u8], path: &[u8]) -> Option<usize> {
        let end = path
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(path.len());
        let path = path.get(..end).unwrap_or(path);

        let mut best: Option<u32> = None;
        let mut consider = |ids: &[u32]| {
            // `ids` is in configuration order: the first acceptable one is
            // the best this list can offer.
            if let Some(&id) = ids.iter().find(|&&id| {
                self.matchers
                    .get(id as usize)
                    .is_some_and(|m| m.accepts_method(method))
            }) {
                if best.is_none_or(|b| id < b) {
                    best = Some(id);
                }
            }
        };

        if let Some(ids) = self.exact.get(path) {
            consider(ids);
        }
        let mut node = self.nodes.first();
        let mut bytes = path.iter();
        while let Some(n) = node {
            consider(&n.routes);
            node = bytes.next().and_then(|b| {
                n.edges
                    .binary_search_by_key(b, |e| e.0)
                    .ok()
                    .and_then(|i| n.edges.get(i))
                    .and_then(|e| self.nodes.get(e.1 as usize))
            });
        }
        best.map(|b| b as usize)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.matchers.len()
    }

    /// Whether the table has no routes (every request is unmatched).
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Matcher {
        Matcher {
            path: PathMatch::Prefix(p.into()),
            methods: None,
        }
    }
    fn exact(p: &str) -> Matcher {
        Matcher {
            path: PathMatch::Exact(p.into()),
            methods: None,
        }
    }
    fn with_methods(mut m: Matcher, methods: &[&str]) -> Matcher {
        m.methods = Some(methods.iter().map(|s| s.to_string()).collect());
        m
    }

    #[test]
    fn first_match_wins_in_configuration_order() {
        let t = RouteTable::new(vec![prefix("/api/"), prefix("/api/auth/")]);
        assert_eq!(t.find(b"GET", b"/api/auth/login"), Some(0));
        let t = RouteTable::new(vec![prefix("/api/auth/"), prefix("/api/")]);
        assert_eq!(t.find(b"GET", b"/api/auth/login"), Some(0));
        assert_eq!(t.find(b"GET", b"/api/orders"), Some(1));
        assert_eq!(t.find(b"GET", b"/other"), None);
    }

    #[test]
    fn exact_paths_ignore_the_query_string() {
        let t = RouteTable::new(vec![exact("/login")]);
        assert_eq!(t.find(b"GET", b"/login"), Some(0));
        assert_eq!(t.find(b"GET", b"/login?next=/x"), Some(0));
        assert_eq!(t.find(b"GET", b"/login/"), None);
        assert_eq!(t.find(b"GET", b"/logi"), None);
    }

    #[test]
    fn prefix_is_case_sensitive_and_needs_every_byte() {
        let t = RouteTable::new(vec![prefix("/api/auth/")]);
        assert_eq!(t.find(b"GET", b"/api/auth/"), Some(0));
        assert_eq!(t.find(b"GET", b"/api/auth"), None);
        assert_eq!(t.find(b"GET", b"/API/auth/x"), None);
        assert_eq!(t.find(b"GET", b"/api/auth?/"), None);
    }

    #[test]
    fn methods_restrict_a_route_and_fall_through_to_the_next() {
        let t = RouteTable::new(vec![
            with_methods(prefix("/api/"), &["POST"]),
            exact("/api/x"),
            prefix("/"),
        ]);
        assert_eq!(t.find(b"POST", b"/api/x"), Some(0));
        assert_eq!(t.find(b"GET", b"/api/x"), Some(1));
        assert_eq!(t.find(b"GET", b"/api/y"), Some(2));
    }

    #[test]
    fn an_earlier_exact_route_beats_a_later_prefix_and_vice_versa() {
        let t = RouteTable::new(vec![exact("/a/b"), prefix("/a/")]);
        assert_eq!(t.find(b"GET", b"/a/b"), Some(0));
        let t = RouteTable::new(vec![prefix("/a/"), exact("/a/b")]);
        assert_eq!(t.find(b"GET", b"/a/b"), Some(0));
    }

    #[test]
    fn agrees_with_a_linear_scan_on_many_routes() {
        let mut ms = Vec::new();
        for i in 0..300 {
            let m = match i % 3 {
                0 => prefix(&format!("/svc{}/", i % 37)),
                1 => exact(&format!("/svc{}/item{}", i % 37, i % 11)),
                _ => with_methods(prefix(&format!("/svc{}", i % 13)), &["PUT"]),
            };
            ms.push(m);
        }
        let t = RouteTable::new(ms.clone());
        let linear = |method: &[u8], path: &str| {
            let p = path.split(['?', '#']).next().unwrap_or("");
            ms.iter().position(|m| {
                let path_ok = match &m.path {
                    PathMatch::Prefix(x) => p.starts_with(x.as_str()),
                    PathMatch::Exact(x) => p == x,
                };
                path_ok && m.accepts_method(method)
            })
        };
        for s in 0..40 {
            for it in 0..12 {
                for method in [&b"GET"[..], b"PUT"] {
                    for path in [
                        format!("/svc{s}/item{it}"),
                        format!("/svc{s}/item{it}?q=1"),
                        format!("/svc{s}"),
                        format!("/svc{s}x/"),
                    ] {
                        assert_eq!(
                            t.find(method, path.as_bytes()),
                            linear(method, &path),
                            "{path}"
                        );
                    }
                }
            }
        }
    }
}
