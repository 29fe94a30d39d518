//! JSON views and repair operations on a queue, shared by the admin API (gateway running)
//! and `sluicegate wal` (gateway stopped), so both print the same shapes. Everything here
//! works on a [`QueueBackend`]; the live counters of a running queue are added by
//! [`queue_status`].

use base64::Engine as _;
use serde_json::{json, Value};

use super::backend::{QueueBackend, StoredMessage};
use super::record;
use super::retry::now_ms;
use super::{Queue, QueueError};
use sluicegate_telemetry::httpdate_rfc3339;

/// Largest page of `list`.
pub const MAX_LIST: usize = 1000;

fn time(ms: u64) -> String {
    httpdate_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// Storage counters of a queue.
pub fn stats(name: &str, backend: &dyn QueueBackend) -> Value {
    let s = backend.stats();
    json!({
        "name": name,
        "backend": backend.kind(),
        "healthy": s.healthy,
        "pending": s.pending,
        "oldest_pending_id": s.oldest_pending_id,
        "oldest_pending_age_ms": s.oldest_pending_appended_at_ms.map(|t| now_ms().saturating_sub(t)),
        "dead_letters": s.dead,
        "bytes_on_disk": s.bytes_on_disk,
        "max_bytes": s.max_bytes,
        "next_id": s.next_id,
    })
}

/// Storage counters plus the running queue's configuration and counters.
pub fn queue_status(q: &Queue) -> Value {
    let mut v = stats(q.name(), q.backend().as_ref());
    let settings = q.settings();
    let target = q.target();
    if let Some(map) = v.as_object_mut() {
        map.insert("configured".into(), json!(target.is_some()));
        map.insert(
            "route".into(),
            json!(target.as_ref().map(|t| t.route.clone())),
        );
        map.insert(
            "upstream".into(),
            json!(target.as_ref().map(|t| t.upstream.name.clone())),
        );
        map.insert(
            "settings".into(),
            json!({
                "concurrency": settings.concurrency,
                "ordering": match settings.ordering {
                    super::config::Ordering::Fifo => "fifo",
                    super::config::Ordering::Unordered => "unordered",
                },
                "max_bytes": settings.max_bytes,
                "retry": {
                    "on_status": settings.retry.on_status.patterns(),
                    "dead_letter_on": settings.retry.dead_letter_on.patterns(),
                    "initial_backoff_ms": settings.retry.initial_backoff.as_millis() as u64,
                    "max_backoff_ms": settings.retry.max_backoff.as_millis() as u64,
                    "multiplier": settings.retry.multiplier,
                    "max_attempts": settings.retry.max_attempts,
                    "max_age_ms": settings.retry.max_age.map(|d| d.as_millis() as u64),
                },
            }),
        );
        map.insert("counters".into(), q.metrics().to_json());
    }
    v
}

fn summary(m: &StoredMessage) -> Value {
    let mut v = json!({
        "id": m.id,
        "appended_at": time(m.appended_at_ms),
        "age_ms": now_ms().saturating_sub(m.appended_at_ms),
        "bytes": m.payload.len(),
    });
    if let Some(map) = v.as_object_mut() {
        match record::decode(m.payload.clone()) {
            Ok(r) => {
                map.insert("method".into(), json!(r.method.as_str()));
                map.insert("target".into(), json!(r.target));
                map.insert("request_id".into(), json!(r.request_id));
                map.insert("body_bytes".into(), json!(r.body.len()));
            }
            Err(e) => {
                map.insert("error".into(), json!(e.to_string()));
            }
        }
        if let Some(d) = &m.dead {
            map.insert("state".into(), json!("dead"));
            map.insert("reason".into(), json!(d.reason));
            map.insert("dead_at".into(), json!(time(d.dead_at_ms)));
        } else {
            map.insert("state".into(), json!("pending"));
        }
    }
    v
}

/// Up to `limit` pending messages from id `from`, without bodies.
pub async fn list(
    backend: &dyn QueueBackend,
    from: u64,
    limit: usize,
) -> Result<Value, QueueError> {
    let msgs = backend.browse(from, limit.clamp(1, MAX_LIST)).await?;
    let next = msgs.last().map(|m| m.id.saturating_add(1));
    Ok(json!({
        "messages": msgs.iter().map(summary).collect::<Vec<_>>(),
        "next_from": next,
    }))
}

/// One message (pending or dead) with headers and body; the body is text when it is
/// UTF-8, else base64 in `body_base64`.
pub async fn show(name: &str, backend: &dyn QueueBackend, id: u64) -> Result<Value, QueueError> {
    let m = backend.get(id).await?.ok_or_else(|| QueueError::NotFound {
        queue: name.to_string(),
        id,
    })?;
    let mut v = summary(&m);
    if let (Some(map), Ok(r)) = (v.as_object_mut(), record::decode(m.payload.clone())) {
        let headers: Vec<Value> = r
            .headers
            .iter()
            .map(|(n, val)| json!([n.as_str(), String::from_utf8_lossy(val.as_bytes())]))
            .collect();
        map.insert("headers".into(), json!(headers));
        match std::str::from_utf8(&r.body) {
            Ok(text) => map.insert("body".into(), json!(text)),
            Err(_) => map.insert(
                "body_base64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(&r.body)),
            ),
        };
    }
    Ok(v)
}

/// Every dead letter's metadata.
pub async fn dead_letters(backend: &dyn QueueBackend) -> Result<Value, QueueError> {
    let list = backend.dead_letters().await?;
    Ok(json!({
        "dead_letters": list.iter().map(|d| json!({
            "id": d.id,
            "appended_at": time(d.appended_at_ms),
            "dead_at": time(d.dead_at_ms),
            "reason": d.reason,
            "bytes": d.payload_len,
        })).collect::<Vec<_>>(),
    }))
}

/// Puts dead letter `id` back in the queue (with a new id).
pub async fn replay(backend: &dyn QueueBackend, id: u64) -> Result<Value, QueueError> {
    let new_id = backend.replay(id).await?;
    Ok(json!({"replayed": [{"id": id, "new_id": new_id}], "failed": []}))
}

/// Puts every dead letter back in the queue; failures (a full queue) are listed.
pub async fn replay_all(backend: &dyn QueueBackend) -> Result<Value, QueueError> {
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for d in backend.dead_letters().await? {
        match backend.replay(d.id).await {
            Ok(new_id) => replayed.push(json!({"id": d.id, "new_id": new_id})),
            Err(e) => failed.push(json!({"id": d.id, "error": e.to_string()})),
        }
    }
    Ok(json!({"replayed": replayed, "failed": failed}))
}

/// Deletes every dead letter.
pub async fn purge_dead(backend: &dyn QueueBackend) -> Result<Value, QueueError> {
    let n = backend.purge_dead().await?;
    Ok(json!({"purged": n}))
}
