//! Per-worker upstream connections: connecting (TCP, optional TLS, HTTP/1.1 or HTTP/2
//! handshake) and keep-alive pooling. A pool belongs to one worker thread, so it uses
//! `RefCell` and never locks.
//!
//! Invariants: an HTTP/1.1 connection is back in the pool only after its response body was
//! read to the end (see [`PoolHandle::release`], called by [`H1Body`]); a connection whose
//! body was abandoned is dropped (closed). An idle connection is checked for a close by the
//! peer before reuse, and a request that still fails that way on a reused connection is
//! retried once on a fresh connection (see [`super::h1`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::h1::{H1Body, H1Conn, SendFailure};
use super::{Protocol, Target, Upstream};
use crate::forwarded::ForwardedHeaders;
use sluicegate_core::body::UpstreamRequestBody;
use sluicegate_core::clock::coarse_now;
use sluicegate_core::error::{Kind, ProxyError};
use sluicegate_core::LocalExec;

enum Sender {
    /// Boxed once per connection, so that requests move a pointer, not the connection.
    H1(Box<H1Conn>),
    H2(http2::SendRequest<UpstreamRequestBody>),
}

struct Idle {
    conn: Box<H1Conn>,
    since: Instant,
    idle_timeout: Duration,
}

/// Pool keys are already hashes of the target (`Target::pool_key`): the maps use them as
/// they are instead of hashing them again (SipHash twice per request before).
type KeyMap<V> = sluicegate_core::prehashed::PrehashedMap<V>;

#[derive(Default)]
struct PoolInner {
    idle: RefCell<KeyMap<VecDeque<Idle>>>,
    h2: RefCell<KeyMap<http2::SendRequest<UpstreamRequestBody>>>,
    /// HTTP/2 connections being opened: requests that arrive meanwhile wait for that one
    /// instead of opening their own (a burst would otherwise open one per request).
    h2_connecting: RefCell<KeyMap<Rc<H2Connecting>>>,
}

/// An HTTP/2 connect in progress, and its outcome once known.
#[derive(Default)]
struct H2Connecting {
    done: tokio::sync::Notify,
    outcome: RefCell<Option<Result<http2::SendRequest<UpstreamRequestBody>, ProxyError>>>,
}

/// Held by the request that opens an HTTP/2 connection: however that ends (done, failed,
/// or the request dropped mid-connect), the waiters are woken and the entry removed.
struct ConnectingGuard {
    pool: Rc<PoolInner>,
    key: u64,
    connecting: Rc<H2Connecting>,
}

impl Drop for ConnectingGuard {
    fn drop(&mut self) {
        self.pool.h2_connecting.borrow_mut().remove(&self.key);
        self.connecting.done.notify_waiters();
    }
}

/// A worker's upstream connection pool.
#[derive(Clone, Default)]
pub struct Pool {
    inner: Rc<PoolInner>,
}

/// Where a finished HTTP/1.1 connection goes back to.
pub struct PoolHandle {
    pool: Rc<PoolInner>,
    key: u64,
    max_idle: usize,
    idle_timeout: Duration,
}

impl PoolHandle {
    /// Returns `conn` to the pool (its response body was read to the end).
    pub fn release(self, mut conn: Box<H1Conn>) {
        let mut idle = self.pool.idle.borrow_mut();
        let queue = idle.entry(self.key).or_default();
        if queue.len() < self.max_idle {
            conn.reused = true;
            queue.push_back(Idle {
                conn,
                since: coarse_now(),
                idle_timeout: self.idle_timeout,
            });
        }
    }
}

/// A connection checked out of the pool for one request.
pub struct Conn {
    sender: Sender,
    reused: bool,
    key: u64,
    max_idle: usize,
    idle_timeout: Duration,
    pool: Rc<PoolInner>,
}

/// The body of an upstream response.
pub enum UpstreamBody {
    /// Read directly from an HTTP/1.1 connection.
    H1(H1Body),
    /// An HTTP/2 stream.
    H2(Incoming),
}

impl UpstreamBody {
    /// An HTTP/1.1 response's header block: its `Response` has an empty header map until
    /// the proxy builds it from this block or passes the block through.
    pub fn take_raw_headers(&mut self) -> Option<sluicegate_http1::raw::RawHeaders> {
        match self {
            UpstreamBody::H1(b) => b.take_headers(),
            UpstreamBody::H2(_) => None,
        }
    }
}

