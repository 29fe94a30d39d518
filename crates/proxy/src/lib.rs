//! The phase driver: takes a request from the server, runs it through
//! route match → rewrite → access → (content | proxy) → header_filter → body_filter → log,
//! and turns every failure into a response through [`error`] (the one place that does).
//!
//! Invariants: the snapshot is loaded once per request; the log phase runs exactly once per
//! request (from the response body's end or drop); nothing here panics on bad input.

pub mod body;
pub mod conn;
pub mod forward;
pub mod retry;
pub mod router;
pub mod settings;
pub mod snapshot;
pub mod upgrade;
pub mod worker;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body as _;

use self::body::{BodyObserver, BodyOutcome, ResponseBody, ResponseSource, UpstreamResponseBody};
use crate::conn::ConnPhase;
use crate::conn::ConnState;
use crate::snapshot::{Chain, Snapshot};
use crate::worker::Worker;
use sluicegate_core::body::{BoxError, ClientBody, ClientStream};
use sluicegate_core::context::X_REQUEST_ID;
use sluicegate_core::context::{RequestBody, RequestCtx, ResponseHead, Traffic};
use sluicegate_core::error::{self as error, error_response, Kind, ProxyError};
use sluicegate_core::phase::{Flow, LocalResponse, Phase, PluginError};
use sluicegate_http1::raw::RawHeaders;
use sluicegate_telemetry::AccessRecord;
use sluicegate_upstream::Upstream;

/// What the client connection tells the driver about itself.
pub struct ConnInfo {
    /// Client address.
    pub client_addr: SocketAddr,
    /// Listener index in the snapshot.
    pub listener: usize,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client IP as a header value (for `X-Forwarded-For`), computed once per connection.
    pub client_ip: HeaderValue,
    /// The connection's request-cycle phase (drives its idle and header timeouts).
    pub state: Arc<crate::conn::ConnState>,
}

enum Answer {
    Local(LocalResponse),
    Upstream(forward::Forwarded, std::time::Duration),
}

/// Handles one request; never fails (errors become responses).
pub async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<ClientStream>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    Ok(*handle_boxed(worker, conn, Box::new(req)).await)
}

/// [`handle`] with the request and response boxed, as the HTTP/1.1 loop uses it: each
/// passes through several futures, and a pointer moves where the whole value was copied.
pub async fn handle_boxed(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Box<Request<ClientStream>>,
) -> Box<Response<ResponseBody>> {
    conn.state.set(ConnPhase::InRequest);
    conn.state.begin();
    let snapshot = worker.shared.snapshot.load_full();
    let (head, incoming) = req.into_parts();

    let listener = snapshot
        .listeners
        .get(conn.listener)
        .unwrap_or(crate::settings::ListenerSettings::fallback());
    let request_id = request_id(
        &head.headers,
        listener.trust_request_id,
        &worker.request_ids,
    );
    let traffic = Rc::new(Traffic::default());
    let bodiless = incoming.is_end_stream();
    let body = if bodiless {
        traffic.request_done.set(true);
        RequestBody::Empty
    } else {
        RequestBody::Stream(ClientBody::new(
            incoming,
            listener.max_body_bytes,
            Some(listener.body_timeout),
            traffic.clone(),
        ))
    };
    let limits = check_limits(
        &head,
        listener.max_header_bytes,
        (!bodiless).then_some(listener.max_body_bytes),
    );
    // gRPC needs HTTP/2: HTTP/1.1 requests pay one comparison.
    let grpc = head.version == http::Version::HTTP_2 && error::is_grpc(&head.headers);
    // Boxed: the context moves from the driver to the response body's log observer, and a
    // pointer moves cheaper than the whole context (several times per request).
    let mut ctx = Box::new(RequestCtx {
        original_uri: head.uri.clone(),
        head,
        body,
        request_id,
        client_addr: conn.client_addr,
        client_ip: conn.client_ip.clone(),
        tls: conn.tls,
        listener: conn.listener,
        snapshot: snapshot.clone(),
        route: None,
        started: Instant::now(),
        vars: http::Extensions::new(),
        upstream: Default::default(),
        upstream_override: None,
        upstream_target: None,
        upstream_in_flight: None,
        traffic,
        worker: worker.clone(),
        status: 0,
        response_headers: http::HeaderMap::new(),
        grpc,
    });
    let answer = match limits {
        Ok(()) => run(&mut ctx, &snapshot, &worker).await,
        Err(e) => Err(e),
    };
    // The driver's own reference moves to the response body's log observer.
    respond(ctx, snapshot, &conn.state, answer)
}

