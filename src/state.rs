//! The one reloader, and the snapshot types it swaps (re-exported from the proxy crate,
//! where the data plane runs them).
//!
//! Every reload trigger (SIGHUP,
//! `sluicegate reload`, `POST /reload`) sends a [`ReloadRequest`] to the one
//! [`reloader`] task, which builds a complete new snapshot and swaps it in, or keeps the
//! running one and reports why.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use sluicegate_proxy::snapshot::*;

use crate::config::{self, ConfigError};

/// The reloader: applies reload requests one at a time, in order.
///
/// In cluster mode every reload builds from the file and the cluster's wanted entities.
pub async fn reloader(
    shared: Arc<Shared>,
    cluster: Option<Arc<sluicegate_cluster::Cluster>>,
    builds: Arc<config::LastBuilds>,
    mut rx: mpsc::UnboundedReceiver<ReloadRequest>,
) {
    let mut last: Option<config::LastBuild> = None;
    while let Some(req) = rx.recv().await {
        if let Some(update) = req.code {
            // Compiling a large set takes a while: off the control thread, so the admin API
            // and the pollers keep answering; still one change at a time.
            let shared = shared.clone();
            let _ =
                tokio::task::spawn_blocking(move || crate::code_sources::handle(&shared, update))
                    .await;
            continue;
        }
        let current = shared.snapshot.load_full();
        let entities = cluster.as_ref().map(|c| c.wanted());
        // Built on the blocking pool, like the code above: the control thread keeps
        // answering the admin API and the store while a large configuration builds.
        let build = {
            let (shared, current) = (shared.clone(), current.clone());
            let routes_only = req.trigger == "cluster";
            move || {
                let result = match &entities {
                    Some(e) => config::load_cluster_snapshot(
                        &current,
                        shared.workers,
                        &shared.metrics,
                        e,
                        &mut last,
                        routes_only,
                    ),
                    None => config::load_snapshot_with(
                        &current.source,
                        current.version + 1,
                        shared.workers,
                        &shared.metrics,
                        None,
                    ),
                };
                (result, last)
            }
        };
        let (result, kept) = tokio::task::spawn_blocking(build)
            .await
            .unwrap_or_else(|e| (Err(build_failed(&e)), None));
        last = kept;
        let result = result
            .and_then(|next| {
                // The store's sections come from the follower started with the process: a
                // file cannot switch cluster mode on or off while it runs.
                if next.settings.cluster.is_some() == cluster.is_some() {
                    Ok(next)
                } else {
                    Err(ConfigError {
                        source_name: current.source.display().to_string(),
                        diags: vec![sluicegate_core::diag::Diag {
                            path: "cluster".into(),
                            line: None,
                            message: "adding or removing the `cluster:` section takes a restart"
                                .into(),
                        }],
                    })
                }
            })
            .and_then(|mut next| carry_over_queues(&current, &mut next).map(|()| next))
            .map(|mut next| {
                sluicegate_upstream::live::Runtime::carry_over(
                    &current.upstream_runtime,
                    &mut next.upstream_runtime,
                    next.upstreams.values(),
                );
                next
            });
        // The dynamic code under a changed `code:` section is in place before the snapshot
        // that uses it (see `sluicegate_code::on_config`), built on the blocking pool.
        let result = match result {
            Ok(next) if current.code != next.code => {
                let (shared, current) = (shared.clone(), current.clone());
                tokio::task::spawn_blocking(move || {
                    sluicegate_code::on_config(
                        &shared.code,
                        &next.settings.data_dir,
                        current.code.as_deref(),
                        next.code.as_deref(),
                    );
                    next
                })
                .await
                .map_err(|e| build_failed(&e))
            }
            other => other,
        };
        let result = result.map(|next| {
            let needs_restart = config::restart_only_changes(&current, &next);
            let version = next.version;
            shared.snapshot.store(Arc::new(next));
            // Published after the snapshot it built: a check that reads the two in the
            // other order sees versions that differ and builds the whole candidate.
            builds.store(last.clone().map(Arc::new));
            shared.swapped.send_replace(version);
            ReloadOutcome {
                version,
                needs_restart,
            }
        });
        match &result {
            Ok(outcome) => {
                shared.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                // A file fixed after the node refused a cluster revision: the follower
                // tries that revision again on its next check.
                if let Some(c) = cluster.as_ref().filter(|_| req.trigger != "cluster") {
                    c.update(|s| s.rejected_revision = None);
                }
                tracing::info!(
                    trigger = req.trigger,
                    version = outcome.version,
                    "Configuration reloaded."
                );
                for change in &outcome.needs_restart {
                    tracing::warn!(trigger = req.trigger, change = %change, "Setting changed but only applies after a restart.");
                }
            }
            Err(e) => {
                shared
                    .metrics
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(trigger = req.trigger, error = %e, "Configuration rejected; the running one keeps serving.");
            }
        }
        if result.is_ok() {
            tokio::spawn(retire(current));
        }
        if let Some(reply) = req.reply {
            let _ = reply.send(result);
        }
    }
}

/// Frees a replaced snapshot off the workers, once the last request that
/// still holds it has ended: not on the worker that ends that request, where freeing a
/// large routing table would delay the requests behind it. (After the swap no new holder
/// can appear: every holder counts in the reference count.)
async fn retire(old: Arc<Snapshot>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    while Arc::strong_count(&old) > 1 {
        tick.tick().await;
    }
    // Freed on the blocking pool, which is paced (`sluicegate_core::pace`): a large table
    // takes milliseconds to free.
    let _ = tokio::task::spawn_blocking(move || match Arc::try_unwrap(old) {
        Ok(mut snapshot) => {
            sluicegate_core::pace::drop_paced(std::mem::take(&mut snapshot.routes));
            std::mem::take(&mut snapshot.router).free_paced();
        }
        Err(old) => drop(old),
    })
    .await;
}

/// A build that did not finish (it panicked): the running configuration stays.
fn build_failed(e: &tokio::task::JoinError) -> ConfigError {
    ConfigError {
        source_name: "<reloader>".into(),
        diags: vec![sluicegate_core::diag::Diag::at_line(
            0,
            format!("building the configuration failed: {e}"),
        )],
    }
}

/// Carries the running queue registry over to the `next` snapshot and applies it (reloads).
fn carry_over_queues(current: &Snapshot, next: &mut Snapshot) -> Result<(), ConfigError> {
    next.queues = current.queues.clone();
    let routes = next.queued_routes();
    next.queues.apply(&routes).map_err(|diags| ConfigError {
        source_name: next.source.display().to_string(),
        diags,
    })
}
