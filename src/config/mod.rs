//! Configuration: loading a file (its format is `sluicegate_config`, read with line numbers
//! by `sluicegate_core::yaml`) and assembling it into a validated
//! [`Snapshot`](crate::state::Snapshot) ([`validate`]): routes, plugin chains, compiled
//! scripts, upstream runtimes, TLS configurations.
//!
//! Loading never stops at the first problem: every element is checked and every error is
//! returned with its path and line, so `sluicegate check` can list them all.

pub mod validate;
pub mod watch;

use std::path::Path as FsPath;
use std::sync::Arc;

pub use sluicegate_core::diag::ConfigError;

use sluicegate_core::{diag, yaml};

use crate::state::Snapshot;
use sluicegate_telemetry::Metrics;

pub use sluicegate_proxy::settings::{ListenerSettings, Settings};

/// Reads and validates the file at `path` into snapshot number `version`.
pub fn load_snapshot(
    path: &FsPath,
    version: u64,
    workers: usize,
    metrics: &Metrics,
) -> Result<Snapshot, ConfigError> {
    load_snapshot_with(path, version, workers, metrics, None)
}

/// [`load_snapshot`] in cluster mode: the cluster's `entities` fill the sections the file
/// leaves to the store (ignored when the file has no `cluster:` section).
pub fn load_snapshot_with(
    path: &FsPath,
    version: u64,
    workers: usize,
    metrics: &Metrics,
    entities: Option<&sluicegate_cluster::Entities>,
) -> Result<Snapshot, ConfigError> {
    let text = read(path)?;
    let digest = watch::digest(text.as_bytes());
    load_text(path, &text, digest, version, workers, metrics, entities).map(|(s, _)| s)
}

/// What the reloader keeps of the last snapshot it built in cluster mode, so that a change
/// of the store's routes alone builds only the routes that changed. Cheap to clone: the
/// admin API checks a write against the copy the reloader publishes ([`LastBuilds`]).
#[derive(Clone)]
pub struct LastBuild {
    version: u64,
    digest: [u8; 32],
    entities: Arc<sluicegate_cluster::Entities>,
    parts: Arc<validate::Parts>,
}

/// The reloader's last build, as the admin API reads it: the one of the running snapshot
/// when its `version` is that snapshot's.
pub type LastBuilds = arc_swap::ArcSwapOption<LastBuild>;

/// `current` with `entities`, when `last` is the build `current` came from, the file is
/// unchanged (`digest`) and only routes differ from `last`'s entities: only the new and
/// changed routes are built. `None` when that does not hold or finds a problem.
fn with_changed_routes(
    current: &Snapshot,
    last: &LastBuild,
    entities: &sluicegate_cluster::Entities,
    digest: [u8; 32],
    version: u64,
    metrics: &Metrics,
) -> Option<Snapshot> {
    if last.version != current.version || last.digest != digest {
        return None;
    }
    let routes = crate::cluster::route_changes(&last.entities, entities, &current.routes)?;
    validate::with_routes(current, &last.parts, routes, version, metrics)
}

/// The reloader's build in cluster mode: `current` with the file and `entities`. With
/// `routes_only` (a change from the store, not a reload that re-reads the files the
/// configuration names), when the file is the one `last` was built from and only routes
/// differ from its entities, only the new and changed routes are built and validated, the
/// others and every other section are `current`'s; otherwise, and whenever that finds a
/// problem, the whole configuration is built, as `sluicegate check` would.
pub fn load_cluster_snapshot(
    current: &Snapshot,
    workers: usize,
    metrics: &Metrics,
    entities: &Arc<sluicegate_cluster::Entities>,
    last: &mut Option<LastBuild>,
    routes_only: bool,
) -> Result<Snapshot, ConfigError> {
    let path = current.source.as_path();
    let version = current.version + 1;
    let text = read(path)?;
    let digest = watch::digest(text.as_bytes());
    if let Some(l) = last.as_mut().filter(|_| routes_only) {
        if let Some(next) = with_changed_routes(current, l, entities, digest, version, metrics) {
            l.version = version;
            l.entities = entities.clone();
            return Ok(next);
        }
    }
    let (next, parts) = load_text(
        path,
        &text,
        digest,
        version,
        workers,
        metrics,
        Some(entities),
    )?;
    *last = Some(LastBuild {
        version,
        digest,
        entities: entities.clone(),
        parts: Arc::new(parts),
    });
    Ok(next)
}

