//! The byte format of one queued request inside a queue record (the payload the backend
//! stores). The format is versioned and length-prefixed so it can evolve, and [`decode`]
//! never panics: every length is checked against the bytes that are actually there, and
//! any inconsistency is a [`RecordError`].
//!
//! Layout (all integers little-endian):
//!
//! | size | field |
//! |-----:|-------|
//! | 2 | magic `SQ` |
//! | 1 | version = 1 |
//! | 1 | flags (reserved, 0) |
//! | 4 + n | method |
//! | 4 + n | request target (path and query, origin form) |
//! | 4 + n | request id (may be empty) |
//! | 4 | header count `h` |
//! | h × (4 + n, 4 + n) | header name, header value |
//! | 4 + n | body |
//!
//! Nothing may follow the body. The body is sliced out of the payload without a copy.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

const MAGIC: [u8; 2] = *b"SQ";
/// The version [`encode`] writes.
pub const VERSION: u8 = 1;
/// A method longer than this is not a method a client can send (hyper's own limit is far
/// lower); the bound keeps a corrupt length from looking plausible.
const MAX_METHOD_LEN: usize = 64;
/// More headers than hyper accepts on a request (the workers allow 512); see above.
const MAX_HEADERS: usize = 4096;

/// A request as the queue stores and delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRequest {
    /// Method.
    pub method: Method,
    /// Path and query, origin form (`/hooks/slack?x=1`). The route's `rewrite` is applied
    /// at delivery time, not here.
    pub target: String,
    /// Headers to send (hop-by-hop headers are removed at delivery).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The request id of the request that enqueued it (sent upstream as `X-Request-Id`).
    pub request_id: String,
}

impl QueuedRequest {
    /// A request with no headers, body or request id.
    pub fn new(method: Method, target: impl Into<String>) -> Self {
        QueuedRequest {
            method,
            target: target.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            request_id: String::new(),
        }
    }

