//! A lean HTTP/1.1 client for upstream connections. The request task writes the request
//! and reads the response itself: no connection task, no channel, no extra wake-up per
//! request (hyper's client dispatch cost about a third of the proxy's user-space CPU).
//!
//! Invariants:
//! - a connection goes back to the pool only after its response body was read to the end
//!   with a framing that allows reuse (`Content-Length` or chunked, keep-alive);
//! - a response body that cannot be framed (no length, not chunked) is read to EOF and the
//!   connection is closed;
//! - bytes are never re-interpreted: a malformed head or chunk header is an error, never a
//!   guess;
//! - a request on a reused connection that fails before any response byte arrived hands its
//!   body back when it can be sent again (nothing of it was consumed, or it is in memory),
//!   so the caller can retry once on a fresh connection (the keep-alive close race).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::pool::{PoolHandle, UpstreamBody, UpstreamRequest, UpstreamResponse, UpstreamStream};
use crate::forwarded::ForwardedHeaders;
use sluicegate_core::body::{BoxError, UpstreamRequestBody};
use sluicegate_core::error::{Kind, ProxyError, Source};
use sluicegate_http1::raw::{RawBuilder, RawHeaders};
use sluicegate_http1::{decode, push_chunk, Decoded, Framing, READ_CHUNK};

/// Largest response head accepted from an upstream.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields accepted per response (more is an error; hyper's default is 100).
const MAX_HEADERS: usize = 128;
/// Request bodies up to this size are copied after the head and sent in one write.
const COALESCE_BODY_BYTES: usize = 16 * 1024;

/// An idle or in-use HTTP/1.1 connection.
pub struct H1Conn {
    io: UpstreamStream,
    buf: BytesMut,
    head: Vec<u8>,
    /// Whether it came from the pool.
    pub reused: bool,
}

/// Why a send failed, and whether it may be retried on a fresh connection.
pub struct SendFailure {
    /// The error to report when not retried.
    pub error: ProxyError,
    /// The request, given back when sending it again is safe.
    pub retry: Option<UpstreamRequest>,
}

