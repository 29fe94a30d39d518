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
    /// No bearer token in the request (RFC 6750: a challenge without an error code).
    TokenMissing,
    /// A bearer token that is malformed, badly signed, expired or otherwise unacceptable.
    TokenInvalid,
    /// The request reached a gateway that cannot serve it (claim routing found no upstream).
    Misdirected,
    /// A body that had to be JSON is not.
    InvalidJson,
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
            Kind::TokenMissing | Kind::TokenInvalid => StatusCode::UNAUTHORIZED,
            Kind::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Kind::InvalidJson => StatusCode::BAD_REQUEST,
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
            Kind::TokenMissing => "missing_token",
            Kind::TokenInvalid => "invalid_token",
            Kind::Misdirected => "misdirected_request",
            Kind::InvalidJson => "invalid_json",
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

/// Builds the 401 response for a bearer-token error (`TokenMissing` / `TokenInvalid`), with
/// the RFC 6750 challenge: `WWW-Authenticate: Bearer realm="..."`, plus
/// `error="invalid_token", error_description="..."` when a token was presented.
pub fn bearer_challenge(err: &ProxyError, realm: &str, request_id: &HeaderValue) -> LocalResponse {
    let mut resp = error_response(err, request_id);
    let mut challenge = format!("Bearer realm=\"{}\"", quoted(realm));
    if err.kind == Kind::TokenInvalid {
        challenge.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{}\"",
            quoted(&err.message)
        ));
    }
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers.insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Text safe inside an RFC 7230 quoted string: RFC 6750 limits `error_description` to
/// printable ASCII without `"` and `\\`, so anything else becomes a space.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => ' ',
        })
        .collect()
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

    #[test]
    fn bearer_errors_carry_an_rfc_6750_challenge() {
        let id = HeaderValue::from_static("abc");
        let missing = ProxyError::client(Kind::TokenMissing, "no bearer token");
        let resp = bearer_challenge(&missing, "api", &id);
        assert_eq!(resp.status, 401);
        assert_eq!(resp.headers["www-authenticate"], "Bearer realm=\"api\"");
        let invalid = ProxyError::client(Kind::TokenInvalid, "the token \"expired\"\n");
        let resp = bearer_challenge(&invalid, "api", &id);
        assert_eq!(
            resp.headers["www-authenticate"],
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token 'expired' \""
        );
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["error"], "invalid_token");
        assert_eq!(
            ProxyError::client(Kind::Misdirected, "x").status().as_u16(),
            421
        );
    }
}