/// Limits checked before any phase: header size (431) and, for a request with a body,
/// its declared size (413).
fn check_limits(
    head: &http::request::Parts,
    max_header: usize,
    max_body: Option<u64>,
) -> Result<(), ProxyError> {
    let header_bytes: usize = head.method.as_str().len()
        + head.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + 12
        + head
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_bytes > max_header {
        return Err(ProxyError::client(
            Kind::HeaderTooLarge,
            format!("request headers are {header_bytes} bytes; the limit is {max_header}"),
        ));
    }
    let Some(max_body) = max_body else {
        return Ok(());
    };
    let declared = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::client(
            Kind::BodyTooLarge,
            format!("request body is larger than the limit of {max_body} bytes"),
        ));
    }
    Ok(())
}

fn request_id(headers: &http::HeaderMap, trust: bool, ids: &RequestIds) -> HeaderValue {
    if trust {
        if let Some(v) = headers.get(&X_REQUEST_ID) {
            if !v.is_empty() && v.len() <= 200 {
                return v.clone();
            }
        }
    }
    ids.generate()
}

/// Generated request ids (UUID v4 text), cut from one buffer per worker: an id costs no
/// allocation of its own, and its copies (upstream head, response, log) share the buffer's
/// reference count instead of each id first being copied into a shared allocation.
#[derive(Default)]
pub struct RequestIds(std::cell::RefCell<bytes::BytesMut>);

impl RequestIds {
    /// Ids per buffer: one allocation per this many requests.
    const PER_BUFFER: usize = 64;

