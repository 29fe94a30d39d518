//! Route matching. Each route's (host pattern × path pattern) pairs become entries sorted
//! once, when the snapshot is built, by a fixed precedence; a request takes the first entry
//! that matches. The precedence (documented in docs/configuration.md):
//!
//! 1. host: exact > wildcard (longer suffix first) > regex > any host;
//! 2. path: exact > prefix (longer first) > regex > any path;
//! 3. more method/header conditions first;
//! 4. earlier in the configuration first.
//!
//! A large table is not scanned: its entries are also indexed by exact path, by prefix and
//! by exact host ([`Index`]), and a request looks only at the entries its path and host
//! can match, taking the first in table order as the scan would.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use sluicegate_core::pace;

/// A host condition.
#[derive(Debug, Clone)]
pub enum HostPattern {
    /// `api.example.com` (stored lower-case).
    Exact(Arc<str>),
    /// `*.example.com`: stored as `.example.com`; matches any subdomain depth, not the apex.
    Wildcard(Arc<str>),
    /// `~regex`, matched against the lower-cased host without port.
    Regex(Regex),
    /// No host condition.
    Any,
}

/// A path condition (the path without query string).
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// `= /health`.
    Exact(Arc<str>),
    /// `/api/` (a plain string is a prefix, as in nginx's `location`).
    Prefix(Arc<str>),
    /// `~ ^/v[0-9]+/`.
    Regex(Regex),
    /// No path condition.
    Any,
}

/// A header condition.
#[derive(Debug, Clone)]
pub enum HeaderPattern {
    /// Exact value.
    Exact(String),
    /// `~regex` on the value.
    Regex(Regex),
}

/// All conditions of one route.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Any of these hosts (empty = any host).
    pub hosts: Vec<HostPattern>,
    /// Any of these paths (empty = any path).
    pub paths: Vec<PathPattern>,
    /// Any of these methods (empty = any method).
    pub methods: Vec<Method>,
    /// Every one of these headers.
    pub headers: Vec<(HeaderName, HeaderPattern)>,
}

#[derive(Debug)]
struct Entry {
    route: usize,
    host: HostPattern,
    path: PathPattern,
}

/// An entry's precedence: host rank, path rank, conditions (each higher first), then the
/// route's index. With the index last, sorting by it orders entries as a stable sort by
/// the ranks alone would.
type Key = (
    std::cmp::Reverse<(u8, usize)>,
    std::cmp::Reverse<(u8, usize)>,
    std::cmp::Reverse<usize>,
    usize,
);

/// The compiled routing table of one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    entries: Vec<Entry>,
    /// Each entry's [`Key`], in entry order (kept for [`Router::with_changed`]; the
    /// request path never reads it).
    keys: Vec<Key>,
    matches: Vec<Arc<RouteMatch>>,
    needs_host: bool,
    /// Set for tables of more than [`INDEX_FROM`] entries.
    index: Option<Index>,
}

/// Tables up to this many entries are scanned (a scan of a few entries costs less than
/// the index's hash lookups).
const INDEX_FROM: usize = 32;

/// A table's entries by what a request must equal for them to match: each entry is in
/// exactly one place, and each list holds entry positions in table order.
#[derive(Debug, Default)]
struct Index {
    /// Entries with an exact path, by that path.
    exact: HashMap<Arc<str>, Vec<u32>>,
    /// Entries with a prefix path, by that prefix.
    prefix: HashMap<Arc<str>, Vec<u32>>,
    /// The lengths of those prefixes, each once, shortest first.
    lengths: Vec<usize>,
    /// Entries with a regex path or none and an exact host, by that host.
    host: HashMap<Arc<str>, Vec<u32>>,
    /// Every other entry.
    rest: Vec<u32>,
}

