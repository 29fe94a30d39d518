//! Forwarding a request to an upstream: building the upstream request (rewritten path,
//! hop-by-hop headers removed, `X-Forwarded-*` and `X-Request-Id` set), choosing a target,
//! retrying a connect failure on the next target, the read timeout, and passing `Upgrade`
//! (WebSocket) connections through.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::body::{failure_error, UpstreamRequestBody};
use super::context::{RequestBody, RequestCtx};
use super::error::{Kind, ProxyError};
use crate::state::PathRewrite;
use crate::upstream::h1::{SendFailure, Upgraded};
use crate::upstream::pool::{SendOutcome, UpstreamBody};
use crate::upstream::{Protocol, Upstream};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The upstream's answer; its body streams from the upstream (an HTTP/1.1 connection goes
/// back to the pool when the body ends).
pub struct Forwarded {
    /// The response.
    pub response: Response<UpstreamBody>,
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` are kept for the upstream.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, false);
}

/// [`strip_hop_by_hop`] for a request to an HTTP/2 upstream: `TE: trailers` survives (gRPC
/// servers need it to know the client reads trailers; it is the one `TE` value HTTP/2
/// allows, RFC 9113 §8.2.2). Costs nothing more when the request has no `TE`.
pub fn strip_hop_by_hop_request(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, true);
}

fn strip(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // One pass over the names (no hashing) finds which hop-by-hop headers are present;
    // only those are removed. Most requests have none, most responses only `Connection`.
    let fixed: [&HeaderName; 7] = [
        &header::CONNECTION,
        &header::UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ];
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|f| *f == name) {
            present |= 1 << i;
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    // Index of `TE` in `fixed`; read before `Connection: TE` removes it.
    const TE: usize = 4;
    let te_trailers = keep_te_trailers && present & (1 << TE) != 0 && asks_for_trailers(headers);
    if present & 1 != 0 {
        // Headers named in `Connection` are hop-by-hop too (its usual tokens are not names).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, name) in fixed.iter().enumerate() {
        let is_upgrade_pair = i < 2;
        if present & (1 << i) != 0 && !(keep_upgrade && is_upgrade_pair) {
            headers.remove(*name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether any `TE` line lists the `trailers` token.
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
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

/// Forwards the request in `ctx` to `upstream`, trying the next target when one cannot be
/// reached.
pub async fn forward(
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    rewrite: Option<&PathRewrite>,
    keep_headers: bool,
) -> Result<Forwarded, ProxyError> {
    let upgrade = is_upgrade(&ctx.head.headers);
    // HTTP/2 upstreams get the client's host as :authority, as HTTP/1.1 ones get its Host.
    let authority = match upstream.protocol {
        Protocol::Http2 => super::context::request_host_raw(&ctx.head.uri, &ctx.head.headers),
        Protocol::Http1 => None,
    };
    let mut req = upstream_request(ctx, upstream, rewrite, upgrade, keep_headers)?;
    let client_upgrade = if upgrade {
        ctx.head.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let worker = ctx.worker.clone();
    let metrics = &upstream.metrics;
    let attempts = upstream.targets.len().max(1);
    let first = upstream.pick(worker.id).unwrap_or(0);
    let mut last_err = ProxyError::upstream(Kind::UpstreamConnect, "upstream has no targets");
    for attempt in 0..attempts {
        let Some(target) = upstream.target(first, attempt) else {
            break;
        };
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
        let conn = match worker.pool.checkout(upstream, target).await {
            Ok(c) => c,
            Err(e) => {
                metrics.error("connect");
                tracing::warn!(request_id = ctx.request_id_str(), upstream = %upstream.name, target = %target.address, error = %e, "Upstream target unreachable.");
                last_err = e;
                continue;
            }
        };
        let mut sent = send_with_timeout(ctx, upstream, conn, req).await;
        if let Err(SendFailure {
            retry: Some(unsent),
            ..
        }) = sent
        {
            // A pooled connection the upstream had closed: one try on a fresh connection.
            match worker.pool.checkout_fresh(upstream, target).await {
                Ok(conn) => sent = send_with_timeout(ctx, upstream, conn, unsent).await,
                Err(e) => {
                    // The target went away between two requests: the next target gets it.
                    metrics.error("connect");
                    tracing::warn!(request_id = ctx.request_id_str(), upstream = %upstream.name, target = %target.address, error = %e, "Upstream target unreachable.");
                    req = unsent;
                    last_err = e;
                    continue;
                }
            }
        }
        // From the request's arrival: one clock read instead of two.
        ctx.upstream.duration = Some(ctx.started.elapsed());
        return match sent {
            Ok(response) => {
                if let Some(on_client) = client_upgrade {
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return Ok(tunnel(ctx, on_client, response));
                    }
                }
                Ok(Forwarded { response })
            }
            Err(SendFailure { error: e, .. }) => {
                // A request body that failed on the client side is the client's error.
                let failure = &ctx.traffic.body_failure;
                let e = if failure.get().is_some() {
                    failure_error(failure)
                } else {
                    e
                };
                if e.origin == super::error::Source::Upstream {
                    metrics.error(if e.kind == Kind::UpstreamTimeout {
                        "timeout"
                    } else {
                        "protocol"
                    });
                }
                Err(e)
            }
        };
    }
    Err(last_err)
}

/// Sends and waits for the response head. The read timeout counts from the end of the
/// request body: while the client is still uploading, the clock is re-armed (the client
/// body has its own idle timeout).
async fn send_with_timeout(
    ctx: &RequestCtx,
    upstream: &Upstream,
    conn: crate::upstream::pool::Conn,
    req: Request<UpstreamRequestBody>,
) -> SendOutcome {
    let send = conn.send(req);
    tokio::pin!(send);
    loop {
        let deadline = crate::server::clock::coarse_now() + upstream.read_timeout;
        match tokio::time::timeout_at(deadline, &mut send).await {
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
) -> Result<Request<UpstreamRequestBody>, ProxyError> {
    let uri = upstream_uri(&ctx.head.uri, rewrite)?;
    // Later phases that look at request headers get them; otherwise they move, uncopied.
    let mut headers = if keep_headers {
        ctx.head.headers.clone()
    } else {
        std::mem::take(&mut ctx.head.headers)
    };
    if upstream.protocol == Protocol::Http2 {
        strip_hop_by_hop_request(&mut headers, upgrade);
    } else {
        // The HTTP/1.1 client does not pass trailers on: it must not promise to read them.
        strip_hop_by_hop(&mut headers, upgrade);
    }
    // `Expect: 100-continue` was answered to the client when its body was first read.
    headers.remove(header::EXPECT);
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => ctx
            .head
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if upstream.protocol == Protocol::Http2 {
        // HTTP/2 carries the host in :authority.
        headers.remove(header::HOST);
    } else if !headers.contains_key(header::HOST) {
        if let Some(h) = &host {
            headers.insert(header::HOST, h.clone());
        }
    }
    append_forwarded_for(&mut headers, &ctx.client_ip);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
    );
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    let body = match std::mem::replace(&mut ctx.body, RequestBody::Empty) {
        RequestBody::Stream(s) => UpstreamRequestBody::Stream(s),
        RequestBody::Buffered(b) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            UpstreamRequestBody::Full(Some(b))
        }
        RequestBody::Empty => UpstreamRequestBody::Full(None),
    };
    let mut req = Request::new(body);
    *req.method_mut() = ctx.head.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The origin-form URI for the upstream: the client's, rewritten if the route says so.
fn upstream_uri(uri: &Uri, rewrite: Option<&PathRewrite>) -> Result<Uri, ProxyError> {
    if rewrite.is_none() && uri.scheme().is_none() && uri.authority().is_none() {
        return Ok(uri.clone());
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

/// Appends the client IP to `X-Forwarded-For`, joining every existing line of it.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
        return;
    }
    let mut joined: Vec<u8> = Vec::with_capacity(64);
    for v in existing {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Joins the client and upstream connections after a `101 Switching Protocols` and copies
/// bytes both ways until either side closes.
fn tunnel(
    ctx: &RequestCtx,
    on_client: hyper::upgrade::OnUpgrade,
    response: Response<UpstreamBody>,
) -> Forwarded {
    let (head, body) = response.into_parts();
    let request_id = ctx.request_id_str().to_string();
    match body {
        UpstreamBody::H1(mut h1) => {
            if let Some(conn) = h1.take_upgraded() {
                let (io, leftover) = conn.into_upgraded();
                let upstream = Upgraded::new(io, leftover);
                // Counted like a connection, so a drain waits for it (up to the timeout).
                let active = ctx.worker.tracker.enter();
                tokio::task::spawn_local(async move {
                    copy_both_ways(on_client, upstream, request_id).await;
                    drop(active);
                });
            }
            Forwarded {
                response: Response::from_parts(head, UpstreamBody::H1(h1)),
            }
        }
        UpstreamBody::H2(incoming) => {
            // HTTP/2 upstreams do not switch protocols (RFC 9113 §8.6).
            Forwarded {
                response: Response::from_parts(head, UpstreamBody::H2(incoming)),
            }
        }
    }
}

async fn copy_both_ways(
    on_client: hyper::upgrade::OnUpgrade,
    mut upstream: Upgraded,
    request_id: String,
) {
    let client = match on_client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(request_id = %request_id, error = %e, "Upgrade failed.");
            return;
        }
    };
    let mut client = TokioIo::new(client);
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
