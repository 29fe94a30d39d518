//! A worker: one OS thread with its own single-threaded tokio runtime, its own upstream
//! connection pool (and, for scripts, its own Lua VM), accepting on its own `SO_REUSEPORT`
//! copy of every listener socket. Nothing it does per request crosses threads except
//! loading the snapshot and relaxed metric counters.
//!
//! Shutdown: when `Shared::shutdown` flips, the worker stops accepting, asks every
//! connection to finish its current request and close (graceful shutdown), and waits for
//! them up to the drain timeout.

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::conn::{ConnIo, ConnPhase, ConnState};
use super::h1;
use super::park::{self, Lot, Meta, Sock, Stream, PARK_AFTER};
use sluicegate_core::LocalExec;
use sluicegate_http1::Rewind;
use sluicegate_proxy::snapshot::Shared;
use sluicegate_proxy::worker::{Tracker, Worker};
use sluicegate_proxy::{self, ConnInfo};

/// Runs worker `id` on the current thread until shutdown; `sockets[i]` is this worker's
/// copy of listener `i`.
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    sockets: Vec<std::net::TcpListener>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let worker = Worker::new(
            id,
            shared.clone(),
            sluicegate_lua::WorkerLua::new(lua_runtime(id, &shared)),
        );
        let tracker = worker.tracker.clone();
        let ticker = tokio::task::spawn_local(sluicegate_core::clock::run_ticker(
            sluicegate_telemetry::flush_access_log,
        ));
        let reaper = {
            let worker = worker.clone();
            tokio::task::spawn_local(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    every.tick().await;
                    worker.pool.reap();
                }
            })
        };
        let lot = Lot::new()?;
        let parking = {
            let (w, t, l) = (worker.clone(), tracker.clone(), lot.clone());
            let resume: park::Resume = Box::new(move |stream, meta| {
                tokio::task::spawn_local(serve(
                    w.clone(),
                    t.clone(),
                    l.clone(),
                    Arrival::Resumed(stream),
                    meta,
                ));
            });
            tokio::task::spawn_local(lot.clone().run(worker.clone(), tracker.clone(), resume))
        };
        let mut accepting = Vec::new();
        for (index, socket) in sockets.into_iter().enumerate() {
            let listener = TcpListener::from_std(socket)?;
            accepting.push(tokio::task::spawn_local(accept_loop(
                worker.clone(),
                tracker.clone(),
                lot.clone(),
                index,
                listener,
            )));
        }
        let mut shutdown = shared.shutdown.subscribe();
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        for task in &accepting {
            task.abort();
        }
        worker.drain.start();
        // Parked connections are idle: closed now, as an idle keep-alive one would be.
        parking.abort();
        lot.close_expired(&worker, tokio::time::Instant::now(), true);
        reaper.abort();
        let drain = shared.drain_timeout();
        let drained = tokio::time::timeout(drain, async {
            while tracker.active.get() > 0 {
                tracker.idle.notified().await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                worker = id,
                connections = tracker.active.get(),
                "Drain timeout reached; closing remaining connections."
            );
        }
        // Stopped last: draining connections still need their timeouts.
        ticker.abort();
        Ok(())
    })
}

/// What this worker's Lua VM needs from the process.
fn lua_runtime(id: usize, shared: &Arc<Shared>) -> sluicegate_lua::Runtime {
    let settings_source = shared.clone();
    sluicegate_lua::Runtime {
        dicts: shared.lua_dicts.clone(),
        metrics: shared.metrics.clone(),
        settings: Arc::new(move || settings_source.snapshot.load().lua.clone()),
        worker_id: id,
        worker_count: shared.workers,
        queues: {
            let shared = shared.clone();
            Arc::new(move || {
                let queues: Arc<dyn sluicegate_lua::QueueService> =
                    Arc::new(crate::services::ScriptQueues(shared.queues()));
                Some(queues)
            })
        },
        http_tls: crate::services::http_tls,
        upstreams: {
            let shared = shared.clone();
            Arc::new(move |name, target| shared.snapshot.load().choose_upstream(name, target))
        },
    }
}

