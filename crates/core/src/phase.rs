//! The plugin contract: the [`Phase`]s of a request, what a phase decides ([`Flow`],
//! [`Step`]), the [`Plugin`] trait every built-in (and every Lua script) implements, and
//! the helpers plugin factories share to read their configuration.
//!
//! A plugin instance is built once per configuration version from its validated config and
//! shared by all workers (`Send + Sync`); per-request state lives in the
//! [`RequestCtx`]. Phases that may wait (rewrite, access, content) return a [`Step`] so
//! that synchronous plugins cost no allocation; the filter and log phases are synchronous,
//! as in OpenResty, where they cannot yield either.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use sluicegate_http1::raw::RawHeaders;

use crate::context::{RequestCtx, ResponseHead};
use crate::diag::{Diags, Path};
use crate::yaml::{Node, NodeKind};

/// The phases a request goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Change the request before access checks (URI, headers).
    Rewrite,
    /// Allow or reject the request (auth, IP lists, signatures).
    Access,
    /// Produce the response instead of an upstream.
    Content,
    /// Change the response status and headers.
    HeaderFilter,
    /// Change response body chunks.
    BodyFilter,
    /// Observe the finished request; cannot fail or respond.
    Log,
}

impl Phase {
    /// Every phase, in execution order.
    pub const ALL: [Phase; 6] = [
        Phase::Rewrite,
        Phase::Access,
        Phase::Content,
        Phase::HeaderFilter,
        Phase::BodyFilter,
        Phase::Log,
    ];

    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Rewrite => "rewrite",
            Phase::Access => "access",
            Phase::Content => "content",
            Phase::HeaderFilter => "header_filter",
            Phase::BodyFilter => "body_filter",
            Phase::Log => "log",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of phases, so the driver skips plugins that do nothing in a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseSet(u8);

impl PhaseSet {
    /// The set holding exactly `phases`.
    pub fn of(phases: &[Phase]) -> Self {
        PhaseSet(phases.iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// Whether `phase` is in the set.
    pub fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }

    /// The union of two sets.
    pub fn union(self, other: PhaseSet) -> PhaseSet {
        PhaseSet(self.0 | other.0)
    }
}

/// What a phase decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin / phase.
    Continue,
    /// Stop here and answer with this response (header_filter and log still run).
    Respond(LocalResponse),
}

/// A response produced by the gateway itself.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers to send.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl LocalResponse {
    /// A response with a JSON body `{"error": <code>, "message": <message>}`. Plugins use it
    /// for their rejections; the driver adds the `X-Request-Id` header to every response.
    pub fn json_error(status: StatusCode, code: &str, message: &str) -> Self {
        let body = serde_json::json!({ "error": code, "message": message });
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        LocalResponse {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Why a plugin failed (as opposed to deciding to reject a request, which is a
/// [`Flow::Respond`]). The driver turns it into a 500 through `proxy::error`.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A Lua script raised an error or went over its budget.
    #[error("script {script} failed: {message}")]
    Script {
        /// Script name.
        script: String,
        /// The error, with the line when known.
        message: String,
        /// Whether the CPU or memory budget was exceeded.
        over_budget: bool,
    },
    /// The request body could not be read (client went away, too large, too slow).
    #[error("request body: {0}")]
    Body(#[from] crate::error::ProxyError),
    /// Anything else a plugin could not do.
    #[error("{plugin}: {message}")]
    Failed {
        /// Plugin name.
        plugin: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// The result of a phase that may wait: ready now, or a future to await.
pub enum Step<'a> {
    /// Finished synchronously.
    Ready(Result<Flow, PluginError>),
    /// Finishes when the future does.
    Wait(Pin<Box<dyn Future<Output = Result<Flow, PluginError>> + 'a>>),
}

impl Step<'_> {
    /// A step that continues.
    pub fn next() -> Self {
        Step::Ready(Ok(Flow::Continue))
    }

    /// Resolves the step.
    pub async fn run(self) -> Result<Flow, PluginError> {
        match self {
            Step::Ready(r) => r,
            Step::Wait(f) => f.await,
        }
    }
}

/// A plugin instance: one entry of a route's or the global plugin chain.
///
/// Every method has a no-op default; `phases` must list the ones a plugin implements so the
/// driver can skip the others (and so `body_filter` can stream without buffering when no
/// plugin needs it).
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's type name (`headers`, `key_auth`, `lua`...).
    fn name(&self) -> &'static str;

    /// The phases this plugin acts in.
    fn phases(&self) -> PhaseSet;

    /// Whether this plugin may answer requests itself, so a route needs no upstream.
    fn answers(&self) -> bool {
        self.phases().contains(Phase::Content)
    }

    /// Rewrite phase.
    fn rewrite<'a>(&'a self, _ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::next()
    }

    /// Access phase.
    fn access<'a>(&'a self, _ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::next()
    }

    /// Content phase: must return `Flow::Respond` to answer the request.
    fn content<'a>(&'a self, _ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::next()
    }

    /// Header filter: change the response head before it is sent.
    fn header_filter(
        &self,
        _ctx: &mut RequestCtx,
        _resp: &mut ResponseHead,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Whether its header filter can run on an upstream response whose header lines are
    /// still raw ([`Plugin::header_filter_raw`]): it only removes, replaces or appends
    /// headers by name and never reads the upstream's values. When every header filter of
    /// a chain can, a plain proxied response keeps the raw pass-through (see
    /// [`sluicegate_http1::raw`]).
    fn filters_raw_headers(&self) -> bool {
        false
    }

    /// Header filter on a response whose upstream lines are in `raw` and whose
    /// `resp.headers` holds only what the gateway adds. Called instead of
    /// [`Plugin::header_filter`], and only for plugins that say
    /// [`Plugin::filters_raw_headers`].
    fn header_filter_raw(
        &self,
        _ctx: &mut RequestCtx,
        _resp: &mut ResponseHead,
        _raw: &mut RawHeaders,
    ) -> Result<(), PluginError> {
        Err(PluginError::Failed {
            plugin: self.name(),
            message: "this plugin cannot filter raw response headers".into(),
        })
    }

    /// Body filter: change one chunk of the response body (`eof` on the last call).
    fn body_filter(
        &self,
        _ctx: &mut RequestCtx,
        _chunk: &mut Bytes,
        _eof: bool,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Log phase: observe the finished request.
    fn log(&self, _ctx: &RequestCtx) {}

    /// Whether its header_filter, body_filter or log phase reads the request's headers or
    /// URI (which are otherwise moved into the upstream request, not copied). Plugins that
    /// only look at the response say no.
    fn reads_request_late(&self) -> bool {
        true
    }

    /// Upstream names the plugin may send requests to, each with the configuration path
    /// that names it, so that loading the configuration checks they exist.
    fn upstream_refs(&self) -> Vec<(Path, String)> {
        Vec::new()
    }

    /// Whether the body filter has work for this request, asked once when the response
    /// head is final. A plugin whose body filter depends on the request (dynamic scripts)
    /// says no when it has none, so the response keeps its `Content-Length` and streams
    /// without the filter pass.
    fn filters_body(&self, _ctx: &RequestCtx) -> bool {
        self.phases().contains(Phase::BodyFilter)
    }
}

/// Deserializes a plugin's `config` node (an absent config is an empty mapping), recording
/// a failure in `diags`.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    node: &Node,
    path: &Path,
    diags: &mut Diags,
) -> Option<T> {
    let empty;
    let node = if matches!(node.kind, NodeKind::Null) {
        empty = Node {
            kind: NodeKind::Map(Vec::new()),
            line: node.line,
        };
        &empty
    } else {
        node
    };
    match crate::de::from_node(node, path) {
        Ok(v) => Some(v),
        Err(d) => {
            diags.0.push(d);
            None
        }
    }
}

/// Parses a header name and value from configuration, recording problems at `path`.
pub fn header_pair(
    name: &str,
    value: &str,
    path: &Path,
    diags: &mut Diags,
) -> Option<(http::HeaderName, http::HeaderValue)> {
    let n = match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) => n,
        Err(_) => {
            diags.push(path, format!("invalid header name `{name}`"));
            return None;
        }
    };
    match http::HeaderValue::from_str(value) {
        Ok(v) => Some((n, v)),
        Err(_) => {
            diags.push(path, format!("invalid value for header `{name}`"));
            None
        }
    }
}
