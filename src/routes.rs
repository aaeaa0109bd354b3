//! The route table: which configured route a request belongs to.
//!
//! Semantics follow Envoy's own `prefix` / `path` route matchers: the match is
//! case-sensitive and made on `:path` without its query string; the first
//! route in configuration order that matches (path and, if listed, method)
//! wins.
//!
//! Cost is flat in the number of routes: prefixes and exact paths sit in one
//! radix trie, so a lookup walks the request path once whatever the size of
//! the table.

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

/// A node of the radix (path-compressed) trie of prefixes.
#[derive(Debug, Default)]
struct Node {
    /// The bytes on the edge leading here.
    label: Box<[u8]>,
    /// First byte of each child's label, sorted; `children[i]` goes with it.
    first: Vec<u8>,
    children: Vec<u32>,
    /// Routes whose prefix ends exactly here, in configuration order.
    routes: Vec<u32>,
    /// Routes whose exact path ends here, in configuration order.
    exact: Vec<u32>,
}

/// Index from request (method, path) to the first matching route.
#[derive(Debug)]
pub struct RouteTable {
    matchers: Vec<Matcher>,
    /// Radix trie of prefixes and exact paths; node 0 is the root (the
    /// empty prefix).
    nodes: Vec<Node>,
}

impl RouteTable {
    /// Builds the index. Route `i` of the result is `matchers[i]`.
    pub fn new(matchers: Vec<Matcher>) -> Self {
        let mut table = RouteTable {
            matchers: Vec::new(),
            nodes: vec![Node::default()],
        };
        for (i, m) in matchers.iter().enumerate() {
            let id = i as u32;
            let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = &m.path;
            let node = table.insert_prefix(p.as_bytes());
            if let Some(n) = table.nodes.get_mut(node) {
                match &m.path {
                    PathMatch::Exact(_) => n.exact.push(id),
                    PathMatch::Prefix(_) => n.routes.push(id),
                }
            }
        }
        table.matchers = matchers;
        table
    }

    fn push(&mut self, node: Node) -> u32 {
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    /// The node for `prefix`, created (splitting an edge if needed).
    fn insert_prefix(&mut self, mut rest: &[u8]) -> usize {
        let mut at = 0usize;
        while let Some(&b) = rest.first() {
            let Some(node) = self.nodes.get(at) else {
                return at;
            };
            let slot = node.first.binary_search(&b);
            let Ok(slot) = slot else {
                // No edge starts with `b`: a new leaf takes the rest.
                let leaf = self.push(Node {
                    label: rest.into(),
                    ..Node::default()
                });
                if let Some(node) = self.nodes.get_mut(at) {
                    let i = node.first.binary_search(&b).unwrap_or_else(|i| i);
                    node.first.insert(i, b);
                    node.children.insert(i, leaf);
                }
                return leaf as usize;
            };
            let Some(&child) = node.children.get(slot) else {
                return at;
            };
            let label = self
                .nodes
                .get(child as usize)
                .map(|c| c.label.clone())
                .unwrap_or_default();
            let common = label.iter().zip(rest).take_while(|(x, y)| x == y).count();
            if common < label.len() {
                // Split the edge: a middle node gets the common part, the
                // old child keeps the remainder of its label.
                let (head, tail) = label.split_at(common);
                let tail_first = tail.first().copied().unwrap_or(0);
                let middle = self.push(Node {
                    label: head.into(),
                    first: vec![tail_first],
                    children: vec![child],
                    ..Node::default()
                });
                if let Some(c) = self.nodes.get_mut(child as usize) {
                    c.label = tail.into();
                }
                if let Some(c) = self
                    .nodes
                    .get_mut(at)
                    .and_then(|n| n.children.get_mut(slot))
                {
                    *c = middle;
                }
                at = middle as usize;
            } else {
                at = child as usize;
            }
            rest = rest.get(common..).unwrap_or_default();
        }
        at
    }

    /// The index of the first route matching `method` and `path`, if any.
    pub fn find(&self, method: &[u8], path: &[u8]) -> Option<usize> {
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

        // Prefixes and exact paths never contain '?' or '#' (config
        // validation), so the walk stops at the query string by itself.
        let mut node = self.nodes.first();
        let mut last = node;
        let mut rest = path;
        while let Some(n) = node {
            if !n.routes.is_empty() {
                consider(&n.routes);
            }
            last = Some(n);
            node = rest.first().and_then(|b| {
                let i = n.first.iter().position(|f| f == b)?;
                let child = self.nodes.get(*n.children.get(i)? as usize)?;
                let after = rest.strip_prefix(&*child.label)?;
                rest = after;
                Some(child)
            });
        }
        // The walk consumed the whole path (up to a query or fragment): the
        // last node is the path itself, where its exact routes hang.
        if matches!(rest.first(), None | Some(b'?' | b'#')) {
            if let Some(n) = last.filter(|n| !n.exact.is_empty()) {
                consider(&n.exact);
            }
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
    fn edges_split_when_prefixes_share_a_part() {
        let t = RouteTable::new(vec![
            prefix("/api/v1/users/"),
            prefix("/api/v2/"),
            prefix("/api/"),
            prefix("/ap"),
            prefix("/api/v1/"),
        ]);
        assert_eq!(t.find(b"GET", b"/api/v1/users/7"), Some(0));
        assert_eq!(t.find(b"GET", b"/api/v1/orders"), Some(2));
        assert_eq!(t.find(b"GET", b"/api/v2/x"), Some(1));
        assert_eq!(t.find(b"GET", b"/api/v3"), Some(2));
        assert_eq!(t.find(b"GET", b"/apx"), Some(3));
        assert_eq!(t.find(b"GET", b"/a"), None);
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
