//! A worker: one OS thread with its own single-threaded tokio runtime, its own upstream
//! connection pool (and, for scripts, its own Lua VM), accepting on its own `SO_REUSEPORT`
//! copy of every listener socket. Nothing it does per request crosses threads except
//! loading the snapshot and relaxed metric counters.
//!
//! Shutdown: when `Shared::shutdown` flips, the worker stops accepting, asks every
//! connection to finish its current request and close (graceful shutdown), and waits for
//! them up to the drain timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::conn::{ConnIo, ConnPhase, ConnState};
use super::h1;
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
        let mut accepting = Vec::new();
        for (index, socket) in sockets.into_iter().enumerate() {
            let listener = TcpListener::from_std(socket)?;
            accepting.push(tokio::task::spawn_local(accept_loop(
                worker.clone(),
                tracker.clone(),
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
    index: usize,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(serve(
                    worker.clone(),
                    tracker.clone(),
                    index,
                    stream,
                    addr,
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

async fn serve(
    worker: Rc<Worker>,
    tracker: Rc<Tracker>,
    index: usize,
    stream: TcpStream,
    addr: SocketAddr,
) {
    let metrics = worker.shared.metrics.clone();
    metrics.accepted_connections.fetch_add(1, Ordering::Relaxed);
    metrics.active_connections.fetch_add(1, Ordering::Relaxed);
    let _active = tracker.enter();
    serve_inner(worker, index, stream, addr).await;
    metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_inner(worker: Rc<Worker>, index: usize, stream: TcpStream, addr: SocketAddr) {
    let snapshot = worker.shared.snapshot.load_full();

    let settings = snapshot
        .listeners
        .get(index)
        .unwrap_or(sluicegate_proxy::settings::ListenerSettings::fallback());
    let state = Arc::new(ConnState::default());
    let mut h2 = http2::Builder::new(LocalExec);
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // The listener's header limit applies to HTTP/2 header lists too.
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let limits = h1::Limits {
        // The driver answers 431 for heads over the listener's limit (with the request
        // id and a log line); the loop only bounds its buffer, with room for the rest.
        max_head_bytes: (settings.max_header_bytes + 64 * 1024).max(16 * 1024),
        h2c: settings.http2,
        send_timeout: settings.send_timeout,
    };
    let timeout = settings.header_timeout;
    let client_ip = http::HeaderValue::from_str(&addr.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    match settings.tls.clone() {
        None => {
            let info = Rc::new(ConnInfo {
                client_addr: addr,
                listener: index,
                client_ip,
                tls: false,
                state: state.clone(),
            });
            let io = ConnIo::new(stream, state, timeout);
            if let h1::Served::Http2(io, preface) =
                h1::serve(io, worker.clone(), info.clone(), limits).await
            {
                drive_h2(&h2, Rewind::new(io, preface), worker, info).await;
            }
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let tls_stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %addr, error = %e, "TLS handshake failed.");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %addr, "TLS handshake timed out.");
                    return;
                }
            };
            let alpn_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if alpn_h2 {
                state.set(ConnPhase::H2);
            }
            let info = Rc::new(ConnInfo {
                client_addr: addr,
                listener: index,
                client_ip,
                tls: true,
                state: state.clone(),
            });
            let io = ConnIo::new(tls_stream, state, timeout);
            if alpn_h2 {
                drive_h2(&h2, io, worker, info).await;
            } else {
                let limits = h1::Limits {
                    h2c: false,
                    ..limits
                };
                let _ = h1::serve(io, worker, info, limits).await;
            }
        }
    }
}

/// Serves an HTTP/2 connection with hyper until it ends or the worker drains.
async fn drive_h2<I>(
    builder: &http2::Builder<LocalExec>,
    io: I,
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
