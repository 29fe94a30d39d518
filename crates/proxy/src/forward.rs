//! Forwarding a request to an upstream: building the upstream request (rewritten path,
//! hop-by-hop headers removed, `X-Forwarded-*` and `X-Request-Id` set), choosing a target,
//! retrying a connect failure on the next target, the read timeout, and passing `Upgrade`
//! (WebSocket) connections through.

use std::rc::Rc;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};

use super::retry::RetryPolicy;
use crate::snapshot::{PathRewrite, Snapshot};
use crate::worker::Worker;
use sluicegate_core::body::{failure_error, UpstreamRequestBody};
use sluicegate_core::context::{RequestBody, RequestCtx};
use sluicegate_core::error::{Kind, ProxyError};
use sluicegate_upstream::balance::{self, HashOn, Policy, Tried};
use sluicegate_upstream::h1::SendFailure;
use sluicegate_upstream::health;
use sluicegate_upstream::live::{InFlight, TargetSet};
use sluicegate_upstream::pool::{SendOutcome, UpstreamBody, UpstreamRequest, UpstreamResponse};
use sluicegate_upstream::{Protocol, Target, Upstream};
use std::sync::atomic::Ordering;

use sluicegate_http1::hop::{strip_hop_by_hop, strip_hop_by_hop_request};
use sluicegate_upstream::forwarded::ForwardedHeaders;

/// The upstream's answer; its body streams from the upstream (an HTTP/1.1 connection goes
/// back to the pool when the body ends).
pub struct Forwarded {
    /// The response.
    pub response: UpstreamResponse,
}