/// A request on its way to an upstream. Boxed once: it passes through several layers of
/// futures on the way to the connection, and each would otherwise copy the whole request.
pub type UpstreamRequest = Box<Request<UpstreamRequestBody>>;

/// Outcome of [`Conn::send`]: the response, or an error with the request given back when
/// it may be sent again on a fresh connection.
pub type SendOutcome = Result<UpstreamResponse, SendFailure>;

/// An upstream's response head and body, boxed once for the same reason as
/// [`UpstreamRequest`]: it travels up through as many futures.
pub type UpstreamResponse = Box<Response<UpstreamBody>>;

impl Pool {
    /// A connection to `target`: an idle pooled one when there is one, else a new one.
    pub async fn checkout(&self, upstream: &Upstream, target: &Target) -> Result<Conn, ProxyError> {
        if upstream.protocol == Protocol::Http2 {
            let existing = self.inner.h2.borrow().get(&target.pool_key).cloned();
            if let Some(sender) = existing.filter(|s| !s.is_closed()) {
                return Ok(self.conn(Sender::H2(sender), true, upstream, target));
            }
            return self.checkout_h2(upstream, target).await;
        } else if let Some(conn) = self.take_idle(target.pool_key, upstream.idle_timeout) {
            return Ok(self.conn(Sender::H1(conn), true, upstream, target));
        }
        self.checkout_fresh(upstream, target).await
    }

    /// A new HTTP/2 connection to `target`, or the one another request is opening.
    async fn checkout_h2(&self, upstream: &Upstream, target: &Target) -> Result<Conn, ProxyError> {
        let key = target.pool_key;
        let pending = self.inner.h2_connecting.borrow().get(&key).cloned();
        if let Some(pending) = pending {
            // Registered before awaiting, so the wake-up cannot be missed.
            pending.done.notified().await;
            let outcome = pending.outcome.borrow().clone();
            match outcome {
                Some(Ok(sender)) => {
                    return Ok(self.conn(Sender::H2(sender), false, upstream, target))
                }
                Some(Err(e)) => return Err(e),
                // The request opening it went away before the end: open one ourselves.
                None => {}
            }
        }
        let connecting = Rc::new(H2Connecting::default());
        self.inner
            .h2_connecting
            .borrow_mut()
            .insert(key, connecting.clone());
        let _guard = ConnectingGuard {
            pool: self.inner.clone(),
            key,
            connecting: connecting.clone(),
        };
        let result = self.checkout_fresh(upstream, target).await;
        *connecting.outcome.borrow_mut() = Some(match &result {
            Ok(Conn {
                sender: Sender::H2(s),
                ..
            }) => Ok(s.clone()),
            Ok(_) => Err(ProxyError::new(
                sluicegate_core::error::Source::Internal,
                Kind::Internal,
                "an HTTP/2 upstream gave an HTTP/1.1 connection",
            )),
            Err(e) => Err(e.clone()),
        });
        result
    }

    /// A new connection to `target`, bypassing idle ones.
    pub async fn checkout_fresh(
        &self,
        upstream: &Upstream,
        target: &Target,
    ) -> Result<Conn, ProxyError> {
        let sender = connect(upstream, target).await?;
        if let Sender::H2(s) = &sender {
            self.inner
                .h2
                .borrow_mut()
                .insert(target.pool_key, s.clone());
        }
        Ok(self.conn(sender, false, upstream, target))
    }

    fn conn(&self, sender: Sender, reused: bool, upstream: &Upstream, target: &Target) -> Conn {
        Conn {
            sender,
            reused,
            key: target.pool_key,
            max_idle: upstream.max_idle,
            idle_timeout: upstream.idle_timeout,
            pool: self.inner.clone(),
        }
    }

