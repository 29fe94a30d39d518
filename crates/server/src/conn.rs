//! The client connection's I/O wrapper. It owns the HTTP/1.1 connection timeouts that
//! hyper cannot answer with a response:
//!
//! - **idle**: no byte of a new request within the header timeout → the connection is
//!   closed quietly (keep-alive timeout);
//! - **head**: the first byte of a request arrived but the head is not complete within the
//!   header timeout → a `408` JSON response is written and the connection closed.
//!
//! The driver flips the shared [`ConnPhase`] when a request head has been received
//! (`InRequest`) and when the request is finished (`Idle`). HTTP/2 connections (detected by
//! their preface) are left to hyper's own keep-alive handling, and so are connections that
//! switched protocols (`Upgraded`, e.g. WebSocket): their bytes are no longer request heads,
//! so neither timeout applies to them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use sluicegate_core::deadline::Deadline;
pub use sluicegate_proxy::conn::{ConnPhase, ConnState};

/// The HTTP/2 connection preface (RFC 9113 §3.4). Until all of it has arrived, an h2c
/// connection is still "in its head": hyper's HTTP/2 keep-alive only starts after it.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client stream with the idle and header timeouts.
pub struct ConnIo<T> {
    inner: T,
    state: Arc<ConnState>,
    timeout: Duration,
    /// Armed for the current phase; on the coarse clock (no timer-wheel entry).
    sleep: Deadline,
    /// The phase the timer was armed for.
    armed_for: Option<ConnPhase>,
    /// Bytes of the canned 408 response still to write.
    timeout_response: Option<(Vec<u8>, usize)>,
    /// Bytes of [`H2_PREFACE`] matched so far; `None` once the connection is known to be
    /// HTTP/1.1 or its preface is complete.
    preface_matched: Option<usize>,
    /// HTTP/2: the request generation seen idle at the start of the current window.
    h2_window: Option<u32>,
    /// When the current idle period's keep-alive timeout ends.
    idle_until: Option<Instant>,
    /// HTTP/1.1: how long an idle connection waits before it asks to be parked.
    park_after: Option<Duration>,
}

impl<T> ConnIo<T> {
    /// Wraps `inner`; `timeout` is the listener's header timeout.
    pub fn new(inner: T, state: Arc<ConnState>, timeout: Duration) -> Self {
        ConnIo {
            inner,
            state,
            timeout,
            sleep: Deadline::at(sluicegate_core::clock::coarse_now() + timeout),
            armed_for: None,
            timeout_response: None,
            preface_matched: Some(0),
            h2_window: None,
            idle_until: None,
            park_after: None,
        }
    }

    /// An HTTP/1.1 connection that, idle for `after`, asks to be parked (phase
    /// [`ConnPhase::Parking`]); `idle_until` carries over the keep-alive timeout of a
    /// connection back from the lot.
    pub fn parking(mut self, after: Duration, idle_until: Option<Instant>) -> Self {
        self.park_after = Some(after);
        self.idle_until = idle_until;
        self
    }

    /// A resumed connection's first bytes are not a preface.
    pub fn without_preface(mut self) -> Self {
        self.preface_matched = None;
        self
    }

    /// The stream, and when its keep-alive timeout ends if it is idle.
    pub fn into_parts(self) -> (T, Option<Instant>) {
        (self.inner, self.idle_until)
    }
}

