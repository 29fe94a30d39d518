//! The one place where errors become HTTP responses. Every failure on the request path is a
//! [`ProxyError`] that says where it came from ([`Source`]) and what kind it is; only
//! [`ProxyError::status`] and [`error_response`] decide the status code and the JSON body
//! (`{"error", "message", "request_id"}`), so clients see one consistent shape.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::phase::{LocalResponse, PluginError};

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
    /// The client is over a rate limit: 429.
    RateLimited,
    /// No session: the user must log in (the body names the login URL): 401.
    LoginRequired,
    /// The identity provider could not be reached or answered with an error: 502.
    ProviderUnavailable,
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
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::LoginRequired => StatusCode::UNAUTHORIZED,
            Kind::ProviderUnavailable => StatusCode::BAD_GATEWAY,
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
            Kind::RateLimited => "rate_limited",
            Kind::LoginRequired => "login_required",
            Kind::ProviderUnavailable => "identity_provider_unavailable",
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

/// Whether `headers` describe a gRPC call: `content-type: application/grpc`, alone or with
/// a `+codec` or parameters (gRPC-Web's `application/grpc-web` is not: its clients read
/// HTTP statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(v: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// gRPC status codes the gateway answers with (the numbering of gRPC's `Code`).
mod grpc_code {
    pub const CANCELLED: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

impl ProxyError {
    /// The gRPC status a gRPC client gets: gRPC's HTTP-to-gRPC mapping (502, 503 →
    /// UNAVAILABLE, 404 → UNIMPLEMENTED, ...), made more precise where the gateway knows
    /// more than a status code says (a timeout is DEADLINE_EXCEEDED, a size limit
    /// RESOURCE_EXHAUSTED).
    pub fn grpc_status(&self) -> u8 {
        use grpc_code::*;
        match self.kind {
            Kind::NoRoute | Kind::NoUpstream => UNIMPLEMENTED,
            Kind::HeaderTooLarge | Kind::BodyTooLarge | Kind::RateLimited => RESOURCE_EXHAUSTED,
            Kind::ClientTimeout | Kind::UpstreamTimeout => DEADLINE_EXCEEDED,
            Kind::ClientClosed => CANCELLED,
            Kind::UpstreamConnect | Kind::UpstreamProtocol | Kind::Unavailable => UNAVAILABLE,
            Kind::BadRequest | Kind::PluginFailure | Kind::ScriptBudget | Kind::Internal => {
                INTERNAL
            }
            Kind::Unauthorized | Kind::LoginRequired => UNAUTHENTICATED,
            Kind::ProviderUnavailable => UNAVAILABLE,
            Kind::Forbidden => PERMISSION_DENIED,
            Kind::UnsupportedMediaType => INVALID_ARGUMENT,
            Kind::TokenMissing | Kind::TokenInvalid => UNAUTHENTICATED,
            // gRPC's HTTP mapping: 400 → INTERNAL; statuses it does not list → UNKNOWN.
            Kind::InvalidJson => INTERNAL,
            Kind::Misdirected => UNKNOWN,
        }
    }
}

/// Builds the gRPC form of the error response for a gRPC call: HTTP 200 with the status in
/// `grpc-status` / `grpc-message` and no body ("Trailers-Only"), as gRPC clients expect; a
/// JSON body with a 502 would reach them as an opaque protocol error. The JSON body's
/// `error` code travels as `sluicegate-error` metadata, the request id in `x-request-id`
/// as on every response.
pub fn grpc_error_response(err: &ProxyError) -> LocalResponse {
    let mut headers = grpc_trailers(err);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    LocalResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::new(),
    }
}

/// The status fields of a gRPC error: the trailers that end a gRPC response whose body
/// failed after its head was sent (the upstream reset or timed out mid-stream, a body
/// filter failed), so gRPC clients get a status they can act on instead of a reset stream;
/// and the headers of a Trailers-Only error response.
pub fn grpc_trailers(err: &ProxyError) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(err.grpc_status())),
    );
    if let Ok(v) = HeaderValue::from_bytes(&percent_encode(err.message.as_bytes())) {
        trailers.insert("grpc-message", v);
    }
    trailers.insert("sluicegate-error", HeaderValue::from_static(err.code()));
    trailers
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(text: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_grpc_content_types_only() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(is_grpc_content_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "",
        ] {
            assert!(!is_grpc_content_type(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn grpc_errors_are_trailers_only_with_a_status_and_an_encoded_message() {
        let err = ProxyError::upstream(Kind::UpstreamConnect, "target 10.0.0.1:80 refused: 100%");
        let resp = grpc_error_response(&err);
        assert_eq!(resp.status, StatusCode::OK);
        assert!(resp.body.is_empty());
        assert_eq!(resp.headers["grpc-status"], "14");
        assert_eq!(
            resp.headers["grpc-message"],
            "target 10.0.0.1:80 refused: 100%25"
        );
        assert_eq!(resp.headers["content-type"], "application/grpc");
        assert_eq!(resp.headers["sluicegate-error"], "upstream_unreachable");
        assert_eq!(percent_encode("é\n".as_bytes()), b"%C3%A9%0A");
    }

    #[test]
    fn timeouts_and_limits_get_precise_grpc_codes() {
        let code = |k| ProxyError::client(k, "x").grpc_status();
        assert_eq!(code(Kind::UpstreamTimeout), 4);
        assert_eq!(code(Kind::BodyTooLarge), 8);
        assert_eq!(code(Kind::NoRoute), 12);
        assert_eq!(code(Kind::ScriptBudget), 13);
        assert_eq!(code(Kind::Unavailable), 14);
    }

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
