//! The gateway's HTTP/1.1 server: one loop per client connection that reads a request
//! head, hands the request to the phase driver ([`sluicegate_proxy::handle`]) and writes its
//! response, then the next, in order (pipelined requests wait in the read buffer).
//!
//! It replaces hyper's HTTP/1.1 server for the same reason [`sluicegate_upstream::h1`] replaced
//! hyper's client: no dispatcher task, no channel to the body, no second copy of the head.
//! The request is parsed straight from the read buffer (header values share it), the head
//! and a body that is ready with it leave in one write. HTTP/2 (ALPN `h2`, or the h2c
//! preface on a cleartext listener that allows it) is still served by hyper.
//!
//! What the loop guarantees:
//! - every malformed or oversized head gets a JSON error (400, 431) and the connection
//!   closes; nothing malformed reaches the driver;
//! - the connection stays open only when both sides allow it (version, `Connection`), the
//!   response was framed and complete, the request body was read to its end (or what is
//!   left of it had already arrived and is skipped), and the worker is not draining;
//! - a connection closed with request bytes still unread is closed gracefully: the write
//!   side first, then the rest of the upload is read and dropped for a bounded time, so the
//!   client reads its response instead of a reset;
//! - idle and header timeouts come from [`super::conn::ConnIo`] underneath: a stalled head
//!   gets a 408 there, and an idle connection reads as closed.

mod body;
mod request;
mod response;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

pub use sluicegate_core::body::RequestBody;
pub use sluicegate_proxy::upgrade::{self, ClientIo, OnUpgrade, Upgraded};

use self::body::{Conn, Expect};
use self::response::{Ask, Written};
use super::conn::{ConnPhase, ConnState, H2_PREFACE};
use sluicegate_core::body::ClientStream;
use sluicegate_core::error::{error_response, Kind, ProxyError};
use sluicegate_http1::{Framing, READ_CHUNK};
use sluicegate_proxy::body::{ResponseBody, ResponseSource};
use sluicegate_proxy::worker::{DrainSlot, Worker};
use sluicegate_proxy::ConnInfo;

/// How long a closing connection keeps reading (and dropping) an upload it will not use.
const LINGER: Duration = Duration::from_secs(2);
/// How much of such an upload it reads before giving up.
const LINGER_BYTES: usize = 1024 * 1024;

/// What the connection turned out to be, when it is not over.
pub enum Served<I> {
    /// Closed (or handed over to an upgrade).
    Done,
    /// Idle long enough to be parked (its phase is [`ConnPhase::Parking`]); nothing of it is
    /// buffered or in use.
    Idle(I, Fresh),
    /// The client sent the HTTP/2 preface: serve it as HTTP/2 with these bytes first.
    Http2(I, Bytes),
}

/// Whether a connection has served no request yet.
pub type Fresh = bool;

/// The per-listener limits the loop applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head accepted before answering 431 (the driver checks the exact
    /// header size against the listener's limit; this bounds the buffer).
    pub max_head_bytes: usize,
    /// Whether a cleartext client may start HTTP/2 with the preface (h2c).
    pub h2c: bool,
    /// How long a response write may wait for a client that does not read.
    pub send_timeout: Duration,
}

