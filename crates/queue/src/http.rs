//! The request path of a queued route. After the route's rewrite and access plugins ran
//! (so signatures are verified and the request is reshaped first), the driver calls
//! [`enqueue`]: it reads the whole body, stores method, path and query, headers (plus
//! `X-Forwarded-*`, as a proxied request would carry) and body, waits until the record
//! is durable, and returns the route's acknowledgement. Failures become [`ProxyError`]s
//! (a full queue is `Kind::Unavailable`: 503 with `Retry-After`).

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};

use super::config::RouteQueue;
use super::record::QueuedRequest;
use super::{QueueError, Queues};
use sluicegate_core::context::RequestCtx;
use sluicegate_core::error::{Kind, ProxyError, Source};
use sluicegate_core::phase::LocalResponse;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the request in `ctx` to the route's queue (one of `queues`) and returns the
/// acknowledgement.
pub async fn enqueue(
    ctx: &mut RequestCtx,
    queues: &Queues,
    rq: &RouteQueue,
) -> Result<LocalResponse, ProxyError> {
    let body = ctx.read_body().await?;
    let request = queued_request(ctx, body);
    let queue = queues
        .get(&rq.name)
        .ok_or_else(|| QueueError::Unknown(rq.name.clone()))?;
    let id = match queue.enqueue(&request).await {
        Ok(id) => id,
        Err(e) => {
            // The client gets a generic message; the operator gets the cause, once.
            if matches!(
                e,
                QueueError::Io { .. } | QueueError::Unhealthy(_) | QueueError::Locked { .. }
            ) {
                tracing::error!(request_id = ctx.request_id_str(), queue = %rq.name, error = %e, "Queue append failed.");
            }
            return Err(e.into());
        }
    };
    tracing::debug!(request_id = ctx.request_id_str(), queue = %rq.name, id, "Request queued.");
    Ok(rq.ack.render(
        &rq.name,
        id,
        ctx.request_id_str(),
        queue.backend().durability(),
    ))
}

/// The request as it would be forwarded now (after rewrite and access plugins).
pub fn queued_request(ctx: &RequestCtx, body: Bytes) -> QueuedRequest {
    let mut headers = ctx.head.headers.clone();
    sluicegate_http1::hop::strip_hop_by_hop(&mut headers, false);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    let host = headers.get(header::HOST).cloned().or_else(|| {
        ctx.head
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(h) = &host {
        headers.insert(header::HOST, h.clone());
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            HeaderValue::from_str(&format!("{prev}, {}", ctx.client_ip.to_str().unwrap_or(""))).ok()
        }
        None => Some(ctx.client_ip.clone()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
    );
    QueuedRequest {
        method: ctx.head.method.clone(),
        target: ctx
            .head
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
        headers,
        body,
        request_id: ctx.request_id_str().to_string(),
    }
}

impl From<QueueError> for ProxyError {
    fn from(e: QueueError) -> Self {
        match &e {
            QueueError::TooLarge { .. } => ProxyError::client(Kind::BodyTooLarge, e.to_string()),
            QueueError::Invalid { .. } => ProxyError::client(Kind::BadRequest, e.to_string()),
            QueueError::Full { queue, .. } => ProxyError::new(
                Source::Internal,
                Kind::Unavailable,
                format!("queue `{queue}` is full; try again later"),
            ),
            QueueError::Unavailable { queue, backend, .. } => ProxyError::new(
                Source::Internal,
                Kind::Unavailable,
                format!("queue `{queue}` cannot reach its {backend} engine; try again later"),
            ),
            QueueError::Unknown(queue)
            | QueueError::Unhealthy(queue)
            | QueueError::Closed(queue)
            | QueueError::Locked { queue, .. }
            | QueueError::Io { queue, .. } => ProxyError::new(
                Source::Internal,
                Kind::Unavailable,
                format!("queue `{queue}` cannot take requests right now"),
            ),
            QueueError::NotFound { .. }
            | QueueError::NotPending { .. }
            | QueueError::NotDead { .. }
            | QueueError::Unsupported { .. }
            | QueueError::Unreadable { .. } => {
                ProxyError::new(Source::Internal, Kind::Internal, e.to_string())
            }
        }
    }
}
