//! `/scripts`: the dynamic scripts (docs/admin-api.md#scripts).
//!
//! - `GET /scripts`: every script of every source with version, phase, status, last error;
//! - `PUT /scripts/{name}`: push one script (JSON `{"phase", "code", "domain"}`, or the Lua
//!   source as the body with `?phase=...&domain=...`). It goes through the one reloader,
//!   and is refused whole (422, with line and error) when it does not compile — the
//!   running version of the script, if any, keeps running;
//! - `DELETE /scripts/{name}`: remove a pushed script;
//! - `GET /scripts/{name}`: the scripts of that name (any source) with their running source;
//! - `POST /code/poll`: poll the code API now and answer with the outcome.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;
use sluicegate_code::{Change, ScriptSpec};
use sluicegate_plugins::Phase;

/// The `/scripts` routes.
pub fn routes() -> Router<super::AdminState> {
    Router::new()
        .route("/scripts", get(list))
        .route("/scripts/{*name}", get(show).put(push).delete(remove))
        .route("/code/poll", post(poll_now))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let set = shared.code.current();
    let scripts = shared.code.statuses();
    Json(json!({
        "enabled": shared.snapshot.load().code.is_some(),
        "version": set.version,
        "scripts": &*scripts,
    }))
}

/// Names are used in URLs, logs, metrics labels and Lua error messages.
fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    phase: String,
    code: String,
    #[serde(default = "any")]
    domain: String,
}

fn any() -> String {
    "*".to_string()
}

/// Refuses the request unless admin pushes are on.
fn pushes_allowed(shared: &Shared) -> Result<(), Box<Response>> {
    match shared.snapshot.load().code.as_deref() {
        None => Err(Box::new(error(
            StatusCode::CONFLICT,
            "code_disabled",
            "dynamic code is not enabled: add a `code:` section to the configuration",
        ))),
        Some(c) if !c.admin_scripts => Err(Box::new(error(
            StatusCode::CONFLICT,
            "admin_scripts_disabled",
            "admin pushes are disabled (code.admin_scripts: false)",
        ))),
        Some(_) => Ok(()),
    }
}

fn parse_push(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<PushBody, Box<Response>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return serde_json::from_slice(body).map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"phase\", \"code\", \"domain\"}}: {e}"),
            ))
        });
    }
    let code = String::from_utf8(body.to_vec()).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the script is not UTF-8 text",
        ))
    })?;
    let Some(phase) = query.get("phase") else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give the phase: ?phase=access (or send JSON with a `phase` field)",
        )));
    };
    Ok(PushBody {
        phase: phase.clone(),
        code,
        domain: query.get("domain").cloned().unwrap_or_else(any),
    })
}

async fn push(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = pushes_allowed(&shared) {
        return *r;
    }
    if !valid_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a script name is 1 to 128 letters, digits, `.`, `_` or `-`",
        );
    }
    let req = match parse_push(&headers, &query, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(phase) = Phase::parse(&req.phase) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("unknown phase `{}`; expected rewrite, access, content, header_filter, body_filter or log", req.phase),
        );
    };
    if let Err(e) = sluicegate_code::Domain::parse(&req.domain) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e);
    }
    let spec = ScriptSpec {
        name: name.clone(),
        phase: Some(phase),
        domain: req.domain,
        code: req.code,
        problem: None,
    };
    let Some(outcome) = crate::code_sources::submit(&shared, Change::Put(spec), "admin").await
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the reloader has stopped",
        );
    };
    if let Some(e) = outcome.errors.iter().find(|e| e.name == name) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "script_error",
                "message": format!("script `{name}` was not loaded; the running version (if any) keeps serving"),
                "script": name,
                "line": e.line,
                "detail": e.message,
            })),
        )
            .into_response();
    }
    if let Some(reason) = outcome.rejected {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "rejected", reason);
    }
    let status = shared
        .code
        .statuses()
        .iter()
        .find(|st| st.source == "admin" && st.name == name)
        .cloned();
    Json(json!({
        "status": if outcome.set.is_some() { "loaded" } else { "unchanged" },
        "code_version": outcome.version,
        "script": status,
    }))
    .into_response()
}

async fn remove(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if let Err(r) = pushes_allowed(&shared) {
        return *r;
    }
    let Some(outcome) =
        crate::code_sources::submit(&shared, Change::Delete(name.clone()), "admin").await
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the reloader has stopped",
        );
    };
    if outcome.not_found {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no pushed script named `{name}`"),
        );
    }
    Json(json!({"status": "deleted", "code_version": outcome.version})).into_response()
}

async fn show(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let set = shared.code.current();
    let scripts: Vec<serde_json::Value> = shared
        .code
        .statuses()
        .iter()
        .filter(|s| s.name == name)
        .map(|s| {
            let running = set
                .entries()
                .find(|(_, e)| e.source.as_str() == s.source && e.script.name == name)
                .map(|(_, e)| e.script.source.clone());
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["code"] = running.map_or(serde_json::Value::Null, serde_json::Value::String);
            v
        })
        .collect();
    if scripts.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dynamic script named `{name}`"),
        );
    }
    Json(json!({"name": name, "scripts": scripts})).into_response()
}

async fn poll_now(State(shared): State<Arc<Shared>>) -> Response {
    use std::sync::atomic::Ordering::SeqCst;
    let Some(api) = shared
        .snapshot
        .load()
        .code
        .as_ref()
        .and_then(|c| c.api.clone())
    else {
        return error(
            StatusCode::CONFLICT,
            "no_code_api",
            "no code API is configured (code.api)",
        );
    };
    let signal = &shared.code.poll;
    let mut done = signal.done.subscribe();
    let start = *done.borrow_and_update();
    // A poll already running may have fetched before the caller published: wait for the next.
    let need = start + if signal.running.load(SeqCst) { 2 } else { 1 };
    signal.now.notify_one();
    let finished = async {
        while *done.borrow_and_update() < need {
            if done.changed().await.is_err() {
                return false;
            }
        }
        true
    };
    let limit = api.timeout + std::time::Duration::from_secs(5);
    match tokio::time::timeout(limit, finished).await {
        Ok(true) => {
            let status = sluicegate_code::status_json(&shared.code);
            Json(json!({
                "code_version": status["version"],
                "api": status["sources"]["api"],
            }))
            .into_response()
        }
        _ => error(
            StatusCode::GATEWAY_TIMEOUT,
            "poll_timeout",
            "the poll did not finish in time; see GET /status",
        ),
    }
}