fn timeout_body() -> Vec<u8> {
    let id = uuid::Uuid::new_v4();
    let body = format!(
        "{{\"error\":\"client_timeout\",\"message\":\"client sent the request headers too slowly\",\"request_id\":\"{id}\"}}"
    );
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {id}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<T: AsyncRead + AsyncWrite + Unpin> ConnIo<T> {
    /// Writes what is left of the 408 response; Ready(()) when done or failed.
    fn poll_write_timeout_response(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some((buf, written)) = self.timeout_response.as_mut() {
            if *written >= buf.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &buf[*written..]) {
                Poll::Ready(Ok(n)) if n > 0 => *written += n,
                Poll::Ready(_) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(())
    }
}

impl<T> ConnIo<T> {
    /// HTTP/2 idle timeout: hyper closes nothing that keeps answering pings, so a connection
    /// with no request in flight for a whole timeout window (between one and two timeouts,
    /// checked at the window's end) is ended here.
    fn poll_h2_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let generation = self.state.generation();
        if self.armed_for != Some(ConnPhase::H2) {
            self.armed_for = Some(ConnPhase::H2);
            self.h2_window = Some(generation);
            self.sleep
                .reset(sluicegate_core::clock::coarse_now() + self.timeout);
        }
        while self.sleep.poll_elapsed(cx).is_ready() {
            let idle = self.state.in_flight() == 0;
            if idle && self.h2_window == Some(generation) {
                tracing::debug!("Idle HTTP/2 connection closed.");
                return Poll::Ready(Ok(()));
            }
            self.h2_window = idle.then_some(generation);
            self.sleep
                .reset(sluicegate_core::clock::coarse_now() + self.timeout);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timeout_response.is_some() {
            return match this.poll_write_timeout_response(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => Poll::Ready(Ok(())), // EOF: hyper closes the connection.
            };
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    if let Some(matched) = this.preface_matched {
                        let want = &H2_PREFACE[matched..];
                        let n = got.len().min(want.len());
                        this.preface_matched = if got[..n] != want[..n] {
                            None
                        } else if matched + n == H2_PREFACE.len() {
                            this.state.set(ConnPhase::H2);
                            None
                        } else {
                            Some(matched + n)
                        };
                    }
                    if matches!(this.state.get(), ConnPhase::Idle | ConnPhase::Parking) {
                        this.state.set(ConnPhase::InHead);
                        // A new request: its head deadline, and later a new idle period,
                        // are armed afresh.
                        this.idle_until = None;
                        this.armed_for = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let phase = this.state.get();
                if phase == ConnPhase::H2 {
                    return this.poll_h2_idle(cx);
                }
                if matches!(phase, ConnPhase::InRequest | ConnPhase::Upgraded) {
                    this.armed_for = None;
                    return Poll::Pending;
                }
                let now = sluicegate_core::clock::coarse_now();
                let idle = matches!(phase, ConnPhase::Idle | ConnPhase::Parking);
                if this.armed_for != Some(phase) {
                    this.armed_for = Some(phase);
                    let at = if idle {
                        let until = *this.idle_until.get_or_insert(now + this.timeout);
                        match this.park_after {
                            Some(after) if phase == ConnPhase::Idle => until.min(now + after),
                            _ => until,
                        }
                    } else {
                        now + this.timeout
                    };
                    this.sleep.reset(at);
                }
                if this.sleep.poll_elapsed(cx).is_pending() {
                    return Poll::Pending;
                }
                if let (true, Some(after), Some(until)) = (idle, this.park_after, this.idle_until) {
                    if now < until {
                        // The loop parks the connection when it sees this phase, or sets it
                        // back to `Idle` when it cannot; then this deadline asks again.
                        this.state.set(ConnPhase::Parking);
                        this.armed_for = Some(ConnPhase::Parking);
                        this.sleep.reset(until.min(now + after));
                        let _ = this.sleep.poll_elapsed(cx);
                        return Poll::Pending;
                    }
                }
                if phase == ConnPhase::InHead && this.preface_matched.is_some_and(|m| m > 0) {
                    // A stalled HTTP/2 preface: an HTTP/1.1 408 would mean nothing to it.
                    tracing::info!("Client sent the HTTP/2 preface too slowly; closed.");
                    return Poll::Ready(Ok(()));
                }
                if phase == ConnPhase::InHead {
                    this.timeout_response = Some((timeout_body(), 0));
                    tracing::info!("Client sent the request head too slowly; answered 408.");
                    return match this.poll_write_timeout_response(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                    };
                }
                // Idle keep-alive connection: close quietly.
                Poll::Ready(Ok(()))
            }
        }
    }
}

sluicegate_http1::pass_async_write!(ConnIo, inner);