    fn generate(&self) -> HeaderValue {
        const LEN: usize = uuid::fmt::Hyphenated::LENGTH;
        let mut buf = self.0.borrow_mut();
        if buf.capacity() - buf.len() < LEN {
            *buf = bytes::BytesMut::with_capacity(LEN * Self::PER_BUFFER);
        }
        let mut text = [0u8; LEN];
        buf.extend_from_slice(
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut text)
                .as_bytes(),
        );
        HeaderValue::from_maybe_shared(buf.split().freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

async fn run(
    ctx: &mut RequestCtx,
    snapshot: &Arc<Snapshot>,
    worker: &Rc<Worker>,
) -> Result<Answer, ProxyError> {
    let host = if snapshot.router.needs_host() {
        ctx.host()
    } else {
        String::new()
    };
    let route_idx = snapshot
        .router
        .find(&router::RequestKey {
            host: &host,
            path: ctx.head.uri.path(),
            method: &ctx.head.method,
            headers: &ctx.head.headers,
        })
        .ok_or_else(|| ProxyError::client(Kind::NoRoute, "no route matches this request"))?;
    ctx.route = Some(route_idx);
    let route = &snapshot.routes[route_idx];
    if let Some(m) = &route.metadata {
        ctx.vars.insert(m.clone());
    }
    let chain = &route.chain;
    for phase in [Phase::Rewrite, Phase::Access, Phase::Content] {
        if phase == Phase::Content {
            if let Some(queue) = &route.queue {
                // A queued route: the durable append and its acknowledgement are the content.
                return sluicegate_queue::http::enqueue(ctx, &snapshot.queues, queue)
                    .await
                    .map(Answer::Local);
            }
        }
        if !chain.has(phase) {
            continue;
        }
        for entry in &chain.entries {
            if !entry.plugin.phases().contains(phase) {
                continue;
            }
            let step = match phase {
                Phase::Rewrite => entry.plugin.rewrite(ctx),
                Phase::Access => entry.plugin.access(ctx),
                _ => entry.plugin.content(ctx),
            };
            match step
                .run()
                .await
                .map_err(|e| plugin_failed(ctx, entry.plugin.name(), phase, e))?
            {
                Flow::Continue => {}
                Flow::Respond(r) => return Ok(Answer::Local(r)),
            }
        }
        if phase == Phase::Content {
            // Dynamic content scripts answer only the hosts they match: other requests of
            // a route with an upstream are proxied, those of a route without one get 404.
            if chain.entries.iter().any(|e| e.plugin.name() == "code") {
                if route.upstream.is_some()
                    || route.cluster_header.is_some()
                    || ctx.upstream_override.is_some()
                {
                    break;
                }
                return Err(ProxyError::client(
                    Kind::NoRoute,
                    "no script answers requests for this host",
                ));
            }
            return Err(ProxyError::new(
                error::Source::Plugin,
                Kind::Internal,
                "the content phase produced no response",
            ));
        }
    }
    // A plugin's or script's choice is one of this snapshot's upstreams, handed over as
    // the upstream layer's own type.
    let mut chosen = ctx
        .upstream_override
        .take()
        .and_then(|u| u.downcast::<Upstream>().ok());
    if let (None, Some(header)) = (&chosen, &route.cluster_header) {
        chosen = Some(by_cluster_header(ctx, snapshot, header)?);
    }
    let upstream = chosen.as_ref().or(route.upstream.as_ref()).ok_or_else(|| {
        ProxyError::new(
            error::Source::Internal,
            Kind::NoUpstream,
            "route has no upstream",
        )
    })?;
    let keep_headers = chain.reads_request_late;
    // Inline, not boxed: the HTTP/1.1 loop awaits this future in place, so its size costs
    // nothing per request, while boxing it copied the forwarding state into the heap on
    // every request. (HTTP/2 requests pay one copy of the whole future into hyper's box.)
    let fwd = forward::forward(
        ctx,
        snapshot,
        worker,
        upstream,
        route.rewrite.as_ref(),
        keep_headers,
    )
    .await?;
    Ok(Answer::Upstream(fwd, upstream.read_timeout))
}

/// The upstream named by the request's `cluster_header` (Envoy's semantics: a missing
/// header or an unknown name is answered 503).
fn by_cluster_header(
    ctx: &RequestCtx,
    snapshot: &Snapshot,
    header: &http::HeaderName,
) -> Result<Arc<Upstream>, ProxyError> {
    let name = ctx
        .head
        .headers
        .get(header)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    match name.as_deref().and_then(|n| snapshot.upstreams.get(n)) {
        Some(u) => Ok(u.clone()),
        None => Err(ProxyError::new(
            error::Source::Internal,
            Kind::Unavailable,
            match name {
                Some(n) => format!("no upstream named `{n}` (from the `{header}` header)"),
                None => format!("no `{header}` header names the upstream"),
            },
        )),
    }
}

fn plugin_failed(ctx: &RequestCtx, plugin: &str, phase: Phase, e: PluginError) -> ProxyError {
    if let PluginError::Script {
        script,
        message,
        over_budget,
    } = &e
    {
        let kind = if *over_budget { "budget" } else { "error" };
        ctx.worker.script_failed(script, kind);
        tracing::error!(request_id = ctx.request_id_str(), script = %script, phase = phase.as_str(), error = %message, "Script failed.");
    } else if !matches!(e, PluginError::Body(_)) {
        tracing::error!(request_id = ctx.request_id_str(), plugin, phase = phase.as_str(), error = %e, "Plugin failed.");
    }
    e.into()
}

/// The chain whose filter and log phases apply to this request.
fn chain_of(snapshot: &Snapshot, route: Option<usize>) -> &Chain {
    route
        .and_then(|i| snapshot.routes.get(i))
        .map(|r| &r.chain)
        .unwrap_or(&snapshot.global)
}

fn respond(
    mut ctx: Box<RequestCtx>,
    snapshot: Arc<Snapshot>,
    conn_state: &Arc<ConnState>,
    answer: Result<Answer, ProxyError>,
) -> Box<Response<ResponseBody>> {
    let mut raw = None;
    let (mut head, source) = match answer {
        Ok(Answer::Local(r)) => local_parts(r),
        Ok(Answer::Upstream(fwd, read_timeout)) => {
            let (head, mut body) = fwd.response.into_parts();
            raw = body.take_raw_headers();
            (
                head,
                ResponseSource::Upstream(UpstreamResponseBody::new(body, read_timeout)),
            )
        }
        Err(e) => error_parts(&ctx, &e),
    };
    let chain = chain_of(&snapshot, ctx.route);
    // An HTTP/1.1 upstream's header lines go to an HTTP/1.1 client as they came when
    // nothing reads or changes them; otherwise they become the head's header map.
    if let Some(mut r) = raw.take_if(|r| !passes_raw(&ctx, chain, r)) {
        if let Err(msg) = r.merge_into(&mut head.headers) {
            return bad_upstream_head(ctx, snapshot, conn_state, msg, source);
        }
    }
    if !ctx.response_headers.is_empty() {
        // Headers set before the response replace the upstream's of the same name: lines
        // that are still raw are dropped, and the new values go out after them. The
        // body's framing is the response's own: a length or coding set before it would
        // describe a body that is not the one sent.
        for name in FRAMING {
            ctx.response_headers.remove(name);
        }
        if let Some(r) = raw.as_mut() {
            for name in ctx.response_headers.keys() {
                r.remove(name);
            }
        }
        sluicegate_core::context::replace_headers(
            std::mem::take(&mut ctx.response_headers),
            &mut head.headers,
        );
    }
    if chain.has(Phase::HeaderFilter) {
        if let Err(e) = header_filter(&mut ctx, chain, &mut head, raw.as_mut()) {
            // The upstream body (if any) is dropped: its connection closes, not reused.
            let (h, s) = error_parts(&ctx, &e);
            head = h;
            drop(source);
            return finish(ctx, snapshot, conn_state, head, s, None);
        }
    }
    // A filter made the status one without a body: its framing lines must not pass raw.
    if sluicegate_http1::status_without_body(head.status) {
        if let Some(mut r) = raw.take() {
            if let Err(msg) = r.merge_into(&mut head.headers) {
                return bad_upstream_head(ctx, snapshot, conn_state, msg, source);
            }
        }
    }
    finish(ctx, snapshot, conn_state, head, source, raw)
}

/// A 502 for an upstream head whose lines cannot become a header map; the upstream body
/// is dropped (its connection closes).
fn bad_upstream_head(
    ctx: Box<RequestCtx>,
    snapshot: Arc<Snapshot>,
    conn_state: &Arc<ConnState>,
    msg: String,
    source: ResponseSource,
) -> Box<Response<ResponseBody>> {
    drop(source);
    let (h, s) = error_parts(&ctx, &ProxyError::upstream(Kind::UpstreamProtocol, msg));
    finish(ctx, snapshot, conn_state, h, s, None)
}

/// The headers that frame a body, which headers set before the response never replace.
const FRAMING: [http::HeaderName; 3] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
];

/// Whether an upstream's header block may go to the client without a header map: the
/// client speaks HTTP/1.x and no filter reads the whole map. Headers set before the
/// response (`ngx.header` in access, `rate_limit`) replace the raw lines of their names.
fn passes_raw(ctx: &RequestCtx, chain: &Chain, raw: &RawHeaders) -> bool {
    raw.passthrough()
        && ctx.head.version != http::Version::HTTP_2
        && (!chain.has(Phase::HeaderFilter) || chain.raw_header_filters)
        && !chain.has(Phase::BodyFilter)
}

fn finish(
    mut ctx: Box<RequestCtx>,
    snapshot: Arc<Snapshot>,
    conn_state: &Arc<ConnState>,
    mut head: ResponseHead,
    source: ResponseSource,
    mut raw: Option<RawHeaders>,
) -> Box<Response<ResponseBody>> {
    match raw.as_mut() {
        // Written with the upstream's lines: the head's map then stays empty, unallocated.
        Some(r) => {
            r.set_request_id(ctx.request_id.clone());
            // A filter's own `X-Request-Id` gives way, as it does in the map below.
            head.headers.remove(&X_REQUEST_ID);
        }
        None => {
            head.headers
                .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        }
    }
    // The client's protocol version, whatever the upstream spoke.
    head.version = ctx.head.version;
    if !matches!(source, ResponseSource::Upstream(_)) {
        // Local bodies are complete: hop-by-hop framing comes from hyper.
        head.headers.remove(http::header::TRANSFER_ENCODING);
    } else {
        sluicegate_http1::hop::strip_hop_by_hop(
            &mut head.headers,
            head.status == http::StatusCode::SWITCHING_PROTOCOLS,
        );
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(up) = ctx.head.headers.get(http::header::UPGRADE).cloned() {
                head.headers.entry(http::header::UPGRADE).or_insert(up);
            }
            // The tunnel's bytes are not request heads: no header or idle timeout from now on.
            conn_state.set(ConnPhase::Upgraded);
        }
    }
    let chain = chain_of(&snapshot, ctx.route);
    let filters =
        chain.has(Phase::BodyFilter) && chain.entries.iter().any(|e| e.plugin.filters_body(&ctx));
    if filters {
        head.headers.remove(http::header::CONTENT_LENGTH);
    }
    ctx.status = head.status.as_u16();
    let grpc = ctx.grpc;
    let observer = LogObserver {
        snapshot,
        conn_state: conn_state.clone(),
        filters,
        // A Trailers-Only answer (or the gateway's own gRPC error) has it in the headers.
        grpc_status: if grpc {
            grpc_status(&head.headers)
        } else {
            None
        },
        ctx: Some(ctx),
    };
    Box::new(Response::from_parts(
        head,
        ResponseBody::new(source, Some(Box::new(observer)))
            .grpc(grpc)
            .with_raw_headers(raw),
    ))
}

