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
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        diags: vec![diag::Diag {
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| FsPath::new("."));
    let fail = |diags| ConfigError {
        source_name: name.clone(),
        diags,
    };
    let mut root = yaml::parse(&text, &yaml::ProcessEnv).map_err(fail)?;
    crate::cluster::merge(&mut root, entities).map_err(fail)?;
    validate::snapshot(&root, base_dir, version, workers, metrics)
        .map_err(fail)
        .map(|mut s| {
            s.source = path.to_path_buf();
            s.source_digest = watch::digest(text.as_bytes());
            s
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