impl Index {
    fn of(entries: &[Entry]) -> Index {
        let mut index = Index::default();
        for (i, e) in entries.iter().enumerate() {
            pace::point();
            let i = i as u32;
            match (&e.path, &e.host) {
                (PathPattern::Exact(p), _) => index.exact.entry(p.clone()).or_default().push(i),
                (PathPattern::Prefix(p), _) => index.prefix.entry(p.clone()).or_default().push(i),
                (_, HostPattern::Exact(h)) => index.host.entry(h.clone()).or_default().push(i),
                _ => index.rest.push(i),
            }
        }
        index.lengths = index.prefix.keys().map(|p| p.len()).collect();
        index.lengths.sort_unstable();
        index.lengths.dedup();
        index
    }
}

/// What the router looks at in a request.
pub struct RequestKey<'a> {
    /// Lower-cased host without port.
    pub host: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

impl Router {
    /// Builds the table; `routes[i]` is route `i`'s conditions.
    pub fn new(routes: Vec<RouteMatch>) -> Self {
        Router::of_shared(routes.into_iter().map(Arc::new).collect())
    }

    /// [`Router::new`] of conditions that other tables may share (a change of some routes
    /// keeps the others' conditions).
    pub fn of_shared(routes: Vec<Arc<RouteMatch>>) -> Self {
        let mut keyed = Vec::with_capacity(routes.len());
        for (i, m) in routes.iter().enumerate() {
            pace::point();
            keyed_entries(i, m, &mut keyed);
        }
        keyed.sort_unstable_by_key(|(key, _)| *key);
        Router::of_sorted(keyed, routes)
    }

    /// This table with the routes at `changed` replaced by those of `routes` (the same
    /// number of routes, the others unchanged at the same index): the kept entries are
    /// merged with the new ones instead of sorting the whole table again. The result is
    /// the one [`Router::of_shared`] builds.
    pub fn with_changed(&self, routes: Vec<Arc<RouteMatch>>, changed: &[usize]) -> Self {
        if routes.len() != self.matches.len() || self.keys.len() != self.entries.len() {
            return Router::of_shared(routes);
        }
        let mut replaced = vec![false; routes.len()];
        let mut fresh = Vec::new();
        for &i in changed {
            let Some(m) = routes.get(i) else {
                return Router::of_shared(routes);
            };
            if !std::mem::replace(&mut replaced[i], true) {
                keyed_entries(i, m, &mut fresh);
            }
        }
        fresh.sort_unstable_by_key(|(key, _)| *key);
        let mut merged = Vec::with_capacity(self.entries.len() + fresh.len());
        let mut fresh = fresh.into_iter().peekable();
        for (key, e) in self.keys.iter().zip(&self.entries) {
            pace::point();
            if replaced[e.route] {
                continue;
            }
            while let Some(f) = fresh.next_if(|(k, _)| k < key) {
                merged.push(f);
            }
            merged.push((*key, (e.host.clone(), e.path.clone())));
        }
        merged.extend(fresh);
        Router::of_sorted(merged, routes)
    }

    fn of_sorted(
        keyed: Vec<(Key, (HostPattern, PathPattern))>,
        routes: Vec<Arc<RouteMatch>>,
    ) -> Self {
        let mut keys = Vec::with_capacity(keyed.len());
        let mut entries = Vec::with_capacity(keyed.len());
        for (key, (host, path)) in keyed {
            pace::point();
            keys.push(key);
            entries.push(Entry {
                route: key.3,
                host,
                path,
            });
        }
        Router {
            needs_host: entries.iter().any(|e| !matches!(e.host, HostPattern::Any)),
            index: (entries.len() > INDEX_FROM).then(|| Index::of(&entries)),
            entries,
            keys,
            matches: routes,
        }
    }

    /// Frees the table with a [`pace::point`] after each entry (a replaced snapshot's
    /// table, freed by a background thread).
    pub fn free_paced(self) {
        pace::drop_paced(self.entries);
        pace::drop_paced(self.matches);
        if let Some(index) = self.index {
            pace::drop_paced(index.exact);
            pace::drop_paced(index.prefix);
            pace::drop_paced(index.host);
        }
    }