/// Serves HTTP/1.1 requests on `io` until the connection ends or idles long enough to be
/// parked; `fresh`: no request was served on it yet.
pub async fn serve<I>(
    io: I,
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
    limits: Limits,
    fresh: bool,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Rc::new(RefCell::new(Conn::new(
        io,
        BytesMut::with_capacity(READ_CHUNK),
    )));
    let mut out = Vec::with_capacity(1024);
    let mut first = fresh;
    let mut drain = worker.drain.slot();
    loop {
        let head = match next_head(&conn, &mut drain, &info.state, limits, first).await {
            Next::Head(head) => head,
            Next::Closed => return Served::Done,
            Next::Http2 => return into_http2(conn),
            Next::Park => {
                return match Rc::try_unwrap(conn) {
                    Ok(cell) => Served::Idle(cell.into_inner().io, first),
                    Err(_) => Served::Done,
                }
            }
            Next::Invalid(e) => {
                worker
                    .shared
                    .metrics
                    .malformed_requests
                    .fetch_add(1, Ordering::Relaxed);
                let id = uuid::Uuid::new_v4().hyphenated().to_string();
                tracing::info!(request_id = %id, client = %info.client_addr, status = e.status().as_u16(), error = %e, "Malformed request rejected.");
                reject(&conn, &mut out, &e, &id, limits.send_timeout).await;
                linger(&conn).await;
                return Served::Done;
            }
        };
        first = false;
        let (upgrade_tx, request) = {
            let mut c = conn.borrow_mut();
            c.request = c.request.wrapping_add(1);
            c.touched = false;
            c.framing = head.framing;
            c.expect = if head.expect_continue && head.framing != Framing::Done {
                Expect::Waiting
            } else {
                Expect::Nothing
            };
            let (tx, rx) = if head.upgrade {
                let (tx, rx) = upgrade::pair();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let source: Rc<RefCell<dyn sluicegate_core::body::BodySource>> = conn.clone();
            let mut req = Box::new(Request::from_parts(
                head.parts,
                ClientStream::H1(RequestBody::new(source, c.request)),
            ));
            if let Some(rx) = rx {
                req.extensions_mut().insert(rx);
            }
            (tx, req)
        };
        let ask_version = request.version();
        let is_head = request.method() == http::Method::HEAD;
        // Not boxed: awaited in place, the driver's future is never moved (boxing it copied
        // the whole future into the heap on every request).
        let resp = sluicegate_proxy::handle_boxed(worker.clone(), info.clone(), request).await;
        let keep_alive = head.keep_alive && !worker.drain.is_draining() && {
            let idle_body = body_is_idle(&conn);
            let mut c = conn.borrow_mut();
            // An unread body still on its way would be taken for the next request: only
            // what has fully arrived can be skipped, and only when nobody is reading it.
            let done = c.body_done()
                || (idle_body && c.expect == Expect::Nothing && c.discard_buffered_body());
            done && !c.broken
        };
        let ask = Ask {
            version: ask_version,
            head: is_head,
            keep_alive,
            send_timeout: limits.send_timeout,
        };
        match response::write(&conn, &mut out, resp, &ask).await {
            Written::KeepAlive => {
                info.state.set(ConnPhase::Idle);
            }
            Written::Close => {
                close(&conn).await;
                return Served::Done;
            }
            Written::Switched => {
                hand_over(conn, upgrade_tx);
                return Served::Done;
            }
        }
    }
}

// Not boxed: a head is what almost every call returns, and it moves once.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(request::Head),
    Closed,
    Http2,
    /// Idle, with nothing buffered and nobody holding the connection: park it.
    Park,
    Invalid(ProxyError),
}

