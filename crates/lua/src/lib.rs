//! The Lua bridge: the only crate that imports `mlua` (Luau engine; the choice and its
//! measurements are in LUA.md, the user-facing API in docs/lua-api.md). It reaches the
//! request through the vocabulary crate's context, and the services scripts call that live
//! in the layers above (durable queues, upstream choice, TLS roots for the HTTP client)
//! through the narrow [`Runtime`] hooks those layers fill in.
//!
//! How it fits together:
//! - [`script::compile`] turns source into Luau bytecode once, when a configuration is
//!   validated; syntax errors become configuration errors with script name and line.
//! - Each worker thread owns one VM ([`WorkerLua`], a service of the server's worker), created on
//!   first use: sandboxed globals, the `ngx.*` / `cjson` / `bit` / `sluicegate.*` API, and a
//!   cache of loaded scripts keyed by script id. Each script gets its own environment table.
//! - [`phase`] moves a request's head and body into the VM's per-call state, runs the script
//!   under its CPU budget ([`budget`]) and the VM's memory cap, and turns what the script did
//!   (`ngx.exit`, `ngx.say`, headers) into a plugin [`Flow`](sluicegate_core::phase::Flow);
//!   [`plugin`] is the `lua` plugin that does so for one script in one phase.
//! - [`dict`] is the storage of `ngx.shared.DICT`, shared by all workers and kept across
//!   reloads by the application.
//! - [`spec`] runs busted-style spec files for `sluicegate test`.

pub mod api;
pub mod budget;
pub mod call;
pub mod convert;
pub mod dict;
pub mod harness;
pub mod modules;
pub mod phase;
pub mod plugin;
pub mod sandbox;
pub mod script;
pub mod spec;
pub mod state;
pub mod vm;

use std::sync::Arc;
use std::time::Duration;

pub use dict::SharedDicts;
pub use modules::Modules;
pub use script::{compile, Script};
pub use vm::WorkerLua;

use sluicegate_core::context::{ScriptLimits, UpstreamRef};
use sluicegate_core::phase::Phase;

/// Defaults of the `lua:` configuration section.
pub mod defaults {
    /// CPU time one phase call may use (the default; OpenResty has no limit at all).
    pub const CPU_BUDGET_MS: u64 = 50;
    /// Memory cap of one worker's VM. Luau collects incrementally and does no emergency GC
    /// when the cap is hit, so the cap leaves headroom over what scripts keep alive.
    pub const MEMORY_LIMIT_BYTES: usize = 64 * 1024 * 1024;
    /// Pending timers per worker (OpenResty's `lua_max_pending_timers` default).
    pub const MAX_PENDING_TIMERS: usize = 1024;
    /// Timers running at once per worker (OpenResty's `lua_max_running_timers` default).
    pub const MAX_RUNNING_TIMERS: usize = 256;
}

/// The validated `lua:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LuaSettings {
    /// CPU time one phase call (or one timer run) may use; awaiting I/O does not count.
    pub cpu_budget: Duration,
    /// Memory cap of each worker's VM.
    pub memory_limit: usize,
    /// Declared `ngx.shared` dictionaries: name → size in bytes.
    pub shared_dicts: Vec<(String, usize)>,
    /// Timers waiting per worker.
    pub max_pending_timers: usize,
    /// Timers running at once per worker.
    pub max_running_timers: usize,
    /// The user modules of `lua.package_path`.
    pub modules: Arc<Modules>,
}

impl LuaSettings {
    /// The budget every script call runs under.
    pub fn limits(&self) -> ScriptLimits {
        ScriptLimits {
            cpu_budget: self.cpu_budget,
            memory_limit: self.memory_limit,
        }
    }
}

impl Default for LuaSettings {
    fn default() -> Self {
        LuaSettings {
            cpu_budget: Duration::from_millis(defaults::CPU_BUDGET_MS),
            memory_limit: defaults::MEMORY_LIMIT_BYTES,
            shared_dicts: Vec::new(),
            max_pending_timers: defaults::MAX_PENDING_TIMERS,
            max_running_timers: defaults::MAX_RUNNING_TIMERS,
            modules: Modules::empty(),
        }
    }
}

impl LuaSettings {
    /// The declared size of dictionary `name`.
    pub fn dict_size(&self, name: &str) -> Option<usize> {
        self.shared_dicts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
    }
}