/// Whether the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Forwards the request in `ctx` to `upstream`: chooses a target with the upstream's policy
/// (skipping unhealthy ones), tries the next target when one cannot be reached, and — when
/// the route has a `retry:` policy — retries timeouts, resets and chosen statuses on another
/// target with the buffered body, within the route's retry budget.
pub async fn forward(
    ctx: &mut RequestCtx,
    snapshot: &Snapshot,
    worker: &Rc<Worker>,
    upstream: &Arc<Upstream>,
    rewrite: Option<&PathRewrite>,
    keep_headers: bool,
) -> Result<Forwarded, ProxyError> {
    let upgrade = is_upgrade(&ctx.head.headers);
    // HTTP/2 upstreams get the client's host as :authority, as HTTP/1.1 ones get its Host.
    let authority = match upstream.protocol {
        Protocol::Http2 => {
            sluicegate_core::context::request_host_raw(&ctx.head.uri, &ctx.head.headers)
        }
        Protocol::Http1 => None,
    };
    let retry = match ctx.route.and_then(|i| snapshot.routes.get(i)) {
        Some(route) if !upgrade => route.retry.clone(),
        _ => None,
    };
    let key = match &upstream.policy {
        Policy::Hash(on) => hash_key(ctx, on),
        _ => 0,
    };
    let replayable = match &retry {
        Some(policy) => {
            policy.deposit();
            policy.allows(&ctx.head.method) && buffer_for_replay(ctx, policy).await?
        }
        None => false,
    };
    let (mut req, added) = upstream_request(ctx, upstream, rewrite, upgrade, keep_headers)?;
    let added = added.as_ref();
    let template = if replayable { Template::of(&req) } else { None };
    let client_upgrade = if upgrade {
        ctx.head.extensions.remove::<crate::upgrade::OnUpgrade>()
    } else {
        None
    };
    let metrics = &upstream.metrics;
    // A guard, not an `Arc` clone: no write to the set's shared reference count on the
    // common path (arc-swap falls back to a clone when a thread holds many guards).
    let set = upstream.live.load();
    if set.is_empty() {
        return Err(no_targets(upstream, set.complete));
    }
    let hint = ctx.upstream_target.take();
    let mut tried = Tried::default();
    let mut full = Tried::default();
    let mut retries_left = retry.as_ref().map_or(0, |p| p.attempts);
    let mut last_err = ProxyError::upstream(Kind::UpstreamConnect, "upstream has no targets");
    let mut first_pick = true;
    let mut wait_until = None;
    loop {
        let Some(index) = choose(
            upstream,
            &set,
            worker.id,
            key,
            tried,
            hint.as_deref(),
            first_pick,
        )?
        else {
            if full.0 != 0 && upstream.circuit.max_pending > 0 {
                // Every remaining target is at its limit: wait for a slot (within one
                // `pending_timeout` in all), then choose again.
                let until = *wait_until.get_or_insert_with(|| {
                    sluicegate_core::clock::coarse_now() + upstream.circuit.pending_timeout
                });
                let left = until.saturating_duration_since(sluicegate_core::clock::coarse_now());
                let waited = !left.is_zero()
                    && InFlight::wait_for_slot(&upstream.live, upstream.circuit.max_pending, left)
                        .await;
                if waited {
                    tried = Tried(tried.0 & !full.0);
                    full = Tried::default();
                    continue;
                }
            }
            if full.0 != 0 {
                metrics.circuit_open.fetch_add(1, Ordering::Relaxed);
                return Err(ProxyError::new(
                    sluicegate_core::error::Source::Upstream,
                    Kind::Unavailable,
                    format!(
                        "upstream `{}`: every target is at its connection limit (circuit breaker open)",
                        upstream.name
                    ),
                ));
            }
            return Err(last_err);
        };
        first_pick = false;
        tried.add(index);
        let target = &set.targets[index];
        if upstream.counts_in_flight() {
            match InFlight::acquire(
                &target.state,
                &upstream.live,
                upstream.circuit.max_connections,
            ) {
                Some(slot) => ctx.upstream_in_flight = Some(Box::new(slot)),
                None => {
                    full.add(index);
                    continue;
                }
            }
        }
        ctx.upstream.target = Some(target.address.clone());
        // HTTP/2 needs `:scheme` and `:authority`; HTTP/1.1 (TLS or not) sends the
        // origin-form target to an origin server (RFC 9112 §3.2.1).
        if upstream.protocol == Protocol::Http2 {
            set_authority(
                &mut req,
                upstream.scheme(),
                authority.as_deref().unwrap_or(&target.address),
            );
        }
        // Peak-EWMA measures each try, from choosing the target to the response head.
        let try_started = (upstream.policy == Policy::PeakEwma).then(std::time::Instant::now);
        let conn = match worker.pool.checkout(upstream, target).await {
            Ok(c) => c,
            Err(e) => {
                metrics.error("connect");
                passive_failure(ctx, upstream, target);
                tracing::warn!(request_id = ctx.request_id_str(), upstream = %upstream.name, target = %target.address, error = %e, "Upstream target unreachable.");
                ctx.upstream_in_flight = None;
                last_err = e;
                continue;
            }
        };
        let mut sent = send_with_timeout(ctx, upstream, conn, req, added).await;
        if let Err(SendFailure {
            retry: Some(unsent),
            ..
        }) = sent
        {
            // A pooled connection the upstream had closed: one try on a fresh connection.
            match worker.pool.checkout_fresh(upstream, target).await {
                Ok(conn) => sent = send_with_timeout(ctx, upstream, conn, unsent, added).await,
                Err(e) => {
                    // The target went away between two requests: the next target gets it.
                    metrics.error("connect");
                    passive_failure(ctx, upstream, target);
                    tracing::warn!(request_id = ctx.request_id_str(), upstream = %upstream.name, target = %target.address, error = %e, "Upstream target unreachable.");
                    ctx.upstream_in_flight = None;
                    req = unsent;
                    last_err = e;
                    continue;
                }
            }
        }
        // From the request's arrival: one clock read instead of two, and none when no
        // access log line will carry it.
        if snapshot.access_log.enabled() {
            ctx.upstream.duration = Some(ctx.started.elapsed());
        }
        if let Some(started) = try_started {
            target.state.observe_latency(started.elapsed());
        }
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                if let Some(passive) = &upstream.health.passive {
                    if passive.failure_statuses.contains(&status) {
                        passive_failure(ctx, upstream, target);
                    } else {
                        health::record_success(&target.state);
                    }
                }
                if let (Some(policy), Some(t)) = (&retry, &template) {
                    if policy.statuses.contains(&status)
                        && may_retry(
                            ctx,
                            upstream,
                            policy,
                            &mut retries_left,
                            &set,
                            tried,
                            &target.address,
                            &status.to_string(),
                        )
                    {
                        discard(response, upstream.read_timeout).await;
                        req = t.request();
                        continue;
                    }
                }
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(on_client) = client_upgrade else {
                        // RFC 9110 §15.2.2: a 101 answers an `Upgrade` request only. Passed
                        // on, the client would take the bytes after it for another protocol.
                        metrics.error("protocol");
                        return Err(ProxyError::upstream(
                            Kind::UpstreamProtocol,
                            "the upstream switched protocols for a request that asked for no upgrade",
                        ));
                    };
                    return Ok(tunnel(ctx, worker, on_client, response));
                }
                return Ok(Forwarded { response });
            }
            Err(SendFailure { error: e, .. }) => {
                // A request body that failed on the client side is the client's error.
                let failure = &ctx.traffic.body_failure;
                if failure.get().is_some() {
                    return Err(failure_error(failure));
                }
                if e.origin != sluicegate_core::error::Source::Upstream {
                    return Err(e);
                }
                let timeout = e.kind == Kind::UpstreamTimeout;
                metrics.error(if timeout { "timeout" } else { "protocol" });
                passive_failure(ctx, upstream, target);
                if let (Some(policy), Some(t)) = (&retry, &template) {
                    let wanted = if timeout {
                        policy.on_timeout
                    } else {
                        policy.on_reset
                    };
                    let what = if timeout { "timeout" } else { "reset" };
                    if wanted
                        && may_retry(
                            ctx,
                            upstream,
                            policy,
                            &mut retries_left,
                            &set,
                            tried,
                            &target.address,
                            what,
                        )
                    {
                        req = t.request();
                        last_err = e;
                        continue;
                    }
                }
                return Err(e);
            }
        }
    }
}

