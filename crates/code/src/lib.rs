//! Dynamic code: Lua scripts that change while the gateway runs, from three sources — a
//! lua-resty-dynacode compatible **code API** (polled, [`api`]), a watched **directory**
//! ([`directory`]) and **admin pushes** (`PUT /scripts/{name}`).
//!
//! How it relates to the configuration snapshot (details in docs/hot-reload.md):
//! - The scripts form a [`CodeSet`], immutable and swapped atomically behind its own
//!   `ArcSwap` in [`CodeRegistry`] (one per process, in the proxy's `Shared`),
//!   because code changes far more often than the configuration and must not re-read the
//!   configuration file. The `code:` section of the snapshot says where scripts come from
//!   and puts one `code` entry (see [`plugin`]) in every plugin chain.
//! - A request pins the code set on its first dynamic phase and keeps it to its log phase,
//!   as it keeps its snapshot: in-flight requests finish on the version they started with.
//! - Every change — a new code-API document, a directory change, an admin push, a
//!   configuration reload — goes through the application's one reloader,
//!   one at a time. The reloader compiles what changed ([`build`]; a script whose source
//!   is unchanged is never recompiled, a failing one is not retried until it changes),
//!   validates the whole new set, and only then swaps it in.
//! - Compiling is the validation: Luau bytecode comes only from our compiler and a chunk
//!   is the handler itself, so nothing runs at load. Workers load the bytecode into their
//!   own VMs lazily, keyed by a hash of name and source, as for configured scripts.

pub mod api;
pub mod build;
pub mod config;
pub mod directory;
pub mod document;
pub mod plugin;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use regex::Regex;
use tokio::sync::oneshot;

pub use build::{Change, CodeState, Outcome};
pub use config::CodeSettings;
pub use document::{ScriptSpec, SourceDoc};

use sluicegate_core::phase::Phase;
use sluicegate_lua::Script;

/// Where a script came from. Sources run in this order within a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The code API document.
    Api,
    /// The watched directory.
    Directory,
    /// Admin pushes.
    Admin,
}

impl Source {
    /// Every source, in run order.
    pub const ALL: [Source; 3] = [Source::Api, Source::Directory, Source::Admin];

    /// The name in the admin API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Directory => "directory",
            Source::Admin => "admin",
        }
    }

    /// Index into per-source arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which hosts a script runs for.
#[derive(Debug, Clone)]
pub enum Domain {
    /// `*`: every host.
    Any,
    /// A regex searched (unanchored, as dynacode's `ngx.re.find`) in the lower-cased host.
    Regex(Regex),
}

impl Domain {
    /// Parses `*` or a regex.
    pub fn parse(text: &str) -> Result<Domain, String> {
        if text == "*" {
            return Ok(Domain::Any);
        }
        Regex::new(text)
            .map(Domain::Regex)
            .map_err(|e| format!("domain `{text}` is not a valid regex: {e}"))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Domain::Any => true,
            Domain::Regex(r) => r.is_match(host),
        }
    }
}

/// One script in the running set.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its source.
    pub source: Source,
    /// The hosts it runs for.
    pub domain: Domain,
    /// The compiled script.
    pub script: Arc<Script>,
}

/// A source's switch and skipped hosts.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// Whether the source's scripts run at all (`general.status`).
    pub enabled: bool,
    /// Hosts none of its scripts run for (`general.skip_domains`).
    pub skip: Vec<Regex>,
}

/// An immutable, complete version of the dynamic scripts.
#[derive(Debug, Default)]
pub struct CodeSet {
    /// Increases by one on every swap.
    pub version: u64,
    groups: [Group; 3],
    by_phase: [Vec<Entry>; 6],
}

impl CodeSet {
    /// A set from per-source groups and entries (in run order).
    pub fn new(version: u64, groups: [Group; 3], entries: Vec<(Phase, Entry)>) -> CodeSet {
        let mut by_phase: [Vec<Entry>; 6] = Default::default();
        for (phase, entry) in entries {
            by_phase[phase as usize].push(entry);
        }
        CodeSet {
            version,
            groups,
            by_phase,
        }
    }

    /// Number of scripts in the set.
    pub fn len(&self) -> usize {
        self.by_phase.iter().map(Vec::len).sum()
    }

    /// Whether the set has no script.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any script runs in `phase`.
    pub fn has(&self, phase: Phase) -> bool {
        !self.by_phase[phase as usize].is_empty()
    }

