//! The per-call request state API functions work on. A call moves the request head and
//! body out of the [`RequestCtx`] into a pooled [`ReqState`] (a few pointer-sized swaps, no
//! copies), the VM's API functions read and change it while the script runs, and the call
//! moves everything back. While a call is suspended (awaiting I/O), its state lives in the
//! call's future; while it runs, in the VM's `current` slot — so the functions always see the
//! request whose script is running, even with many requests in flight on one worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::Kind;
use sluicegate_core::context::{RequestBody, RequestCtx, ResponseHead, UpstreamRef};
use sluicegate_http1::raw::RawHeaders;

/// The `ngx.ctx` table of a request, kept in `RequestCtx::vars` between phases.
/// Dropping the last clone frees the table (the registry slot is released lazily by mlua).
#[derive(Clone)]
pub struct CtxKey(pub Arc<mlua::RegistryKey>);

/// What the script produced so far (rewrite, access, content).
#[derive(Debug, Default)]
pub struct Output {
    /// `ngx.status`.
    pub status: Option<StatusCode>,
    /// `ngx.header.*` writes.
    pub headers: HeaderMap,
    /// Whether `ngx.header` was written.
    pub headers_set: bool,
    /// `ngx.say`/`ngx.print` output.
    pub body: BytesMut,
    /// Whether the response head counts as sent (first output); `ngx.status` and
    /// `ngx.header` writes after it are ignored with an error log, as in OpenResty.
    pub sent: bool,
    /// `ngx.eof()` was called.
    pub eof: bool,
    /// `ngx.exit(code)` / `ngx.redirect` was called with this code.
    pub exit: Option<i64>,
}

/// Request facts copied at the start of a call.
#[derive(Debug, Clone)]
pub struct Info {
    /// Client address.
    pub client_addr: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Request id.
    pub request_id: HeaderValue,
    /// Monotonic start.
    pub started: Instant,
    /// Status sent (log phase).
    pub status: u16,
    /// Upstream target (log phase).
    pub upstream: Option<Arc<str>>,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Claims of the JWT the `jwt` plugin verified (`sluicegate.jwt.claims()`).
    pub jwt_claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The matched route's `metadata:` (Envoy scripts' `metadata()`).
    pub route_metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The request's protocol version.
    pub version: http::Version,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            client_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            request_id: HeaderValue::from_static("-"),
            started: Instant::now(),
            status: 0,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            jwt_claims: None,
            route_metadata: None,
            version: http::Version::HTTP_11,
        }
    }
}

/// Everything API functions may read or change during one call.
pub struct ReqState {
    /// The context of the call.
    pub kind: Kind,
    /// Request method, URI and headers (moved from the context).
    pub head: http::request::Parts,
    /// Request body (moved from the context).
    pub body: RequestBody,
    /// The response head in header_filter (moved) and body_filter/log (status only).
    pub resp: ResponseHead,
    /// In header_filter, the upstream's header lines while still raw: `resp.headers` then
    /// holds only what the gateway added; the first read merges them in
    /// ([`ReqState::response_headers`]).
    pub raw: Option<RawHeaders>,
    /// Body filter chunk (`ngx.arg[1]`).
    pub chunk: Bytes,
    /// Body filter end of stream (`ngx.arg[2]`).
    pub eof: bool,
    /// Output of output phases.
    pub out: Output,
    /// Facts about the request.
    pub info: Info,
    /// `ngx.ctx`, once used.
    pub ctx_key: Option<CtxKey>,
    /// Whether `ctx_key` was created by this call (and must be saved in the context).
    pub ctx_created: bool,
    /// Reading the request body failed (413, 408, client gone): the request ends with it.
    pub body_error: Option<sluicegate_core::error::ProxyError>,
    /// `sluicegate.upstream.set`: the upstream and the target to try first.
    pub upstream_choice: Option<(UpstreamRef, Option<Arc<str>>)>,
    /// `sluicegate.ratelimit.set_key`: the key a `rate_limit` plugin with `key: script`
    /// counts the request by.
    pub ratelimit_key: Option<String>,
    /// What the call opened and must not outlive it (cosockets): dropped, which closes
    /// them, when the call's state is reset at the end of its request phase or timer run.
    pub owned: Vec<Box<dyn std::any::Any>>,
    /// The mark of the objects an extension bound to this call (the Envoy filter's stream
    /// handle): they act only while it is the running call's. 0 for none; reset with the
    /// call.
    pub binding: u64,
}

fn empty_head() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn empty_response() -> ResponseHead {
    http::Response::new(()).into_parts().0
}

impl ReqState {
    /// The response headers for a read in a filter phase: raw upstream lines are merged
    /// into the map first.
    pub fn response_headers(&mut self) -> Result<&mut http::HeaderMap, String> {
        if let Some(raw) = self.raw.as_mut() {
            raw.merge_into(&mut self.resp.headers)?;
            self.raw = None;
        }
        Ok(&mut self.resp.headers)
    }

