//! The per-request context that phases and plugins work on. It owns the request head, the
//! (possibly not yet read) request body, the request id, the configuration the request
//! started with, and what the log phase needs. It is created once per request by the
//! driver and dropped after the log phase.
//!
//! The configuration snapshot and the worker belong to the layers above; a plugin sees them
//! through the narrow views [`ConfigView`] and [`WorkerView`], which those layers implement.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::body::ClientBody;
use crate::error::ProxyError;

/// `X-Request-Id`: the request id on every request forwarded and every response sent.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An upstream of the running configuration, as the upstream layer's own type: plugins and
/// scripts pass it from [`ConfigView::upstream`] to [`RequestCtx::upstream_override`]
/// without looking inside; the proxy downcasts it.
pub type UpstreamRef = Arc<dyn Any + Send + Sync>;

/// A route's `metadata:` mapping, which Envoy filter scripts read through `metadata()`:
/// the driver puts it in a request's `vars` when the matched route has one.
#[derive(Debug, Clone)]
pub struct RouteMetadata(pub Arc<serde_json::Map<String, serde_json::Value>>);

/// The CPU and memory budget every script call of a request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// CPU time one phase call may use; awaiting I/O does not count.
    pub cpu_budget: Duration,
    /// Memory cap of each worker's script VM.
    pub memory_limit: usize,
}

/// The configuration snapshot a request started with, as plugins and scripts see it.
pub trait ConfigView: Send + Sync + 'static {
    /// The name of route `index`.
    fn route_name(&self, index: usize) -> Option<&str>;
    /// The upstream called `name`.
    fn upstream(&self, name: &str) -> Option<UpstreamRef>;
    /// The budget of script calls.
    fn script_limits(&self) -> ScriptLimits;
}

/// The worker serving a request, as plugins and scripts see it.
pub trait WorkerView: 'static {
    /// The worker's number, from 0.
    fn id(&self) -> usize;
    /// Whether the gateway is draining (shutting down).
    fn draining(&self) -> bool;
    /// Counts a failed script call (`kind`: `error` or `budget`).
    fn script_failed(&self, script: &str, kind: &'static str);
    /// A per-worker service of type `ty` (the script VM, the worker itself), if this worker
    /// has one; read it with `<dyn WorkerView>::service`.
    fn service_of(&self, ty: TypeId) -> Option<&dyn Any>;
}

impl dyn WorkerView {
    /// The per-worker service of type `T`, if this worker has one.
    pub fn service<T: 'static>(&self) -> Option<&T> {
        self.service_of(TypeId::of::<T>())
            .and_then(|s| s.downcast_ref::<T>())
    }
}

/// Who an authentication plugin identified the request as, kept in
/// [`RequestCtx::vars`]: `key_auth` names the consumer whose credential matched (or the
/// secret whose key did), `jwt` the consumer whose issuer signed the token (or the token's
/// `sub`). Plugins that act per client (`rate_limit`) read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer(pub Arc<str>);

/// The response status line and headers, as header filters see them.
pub type ResponseHead = http::response::Parts;

/// The request body as far as it has been read.
pub enum RequestBody {
    /// Not read yet: streams to the upstream as it arrives.
    Stream(ClientBody),
    /// Read whole (a plugin asked for it, or it was replaced).
    Buffered(Bytes),
    /// No body.
    Empty,
}

/// Counters a request's body wrappers update while bytes flow.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Request body bytes received from the client.
    pub bytes_in: Cell<u64>,
    /// Response body bytes sent to the client.
    pub bytes_out: Cell<u64>,
    /// Whether the request body has been received completely.
    pub request_done: Cell<bool>,
    /// Why the request body stopped early, if it did (drives 413 / 408 / 499).
    pub body_failure: Cell<Option<crate::error::Kind>>,
}

/// What happened on the way to the upstream, for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct UpstreamInfo {
    /// `host:port` of the target that served the request.
    pub target: Option<Arc<str>>,
    /// Time from the request's arrival to the upstream's response head.
    pub duration: Option<Duration>,
}

