//! The store's queries. Every write is one transaction that locks the single cluster row,
//! bumps its revision, writes the entities with that revision and notifies the nodes, so
//! writes are totally ordered and none is half-applied; nodes read what changed since their
//! revision from the same tables (deletions stay as rows without a body).

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Transaction};

use crate::entity::{Change, Entities, Kind};

/// The channel nodes `LISTEN` on; the payload is the new revision.
pub const CHANNEL: &str = "sluicegate_changes";

/// What went wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Cannot connect, the connection broke, or a query timed out.
    #[error("the cluster store is unreachable: {0}")]
    Unreachable(String),
    /// The schema is missing or not this binary's.
    #[error("{0}")]
    Schema(String),
    /// The store refused a statement.
    #[error("the cluster store refused the query: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            // undefined_table: the schema was never created.
            Some(c) if c.code() == "42P01" => StoreError::Schema(format!(
                "the store has no Sluicegate schema ({e}): run `sluicegate migrations up -c FILE`"
            )),
            // The server is going away or not there yet: connection exceptions (class
            // 08), shutdown and start-up (57P01-57P03), no free connection slot (53300).
            // Nothing ran; another connection, later, will.
            Some(c)
                if c.code().starts_with("08")
                    || matches!(c.code(), "57P01" | "57P02" | "57P03" | "53300") =>
            {
                StoreError::Unreachable(db_message(&e))
            }
            Some(_) => StoreError::Query(db_message(&e)),
            None => StoreError::Unreachable(db_message(&e)),
        }
    }
}

/// The server's message when there is one (tokio-postgres' `Display` says only "db error").
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

impl StoreError {
    /// Whether the store could not be reached (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable(_))
    }
}

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The libpq URL.
    pub url: String,
    /// Bound on connecting and on every query.
    pub timeout: Duration,
}

/// What the connection task reports to the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A `NOTIFY` on [`CHANNEL`].
    Changed,
    /// The connection ended.
    Lost,
}

/// Runs `f` within the store timeout; a timeout counts as the store being unreachable.
pub async fn within<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unreachable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Connects; the connection runs in a task of the current runtime. With `wake`, the task
/// forwards notifications and reports the connection's end to it.
pub async fn connect(
    cfg: &StoreConfig,
    wake: Option<mpsc::UnboundedSender<Wake>>,
) -> Result<Client, StoreError> {
    let mut pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|e| StoreError::Unreachable(format!("bad store URL: {e}")))?;
    pg.connect_timeout(cfg.timeout)
        .application_name("sluicegate")
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    let (client, mut connection) = within(cfg.timeout, async {
        pg.connect(NoTls).await.map_err(StoreError::from)
    })
    .await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if let Some(w) = &wake {
                        let _ = w.send(Wake::Changed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "Cluster store connection ended.");
                    break;
                }
            }
        }
        if let Some(w) = &wake {
            let _ = w.send(Wake::Lost);
        }
    });
    Ok(client)
}

/// The store's cluster id and revision.
pub async fn head(client: &Client) -> Result<(String, i64), StoreError> {
    let row = client
        .query_one("SELECT id::text, revision FROM sluicegate_cluster", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// What changed after revision `since` (everything, deletions excluded, when `since` is 0),
/// with the cluster id and revision it brings the reader to, read from one snapshot of the
/// store.
pub async fn changes_since(
    client: &mut Client,
    since: i64,
) -> Result<(String, i64, Vec<Change>), StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let (id, revision, changes) = read_changes(&tx, since).await?;
    tx.commit().await?;
    Ok((id, revision, changes))
}

async fn read_changes(
    tx: &Transaction<'_>,
    since: i64,
) -> Result<(String, i64, Vec<Change>), StoreError> {
    let head = tx
        .query_one("SELECT id::text, revision FROM sluicegate_cluster", &[])
        .await?;
    let rows = tx
        .query(
            "SELECT kind, name, ord, revision, body::text FROM sluicegate_entities
             WHERE revision > $1 AND ($1 > 0 OR body IS NOT NULL)",
            &[&since],
        )
        .await?;
    let mut changes = Vec::with_capacity(rows.len());
    for r in rows {
        let kind: String = r.get(0);
        let Some(kind) = Kind::from_section(&kind) else {
            // A kind a newer binary wrote: not ours to apply.
            continue;
        };
        let body: Option<String> = r.get(4);
        let body = match body {
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                StoreError::Query(format!(
                    "entity `{}` is not JSON: {e}",
                    r.get::<_, String>(1)
                ))
            })?),
            None => None,
        };
        changes.push(Change {
            kind,
            name: r.get(1),
            ord: r.get(2),
            revision: r.get(3),
            body,
        });
    }
    Ok((head.get(0), head.get(1), changes))
}