/// Validates `entities` with the running snapshot `current`'s file, as the reloader would
/// build them after a change from the store: against `last` (the build `current` came
/// from) when only routes changed, else as a whole. Nothing is swapped in; metrics go to
/// a throw-away registry. Says which of the two checks passed.
pub fn check_cluster(
    current: &Snapshot,
    workers: usize,
    entities: &sluicegate_cluster::Entities,
    last: Option<&LastBuild>,
) -> Result<Checked, ConfigError> {
    let path = current.source.as_path();
    let text = read(path)?;
    let digest = watch::digest(text.as_bytes());
    let metrics = Metrics::default();
    let version = current.version + 1;
    if last
        .and_then(|l| with_changed_routes(current, l, entities, digest, version, &metrics))
        .is_some()
    {
        return Ok(Checked::Routes);
    }
    load_text(
        path,
        &text,
        digest,
        version,
        workers,
        &metrics,
        Some(entities),
    )
    .map(|_| Checked::Whole)
}

/// How [`check_cluster`] validated a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Only its new and changed routes were built, on the running snapshot.
    Routes,
    /// The whole configuration was built.
    Whole,
}

fn read(path: &FsPath) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: path.display().to_string(),
        diags: vec![diag::Diag {
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })
}

/// Builds the file's `text` (whose digest is `digest`) with the cluster's `entities`.
fn load_text(
    path: &FsPath,
    text: &str,
    digest: [u8; 32],
    version: u64,
    workers: usize,
    metrics: &Metrics,
    entities: Option<&sluicegate_cluster::Entities>,
) -> Result<(Snapshot, validate::Parts), ConfigError> {
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| FsPath::new("."));
    let fail = |diags| ConfigError {
        source_name: path.display().to_string(),
        diags,
    };
    let mut root = yaml::parse(text, &yaml::ProcessEnv).map_err(fail)?;
    crate::cluster::merge(&mut root, entities).map_err(fail)?;
    let built = validate::snapshot_and_parts(&root, base_dir, version, workers, metrics);
    root.free_paced();
    built.map_err(fail).map(|(mut s, parts)| {
        s.source = path.to_path_buf();
        s.source_digest = digest;
        (s, parts)
    })
}

/// Validates configuration `text` (named `name` in errors); relative file names resolve
/// against `base_dir`.
pub fn load_snapshot_from_str(
    text: &str,
    name: &str,
    base_dir: &FsPath,
    version: u64,
    workers: usize,
    metrics: &Metrics,
) -> Result<Snapshot, ConfigError> {
    let fail = |diags| ConfigError {
        source_name: name.to_string(),
        diags,
    };
    let mut root = yaml::parse(text, &yaml::ProcessEnv).map_err(fail)?;
    crate::cluster::merge(&mut root, None).map_err(fail)?;
    validate::snapshot(&root, base_dir, version, workers, metrics).map_err(fail)
}

/// Settings that differ between two snapshots but cannot change while running.
pub fn restart_only_changes(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let addrs = |s: &Snapshot| {
        s.listeners
            .iter()
            .map(|l| l.address.clone())
            .collect::<Vec<_>>()
    };
    if addrs(old) != addrs(new) {
        out.push(format!(
            "listeners: addresses {:?} -> {:?}",
            addrs(old),
            addrs(new)
        ));
    }
    if old.settings.workers != new.settings.workers {
        out.push(format!(
            "workers: {} -> {}",
            old.settings.workers, new.settings.workers
        ));
    }
    if old.settings.admin_address != new.settings.admin_address {
        let show = |a: &Option<String>| a.clone().unwrap_or_else(|| "disabled".to_string());
        out.push(format!(
            "admin.address: {} -> {}",
            show(&old.settings.admin_address),
            show(&new.settings.admin_address)
        ));
    }
    if old.settings.data_dir != new.settings.data_dir {
        out.push("data_dir".to_string());
    }
    if old.settings.cluster != new.settings.cluster {
        out.push("cluster".to_string());
    }
    out.extend(queue_restart_only_changes(old, new));
    out
}