    /// Before a write of `name` in a filter phase: raw upstream lines of that name go (the
    /// write replaces or removes them all).
    pub fn replace_raw(&mut self, name: &http::HeaderName) {
        if let Some(raw) = self.raw.as_mut() {
            raw.remove(name);
        }
    }

    /// An idle state (pooled per VM).
    pub fn new() -> Self {
        ReqState {
            kind: Kind::Init,
            head: empty_head(),
            body: RequestBody::Empty,
            resp: empty_response(),
            raw: None,
            chunk: Bytes::new(),
            eof: false,
            out: Output::default(),
            info: Info::default(),
            ctx_key: None,
            ctx_created: false,
            body_error: None,
            upstream_choice: None,
            ratelimit_key: None,
            owned: Vec::new(),
            binding: 0,
        }
    }

    /// Takes the request out of `ctx` for a call of `kind`.
    pub fn enter(&mut self, kind: Kind, ctx: &mut RequestCtx) {
        self.kind = kind;
        std::mem::swap(&mut self.head, &mut ctx.head);
        std::mem::swap(&mut self.body, &mut ctx.body);
        std::mem::swap(&mut self.info.request_id, &mut ctx.request_id);
        self.copy_info(ctx);
    }

    /// Copies the request facts (and a copy of the head) from a context that cannot be
    /// changed (log phase).
    pub fn enter_readonly(&mut self, kind: Kind, ctx: &RequestCtx) {
        self.kind = kind;
        self.head = ctx.head.clone_head().into_parts().0;
        self.info.request_id.clone_from(&ctx.request_id);
        if let RequestBody::Buffered(b) = &ctx.body {
            self.body = RequestBody::Buffered(b.clone());
        }
        self.resp.status = StatusCode::from_u16(ctx.status).unwrap_or(StatusCode::OK);
        self.copy_info(ctx);
    }

    fn copy_info(&mut self, ctx: &RequestCtx) {
        self.info.client_addr = ctx.client_addr;
        self.info.tls = ctx.tls;
        self.info.started = ctx.started;
        self.info.status = ctx.status;
        if ctx.upstream.target.is_some() {
            self.info.upstream.clone_from(&ctx.upstream.target);
        }
        self.info.bytes_in = ctx.traffic.bytes_in.get();
        self.info.bytes_out = ctx.traffic.bytes_out.get();
        self.ctx_key = ctx.vars.get::<CtxKey>().cloned();
        self.ctx_created = false;
        self.info.jwt_claims = ctx
            .vars
            .get::<sluicegate_jwt::Claims>()
            .map(|c| c.0.clone());
        self.info.route_metadata = ctx
            .vars
            .get::<sluicegate_core::context::RouteMetadata>()
            .map(|m| m.0.clone());
        self.info.version = self.head.version;
    }

    /// Gives the request back to `ctx` and resets the state for reuse.
    pub fn leave(&mut self, ctx: &mut RequestCtx) {
        std::mem::swap(&mut self.head, &mut ctx.head);
        std::mem::swap(&mut self.body, &mut ctx.body);
        std::mem::swap(&mut self.info.request_id, &mut ctx.request_id);
        if self.ctx_created {
            if let Some(key) = self.ctx_key.take() {
                ctx.vars.insert(key);
            }
        }
        if let Some((upstream, target)) = self.upstream_choice.take() {
            ctx.upstream_override = Some(upstream);
            ctx.upstream_target = target;
        }
        if let Some(key) = self.ratelimit_key.take() {
            ctx.vars.insert(sluicegate_ratelimit::ScriptKey(key));
        }
        self.reset();
    }

    /// Clears per-call data (keeps allocations that are cheap to keep).
    pub fn reset(&mut self) {
        self.kind = Kind::Init;
        self.body = RequestBody::Empty;
        self.chunk = Bytes::new();
        self.eof = false;
        self.out.status = None;
        if self.out.headers_set {
            self.out.headers.clear();
        }
        self.out.headers_set = false;
        self.out.body.clear();
        self.out.sent = false;
        self.out.eof = false;
        self.out.exit = None;
        self.ctx_key = None;
        self.ctx_created = false;
        self.body_error = None;
        self.upstream_choice = None;
        self.ratelimit_key = None;
        self.info.upstream = None;
        self.info.jwt_claims = None;
        self.info.route_metadata = None;
        self.owned.clear();
        self.binding = 0;
    }

    /// Whether the call ended the request (exit with a final status, redirect, output).
    pub fn finished(&self) -> bool {
        self.out.sent || self.out.eof || self.out.exit.is_some_and(|c| c >= 200 || c == -1)
    }
}

impl Default for ReqState {
    fn default() -> Self {
        Self::new()
    }
}

/// `Parts` is not `Clone`; this copies what scripts can see.
trait CloneHead {
    fn clone_head(&self) -> http::Request<()>;
}

impl CloneHead for http::request::Parts {
    fn clone_head(&self) -> http::Request<()> {
        let mut req = http::Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}
