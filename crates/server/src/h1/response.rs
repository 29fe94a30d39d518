//! Writing a response (RFC 9112 §4–§7): the head, the body framed by `Content-Length`,
//! chunked, or (HTTP/1.0 without a length) by closing the connection.
//!
//! A head and the body that is ready with it go out in one write: small bodies are copied
//! behind the head, larger pieces are written straight from their buffers. Before waiting
//! for more body, whatever is pending is written, so a slow or streaming body never holds
//! back what is already there.
//!
//! Invariant: the bytes sent always match the framing announced. A body that fails, or
//! that turns out shorter or longer than its `Content-Length`, ends the connection instead
//! of leaving the client to misread what follows.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::{Body, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::Conn;
use sluicegate_core::clock::coarse_now;
use sluicegate_core::deadline::Deadline;
use sluicegate_http1::raw::RawHeaders;
use sluicegate_proxy::body::ResponseBody;

/// Pieces up to this size are copied behind what is pending and written with it.
const COALESCE_BYTES: usize = 16 * 1024;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// No body may be sent (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, unknown length).
    Close,
}

/// What the request asked of the response.
pub(super) struct Ask {
    /// The request's version.
    pub version: Version,
    /// A HEAD request.
    pub head: bool,
    /// Whether the connection may stay open after this response, as far as the request
    /// and the worker (draining or not) are concerned.
    pub keep_alive: bool,
    /// How long a write may wait for a client that does not read.
    pub send_timeout: Duration,
}

/// How writing a response ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// Complete; the connection may carry another request.
    KeepAlive,
    /// Complete or not, the connection must close.
    Close,
    /// A `101` head was written: the stream now belongs to the upgrade.
    Switched,
}

/// Writes `resp`. `out` is the connection's reusable head buffer.
pub(super) async fn write<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &Rc<RefCell<Conn<I>>>,
    out: &mut Vec<u8>,
    mut resp: Box<Response<ResponseBody>>,
    ask: &Ask,
) -> Written {
    // Worked on in its box: taking it apart would copy it out.
    let status = resp.status();
    let raw = resp.body_mut().take_raw_headers();
    let size = resp.body().size_hint();
    let wire = wire(status, ask, resp.headers_mut(), raw.as_ref(), &size);
    let keep_alive = ask.keep_alive
        && wire != Wire::Close
        && status != StatusCode::SWITCHING_PROTOCOLS
        // A response that says `Connection: close` (set by a plugin or script) closes.
        && (resp.headers().is_empty()
            || sluicegate_http1::keep_alive(Version::HTTP_11, resp.headers()));
    encode_head(
        out,
        status,
        resp.headers_mut(),
        raw.as_ref(),
        wire,
        keep_alive,
        ask.version,
    );
    drop(raw);
    let stall = ask.send_timeout;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return match flush(conn, out, stall).await {
            Ok(()) => Written::Switched,
            Err(_) => Written::Close,
        };
    }
    match write_body(conn, out, resp.body_mut(), wire, stall).await {
        Ok(()) if keep_alive => Written::KeepAlive,
        Ok(()) => Written::Close,
        Err(e) => {
            tracing::debug!(error = %e, "Response to the client ended early; closing.");
            Written::Close
        }
    }
}

/// Decides the framing and fixes the framing headers to match it. Raw upstream lines
/// (only ever those of a response with a body, and a valid length if any) go out as
/// they are: their `Content-Length` is the declared one.
fn wire(
    status: StatusCode,
    ask: &Ask,
    headers: &mut HeaderMap,
    raw: Option<&RawHeaders>,
    size: &SizeHint,
) -> Wire {
    headers.remove(header::TRANSFER_ENCODING);
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        return Wire::None;
    }
    let declared = match raw.and_then(RawHeaders::content_length) {
        Some(n) => {
            headers.remove(header::CONTENT_LENGTH);
            Some(Some(n))
        }
        None => headers
            .get(header::CONTENT_LENGTH)
            .map(|v| sluicegate_http1::parse_length(v.as_bytes())),
    };
    if ask.head || status == StatusCode::NOT_MODIFIED {
        // The headers describe the body a GET would have had: keep a declared length, and
        // state the length of a body the gateway made itself.
        if declared.is_none() && status != StatusCode::NOT_MODIFIED {
            if let Some(n) = size.exact().filter(|n| *n > 0) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        return Wire::None;
    }
    match declared {
        Some(Some(n)) => return Wire::Length(n),
        Some(None) => {
            headers.remove(header::CONTENT_LENGTH);
        }
        None => {}
    }
    if let Some(n) = size.exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Wire::Length(n);
    }
    if ask.version == Version::HTTP_11 {
        Wire::Chunked
    } else {
        Wire::Close
    }
}

fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &mut HeaderMap,
    raw: Option<&RawHeaders>,
    wire: Wire,
    keep_alive: bool,
    version: Version,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // An upgrade keeps its `Connection: upgrade`; otherwise the connection header is
        // the server's to set.
        headers.remove(header::CONNECTION);
    }
    if let Some(raw) = raw {
        raw.write_passed(out);
    }
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) && !raw.is_some_and(RawHeaders::has_date) {
        out.extend_from_slice(b"date: ");
        sluicegate_core::clock::write_http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if wire == Wire::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends the body behind the head already in `out`.
async fn write_body<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &Rc<RefCell<Conn<I>>>,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
    wire: Wire,
    stall: Duration,
) -> io::Result<()> {
    let mut sent: u64 = 0;
    loop {
        // Whatever is ready now joins the pending bytes; only a wait flushes them first.
        let next = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)))
            .await
        {
            Poll::Ready(next) => next,
            Poll::Pending => {
                flush(conn, out, stall).await?;
                std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let data = match next {
            None => break,
            Some(Err(e)) => {
                // Already logged with the request id (log phase); cut the response short.
                let _ = flush(conn, out, stall).await;
                return Err(io::Error::other(e.to_string()));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // Trailers: HTTP/1.1 clients get none from a proxy.
            },
        };
        if data.is_empty() {
            continue;
        }
        match wire {
            Wire::None => continue,
            Wire::Length(n) => {
                let left = n - sent;
                if data.len() as u64 > left {
                    let fits = data.slice(..left as usize);
                    send(conn, out, &fits, stall).await?;
                    let _ = flush(conn, out, stall).await;
                    return Err(io::Error::other(
                        "the body is longer than its Content-Length",
                    ));
                }
                sent += data.len() as u64;
                send(conn, out, &data, stall).await?;
            }
            Wire::Chunked => {
                use std::io::Write as _;
                let _ = write!(out, "{:x}\r\n", data.len());
                send(conn, out, &data, stall).await?;
                out.extend_from_slice(b"\r\n");
            }
            Wire::Close => send(conn, out, &data, stall).await?,
        }
    }
    if let Wire::Length(n) = wire {
        if sent < n {
            let _ = flush(conn, out, stall).await;
            return Err(io::Error::other(
                "the body is shorter than its Content-Length",
            ));
        }
    }
    if wire == Wire::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    flush(conn, out, stall).await
}

/// Appends `data` to the pending bytes, or writes both when it is large.
async fn send<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &Rc<RefCell<Conn<I>>>,
    out: &mut Vec<u8>,
    data: &Bytes,
    stall: Duration,
) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE_BYTES {
        out.extend_from_slice(data);
        return Ok(());
    }
    flush(conn, out, stall).await?;
    write_all(conn, data, stall).await
}

/// Writes and clears the pending bytes, then flushes the stream.
pub(super) async fn flush<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &Rc<RefCell<Conn<I>>>,
    out: &mut Vec<u8>,
    stall: Duration,
) -> io::Result<()> {
    if !out.is_empty() {
        write_all(conn, out, stall).await?;
        out.clear();
    }
    let mut timer = None;
    std::future::poll_fn(|cx| {
        let flushed = Pin::new(&mut conn.borrow_mut().io).poll_flush(cx);
        stalled(flushed, &mut timer, stall, cx)
    })
    .await
}