/// What [`refresh`] found.
#[derive(Debug)]
pub struct Refreshed {
    /// The store's revision.
    pub revision: i64,
    /// The entities at that revision, or `None` when they are the ones given (nothing
    /// changed: no copy is made).
    pub next: Option<Entities>,
    /// Entity rows read: only the changes, unless the node resynced from scratch.
    pub rows: usize,
}

/// `entities` brought to the store's current revision (from scratch when the store is
/// another cluster), read from one snapshot.
pub async fn refresh(client: &mut Client, entities: &Entities) -> Result<Refreshed, StoreError> {
    let since = if entities.cluster_id.is_empty() {
        0
    } else {
        entities.revision
    };
    let (id, revision, changes) = changes_since(client, since).await?;
    if id != entities.cluster_id || revision < entities.revision {
        // Another database (or one restored from an older backup): start over.
        let (id, revision, changes) = changes_since(client, 0).await?;
        let mut fresh = Entities::empty(&id);
        let rows = changes.len();
        fresh.apply(changes, revision);
        return Ok(Refreshed {
            revision,
            next: Some(fresh),
            rows,
        });
    }
    if revision == entities.revision && changes.is_empty() {
        return Ok(Refreshed {
            revision,
            next: None,
            rows: 0,
        });
    }
    let rows = changes.len();
    let mut next = entities.successor();
    next.apply(changes, revision);
    Ok(Refreshed {
        revision,
        next: Some(next),
        rows,
    })
}

/// One change a write makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Creates or replaces an entity.
    Put {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its body (`name` included).
        body: Value,
    },
    /// Deletes an entity.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
    },
}

/// A write in progress: it holds the cluster row's lock, so no other write commits
/// between reading the state it validates against and committing.
pub struct Writer<'a> {
    tx: Transaction<'a>,
    /// The store's cluster id.
    pub cluster_id: String,
    /// The revision before this write.
    pub revision: i64,
}

/// How many statements of a write are in flight at once.
const PIPELINE: usize = 512;

impl<'a> Writer<'a> {
    /// Starts a write (waits for any other write to finish).
    pub async fn begin(client: &'a mut Client) -> Result<Writer<'a>, StoreError> {
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "SELECT id::text, revision FROM sluicegate_cluster FOR UPDATE",
                &[],
            )
            .await?;
        Ok(Writer {
            cluster_id: row.get(0),
            revision: row.get(1),
            tx,
        })
    }

    /// `entities` brought to the revision this write starts from.
    pub async fn current(&self, entities: &Entities) -> Result<Entities, StoreError> {
        if entities.cluster_id != self.cluster_id || entities.revision > self.revision {
            let (_, revision, changes) = read_changes(&self.tx, 0).await?;
            let mut fresh = Entities::empty(&self.cluster_id);
            fresh.apply(changes, revision);
            return Ok(fresh);
        }
        let (_, revision, changes) = read_changes(&self.tx, entities.revision).await?;
        let mut next = entities.clone();
        next.apply(changes, revision);
        Ok(next)
    }