fn local_parts(r: LocalResponse) -> (ResponseHead, ResponseSource) {
    let mut resp = Response::new(());
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
    let (head, ()) = resp.into_parts();
    (head, ResponseSource::Full(Some(r.body)))
}

fn error_parts(ctx: &RequestCtx, e: &ProxyError) -> (ResponseHead, ResponseSource) {
    if e.kind != Kind::NoRoute && e.origin != error::Source::Client {
        tracing::warn!(request_id = ctx.request_id_str(), route = ctx.route_name(), status = e.status().as_u16(), error = %e, "Request failed.");
    }
    if ctx.grpc {
        // Trailers-only: no body at all, so no `content-length: 0` either.
        let (head, _) = local_parts(error::grpc_error_response(e));
        return (head, ResponseSource::Full(None));
    }
    local_parts(error_response(e, &ctx.request_id))
}

/// Runs the header filters, on the raw upstream lines when they are kept.
fn header_filter(
    ctx: &mut RequestCtx,
    chain: &Chain,
    head: &mut ResponseHead,
    mut raw: Option<&mut RawHeaders>,
) -> Result<(), ProxyError> {
    for entry in &chain.entries {
        if entry.plugin.phases().contains(Phase::HeaderFilter) {
            let done = match raw.as_deref_mut() {
                Some(r) => entry.plugin.header_filter_raw(ctx, head, r),
                None => entry.plugin.header_filter(ctx, head),
            };
            done.map_err(|e| plugin_failed(ctx, entry.plugin.name(), Phase::HeaderFilter, e))?;
        }
    }
    Ok(())
}

