//! The request body on its way through the gateway. Bodies stream: nothing here buffers a
//! whole body unless a plugin asked for it ([`ClientBody::collect`]).
//!
//! - [`RequestBody`]: a body read from an HTTP/1.1 connection through [`BodySource`];
//! - [`ClientBody`]: the client's request body, enforcing the listener's size limit and
//!   idle timeout; it records why it failed so the driver can answer 413 or 408;
//! - [`UpstreamRequestBody`]: what is sent upstream (the stream, or a replaced body).

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::clock::coarse_now;
use crate::context::Traffic;
use crate::deadline::Deadline;
use crate::error::{Kind, ProxyError};

/// Error type of the bodies the proxy produces.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An idle timer that is only armed while the stream is waiting: a body that never stalls
/// never arms it. It runs on the coarse clock (no timer-wheel entry, no clock read).
pub struct IdleTimer {
    timeout: Option<Duration>,
    /// Boxed: armed only on a stall, and it would otherwise enlarge every body.
    sleep: Option<Box<Deadline>>,
    progressed: bool,
}

impl IdleTimer {
    /// A timer for `timeout` (none: never expires).
    pub fn new(timeout: Option<Duration>) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
            progressed: false,
        }
    }

    /// Notes that the stream moved, so the next wait starts a new timeout.
    pub fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when the inner stream is pending; true when the timeout has elapsed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.timeout else {
            return false;
        };
        let sleep = match &mut self.sleep {
            Some(s) => {
                if self.progressed {
                    s.reset(coarse_now() + timeout);
                }
                s
            }
            None => self
                .sleep
                .insert(Box::new(Deadline::at(coarse_now() + timeout))),
        };
        self.progressed = false;
        sleep.poll_elapsed(cx).is_ready()
    }
}

/// The client's request body as the server hands it over.
pub enum ClientStream {
    /// From the gateway's HTTP/1.1 server.
    H1(RequestBody),
    /// From hyper's HTTP/2 server.
    H2(Incoming),
}

impl Body for ClientStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientStream::H1(b) => Pin::new(b).poll_frame(cx),
            ClientStream::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|next| next.map(|r| r.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientStream::H1(b) => b.is_end_stream(),
            ClientStream::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientStream::H1(b) => b.size_hint(),
            ClientStream::H2(b) => b.size_hint(),
        }
    }
}

/// The client's request body with the listener's limits applied.
pub struct ClientBody {
    inner: ClientStream,
    limit: u64,
    seen: u64,
    idle: IdleTimer,
    traffic: Rc<Traffic>,
}

impl ClientBody {
    /// Wraps `inner`.
    pub fn new(
        inner: ClientStream,
        limit: u64,
        idle_timeout: Option<Duration>,
        traffic: Rc<Traffic>,
    ) -> Self {
        ClientBody {
            inner,
            limit,
            seen: 0,
            idle: IdleTimer::new(idle_timeout),
            traffic,
        }
    }

    /// Reads the whole body into memory (bounded by the limit).
    pub async fn collect(mut self) -> Result<Bytes, ProxyError> {
        let mut buf = BytesMut::new();
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await;
            match frame {
                None => return Ok(buf.freeze()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Err(self.error()),
            }
        }
    }

    /// The error matching how the body failed.
    pub fn error(&self) -> ProxyError {
        failure_error(&self.traffic.body_failure)
    }

    fn fail(&self, kind: Kind) -> BoxError {
        self.traffic.body_failure.set(Some(kind));
        Box::new(failure_error(&self.traffic.body_failure))
    }
}

/// The [`ProxyError`] recorded in `failure` (a client that went away when none is).
pub fn failure_error(failure: &Cell<Option<Kind>>) -> ProxyError {
    match failure.get() {
        Some(Kind::BodyTooLarge) => {
            ProxyError::client(Kind::BodyTooLarge, "request body is larger than allowed")
        }
        Some(Kind::ClientTimeout) => ProxyError::client(
            Kind::ClientTimeout,
            "client sent the request body too slowly",
        ),
        Some(Kind::BadRequest) => ProxyError::client(
            Kind::BadRequest,
            "the request body is malformed: its chunked coding is invalid",
        ),
        _ => ProxyError::client(Kind::ClientClosed, "client closed the request body"),
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    this.traffic
                        .bytes_in
                        .set(this.traffic.bytes_in.get() + data.len() as u64);
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(this.fail(Kind::BodyTooLarge))));
                    }
                }
                // hyper stops polling a body whose `is_end_stream` turns true (any body with
                // a Content-Length), so `Ready(None)` may never come: mark the end here, or
                // the upstream read timeout would never start counting.
                if this.inner.is_end_stream() {
                    this.traffic.request_done.set(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // A body the client framed wrongly (a broken chunked coding) is a 400; any
                // other failure of the stream means the client went away.
                let malformed = e
                    .downcast_ref::<ProxyError>()
                    .is_some_and(|p| p.kind == Kind::BadRequest);
                let kind = if malformed {
                    Kind::BadRequest
                } else {
                    Kind::ClientClosed
                };
                Poll::Ready(Some(Err(this.fail(kind))))
            }
            Poll::Ready(None) => {
                this.traffic.request_done.set(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.poll_expired(cx) {
                    return Poll::Ready(Some(Err(this.fail(Kind::ClientTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body sent to the upstream.
pub enum UpstreamRequestBody {
    /// The client's body, streamed.
    Stream(ClientBody),
    /// A body held in memory (read or replaced by a plugin).
    Full(Option<Bytes>),
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamRequestBody::Stream(s) => Pin::new(s).poll_frame(cx),
            UpstreamRequestBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Stream(s) => s.is_end_stream(),
            UpstreamRequestBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Stream(s) => s.size_hint(),
            UpstreamRequestBody::Full(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// What the request body needs from the connection, without its stream type.
pub trait BodySource {
    /// The next piece of request `request`'s body.
    fn poll_data(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>>;
    /// Whether request `request`'s body is complete.
    fn is_end(&self, request: u64) -> bool;
    /// What is known of the remaining length of request `request`'s body.
    fn remaining(&self, request: u64) -> SizeHint;
}

/// A request body read from an HTTP/1.1 connection.
pub struct RequestBody {
    conn: Rc<RefCell<dyn BodySource>>,
    request: u64,
}

impl RequestBody {
    /// The body of request number `request` on `conn`.
    pub fn new(conn: Rc<RefCell<dyn BodySource>>, request: u64) -> Self {
        RequestBody { conn, request }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.conn.try_borrow_mut() {
            Ok(mut conn) => conn
                .poll_data(self.request, cx)
                .map(|next| next.map(|r| r.map(Frame::data))),
            // Unreachable by construction (borrows end within a poll); an error rather
            // than a panic if that ever changes.
            Err(_) => Poll::Ready(Some(Err("the client connection is busy".into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn
            .try_borrow()
            .map_or(true, |c| c.is_end(self.request))
    }

    fn size_hint(&self) -> SizeHint {
        self.conn
            .try_borrow()
            .map_or_else(|_| SizeHint::default(), |c| c.remaining(self.request))
    }
}
