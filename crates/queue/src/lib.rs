//! The durable queue on the HTTP side: routes marked `queue:` append each request (after
//! their rewrite and access plugins) to a queue and answer only once it is fsynced; a
//! delivery thread sends every message to the route's upstream until it answers 2xx,
//! retrying with backoff, and moves what never succeeds to a dead-letter store.
//!
//! Ownership and invariants:
//! - [`Queues`] is the one registry of open queues. It lives outside the configuration
//!   snapshot's lifetime: every snapshot holds the same `Arc<Queues>` (the reloader carries
//!   it over), so a reload never reopens a queue. A reload that adds a queue opens it; one
//!   that changes a queue's settings applies its delivery settings live; one that drops a
//!   queue's route pauses its delivery (the messages stay).
//! - A queue is a directory `data_dir/queues/NAME/` owned by one process at a time (a
//!   `flock` on `NAME/LOCK`); storage is behind [`backend::QueueBackend`].
//! - Nothing acknowledged is lost: the client's answer waits for the backend's durable
//!   append; a message leaves the queue only by a durable ack (after a 2xx) or by becoming
//!   a dead letter. Delivery is at-least-once (a crash between the upstream's 2xx and the
//!   ack delivers again; such duplicates are counted).
//! - Bounded: an append that would pass `max_bytes` fails with [`QueueError::Full`]
//!   (503 + `Retry-After` on the HTTP side); stored data is never dropped to make room.
//!
//! Modules: [`config`] (route `queue:` block), [`record`] (request ↔ bytes), [`backend`]
//! (storage trait, local WAL), [`retry`] (policy, backoff), [`delivery`] (delivery thread),
//! [`client`] (its HTTP client), [`journal`] (attempt journal), [`metrics`], [`http`] (the
//! request path), [`inspect`] (JSON views shared by the admin API and the CLI).

pub mod backend;
pub mod client;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod http;
pub mod inspect;
pub mod journal;
pub mod metrics;
pub mod record;
pub mod retry;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

pub use backend::{QueueBackend, WalBackend};
pub use config::{Engine, QueueSettings, RouteQueue};

/// Opens queues on engines other than the local log (implemented by `sluicegate-engines`,
/// handed to [`Queues::with_engines`]).
pub trait Engines: Send + Sync {
    /// The backend of queue `queue` (`dir`: its local directory, for what the engine keeps
    /// on this node).
    fn open(&self, queue: &RouteQueue, dir: &Path) -> Result<Arc<dyn QueueBackend>, QueueError>;
}
pub use record::QueuedRequest;

use metrics::QueueMetrics;
use sluicegate_core::diag::{Diag, Path as ConfigPath};
use sluicegate_core::rewrite::PathRewrite;
use sluicegate_upstream::Upstream;

/// `X-Sluicegate-Message-Id`: the message id, on the acknowledgement and every delivery.
pub static MESSAGE_ID_HEADER: ::http::HeaderName =
    ::http::HeaderName::from_static("x-sluicegate-message-id");
/// `X-Sluicegate-Attempt`: 1 for the first delivery attempt, then 2, 3...
pub static ATTEMPT_HEADER: ::http::HeaderName =
    ::http::HeaderName::from_static("x-sluicegate-attempt");
/// `X-Sluicegate-Queue`: the queue's name on every delivery (ids are unique per queue).
pub static QUEUE_HEADER: ::http::HeaderName = ::http::HeaderName::from_static("x-sluicegate-queue");