/// Runs body filters per chunk and the log phase at the end.
struct LogObserver {
    ctx: Option<Box<RequestCtx>>,
    /// The request's snapshot, as the driver's own type (the context's is a narrow view).
    snapshot: Arc<Snapshot>,
    /// The client connection's phase, set back to idle when the request is done.
    conn_state: Arc<ConnState>,
    filters: bool,
    /// The `grpc-status` a gRPC call ended with, for the access log.
    grpc_status: Option<u16>,
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl BodyObserver for LogObserver {
    fn filters(&self) -> bool {
        self.filters
    }

    fn on_chunk(&mut self, chunk: &mut Bytes, eof: bool) -> Result<(), BoxError> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Ok(());
        };
        let chain = chain_of(&self.snapshot, ctx.route);
        for entry in &chain.entries {
            if entry.plugin.phases().contains(Phase::BodyFilter) {
                if let Err(e) = entry.plugin.body_filter(ctx, chunk, eof) {
                    let err = plugin_failed(ctx, entry.plugin.name(), Phase::BodyFilter, e);
                    return Err(Box::new(err));
                }
            }
        }
        Ok(())
    }

    fn on_grpc_trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(status) = grpc_status(trailers) {
            self.grpc_status = Some(status);
        }
    }

    fn finish(&mut self, outcome: BodyOutcome, bytes_out: u64) {
        let Some(ctx) = self.ctx.take() else { return };
        ctx.traffic.bytes_out.set(bytes_out);
        log_phase(&ctx, &self.snapshot, outcome, self.grpc_status);
        self.conn_state.set(ConnPhase::Idle);
        self.conn_state.end();
    }
}

