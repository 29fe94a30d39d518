//! `/v1`: the cluster's shared configuration (docs/cluster.md), on every node.
//!
//! Collections are the file's sections (`/v1/upstreams`, `/v1/routes`, `/v1/plugins`),
//! entities are addressed by name and carry the file's field names. Every write is
//! validated against the store's current state with this node's file, exactly as
//! `sluicegate check` validates a file, before it is committed: an invalid change never
//! reaches the store. A write answers once this node applied it (bounded), so a request to
//! the same node right after sees it. Reads come from what this node applied, so they work
//! while the store is down.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::AdminState;
use crate::cluster::Problem;
use sluicegate_cluster::{Cluster, Entities, Kind, Op, StoreError, WriteError};

/// How long a write waits for this node to apply it before answering anyway.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Default and largest page of a collection.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Longest `/v1/cluster/wait`.
const MAX_WAIT_MS: u64 = 60_000;

/// The `/v1` routes.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/config", get(export).put(replace))
        .route("/v1/cluster", get(cluster_info))
        .route("/v1/cluster/nodes", get(nodes))
        .route("/v1/cluster/wait", get(wait))
        .route("/v1/{section}", get(list).post(create))
        .route(
            "/v1/{section}/{name}",
            get(read).put(upsert).patch(patch).delete(remove),
        )
        .route(
            "/v1/consumers/{name}/credentials",
            get(credentials).post(add_credential),
        )
        .route(
            "/v1/consumers/{name}/credentials/{id}",
            get(credential)
                .put(put_credential)
                .delete(remove_credential),
        )
}

/// An error answer: the one place `/v1` turns failures into responses.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with the problems found.
    Invalid(Vec<Problem>),
    /// 404.
    NotFound(String),
    /// 409: the name is taken.
    Conflict(String),
    /// 412: `If-Match` did not match.
    Precondition(String),
    /// The store failed (503 when unreachable).
    Store(StoreError),
    /// 500: this node failed.
    Internal(String),
}

impl ApiError {
    fn bad(path: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![Problem {
            path: path.to_string(),
            entity: None,
            message: message.into(),
        }])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Invalid(errors) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid", "errors": errors}),
            ),
            ApiError::NotFound(m) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": m}),
            ),
            ApiError::Conflict(m) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "message": m}),
            ),
            ApiError::Precondition(m) => (
                StatusCode::PRECONDITION_FAILED,
                json!({"error": "precondition_failed", "message": m}),
            ),
            ApiError::Store(e) if e.is_unreachable() => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    Json(json!({"error": "store_unavailable", "message": e.to_string()})),
                )
                    .into_response();
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, "Cluster store error in the admin API.");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "store_error", "message": e.to_string()}),
                )
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "Admin API failure.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal", "message": m}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// A query string that does not parse: a 400 like every other refusal, in JSON.
fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad("query", e.body_text())
}

fn cluster_of(state: &AdminState) -> Result<&Arc<Cluster>, ApiError> {
    state.cluster.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "this node is not in cluster mode: the `/v1` API needs a `cluster:` section".into(),
        )
    })
}

fn kind_of(section: &str) -> Result<Kind, ApiError> {
    Kind::from_section(section).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no collection `/v1/{section}`; there are: {}",
            Kind::ALL.map(|k| format!("/v1/{k}")).join(", ")
        ))
    })
}

/// Whether `name` can be an entity's name (it is a path segment of the API).
fn check_name(name: &str, path: &str) -> Result<(), ApiError> {
    use sluicegate_core::name;
    if name::is_valid(name) {
        Ok(())
    } else {
        Err(ApiError::bad(
            path,
            format!("`{name}`: a name is {}", name::RULE),
        ))
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("", format!("the body is not JSON: {e}")))
}

/// The body as an entity named `name` (the body's own `name`, when given, must agree).
fn entity_body(body: Value, name: Option<&str>) -> Result<(String, Value), ApiError> {
    identified(body, "name", name, None)
}

