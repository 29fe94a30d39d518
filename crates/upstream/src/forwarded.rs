//! The `X-Forwarded-*` and `X-Request-Id` headers the gateway adds to every request it
//! forwards, written straight into an HTTP/1.1 upstream's head or put into an HTTP/2 map.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluicegate_core::context::X_REQUEST_ID;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers the gateway adds to every forwarded request (RFC 7239's de-facto forms).
/// They replace the client's same-named headers, except `X-Forwarded-For`, which is
/// appended to. An HTTP/1.1 upstream gets them written straight into the request head,
/// no header map involved ([`ForwardedHeaders::replaces`] tells the encoder what to skip);
/// an HTTP/2 upstream gets them in the map ([`ForwardedHeaders::apply`]).
pub struct ForwardedHeaders {
    client_ip: HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
}

impl ForwardedHeaders {
    /// The headers for a client at `client_ip`, over TLS or not, asking for `host`.
    pub fn new(
        client_ip: HeaderValue,
        tls: bool,
        host: Option<HeaderValue>,
        request_id: HeaderValue,
    ) -> Self {
        ForwardedHeaders {
            client_ip,
            proto: if tls { "https" } else { "http" },
            host,
            request_id,
        }
    }

    /// Whether a header of the request is replaced by these (or folded into them).
    pub fn replaces(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == X_REQUEST_ID
    }

    /// Appends them to an HTTP/1.1 head whose own lines skipped those [`Self::replaces`]
    /// names; `headers` supplies the earlier `X-Forwarded-For` hops.
    pub fn write(&self, headers: &HeaderMap, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        for (name, hop) in headers {
            if name == X_FORWARDED_FOR {
                out.extend_from_slice(hop.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.client_ip.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        if let Some(host) = &self.host {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Puts them into `headers` (for an HTTP/2 upstream).
    pub fn apply(self, headers: &mut HeaderMap) {
        append_forwarded_for(headers, &self.client_ip);
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(self.proto),
        );
        if let Some(h) = self.host {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        headers.insert(X_REQUEST_ID.clone(), self.request_id);
    }
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
