//! Admin endpoints of the durable queues (`/queues/...`): status, pending messages, one
//! message, dead letters, replay and purge. The JSON shapes come from
//! [`sluicegate_queue::inspect`], the same as `sluicegate wal` prints when the gateway is
//! stopped.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;
use sluicegate_queue::{inspect, Queue, QueueError};

/// The queue routes (merged into the admin router).
pub fn routes() -> Router<super::AdminState> {
    Router::new()
        .route("/queues", get(list))
        .route("/queues/{name}", get(one))
        .route("/queues/{name}/messages", get(messages))
        .route("/queues/{name}/messages/{id}", get(message))
        .route(
            "/queues/{name}/dead-letters",
            get(dead_letters).delete(purge),
        )
        .route("/queues/{name}/dead-letters/replay", post(replay_all))
        .route("/queues/{name}/dead-letters/{id}/replay", post(replay_one))
}

/// `?from=ID&limit=N` of the message list.
#[derive(Debug, serde::Deserialize)]
pub struct Page {
    /// First id to list.
    #[serde(default)]
    pub from: u64,
    /// Most messages to list (default 100, at most 1000).
    pub limit: Option<usize>,
}

fn error(e: &QueueError) -> Response {
    let (status, code) = match e {
        QueueError::Unknown(_) | QueueError::NotFound { .. } => {
            (StatusCode::NOT_FOUND, "not_found")
        }
        QueueError::NotDead { .. } | QueueError::NotPending { .. } => {
            (StatusCode::CONFLICT, "conflict")
        }
        QueueError::Full { .. }
        | QueueError::Closed(_)
        | QueueError::Unhealthy(_)
        | QueueError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        QueueError::Unsupported { .. } => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
        QueueError::Invalid { .. } | QueueError::TooLarge { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        QueueError::Unreadable { .. } | QueueError::Locked { .. } | QueueError::Io { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "queue_error")
        }
    };
    (
        status,
        Json(json!({"error": code, "message": e.to_string()})),
    )
        .into_response()
}

fn queue(shared: &Shared, name: &str) -> Result<Arc<Queue>, QueueError> {
    shared
        .queues()
        .get(name)
        .ok_or_else(|| QueueError::Unknown(name.to_string()))
}

fn reply(result: Result<serde_json::Value, QueueError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(&e),
    }
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let queues: Vec<_> = shared
        .queues()
        .list()
        .iter()
        .map(|q| inspect::queue_status(q))
        .collect();
    Json(json!({ "queues": queues }))
}

async fn one(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match queue(&shared, &name) {
        Ok(q) => Json(inspect::queue_status(&q)).into_response(),
        Err(e) => error(&e),
    }
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    match queue(&shared, &name) {
        Ok(q) => {
            reply(inspect::list(q.backend().as_ref(), page.from, page.limit.unwrap_or(100)).await)
        }
        Err(e) => error(&e),
    }
}

async fn message(
    State(shared): State<Arc<Shared>>,
    Path((name, id)): Path<(String, u64)>,
) -> Response {
    match queue(&shared, &name) {
        Ok(q) => reply(inspect::show(&name, q.backend().as_ref(), id).await),
        Err(e) => error(&e),
    }
}

async fn dead_letters(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match queue(&shared, &name) {
        Ok(q) => reply(inspect::dead_letters(q.backend().as_ref()).await),
        Err(e) => error(&e),
    }
}

async fn replay_one(
    State(shared): State<Arc<Shared>>,
    Path((name, id)): Path<(String, u64)>,
) -> Response {
    match queue(&shared, &name) {
        Ok(q) => {
            let r = inspect::replay(q.backend().as_ref(), id).await;
            q.wake();
            reply(r)
        }
        Err(e) => error(&e),
    }
}

async fn replay_all(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match queue(&shared, &name) {
        Ok(q) => {
            let r = inspect::replay_all(q.backend().as_ref()).await;
            q.wake();
            reply(r)
        }
        Err(e) => error(&e),
    }
}

async fn purge(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match queue(&shared, &name) {
        Ok(q) => reply(inspect::purge_dead(q.backend().as_ref()).await),
        Err(e) => error(&e),
    }
}