/// `body` (a JSON object) with its identifying field `key` set: from the URL (`url`),
/// else the body's own (which must agree with the URL's when both are given), else
/// `fresh()`, else an error.
fn identified(
    mut body: Value,
    key: &str,
    url: Option<&str>,
    fresh: Option<fn() -> String>,
) -> Result<(String, Value), ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad("", "the body is a JSON object"));
    };
    let given = match map.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad(key, format!("`{key}` is a string"))),
    };
    let id = match (url, given, fresh) {
        (Some(url), Some(b), _) if url != b => {
            return Err(ApiError::bad(
                key,
                format!("the body names `{b}` but the URL `{url}`; rename by creating the new one and deleting the old"),
            ))
        }
        (Some(url), _, _) => url.to_string(),
        (None, Some(b), _) => b,
        (None, None, Some(make)) => make(),
        (None, None, None) => return Err(ApiError::bad(key, format!("give a `{key}`"))),
    };
    check_name(&id, key)?;
    map.insert(key.into(), Value::String(id.clone()));
    Ok((id, body))
}

/// `If-Match`: `*`, or the entity's revision (`"N"`, quoted or not).
fn if_match(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    Some(v.trim_start_matches("W/").trim_matches('"').to_string())
}

fn check_precondition(
    headers: &HeaderMap,
    current: Option<i64>,
    what: &str,
) -> Result<(), ApiError> {
    let Some(want) = if_match(headers) else {
        return Ok(());
    };
    match current {
        Some(_) if want == "*" => Ok(()),
        Some(rev) if want == rev.to_string() => Ok(()),
        Some(rev) => Err(ApiError::Precondition(format!(
            "{what} is at revision {rev}, not {want}"
        ))),
        None => Err(ApiError::Precondition(format!("{what} does not exist"))),
    }
}

/// `current` with `ops` applied, for validation (new entities go last, in order).
fn candidate(current: &Entities, ops: &[Op], reorder: bool) -> Entities {
    let mut next = current.successor();
    let mut ord = current
        .kinds
        .values()
        .flat_map(|m| m.values().map(|e| e.ord))
        .max()
        .unwrap_or(0);
    let revision = current.revision + 1;
    let changes = ops
        .iter()
        .map(|op| match op {
            Op::Put { kind, name, body } => {
                let existing = current.get(*kind, name).map(|e| e.ord);
                let ord = match existing {
                    Some(o) if !reorder => o,
                    _ => {
                        ord += 1;
                        ord
                    }
                };
                sluicegate_cluster::Change {
                    kind: *kind,
                    name: name.clone(),
                    ord,
                    revision,
                    body: Some(body.clone()),
                }
            }
            Op::Delete { kind, name } => sluicegate_cluster::Change {
                kind: *kind,
                name: name.clone(),
                ord: 0,
                revision,
                body: None,
            },
        })
        .collect();
    next.apply(changes, revision);
    next
}

/// Validates `candidate` with this node's file, off the control thread.
async fn validate(state: &AdminState, candidate: Entities) -> Result<(), ApiError> {
    let current = state.shared.snapshot.load_full();
    let last = state.builds.load_full();
    let workers = state.shared.workers;
    tokio::task::spawn_blocking(move || {
        crate::cluster::check(&current, workers, &candidate, last.as_deref())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("validation failed: {e}")))?
    .map_err(ApiError::Invalid)
}

/// Commits what `plan` makes of the store's current state, after validating it; waits for
/// this node to apply it. Returns the revision and `plan`'s value.
async fn commit<T: Send + 'static>(
    state: &AdminState,
    plan: impl FnOnce(&Entities) -> Result<(Vec<Op>, bool, T), ApiError>,
) -> Result<(i64, T), ApiError> {
    let cluster = cluster_of(state)?;
    let (revision, out) = cluster
        .write(|current| async move {
            let (ops, reorder, out) = plan(&current)?;
            if !ops.is_empty() {
                validate(state, candidate(&current, &ops, reorder)).await?;
            }
            Ok((ops, reorder, out))
        })
        .await
        .map_err(|e| match e {
            WriteError::Store(e) => ApiError::Store(e),
            WriteError::Plan(e) => e,
        })?;
    let applied = cluster.wait_for(revision, APPLY_WAIT).await;
    if applied < revision {
        tracing::warn!(
            revision,
            applied,
            "Committed a revision this node has not applied yet."
        );
    }
    Ok((revision, out))
}

fn revision_header(revision: i64) -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::HeaderName::from_static("x-sluicegate-revision"),
        HeaderValue::from(revision),
    )]
}