/// Everything about one request in flight.
pub struct RequestCtx {
    /// Method, URI, version and headers; plugins may change them before forwarding.
    pub head: http::request::Parts,
    /// The request body.
    pub body: RequestBody,
    /// The request id (generated, or the client's on trusting listeners).
    pub request_id: HeaderValue,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The client IP as a header value.
    pub client_ip: HeaderValue,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Index of the listener the request came in on.
    pub listener: usize,
    /// The configuration the request started with; kept to the end.
    pub snapshot: Arc<dyn ConfigView>,
    /// The matched route (index into `snapshot.routes`).
    pub route: Option<usize>,
    /// The URI as received, before any rewrite (for logs).
    pub original_uri: http::Uri,
    /// When the request head was received (monotonic).
    pub started: Instant,
    /// Typed per-request values plugins share between phases.
    pub vars: http::Extensions,
    /// Upstream details for the log.
    pub upstream: UpstreamInfo,
    /// The upstream chosen by a plugin or script (claim routing, `sluicegate.upstream.set`)
    /// instead of the route's own; `None` keeps the route's.
    pub upstream_override: Option<UpstreamRef>,
    /// The target to try first (`ip:port` or `host:port` of one of the upstream's targets),
    /// chosen by a script (`sluicegate.upstream.set(name, target)`); retries go elsewhere.
    pub upstream_target: Option<Arc<str>>,
    /// Holds the chosen target's in-flight slot (the upstream layer's guard) until the
    /// context is dropped after the log phase: least connections, circuit breakers. Boxed
    /// only for upstreams that count requests in flight.
    pub upstream_in_flight: Option<Box<dyn Any>>,
    /// Byte counters.
    pub traffic: Rc<Traffic>,
    /// The worker serving the request.
    pub worker: Rc<dyn WorkerView>,
    /// The status sent to the client (set once the response head is final).
    pub status: u16,
    /// Response headers set before there is a response (`ngx.header` in rewrite/access):
    /// the driver puts them on whatever response goes out, replacing same-named headers.
    pub response_headers: http::HeaderMap,
    /// Whether this is a gRPC call (HTTP/2, `content-type: application/grpc[+...]`): the
    /// gateway's own errors are then gRPC statuses (see `error::grpc_error_response`).
    pub grpc: bool,
}

impl RequestCtx {
    /// The request id as text.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// The matched route's name, or `-`.
    pub fn route_name(&self) -> &str {
        self.route
            .and_then(|i| self.snapshot.route_name(i))
            .unwrap_or("-")
    }

    /// The request host: the `Host` header (or HTTP/2 authority), lower-cased, without port.
    pub fn host(&self) -> String {
        request_host(&self.head)
    }

    /// Reads the whole request body (once; later calls return the buffered copy).
    /// Fails with 413 over the listener's limit and 408 when the client stalls.
    pub async fn read_body(&mut self) -> Result<Bytes, ProxyError> {
        match std::mem::replace(&mut self.body, RequestBody::Empty) {
            RequestBody::Buffered(b) => {
                self.body = RequestBody::Buffered(b.clone());
                Ok(b)
            }
            RequestBody::Empty => Ok(Bytes::new()),
            RequestBody::Stream(stream) => {
                let bytes = stream.collect().await?;
                self.body = RequestBody::Buffered(bytes.clone());
                Ok(bytes)
            }
        }
    }

    /// Replaces the request body; `Content-Length` is fixed when the request is forwarded.
    pub fn set_body(&mut self, body: Bytes) {
        self.body = RequestBody::Buffered(body);
    }
}

/// Moves every header of `from` into `to`, each name replacing `to`'s values of that name
/// (all of `from`'s values for a name are kept).
pub fn replace_headers(from: http::HeaderMap, to: &mut http::HeaderMap) {
    if to.is_empty() {
        // Nothing to replace (an upstream head whose lines stay raw): the map moves whole.
        *to = from;
        return;
    }
    let mut last: Option<http::HeaderName> = None;
    for (name, value) in from {
        if let Some(n) = name {
            to.remove(&n);
            last = Some(n);
        }
        if let Some(n) = &last {
            to.append(n.clone(), value);
        }
    }
}

/// The host a request is for, lower-cased, without port.
pub fn request_host(head: &http::request::Parts) -> String {
    let raw = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw).to_ascii_lowercase()
}

/// The host a request is for as sent (with port): `Host`, else the URI authority.
pub fn request_host_raw(uri: &http::Uri, headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .map(str::to_string)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports_from_hosts_including_ipv6() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