/// Drops a response that is being retried. A small body with a known length is read to
/// its end first (bounded in time), so an HTTP/1.1 connection goes back to the pool instead
/// of being closed; anything else is dropped, closing its connection.
async fn discard(response: UpstreamResponse, read_timeout: std::time::Duration) {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    /// Bodies up to this size are drained (an error page, a JSON error).
    const DRAIN_MAX: u64 = 64 * 1024;
    let body = super::body::UpstreamResponseBody::new(response.into_body(), read_timeout);
    if body.size_hint().exact().is_some_and(|n| n <= DRAIN_MAX) {
        let limit = read_timeout.min(std::time::Duration::from_secs(1));
        let _ = tokio::time::timeout(limit, body.collect()).await;
    }
}

/// The error when an upstream has no target to send to.
fn no_targets(upstream: &Upstream, complete: bool) -> ProxyError {
    if complete {
        ProxyError::new(
            sluicegate_core::error::Source::Upstream,
            Kind::Unavailable,
            format!(
                "upstream `{}` has no target addresses (DNS answers expired)",
                upstream.name
            ),
        )
    } else {
        ProxyError::new(
            sluicegate_core::error::Source::Upstream,
            Kind::Unavailable,
            format!(
                "upstream `{}`: its target names are not resolved yet",
                upstream.name
            ),
        )
    }
}

/// The next target: the script's choice first (when available), then the policy's among
/// healthy targets not tried yet. With every target unhealthy on the first pick, either all
/// are tried anyway (`fail_open`) or the request fails with 503 (`fail_closed`).
fn choose(
    upstream: &Upstream,
    set: &TargetSet,
    worker: usize,
    key: u64,
    tried: Tried,
    hint: Option<&str>,
    first_pick: bool,
) -> Result<Option<usize>, ProxyError> {
    if first_pick {
        if let Some(i) = hint.and_then(|h| set.find(h)) {
            if set.targets[i].state.available() {
                return Ok(Some(i));
            }
        }
    }
    if let Some(i) = set.select(&upstream.policy, worker, key, tried, false) {
        return Ok(Some(i));
    }
    if !first_pick {
        // Retries go to healthy targets only; any untried one when none is healthy.
        return Ok(set.select(
            &upstream.policy,
            worker,
            key,
            tried,
            !upstream.health.fail_closed,
        ));
    }
    if upstream.health.fail_closed {
        return Err(ProxyError::new(
            sluicegate_core::error::Source::Upstream,
            Kind::Unavailable,
            format!("every target of upstream `{}` is unhealthy", upstream.name),
        ));
    }
    Ok(set.select(&upstream.policy, worker, key, tried, true))
}

/// Whether a failed try may be retried: attempts and budget left, another target to try.
#[allow(clippy::too_many_arguments)]
fn may_retry(
    ctx: &RequestCtx,
    upstream: &Upstream,
    policy: &RetryPolicy,
    retries_left: &mut u32,
    set: &TargetSet,
    tried: Tried,
    target: &str,
    what: &str,
) -> bool {
    if *retries_left == 0 || (0..set.len()).all(|i| tried.has(i)) {
        return false;
    }
    if !policy.withdraw() {
        upstream
            .metrics
            .retry_budget_exhausted
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(request_id = ctx.request_id_str(), upstream = %upstream.name, target, reason = what, "Retry budget exhausted; not retrying.");
        return false;
    }
    *retries_left -= 1;
    upstream.metrics.retries.fetch_add(1, Ordering::Relaxed);
    tracing::info!(request_id = ctx.request_id_str(), upstream = %upstream.name, target, reason = what, "Retrying on another target.");
    true
}