async fn write_all<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &Rc<RefCell<Conn<I>>>,
    mut data: &[u8],
    stall: Duration,
) -> io::Result<()> {
    while !data.is_empty() {
        // A fresh timer per write: the limit is on a stall, not on the whole response.
        let mut timer = None;
        let n = std::future::poll_fn(|cx| {
            let written = Pin::new(&mut conn.borrow_mut().io).poll_write(cx, data);
            stalled(written, &mut timer, stall, cx)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Passes a ready result through; while pending, fails once the client has not taken a
/// byte for `stall` (the timer is only armed when a write has to wait).
fn stalled<T>(
    result: Poll<io::Result<T>>,
    timer: &mut Option<Deadline>,
    stall: Duration,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<T>> {
    if result.is_ready() {
        return result;
    }
    let deadline = timer.get_or_insert_with(|| Deadline::at(coarse_now() + stall));
    match deadline.poll_elapsed(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading the response",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_proxy::body::ResponseSource;

    fn ask(version: Version, head: bool) -> Ask {
        Ask {
            version,
            head,
            keep_alive: true,
            send_timeout: Duration::from_secs(60),
        }
    }

    /// The size a full body of `text` announces.
    fn full(text: &'static str) -> SizeHint {
        ResponseBody::new(
            ResponseSource::Full(Some(Bytes::from_static(text.as_bytes()))),
            None,
        )
        .size_hint()
    }

    #[test]
    fn frames_by_the_declared_length_then_by_the_known_size() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let w = wire(
            StatusCode::OK,
            &ask(Version::HTTP_11, false),
            &mut h,
            None,
            &full("abc"),
        );
        assert_eq!(w, Wire::Length(3));

        let mut h = HeaderMap::new();
        let w = wire(
            StatusCode::OK,
            &ask(Version::HTTP_11, false),
            &mut h,
            None,
            &full("abcd"),
        );
        assert_eq!(w, Wire::Length(4));
        assert_eq!(h[header::CONTENT_LENGTH], "4");

        // An unparsable declared length is dropped and replaced by the known size.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("x"));
        let w = wire(
            StatusCode::OK,
            &ask(Version::HTTP_10, false),
            &mut h,
            None,
            &full("ab"),
        );
        assert_eq!(w, Wire::Length(2));
        assert_eq!(h[header::CONTENT_LENGTH], "2");
        // Bodies of unknown length (chunked, or close-delimited for HTTP/1.0) are covered
        // end to end in tests/e2e/http1.rs.
    }

    #[test]
    fn sends_no_body_for_head_204_and_304_but_keeps_their_lengths() {
        let mut h = HeaderMap::new();
        let w = wire(
            StatusCode::OK,
            &ask(Version::HTTP_11, true),
            &mut h,
            None,
            &full("abc"),
        );
        assert_eq!(w, Wire::None);
        assert_eq!(h[header::CONTENT_LENGTH], "3");

        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let w = wire(
            StatusCode::NO_CONTENT,
            &ask(Version::HTTP_11, false),
            &mut h,
            None,
            &full(""),
        );
        assert_eq!(w, Wire::None);
        assert!(!h.contains_key(header::CONTENT_LENGTH));

        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let w = wire(
            StatusCode::NOT_MODIFIED,
            &ask(Version::HTTP_11, false),
            &mut h,
            None,
            &full(""),
        );
        assert_eq!(w, Wire::None);
        assert_eq!(h[header::CONTENT_LENGTH], "9");
    }

    #[test]
    fn writes_the_status_line_date_and_connection_headers() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-a"));
        encode_head(
            &mut out,
            StatusCode::OK,
            &mut h,
            None,
            Wire::Chunked,
            false,
            Version::HTTP_11,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{text}"
        );

        let mut h = HeaderMap::new();
        encode_head(
            &mut out,
            StatusCode::OK,
            &mut h,
            None,
            Wire::Length(0),
            true,
            Version::HTTP_10,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
    }

    #[test]
    fn a_plugin_asking_to_close_closes() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Close"));
        assert!(!sluicegate_http1::keep_alive(Version::HTTP_11, &h));
        assert!(sluicegate_http1::keep_alive(
            Version::HTTP_11,
            &HeaderMap::new()
        ));
    }
}