/// Queue settings that changed between two snapshots but apply only after a restart.
fn queue_restart_only_changes(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let old_bytes: std::collections::HashMap<&str, u64> = old
        .routes
        .iter()
        .filter_map(|r| r.queue.as_ref())
        .map(|q| (q.name.as_str(), q.settings.max_bytes))
        .collect();
    new.routes
        .iter()
        .filter_map(|r| r.queue.as_ref())
        .filter_map(|q| {
            let before = *old_bytes.get(q.name.as_str())?;
            (before != q.settings.max_bytes).then(|| {
                format!(
                    "queue `{}`: max_bytes {before} -> {}",
                    q.name, q.settings.max_bytes
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{json, Value};
    use sluicegate_cluster::{Change, Entities, Kind};

    /// A cluster-mode file in a temporary directory (nothing connects to its store).
    fn file(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("node.yaml");
        std::fs::write(
            &path,
            "listeners: [{address: \"127.0.0.1:0\"}]\nadmin: {enabled: false}\n\
             data_dir: data\ncluster: {store: \"postgresql://u@127.0.0.1:1/db\", node_name: n}\n",
        )
        .unwrap();
        path
    }

    fn route(name: &str, path: &str) -> Value {
        json!({"name": name, "match": {"paths": path}, "upstream": "a"})
    }

    /// `e` with `name` of `kind` written at revision `rev` (`ord` = its first write).
    fn write(e: &Entities, kind: Kind, name: &str, body: Value) -> Arc<Entities> {
        let mut next = e.clone();
        let ord = e
            .get(kind, name)
            .map_or(e.count(kind) as i64 + 1, |x| x.ord);
        let revision = e.revision + 1;
        next.apply(
            vec![Change {
                kind,
                name: name.into(),
                ord,
                revision,
                body: Some(body),
            }],
            revision,
        );
        Arc::new(next)
    }

    /// Six routes on upstream `a`; `r1` has a queue named `q`.
    fn six_routes() -> Arc<Entities> {
        let mut e = Arc::new(Entities::empty("c"));
        e = write(
            &e,
            Kind::Upstreams,
            "a",
            json!({"name": "a", "targets": ["127.0.0.1:9"]}),
        );
        for i in 0..6 {
            let mut body = route(&format!("r{i}"), &format!("/r{i}/"));
            if i == 1 {
                body["queue"] = json!({"name": "q"});
            }
            e = write(&e, Kind::Routes, &format!("r{i}"), body);
        }
        e
    }

    fn find(s: &Snapshot, path: &str) -> Option<String> {
        let headers = http::HeaderMap::new();
        let key = sluicegate_proxy::router::RequestKey {
            host: "x",
            path,
            method: &http::Method::GET,
            headers: &headers,
        };
        s.router.find(&key).map(|i| s.routes[i].name.clone())
    }

    fn names(s: &Snapshot) -> Vec<String> {
        s.routes.iter().map(|r| r.name.clone()).collect()
    }

    /// A node running `six_routes`: its first snapshot, then the reloader's first build
    /// (a whole one), which `last` keeps.
    struct Running {
        /// Holds the directory of `path` (removed when dropped).
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        m: Metrics,
        e1: Arc<Entities>,
        s2: Snapshot,
        last: Option<LastBuild>,
    }

    fn running() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir);
        let m = Metrics::default();
        let e1 = six_routes();
        let first = load_snapshot_with(&path, 1, 1, &m, Some(&e1)).unwrap();
        let mut last = None;
        let s2 = load_cluster_snapshot(&first, 1, &m, &e1, &mut last, true).unwrap();
        Running {
            _dir: dir,
            path,
            m,
            e1,
            s2,
            last,
        }
    }

    #[test]
    fn a_change_of_routes_alone_builds_only_the_changed_routes() {
        let Running {
            path,
            m,
            e1,
            s2,
            mut last,
            _dir,
        } = running();
        let e2 = write(&e1, Kind::Routes, "r2", route("r2", "/moved/"));
        let e2 = write(&e2, Kind::Routes, "new", route("new", "/new/"));
        // r1 keeps its queue's name: its own, not another route's.
        let mut queued = route("r1", "/one/");
        queued["queue"] = json!({"name": "q"});
        let e2 = write(&e2, Kind::Routes, "r1", queued);
        let mut e2 = Entities::clone(&e2);
        let revision = e2.revision + 1;
        e2.apply(
            vec![Change {
                kind: Kind::Routes,
                name: "r3".into(),
                ord: 4,
                revision,
                body: None,
            }],
            revision,
        );
        let e2 = Arc::new(e2);
        let s3 = load_cluster_snapshot(&s2, 1, &m, &e2, &mut last, true).unwrap();
        // Every other section, and the unchanged routes, are the running snapshot's own.
        assert!(Arc::ptr_eq(&s3.upstreams["a"], &s2.upstreams["a"]));
        assert!(Arc::ptr_eq(&s3.routes[0], &s2.routes[0]));
        assert!(!Arc::ptr_eq(&s3.routes[1], &s2.routes[1]));
        assert_eq!(s3.routes[1].queue.as_ref().unwrap().name, "q");
        assert_eq!(s3.version, s2.version + 1);
        // What a whole build gives: the same routes in the same order, routed the same.
        let whole = load_snapshot_with(&path, 9, 1, &m, Some(&e2)).unwrap();
        assert_eq!(names(&s3), names(&whole));
        assert_eq!(names(&s3), ["r0", "r1", "r2", "r4", "r5", "new"]);
        assert!(Arc::ptr_eq(&s3.routes[4], &s2.routes[5]));
        for p in ["/r2/", "/moved/", "/new/", "/r5/x", "/r1/", "/one/", "/r3/"] {
            assert_eq!(find(&s3, p), find(&whole, p), "{p}");
        }
        assert_eq!(find(&s3, "/moved/").as_deref(), Some("r2"));
        assert_eq!(find(&s3, "/r2/"), None);
    }

    #[test]
    fn a_bad_route_is_reported_as_a_whole_build_reports_it() {
        let Running {
            path,
            m,
            e1,
            s2,
            mut last,
            _dir,
        } = running();
        let unknown = write(
            &e1,
            Kind::Routes,
            "r3",
            json!({"name": "r3", "match": {"paths": "/r3/"}, "upstream": "nope"}),
        );
        // r0 takes the queue name r1 keeps: the whole build names r1, the later route.
        let mut taken = route("r0", "/r0/");
        taken["queue"] = json!({"name": "q"});
        let taken = write(&e1, Kind::Routes, "r0", taken);
        // A `${secret:...}` where no secret is taken: only the whole build catches it.
        let mut literal = route("r4", "/r4/");
        literal["metadata"] = json!({"k": "${secret:x}"});
        let literal = write(&e1, Kind::Routes, "r4", literal);
        // A route whose body names another route.
        let dup = write(&e1, Kind::Routes, "r2", route("r0", "/two/"));
        for (e, at) in [
            (&dup, "routes[2].name"),
            (&unknown, "routes[3].upstream"),
            (&taken, "routes[1].queue.name"),
            (&literal, "routes[4].metadata.k"),
        ] {
            let err = load_cluster_snapshot(&s2, 1, &m, e, &mut last, true)
                .err()
                .unwrap();
            let whole = load_snapshot_with(&path, 9, 1, &m, Some(e)).err().unwrap();
            assert_eq!(err.diags, whole.diags);
            assert!(err.diags.iter().any(|d| d.path == at), "{at}: {err:?}");
        }
        // The refused changes left the running build to build on.
        let e2 = write(&e1, Kind::Routes, "r5", route("r5", "/five/"));
        let s3 = load_cluster_snapshot(&s2, 1, &m, &e2, &mut last, true).unwrap();
        assert!(Arc::ptr_eq(&s3.upstreams["a"], &s2.upstreams["a"]));
    }

    #[test]
    fn a_write_is_checked_as_the_node_would_apply_it() {
        let Running {
            path,
            m,
            e1,
            s2,
            last,
            _dir,
        } = running();
        let last = last.unwrap();
        let check = |e: &Entities, l| check_cluster(&s2, 1, e, l);
        // A change of routes alone: only it is built, whether valid or not.
        let moved = write(&e1, Kind::Routes, "r2", route("r2", "/moved/"));
        assert_eq!(check(&moved, Some(&last)).unwrap(), Checked::Routes);
        assert_eq!(check(&moved, None).unwrap(), Checked::Whole);
        let bad = write(
            &e1,
            Kind::Routes,
            "r3",
            json!({"name": "r3", "match": {"paths": "/r3/"}, "upstream": "nope"}),
        );
        let err = check(&bad, Some(&last)).err().unwrap();
        let whole = load_snapshot_with(&path, 9, 1, &m, Some(&bad))
            .err()
            .unwrap();
        assert_eq!(err.diags, whole.diags);
        // The store ahead of this node (a revision it has not applied): still only routes.
        let ahead = write(&moved, Kind::Routes, "new", route("new", "/new/"));
        assert_eq!(check(&ahead, Some(&last)).unwrap(), Checked::Routes);
        // Another kind changed, or a build of another snapshot: the whole candidate.
        let upstream = write(
            &e1,
            Kind::Upstreams,
            "a",
            json!({"name": "a", "targets": ["127.0.0.1:8"]}),
        );
        assert_eq!(check(&upstream, Some(&last)).unwrap(), Checked::Whole);
        let first = load_snapshot_with(&path, 1, 1, &m, Some(&e1)).unwrap();
        assert_eq!(
            check_cluster(&first, 1, &moved, Some(&last)).unwrap(),
            Checked::Whole
        );
    }

    #[test]
    fn other_changes_and_file_reloads_build_everything() {
        let Running {
            path,
            m,
            e1,
            s2,
            mut last,
            _dir,
        } = running();
        // An upstream changed.
        let e2 = write(
            &e1,
            Kind::Upstreams,
            "a",
            json!({"name": "a", "targets": ["127.0.0.1:8"]}),
        );
        let s3 = load_cluster_snapshot(&s2, 1, &m, &e2, &mut last, true).unwrap();
        assert!(!Arc::ptr_eq(&s3.upstreams["a"], &s2.upstreams["a"]));
        // A reload that re-reads the files (SIGHUP, /reload), routes changed or not.
        let e3 = write(&e2, Kind::Routes, "r2", route("r2", "/moved/"));
        let s4 = load_cluster_snapshot(&s3, 1, &m, &e3, &mut last, false).unwrap();
        assert!(!Arc::ptr_eq(&s4.upstreams["a"], &s3.upstreams["a"]));
        // The file changed.
        let text = std::fs::read_to_string(&path).unwrap() + "watch_config: false\n";
        std::fs::write(&path, text).unwrap();
        let e4 = write(&e3, Kind::Routes, "r3", route("r3", "/moved3/"));
        let s5 = load_cluster_snapshot(&s4, 1, &m, &e4, &mut last, true).unwrap();
        assert!(!Arc::ptr_eq(&s5.upstreams["a"], &s4.upstreams["a"]));
        // A snapshot the last build did not make (another version).
        let e5 = write(&e4, Kind::Routes, "r4", route("r4", "/moved4/"));
        let s6 = load_cluster_snapshot(&s4, 1, &m, &e5, &mut last, true).unwrap();
        assert!(!Arc::ptr_eq(&s6.upstreams["a"], &s4.upstreams["a"]));
        // Then the next change of routes alone is built on the last build again.
        let e6 = write(&e5, Kind::Routes, "r5", route("r5", "/moved5/"));
        let s7 = load_cluster_snapshot(&s6, 1, &m, &e6, &mut last, true).unwrap();
        assert!(Arc::ptr_eq(&s7.upstreams["a"], &s6.upstreams["a"]));
        assert!(Arc::ptr_eq(&s7.routes[4], &s6.routes[4]));
        assert_eq!(find(&s7, "/moved5/").as_deref(), Some("r5"));
        assert_eq!(names(&s7), names(&s6));
    }
}