fn passive_failure(ctx: &RequestCtx, upstream: &Upstream, target: &Target) {
    if let Some(passive) = &upstream.health.passive {
        if health::record_failure(&target.state, passive) {
            tracing::warn!(request_id = ctx.request_id_str(), upstream = %upstream.name, target = %target.address, "Target ejected after consecutive failures.");
        }
    }
}

/// Reads the body into memory when it is small enough to replay; false when it must stream.
async fn buffer_for_replay(ctx: &mut RequestCtx, policy: &RetryPolicy) -> Result<bool, ProxyError> {
    match &ctx.body {
        RequestBody::Empty | RequestBody::Buffered(_) => Ok(true),
        RequestBody::Stream(_) => {
            let declared = ctx
                .head
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match declared {
                Some(n) if n <= policy.max_body_bytes => {
                    ctx.read_body().await?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
    }
}

/// The key consistent hashing hashes for this request (0 when the request lacks it).
fn hash_key(ctx: &RequestCtx, on: &HashOn) -> u64 {
    match on {
        HashOn::Header(name) => ctx
            .head
            .headers
            .get(name)
            .map_or(0, |v| balance::key_hash(v.as_bytes())),
        HashOn::Cookie(name) => ctx
            .head
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| balance::key_hash(v.as_bytes())),
        HashOn::ClientIp => balance::key_hash(ctx.client_ip.as_bytes()),
    }
}

/// A request that can be sent again, byte for byte: head and buffered body.
struct Template {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
}

impl Template {
    fn of(req: &Request<UpstreamRequestBody>) -> Option<Template> {
        let body = match req.body() {
            UpstreamRequestBody::Full(b) => b.clone(),
            UpstreamRequestBody::Stream(_) => return None,
        };
        Some(Template {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        })
    }

    fn request(&self) -> UpstreamRequest {
        let mut req = Box::new(Request::new(UpstreamRequestBody::Full(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Sends and waits for the response head. The read timeout counts from the end of the
/// request body: while the client is still uploading, the clock is re-armed (the client
/// body has its own idle timeout).
async fn send_with_timeout(
    ctx: &RequestCtx,
    upstream: &Upstream,
    conn: sluicegate_upstream::pool::Conn,
    req: UpstreamRequest,
    added: Option<&ForwardedHeaders>,
) -> SendOutcome {
    let send = conn.send(req, added);
    tokio::pin!(send);
    loop {
        let deadline = sluicegate_core::clock::coarse_now() + upstream.read_timeout;
        match sluicegate_core::deadline::timeout_at(deadline, &mut send).await {
            Ok(r) => return r,
            Err(_) if !ctx.traffic.request_done.get() => continue,
            Err(_) => {
                return Err(SendFailure {
                    error: ProxyError::upstream(
                        Kind::UpstreamTimeout,
                        format!(
                            "upstream `{}` did not answer within {} ms",
                            upstream.name,
                            upstream.read_timeout.as_millis()
                        ),
                    ),
                    retry: None,
                })
            }
        }
    }
}

fn set_authority(req: &mut Request<UpstreamRequestBody>, scheme: &str, address: &str) {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    if let Ok(uri) = Uri::builder()
        .scheme(scheme)
        .authority(address)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
}

fn upstream_request(
    ctx: &mut RequestCtx,
    upstream: &Upstream,
    rewrite: Option<&PathRewrite>,
    upgrade: bool,
    keep_headers: bool,
) -> Result<(UpstreamRequest, Option<ForwardedHeaders>), ProxyError> {
    // Later phases that look at the request get its URI and headers; otherwise they move,
    // uncopied (the URI last: the Host fallback below reads it).
    let mut headers = if keep_headers {
        ctx.head.headers.clone()
    } else {
        std::mem::take(&mut ctx.head.headers)
    };
    let h2 = upstream.protocol == Protocol::Http2;
    if h2 {
        strip_hop_by_hop_request(&mut headers, upgrade);
        // `Expect: 100-continue` was answered to the client when its body was first read
        // (the HTTP/1.1 encoder skips it).
        headers.remove(header::EXPECT);
    } else {
        // The HTTP/1.1 client does not pass trailers on: it must not promise to read them.
        strip_hop_by_hop(&mut headers, upgrade);
    }
    let sent_host = headers.get(header::HOST).cloned();
    let host = sent_host.clone().or_else(|| {
        ctx.head
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if h2 {
        // HTTP/2 carries the host in :authority.
        headers.remove(header::HOST);
    } else if sent_host.is_none() {
        if let Some(h) = &host {
            headers.insert(header::HOST, h.clone());
        }
    }
    let mut added = Some(ForwardedHeaders::new(
        ctx.client_ip.clone(),
        ctx.tls,
        host,
        ctx.request_id.clone(),
    ));
    if h2 {
        if let Some(a) = added.take() {
            // Room for them: a map sized for the client's few headers would otherwise
            // grow (and rehash) more than once.
            headers.reserve(4);
            a.apply(&mut headers);
        }
    }
    let uri = if keep_headers {
        upstream_uri(ctx.head.uri.clone(), rewrite)?
    } else {
        upstream_uri(std::mem::take(&mut ctx.head.uri), rewrite)?
    };
    let body = match std::mem::replace(&mut ctx.body, RequestBody::Empty) {
        RequestBody::Stream(s) => UpstreamRequestBody::Stream(s),
        RequestBody::Buffered(b) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            UpstreamRequestBody::Full(Some(b))
        }
        RequestBody::Empty => UpstreamRequestBody::Full(None),
    };
    let mut req = Box::new(Request::new(body));
    *req.method_mut() = ctx.head.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok((req, added))
}

/// The origin-form URI for the upstream: the client's, rewritten if the route says so.
fn upstream_uri(uri: Uri, rewrite: Option<&PathRewrite>) -> Result<Uri, ProxyError> {
    if rewrite.is_none() && uri.scheme().is_none() && uri.authority().is_none() {
        return Ok(uri);
    }
    let path = match rewrite {
        Some(r) => r.apply(uri.path()),
        None => uri.path().to_string(),
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    pq.parse()
        .map_err(|_| ProxyError::client(Kind::BadRequest, "the rewritten path is not a valid URI"))
}

/// Joins the client and upstream connections after a `101 Switching Protocols` and copies
/// bytes both ways until either side closes.
fn tunnel(
    ctx: &RequestCtx,
    worker: &Worker,
    on_client: crate::upgrade::OnUpgrade,
    response: UpstreamResponse,
) -> Forwarded {
    let (head, body) = response.into_parts();
    let request_id = ctx.request_id_str().to_string();
    match body {
        UpstreamBody::H1(mut h1) => {
            if let Some(conn) = h1.take_upgraded() {
                let (io, leftover) = (*conn).into_upgraded();
                let upstream = sluicegate_http1::Rewind::new(io, leftover);
                // Counted like a connection, so a drain waits for it (up to the timeout).
                let active = worker.tracker.enter();
                tokio::task::spawn_local(async move {
                    copy_both_ways(on_client, upstream, request_id).await;
                    drop(active);
                });
            }
            Forwarded {
                response: Box::new(Response::from_parts(head, UpstreamBody::H1(h1))),
            }
        }
        UpstreamBody::H2(incoming) => {
            // HTTP/2 upstreams do not switch protocols (RFC 9113 §8.6).
            Forwarded {
                response: Box::new(Response::from_parts(head, UpstreamBody::H2(incoming))),
            }
        }
    }
}

async fn copy_both_ways(
    on_client: crate::upgrade::OnUpgrade,
    mut upstream: sluicegate_http1::Rewind<sluicegate_upstream::pool::UpstreamStream>,
    request_id: String,
) {
    let mut client = match on_client.wait().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(request_id = %request_id, error = %e, "Upgrade failed.");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(request_id = %request_id, bytes_up = up, bytes_down = down, "Upgraded connection closed.")
        }
        Err(e) => {
            tracing::debug!(request_id = %request_id, error = %e, "Upgraded connection ended with an error.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_headers_and_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_te_trailers_for_the_upstream_and_drops_other_te_values() {
        let mut h = HeaderMap::new();
        h.append(header::TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        strip_hop_by_hop_request(&mut h, false);
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h.get_all(header::TE).iter().count(), 1);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop_request(&mut h, false);
        assert!(!h.contains_key(header::TE));

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key(header::TE), "responses never keep TE");
    }

    #[test]
    fn keeps_upgrade_headers_for_websockets() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