    /// Every script of the set with its phase.
    pub fn entries(&self) -> impl Iterator<Item = (Phase, &Entry)> {
        Phase::ALL
            .into_iter()
            .flat_map(move |p| self.by_phase[p as usize].iter().map(move |e| (p, e)))
    }
}

/// The code set a request started with, and what was decided about its host.
pub struct Pinned {
    /// The set.
    pub set: Arc<CodeSet>,
    host: String,
    runs: [bool; 3],
}

impl Pinned {
    /// Pins `set` for a request to `host` (lower-cased, without port).
    pub fn new(set: Arc<CodeSet>, host: String) -> Pinned {
        let mut runs = [false; 3];
        for (i, g) in set.groups.iter().enumerate() {
            runs[i] = g.enabled && !g.skip.iter().any(|r| r.is_match(&host));
        }
        Pinned { set, host, runs }
    }

    /// The scripts that run for this request in `phase`, in order.
    pub fn scripts(&self, phase: Phase) -> impl Iterator<Item = &Arc<Script>> + '_ {
        self.set.by_phase[phase as usize]
            .iter()
            .filter(|e| self.runs[e.source.index()] && e.domain.matches(&self.host))
            .map(|e| &e.script)
    }
}

/// Counters of the dynamic-code machinery (rendered by [`CodeMetrics::render`]).
#[derive(Debug, Default)]
pub struct CodeMetrics {
    /// Code-API polls that returned a document (200).
    pub fetches_ok: AtomicU64,
    /// Code-API polls answered 304 Not Modified.
    pub fetches_not_modified: AtomicU64,
    /// Code-API polls that failed (network, status, size, timeout).
    pub fetches_failed: AtomicU64,
    /// Documents (or directory scans) identical to the running one: nothing compiled.
    pub unchanged: AtomicU64,
    /// Scripts compiled successfully.
    pub compiles_ok: AtomicU64,
    /// Scripts that failed to compile (or to be read).
    pub compiles_failed: AtomicU64,
    /// Code sets swapped in.
    pub swaps: AtomicU64,
    /// Updates rejected whole (malformed documents, `all_or_nothing`).
    pub rejected: AtomicU64,
    /// Unix time (seconds) of the last poll the code API answered (200 or 304); 0 = never.
    pub last_success_unix: AtomicU64,
}

impl CodeMetrics {
    /// Records that the code API answered now.
    pub fn api_answered(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success_unix.store(now, Ordering::Relaxed);
    }
}