    fn take_idle(&self, key: u64, idle_timeout: Duration) -> Option<Box<H1Conn>> {
        let mut idle = self.inner.idle.borrow_mut();
        let queue = idle.get_mut(&key)?;
        let now = coarse_now();
        // Most recently used first: it is the least likely to have been closed by the peer.
        while let Some(mut entry) = queue.pop_back() {
            if now.saturating_duration_since(entry.since) > idle_timeout {
                continue;
            }
            if entry.conn.is_idle_usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Closes idle connections past their idle timeout or closed by the peer, and HTTP/2
    /// connections that ended. Called periodically by the worker.
    pub fn reap(&self) {
        let now = coarse_now();
        let mut idle = self.inner.idle.borrow_mut();
        for queue in idle.values_mut() {
            queue.retain_mut(|e| {
                now.saturating_duration_since(e.since) <= e.idle_timeout && e.conn.is_idle_usable()
            });
        }
        idle.retain(|_, q| !q.is_empty());
        self.inner.h2.borrow_mut().retain(|_, s| !s.is_closed());
    }
}

impl Conn {
    /// Sends `req` and waits for the response head.
    /// `added`: the gateway's forwarding headers, written into an HTTP/1.1 head (an
    /// HTTP/2 request carries them in its map already).
    pub async fn send(self, req: UpstreamRequest, added: Option<&ForwardedHeaders>) -> SendOutcome {
        match self.sender {
            Sender::H1(conn) => {
                let handle = PoolHandle {
                    pool: self.pool,
                    key: self.key,
                    max_idle: self.max_idle,
                    idle_timeout: self.idle_timeout,
                };
                conn.send(req, added, handle).await
            }
            Sender::H2(mut sender) => match sender.try_send_request(*req).await {
                Ok(resp) => Ok(Box::new(resp.map(UpstreamBody::H2))),
                Err(mut e) => {
                    self.pool.h2.borrow_mut().remove(&self.key);
                    let retry = e.take_message().filter(|_| self.reused).map(Box::new);
                    Err(SendFailure {
                        error: send_error(e.error()),
                        retry,
                    })
                }
            },
        }
    }
}

fn send_error(e: &hyper::Error) -> ProxyError {
    if e.is_timeout() || is_io_timeout(e) {
        ProxyError::upstream(Kind::UpstreamTimeout, "upstream write timed out")
    } else {
        ProxyError::upstream(
            Kind::UpstreamProtocol,
            format!("upstream connection failed: {e}"),
        )
    }
}

fn is_io_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

async fn connect(upstream: &Upstream, target: &Target) -> Result<Sender, ProxyError> {
    let timeout = upstream.connect_timeout;
    let unreachable = |why: String| {
        ProxyError::upstream(
            Kind::UpstreamConnect,
            format!(
                "cannot connect to upstream `{}` target {}: {why}",
                upstream.name, target.address
            ),
        )
    };
    let connecting = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream = match &upstream.tls {
            None => UpstreamIo::Plain(tcp),
            Some(tls) => {
                let server_name =
                    super::tls::server_name(tls, &target.host).map_err(unreachable)?;
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let tls_stream = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| unreachable(super::tls::handshake_error(&e, &server_name)))?;
                // HTTP/2 over TLS is agreed by ALPN (RFC 9113 §3.2): without it the upstream
                // would read the connection preface as garbage.
                if upstream.protocol == Protocol::Http2
                    && tls_stream.get_ref().1.alpn_protocol() != Some(b"h2")
                {
                    return Err(unreachable(
                        "the upstream did not agree to HTTP/2 (ALPN `h2`) during the TLS handshake; \
                         set `protocol: http1` or enable HTTP/2 on it"
                            .into(),
                    ));
                }
                UpstreamIo::Tls(Box::new(tls_stream))
            }
        };
        Ok::<_, ProxyError>(stream)
    };
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => r?,
        Err(_) => return Err(unreachable(format!("connect timed out after {timeout:?}"))),
    };
    let stream = WriteTimeout::new(stream, upstream.write_timeout);
    match upstream.protocol {
        Protocol::Http1 => Ok(Sender::H1(Box::new(H1Conn::new(stream)))),
        Protocol::Http2 => {
            let (sender, conn) = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(format!("HTTP/2 handshake failed: {e}")))?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            Ok(Sender::H2(sender))
        }
    }
}

/// An upstream stream with its write timeout.
pub type UpstreamStream = WriteTimeout<UpstreamIo>;

/// A plain or TLS upstream stream.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Fails a write that makes no progress for `timeout`. The timer is armed only while a
/// write is blocked, so an upstream that keeps reading costs nothing.
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            sleep: None,
        }
    }

    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match std::future::Future::poll(sleep.as_mut(), cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream write timed out",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.on_pending(cx),
            ready => {
                this.sleep = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.on_pending(cx),
            ready => {
                this.sleep = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
