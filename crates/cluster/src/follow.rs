//! The follower: keeps a node at the store's latest revision.
//!
//! It listens on the store's change channel; a notification only wakes it, it then reads
//! what changed since its own revision (changes, not the whole configuration), so a lost
//! notification costs nothing but time: a periodic check of the revision catches it, and
//! after a lost connection the node resyncs from its revision. A store with another
//! cluster id (a replaced database) makes it resync from scratch. Each new entity set goes
//! to the application ([`Apply`]), which validates it exactly as `sluicegate check` would
//! and swaps it in; once applied it is written to disk and reported in the nodes table.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::store::{self, within, StoreError, Wake};
use crate::{disk, schema, Cluster, Entities};

/// How often a node reports itself in the nodes table.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not seen for this long is reported `lost`.
pub const LOST_AFTER: Duration = Duration::from_secs(10);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the application does with a new entity set: validate it, build and swap in the
/// running configuration, or say why not.
pub trait Apply: Send + Sync + 'static {
    /// Applies `next`; `Err` keeps the running configuration.
    fn apply(&self, next: Arc<Entities>) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs until the task is dropped.
pub async fn run<A: Apply>(cluster: Arc<Cluster>, data_dir: PathBuf, apply: A) {
    let mut conn: Option<(Client, mpsc::UnboundedReceiver<Wake>)> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_beat: Option<Instant> = None;
    let mut copy = disk::Writer::new();
    let timeout = cluster.store.timeout;
    loop {
        if conn.is_none() {
            match within(timeout, open(&cluster)).await {
                Ok(c) => {
                    if !cluster.status().store_up {
                        tracing::info!(node = %cluster.node_name, "Cluster store reachable again; catching up.");
                    }
                    cluster.set_store_up(true, None);
                    backoff = Duration::from_millis(100);
                    conn = Some(c);
                }
                Err(e) => {
                    if cluster.status().store_up {
                        tracing::warn!(node = %cluster.node_name, error = %e, revision = cluster.applied_revision(), "Cluster store unreachable; serving the last applied revision.");
                    }
                    cluster.set_store_up(false, Some(e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let Some((client, _)) = conn.as_mut() else {
            continue;
        };
        let applied = cluster.applied();
        match within(timeout, store::refresh(client, &applied)).await {
            Ok(found) => {
                cluster.saw_store_revision(found.revision);
                cluster.update(|s| s.rows_read += found.rows as u64);
                let rejected = cluster.status().rejected_revision;
                if let Some(next) = found.next.filter(|_| rejected != Some(found.revision)) {
                    if next.cluster_id != applied.cluster_id && !applied.cluster_id.is_empty() {
                        tracing::warn!(node = %cluster.node_name, from = %applied.cluster_id, to = %next.cluster_id, "The cluster store is another database; resyncing from scratch.");
                    }
                    apply_one(&cluster, &data_dir, &apply, next, &mut copy).await;
                    // Report the new revision at once (what `/v1/cluster/nodes` shows).
                    last_beat = None;
                }
            }
            Err(e) => {
                lost(&cluster, &mut conn, e);
                continue;
            }
        }
        if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            let Some((client, _)) = conn.as_ref() else {
                continue;
            };
            let started = cluster
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let r = within(
                timeout,
                store::heartbeat(
                    client,
                    &cluster.node_name,
                    cluster.applied_revision(),
                    cluster.state(),
                    started,
                ),
            )
            .await;
            if let Err(e) = r {
                lost(&cluster, &mut conn, e);
                continue;
            }
            last_beat = Some(Instant::now());
        }
        let Some((_, wake)) = conn.as_mut() else {
            continue;
        };
        let nap = cluster.poll_interval.min(HEARTBEAT);
        match tokio::time::timeout(nap, wake.recv()).await {
            Ok(Some(Wake::Changed)) => {
                // Several writes in a row: one read covers them all.
                while let Ok(w) = wake.try_recv() {
                    if w == Wake::Lost {
                        lost(
                            &cluster,
                            &mut conn,
                            StoreError::Unreachable("connection closed".into()),
                        );
                        break;
                    }
                }
            }
            Ok(Some(Wake::Lost)) | Ok(None) => lost(
                &cluster,
                &mut conn,
                StoreError::Unreachable("connection closed".into()),
            ),
            Err(_) => {}
        }
    }
}

/// Connects, checks the schema and starts listening.
async fn open(cluster: &Cluster) -> Result<(Client, mpsc::UnboundedReceiver<Wake>), StoreError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = store::connect(&cluster.store, Some(tx)).await?;
    schema::check(&client).await?;
    client
        .batch_execute(&format!("LISTEN {}", store::CHANNEL))
        .await?;
    Ok((client, rx))
}

fn lost(
    cluster: &Cluster,
    conn: &mut Option<(Client, mpsc::UnboundedReceiver<Wake>)>,
    e: StoreError,
) {
    *conn = None;
    if e.is_unreachable() {
        if cluster.status().store_up {
            tracing::warn!(node = %cluster.node_name, error = %e, revision = cluster.applied_revision(), "Cluster store unreachable; serving the last applied revision.");
        }
        cluster.set_store_up(false, Some(e.to_string()));
    } else {
        tracing::error!(node = %cluster.node_name, error = %e, "Cluster store error; reconnecting.");
        cluster.update(|s| s.last_error = Some(e.to_string()));
    }
}

/// Applies `next` through the application, then keeps it on disk with `copy` (which
/// starts over, serializing everything again, if its writing task died).
async fn apply_one<A: Apply>(
    cluster: &Arc<Cluster>,
    data_dir: &std::path::Path,
    apply: &A,
    next: Entities,
    copy: &mut disk::Writer,
) {
    let next = Arc::new(next);
    let revision = next.revision;
    let started = Instant::now();
    match apply.apply(next.clone()).await {
        Ok(()) => {
            let took = started.elapsed();
            cluster.set_applied(next.clone(), took);
            tracing::info!(node = %cluster.node_name, revision, apply_ms = took.as_secs_f64() * 1e3, "Cluster revision applied.");
            let dir = data_dir.to_path_buf();
            let mut writer = std::mem::take(copy);
            let written = tokio::task::spawn_blocking(move || {
                let r = writer.write(&dir, &next);
                (writer, r)
            })
            .await;
            match written {
                Ok((writer, r)) => {
                    *copy = writer;
                    if let Err(e) = r {
                        tracing::error!(error = %e, path = %disk::path(data_dir).display(), "Cannot keep the applied revision on disk.")
                    }
                }
                Err(e) => tracing::error!(error = %e, "Writing the applied revision failed."),
            }
        }
        Err(why) => {
            tracing::error!(node = %cluster.node_name, revision, error = %why, "Cluster revision rejected on this node; the running configuration keeps serving.");
            cluster.update(|s| {
                s.rejected_revision = Some(revision);
                s.last_error = Some(why);
            });
        }
    }
}

/// The entities to start with: the store's, when it answers within the timeout; else the
/// copy on disk (the store's state then says offline); else an error, since a node never
/// starts with a configuration it cannot vouch for.
pub async fn initial(
    cfg: &store::StoreConfig,
    data_dir: &std::path::Path,
) -> Result<(Entities, bool), String> {
    let from_store = within(cfg.timeout, async {
        let mut client = store::connect(cfg, None).await?;
        schema::check(&client).await?;
        let (id, revision, changes) = store::changes_since(&mut client, 0).await?;
        let mut all = Entities::empty(&id);
        all.apply(changes, revision);
        Ok::<_, StoreError>(all)
    })
    .await;
    match from_store {
        Ok(e) => Ok((e, true)),
        Err(e) => match disk::read(data_dir) {
            Ok(Some(copy)) => {
                tracing::warn!(error = %e, revision = copy.revision, path = %disk::path(data_dir).display(), "Cluster store unavailable at start; serving the copy of the last applied revision.");
                Ok((copy, false))
            }
            Ok(None) => Err(format!(
                "{e}; and there is no copy of an earlier revision at {} to serve meanwhile",
                disk::path(data_dir).display()
            )),
            Err(d) => Err(format!(
                "{e}; and the copy of the last revision cannot be read ({d})"
            )),
        },
    }
}