    /// Writes `ops` as the next revision, notifies the nodes, commits; returns the
    /// revision. With `reorder`, every entity `ops` puts takes a new place at the end, in
    /// the order given (a whole-configuration replace).
    pub async fn commit(self, ops: &[Op], reorder: bool) -> Result<i64, StoreError> {
        let revision = self.revision + 1;
        let put = self
            .tx
            .prepare(
                "INSERT INTO sluicegate_entities (kind, name, ord, revision, body)
                 VALUES ($1, $2, nextval('sluicegate_entity_ord'), $3, $4::text::jsonb)
                 ON CONFLICT (kind, name) DO UPDATE SET
                   revision = EXCLUDED.revision,
                   body = EXCLUDED.body,
                   ord = CASE WHEN sluicegate_entities.body IS NULL OR $5
                              THEN EXCLUDED.ord ELSE sluicegate_entities.ord END",
            )
            .await?;
        let delete = self
            .tx
            .prepare(
                "UPDATE sluicegate_entities SET body = NULL, revision = $3
                 WHERE kind = $1 AND name = $2 AND body IS NOT NULL",
            )
            .await?;
        // Pipelined: the statements go out without waiting for each answer (the server
        // still runs them one after the other, in order), so a whole-configuration replace
        // of 10,000 entities costs a few round trips, not 10,000.
        let tx = &self.tx;
        for chunk in ops.chunks(PIPELINE) {
            let statements = chunk.iter().map(|op| {
                let (put, delete) = (&put, &delete);
                async move {
                    match op {
                        Op::Put { kind, name, body } => {
                            let text = body.to_string();
                            let args: [&(dyn ToSql + Sync); 5] =
                                [&kind.section(), name, &revision, &text, &reorder];
                            tx.execute(put, &args).await
                        }
                        Op::Delete { kind, name } => {
                            tx.execute(delete, &[&kind.section(), name, &revision])
                                .await
                        }
                    }
                }
            });
            futures_util::future::try_join_all(statements).await?;
        }
        self.tx
            .execute("UPDATE sluicegate_cluster SET revision = $1", &[&revision])
            .await?;
        // Delivered at commit, to every listening node.
        self.tx
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &revision.to_string()],
            )
            .await?;
        self.tx.commit().await?;
        Ok(revision)
    }
}

/// A node as the store knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// The revision it applied last.
    pub revision: i64,
    /// What it reported (`online`, `rejected`, ...), or `lost` when it has not been seen
    /// for a while.
    pub state: String,
    /// Its binary's version.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it was last seen (RFC 3339).
    pub last_seen: String,
    /// Seconds since then.
    pub seen_seconds_ago: f64,
}

/// Records that node `name` is alive at `revision` in `state`.
pub async fn heartbeat(
    client: &Client,
    name: &str,
    revision: i64,
    state: &str,
    started_unix: f64,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO sluicegate_nodes (name, revision, state, version, started_at, last_seen)
             VALUES ($1, $2, $3, $4, to_timestamp($5), now())
             ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision,
               state = EXCLUDED.state, version = EXCLUDED.version,
               started_at = EXCLUDED.started_at, last_seen = now()",
            &[
                &name,
                &revision,
                &state,
                &env!("CARGO_PKG_VERSION"),
                &started_unix,
            ],
        )
        .await?;
    Ok(())
}

/// Every node; one silent for longer than `lost_after` is reported `lost`.
pub async fn nodes(client: &Client, lost_after: Duration) -> Result<Vec<NodeRow>, StoreError> {
    let rows = client
        .query(
            "SELECT name, revision, state, version,
               to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
               to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
               extract(epoch FROM now() - last_seen)::float8
             FROM sluicegate_nodes ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ago: f64 = r.get(6);
            let state: String = r.get(2);
            NodeRow {
                name: r.get(0),
                revision: r.get(1),
                state: if ago > lost_after.as_secs_f64() {
                    "lost".to_string()
                } else {
                    state
                },
                version: r.get(3),
                started_at: r.get(4),
                last_seen: r.get(5),
                seen_seconds_ago: ago,
            }
        })
        .collect())
}
