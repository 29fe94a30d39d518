//! The admin API, on its own listener (loopback by default): status, health, Prometheus
//! metrics, reload and stop, and in cluster mode the shared configuration (`/v1`, see
//! [`v1`]). With `admin.tokens` every endpoint but `admin.public_paths` takes a bearer
//! token. Its errors are JSON, like the proxy's.

use std::sync::Arc;

use axum::extract::{FromRef, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;

pub mod queues;
pub mod scripts;
pub mod upstreams;
pub mod v1;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The gateway's shared state.
    pub shared: Arc<Shared>,
    /// The node's cluster view, in cluster mode.
    pub cluster: Option<Arc<sluicegate_cluster::Cluster>>,
    /// The reloader's last build, which a write is checked against.
    pub builds: Arc<crate::config::LastBuilds>,
}

impl FromRef<AdminState> for Arc<Shared> {
    fn from_ref(state: &AdminState) -> Self {
        state.shared.clone()
    }
}

/// Serves the admin API on `listener` until the process stops.
pub async fn serve(state: AdminState, listener: tokio::net::TcpListener) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "Admin API stopped.");
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .route("/stop", post(stop))
        .merge(queues::routes())
        .merge(scripts::routes())
        .merge(v1::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// With tokens configured, lets through only requests with `Authorization: Bearer` one of
/// them (compared in constant time) and the public paths.
async fn authenticate(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let snapshot = state.shared.snapshot.load();
    let settings = &snapshot.settings;
    if settings.admin_tokens.is_empty()
        || settings
            .admin_public_paths
            .iter()
            .any(|p| p == req.uri().path())
    {
        drop(snapshot);
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    // Every token is compared, so the time taken does not tell which one matched.
    let ok = given.is_some_and(|g| {
        settings
            .admin_tokens
            .iter()
            .fold(false, |ok, t| t.ct_eq(g.as_bytes()) | ok)
    });
    drop(snapshot);
    if ok {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"sluicegate-admin\"")],
        Json(json!({"error": "unauthorized", "message": "this admin endpoint needs `Authorization: Bearer <token>` with one of `admin.tokens`"})),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let shared = &state.shared;
    let snap = shared.snapshot.load();
    let routes: Vec<_> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "upstream": r.upstream.as_ref().map(|u| u.name.clone()),
                "plugins": r.chain.entries.iter().map(|e| json!({"name": e.plugin.name(), "priority": e.priority})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let upstreams = crate::admin::upstreams::status(&snap);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "config": {
            "version": snap.version,
            "source": snap.source.display().to_string(),
            "loaded_at": sluicegate_telemetry::httpdate_rfc3339(snap.loaded_at),
        },
        "workers": shared.workers,
        "active_connections": shared.metrics.active_connections.load(std::sync::atomic::Ordering::Relaxed),
        "parked_connections": shared.metrics.parked_connections.load(std::sync::atomic::Ordering::Relaxed),
        "listeners": snap.listeners.iter().map(|l| json!({"name": l.name, "address": l.address, "tls": l.tls.is_some()})).collect::<Vec<_>>(),
        "routes": routes,
        "upstreams": upstreams,
        "code": sluicegate_code::status_json(&shared.code),
        "cluster": state.cluster.as_deref().map(v1::cluster_status),
    }))
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if *shared.shutdown.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let shared = &state.shared;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut text = shared.metrics.render();
            shared.queues().render_metrics(&mut text);
            shared
                .code
                .metrics
                .render(&shared.code.current(), &mut text);
            crate::admin::upstreams::render_metrics(&shared.snapshot.load(), &mut text);
            crate::descriptors::render_metrics(&mut text);
            sluicegate_ratelimit::metrics::render(&mut text);
            if let Some(c) = &state.cluster {
                c.render_metrics(&mut text);
            }
            text
        },
    )
        .into_response()
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match shared.reload("admin").await {
        Ok(outcome) => Json(json!({"status": "reloaded", "version": outcome.version, "needs_restart": outcome.needs_restart})).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "invalid_config",
                "message": "the configuration was rejected; the running one keeps serving",
                "errors": e.to_string().lines().collect::<Vec<_>>(),
            })),
        )
            .into_response(),
    }
}

async fn stop(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    shared.shutdown.send_replace(true);
    Json(json!({"status": "stopping"}))
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": "method_not_allowed", "message": "this admin endpoint does not take that method"})),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "message": "no such admin endpoint"})),
    )
        .into_response()
}
