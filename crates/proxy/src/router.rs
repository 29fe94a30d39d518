//! Route matching. Each route's (host pattern × path pattern) pairs become entries sorted
//! once, when the snapshot is built, by a fixed precedence; a request takes the first entry
//! that matches. The precedence (documented in docs/configuration.md):
//!
//! 1. host: exact > wildcard (longer suffix first) > regex > any host;
//! 2. path: exact > prefix (longer first) > regex > any path;
//! 3. more method/header conditions first;
//! 4. earlier in the configuration first.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

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

/// The compiled routing table of one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    entries: Vec<Entry>,
    matches: Vec<Arc<RouteMatch>>,
    needs_host: bool,
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
        let mut entries = Vec::new();
        for (i, m) in routes.iter().enumerate() {
            let hosts = if m.hosts.is_empty() {
                vec![HostPattern::Any]
            } else {
                m.hosts.clone()
            };
            let paths = if m.paths.is_empty() {
                vec![PathPattern::Any]
            } else {
                m.paths.clone()
            };
            for h in &hosts {
                for p in &paths {
                    entries.push(Entry {
                        route: i,
                        host: h.clone(),
                        path: p.clone(),
                    });
                }
            }
        }
        entries.sort_by_key(|e| {
            let m = &routes[e.route];
            (
                std::cmp::Reverse(host_rank(&e.host)),
                std::cmp::Reverse(path_rank(&e.path)),
                std::cmp::Reverse(m.methods.len().min(1) + m.headers.len()),
                e.route,
            )
        });
        Router {
            needs_host: entries.iter().any(|e| !matches!(e.host, HostPattern::Any)),
            entries,
            matches: routes,
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
        self.entries
            .iter()
            .find(|e| {
                host_matches(&e.host, key.host)
                    && path_matches(&e.path, key.path)
                    && extra_matches(&self.matches[e.route], key)
            })
            .map(|e| e.route)
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
