//! The one place where errors become HTTP responses. Every failure on the request path is a
//! [`ProxyError`] that says where it came from ([`Source`]) and what kind it is; only
//! [`ProxyError::status`] and [`error_response`] decide the status code and the JSON body
//! (`{"error", "message", "request_id"}`), so clients see one consistent shape.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::plugins::{LocalResponse, PluginError};

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client (bad request, too large, too slow).
    Client,
    /// The upstream (refused, timed out, reset).
    Upstream,
    /// A built-in plugin.
    Plugin,
    /// A Lua script.
    Script,
    /// The gateway itself.
    Internal,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No route matches the request.
    NoRoute,
    /// The request is malformed.
    BadRequest,
    /// Request line plus headers over the listener's limit.
    HeaderTooLarge,
    /// Body over the listener's limit.
    BodyTooLarge,
    /// The client was too slow sending headers or body.
    ClientTimeout,
    /// The client went away.
    ClientClosed,
    /// The route has no upstream and no plugin answered.
    NoUpstream,
    /// Could not connect to any target.
    UpstreamConnect,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream broke the protocol or reset the connection.
    UpstreamProtocol,
    /// A plugin or script failed.
    PluginFailure,
    /// A script went over its CPU or memory budget.
    ScriptBudget,
    /// Temporarily unable to take the request.
    Unavailable,
    /// A bug or an unexpected state.
    Internal,
    /// The request lacks valid credentials (key, signature, token): 401.
    Unauthorized,
    /// The client may not use this route (IP lists): 403.
    Forbidden,
    /// The request body is not of a type the route accepts: 415.
    UnsupportedMediaType,
}

/// An error on the request path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    /// Where it came from.
    pub origin: Source,
    /// What kind it is.
    pub kind: Kind,
    /// A human-readable explanation (safe to show to the client: no secrets, no internals
    /// beyond names).
    pub message: String,
}

impl ProxyError {
    /// A new error.
    pub fn new(origin: Source, kind: Kind, message: impl Into<String>) -> Self {
        ProxyError {
            origin,
            kind,
            message: message.into(),
        }
    }

    /// A client-side error.
    pub fn client(kind: Kind, message: impl Into<String>) -> Self {
        Self::new(Source::Client, kind, message)
    }

    /// An upstream-side error.
    pub fn upstream(kind: Kind, message: impl Into<String>) -> Self {
        Self::new(Source::Upstream, kind, message)
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            // nginx's 499; the client never sees it, the log does.
            Kind::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Kind::NoUpstream | Kind::UpstreamConnect | Kind::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::PluginFailure | Kind::ScriptBudget | Kind::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The short machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self.kind {
            Kind::NoRoute => "no_route",
            Kind::BadRequest => "bad_request",
            Kind::HeaderTooLarge => "header_too_large",
            Kind::BodyTooLarge => "body_too_large",
            Kind::ClientTimeout => "client_timeout",
            Kind::ClientClosed => "client_closed",
            Kind::NoUpstream => "no_upstream",
            Kind::UpstreamConnect => "upstream_unreachable",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::UpstreamProtocol => "upstream_error",
            Kind::PluginFailure => "plugin_error",
            Kind::ScriptBudget => "script_over_budget",
            Kind::Unavailable => "unavailable",
            Kind::Internal => "internal_error",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::UnsupportedMediaType => "unsupported_media_type",
        }
    }
}

impl From<PluginError> for ProxyError {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::Body(inner) => inner,
            PluginError::Script {
                script,
                over_budget: true,
                ..
            } => ProxyError::new(
                Source::Script,
                Kind::ScriptBudget,
                format!("script `{script}` exceeded its budget"),
            ),
            PluginError::Script { script, .. } => ProxyError::new(
                Source::Script,
                Kind::PluginFailure,
                format!("script `{script}` failed"),
            ),
            PluginError::Failed { plugin, .. } => ProxyError::new(
                Source::Plugin,
                Kind::PluginFailure,
                format!("plugin `{plugin}` failed"),
            ),
        }
    }
}

/// Builds the JSON error response for `err`, carrying the request id.
pub fn error_response(err: &ProxyError, request_id: &HeaderValue) -> LocalResponse {
    let body = serde_json::json!({
        "error": err.code(),
        "message": err.message,
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if err.kind == Kind::Unavailable {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    LocalResponse {
        status: err.status(),
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// The response to a request a plugin refuses (401 without a valid credential, 403 for a
/// refused address, 400 for a body it cannot read): the usual JSON error shape, with the
/// request id. `message` is shown to the client: it names what is wrong, never a secret.
pub fn rejection(
    kind: Kind,
    message: impl Into<String>,
    request_id: &HeaderValue,
) -> LocalResponse {
    error_response(&ProxyError::client(kind, message), request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_kind_to_one_status() {
        let cases = [
            (Kind::NoRoute, 404),
            (Kind::HeaderTooLarge, 431),
            (Kind::BodyTooLarge, 413),
            (Kind::ClientTimeout, 408),
            (Kind::UpstreamConnect, 502),
            (Kind::UpstreamTimeout, 504),
            (Kind::ScriptBudget, 500),
            (Kind::Unauthorized, 401),
            (Kind::Forbidden, 403),
        ];
        for (kind, status) in cases {
            assert_eq!(ProxyError::client(kind, "x").status().as_u16(), status);
        }
    }

    #[test]
    fn error_bodies_carry_the_request_id() {
        let err = ProxyError::upstream(Kind::UpstreamTimeout, "upstream `app` timed out");
        let resp = error_response(&err, &HeaderValue::from_static("abc"));
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["error"], "upstream_timeout");
    }
}
