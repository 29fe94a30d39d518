//! Idle HTTP/1.1 connections, parked: a keep-alive connection that has been silent for
//! [`PARK_AFTER`] leaves its task. Its buffers, its loop's state and its tokio registration
//! are freed, and what is left (the socket, and for TLS the session's state) waits in this
//! worker's lot. The lot watches the parked sockets with an epoll set of its own, which is
//! itself one readable descriptor in the worker's runtime. When a parked client sends again
//! or hangs up, its connection gets a new task and carries on where it was. The keep-alive
//! timeout keeps counting while a connection is parked; the lot closes a connection whose
//! timeout has passed, and closes every parked connection when the worker drains.
//!
//! An idle connection costs the lot one slot (about 80 bytes). nginx frees the buffers
//! of idle connections for the same reason. Connections that are busy never park: the
//! first silent second costs one deadline on the coarse clock, which the loop arms anyway
//! for the keep-alive timeout.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use sluicegate_proxy::worker::{Tracker, Worker};

/// How long an HTTP/1.1 connection waits for its next request with its task and buffers.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The allocator's collection, run (at most once a second per worker, and only while none
/// of its connections has a task) after connections were parked, so that the memory their
/// tasks and buffers used goes back to the system.
static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets the collection [`Lot`]s run after parking connections (the binary sets its
/// allocator's); without one, freed memory stays with the allocator.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// A TLS connection's socket, which can leave the runtime while its TLS session is parked.
#[derive(Debug)]
pub enum Sock {
    /// Registered with the worker's runtime.
    Live(TcpStream),
    /// Parked: a plain descriptor, watched by the lot.
    Parked(std::net::TcpStream),
    /// Lost while changing state (the socket is closed).
    Closed,
}

impl Sock {
    /// Takes the socket out of the runtime. On an error the socket is closed.
    fn park(&mut self) -> io::Result<()> {
        if let Sock::Live(s) = std::mem::replace(self, Sock::Closed) {
            *self = Sock::Parked(s.into_std()?);
        }
        Ok(())
    }

    /// Registers the socket with the current runtime again.
    fn unpark(&mut self) -> io::Result<()> {
        if let Sock::Parked(s) = std::mem::replace(self, Sock::Closed) {
            *self = Sock::Live(TcpStream::from_std(s)?);
        }
        Ok(())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Sock::Live(s) => Some(s.as_raw_fd()),
            Sock::Parked(s) => Some(s.as_raw_fd()),
            Sock::Closed => None,
        }
    }

    fn live(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self {
            Sock::Live(s) => Ok(Pin::new(s)),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The TLS stream of a TLS listener's connection.
pub type TlsStream = tokio_rustls::server::TlsStream<Sock>;

/// A client connection's stream, live or parked.
pub enum Stream<P> {
    Plain(P),
    /// Boxed while parked: the TLS session is much larger than a plain slot.
    Tls(Box<TlsStream>),
}

/// A parked connection.
pub struct Parked {
    stream: Stream<std::net::TcpStream>,
    meta: Meta,
}

/// What a parked connection's next task needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub client: SocketAddr,
    pub listener: usize,
    /// When its keep-alive timeout ends (`None` before it first idled).
    pub expires: Option<Instant>,
    /// Whether it has served no request yet (its first bytes may still be an h2c preface).
    pub fresh: bool,
}

impl Stream<TcpStream> {
    /// Takes the stream out of the runtime. On an error the connection is closed.
    fn park(self) -> io::Result<Stream<std::net::TcpStream>> {
        Ok(match self {
            Stream::Plain(s) => Stream::Plain(s.into_std()?),
            Stream::Tls(mut s) => {
                s.get_mut().0.park()?;
                Stream::Tls(s)
            }
        })
    }
}

impl Stream<std::net::TcpStream> {
    /// Registers the stream with the current runtime again.
    fn unpark(self) -> io::Result<Stream<TcpStream>> {
        Ok(match self {
            Stream::Plain(s) => Stream::Plain(TcpStream::from_std(s)?),
            Stream::Tls(mut s) => {
                s.get_mut().0.unpark()?;
                Stream::Tls(s)
            }
        })
    }

    fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Plain(s) => Some(s.as_raw_fd()),
            Stream::Tls(s) => s.get_ref().0.raw_fd(),
        }
    }
}

/// One worker's parked connections.
pub struct Lot {
    registry: mio::Registry,
    slots: RefCell<Slots>,
    /// The epoll set, taken by [`Lot::run`].
    poll: Cell<Option<mio::Poll>>,
    /// Set when the epoll set cannot be watched: idle connections are then closed.
    broken: Cell<bool>,
    /// Connections parked since the allocator last collected.
    parked_since_release: Cell<usize>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Parked>>,
    free: Vec<usize>,
}

/// What the lot hands back to the worker: a connection to serve again.
pub type Resume = Box<dyn Fn(Stream<TcpStream>, Meta)>;

impl Lot {
    pub fn new() -> io::Result<Rc<Lot>> {
        let poll = mio::Poll::new()?;
        Ok(Rc::new(Lot {
            registry: poll.registry().try_clone()?,
            slots: RefCell::new(Slots::default()),
            poll: Cell::new(Some(poll)),
            broken: Cell::new(false),
            parked_since_release: Cell::new(0),
        }))
    }