/// One entity: `revision` is the cluster revision the answer reflects
/// (`X-Sluicegate-Revision`), `etag` the revision that last wrote the entity (`ETag`, what
/// `If-Match` compares).
fn entity_response(
    status: StatusCode,
    body: &Value,
    revision: i64,
    etag: i64,
    location: Option<String>,
) -> Response {
    let mut resp = (status, revision_header(revision), Json(body.clone())).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

#[derive(serde::Deserialize)]
struct Page {
    size: Option<usize>,
    offset: Option<i64>,
}

async fn list(
    State(state): State<AdminState>,
    Path(section): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
) -> ApiResult {
    let cluster = cluster_of(&state)?;
    let kind = kind_of(&section)?;
    let Query(page) = page.map_err(query_error)?;
    let size = page.size.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let entities = cluster.applied();
    let after = page.offset.unwrap_or(i64::MIN);
    let all = entities.ordered(kind);
    let rest: Vec<_> = all.iter().filter(|(_, e)| e.ord > after).collect();
    let data: Vec<Value> = rest
        .iter()
        .take(size)
        .map(|(_, e)| Value::clone(&e.body))
        .collect();
    let next = (rest.len() > size)
        .then(|| {
            rest.get(size - 1)
                .map(|(_, e)| format!("/v1/{section}?size={size}&offset={}", e.ord))
        })
        .flatten();
    Ok((
        revision_header(entities.revision),
        Json(json!({"data": data, "total": all.len(), "next": next})),
    )
        .into_response())
}

async fn read(
    State(state): State<AdminState>,
    Path((section, name)): Path<(String, String)>,
) -> ApiResult {
    let cluster = cluster_of(&state)?;
    let kind = kind_of(&section)?;
    let entities = cluster.applied();
    let e = entities
        .get(kind, &name)
        .ok_or_else(|| ApiError::NotFound(format!("no {section} entity `{name}`")))?;
    Ok(entity_response(
        StatusCode::OK,
        &e.body,
        entities.revision,
        e.revision,
        None,
    ))
}

async fn create(
    State(state): State<AdminState>,
    Path(section): Path<String>,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&section)?;
    let (name, body) = entity_body(parse_body(&body)?, None)?;
    let (revision, body) = commit(&state, |current| {
        if current.get(kind, &name).is_some() {
            return Err(ApiError::Conflict(format!(
                "{section} entity `{name}` exists; `PUT /v1/{section}/{name}` replaces it"
            )));
        }
        Ok((
            vec![Op::Put {
                kind,
                name: name.clone(),
                body: body.clone(),
            }],
            false,
            body,
        ))
    })
    .await?;
    Ok(entity_response(
        StatusCode::CREATED,
        &body,
        revision,
        revision,
        Some(format!("/v1/{section}/{name}")),
    ))
}