impl CodeMetrics {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of these counters to `out`.
    pub fn render(&self, set: &CodeSet, out: &mut String) {
        use std::fmt::Write as _;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP sluicegate_code_fetches_total Code-API polls by result.\n# TYPE sluicegate_code_fetches_total counter"
        );
        for (result, c) in [
            ("ok", &self.fetches_ok),
            ("not_modified", &self.fetches_not_modified),
            ("error", &self.fetches_failed),
        ] {
            let _ = writeln!(
                out,
                "sluicegate_code_fetches_total{{result=\"{result}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluicegate_code_compiles_total Dynamic scripts compiled, by result.\n# TYPE sluicegate_code_compiles_total counter"
        );
        for (result, c) in [("ok", &self.compiles_ok), ("failed", &self.compiles_failed)] {
            let _ = writeln!(
                out,
                "sluicegate_code_compiles_total{{result=\"{result}\"}} {}",
                get(c)
            );
        }
        for (name, help, kind, value) in [
            (
                "sluicegate_code_unchanged_total",
                "Code documents or directory scans identical to the running version (nothing compiled).",
                "counter",
                get(&self.unchanged),
            ),
            (
                "sluicegate_code_swaps_total",
                "Dynamic code sets swapped in.",
                "counter",
                get(&self.swaps),
            ),
            (
                "sluicegate_code_updates_rejected_total",
                "Dynamic code updates rejected whole (malformed document, all_or_nothing).",
                "counter",
                get(&self.rejected),
            ),
            (
                "sluicegate_code_version",
                "Version of the running dynamic code set.",
                "gauge",
                set.version,
            ),
            (
                "sluicegate_code_api_last_success_timestamp_seconds",
                "Unix time the code API last answered a poll (200 or 304); 0 if never since start.",
                "gauge",
                get(&self.last_success_unix),
            ),
            (
                "sluicegate_code_scripts",
                "Dynamic scripts in the running set.",
                "gauge",
                set.len() as u64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
}

/// A change for the reloader to apply, and where to send the outcome.
pub struct CodeUpdate {
    /// What changes.
    pub change: Change,
    /// Who asked (`api`, `directory`, `admin`, `config`), for the log.
    pub trigger: &'static str,
    /// Where the outcome goes.
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// The process's dynamic code: the running set, the reloader's bookkeeping, the counters.
#[derive(Default)]
pub struct CodeRegistry {
    current: ArcSwap<CodeSet>,
    /// The reloader's bookkeeping; locked while a set is built (compiling), so nothing
    /// that serves the admin API or a poller waits on it.
    state: Mutex<CodeState>,
    /// Script statuses of the running set, published after each change.
    statuses: Mutex<Arc<Vec<build::ScriptStatus>>>,
    /// What each source last did.
    sources: Mutex<[build::SourceStatus; 3]>,
    /// Counters.
    pub metrics: CodeMetrics,
    /// Lets the admin API ask the code-API poller for a poll now.
    pub poll: PollSignal,
    /// The data directory of the running process (set at start: like the queues, code
    /// persistence moves to a changed `data_dir` only after a restart).
    data_dir: std::sync::OnceLock<std::path::PathBuf>,
}

/// "Poll now" requests to the code-API poller, and its finished polls.
pub struct PollSignal {
    /// Wakes the poller from its wait (a permit is kept if it is busy).
    pub now: tokio::sync::Notify,
    /// Number of finished polls.
    pub done: tokio::sync::watch::Sender<u64>,
    /// Whether a poll is running.
    pub running: std::sync::atomic::AtomicBool,
}

impl Default for PollSignal {
    fn default() -> Self {
        PollSignal {
            now: tokio::sync::Notify::new(),
            done: tokio::sync::watch::Sender::new(0),
            running: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for PollSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollSignal")
            .field("done", &*self.done.borrow())
            .finish()
    }
}

impl CodeRegistry {
    /// Where persisted code lives: the data directory at start, else `fallback`.
    pub fn data_dir(&self, fallback: &std::path::Path) -> std::path::PathBuf {
        self.data_dir
            .get()
            .cloned()
            .unwrap_or_else(|| fallback.to_path_buf())
    }

    /// The running set.
    pub fn current(&self) -> Arc<CodeSet> {
        self.current.load_full()
    }

    /// Runs `f` on the reloader's bookkeeping (waits while a set is being built).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut CodeState) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s)
    }

    /// Runs `f` on the sources' states (index: [`Source::index`]).
    pub fn with_sources<R>(&self, f: impl FnOnce(&mut [build::SourceStatus; 3]) -> R) -> R {
        let mut s = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s)
    }

    /// The statuses of every script of the running set's sources.
    pub fn statuses(&self) -> Arc<Vec<build::ScriptStatus>> {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `change` under `settings` (the reloader's and the start-up's way in): builds
    /// the new set, swaps it in when it differs, logs and counts the outcome.
    pub fn apply(
        &self,
        change: Change,
        trigger: &'static str,
        settings: Option<&CodeSettings>,
    ) -> Outcome {
        if let Some(s) = settings {
            self.with_sources(|src| {
                src[Source::Api.index()].configured = s.api.is_some();
                src[Source::Directory.index()].configured = s.directory.is_some();
                src[Source::Admin.index()].configured = s.admin_scripts;
            });
        }
        let (outcome, statuses, counts) = self.with_state(|state| {
            let outcome = state.apply(change, settings, &self.metrics);
            let counts = Source::ALL.map(|s| state.doc(s).map_or(0, |d| d.specs.len()));
            (outcome, state.statuses(), counts)
        });
        match &outcome.set {
            Some(set) => {
                self.current.store(set.clone());
                *self.statuses.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(statuses);
                self.with_sources(|s| {
                    for (st, n) in s.iter_mut().zip(counts) {
                        st.scripts = n;
                    }
                });
                CodeMetrics::add(&self.metrics.swaps);
                tracing::info!(
                    trigger,
                    code_version = set.version,
                    scripts = set.len(),
                    compiled = outcome.compiled,
                    failed = outcome.errors.len(),
                    "Dynamic code swapped in."
                );
            }
            None if outcome.rejected.is_some() => {
                CodeMetrics::add(&self.metrics.rejected);
                tracing::error!(
                    trigger,
                    error = outcome.rejected.as_deref().unwrap_or(""),
                    "Dynamic code update rejected; the running version keeps serving."
                );
            }
            None => {}
        }
        for e in &outcome.errors {
            tracing::error!(trigger, script = %e.name, source = e.source, line = e.line, error = %e.message, "Dynamic script not loaded.");
        }
        outcome
    }
}

/// A short, stable version string for a text: the first 8 bytes of its SHA-256, in hex.
pub fn version_of(text: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where admin-pushed scripts are kept across restarts.
pub fn admin_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("code").join("admin.json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredScript {
    name: String,
    phase: String,
    domain: String,
    code: String,
}

/// Writes the admin-pushed scripts to `data_dir`, so they survive a restart.
pub fn persist_admin(registry: &CodeRegistry, data_dir: &std::path::Path) {
    let stored: Vec<StoredScript> = registry.with_state(|s| {
        s.doc(Source::Admin)
            .map(|d| {
                d.specs
                    .iter()
                    .map(|spec| StoredScript {
                        name: spec.name.clone(),
                        phase: spec.phase.map_or("", Phase::as_str).to_string(),
                        domain: spec.domain.clone(),
                        code: spec.code.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    let path = admin_path(data_dir);
    let result = serde_json::to_vec_pretty(&stored)
        .map_err(std::io::Error::other)
        .and_then(|bytes| api::write_atomic(&path, &bytes));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "Cannot persist the admin-pushed scripts; they will be gone after a restart.");
    }
}

fn load_admin(data_dir: &std::path::Path) -> Option<SourceDoc> {
    let path = admin_path(data_dir);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Vec<StoredScript>>(&bytes) {
        Ok(stored) => Some(SourceDoc::enabled(
            stored
                .into_iter()
                .map(|s| ScriptSpec {
                    phase: Phase::parse(&s.phase),
                    problem: Phase::parse(&s.phase)
                        .is_none()
                        .then(|| format!("unknown phase `{}`", s.phase)),
                    name: s.name,
                    domain: s.domain,
                    code: s.code,
                })
                .collect(),
        )),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "The persisted admin scripts are unreadable; starting without them.");
            None
        }
    }
}

/// Builds the first code set at start, before workers serve: persisted admin pushes, the
/// directory, and the persisted last good code-API document (offline start).
pub fn start(registry: &CodeRegistry, data_dir: &std::path::Path, code: Option<&CodeSettings>) {
    let _ = registry.data_dir.set(data_dir.to_path_buf());
    let data_dir = registry.data_dir(data_dir);
    let Some(settings) = code else {
        return;
    };
    if settings.admin_scripts {
        registry.with_sources(|s| s[Source::Admin.index()].configured = true);
        if let Some(doc) = load_admin(&data_dir) {
            registry.apply(
                Change::Replace(Source::Admin, Some(doc)),
                "start",
                Some(settings),
            );
        }
    }
    if let Some(api) = &settings.api {
        registry.with_sources(|s| {
            let a = &mut s[Source::Api.index()];
            a.configured = true;
            a.location = Some(api.url.to_string());
        });
    }
    directory::load_at_start(registry, settings);
    api::load_at_start(registry, settings, &data_dir);
}

/// A configuration reload changed the `code:` section from `current` to `next` (of a
/// configuration with `data_dir`): a new section loads its sources, otherwise the set is
/// rebuilt from the kept documents (nothing recompiled). Runs before the next snapshot is
/// swapped in, so the new chains never run without their code.
pub fn on_config(
    registry: &CodeRegistry,
    data_dir: &std::path::Path,
    current: Option<&CodeSettings>,
    next: Option<&CodeSettings>,
) {
    if current.is_none() {
        start(registry, data_dir, next);
    }
    registry.apply(Change::Rebuild, "config", next);
}

/// The `code` part of `GET /status`.
pub fn status_json(registry: &CodeRegistry) -> serde_json::Value {
    let set = registry.current();
    registry.with_sources(|s| {
        let mut sources = serde_json::Map::new();
        for source in Source::ALL {
            let st = &s[source.index()];
            if st.configured {
                sources.insert(
                    source.as_str().to_string(),
                    serde_json::to_value(st).unwrap_or_default(),
                );
            }
        }
        serde_json::json!({
            "version": set.version,
            "scripts": set.len(),
            "sources": sources,
        })
    })
}