    /// Whether connections can be parked (the lot's epoll set is watched).
    pub fn open(&self) -> bool {
        !self.broken.get()
    }

    /// Parks a connection until its client speaks, hangs up or its keep-alive timeout
    /// (`meta.expires`) passes; closes it instead when the worker drains or the socket
    /// cannot leave the runtime.
    pub fn park(&self, worker: &Worker, stream: Stream<TcpStream>, meta: Meta) {
        let metrics = &worker.shared.metrics;
        match self.try_park(worker, stream, meta) {
            Ok(()) => {
                self.parked_since_release
                    .set(self.parked_since_release.get() + 1);
                metrics.parked_connections.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                tracing::debug!(client = %meta.client, reason = %why, "An idle connection was closed instead of parked.");
                metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn try_park(&self, worker: &Worker, stream: Stream<TcpStream>, meta: Meta) -> io::Result<()> {
        if worker.drain.is_draining() || self.broken.get() {
            return Err(io::Error::other("the worker is draining"));
        }
        let stream = stream.park()?;
        let fd = stream.raw_fd().ok_or(io::ErrorKind::NotConnected)?;
        let mut slots = self.slots.borrow_mut();
        let key = match slots.free.pop() {
            Some(k) => k,
            None => {
                slots.entries.push(None);
                slots.entries.len() - 1
            }
        };
        // Edge-triggered, and reported at once if the client already sent something.
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
        {
            slots.free.push(key);
            return Err(e);
        }
        slots.entries[key] = Some(Parked { stream, meta });
        Ok(())
    }

    /// Takes entry `key` out of the epoll set and the table.
    fn take(&self, slots: &mut Slots, key: usize) -> Option<Parked> {
        let entry = slots.entries.get_mut(key)?.take()?;
        slots.free.push(key);
        if let Some(fd) = entry.stream.raw_fd() {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
        Some(entry)
    }

    /// Closes the connections whose keep-alive timeout has passed (`all`: every one).
    pub fn close_expired(&self, worker: &Worker, now: Instant, all: bool) {
        let mut slots = self.slots.borrow_mut();
        let mut closed: i64 = 0;
        for key in 0..slots.entries.len() {
            let due = slots.entries[key]
                .as_ref()
                .is_some_and(|e| all || e.meta.expires.is_none_or(|at| at <= now));
            if due && self.take(&mut slots, key).is_some() {
                closed += 1;
            }
        }
        if closed > 0 {
            let metrics = &worker.shared.metrics;
            metrics
                .parked_connections
                .fetch_sub(closed, Ordering::Relaxed);
            metrics
                .active_connections
                .fetch_sub(closed, Ordering::Relaxed);
            tracing::debug!(closed, "Parked idle connections closed.");
        }
    }

    /// Hands every parked connection its client wakes to `resume`, and closes expired ones
    /// every second, until the worker stops this task.
    pub async fn run(self: Rc<Self>, worker: Rc<Worker>, tracker: Rc<Tracker>, resume: Resume) {
        let Some(poll) = self.poll.take() else { return };
        let mut poll = match watch(poll) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "The idle-connection lot cannot be watched; idle connections keep their tasks.");
                self.broken.set(true);
                return;
            }
        };
        let mut events = Events::with_capacity(256);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ready = poll.readable_mut() => {
                    let polled = ready.and_then(|mut guard| {
                        events.clear();
                        guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO))?;
                        Ok(guard)
                    });
                    let mut guard = match polled {
                        Ok(guard) => guard,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // Nothing parked could be woken any more: close it all, and
                            // let idle connections keep their tasks from now on.
                            tracing::error!(error = %e, "The idle-connection lot failed; its connections are closed.");
                            self.broken.set(true);
                            self.close_expired(&worker, Instant::now(), true);
                            return;
                        }
                    };
                    if events.iter().count() < events.capacity() {
                        guard.clear_ready();
                    }
                    for event in events.iter() {
                        let entry = self.take(&mut self.slots.borrow_mut(), event.token().0);
                        let Some(Parked { stream, meta }) = entry else { continue };
                        worker.shared.metrics.parked_connections.fetch_sub(1, Ordering::Relaxed);
                        match stream.unpark() {
                            Ok(stream) => resume(stream, meta),
                            Err(e) => {
                                tracing::debug!(client = %meta.client, error = %e, "A parked connection could not be resumed; closed.");
                                worker.shared.metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                _ = sweep.tick() => {
                    self.close_expired(&worker, Instant::now(), false);
                    // Returning the pages takes from under a millisecond to ~20 ms for
                    // thousands of connections: done only when no connection task is left
                    // on the worker, so that no request waits for it.
                    if self.parked_since_release.get() > 0 && tracker.active.get() == 0 {
                        self.parked_since_release.set(0);
                        if let Some(release) = RELEASE.get() {
                            let started = std::time::Instant::now();
                            release();
                            tracing::debug!(
                                micros = started.elapsed().as_micros() as u64,
                                "Memory of parked connections released."
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Registers the epoll set with the worker's runtime, as one readable descriptor.
#[allow(unsafe_code)]
fn watch(poll: mio::Poll) -> io::Result<AsyncFd<mio::Poll>> {
    // SAFETY: the descriptor is the epoll instance the `mio::Poll` owns. It stays open, and
    // the same, until the `Poll` is dropped, and the `AsyncFd` owns the `Poll` (it is never
    // taken out with `into_inner`).
    unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