async fn accept_loop(
    worker: Rc<Worker>,
    tracker: Rc<Tracker>,
    lot: Rc<Lot>,
    index: usize,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let metrics = &worker.shared.metrics;
                metrics.accepted_connections.fetch_add(1, Ordering::Relaxed);
                metrics.active_connections.fetch_add(1, Ordering::Relaxed);
                let meta = Meta {
                    client: addr,
                    listener: index,
                    expires: None,
                    fresh: true,
                };
                tokio::task::spawn_local(serve(
                    worker.clone(),
                    tracker.clone(),
                    lot.clone(),
                    Arrival::Accepted(stream),
                    meta,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "Accept failed.");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// How a connection reaches its task.
enum Arrival {
    Accepted(TcpStream),
    /// Back from the lot.
    Resumed(Stream<TcpStream>),
}

/// Serves one connection until it closes (counted out of the active connections) or
/// parks (still active, in the lot).
async fn serve(
    worker: Rc<Worker>,
    tracker: Rc<Tracker>,
    lot: Rc<Lot>,
    arrival: Arrival,
    meta: Meta,
) {
    let _active = tracker.enter();
    let metrics = worker.shared.metrics.clone();
    if let Some((stream, meta)) = serve_inner(worker.clone(), arrival, meta, lot.open()).await {
        lot.park(&worker, stream, meta);
    } else {
        metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the connection; returns it when it idled long enough to be parked.
async fn serve_inner(
    worker: Rc<Worker>,
    arrival: Arrival,
    meta: Meta,
    parking: bool,
) -> Option<(Stream<TcpStream>, Meta)> {
    // The listener's settings, not the snapshot: a connection that stays open across
    // configuration changes keeps no old routing table alive.
    let settings = worker
        .shared
        .snapshot
        .load()
        .listeners
        .get(meta.listener)
        .unwrap_or(sluicegate_proxy::settings::ListenerSettings::fallback())
        .clone();
    let settings = &*settings;
    let state = Arc::new(ConnState::default());
    let limits = h1::Limits {
        // The driver answers 431 for heads over the listener's limit (with the request
        // id and a log line); the loop only bounds its buffer, with room for the rest.
        max_head_bytes: (settings.max_header_bytes + 64 * 1024).max(16 * 1024),
        // The h2c preface is only looked for before the first request.
        h2c: settings.http2 && meta.fresh,
        send_timeout: settings.send_timeout,
    };
    let timeout = settings.header_timeout;
    let client_ip = http::HeaderValue::from_str(&meta.client.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    let info = |tls: bool, state: &Arc<ConnState>| {
        Rc::new(ConnInfo {
            client_addr: meta.client,
            listener: meta.listener,
            client_ip: client_ip.clone(),
            tls,
            state: state.clone(),
        })
    };
    let stream = match arrival {
        Arrival::Accepted(stream) => match settings.tls.clone() {
            None => Stream::Plain(stream),
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let handshake = acceptor.accept(Sock::Live(stream));
                match tokio::time::timeout(timeout, handshake).await {
                    Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::debug!(client = %meta.client, error = %e, "TLS handshake failed.");
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!(client = %meta.client, "TLS handshake timed out.");
                        return None;
                    }
                }
            }
        },
        Arrival::Resumed(stream) => stream,
    };
    match stream {
        Stream::Plain(stream) => {
            let info = info(false, &state);
            let io = conn_io(stream, state, timeout, &meta, parking);
            match h1::serve(io, worker.clone(), info.clone(), limits, meta.fresh).await {
                h1::Served::Done => None,
                h1::Served::Idle(io, fresh) => parked(io, fresh, meta, Stream::Plain),
                h1::Served::Http2(io, preface) => {
                    drive_h2(settings, Rewind::new(io, preface), worker, info).await;
                    None
                }
            }
        }
        Stream::Tls(stream) => {
            let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if alpn_h2 {
                state.set(ConnPhase::H2);
            }
            let info = info(true, &state);
            let io = conn_io(*stream, state, timeout, &meta, parking);
            if alpn_h2 {
                drive_h2(settings, io, worker, info).await;
                return None;
            }
            let limits = h1::Limits {
                h2c: false,
                ..limits
            };
            match h1::serve(io, worker, info, limits, meta.fresh).await {
                h1::Served::Idle(io, fresh) => {
                    parked(io, fresh, meta, |s| Stream::Tls(Box::new(s)))
                }
                h1::Served::Done | h1::Served::Http2(..) => None,
            }
        }
    }
}

/// The connection's I/O with its timeouts; an HTTP/1.1 connection asks to be parked once
/// idle for [`PARK_AFTER`].
fn conn_io<T>(
    inner: T,
    state: Arc<ConnState>,
    timeout: Duration,
    meta: &Meta,
    parking: bool,
) -> ConnIo<T> {
    let io = ConnIo::new(inner, state, timeout);
    let io = if parking {
        io.parking(PARK_AFTER, meta.expires)
    } else {
        io
    };
    if meta.fresh {
        io
    } else {
        io.without_preface()
    }
}

/// What the lot keeps of an idle connection.
fn parked<T>(
    io: ConnIo<T>,
    fresh: bool,
    meta: Meta,
    wrap: impl FnOnce(T) -> Stream<TcpStream>,
) -> Option<(Stream<TcpStream>, Meta)> {
    let (inner, expires) = io.into_parts();
    Some((
        wrap(inner),
        Meta {
            expires,
            fresh,
            ..meta
        },
    ))
}

/// Serves an HTTP/2 connection with hyper until it ends or the worker drains.
async fn drive_h2<I>(
    settings: &sluicegate_proxy::settings::ListenerSettings,
    io: I,
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // The listener's header limit applies to HTTP/2 header lists too.
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let client = info.client_addr;
    let signal = worker.clone();
    // Boxed: hyper keeps the request's future by value in its stream task, so an unboxed
    // one (KiBs) would be copied in on every request.
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        Box::pin(sluicegate_proxy::handle(
            worker.clone(),
            info.clone(),
            req.map(sluicegate_core::body::ClientStream::H2),
        ))
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut registration = signal.drain.slot();
    let mut asked = false;
    let result = std::future::poll_fn(|cx| {
        if !asked && registration.is_draining() {
            asked = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if !asked {
            registration.watch(cx.waker());
        }
        Poll::Pending
    })
    .await;
    drop(registration);
    if let Err(e) = result {
        tracing::debug!(client = %client, error = %e, "HTTP/2 client connection ended with an error.");
    }
}
