//! Cluster mode: nodes connected to one PostgreSQL store share their upstreams, routes and
//! global plugins (docs/cluster.md).
//!
//! - [`store`]: the queries. One cluster revision orders every write; a write is one
//!   transaction that bumps it and notifies the nodes.
//! - [`follow`]: the node's follower task. Woken by `LISTEN/NOTIFY` (and a periodic check
//!   for a lost notification), it reads what changed since its revision, hands the new
//!   entity set to the application to validate and swap in, writes it to disk, and reports
//!   itself in the nodes table.
//! - [`disk`]: the last good entity set under `data_dir`, served when the store is down at
//!   start.
//!
//! Invariant: this crate knows entities as JSON documents with a kind and a name; it never
//! interprets them. Validating them and building the running configuration is the
//! application's job, which reads them as the YAML file's sections.

pub mod disk;
pub mod entity;
pub mod follow;
pub mod schema;
pub mod store;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

pub use entity::{Change, Entities, Entry, Kind};
pub use store::{Op, StoreConfig, StoreError};

/// A node's view of its cluster: the entities it applied, the ones it is applying, and the
/// state of its store connection. Shared by the follower, the reloader and the admin API.
pub struct Cluster {
    /// The store.
    pub store: StoreConfig,
    /// This node's name.
    pub node_name: String,
    /// How often the follower checks the store's revision without a notification.
    pub poll_interval: Duration,
    /// When the node started (for the nodes table).
    pub started: SystemTime,
    applied: RwLock<Arc<Entities>>,
    wanted: RwLock<Arc<Entities>>,
    applied_tx: watch::Sender<i64>,
    status: Mutex<Status>,
    /// The admin API's connection (writes and the nodes list), one at a time.
    writer: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

/// How the node stands with its store.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Whether the store answers.
    pub store_up: bool,
    /// Since when `store_up` has had its value.
    pub since: SystemTime,
    /// The store's revision as last read.
    pub store_revision: i64,
    /// Why the last store call or apply failed, if it did.
    pub last_error: Option<String>,
    /// A revision the node could not apply (it keeps the one before).
    pub rejected_revision: Option<i64>,
    /// Since when the node has been behind the store, if it is.
    pub behind_since: Option<Instant>,
    /// Revisions applied since start.
    pub applies: u64,
    /// Total seconds spent applying them.
    pub apply_seconds: f64,
    /// The last apply's seconds.
    pub last_apply_seconds: f64,
    /// Entity rows read from the store since start (changes only, but for resyncs).
    pub rows_read: u64,
}

impl Cluster {
    /// A node at `initial` (from the store or from disk), with the store `up` or not.
    pub fn new(
        store: StoreConfig,
        node_name: String,
        poll_interval: Duration,
        initial: Entities,
        up: bool,
    ) -> Cluster {
        let initial = Arc::new(initial);
        Cluster {
            store,
            node_name,
            poll_interval,
            started: SystemTime::now(),
            applied_tx: watch::Sender::new(initial.revision),
            applied: RwLock::new(initial.clone()),
            wanted: RwLock::new(initial),
            status: Mutex::new(Status {
                store_up: up,
                since: SystemTime::now(),
                store_revision: 0,
                last_error: None,
                rejected_revision: None,
                behind_since: None,
                applies: 0,
                apply_seconds: 0.0,
                last_apply_seconds: 0.0,
                rows_read: 0,
            }),
            writer: tokio::sync::Mutex::new(None),
        }
    }