    /// A request from loosely typed parts (what a script passes): the method name, a
    /// target starting with `/`, header pairs (repeated names are kept), and the body.
    pub fn from_parts<N, V>(
        method: &str,
        target: &str,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl Into<Bytes>,
    ) -> Result<Self, RecordError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| RecordError::Invalid("method"))?;
        if !target.starts_with('/') || target.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(RecordError::Invalid("target"));
        }
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            let name = HeaderName::from_bytes(n.as_ref().as_bytes())
                .map_err(|_| RecordError::Invalid("header name"))?;
            let value = HeaderValue::from_str(v.as_ref())
                .map_err(|_| RecordError::Invalid("header value"))?;
            map.append(name, value);
        }
        Ok(QueuedRequest {
            method,
            target: target.to_string(),
            headers: map,
            body: body.into(),
            request_id: String::new(),
        })
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The query part of the target, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// Why a payload is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The payload does not start with the record magic.
    #[error("not a queued request (bad magic)")]
    BadMagic,
    /// Written by a newer version of the gateway.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    /// A length points past the end of the payload.
    #[error("record truncated while reading {0}")]
    Truncated(&'static str),
    /// A field holds a value that cannot be used.
    #[error("invalid {0} in record")]
    Invalid(&'static str),
    /// Bytes follow the body.
    #[error("{0} unexpected bytes after the body")]
    Trailing(usize),
}

/// The exact size of `req` once encoded.
pub fn encoded_len(req: &QueuedRequest) -> usize {
    let headers: usize = req
        .headers
        .iter()
        .map(|(n, v)| 8 + n.as_str().len() + v.len())
        .sum();
    4 + 4 * 4
        + req.method.as_str().len()
        + req.target.len()
        + req.request_id.len()
        + 4
        + headers
        + req.body.len()
}

/// Serializes `req` into a payload.
pub fn encode(req: &QueuedRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(req));
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    put(&mut out, req.method.as_str().as_bytes());
    put(&mut out, req.target.as_bytes());
    put(&mut out, req.request_id.as_bytes());
    out.extend_from_slice(&(req.headers.len() as u32).to_le_bytes());
    for (name, value) in &req.headers {
        put(&mut out, name.as_str().as_bytes());
        put(&mut out, value.as_bytes());
    }
    put(&mut out, &req.body);
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths fit: the backend refuses payloads of 4 GiB and more long before this.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Parses a payload written by [`encode`].
pub fn decode(payload: Bytes) -> Result<QueuedRequest, RecordError> {
    let mut r = Reader {
        buf: &payload,
        pos: 0,
    };
    if r.take(2, "magic")? != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = r.take(1, "version")?[0];
    if version != VERSION {
        return Err(RecordError::UnsupportedVersion(version));
    }
    r.take(1, "flags")?;
    let method = r.field("method")?;
    if method.len() > MAX_METHOD_LEN {
        return Err(RecordError::Invalid("method"));
    }
    let method = Method::from_bytes(method).map_err(|_| RecordError::Invalid("method"))?;
    let target = text(r.field("target")?, "target")?;
    if !target.starts_with('/') {
        return Err(RecordError::Invalid("target"));
    }
    let request_id = text(r.field("request id")?, "request id")?;
    let count = r.u32("header count")? as usize;
    if count > MAX_HEADERS {
        return Err(RecordError::Invalid("header count"));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name = HeaderName::from_bytes(r.field("header name")?)
            .map_err(|_| RecordError::Invalid("header name"))?;
        let value = HeaderValue::from_bytes(r.field("header value")?)
            .map_err(|_| RecordError::Invalid("header value"))?;
        headers.append(name, value);
    }
    let len = r.u32("body length")? as usize;
    let start = r.pos;
    r.take(len, "body")?;
    let rest = payload.len() - r.pos;
    if rest != 0 {
        return Err(RecordError::Trailing(rest));
    }
    Ok(QueuedRequest {
        method,
        target,
        headers,
        body: payload.slice(start..start + len),
        request_id,
    })
}

fn text(bytes: &[u8], what: &'static str) -> Result<String, RecordError> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| RecordError::Invalid(what))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(RecordError::Truncated(what))?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or(RecordError::Truncated(what))?;
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn field(&mut self, what: &'static str) -> Result<&'a [u8], RecordError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample() -> QueuedRequest {
        let mut req = QueuedRequest::new(Method::POST, "/hooks/slack?team=T1");
        req.headers
            .insert("content-type", HeaderValue::from_static("application/json"));
        req.headers.append("x-multi", HeaderValue::from_static("a"));
        req.headers.append("x-multi", HeaderValue::from_static("b"));
        req.body = Bytes::from_static(b"{\"text\":\"hi\"}");
        req.request_id = "3f1c".into();
        req
    }

    #[test]
    fn a_request_survives_encoding_unchanged() {
        let req = sample();
        let bytes = encode(&req);
        assert_eq!(bytes.len(), encoded_len(&req));
        let back = decode(Bytes::from(bytes)).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.path(), "/hooks/slack");
        assert_eq!(back.query(), Some("team=T1"));
        assert_eq!(back.headers.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn builds_requests_from_script_parts_and_rejects_bad_ones() {
        let r = QueuedRequest::from_parts("post", "/a?b=c", [("X-A", "1"), ("x-a", "2")], "body")
            .unwrap();
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&r.body[..], b"body");
        let none: [(&str, &str); 0] = [];
        assert_eq!(
            QueuedRequest::from_parts("GET", "nope", none, "").unwrap_err(),
            RecordError::Invalid("target")
        );
        assert_eq!(
            QueuedRequest::from_parts("G T", "/", none, "").unwrap_err(),
            RecordError::Invalid("method")
        );
        assert_eq!(
            QueuedRequest::from_parts("GET", "/", [("bad name", "x")], "").unwrap_err(),
            RecordError::Invalid("header name")
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(
                decode(Bytes::copy_from_slice(&bytes[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn flipped_bytes_and_garbage_never_panic() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = decode(Bytes::from(b));
            }
        }
        // A deterministic pseudo-random sweep of arbitrary payloads.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            if len > 4 {
                b[0] = b'S';
                b[1] = b'Q';
                b[2] = VERSION;
            }
            let _ = decode(Bytes::from(b));
        }
    }

    #[test]
    fn rejects_other_versions_and_trailing_bytes() {
        let mut bytes = encode(&sample());
        bytes[2] = 9;
        assert_eq!(
            decode(Bytes::from(bytes)),
            Err(RecordError::UnsupportedVersion(9))
        );
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert_eq!(decode(Bytes::from(bytes)), Err(RecordError::Trailing(1)));
        assert_eq!(
            decode(Bytes::from_static(b"XX\x01\x00")),
            Err(RecordError::BadMagic)
        );
    }
}
