//! The configuration snapshot as the data plane runs it: routes with their merged plugin
//! chains, upstreams, queues, settings — immutable once built — and the [`Shared`] state
//! that holds the current one behind `ArcSwap`. Building a snapshot from a file and the
//! one reloader that swaps it are the application's.
//!
//! A request loads the snapshot once (`Arc` clone) and keeps it until its log phase, so a
//! reload never changes the rules under a request in flight.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use sluicegate_core::context::{ConfigView, ScriptLimits, UpstreamRef};
use sluicegate_core::diag::ConfigError;
pub use sluicegate_core::rewrite::PathRewrite;

use crate::router::Router;
use crate::settings::{ListenerSettings, Settings};
use sluicegate_core::phase::{Phase, PhaseSet, Plugin};
use sluicegate_queue::QueuedRoute;
use sluicegate_telemetry::{AccessLog, Metrics, RouteMetrics};
use sluicegate_upstream::Upstream;

/// One plugin in a chain, with its effective priority.
#[derive(Clone)]
pub struct ChainEntry {
    /// The instance.
    pub plugin: Arc<dyn Plugin>,
    /// Higher runs first.
    pub priority: i32,
}

/// The plugins that run for a route (global ones merged in), sorted by priority.
#[derive(Clone, Default)]
pub struct Chain {
    /// Sorted, highest priority first.
    pub entries: Vec<ChainEntry>,
    /// Union of the entries' phases.
    pub phases: PhaseSet,
    /// Whether a plugin reads the request's headers or URI after it was forwarded (in
    /// header_filter, body_filter or log): then forwarding copies them instead of moving them.
    pub reads_request_late: bool,
    /// Whether every header filter can work on raw upstream header lines
    /// ([`sluicegate_core::phase::Plugin::filters_raw_headers`]).
    pub raw_header_filters: bool,
}

impl Chain {
    /// A chain of `entries`, sorted by priority (stable: config order breaks ties).
    pub fn new(mut entries: Vec<ChainEntry>) -> Self {
        entries.sort_by_key(|e| std::cmp::Reverse(e.priority));
        let phases = entries
            .iter()
            .fold(PhaseSet::default(), |acc, e| acc.union(e.plugin.phases()));
        let reads_request_late = entries.iter().any(|e| {
            let p = e.plugin.phases();
            (p.contains(Phase::HeaderFilter)
                || p.contains(Phase::BodyFilter)
                || p.contains(Phase::Log))
                && e.plugin.reads_request_late()
        });
        let raw_header_filters = entries
            .iter()
            .filter(|e| e.plugin.phases().contains(Phase::HeaderFilter))
            .all(|e| e.plugin.filters_raw_headers());
        Chain {
            entries,
            phases,
            reads_request_late,
            raw_header_filters,
        }
    }

    /// Whether any plugin acts in `phase`.
    pub fn has(&self, phase: Phase) -> bool {
        self.phases.contains(phase)
    }
}

/// A validated route.
pub struct Route {
    /// Name for logs and metrics.
    pub name: String,
    /// Where to proxy; `None` when plugins answer.
    pub upstream: Option<Arc<Upstream>>,
    /// Path rewriting.
    pub rewrite: Option<PathRewrite>,
    /// Global and route plugins, merged and sorted.
    pub chain: Chain,
    /// This route's counters.
    pub metrics: Arc<RouteMetrics>,
    /// Set when requests are queued durably instead of proxied (`queue:`).
    pub queue: Option<Arc<sluicegate_queue::RouteQueue>>,
    /// Retries on another target (`retry:`).
    pub retry: Option<Arc<crate::retry::RetryPolicy>>,
    /// `metadata:`, given to the request's plugins and scripts.
    pub metadata: Option<sluicegate_core::context::RouteMetadata>,
    /// `cluster_header:`: the header naming the upstream, read after the request plugins.
    pub cluster_header: Option<http::HeaderName>,
}

/// One complete, validated configuration version.
pub struct Snapshot {
    /// Increases by one on every applied reload.
    pub version: u64,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// When it was applied.
    pub loaded_at: SystemTime,
    /// Process-wide settings (some only apply at start).
    pub settings: Settings,
    /// Per-listener settings, in listener order.
    pub listeners: Vec<Arc<ListenerSettings>>,
    /// Routing table.
    pub router: Router,
    /// Routes, indexed by the router's answers (shared: a change of some routes in
    /// cluster mode keeps the others).
    pub routes: Vec<Arc<Route>>,
    /// Global plugins (run for unmatched requests' filter and log phases).
    pub global: Chain,
    /// Upstreams by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The access log.
    pub access_log: Arc<AccessLog>,
    /// Counters of requests no route matched.
    pub unmatched: Arc<RouteMetrics>,
    /// The `lua:` section.
    pub lua: Arc<sluicegate_lua::LuaSettings>,
    /// The open queues. Not part of the version: every snapshot of a running gateway holds
    /// the same registry (the reloader carries it over), so reloads never reopen a queue.
    pub queues: Arc<sluicegate_queue::Queues>,
    /// The `code:` section (dynamic scripts), if present. The scripts themselves live in
    /// [`Shared::code`], swapped on their own (see `sluicegate_code`).
    pub code: Option<Arc<sluicegate_code::CodeSettings>>,
    /// `watch_config`: reload when the configuration file changes.
    pub watch_config: bool,
    /// SHA-256 of the text this snapshot was loaded from (what the file watcher compares).
    pub source_digest: [u8; 32],
    /// Resolved upstream targets and their health. Like `queues`, carried over by every
    /// reload, so answers and health survive it.
    pub upstream_runtime: Arc<sluicegate_upstream::live::Runtime>,
}