fn log_phase(
    ctx: &RequestCtx,
    snapshot: &Snapshot,
    outcome: BodyOutcome,
    grpc_status: Option<u16>,
) {
    let now = Instant::now();
    let took = now.saturating_duration_since(ctx.started);
    let chain = chain_of(snapshot, ctx.route);
    if chain.has(Phase::Log) {
        for entry in &chain.entries {
            if entry.plugin.phases().contains(Phase::Log) {
                entry.plugin.log(ctx);
            }
        }
    }
    let metrics = ctx
        .route
        .and_then(|i| snapshot.routes.get(i))
        .map(|r| &r.metrics)
        .unwrap_or(&snapshot.unmatched);
    metrics.record(ctx.status, took);
    if outcome == BodyOutcome::UpstreamFailed {
        let ending = if ctx.grpc {
            "the gRPC call ended with status UNAVAILABLE"
        } else {
            "client connection closed"
        };
        tracing::warn!(
            request_id = ctx.request_id_str(),
            route = ctx.route_name(),
            upstream = ctx.upstream.target.as_deref().unwrap_or("-"),
            "Response body failed mid-stream; {ending}."
        );
        if let Some(u) = ctx
            .route
            .and_then(|i| snapshot.routes.get(i))
            .and_then(|r| r.upstream.as_ref())
        {
            u.metrics.error("body");
        }
    }
    if snapshot.access_log.enabled() {
        snapshot.access_log.write(&AccessRecord {
            // Wall-clock start, derived from the monotonic reading above: no second clock
            // read (a system call on some virtual machines).
            time: sluicegate_core::clock::wall_at(now) - took,
            request_id: ctx.request_id_str(),
            client: ctx.client_addr,
            method: ctx.head.method.as_str(),
            path: ctx.original_uri.path(),
            route: ctx.route_name(),
            upstream: ctx.upstream.target.as_deref(),
            status: ctx.status,
            bytes_in: ctx.traffic.bytes_in.get(),
            bytes_out: ctx.traffic.bytes_out.get(),
            duration: took,
            upstream_duration: ctx.upstream.duration,
            aborted: outcome != BodyOutcome::Complete,
            grpc_status,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_uuid_request_ids_unless_trusted() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("client-id"));
        let ids = RequestIds::default();
        assert_eq!(request_id(&h, true, &ids), "client-id");
        let generated = request_id(&h, false, &ids);
        assert_eq!(generated.len(), 36);
        assert!(uuid::Uuid::parse_str(generated.to_str().unwrap()).is_ok());
        // Many ids from the shared buffers stay distinct and whole.
        let all: Vec<HeaderValue> = (0..RequestIds::PER_BUFFER * 3)
            .map(|_| ids.generate())
            .collect();
        let distinct: std::collections::HashSet<&[u8]> =
            all.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), all.len());
        assert!(all
            .iter()
            .all(|id| uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok()));
    }

    #[test]
    fn rejects_large_headers_and_declared_bodies() {
        let req = Request::builder()
            .uri("/")
            .header("x-big", "a".repeat(2000))
            .body(())
            .unwrap();
        let (head, ()) = req.into_parts();
        assert_eq!(
            check_limits(&head, 1024, Some(10)).unwrap_err().kind,
            Kind::HeaderTooLarge
        );
        let req = Request::builder()
            .uri("/")
            .header("content-length", "11")
            .body(())
            .unwrap();
        let (head, ()) = req.into_parts();
        assert_eq!(
            check_limits(&head, 1024, Some(10)).unwrap_err().kind,
            Kind::BodyTooLarge
        );
        // A request without a body is not held to its declared length.
        assert!(check_limits(&head, 1024, None).is_ok());
    }
}
