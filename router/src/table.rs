//! The route table readers see: host → context-path trie → pool.
//!
//! It is a persistent (structurally shared) hash map, so the registry can derive the next version in O(log n)
//! and publish it with one pointer swap while requests keep reading the previous one. Readers therefore never
//! wait on writers, and a million routes cost no more to update than ten. Lookup is one hash probe per host
//! candidate (exact first, then wildcards from the most specific) and a walk down whole path segments, with no
//! allocation.

use crate::pool::Pool;
use crate::route_key::{RequestHost, RouteKey, path_segments};
use imbl::GenericHashMap;
use imbl::shared_ptr::DefaultSharedPtr;
use std::cmp::Ordering;
use std::sync::Arc;

type HostMap = GenericHashMap<Box<str>, HostEntry, foldhash::fast::RandomState, DefaultSharedPtr>;

/// What a host maps to. Most hosts have one route at their root, which needs no trie.
#[derive(Debug, Clone)]
enum HostEntry {
    Root(Arc<Pool>),
    Tree(Arc<PathNode>),
}

/// A node of a host's context-path trie. Children are sorted by (lower-case) segment for binary search.
#[derive(Debug, Clone, Default)]
struct PathNode {
    pool: Option<Arc<Pool>>,
    children: Vec<(Box<str>, PathNode)>,
}

/// Compares a stored (lower-case) segment with a request segment, ignoring the request's ASCII case.
fn compare_segment(stored: &str, requested: &str) -> Ordering {
    stored.bytes().cmp(requested.bytes().map(|b| b.to_ascii_lowercase()))
}

impl PathNode {
    fn child(&self, segment: &str) -> Option<&PathNode> {
        let found = self.children.binary_search_by(|(stored, _)| compare_segment(stored, segment)).ok()?;
        self.children.get(found).map(|(_, node)| node)
    }

    fn longest_match(&self, path: &str) -> Option<&Arc<Pool>> {
        let mut node = self;
        let mut best = node.pool.as_ref();
        for segment in path_segments(path) {
            match node.child(segment) {
                Some(child) => {
                    node = child;
                    if let Some(pool) = &child.pool {
                        best = Some(pool);
                    }
                }
                None => break,
            }
        }
        best
    }

    fn get(&self, segments: &[&str]) -> Option<&Arc<Pool>> {
        match segments.split_first() {
            None => self.pool.as_ref(),
            Some((first, rest)) => self.child(first)?.get(rest),
        }
    }

    /// Sets or clears the pool at `segments`, pruning nodes left with neither pool nor children. Returns the
    /// previous pool.
    fn set(&mut self, segments: &[&str], pool: Option<Arc<Pool>>) -> Option<Arc<Pool>> {
        let Some((first, rest)) = segments.split_first() else {
            return std::mem::replace(&mut self.pool, pool);
        };
        let position = self.children.binary_search_by(|(stored, _)| stored.as_ref().cmp(*first));
        let index = match (position, &pool) {
            (Ok(index), _) => index,
            (Err(_), None) => return None,
            (Err(index), Some(_)) => {
                self.children.insert(index, ((*first).into(), PathNode::default()));
                index
            }
        };
        let (previous, now_empty) = match self.children.get_mut(index) {
            Some((_, child)) => {
                let previous = child.set(rest, pool);
                (previous, child.pool.is_none() && child.children.is_empty())
            }
            None => (None, false),
        };
        if now_empty {
            self.children.remove(index);
        }
        previous
    }

    fn for_each<'a>(&'a self, visit: &mut impl FnMut(&'a Arc<Pool>)) {
        if let Some(pool) = &self.pool {
            visit(pool);
        }
        for (_, child) in &self.children {
            child.for_each(visit);
        }
    }
}

impl HostEntry {
    fn longest_match(&self, path: &str) -> Option<&Arc<Pool>> {
        match self {
            Self::Root(pool) => Some(pool),
            Self::Tree(node) => node.longest_match(path),
        }
    }

    fn into_node(self) -> PathNode {
        match self {
            Self::Root(pool) => PathNode { pool: Some(pool), children: Vec::new() },
            Self::Tree(node) => Arc::unwrap_or_clone(node),
        }
    }

    fn from_node(node: PathNode) -> Option<Self> {
        match (node.pool, node.children.is_empty()) {
            (None, true) => None,
            (Some(pool), true) => Some(Self::Root(pool)),
            (pool, false) => Some(Self::Tree(Arc::new(PathNode { pool, children: node.children }))),
        }
    }
}