    /// Each route's conditions, in route order.
    pub fn matches(&self) -> &[Arc<RouteMatch>] {
        &self.matches
    }

    /// Whether any route looks at the host (if not, callers can skip computing it).
    pub fn needs_host(&self) -> bool {
        self.needs_host
    }

    /// The index of the route for this request, if any.
    pub fn find(&self, key: &RequestKey<'_>) -> Option<usize> {
        let Some(index) = &self.index else {
            return self
                .entries
                .iter()
                .find(|e| self.entry_matches(e, key))
                .map(|e| e.route);
        };
        // The first entry in table order that matches, among those the path and host can
        // match: each list's first match, the earliest of them.
        let mut best = u32::MAX;
        let mut first_in = |list: &[u32]| {
            for &i in list {
                if i >= best {
                    break;
                }
                if self
                    .entries
                    .get(i as usize)
                    .is_some_and(|e| self.entry_matches(e, key))
                {
                    best = i;
                    break;
                }
            }
        };
        if let Some(list) = index.exact.get(key.path) {
            first_in(list);
        }
        for &len in &index.lengths {
            let Some(head) = key.path.get(..len) else {
                if len > key.path.len() {
                    break;
                }
                continue;
            };
            if let Some(list) = index.prefix.get(head) {
                first_in(list);
            }
        }
        if let Some(list) = index.host.get(key.host) {
            first_in(list);
        }
        first_in(&index.rest);
        self.entries.get(best as usize).map(|e| e.route)
    }

    fn entry_matches(&self, e: &Entry, key: &RequestKey<'_>) -> bool {
        host_matches(&e.host, key.host)
            && path_matches(&e.path, key.path)
            && self
                .matches
                .get(e.route)
                .is_some_and(|m| extra_matches(m, key))
    }
}

/// Route `i`'s entries (each host × each path; none means any) with their keys.
fn keyed_entries(i: usize, m: &RouteMatch, out: &mut Vec<(Key, (HostPattern, PathPattern))>) {
    const ANY_HOST: &[HostPattern] = &[HostPattern::Any];
    const ANY_PATH: &[PathPattern] = &[PathPattern::Any];
    let hosts = if m.hosts.is_empty() {
        ANY_HOST
    } else {
        &m.hosts
    };
    let paths = if m.paths.is_empty() {
        ANY_PATH
    } else {
        &m.paths
    };
    let conditions = m.methods.len().min(1) + m.headers.len();
    for h in hosts {
        for p in paths {
            let key = (
                std::cmp::Reverse(host_rank(h)),
                std::cmp::Reverse(path_rank(p)),
                std::cmp::Reverse(conditions),
                i,
            );
            out.push((key, (h.clone(), p.clone())));
        }
    }
}

fn host_rank(h: &HostPattern) -> (u8, usize) {
    match h {
        HostPattern::Exact(_) => (3, 0),
        HostPattern::Wildcard(s) => (2, s.len()),
        HostPattern::Regex(_) => (1, 0),
        HostPattern::Any => (0, 0),
    }
}

fn path_rank(p: &PathPattern) -> (u8, usize) {
    match p {
        PathPattern::Exact(_) => (3, 0),
        PathPattern::Prefix(s) => (2, s.len()),
        PathPattern::Regex(_) => (1, 0),
        PathPattern::Any => (0, 0),
    }
}

fn host_matches(p: &HostPattern, host: &str) -> bool {
    match p {
        HostPattern::Exact(h) => **h == *host,
        HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        HostPattern::Regex(re) => re.is_match(host),
        HostPattern::Any => true,
    }
}

fn path_matches(p: &PathPattern, path: &str) -> bool {
    match p {
        PathPattern::Exact(s) => **s == *path,
        PathPattern::Prefix(s) => path.starts_with(&**s),
        PathPattern::Regex(re) => re.is_match(path),
        PathPattern::Any => true,
    }
}

