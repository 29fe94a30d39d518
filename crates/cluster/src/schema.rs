//! The store's schema, versioned: `sluicegate migrations up` applies what is missing, in
//! order, each migration in the same transaction as its record, under an advisory lock, so
//! running it again is a no-op and two nodes running it at once apply each step once.

use tokio_postgres::Client;

use crate::store::StoreError;

/// Any number unlikely to be another application's advisory lock: what serializes two
/// `migrations up` at once.
const LOCK_KEY: i64 = 0x5c61_7e9a_7e00_0001;

/// One schema step.
pub struct Migration {
    /// Its version; steps run in increasing order.
    pub version: i32,
    /// What it does, for `migrations status`.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every step, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "cluster revision, entities, nodes",
    sql: r#"
CREATE TABLE sluicegate_cluster (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    revision bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sluicegate_cluster (singleton) VALUES (true);
CREATE SEQUENCE sluicegate_entity_ord;
CREATE TABLE sluicegate_entities (
    kind text NOT NULL,
    name text NOT NULL,
    ord bigint NOT NULL,
    revision bigint NOT NULL,
    body jsonb,
    PRIMARY KEY (kind, name)
);
CREATE INDEX sluicegate_entities_by_revision ON sluicegate_entities (revision);
CREATE TABLE sluicegate_nodes (
    name text PRIMARY KEY,
    revision bigint NOT NULL,
    state text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen timestamptz NOT NULL
);
"#,
}];

/// One line of `migrations status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStatus {
    /// The step's version.
    pub version: i32,
    /// Its name.
    pub name: &'static str,
    /// When it was applied (RFC 3339), or `None` while pending.
    pub applied_at: Option<String>,
}

/// Applies every missing step; returns the versions it applied (empty when up to date).
pub async fn up(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sluicegate_schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM sluicegate_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Schema(format!("migration {} ({}) failed: {e}", m.version, m.name))
        })?;
        tx.execute(
            "INSERT INTO sluicegate_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        applied.push(m.version);
    }
    if let Some(newer) = done.iter().max().filter(|v| **v > latest()) {
        return Err(StoreError::Schema(format!(
            "the store's schema is at version {newer}, newer than this binary knows ({}): upgrade the binary",
            latest()
        )));
    }
    tx.commit().await?;
    Ok(applied)
}

/// Every known step and whether it was applied.
pub async fn status(client: &Client) -> Result<Vec<StepStatus>, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('sluicegate_schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let rows = if exists {
        client
            .query(
                "SELECT version, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM sluicegate_schema_migrations",
                &[],
            )
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATIONS
        .iter()
        .map(|m| StepStatus {
            version: m.version,
            name: m.name,
            applied_at: rows
                .iter()
                .find(|r| r.get::<_, i32>(0) == m.version)
                .map(|r| r.get(1)),
        })
        .collect())
}

/// The newest version this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// `Ok` when the store's schema is the one this binary expects; otherwise the error says
/// to run `sluicegate migrations up`.
pub async fn check(client: &Client) -> Result<(), StoreError> {
    let pending: Vec<i32> = status(client)
        .await?
        .into_iter()
        .filter(|s| s.applied_at.is_none())
        .map(|s| s.version)
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Schema(format!(
            "the store's schema is missing migration(s) {pending:?}: run `sluicegate migrations up -c FILE`"
        )))
    }
}