impl Snapshot {
    /// The routes with a `queue:`, as the durable queues see them.
    pub fn queued_routes(&self) -> Vec<QueuedRoute<'_>> {
        self.routes
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                Some(QueuedRoute {
                    index,
                    name: &r.name,
                    queue: r.queue.as_deref()?,
                    upstream: r.upstream.as_ref(),
                    rewrite: r.rewrite.as_ref(),
                })
            })
            .collect()
    }

    /// Upstream `name`, checked to have `target` when one is named (a script's
    /// `sluicegate.upstream.set(name, target)`); the error says which is missing.
    pub fn choose_upstream(&self, name: &str, target: Option<&str>) -> Result<UpstreamRef, String> {
        let upstream = self
            .upstreams
            .get(name)
            .ok_or_else(|| format!("unknown upstream `{name}`"))?;
        if let Some(t) = target {
            if upstream.live.load().find(t).is_none() {
                return Err(format!("upstream `{name}` has no target `{t}`"));
            }
        }
        Ok(upstream.clone() as UpstreamRef)
    }
}

/// What plugins and scripts see of the snapshot (the vocabulary crate's narrow view).
impl ConfigView for Snapshot {
    fn route_name(&self, index: usize) -> Option<&str> {
        self.routes.get(index).map(|r| r.name.as_str())
    }

    fn upstream(&self, name: &str) -> Option<UpstreamRef> {
        self.upstreams.get(name).map(|u| u.clone() as UpstreamRef)
    }

    fn script_limits(&self) -> ScriptLimits {
        self.lua.limits()
    }
}

/// A reload asked for by one of the triggers.
pub struct ReloadRequest {
    /// Who asked (`sighup`, `admin`, `watch`...), for the log.
    pub trigger: &'static str,
    /// Where to send the outcome.
    pub reply: Option<oneshot::Sender<Result<ReloadOutcome, ConfigError>>>,
    /// Set for a dynamic-code change instead of a configuration reload.
    pub code: Option<sluicegate_code::CodeUpdate>,
}

/// What an applied reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    /// The new version.
    pub version: u64,
    /// Settings that changed but only apply after a restart.
    pub needs_restart: Vec<String>,
}

/// State shared by every worker, the admin API and the reloader.
pub struct Shared {
    /// The current configuration.
    pub snapshot: ArcSwap<Snapshot>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Start time, for uptime.
    pub started: Instant,
    /// Number of worker threads.
    pub workers: usize,
    /// Sends reload requests to the reloader.
    pub reload_tx: mpsc::UnboundedSender<ReloadRequest>,
    /// Flips to true when the process should drain and stop.
    pub shutdown: watch::Sender<bool>,
    /// The version of the snapshot the reloader stored last. The control thread's
    /// background tasks that have nothing to do under the running configuration wait on
    /// it instead of waking on a timer.
    pub swapped: watch::Sender<u64>,
    /// `ngx.shared` dictionaries: shared by all workers, kept across reloads.
    pub lua_dicts: Arc<sluicegate_lua::SharedDicts>,
    /// Dynamic scripts (code API, directory, admin pushes): kept across reloads.
    pub code: Arc<sluicegate_code::CodeRegistry>,
}

impl Shared {
    /// The open durable queues (also what Lua's `sluicegate.queue.enqueue` uses).
    pub fn queues(&self) -> Arc<sluicegate_queue::Queues> {
        self.snapshot.load().queues.clone()
    }

    /// Asks the reloader for a reload and waits for the outcome.
    pub async fn reload(&self, trigger: &'static str) -> Result<ReloadOutcome, ConfigError> {
        let (tx, rx) = oneshot::channel();
        let req = ReloadRequest {
            trigger,
            reply: Some(tx),
            code: None,
        };
        let stopped = || ConfigError {
            source_name: "<reloader>".into(),
            diags: vec![sluicegate_core::diag::Diag::at_line(
                0,
                "the reloader has stopped".into(),
            )],
        };
        self.reload_tx.send(req).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Drain timeout of the current configuration.
    pub fn drain_timeout(&self) -> Duration {
        self.snapshot.load().settings.drain_timeout
    }
}