/// Everything that can go wrong with a queue operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// No configured queue has this name.
    #[error("no queue named `{0}` is configured")]
    Unknown(String),
    /// The append would pass the queue's `max_bytes`.
    #[error("queue `{queue}` is full: {used} of {max} bytes used, {needed} more needed")]
    Full {
        /// Queue name.
        queue: String,
        /// Bytes used.
        used: u64,
        /// Bytes the message needs.
        needed: u64,
        /// The bound.
        max: u64,
    },
    /// The message is larger than the queue accepts.
    #[error("a message of {len} bytes exceeds the limit of {max} bytes of queue `{queue}`")]
    TooLarge {
        /// Queue name.
        queue: String,
        /// Message size.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// Storage failed earlier; writes are refused until restart.
    #[error("queue `{0}` refuses writes after a storage failure; restart the gateway")]
    Unhealthy(String),
    /// The queue was closed (the gateway is stopping).
    #[error("queue `{0}` is closed")]
    Closed(String),
    /// No pending message or dead letter with this id.
    #[error("queue `{queue}` has no message {id}")]
    NotFound {
        /// Queue name.
        queue: String,
        /// Message id.
        id: u64,
    },
    /// The operation needs a pending message, but it is a dead letter.
    #[error("message {id} of queue `{queue}` is a dead letter, not pending")]
    NotPending {
        /// Queue name.
        queue: String,
        /// Message id.
        id: u64,
    },
    /// The operation needs a dead letter.
    #[error("message {id} of queue `{queue}` is not a dead letter")]
    NotDead {
        /// Queue name.
        queue: String,
        /// Message id.
        id: u64,
    },
    /// A stored message cannot be read back (damaged on disk).
    #[error("message {id} of queue `{queue}` cannot be read: {message}")]
    Unreadable {
        /// Queue name.
        queue: String,
        /// Message id.
        id: u64,
        /// What went wrong.
        message: String,
    },
    /// Another process holds the queue's directory.
    #[error("queue `{queue}` is in use by another process (lock {path}); stop it or go through its admin API")]
    Locked {
        /// Queue name.
        queue: String,
        /// The lock file.
        path: String,
    },
    /// A storage or system error.
    #[error("queue `{queue}`: {message}")]
    Io {
        /// Queue name.
        queue: String,
        /// What failed.
        message: String,
    },
    /// The queue's backend cannot do this.
    #[error("queue `{queue}`: {what} is not supported by the {backend} backend")]
    Unsupported {
        /// Queue name.
        queue: String,
        /// The operation.
        what: String,
        /// The backend's kind.
        backend: &'static str,
    },
    /// The storage engine cannot be reached now (the caller may try again).
    #[error("queue `{queue}`: the {backend} engine is unavailable: {message}")]
    Unavailable {
        /// Queue name.
        queue: String,
        /// The backend's kind.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The request to enqueue is not valid (bad method, path or header).
    #[error("invalid message for queue `{queue}`: {message}")]
    Invalid {
        /// Queue name.
        queue: String,
        /// What is wrong.
        message: String,
    },
}

/// Where a queue's messages go: its route's upstream and path rewriting, from the
/// snapshot that last configured it.
pub struct DeliveryTarget {
    /// The route's name (for logs).
    pub route: String,
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// The route's `rewrite`, applied to each message's path at delivery.
    pub rewrite: Option<PathRewrite>,
}

/// One open queue.
pub struct Queue {
    name: String,
    dir: PathBuf,
    backend: Arc<dyn QueueBackend>,
    settings: ArcSwap<QueueSettings>,
    target: ArcSwapOption<DeliveryTarget>,
    metrics: QueueMetrics,
    /// Wakes the delivery loop: new messages, replays, new settings.
    wake: Notify,
    /// The engine settings it was opened with.
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Queue {
    /// A queue over `backend` (not yet configured: no delivery target).
    pub fn new(
        name: &str,
        dir: PathBuf,
        backend: Arc<dyn QueueBackend>,
        settings: Arc<QueueSettings>,
    ) -> Queue {
        Queue {
            name: name.to_string(),
            dir,
            backend,
            settings: ArcSwap::new(settings),
            target: ArcSwapOption::empty(),
            metrics: QueueMetrics::default(),
            wake: Notify::new(),
            engine: Arc::new(Engine::Local),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its storage.
    pub fn backend(&self) -> &Arc<dyn QueueBackend> {
        &self.backend
    }

    /// Its current settings.
    pub fn settings(&self) -> Arc<QueueSettings> {
        self.settings.load_full()
    }

    /// Its counters.
    pub fn metrics(&self) -> &QueueMetrics {
        &self.metrics
    }

    /// Where its messages go now (`None` while no route configures it).
    pub fn target(&self) -> Option<Arc<DeliveryTarget>> {
        self.target.load_full()
    }

    /// Whether a route of the current configuration uses this queue.
    pub fn configured(&self) -> bool {
        self.target.load().is_some()
    }

    /// Wakes the delivery loop (after a replay, for instance).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Appends `req`; resolves to its id once it is durable.
    pub async fn enqueue(&self, req: &QueuedRequest) -> Result<u64, QueueError> {
        if !self.configured() {
            return Err(QueueError::Unknown(self.name.clone()));
        }
        if !req.target.starts_with('/') {
            return Err(QueueError::Invalid {
                queue: self.name.clone(),
                message: "the path must start with `/`".into(),
            });
        }
        let started = Instant::now();
        let result = self.backend.append(record::encode(req)).await;
        match &result {
            Ok(_) => {
                self.metrics.ack_latency.observe(started.elapsed());
                QueueMetrics::inc(&self.metrics.enqueued);
                self.wake.notify_one();
            }
            Err(QueueError::Full { .. }) => QueueMetrics::inc(&self.metrics.rejected_full),
            Err(_) => {}
        }
        result
    }
}

/// The registry of open queues (see the module docs).
pub struct Queues {
    /// `None` for a registry that can open nothing (configuration checks).
    data_dir: Option<PathBuf>,
    map: ArcSwap<HashMap<String, Arc<Queue>>>,
    /// Serializes `apply` and `shutdown`.
    changes: Mutex<()>,
    delivery: Mutex<Option<delivery::Handle>>,
    engines: Option<Arc<dyn Engines>>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("data_dir", &self.data_dir)
            .field("queues", &self.map.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Queues {
    fn default() -> Self {
        Queues::detached()
    }
}

impl Queues {
    /// A registry that opens queues under `data_dir/queues/`.
    pub fn new(data_dir: &Path) -> Queues {
        Queues {
            data_dir: Some(data_dir.to_path_buf()),
            ..Queues::detached()
        }
    }

    /// An empty registry that cannot open queues (snapshots built only to be checked).
    pub fn detached() -> Queues {
        Queues {
            data_dir: None,
            map: ArcSwap::from_pointee(HashMap::new()),
            changes: Mutex::new(()),
            delivery: Mutex::new(None),
            engines: None,
        }
    }

    /// The same registry, able to open queues on other engines too.
    pub fn with_engines(mut self, engines: Arc<dyn Engines>) -> Queues {
        self.engines = Some(engines);
        self
    }

    /// The directory of queue `name` under `data_dir`.
    pub fn queue_dir(data_dir: &Path, name: &str) -> PathBuf {
        data_dir.join("queues").join(name)
    }

    /// The open queue `name` (configured or not).
    pub fn get(&self, name: &str) -> Option<Arc<Queue>> {
        self.map.load().get(name).cloned()
    }

    /// Every open queue, by name.
    pub fn list(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<Arc<Queue>> = self.map.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Appends `req` to queue `name`; resolves to the message id once it is durable
    /// (fsynced). This is the entry point for Lua's `sluicegate.queue.enqueue`: the future
    /// is `Send + 'static` and may be awaited on any runtime.
    pub fn enqueue(
        &self,
        name: &str,
        req: QueuedRequest,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send + 'static {
        let queue = self
            .get(name)
            .ok_or_else(|| QueueError::Unknown(name.to_string()));
        async move { queue?.enqueue(&req).await }
    }

    /// Opens the queues `snapshot` adds and applies the settings and targets of every
    /// queue it configures; queues it no longer mentions stop delivering. Either every new
    /// queue opens and everything applies, or nothing changes (the errors say why, at the
    /// route's `queue` path).
    pub fn apply(&self, routes: &[QueuedRoute<'_>]) -> Result<(), Vec<Diag>> {
        self.apply_inner(routes).map_err(|errors| {
            errors
                .into_iter()
                .map(|(i, e)| {
                    let path = ConfigPath::root().key("routes").index(i).key("queue");
                    Diag::at(&path, format!("cannot open the queue: {e}"))
                })
                .collect()
        })
    }

    fn apply_inner(&self, routes: &[QueuedRoute<'_>]) -> Result<(), Vec<(usize, QueueError)>> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        let mut opened: Vec<Arc<Queue>> = Vec::new();
        let mut errors = Vec::new();
        for route in routes {
            let (i, rq) = (route.index, route.queue);
            if current.contains_key(&rq.name) || opened.iter().any(|q| q.name == rq.name) {
                continue;
            }
            let Some(data_dir) = &self.data_dir else {
                errors.push((i, QueueError::Closed(rq.name.clone())));
                continue;
            };
            let dir = Self::queue_dir(data_dir, &rq.name);
            let backend: Result<Arc<dyn QueueBackend>, QueueError> =
                match (&*rq.engine, &self.engines) {
                    (Engine::Local, _) => WalBackend::open(&rq.name, &dir, rq.settings.max_bytes)
                        .map(|b| Arc::new(b) as Arc<dyn QueueBackend>),
                    (_, Some(engines)) => engines.open(rq, &dir),
                    (other, None) => Err(QueueError::Unsupported {
                        queue: rq.name.clone(),
                        what: "opening a queue".into(),
                        backend: other.name(),
                    }),
                };
            match backend {
                Ok(b) => {
                    let mut q = Queue::new(&rq.name, dir, b, rq.settings.clone());
                    q.engine = rq.engine.clone();
                    opened.push(Arc::new(q));
                }
                Err(e) => errors.push((i, e)),
            }
        }
        if !errors.is_empty() {
            for q in opened {
                q.backend.close();
            }
            return Err(errors);
        }
        let mut next = HashMap::clone(&current);
        for q in &opened {
            next.insert(q.name.clone(), q.clone());
        }
        let mut configured = std::collections::HashSet::new();
        for route in routes {
            let (rq, Some(upstream)) = (route.queue, route.upstream) else {
                continue;
            };
            let Some(q) = next.get(&rq.name) else {
                continue;
            };
            if q.engine != rq.engine && !opened.iter().any(|o| Arc::ptr_eq(o, q)) {
                tracing::warn!(queue = %rq.name, running = q.engine.name(), configured = rq.engine.name(), "A queue's backend settings apply when the gateway restarts.");
            }
            configured.insert(rq.name.clone());
            q.settings.store(rq.settings.clone());
            q.target.store(Some(Arc::new(DeliveryTarget {
                route: route.name.to_string(),
                upstream: upstream.clone(),
                rewrite: route.rewrite.cloned(),
            })));
            q.wake();
        }
        for (name, q) in &next {
            if !configured.contains(name) && q.configured() {
                tracing::warn!(queue = %name, pending = q.backend.stats().pending, "No route uses this queue any more; its delivery is paused.");
                q.target.store(None);
            }
        }
        self.map.store(Arc::new(next));
        if let Some(handle) = self
            .delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for q in opened {
                handle.add(q);
            }
        }
        Ok(())
    }

    /// Starts the delivery thread for every open queue (and those opened later).
    pub fn start_delivery(&self) -> std::io::Result<()> {
        let mut slot = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(delivery::start(self.list())?);
        }
        Ok(())
    }

    /// Sends `request`, a message queue `name`'s engine pushed to the gateway, to the
    /// queue's route upstream on the delivery thread, and classifies the answer with the
    /// queue's retry policy (the push playback: the engine retries what is not
    /// delivered).
    pub fn play(
        &self,
        name: &str,
        request: QueuedRequest,
        id: u64,
        attempt: u32,
    ) -> impl std::future::Future<Output = Result<retry::Verdict, QueueError>> + Send + 'static
    {
        let sent = (|| {
            let queue = self
                .get(name)
                .ok_or_else(|| QueueError::Unknown(name.to_string()))?;
            let (done, outcome) = tokio::sync::oneshot::channel();
            let guard = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
            let handle = guard
                .as_ref()
                .ok_or_else(|| QueueError::Closed(name.to_string()))?;
            let sent = handle.play(delivery::Play {
                queue,
                request,
                id,
                attempt,
                done,
            });
            if !sent {
                return Err(QueueError::Closed(name.to_string()));
            }
            Ok(outcome)
        })();
        let name = name.to_string();
        async move { sent?.await.map_err(|_| QueueError::Closed(name)) }
    }

    /// Stops delivery (in-flight attempts are abandoned; their messages stay pending) and
    /// closes every queue. Later operations fail with [`QueueError::Closed`].
    pub fn shutdown(&self) {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let handle = self
            .delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            h.stop();
        }
        for q in self.list() {
            q.backend.close();
        }
    }

    /// Appends the Prometheus text of every queue to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        let queues = self.list();
        let samples: Vec<metrics::Sample<'_>> = queues
            .iter()
            .map(|q| metrics::Sample {
                name: &q.name,
                metrics: &q.metrics,
                stats: q.backend.stats(),
            })
            .collect();
        metrics::render(out, &samples, retry::now_ms());
    }
}

/// A route of a configuration with a `queue:`, as the queues see it.
#[derive(Clone, Copy)]
pub struct QueuedRoute<'a> {
    /// The route's index in the configuration (errors name `routes[index].queue`).
    pub index: usize,
    /// The route's name.
    pub name: &'a str,
    /// Its queue settings.
    pub queue: &'a RouteQueue,
    /// Where its messages are delivered (none: the queue holds them).
    pub upstream: Option<&'a Arc<Upstream>>,
    /// The path rewrite applied at delivery.
    pub rewrite: Option<&'a PathRewrite>,
}

/// Opens every queue `routes` configure under `data_dir` (local ones) or on `engines`, and
/// starts delivering (gateway start). Fails on the first queue that cannot be opened.
pub fn open_all(
    data_dir: &Path,
    routes: &[QueuedRoute<'_>],
    engines: Option<Arc<dyn Engines>>,
) -> Result<Arc<Queues>, QueueError> {
    let mut queues = Queues::new(data_dir);
    if let Some(e) = engines {
        queues = queues.with_engines(e);
    }
    let queues = Arc::new(queues);
    if let Err(mut errors) = queues.apply_inner(routes) {
        if !errors.is_empty() {
            return Err(errors.swap_remove(0).1);
        }
    }
    queues.start_delivery().map_err(|e| QueueError::Io {
        queue: "*".into(),
        message: format!("cannot start the delivery thread: {e}"),
    })?;
    Ok(queues)
}
