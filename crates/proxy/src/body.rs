//! The response body sent to the client. [`ResponseBody`] returns the upstream connection
//! to the pool at the end of the body, runs body filters, and runs the log phase exactly
//! once when the body is finished or dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sluicegate_core::body::{BoxError, IdleTimer};
use sluicegate_core::error::{Kind, ProxyError};
use sluicegate_http1::raw::RawHeaders;

use sluicegate_upstream::pool::UpstreamBody;

/// The upstream's response body, streamed, with the read idle timeout. An HTTP/1.1 body
/// gives its connection back to the pool itself when it ends cleanly.
pub struct UpstreamResponseBody {
    /// `None` once abandoned after a timeout (dropping it closes the connection).
    inner: Option<UpstreamBody>,
    idle: IdleTimer,
}

impl UpstreamResponseBody {
    /// Wraps `inner` with the upstream's read timeout.
    pub fn new(inner: UpstreamBody, read_timeout: Duration) -> Self {
        UpstreamResponseBody {
            inner: Some(inner),
            idle: IdleTimer::new(Some(read_timeout)),
        }
    }
}

/// A finished or broken response body, as the log phase sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Sent completely.
    Complete,
    /// The upstream failed mid-body; the client connection was closed.
    UpstreamFailed,
    /// The client went away before the end.
    ClientGone,
    /// A body filter failed; the client connection was closed.
    FilterFailed,
}

