//! The running gateway: binds listener sockets (one `SO_REUSEPORT` copy per worker),
//! starts the server's worker threads, the admin listener, the reloader and the control
//! thread's tasks, and stops them gracefully.
//!
//! [`Gateway::start`] is what `sluicegate run` and the end-to-end tests both use: it returns
//! once every socket is bound, with the addresses actually bound (so port 0 works).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::state::{self, Shared};
use sluicegate_telemetry::Metrics;

/// A running gateway.
pub struct Gateway {
    /// Shared state (snapshot, metrics, reload channel).
    pub shared: Arc<Shared>,
    /// Bound address of each listener, in configuration order.
    pub listeners: Vec<SocketAddr>,
    /// Bound admin address, if any.
    pub admin: Option<SocketAddr>,
    /// The node's view of its cluster, in cluster mode.
    pub cluster: Option<Arc<sluicegate_cluster::Cluster>>,
    workers: Vec<JoinHandle<std::io::Result<()>>>,
    control: Option<JoinHandle<()>>,
    control_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Binds `address`. With `reuse_port`, several sockets (one per worker) share the port;
/// without it the bind fails if anyone else holds the port, which is how a second gateway
/// on the same address is refused instead of silently sharing its traffic.
fn bind(address: &str, reuse_port: bool) -> anyhow::Result<std::net::TcpListener> {
    let addr: SocketAddr = address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve `{address}`"))?
        .next()
        .with_context(|| format!("`{address}` resolves to nothing"))?;
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    // nginx's default backlog on Linux is 511; a deeper queue absorbs accept bursts.
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Gateway {
    /// Loads `config`, binds every socket, and starts workers, admin API and reloader.
    pub fn start(config: &Path) -> anyhow::Result<Gateway> {
        // The compatibility APIs (cosockets, Envoy filters) go into every VM the workers
        // create; registering them again is a no-op.
        sluicegate_luacompat::install();
        let metrics = Arc::new(Metrics::default());
        // Loaded once: with a worker count of 0 the snapshot sizes itself for the workers its
        // own `workers` setting gives.
        let mut snapshot =
            crate::config::load_snapshot(config, 1, 0, &metrics).map_err(anyhow::Error::new)?;
        // Cluster mode: the store's entities (or, with the store down, the last applied
        // copy) complete the file before anything binds.
        let cluster = match &snapshot.settings.cluster {
            Some(cs) => {
                let cluster = Arc::new(crate::cluster::initial(cs, &snapshot.settings.data_dir)?);
                snapshot = crate::config::load_snapshot_with(
                    config,
                    1,
                    0,
                    &metrics,
                    Some(&cluster.applied()),
                )
                .map_err(anyhow::Error::new)?;
                Some(cluster)
            }
            None => None,
        };
        let workers = snapshot.settings.worker_count();
        let mut sockets: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            let resolved: SocketAddr = l
                .address
                .to_socket_addrs()?
                .next()
                .with_context(|| format!("`{}` resolves to nothing", l.address))?;
            if resolved.port() != 0 {
                // Probe without SO_REUSEPORT: fails if another process holds the address.
                // (Port 0 needs no probe: the kernel hands out a free port; probing it would
                // free it again for a moment, for anyone to take.)
                drop(bind(&l.address, false)?);
            }
            let first = bind(&resolved.to_string(), true)?;
            let addr = first.local_addr()?;
            bound.push(addr);
            sockets[0].push(first);
            for per_worker in sockets.iter_mut().skip(1) {
                per_worker.push(bind(&addr.to_string(), true)?);
            }
        }
        let admin_listener = match &snapshot.settings.admin_address {
            Some(a) => Some(bind(a, false)?),
            None => None,
        };
        let admin = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        snapshot.queues = sluicegate_queue::open_all(
            &snapshot.settings.data_dir,
            &snapshot.queued_routes(),
            Some(Arc::new(sluicegate_engines::Available)),
        )?;
        // The first code set (persisted pushes, the directory, the last good code-API
        // document) is in place before any worker serves.
        let code = Arc::new(sluicegate_code::CodeRegistry::default());
        sluicegate_code::start(&code, &snapshot.settings.data_dir, snapshot.code.as_deref());
        let shared = Arc::new(Shared {
            swapped: watch::Sender::new(snapshot.version),
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            started: Instant::now(),
            workers,
            reload_tx,
            shutdown,
            lua_dicts: Arc::default(),
            code,
        });
        let mut handles = Vec::new();
        for (id, socks) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sluicegate-worker-{id}"))
                    .spawn(move || sluicegate_server::worker::run(id, shared, socks))?,
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let control_shared = shared.clone();
        let control_cluster = cluster.clone();
        let builds = Arc::new(crate::config::LastBuilds::empty());
        let control = std::thread::Builder::new()
            .name("sluicegate-control".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("sluicegate-control")
                    // The blocking threads (snapshot builds for reloads, cluster revisions
                    // and code sets, the cluster copy, freeing replaced snapshots) are
                    // paced: a worker sharing their core waits for them about 0.2 ms at most.
                    .on_thread_start(sluicegate_core::pace::background)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "Cannot start the control runtime.");
                        return;
                    }
                };
                rt.block_on(async move {
                    tokio::spawn(state::reloader(
                        control_shared.clone(),
                        control_cluster.clone(),
                        builds.clone(),
                        reload_rx,
                    ));
                    if let Some(c) = &control_cluster {
                        let data_dir = control_shared.snapshot.load().settings.data_dir.clone();
                        tokio::spawn(sluicegate_cluster::follow::run(
                            c.clone(),
                            data_dir,
                            crate::cluster::Applier {
                                shared: control_shared.clone(),
                                cluster: c.clone(),
                            },
                        ));
                    }
                    tokio::spawn(crate::code_sources::api::poll(control_shared.clone()));
                    tokio::spawn(crate::code_sources::directory::watch(
                        control_shared.clone(),
                    ));
                    tokio::spawn(crate::config::watch::watch(control_shared.clone()));
                    tokio::spawn(crate::supervisor::run(control_shared.clone()));
                    if let Some(l) = admin_listener {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(crate::admin::serve(
                                    crate::admin::AdminState {
                                        shared: control_shared.clone(),
                                        cluster: control_cluster.clone(),
                                        builds,
                                    },
                                    l,
                                ));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "Cannot start the admin listener.")
                            }
                        }
                    }
                    let _ = stop_rx.await;
                });
            })?;
        // The first requests find host-name targets resolved (bounded by the DNS timeouts).
        crate::supervisor::wait_first_answers(&shared);
        for (l, addr) in shared.snapshot.load().listeners.iter().zip(&bound) {
            tracing::info!(listener = %l.name, address = %addr, tls = l.tls.is_some(), workers, "Listening.");
        }
        if let Some(a) = admin {
            tracing::info!(address = %a, "Admin API listening.");
        }
        Ok(Gateway {
            shared,
            listeners: bound,
            admin,
            cluster,
            workers: handles,
            control: Some(control),
            control_stop: Some(stop_tx),
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), and
    /// waits for every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // `send_replace`, not `send`: a worker that has not subscribed yet (a stop right after
        // start) must still find the flag set when it does.
        self.shared.shutdown.send_replace(true);
        for h in self.workers.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "Worker stopped with an error."),
                Err(_) => tracing::error!("Worker thread panicked."),
            }
        }
        // After the workers: every request that was acknowledged has been appended.
        self.shared.queues().shutdown();
        if let Some(stop) = self.control_stop.take() {
            let _ = stop.send(());
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}