fn extra_matches(m: &RouteMatch, key: &RequestKey<'_>) -> bool {
    if !m.methods.is_empty() && !m.methods.contains(key.method) {
        return false;
    }
    m.headers.iter().all(|(name, pat)| {
        key.headers.get_all(name).iter().any(|v| {
            let Ok(v) = v.to_str() else { return false };
            match pat {
                HeaderPattern::Exact(s) => s == v,
                HeaderPattern::Regex(re) => re.is_match(v),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(router: &Router, host: &str, path: &str, method: Method) -> Option<usize> {
        let headers = HeaderMap::new();
        router.find(&RequestKey {
            host,
            path,
            method: &method,
            headers: &headers,
        })
    }

    /// The first entry that matches, by scanning the whole table.
    fn scan(router: &Router, key: &RequestKey<'_>) -> Option<usize> {
        router
            .entries
            .iter()
            .find(|e| router.entry_matches(e, key))
            .map(|e| e.route)
    }

    #[test]
    fn an_indexed_table_finds_what_a_scan_of_it_finds() {
        // A small generator (xorshift), so that a failure replays.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let segments = ["a", "b", "ab", "api", "v1", "é", "x"];
        let path = |next: &mut dyn FnMut(usize) -> usize| {
            let mut p = String::from("/");
            for _ in 0..next(4) {
                p.push_str(segments[next(segments.len())]);
                if next(3) > 0 {
                    p.push('/');
                }
            }
            p
        };
        let hosts = ["a.example.com", "b.example.com", "example.com", "other.org"];
        let (host_re, path_re) = (Regex::new("^a").unwrap(), Regex::new("^/a").unwrap());
        for table in 0..40 {
            let routes: Vec<RouteMatch> = (0..40 + table * 5)
                .map(|_| RouteMatch {
                    hosts: (0..next(3))
                        .map(|_| match next(5) {
                            0 | 1 => HostPattern::Exact(hosts[next(hosts.len())].into()),
                            2 => HostPattern::Wildcard(".example.com".into()),
                            3 => HostPattern::Regex(host_re.clone()),
                            _ => HostPattern::Any,
                        })
                        .collect(),
                    paths: (0..next(3))
                        .map(|_| match next(6) {
                            0 | 1 => PathPattern::Exact(path(&mut next).into()),
                            2 | 3 => PathPattern::Prefix(path(&mut next).into()),
                            4 => PathPattern::Regex(path_re.clone()),
                            _ => PathPattern::Any,
                        })
                        .collect(),
                    methods: if next(4) == 0 {
                        vec![Method::POST]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                })
                .collect();
            let router = Router::new(routes);
            assert!(router.index.is_some());
            let headers = HeaderMap::new();
            for _ in 0..300 {
                let p = path(&mut next);
                let method = if next(2) == 0 {
                    Method::GET
                } else {
                    Method::POST
                };
                let key = RequestKey {
                    host: hosts[next(hosts.len())],
                    path: &p,
                    method: &method,
                    headers: &headers,
                };
                assert_eq!(
                    router.find(&key),
                    scan(&router, &key),
                    "table {table}: {} {p}",
                    key.host
                );
            }
        }
    }

    #[test]
    fn a_table_with_changed_routes_is_the_one_built_whole() {
        let prefix = |p: &str| PathPattern::Prefix(p.into());
        let route = |hosts: Vec<HostPattern>, paths: Vec<PathPattern>, methods: usize| {
            Arc::new(RouteMatch {
                hosts,
                paths,
                methods: vec![Method::GET; methods],
                ..Default::default()
            })
        };
        let mut routes: Vec<Arc<RouteMatch>> = (0..40)
            .map(|i| {
                let hosts = match i % 4 {
                    0 => vec![],
                    1 => vec![HostPattern::Exact(format!("h{}", i % 3).into())],
                    2 => vec![HostPattern::Wildcard(".example.com".into())],
                    _ => vec![HostPattern::Any, HostPattern::Exact("a".into())],
                };
                let paths = match i % 5 {
                    0 => vec![],
                    1 => vec![prefix(&"/x".repeat(i % 7 + 1))],
                    2 => vec![
                        PathPattern::Exact(format!("/e{}", i % 2).into()),
                        prefix("/"),
                    ],
                    3 => vec![PathPattern::Regex(Regex::new("^/r").unwrap())],
                    _ => vec![prefix("/x/"), prefix("/y/")],
                };
                route(hosts, paths, i % 2)
            })
            .collect();
        let before = Router::of_shared(routes.clone());
        routes[3] = route(vec![], vec![prefix("/x/x/x/x/x/x/x/x")], 1);
        routes[17] = route(vec![HostPattern::Exact("h1".into())], vec![], 0);
        routes[39] = route(vec![], vec![PathPattern::Exact("/e0".into())], 1);
        let merged = before.with_changed(routes.clone(), &[3, 17, 39, 17]);
        let whole = Router::of_shared(routes);
        assert_eq!(merged.keys, whole.keys);
        let routes_of = |r: &Router| r.entries.iter().map(|e| e.route).collect::<Vec<_>>();
        assert_eq!(routes_of(&merged), routes_of(&whole));
        for (host, path) in [
            ("h1", "/x/x/x/x/x/x/x/x/y"),
            ("a", "/e0"),
            ("b.example.com", "/r"),
            ("z", "/"),
        ] {
            assert_eq!(
                find(&merged, host, path, Method::GET),
                find(&whole, host, path, Method::GET),
                "{host}{path}"
            );
        }
    }

    #[test]
    fn exact_host_beats_wildcard_beats_regex_beats_any() {
        let r = Router::new(vec![
            RouteMatch::default(),
            RouteMatch {
                hosts: vec![HostPattern::Regex(Regex::new("^a").unwrap())],
                ..Default::default()
            },
            RouteMatch {
                hosts: vec![HostPattern::Wildcard(".example.com".into())],
                ..Default::default()
            },
            RouteMatch {
                hosts: vec![HostPattern::Exact("api.example.com".into())],
                ..Default::default()
            },
        ]);
        assert_eq!(find(&r, "api.example.com", "/", Method::GET), Some(3));
        assert_eq!(find(&r, "abc.example.com", "/", Method::GET), Some(2));
        assert_eq!(find(&r, "abc.org", "/", Method::GET), Some(1));
        assert_eq!(find(&r, "other.org", "/", Method::GET), Some(0));
        assert_eq!(find(&r, "example.com", "/", Method::GET), Some(0));
    }

    #[test]
    fn exact_path_beats_longest_prefix_beats_regex() {
        let r = Router::new(vec![
            RouteMatch {
                paths: vec![PathPattern::Prefix("/api".into())],
                ..Default::default()
            },
            RouteMatch {
                paths: vec![PathPattern::Prefix("/api/v2".into())],
                ..Default::default()
            },
            RouteMatch {
                paths: vec![PathPattern::Exact("/api/v2/health".into())],
                ..Default::default()
            },
            RouteMatch {
                paths: vec![PathPattern::Regex(Regex::new("^/api/v2/h").unwrap())],
                ..Default::default()
            },
        ]);
        assert_eq!(find(&r, "h", "/api/v2/health", Method::GET), Some(2));
        assert_eq!(find(&r, "h", "/api/v2/healthz", Method::GET), Some(1));
        assert_eq!(find(&r, "h", "/api/x", Method::GET), Some(0));
        assert_eq!(find(&r, "h", "/other", Method::GET), None);
    }

    #[test]
    fn method_conditions_win_over_none_and_filter() {
        let r = Router::new(vec![
            RouteMatch::default(),
            RouteMatch {
                methods: vec![Method::POST],
                ..Default::default()
            },
        ]);
        assert_eq!(find(&r, "h", "/", Method::POST), Some(1));
        assert_eq!(find(&r, "h", "/", Method::GET), Some(0));
    }
}