impl H1Conn {
    /// Wraps a freshly connected stream.
    pub fn new(io: UpstreamStream) -> Self {
        H1Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            head: Vec::with_capacity(1024),
            reused: false,
        }
    }

    /// Whether an idle connection still looks usable: the peer has not closed it or sent
    /// anything unexpected. Costs no system call unless the reactor saw the socket become
    /// readable.
    pub fn is_idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Sends `req` and reads the response head. The body is read through the returned
    /// response's [`H1Body`], which gives the connection back to `pool` when it is done.
    pub async fn send(
        mut self: Box<Self>,
        mut req: UpstreamRequest,
        added: Option<&ForwardedHeaders>,
        pool: PoolHandle,
    ) -> Result<UpstreamResponse, SendFailure> {
        let method = req.method().clone();
        let chunked = encode_head(&mut self.head, &req, added);
        // The head stays boxed (for a retry); only the body moves out.
        let mut body = Some(std::mem::replace(
            req.body_mut(),
            UpstreamRequestBody::Full(None),
        ));
        if let Err(e) = self.write_request(&mut body, chunked).await {
            // An upstream may answer before reading the whole body (a 413 or 401 to an
            // upload) and close; writing then fails, but its answer is already in our
            // receive buffer and is what the client should get. Only after the peer closed
            // (reset, broken pipe): then the read ends at once, it cannot wait.
            if e.origin == Source::Upstream && e.kind == Kind::UpstreamProtocol {
                if let Ok((head, framing)) = self.read_head(&method).await {
                    return Ok(self.into_response(head, framing, false, pool));
                }
            }
            let retry = self
                .reused
                .then(|| body.take())
                .flatten()
                .map(|b| with_body(req, b));
            return Err(SendFailure { error: e, retry });
        }
        match self.read_head(&method).await {
            Ok((head, framing)) => {
                let keep_alive = framing.reusable() && head.keep_alive;
                Ok(self.into_response(head, framing, keep_alive, pool))
            }
            Err(HeadError {
                error,
                nothing_read,
            }) => {
                // A reused connection that closed without a byte of answer most likely lost
                // the keep-alive race; idempotent requests whose body we still hold go again.
                let retry = (self.reused && nothing_read && idempotent(&method))
                    .then(|| body.take())
                    .flatten()
                    .map(|b| with_body(req, b));
                Err(SendFailure { error, retry })
            }
        }
    }

    /// The response whose body this connection goes on to read.
    fn into_response(
        self: Box<Self>,
        head: RawHead,
        framing: Framing,
        keep_alive: bool,
        pool: PoolHandle,
    ) -> UpstreamResponse {
        let mut resp = Box::new(Response::new(UpstreamBody::H1(H1Body {
            conn: Some(self),
            framing,
            keep_alive,
            pool: Some(pool),
            headers: Some(head.headers),
        })));
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        resp
    }

    /// Writes the head and the body. On failure, `body` still holds the body if none of it
    /// was consumed.
    async fn write_request(
        &mut self,
        body: &mut Option<UpstreamRequestBody>,
        chunked: bool,
    ) -> Result<(), ProxyError> {
        let write_err = |e: io::Error| {
            let kind = if e.kind() == io::ErrorKind::TimedOut {
                Kind::UpstreamTimeout
            } else {
                Kind::UpstreamProtocol
            };
            ProxyError::upstream(
                kind,
                format!("writing the request to the upstream failed: {e}"),
            )
        };
        let small_full = match body.as_ref() {
            Some(UpstreamRequestBody::Full(Some(b))) => b.len() <= COALESCE_BODY_BYTES,
            Some(UpstreamRequestBody::Full(None)) => true,
            _ => false,
        };
        if small_full {
            if let Some(UpstreamRequestBody::Full(Some(b))) = body.as_ref() {
                if chunked && !b.is_empty() {
                    push_chunk(&mut self.head, b);
                    self.head.extend_from_slice(b"0\r\n\r\n");
                } else {
                    self.head.extend_from_slice(b);
                }
            }
            self.io.write_all(&self.head).await.map_err(write_err)?;
            return self.io.flush().await.map_err(write_err);
        }
        self.io.write_all(&self.head).await.map_err(write_err)?;
        let Some(mut b) = body.take() else {
            return self.io.flush().await.map_err(write_err);
        };
        let mut sent_any = false;
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await;
            match frame {
                None => break,
                Some(Err(e)) => {
                    // The client's side failed (too large, too slow, gone): the driver reads
                    // the reason from the request's traffic record.
                    return Err(ProxyError::client(
                        Kind::ClientClosed,
                        format!("request body: {e}"),
                    ));
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    sent_any = true;
                    if chunked {
                        self.head.clear();
                        push_chunk(&mut self.head, &data);
                        self.io.write_all(&self.head).await.map_err(write_err)?;
                    } else {
                        self.io.write_all(&data).await.map_err(write_err)?;
                    }
                }
            }
        }
        let _ = sent_any;
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await.map_err(write_err)?;
        }
        self.io.flush().await.map_err(write_err)
    }

    async fn read_head(&mut self, method: &Method) -> Result<(RawHead, Framing), HeadError> {
        let mut nothing_read = self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, method) {
                    Ok(Some(head)) => {
                        if head.0.status.is_informational()
                            && head.0.status != StatusCode::SWITCHING_PROTOCOLS
                        {
                            continue; // 100 Continue and friends: the real answer follows.
                        }
                        return Ok(head);
                    }
                    Ok(None) => {
                        if self.buf.len() > MAX_HEAD_BYTES {
                            return Err(HeadError::new(
                                "the upstream's response head is too large",
                                false,
                            ));
                        }
                    }
                    Err(msg) => return Err(HeadError::new(&msg, false)),
                }
            }
            sluicegate_http1::make_read_room(&mut self.buf);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(HeadError::new(
                        "the upstream closed the connection before answering",
                        nothing_read,
                    ))
                }
                Ok(_) => nothing_read = false,
                Err(e) => {
                    let timed_out = e.kind() == io::ErrorKind::TimedOut;
                    let mut err = HeadError::new(
                        &format!("reading the upstream's response failed: {e}"),
                        nothing_read,
                    );
                    if timed_out {
                        err.error.kind = Kind::UpstreamTimeout;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Takes the stream and any bytes already read (for a `101 Switching Protocols`).
    pub fn into_upgraded(self) -> (UpstreamStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

struct HeadError {
    error: ProxyError,
    nothing_read: bool,
}

impl HeadError {
    fn new(msg: &str, nothing_read: bool) -> Self {
        HeadError {
            error: ProxyError::upstream(Kind::UpstreamProtocol, msg.to_string()),
            nothing_read,
        }
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// `req` with its body put back (for sending it again).
fn with_body(mut req: UpstreamRequest, body: UpstreamRequestBody) -> UpstreamRequest {
    *req.body_mut() = body;
    req
}

/// Writes the request line and headers into `out`, with the gateway's forwarding headers
/// `added` in place of the request's own; returns whether the body must be sent chunked
/// (a streamed body without `Content-Length`). `Expect` is never sent: the gateway
/// answered it to the client.
fn encode_head(
    out: &mut Vec<u8>,
    req: &Request<UpstreamRequestBody>,
    added: Option<&ForwardedHeaders>,
) -> bool {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in req.headers() {
        if name == header::EXPECT || (added.is_some() && ForwardedHeaders::replaces(name)) {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(added) = added {
        added.write(req.headers(), out);
    }
    let body = req.body();
    let chunked = !has_length && !body.is_end_stream();
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_length && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

struct RawHead {
    status: StatusCode,
    version: Version,
    headers: RawHeaders,
    keep_alive: bool,
}

/// Parses a complete response head from the front of `buf` (consuming it), or `None` when
/// more bytes are needed. The header block stays raw (see [`RawHeaders`]).
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<(RawHead, Framing)>, String> {
    // Left uninitialised: the parser writes the slots it fills (initialising all 128 cost
    // ~450 instructions per response).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "the upstream sent more than {MAX_HEADERS} header fields"
            ))
        }
        Err(e) => return Err(format!("the upstream sent an invalid response head: {e}")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| "the upstream sent an invalid status code".to_string())?;
    let http10 = resp.version == Some(0);
    let mut fields = RawBuilder::new(buf, resp.headers.len());
    for h in resp.headers.iter() {
        fields.field(h.name.as_bytes(), h.value)?;
    }
    let parsed = fields.finish(buf.split_to(len).freeze(), method, status, http10);
    Ok(Some((
        RawHead {
            status,
            version: if http10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            headers: parsed.headers,
            keep_alive: parsed.keep_alive,
        },
        parsed.framing,
    )))
}

/// The response-head parser for the fuzz targets (`fuzz/`); not part of the crate's API.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;
    use http::{Method, StatusCode, Version};
    use sluicegate_http1::raw::RawHeaders;
    use sluicegate_http1::Framing;

    /// What [`parse_head`] found: status, version, header block, keep-alive, framing.
    pub type Head = (StatusCode, Version, RawHeaders, bool, Framing);

    /// Parses a response head at the front of `buf` as the client does (consuming it).
    pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, String> {
        Ok(super::parse_head(buf, method)?
            .map(|(h, framing)| (h.status, h.version, h.headers, h.keep_alive, framing)))
    }
}

/// A response body read straight from the upstream connection. It carries the response's
/// header block until the proxy takes it: the response's own header map stays empty.
pub struct H1Body {
    conn: Option<Box<H1Conn>>,
    framing: Framing,
    keep_alive: bool,
    pool: Option<PoolHandle>,
    headers: Option<RawHeaders>,
}

impl H1Body {
    /// The response's header block (once).
    pub fn take_headers(&mut self) -> Option<RawHeaders> {
        self.headers.take()
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if self.keep_alive {
                pool.release(conn);
            }
        }
    }

    fn broken(&mut self, msg: &str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(msg.to_string().into())))
    }

    /// Takes the connection after a `101 Switching Protocols`.
    pub fn take_upgraded(&mut self) -> Option<Box<H1Conn>> {
        self.pool = None;
        self.conn.take()
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode(&mut this.framing, &mut conn.buf) {
                Err(msg) => return this.broken(msg),
                Ok(Decoded::Data(data)) => {
                    // Finish eagerly so the connection is back in the pool before the
                    // client has even received the last bytes.
                    if this.framing == Framing::Length(0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
            }
            sluicegate_http1::make_read_room(&mut conn.buf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.broken(&format!("upstream read failed: {e}")),
                Poll::Ready(Ok(0)) => {
                    if this.framing == Framing::Close {
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    return this.broken("the upstream closed the connection mid-body");
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A body that ended without being polled to `None` (hyper stops at is_end_stream)
        // still returns its connection.
        if matches!(self.framing, Framing::Length(0)) {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_http1::ChunkState;

    fn head(text: &str, method: Method) -> Result<Option<(RawHead, Framing)>, String> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, &method)
    }

    #[test]
    fn frames_by_length_chunked_or_close() {
        let (_, f) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Length(5));
        let (_, f) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(f, Framing::Chunked(ChunkState::Size));
        let (_, f) = head("HTTP/1.0 200 OK\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Close);
        let (_, f) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Length(0));
        assert!(head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            Method::GET
        )
        .is_err());
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n", Method::GET).is_err(),
            "a signed length is not a length"
        );
        assert!(head("HTTP/1.1 200 OK\r\ncontent", Method::GET)
            .unwrap()
            .is_none());
    }

    #[test]
    fn takes_up_to_the_field_limit_and_refuses_one_more() {
        let fields = |n: usize| -> String { (0..n).map(|i| format!("x-{i}: {i}\r\n")).collect() };
        let text = format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
            fields(MAX_HEADERS - 1)
        );
        let (h, f) = head(&text, Method::GET).unwrap().unwrap();
        assert_eq!(f, Framing::Length(0));
        assert_eq!(h.headers.to_map().unwrap().len(), MAX_HEADERS);
        let text = format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
            fields(MAX_HEADERS)
        );
        let e = head(&text, Method::GET).err().unwrap();
        assert!(e.contains("more than 128 header fields"), "{e}");
    }

    #[test]
    fn writes_the_forwarding_headers_in_place_of_the_clients_and_never_expect() {
        let req = Request::get("/a?b")
            .header("host", "h")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-request-id", "client")
            .header("expect", "100-continue")
            .header("x-forwarded-for", "198.51.100.7")
            .body(UpstreamRequestBody::Full(None))
            .unwrap();
        let added = crate::forwarded::ForwardedHeaders::new(
            header::HeaderValue::from_static("127.0.0.1"),
            false,
            Some(header::HeaderValue::from_static("h")),
            header::HeaderValue::from_static("id-1"),
        );
        let mut out = Vec::new();
        assert!(!encode_head(&mut out, &req, Some(&added)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b HTTP/1.1\r\nhost: h\r\n\
             x-forwarded-for: 203.0.113.9, 198.51.100.7, 127.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-request-id: id-1\r\n\r\n"
        );
    }

    #[test]
    fn encodes_streamed_bodies_without_length_as_chunked() {
        let req = Request::post("/x")
            .body(UpstreamRequestBody::Full(Some(Bytes::from_static(b"abc"))))
            .unwrap();
        let mut out = Vec::new();
        assert!(encode_head(&mut out, &req, None));
        let req = Request::post("/x")
            .header("content-length", "3")
            .body(UpstreamRequestBody::Full(Some(Bytes::from_static(b"abc"))))
            .unwrap();
        assert!(!encode_head(&mut out, &req, None));
        let req = Request::post("/x")
            .body(UpstreamRequestBody::Full(None))
            .unwrap();
        assert!(!encode_head(&mut out, &req, None));
        assert!(String::from_utf8_lossy(&out).contains("content-length: 0"));
    }
}