/// Reads until a whole request head is buffered (or the connection ends).
async fn next_head<I>(
    conn: &Rc<RefCell<Conn<I>>>,
    drain: &mut DrainSlot<'_>,
    state: &ConnState,
    limits: Limits,
    first: bool,
) -> Next
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut sniffing = first && limits.h2c;
    // Where the buffer ended at the last parse attempt: a head that arrives in small pieces
    // is parsed again only once a blank line or another few KiB arrived, not per piece
    // (parsing starts over each time, so per piece would be quadratic in the head size).
    let mut tried_at: Option<usize> = None;
    std::future::poll_fn(|cx| {
        let mut c = conn.borrow_mut();
        loop {
            if sniffing && !c.buf.is_empty() {
                let n = c.buf.len().min(H2_PREFACE.len());
                if c.buf[..n] != H2_PREFACE[..n] {
                    sniffing = false;
                } else if n == H2_PREFACE.len() {
                    return Poll::Ready(Next::Http2);
                }
            }
            if !sniffing && !c.buf.is_empty() && worth_parsing(&c.buf, tried_at) {
                tried_at = Some(c.buf.len());
                match request::parse(&mut c.buf) {
                    Ok(Some(head)) => return Poll::Ready(Next::Head(head)),
                    Err(e) => return Poll::Ready(Next::Invalid(e)),
                    Ok(None) if c.buf.len() > limits.max_head_bytes => {
                        return Poll::Ready(Next::Invalid(ProxyError::client(
                            Kind::HeaderTooLarge,
                            format!(
                                "the request head is larger than {} bytes",
                                limits.max_head_bytes
                            ),
                        )))
                    }
                    Ok(None) => {}
                }
            }
            if c.buf.is_empty() && drain.is_draining() {
                return Poll::Ready(Next::Closed);
            }
            sluicegate_http1::make_read_room(&mut c.buf);
            let c = &mut *c;
            match tokio_util::io::poll_read_buf(Pin::new(&mut c.io), cx, &mut c.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Next::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    if state.get() == ConnPhase::Parking {
                        if c.buf.is_empty() && Rc::strong_count(conn) == 1 {
                            return Poll::Ready(Next::Park);
                        }
                        // Pipelined bytes wait, or a body reader still holds the
                        // connection: not idle after all; the timeout asks again.
                        state.set(ConnPhase::Idle);
                    }
                    if c.buf.is_empty() {
                        drain.watch(cx.waker());
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

/// Whether `buf` may now hold a complete head: the first bytes (so garbage is refused at
/// once), a blank line among the bytes since the last attempt, or 4 KiB more of them.
fn worth_parsing(buf: &[u8], tried_at: Option<usize>) -> bool {
    let Some(at) = tried_at else { return true };
    if buf.len() >= at + 4096 {
        return true;
    }
    let fresh = &buf[at.saturating_sub(2).min(buf.len())..];
    fresh.windows(2).any(|w| w == b"\n\n") || fresh.windows(3).any(|w| w == b"\n\r\n")
}

/// Answers a request that never reached the driver, then closes.
async fn reject<I>(
    conn: &Rc<RefCell<Conn<I>>>,
    out: &mut Vec<u8>,
    e: &ProxyError,
    id: &str,
    send_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let request_id = HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"));
    let local = error_response(e, &request_id);
    let mut resp = Box::new(Response::new(ResponseBody::new(
        ResponseSource::Full(Some(local.body)),
        None,
    )));
    *resp.status_mut() = local.status;
    *resp.headers_mut() = local.headers;
    resp.headers_mut()
        .insert(sluicegate_core::context::X_REQUEST_ID.clone(), request_id);
    let ask = Ask {
        version: http::Version::HTTP_11,
        head: false,
        keep_alive: false,
        send_timeout,
    };
    let _ = response::write(conn, out, resp, &ask).await;
}

/// Ends the connection: the write side first, then, if the client may still be sending
/// (an unread upload), its bytes are read and dropped for a while so that closing does not
/// reset the connection under the response it has not read yet.
async fn close<I>(conn: &Rc<RefCell<Conn<I>>>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let unread = {
        let c = conn.borrow();
        !c.body_done() || c.broken
    };
    // A body still being streamed by its reader keeps its bytes: the write side closes,
    // and its reader ends when the client does.
    if unread && body_is_idle(conn) {
        linger(conn).await;
    } else {
        let _ =
            std::future::poll_fn(|cx| Pin::new(&mut conn.borrow_mut().io).poll_shutdown(cx)).await;
    }
}

async fn linger<I>(conn: &Rc<RefCell<Conn<I>>>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let _ = std::future::poll_fn(|cx| Pin::new(&mut conn.borrow_mut().io).poll_shutdown(cx)).await;
    let drain = async {
        let mut scratch = vec![0u8; 16 * 1024];
        let mut total = 0;
        while total < LINGER_BYTES {
            let n = {
                let read = std::future::poll_fn(|cx| {
                    let mut c = conn.borrow_mut();
                    let mut rb = tokio::io::ReadBuf::new(&mut scratch);
                    match Pin::new(&mut c.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                });
                match read.await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                }
            };
            total += n;
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Whether nobody can be reading the current request's body: nobody started, or its
/// reader has let go of it (the loop's own reference is the only one left).
fn body_is_idle<I>(conn: &Rc<RefCell<Conn<I>>>) -> bool {
    Rc::strong_count(conn) == 1 || !conn.borrow().touched
}

/// Passes the stream (and anything the client sent after its head) to the upgrade.
fn hand_over<I>(conn: Rc<RefCell<Conn<I>>>, pending: Option<upgrade::Pending>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(pending) = pending else {
        tracing::debug!("A 101 response to a request that asked for no upgrade; closed.");
        return;
    };
    let Ok(cell) = Rc::try_unwrap(conn) else {
        tracing::warn!("The upgraded connection is still in use by its request; closed.");
        return;
    };
    let c = cell.into_inner();
    let io: Box<dyn ClientIo> = Box::new(c.io);
    if !pending.fulfil(io, c.buf.freeze()) {
        tracing::debug!("Nobody waits for the upgraded connection any more; closed.");
    }
}

fn into_http2<I>(conn: Rc<RefCell<Conn<I>>>) -> Served<I> {
    match Rc::try_unwrap(conn) {
        Ok(cell) => {
            let c = cell.into_inner();
            Served::Http2(c.io, c.buf.freeze())
        }
        Err(_) => Served::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_again_only_after_a_blank_line_or_a_few_kib() {
        assert!(
            worth_parsing(b"G", None),
            "the first bytes are always parsed"
        );
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert!(!worth_parsing(head, Some(head.len() - 3)));
        let done = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(
            worth_parsing(done, Some(done.len() - 1)),
            "blank line split over reads"
        );
        assert!(worth_parsing(b"GET /\n\n", Some(6)), "bare line feeds");
        let long = vec![b'a'; 5000];
        assert!(worth_parsing(&long, Some(100)));
        assert!(!worth_parsing(&long, Some(4000)));
    }
}
