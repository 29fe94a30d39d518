//! The client connection shared by the connection loop and the request body, and the
//! request body itself.
//!
//! The connection loop owns the connection, but the request body is read by whoever
//! forwards it (the upstream client, a plugin that buffers it), while the loop waits for
//! the response. Both run on the worker's thread, so they share the connection through an
//! `Rc<RefCell<..>>`; a borrow never lives across an `.await` (only inside one `poll`), so
//! it can never be contended.
//!
//! Invariant: the body reads exactly its framing's bytes from the read buffer, never a
//! byte of the next pipelined request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::SizeHint;
use tokio::io::{AsyncRead, AsyncWrite};

use sluicegate_core::body::{BodySource, BoxError};
use sluicegate_core::error::{Kind, ProxyError};
use sluicegate_http1::{decode, Decoded, Framing};

/// The interim response that asks a client waiting on `Expect: 100-continue` for its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Where an `Expect: 100-continue` request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// No interim response is due.
    Nothing,
    /// The client waits for `100 Continue` before it sends the body.
    Waiting,
    /// This many bytes of the interim response are written.
    Writing(usize),
}

/// One client connection: the stream, the bytes read but not yet used, and the framing of
/// the current request's body.
pub(super) struct Conn<I> {
    /// The client stream (with the connection timeouts of [`crate::conn::ConnIo`]).
    pub io: I,
    /// Bytes read from the client and not consumed yet.
    pub buf: BytesMut,
    /// The current request body's framing ([`Framing::Done`] once read or when absent).
    pub framing: Framing,
    /// The `100 Continue` state of the current request.
    pub expect: Expect,
    /// Reading the body failed (malformed chunk, closed connection): the connection cannot
    /// carry another request.
    pub broken: bool,
    /// The number of the current request: a body kept past its request reads nothing.
    pub request: u64,
    /// Whether the current request's body has been read from at all. A body nobody has
    /// started reading can be skipped; one that is being streamed (to an HTTP/2 upstream,
    /// possibly while the response is already on its way) must not lose bytes to the loop.
    pub touched: bool,
}

impl<I> Conn<I> {
    /// A connection with `buf` already read.
    pub fn new(io: I, buf: BytesMut) -> Self {
        Conn {
            io,
            buf,
            framing: Framing::Done,
            expect: Expect::Nothing,
            broken: false,
            request: 0,
            touched: false,
        }
    }

    /// Whether the current request's body has been read to its end.
    pub fn body_done(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    /// Consumes what is left of the request body from the bytes already read, without
    /// waiting for more; true when the body is then complete.
    pub fn discard_buffered_body(&mut self) -> bool {
        loop {
            match decode(&mut self.framing, &mut self.buf) {
                Ok(Decoded::Data(_)) => {}
                Ok(Decoded::End) => return true,
                Ok(Decoded::NeedMore) => return false,
                Err(_) => {
                    self.broken = true;
                    return false;
                }
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Writes what is left of the `100 Continue` response.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let written = match self.expect {
                Expect::Writing(n) => n,
                Expect::Waiting => 0,
                Expect::Nothing => return Poll::Ready(Ok(())),
            };
            if written >= CONTINUE.len() {
                self.expect = Expect::Nothing;
                return Pin::new(&mut self.io).poll_flush(cx);
            }
            match Pin::new(&mut self.io).poll_write(cx, &CONTINUE[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.expect = Expect::Writing(written + n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn fail(&mut self, msg: String) -> Poll<Option<Result<Bytes, BoxError>>> {
        self.broken = true;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(msg.into())))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> BodySource for Conn<I> {
    fn poll_data(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        if request != self.request {
            return Poll::Ready(Some(Err("the request this body belongs to is over".into())));
        }
        self.touched = true;
        loop {
            match decode(&mut self.framing, &mut self.buf) {
                Err(msg) => {
                    self.broken = true;
                    self.framing = Framing::Done;
                    // The client's fault, not a closed connection: a 400 (see `ClientBody`).
                    let error = ProxyError::client(
                        Kind::BadRequest,
                        format!("malformed request body: {msg}"),
                    );
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
            }
            // The client sends the body only once told to; a client that sent it anyway
            // has its bytes in the buffer and needs no interim response.
            if self.expect != Expect::Nothing {
                match self.poll_continue(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        return self.fail(format!("writing 100 Continue failed: {e}"))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            sluicegate_http1::make_read_room(&mut self.buf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return self.fail("the client closed the connection mid-body".into())
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return self.fail(format!("reading the body failed: {e}")),
            }
        }
    }

    fn is_end(&self, request: u64) -> bool {
        request != self.request || self.body_done()
    }

    fn remaining(&self, request: u64) -> SizeHint {
        if request != self.request {
            return SizeHint::with_exact(0);
        }
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