/// The context a Lua call runs in: a request phase, a timer, or none (spec files, module
/// loading). API functions check it, like OpenResty's "API disabled in the context of ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `rewrite` phase.
    Rewrite,
    /// `access` phase.
    Access,
    /// `content` phase.
    Content,
    /// `header_filter` phase.
    HeaderFilter,
    /// `body_filter` phase.
    BodyFilter,
    /// `log` phase.
    Log,
    /// A `ngx.timer` callback.
    Timer,
    /// No request: spec files and top-level test code.
    Init,
}

impl Kind {
    /// The name `ngx.get_phase()` returns.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rewrite => "rewrite",
            Kind::Access => "access",
            Kind::Content => "content",
            Kind::HeaderFilter => "header_filter",
            Kind::BodyFilter => "body_filter",
            Kind::Log => "log",
            Kind::Timer => "timer",
            Kind::Init => "init",
        }
    }

    /// The context of a plugin phase.
    pub fn of(phase: Phase) -> Kind {
        match phase {
            Phase::Rewrite => Kind::Rewrite,
            Phase::Access => Kind::Access,
            Phase::Content => Kind::Content,
            Phase::HeaderFilter => Kind::HeaderFilter,
            Phase::BodyFilter => Kind::BodyFilter,
            Phase::Log => Kind::Log,
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// Whether a call in this context may wait (sleep, HTTP, `ngx.exit` unwinding).
    pub fn can_yield(self) -> bool {
        Kinds::YIELD.has(self)
    }
}

/// A set of [`Kind`]s: where an API function is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds(u16);

impl Kinds {
    /// Every context.
    pub const ALL: Kinds = Kinds(0xff);
    /// Every request phase.
    pub const REQUEST: Kinds = Kinds(
        Kind::Rewrite.bit()
            | Kind::Access.bit()
            | Kind::Content.bit()
            | Kind::HeaderFilter.bit()
            | Kind::BodyFilter.bit()
            | Kind::Log.bit(),
    );
    /// Phases that can still produce the response (`ngx.say`, `ngx.redirect`...).
    pub const OUTPUT: Kinds = Kinds(Kind::Rewrite.bit() | Kind::Access.bit() | Kind::Content.bit());
    /// Contexts that can wait (`ngx.sleep`, `sluicegate.http.request`).
    pub const YIELD: Kinds = Kinds(Kinds::OUTPUT.0 | Kind::Timer.bit());
    /// Request phases plus timers (`ngx.ctx`, `ngx.timer.at`).
    pub const REQUEST_OR_TIMER: Kinds = Kinds(Kinds::REQUEST.0 | Kind::Timer.bit());
    /// Where a call may wait, spec files included (`ngx.sleep`, `sluicegate.http.request`).
    pub const WAIT: Kinds = Kinds(Kinds::YIELD.0 | Kind::Init.bit());

    /// A set of the given kinds.
    pub const fn of(kinds: &[Kind]) -> Kinds {
        let mut bits = 0;
        let mut i = 0;
        while i < kinds.len() {
            bits |= kinds[i].bit();
            i += 1;
        }
        Kinds(bits)
    }

    /// Whether `kind` is in the set.
    pub fn has(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// The names of the kinds in the set, for error messages.
    pub fn names(self) -> String {
        [
            Kind::Rewrite,
            Kind::Access,
            Kind::Content,
            Kind::HeaderFilter,
            Kind::BodyFilter,
            Kind::Log,
            Kind::Timer,
        ]
        .into_iter()
        .filter(|k| self.has(*k))
        .map(Kind::name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Why a script call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The script raised an error.
    Error,
    /// It ran out of CPU time.
    CpuBudget,
    /// Its VM hit the memory cap.
    MemoryLimit,
}

/// A failed script call, with the message to log (script name and line included).
#[derive(Debug, Clone)]
pub struct Failure {
    /// What happened.
    pub kind: FailureKind,
    /// `name:line: message`.
    pub message: String,
}

impl Failure {
    /// The plugin error for a failed call of `script`.
    pub fn into_plugin_error(self, script: &str) -> sluicegate_core::phase::PluginError {
        sluicegate_core::phase::PluginError::Script {
            script: script.to_string(),
            message: self.message,
            over_budget: self.kind != FailureKind::Error,
        }
    }
}

/// Gives the client TLS configuration of `sluicegate.http`: built-in roots, or no
/// verification when the argument is false.
pub type HttpTls = fn(bool) -> Result<Arc<rustls::ClientConfig>, String>;

/// A message a script appends with `sluicegate.queue.enqueue`.
#[derive(Debug, Clone)]
pub struct ScriptMessage {
    /// Method.
    pub method: http::Method,
    /// Path and query, as the script gave it (the queue checks it).
    pub target: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
    /// The id of the request whose script appended it.
    pub request_id: String,
}

/// The durable queues `sluicegate.queue.enqueue` appends to; the queue layer implements it.
pub trait QueueService {
    /// Appends `message` to queue `queue`; resolves to the message's id once it is
    /// durable, or to the reason it is not.
    fn enqueue(
        self: Arc<Self>,
        queue: String,
        message: ScriptMessage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>>>>;
}

/// Finds upstream `name` of the running configuration, checking that it has `target`
/// when one is named; the error says which is missing.
pub type UpstreamLookup = dyn Fn(&str, Option<&str>) -> Result<UpstreamRef, String>;

/// Shared handles a VM needs from the process: dictionaries, metrics, current settings.
#[derive(Clone)]
pub struct Runtime {
    /// `ngx.shared` storage.
    pub dicts: Arc<SharedDicts>,
    /// Where timer failures are counted.
    pub metrics: Arc<sluicegate_telemetry::Metrics>,
    /// The current settings (the running snapshot's `lua:` section).
    pub settings: Arc<dyn Fn() -> Arc<LuaSettings>>,
    /// `ngx.worker.id()`.
    pub worker_id: usize,
    /// `ngx.worker.count()`.
    pub worker_count: usize,
    /// The open durable queues, if any (`sluicegate.queue.enqueue`).
    pub queues: Arc<dyn Fn() -> Option<Arc<dyn QueueService>>>,
    /// The client TLS configuration of `sluicegate.http` (built-in roots, or no
    /// verification when the argument is false).
    pub http_tls: HttpTls,
    /// Upstream `name` of the running configuration (`sluicegate.upstream.set`).
    pub upstreams: Arc<UpstreamLookup>,
}

impl Runtime {
    /// A runtime with fixed settings and its own dictionaries and metrics (specs, tests).
    pub fn standalone(settings: LuaSettings) -> Runtime {
        let settings = Arc::new(settings);
        Runtime {
            dicts: Arc::default(),
            metrics: Arc::default(),
            settings: Arc::new(move || settings.clone()),
            worker_id: 0,
            worker_count: 1,
            queues: Arc::new(|| None),
            http_tls: standalone_http_tls,
            upstreams: Arc::new(|name, _| Err(format!("unknown upstream `{name}`"))),
        }
    }
}

/// An API area that a crate above this one adds to every VM (the compatibility layer's
/// cosockets and Envoy handle): called with the Lua state, the host, the table `require`
/// resolves built-in modules from, and the globals, before the VM is frozen.
pub type Extension =
    fn(&mlua::Lua, &std::rc::Rc<vm::Host>, &mlua::Table, &mlua::Table) -> mlua::Result<()>;

/// Extensions registered with [`provide_extension`].
static EXTENSIONS: std::sync::RwLock<Vec<Extension>> = std::sync::RwLock::new(Vec::new());

/// Adds `ext` to every VM created from now on (the application registers its extensions at
/// start, before any VM exists); registering the same function twice adds it once.
pub fn provide_extension(ext: Extension) {
    if let Ok(mut list) = EXTENSIONS.write() {
        if !list.iter().any(|e| std::ptr::fn_addr_eq(*e, ext)) {
            list.push(ext);
        }
    }
}

/// The registered extensions.
pub(crate) fn extensions() -> Vec<Extension> {
    EXTENSIONS.read().map(|l| l.clone()).unwrap_or_default()
}

/// The TLS hook of runtimes made outside a server (specs, tests), once the application
/// provides one ([`provide_http_tls`]).
static HTTP_TLS: std::sync::OnceLock<HttpTls> = std::sync::OnceLock::new();

/// Sets the client TLS configuration that `sluicegate.http` uses in runtimes made outside a
/// server ([`Runtime::standalone`], the spec harness); the first call wins.
pub fn provide_http_tls(tls: HttpTls) {
    let _ = HTTP_TLS.set(tls);
}

/// The TLS hook of a standalone runtime: the provided one, else none.
pub fn standalone_http_tls(verify: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    match HTTP_TLS.get() {
        Some(tls) => tls(verify),
        None => Err("TLS is not available to scripts here".into()),
    }
}