/// Error of a response body: the upstream failed mid-body.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed: {0}")]
pub struct UpstreamBodyError(pub String);

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            None => return Poll::Ready(None),
            Some(UpstreamBody::H1(b)) => Pin::new(b).poll_frame(cx),
            Some(UpstreamBody::H2(b)) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(UpstreamBodyError(e.to_string())))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.idle.poll_expired(cx) {
                    // Dropping the body closes its connection; it never goes back to the pool.
                    this.inner = None;
                    return Poll::Ready(Some(Err(Box::new(UpstreamBodyError(
                        "read timeout inside the response body".into(),
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            None => true,
            Some(UpstreamBody::H1(b)) => b.is_end_stream(),
            Some(UpstreamBody::H2(b)) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            None => SizeHint::with_exact(0),
            Some(UpstreamBody::H1(b)) => b.size_hint(),
            Some(UpstreamBody::H2(b)) => b.size_hint(),
        }
    }
}

/// The source of a response body.
pub enum ResponseSource {
    /// Produced by the gateway.
    Full(Option<Bytes>),
    /// Streamed from the upstream.
    Upstream(UpstreamResponseBody),
}

/// Called with each body chunk (body filters) and once at the end (log phase).
pub trait BodyObserver {
    /// Filters one chunk in place; `eof` is true for the last call. An error aborts the body.
    fn on_chunk(&mut self, chunk: &mut Bytes, eof: bool) -> Result<(), BoxError>;
    /// Whether `on_chunk` does anything (false lets chunks pass untouched).
    fn filters(&self) -> bool;
    /// The body ended (or was dropped) with `outcome` after `bytes_out` bytes.
    fn finish(&mut self, outcome: BodyOutcome, bytes_out: u64);
    /// The trailers of a gRPC call's response, as sent to the client.
    fn on_grpc_trailers(&mut self, _trailers: &http::HeaderMap) {}
}

/// The response body sent to the client.
pub struct ResponseBody {
    source: ResponseSource,
    observer: Option<Box<dyn BodyObserver>>,
    bytes_out: u64,
    outcome: Option<BodyOutcome>,
    eof_sent: bool,
    /// Upstream trailers held back while body filters add their last chunk: trailers end
    /// the stream, so nothing may follow them.
    trailers: Option<Box<http::HeaderMap>>,
    /// A gRPC call: a failure mid-body ends the stream with a gRPC status in trailers.
    grpc: bool,
    /// The upstream's header lines, to be written before the head's own headers (an
    /// HTTP/1.1 client, nothing reading or changing them; see [`RawHeaders`]).
    raw_headers: Option<RawHeaders>,
}

impl ResponseBody {
    /// A body from `source`, observed by `observer`.
    pub fn new(source: ResponseSource, observer: Option<Box<dyn BodyObserver>>) -> Self {
        ResponseBody {
            source,
            observer,
            bytes_out: 0,
            outcome: None,
            eof_sent: false,
            trailers: None,
            grpc: false,
            raw_headers: None,
        }
    }

    /// Passes the upstream's header lines `raw` to the client with this body.
    pub fn with_raw_headers(mut self, raw: Option<RawHeaders>) -> Self {
        self.raw_headers = raw;
        self
    }

    /// The header lines given by [`ResponseBody::with_raw_headers`] (once).
    pub fn take_raw_headers(&mut self) -> Option<RawHeaders> {
        self.raw_headers.take()
    }

    /// Marks the body as a gRPC call's (see [`ResponseBody::fail`]).
    pub fn grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    /// Ends a failed body: an error (the client's stream is reset, its connection closed
    /// on HTTP/1.1), or for a gRPC call trailers with the status that `err` maps to.
    fn fail(
        &mut self,
        outcome: BodyOutcome,
        e: BoxError,
        err: impl FnOnce() -> ProxyError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finish(outcome);
        if !self.grpc {
            return Poll::Ready(Some(Err(e)));
        }
        // `e` was logged with the request id already (log phase, or the failing plugin).
        drop(e);
        let err = err();
        // Nothing more is read or sent after the status.
        self.source = ResponseSource::Full(None);
        self.eof_sent = true;
        let trailers = sluicegate_core::error::grpc_trailers(&err);
        self.saw_trailers(&trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    /// Shows a gRPC call's trailers to the observer (the log records `grpc-status`).
    fn saw_trailers(&mut self, trailers: &http::HeaderMap) {
        if self.grpc {
            if let Some(obs) = self.observer.as_mut() {
                obs.on_grpc_trailers(trailers);
            }
        }
    }

    fn finish(&mut self, outcome: BodyOutcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
            if let Some(obs) = self.observer.as_mut() {
                obs.finish(outcome, self.bytes_out);
            }
        }
    }

    /// Gives body filters the chance to add a last chunk at end of stream.
    fn final_chunk(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        if self.eof_sent {
            return None;
        }
        self.eof_sent = true;
        let obs = self.observer.as_mut().filter(|o| o.filters())?;
        let mut chunk = Bytes::new();
        if let Err(e) = obs.on_chunk(&mut chunk, true) {
            return Some(Err(e));
        }
        (!chunk.is_empty()).then(|| {
            self.bytes_out += chunk.len() as u64;
            Ok(Frame::data(chunk))
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(trailers) = this.trailers.take() {
            this.saw_trailers(&trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
        }
        let polled = match &mut this.source {
            ResponseSource::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseSource::Upstream(u) => Pin::new(u).poll_frame(cx),
        };
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => match this.final_chunk() {
                None => {
                    this.finish(BodyOutcome::Complete);
                    Poll::Ready(None)
                }
                Some(Err(e)) => this.fail(BodyOutcome::FilterFailed, e, filter_error),
                last => Poll::Ready(last),
            },
            Poll::Ready(Some(Err(e))) => {
                let message = e.to_string();
                this.fail(BodyOutcome::UpstreamFailed, e, || {
                    ProxyError::upstream(Kind::UpstreamProtocol, message)
                })
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if let Some(obs) = this.observer.as_mut().filter(|o| o.filters()) {
                            if let Err(e) = obs.on_chunk(&mut data, false) {
                                return this.fail(BodyOutcome::FilterFailed, e, filter_error);
                            }
                        }
                        this.bytes_out += data.len() as u64;
                        Frame::data(data)
                    }
                    Err(trailers) => {
                        // The body filters' end of stream comes before the trailers.
                        match this.final_chunk() {
                            None => {
                                if let Some(t) = trailers.trailers_ref() {
                                    this.saw_trailers(t);
                                }
                                trailers
                            }
                            Some(Err(e)) => {
                                return this.fail(BodyOutcome::FilterFailed, e, filter_error);
                            }
                            Some(Ok(last)) => {
                                this.trailers = trailers.into_trailers().ok().map(Box::new);
                                last
                            }
                        }
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.trailers.is_some() {
            return false;
        }
        if self.observer.as_ref().is_some_and(|o| o.filters()) && !self.eof_sent {
            return false;
        }
        match &self.source {
            ResponseSource::Full(b) => b.is_none(),
            ResponseSource::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.observer.as_ref().is_some_and(|o| o.filters()) {
            return SizeHint::default();
        }
        match &self.source {
            ResponseSource::Full(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseSource::Upstream(u) => u.size_hint(),
        }
    }
}

fn filter_error() -> ProxyError {
    ProxyError::new(
        sluicegate_core::error::Source::Plugin,
        Kind::PluginFailure,
        "a body filter failed",
    )
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body that reported its end through `is_end_stream` is never polled to `None`.
        let done = match &self.source {
            ResponseSource::Full(b) => b.is_none(),
            ResponseSource::Upstream(u) => u.is_end_stream(),
        };
        let outcome = if done {
            BodyOutcome::Complete
        } else {
            BodyOutcome::ClientGone
        };
        self.finish(outcome);
    }
}