async fn upsert(
    State(state): State<AdminState>,
    Path((section, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&section)?;
    check_name(&name, "name")?;
    let (name, body) = entity_body(parse_body(&body)?, Some(&name))?;
    let (revision, (created, body, unchanged)) = commit(&state, |current| {
        let existing = current.get(kind, &name);
        check_precondition(
            &headers,
            existing.map(|e| e.revision),
            &format!("{section}/{name}"),
        )?;
        if let Some(e) = existing.filter(|e| *e.body == body) {
            return Ok((Vec::new(), false, (false, body, Some(e.revision))));
        }
        Ok((
            vec![Op::Put {
                kind,
                name: name.clone(),
                body: body.clone(),
            }],
            false,
            (existing.is_none(), body, None),
        ))
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let etag = unchanged.unwrap_or(revision);
    Ok(entity_response(status, &body, revision, etag, None))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

async fn patch(
    State(state): State<AdminState>,
    Path((section, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&section)?;
    let patch = parse_body(&body)?;
    if !patch.is_object() {
        return Err(ApiError::bad("", "a merge patch is a JSON object"));
    }
    if patch
        .get("name")
        .is_some_and(|n| n.as_str() != Some(name.as_str()))
    {
        return Err(ApiError::bad("name", "a patch cannot rename an entity"));
    }
    let (revision, (body, unchanged)) = commit(&state, |current| {
        let existing = current
            .get(kind, &name)
            .ok_or_else(|| ApiError::NotFound(format!("no {section} entity `{name}`")))?;
        check_precondition(
            &headers,
            Some(existing.revision),
            &format!("{section}/{name}"),
        )?;
        let mut body = Value::clone(&existing.body);
        merge_patch(&mut body, &patch);
        if body == *existing.body {
            return Ok((Vec::new(), false, (body, Some(existing.revision))));
        }
        Ok((
            vec![Op::Put {
                kind,
                name: name.clone(),
                body: body.clone(),
            }],
            false,
            (body, None),
        ))
    })
    .await?;
    let etag = unchanged.unwrap_or(revision);
    Ok(entity_response(StatusCode::OK, &body, revision, etag, None))
}

async fn remove(
    State(state): State<AdminState>,
    Path((section, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let kind = kind_of(&section)?;
    let (revision, ()) = commit(&state, |current| {
        let existing = current
            .get(kind, &name)
            .ok_or_else(|| ApiError::NotFound(format!("no {section} entity `{name}`")))?;
        check_precondition(
            &headers,
            Some(existing.revision),
            &format!("{section}/{name}"),
        )?;
        Ok((
            vec![Op::Delete {
                kind,
                name: name.clone(),
            }],
            false,
            (),
        ))
    })
    .await?;
    Ok((StatusCode::NO_CONTENT, revision_header(revision)).into_response())
}

#[derive(serde::Deserialize)]
struct Format {
    format: Option<String>,
}

/// The shared sections as the file would carry them: JSON, or YAML with `?format=yaml` or
/// an `Accept` naming YAML (both load as a configuration file).
async fn export(
    State(state): State<AdminState>,
    headers: HeaderMap,
    q: Result<Query<Format>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(query_error)?;
    let cluster = cluster_of(&state)?;
    let entities = cluster.applied();
    let mut sections = entities.sections();
    for k in Kind::ALL {
        sections
            .entry(k.section().to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let yaml = match q.format.as_deref() {
        Some("yaml") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::bad(
                "format",
                format!("`{other}`: the format is `json` or `yaml`"),
            ))
        }
        None => accept.contains("yaml"),
    };
    if yaml {
        // Section by section, in the file's usual order.
        let mut text = String::new();
        for k in Kind::ALL {
            let one = json!({ k.section(): sections.get(k.section()) });
            text.push_str(&sluicegate_core::yaml::emit_json(&one).map_err(ApiError::Internal)?);
        }
        return Ok((
            revision_header(entities.revision),
            [(header::CONTENT_TYPE, "application/yaml")],
            text,
        )
            .into_response());
    }
    Ok((
        revision_header(entities.revision),
        Json(Value::Object(sections)),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

/// The operations that make the store hold exactly `sections`.
fn replace_ops(current: &Entities, sections: &Map<String, Value>) -> Result<Vec<Op>, ApiError> {
    let mut problems = Vec::new();
    let mut puts = Vec::new();
    let mut keep = std::collections::HashSet::new();
    for (section, list) in sections {
        let Some(kind) = Kind::from_section(section) else {
            problems.push(Problem {
                path: section.clone(),
                entity: None,
                message: format!(
                    "not a section the cluster holds; expected: {}",
                    Kind::ALL.map(Kind::section).join(", ")
                ),
            });
            continue;
        };
        let Some(items) = list.as_array() else {
            problems.push(Problem {
                path: section.clone(),
                entity: None,
                message: "expected a list".into(),
            });
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{section}[{i}]");
            match entity_body(item.clone(), None) {
                Ok((name, body)) => {
                    if !keep.insert((kind, name.clone())) {
                        problems.push(Problem {
                            path: format!("{at}.name"),
                            entity: None,
                            message: format!("`{name}` appears twice"),
                        });
                    }
                    puts.push(Op::Put { kind, name, body });
                }
                Err(ApiError::Invalid(ps)) => problems.extend(ps.into_iter().map(|p| Problem {
                    path: if p.path.is_empty() {
                        at.clone()
                    } else {
                        format!("{at}.{}", p.path)
                    },
                    ..p
                })),
                Err(e) => return Err(e),
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let mut ops: Vec<Op> = current
        .kinds
        .iter()
        .flat_map(|(kind, m)| {
            m.keys()
                .filter(|name| !keep.contains(&(*kind, (*name).clone())))
                .map(|name| Op::Delete {
                    kind: *kind,
                    name: name.clone(),
                })
        })
        .collect();
    ops.extend(puts);
    Ok(ops)
}

async fn replace(
    State(state): State<AdminState>,
    q: Result<Query<DryRun>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let cluster = cluster_of(&state)?;
    let body = parse_body(&body)?;
    let Some(sections) = body.as_object().cloned() else {
        return Err(ApiError::bad(
            "",
            "the configuration is a JSON object of sections",
        ));
    };
    let Query(q) = q.map_err(query_error)?;
    if q.dry_run {
        let current = cluster.applied();
        let ops = replace_ops(&current, &sections)?;
        validate(&state, candidate(&current, &ops, true)).await?;
        return Ok((
            revision_header(current.revision),
            Json(json!({"valid": true, "dry_run": true})),
        )
            .into_response());
    }
    let (revision, ()) = commit(&state, |current| {
        check_precondition(
            &headers,
            Some(current.revision),
            "the cluster configuration",
        )?;
        Ok((replace_ops(current, &sections)?, true, ()))
    })
    .await?;
    Ok((
        revision_header(revision),
        Json(json!({"revision": revision})),
    )
        .into_response())
}

/// This node's cluster state, as `/status` and `/v1/cluster` show it.
pub fn cluster_status(c: &Cluster) -> Value {
    let s = c.status();
    json!({
        "node": c.node_name,
        "state": c.state(),
        "cluster_id": c.applied().cluster_id,
        "revision": c.applied_revision(),
        "store_revision": s.store_revision,
        "store": if s.store_up { "online" } else { "offline" },
        "since": sluicegate_telemetry::httpdate_rfc3339(s.since),
        "behind_seconds": c.behind_seconds(),
        "rejected_revision": s.rejected_revision,
        "last_error": s.last_error,
    })
}

async fn cluster_info(State(state): State<AdminState>) -> ApiResult {
    Ok(Json(cluster_status(cluster_of(&state)?)).into_response())
}

async fn nodes(State(state): State<AdminState>) -> ApiResult {
    let cluster = cluster_of(&state)?;
    match cluster.nodes().await {
        Ok(nodes) => Ok(Json(json!({"nodes": nodes})).into_response()),
        Err(e) if e.is_unreachable() => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({
                "error": "store_unavailable",
                "message": e.to_string(),
                "nodes": [{"name": cluster.node_name, "revision": cluster.applied_revision(), "state": cluster.state()}],
            })),
        )
            .into_response()),
        Err(e) => Err(ApiError::Store(e)),
    }
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    revision: i64,
    timeout_ms: Option<u64>,
}

async fn wait(
    State(state): State<AdminState>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(query_error)?;
    let cluster = cluster_of(&state)?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(10_000).min(MAX_WAIT_MS));
    let applied = cluster.wait_for(q.revision, timeout).await;
    let reached = applied >= q.revision;
    let status = if reached {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    Ok((
        status,
        Json(json!({"revision": applied, "reached": reached})),
    )
        .into_response())
}

/// A consumer's `credentials` list.
fn credentials_of(body: &Value) -> Vec<Value> {
    body.get("credentials")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn consumer<'e>(
    entities: &'e Entities,
    name: &str,
) -> Result<&'e sluicegate_cluster::Entry, ApiError> {
    entities
        .get(Kind::Consumers, name)
        .ok_or_else(|| ApiError::NotFound(format!("no consumers entity `{name}`")))
}

async fn credentials(State(state): State<AdminState>, Path(name): Path<String>) -> ApiResult {
    let cluster = cluster_of(&state)?;
    let entities = cluster.applied();
    let list = credentials_of(&consumer(&entities, &name)?.body);
    Ok((
        revision_header(entities.revision),
        Json(json!({"total": list.len(), "data": list})),
    )
        .into_response())
}

async fn credential(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    let cluster = cluster_of(&state)?;
    let entities = cluster.applied();
    let c = consumer(&entities, &name)?;
    let found = credentials_of(&c.body)
        .into_iter()
        .find(|cred| cred["id"] == id.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("consumer `{name}` has no credential `{id}`")))?;
    Ok(entity_response(
        StatusCode::OK,
        &found,
        entities.revision,
        c.revision,
        None,
    ))
}

/// A credential body with its `id` (the URL's, the body's, or a new one).
fn credential_body(body: &Bytes, id: Option<&str>) -> Result<(String, Value), ApiError> {
    identified(
        parse_body(body)?,
        "id",
        id,
        Some(|| uuid::Uuid::new_v4().to_string()),
    )
}

/// Writes consumer `name` with its credentials changed by `edit` (which returns the
/// answer's body, or refuses).
/// Returns the revision, `edit`'s value, and the consumer's `ETag`: the revision written,
/// or the consumer's own when `edit` left the list as it was (then nothing is written).
async fn edit_credentials(
    state: &AdminState,
    name: String,
    headers: HeaderMap,
    edit: impl FnOnce(&mut Vec<Value>) -> Result<Option<Value>, ApiError> + Send + 'static,
) -> Result<(i64, Option<Value>, i64), ApiError> {
    let (revision, (out, unchanged)) = commit(state, move |current| {
        let existing = consumer(current, &name)?;
        check_precondition(
            &headers,
            Some(existing.revision),
            &format!("consumers/{name}"),
        )?;
        let before = credentials_of(&existing.body);
        let mut list = before.clone();
        let out = edit(&mut list)?;
        if list == before {
            return Ok((Vec::new(), false, (out, Some(existing.revision))));
        }
        let mut body = Value::clone(&existing.body);
        if let Some(map) = body.as_object_mut() {
            map.insert("credentials".into(), Value::Array(list));
        }
        Ok((
            vec![Op::Put {
                kind: Kind::Consumers,
                name: name.clone(),
                body,
            }],
            false,
            (out, None),
        ))
    })
    .await?;
    Ok((revision, out, unchanged.unwrap_or(revision)))
}

async fn add_credential(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (id, cred) = credential_body(&body, None)?;
    let answer = cred.clone();
    let location = format!("/v1/consumers/{name}/credentials/{id}");
    let owner = name.clone();
    let (revision, _, _) = edit_credentials(&state, name, headers, move |list| {
        if list.iter().any(|c| c["id"] == id.as_str()) {
            return Err(ApiError::Conflict(format!(
                "consumer `{owner}` has a credential `{id}`; `PUT /v1/consumers/{owner}/credentials/{id}` replaces it"
            )));
        }
        list.push(cred);
        Ok(None)
    })
    .await?;
    Ok(entity_response(
        StatusCode::CREATED,
        &answer,
        revision,
        revision,
        Some(location),
    ))
}

async fn put_credential(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (id, cred) = credential_body(&body, Some(&id))?;
    let answer = cred.clone();
    let (revision, created, etag) = edit_credentials(&state, name, headers, move |list| match list
        .iter_mut()
        .find(|c| c["id"] == id.as_str())
    {
        Some(slot) => {
            *slot = cred;
            Ok(None)
        }
        None => {
            list.push(cred);
            Ok(Some(Value::Bool(true)))
        }
    })
    .await?;
    let status = if created.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(entity_response(status, &answer, revision, etag, None))
}

async fn remove_credential(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let owner = name.clone();
    let (revision, _, _) = edit_credentials(&state, name, headers, move |list| {
        let before = list.len();
        list.retain(|c| c["id"] != id.as_str());
        if list.len() == before {
            return Err(ApiError::NotFound(format!(
                "consumer `{owner}` has no credential `{id}`"
            )));
        }
        Ok(None)
    })
    .await?;
    Ok((StatusCode::NO_CONTENT, revision_header(revision)).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1]});
        merge_patch(
            &mut t,
            &json!({"a": null, "b": {"c": 5}, "l": [2], "n": "x"}),
        );
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [2], "n": "x"}));
    }

    #[test]
    fn names_must_fit_a_path_segment() {
        assert!(check_name("eu-west_1.a~b", "name").is_ok());
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(check_name(bad, "name").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_body_name_must_agree_with_the_url() {
        assert!(entity_body(json!({"name": "a"}), Some("b")).is_err());
        let (n, b) = entity_body(json!({"targets": []}), Some("b")).unwrap();
        assert_eq!((n.as_str(), b), ("b", json!({"targets": [], "name": "b"})));
        assert!(entity_body(json!([1]), None).is_err());
    }

    #[test]
    fn replacing_deletes_what_is_missing_and_refuses_duplicates() {
        let mut cur = Entities::empty("c");
        cur.apply(
            vec![sluicegate_cluster::Change {
                kind: Kind::Routes,
                name: "old".into(),
                ord: 1,
                revision: 1,
                body: Some(json!({"name": "old"})),
            }],
            1,
        );
        let s = json!({"routes": [{"name": "new"}]});
        let ops = replace_ops(&cur, s.as_object().unwrap()).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[0], Op::Delete { name, .. } if name == "old"));
        let dup = json!({"routes": [{"name": "a"}, {"name": "a"}], "listeners": []});
        let Err(ApiError::Invalid(p)) = replace_ops(&cur, dup.as_object().unwrap()) else {
            panic!()
        };
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