    /// The entities the running configuration was built from.
    pub fn applied(&self) -> Arc<Entities> {
        match self.applied.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The entities the next build uses: the applied ones, or the ones being applied.
    pub fn wanted(&self) -> Arc<Entities> {
        match self.wanted.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Sets what the next build uses.
    pub fn set_wanted(&self, next: Arc<Entities>) {
        match self.wanted.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }

    /// Records that the running configuration now holds `next`, built in `took`.
    pub fn set_applied(&self, next: Arc<Entities>, took: Duration) {
        let revision = next.revision;
        match self.applied.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        self.update(|s| {
            s.applies += 1;
            s.apply_seconds += took.as_secs_f64();
            s.last_apply_seconds = took.as_secs_f64();
            s.rejected_revision = None;
            if s.store_revision <= revision {
                s.behind_since = None;
            }
        });
        self.applied_tx.send_replace(revision);
    }

    /// The revision the running configuration holds.
    pub fn applied_revision(&self) -> i64 {
        *self.applied_tx.borrow()
    }

    /// Waits until this node applied `revision` or `timeout` passed; returns the revision
    /// then applied.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> i64 {
        let mut rx = self.applied_tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        let now = *rx.borrow();
        now
    }

    /// The store connection's state.
    pub fn status(&self) -> Status {
        match self.status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Changes the status.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        match self.status.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Records whether the store answers (and why not).
    pub fn set_store_up(&self, up: bool, error: Option<String>) {
        self.update(|s| {
            if s.store_up != up {
                s.store_up = up;
                s.since = SystemTime::now();
            }
            if error.is_some() || up {
                s.last_error = error;
            }
        });
    }

    /// Records the store's revision as just read.
    pub fn saw_store_revision(&self, revision: i64) {
        let applied = self.applied_revision();
        self.update(|s| {
            s.store_revision = revision;
            if revision > applied {
                s.behind_since.get_or_insert_with(Instant::now);
            } else {
                s.behind_since = None;
            }
        });
    }

    /// Seconds the node has been behind the store: since it saw a newer revision, or since
    /// the store became unreachable; 0 when current.
    pub fn behind_seconds(&self) -> f64 {
        let s = self.status();
        if !s.store_up {
            return s.since.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        }
        s.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// The state this node reports: `online`, `offline` (store unreachable: serving its
    /// last revision) or `rejected` (a revision failed to apply here).
    pub fn state(&self) -> &'static str {
        let s = self.status();
        if !s.store_up {
            "offline"
        } else if s.rejected_revision.is_some() {
            "rejected"
        } else {
            "online"
        }
    }

    /// Appends the cluster metrics in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = self.status();
        let _ = writeln!(
            out,
            "# HELP sluicegate_cluster_revision The cluster revision this node applied.\n\
             # TYPE sluicegate_cluster_revision gauge\n\
             sluicegate_cluster_revision {}\n\
             # HELP sluicegate_cluster_store_revision The store's revision as last read.\n\
             # TYPE sluicegate_cluster_store_revision gauge\n\
             sluicegate_cluster_store_revision {}\n\
             # HELP sluicegate_cluster_store_up Whether the cluster store answers (1) or not (0).\n\
             # TYPE sluicegate_cluster_store_up gauge\n\
             sluicegate_cluster_store_up {}\n\
             # HELP sluicegate_cluster_behind_seconds Seconds this node has been behind the store.\n\
             # TYPE sluicegate_cluster_behind_seconds gauge\n\
             sluicegate_cluster_behind_seconds {:.3}\n\
             # HELP sluicegate_cluster_apply_seconds Time spent applying revisions.\n\
             # TYPE sluicegate_cluster_apply_seconds summary\n\
             sluicegate_cluster_apply_seconds_sum {:.6}\n\
             sluicegate_cluster_apply_seconds_count {}\n\
             # HELP sluicegate_cluster_last_apply_seconds The last apply's duration.\n\
             # TYPE sluicegate_cluster_last_apply_seconds gauge\n\
             sluicegate_cluster_last_apply_seconds {:.6}\n\
             # HELP sluicegate_cluster_rows_read_total Entity rows read from the store.\n\
             # TYPE sluicegate_cluster_rows_read_total counter\n\
             sluicegate_cluster_rows_read_total {}",
            self.applied_revision(),
            s.store_revision,
            u8::from(s.store_up),
            self.behind_seconds(),
            s.apply_seconds,
            s.applies,
            s.last_apply_seconds,
            s.rows_read,
        );
    }
}

/// Why a write through [`Cluster::write`] did not commit.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The store failed or could not be reached.
    Store(StoreError),
    /// The plan refused the write (invalid, conflicting).
    Plan(E),
}

impl Cluster {
    /// Writes the next revision: `plan` gets the entities at the store's current
    /// revision (the store's write lock held, so none commits meanwhile) and returns the
    /// changes to make (with `reorder`, see [`store::Writer::commit`]) and a value for the
    /// caller; no changes means nothing is written. Returns the revision written (the
    /// current one when nothing was).
    pub async fn write<F, Fut, T, E>(&self, plan: F) -> Result<(i64, T), WriteError<E>>
    where
        F: FnOnce(Entities) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<Op>, bool, T), E>>,
    {
        let timeout = self.store.timeout;
        let mut guard = self.writer.lock().await;
        let client = self
            .writer_client(&mut guard, true)
            .await
            .map_err(WriteError::Store)?;
        let result = async {
            let writer = store::within(timeout, store::Writer::begin(client))
                .await
                .map_err(WriteError::Store)?;
            let base = self.applied();
            let current = store::within(timeout, writer.current(&base))
                .await
                .map_err(WriteError::Store)?;
            let before = current.revision;
            let (ops, reorder, out) = plan(current).await.map_err(WriteError::Plan)?;
            if ops.is_empty() {
                return Ok((before, out));
            }
            let revision = store::within(timeout, writer.commit(&ops, reorder))
                .await
                .map_err(WriteError::Store)?;
            Ok((revision, out))
        }
        .await;
        if let Err(WriteError::Store(e)) = &result {
            // A broken or timed-out connection is not reused (a timed-out transaction may
            // still hold the lock until the server notices).
            if e.is_unreachable() {
                *guard = None;
            }
        }
        result
    }

    /// Every node as the store knows it.
    pub async fn nodes(&self) -> Result<Vec<store::NodeRow>, StoreError> {
        let timeout = self.store.timeout;
        let mut guard = self.writer.lock().await;
        let client = self.writer_client(&mut guard, false).await?;
        let r = store::within(timeout, store::nodes(client, follow::LOST_AFTER)).await;
        if matches!(&r, Err(e) if e.is_unreachable()) {
            *guard = None;
        }
        r
    }

    /// The write connection, connected anew when there is none or the server closed it.
    /// With `probe`, an empty statement first proves the connection alive: one the server
    /// closed while it idled (a restart, a replaced database) is often noticed only by the
    /// next statement, and a write should not fail for that.
    async fn writer_client<'g>(
        &self,
        guard: &'g mut Option<tokio_postgres::Client>,
        probe: bool,
    ) -> Result<&'g mut tokio_postgres::Client, StoreError> {
        if let (true, Some(c)) = (probe, guard.as_ref()) {
            if store::within(self.store.timeout, async {
                c.simple_query("").await.map_err(StoreError::from)
            })
            .await
            .is_err()
            {
                *guard = None;
            }
        }
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(store::connect(&self.store, None).await?);
        }
        guard
            .as_mut()
            .ok_or_else(|| StoreError::Unreachable("no connection".into()))
    }
}