/// An immutable version of the routing table. Cloning is O(1).
#[derive(Debug, Clone)]
pub struct RouteTable {
    hosts: HostMap,
    routes: usize,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self { hosts: HostMap::with_hasher(foldhash::fast::RandomState::default()), routes: 0 }
    }

    /// Number of routes (pools).
    pub fn len(&self) -> usize {
        self.routes
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// The pool serving a request: exact host before wildcards, longest context path within a host.
    pub fn lookup(&self, host: &mut RequestHost, path: &str) -> Option<&Arc<Pool>> {
        host.find_map(|candidate| self.hosts.get(candidate)?.longest_match(path))
    }

    /// The pool registered at exactly `key`.
    pub fn get(&self, key: &RouteKey) -> Option<&Arc<Pool>> {
        match self.hosts.get(key.host())? {
            HostEntry::Root(pool) => key.path().is_empty().then_some(pool),
            HostEntry::Tree(node) => node.get(&key.segments().collect::<Vec<_>>()),
        }
    }

    /// Sets (`Some`) or removes (`None`) the pool at `key`. Returns the previous pool.
    pub fn set(&mut self, key: &RouteKey, pool: Option<Arc<Pool>>) -> Option<Arc<Pool>> {
        let adding = pool.is_some();
        let existing = self.hosts.remove(key.host());
        if existing.is_none() && !adding {
            return None;
        }
        let mut node = existing.map(HostEntry::into_node).unwrap_or_default();
        let segments: Vec<&str> = key.segments().collect();
        let previous = node.set(&segments, pool);
        if let Some(entry) = HostEntry::from_node(node) {
            self.hosts.insert(key.host().into(), entry);
        }
        match (previous.is_some(), adding) {
            (false, true) => self.routes += 1,
            (true, false) => self.routes -= 1,
            _ => {}
        }
        previous
    }

    /// Visits every pool.
    pub fn for_each_pool<'a>(&'a self, mut visit: impl FnMut(&'a Arc<Pool>)) {
        for entry in self.hosts.values() {
            match entry {
                HostEntry::Root(pool) => visit(pool),
                HostEntry::Tree(node) => node.for_each(&mut visit),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_config::messages::LbAlgorithm;

    fn pool(uri: &str) -> Arc<Pool> {
        Arc::new(Pool::new(RouteKey::parse(uri).unwrap(), Vec::new(), LbAlgorithm::RoundRobin, None, 0, 1))
    }

    fn table(uris: &[&str]) -> RouteTable {
        let mut table = RouteTable::new();
        for uri in uris {
            table.set(&RouteKey::parse(uri).unwrap(), Some(pool(uri)));
        }
        table
    }

    fn route(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        let mut host = RequestHost::parse(host.as_bytes())?;
        table.lookup(&mut host, path).map(|p| p.key().to_string())
    }

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let t = table(&["app.com", "app.com/foo", "app.com/foo/bar/baz"]);
        assert_eq!(route(&t, "app.com", "/").as_deref(), Some("app.com"));
        assert_eq!(route(&t, "app.com", "/foo").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/foo/").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/foo/bar").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/foo/bar/baz/qux").as_deref(), Some("app.com/foo/bar/baz"));
        assert_eq!(route(&t, "app.com", "/foobar").as_deref(), Some("app.com"));
        assert_eq!(route(&t, "APP.com:80", "/FOO/x").as_deref(), Some("app.com/foo"));
    }

    #[test]
    fn context_path_without_root_route_does_not_catch_everything() {
        let t = table(&["app.com/foo"]);
        assert_eq!(route(&t, "app.com", "/foo/x").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/"), None);
        assert_eq!(route(&t, "app.com", "/foobar"), None);
    }

    #[test]
    fn exact_host_beats_wildcards_and_specific_wildcards_beat_general_ones() {
        let t = table(&["*.example.com", "*.b.example.com", "a.b.example.com", "*.com"]);
        assert_eq!(route(&t, "a.b.example.com", "/").as_deref(), Some("a.b.example.com"));
        assert_eq!(route(&t, "x.b.example.com", "/").as_deref(), Some("*.b.example.com"));
        assert_eq!(route(&t, "deep.x.y.example.com", "/").as_deref(), Some("*.example.com"));
        assert_eq!(route(&t, "other.com", "/").as_deref(), Some("*.com"));
        assert_eq!(route(&t, "example.org", "/"), None);
        // The wildcard does not match its own apex.
        let t2 = table(&["*.example.com"]);
        assert_eq!(route(&t2, "example.com", "/"), None);
    }

    #[test]
    fn exact_host_with_unmatched_path_falls_back_to_wildcard() {
        let t = table(&["app.example.com/api", "*.example.com"]);
        assert_eq!(route(&t, "app.example.com", "/api/v1").as_deref(), Some("app.example.com/api"));
        assert_eq!(route(&t, "app.example.com", "/web").as_deref(), Some("*.example.com"));
    }

    #[test]
    fn removal_prunes_and_counts() {
        let mut t = table(&["app.com", "app.com/a/b", "app.com/a/c"]);
        assert_eq!(t.len(), 3);
        assert!(t.set(&RouteKey::parse("app.com/a/b").unwrap(), None).is_some());
        assert_eq!(t.len(), 2);
        assert_eq!(route(&t, "app.com", "/a/b").as_deref(), Some("app.com"));
        assert_eq!(route(&t, "app.com", "/a/c").as_deref(), Some("app.com/a/c"));
        assert!(t.set(&RouteKey::parse("app.com/a/c").unwrap(), None).is_some());
        assert!(t.set(&RouteKey::parse("app.com").unwrap(), None).is_some());
        assert!(t.is_empty());
        assert!(t.set(&RouteKey::parse("app.com").unwrap(), None).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn old_versions_are_unaffected_by_new_ones() {
        let before = table(&["app.com"]);
        let mut after = before.clone();
        after.set(&RouteKey::parse("app.com").unwrap(), None);
        after.set(&RouteKey::parse("new.com").unwrap(), Some(pool("new.com")));
        assert_eq!(route(&before, "app.com", "/").as_deref(), Some("app.com"));
        assert_eq!(route(&before, "new.com", "/"), None);
        assert_eq!(route(&after, "app.com", "/"), None);
    }

    #[test]
    fn exact_get_and_iteration() {
        let t = table(&["a.com", "a.com/x", "b.com/y/z"]);
        assert!(t.get(&RouteKey::parse("a.com/x").unwrap()).is_some());
        assert!(t.get(&RouteKey::parse("b.com/y").unwrap()).is_none());
        let mut seen = Vec::new();
        t.for_each_pool(|p| seen.push(p.key().to_string()));
        seen.sort();
        assert_eq!(seen, ["a.com", "a.com/x", "b.com/y/z"]);
    }

    mod model {
        use super::*;
        use crate::reference::lookup as reference;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        const HOSTS: [&str; 7] = ["a.com", "b.a.com", "*.a.com", "c.b.a.com", "*.b.a.com", "x.com", "*.com"];
        const REQUEST_HOSTS: [&str; 8] = ["a.com", "b.a.com", "c.b.a.com", "d.b.a.com", "e.c.b.a.com", "x.com", "y.x.com", "z.org"];
        const SEGMENTS: [&str; 3] = ["p", "q", "r"];

        fn uri(host: usize, path: &[usize]) -> String {
            let mut uri = HOSTS[host].to_owned();
            for segment in path {
                uri.push('/');
                uri.push_str(SEGMENTS[*segment]);
            }
            uri
        }

        fn op() -> impl Strategy<Value = (bool, usize, Vec<usize>)> {
            (any::<bool>(), 0..HOSTS.len(), prop::collection::vec(0..SEGMENTS.len(), 0..3))
        }

        fn request() -> impl Strategy<Value = (usize, Vec<(usize, bool)>)> {
            (0..REQUEST_HOSTS.len(), prop::collection::vec((0..SEGMENTS.len(), any::<bool>()), 0..4))
        }

        proptest! {
            #[test]
            fn lookups_match_the_reference_model(ops in prop::collection::vec(op(), 1..40), requests in prop::collection::vec(request(), 1..30)) {
                let mut table = RouteTable::new();
                let mut routes = BTreeSet::new();
                for (insert, host, path) in ops {
                    let uri = uri(host, &path);
                    let key = RouteKey::parse(&uri).unwrap();
                    if insert {
                        table.set(&key, Some(pool(&uri)));
                        routes.insert(uri);
                    } else {
                        table.set(&key, None);
                        routes.remove(&uri);
                    }
                    prop_assert_eq!(table.len(), routes.len());
                }
                for (host, segments) in requests {
                    let path: Vec<String> = segments
                        .iter()
                        .map(|(s, upper)| if *upper { SEGMENTS[*s].to_uppercase() } else { SEGMENTS[*s].to_owned() })
                        .collect();
                    let request_path = format!("/{}", path.join("/"));
                    let expected = reference(&routes, REQUEST_HOSTS[host], &path);
                    prop_assert_eq!(route(&table, REQUEST_HOSTS[host], &request_path), expected);
                }
            }
        }
    }
}
