//! The on-disk configuration format (serde types, `deny_unknown_fields` everywhere).
//! These types say what a user may write; `validate.rs` turns them into the runtime form.
//! Sizes end in `_bytes`, durations in `_ms`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Defaults shared by the format and its documentation.
pub mod defaults {
    /// 32 KiB: larger than nginx's default buffers (4 × 8 KiB), small enough to bound memory.
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    /// 10 MiB, a common default for API gateways (Kong uses 8 MiB for buffered bodies).
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    /// nginx's `client_header_timeout` / `client_body_timeout` / `send_timeout` default is
    /// 60 s.
    pub const CLIENT_TIMEOUT_MS: u64 = 60_000;
    /// nginx's `proxy_connect_timeout` default is 60 s; 5 s fails faster toward a dead target.
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// nginx's `proxy_read_timeout` / `proxy_send_timeout` default is 60 s.
    pub const UPSTREAM_IO_TIMEOUT_MS: u64 = 60_000;
    /// Idle upstream connections kept per target and worker (nginx bench peers use 64).
    pub const POOL_MAX_IDLE: usize = 64;
    /// How long an idle upstream connection is kept.
    pub const POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
    /// Time in-flight requests get to finish after SIGTERM.
    pub const DRAIN_TIMEOUT_MS: u64 = 10_000;
}

/// A listener: where clients connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs and metrics; defaults to the address.
    pub name: Option<String>,
    /// `host:port` to bind.
    pub address: String,
    /// TLS termination; absent means cleartext.
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 (ALPN `h2` on TLS, prior-knowledge h2c on cleartext).
    #[serde(default = "yes")]
    pub http2: bool,
    /// Take `X-Request-Id` from the client instead of generating one.
    #[serde(default)]
    pub trust_request_id: bool,
    /// Maximum size of the request line plus headers.
    pub max_header_bytes: Option<usize>,
    /// Maximum request body size.
    pub max_body_bytes: Option<u64>,
    /// Time a client has to send the request headers (also the keep-alive idle timeout).
    pub client_header_timeout_ms: Option<u64>,
    /// Longest pause allowed between two pieces of a request body.
    pub client_body_timeout_ms: Option<u64>,
    /// Longest time a response write may wait for a client that stopped reading.
    pub client_send_timeout_ms: Option<u64>,
}

/// Certificate and key files (PEM) for a TLS listener: the certificate served when no
/// entry of `certificates:` names the client's SNI (or when the client sends none).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain.
    pub cert_file: Option<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to bind; loopback by default.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Set to false to run without an admin listener.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bearer tokens the admin API accepts (`"${secret:NAME}"` each; a rotation's previous
    /// value is accepted too). Without tokens the API is open, which only a loopback
    /// address may be.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Paths that stay open when tokens are set (e.g. `/healthz`, `/metrics`).
    #[serde(default)]
    pub public_paths: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            enabled: true,
            tokens: Vec::new(),
            public_paths: Vec::new(),
        }
    }
}

/// The `cluster:` section: the node shares upstreams, routes and global plugins with every
/// node connected to the same store (docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The store: a libpq URL (`postgresql://user:password@host:port/database`).
    pub store: String,
    /// This node's name in `/v1/cluster/nodes`; defaults to the host name.
    pub node_name: Option<String>,
    /// How often the node asks the store for its revision, in case a notification was
    /// lost (notifications are what normally wake it).
    pub poll_interval_ms: Option<u64>,
    /// Time a store connection or query may take before the store counts as unreachable.
    pub store_timeout_ms: Option<u64>,
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".to_string()
}

/// Where access-log lines go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr`, `file` or `off`.
    #[serde(default = "default_log_target")]
    pub target: String,
    /// The file, when `target` is `file`.
    pub path: Option<String>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            target: default_log_target(),
            path: None,
        }
    }
}

fn default_log_target() -> String {
    "stdout".to_string()
}

/// An upstream: a named group of targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// One or more targets.
    pub targets: Vec<TargetConfig>,
    /// `http` or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// `http1` or `http2`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Load-balancing policy (docs/upstreams.md); `round_robin` (weighted) by default.
    #[serde(default = "default_balance")]
    pub balance: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// Time to the response head, and longest pause inside the response body.
    pub read_timeout_ms: Option<u64>,
    /// Longest stall while writing the request to the upstream.
    pub write_timeout_ms: Option<u64>,
    /// Keep-alive pool settings.
    #[serde(default)]
    pub pool: PoolConfig,
    /// TLS client settings for `https` upstreams.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
    /// What `balance: consistent_hash` hashes.
    pub hash_on: Option<crate::upstream::HashOnConfig>,
    /// Active and passive health checks.
    #[serde(default)]
    pub health: crate::upstream::HealthConfig,
    /// Per-target limits.
    #[serde(default)]
    pub circuit_breaker: crate::upstream::CircuitConfig,
}

fn default_scheme() -> String {
    "http".to_string()
}
fn default_protocol() -> String {
    "http1".to_string()
}
fn default_balance() -> String {
    "round_robin".to_string()
}

/// A target: `host:port` (or a mapping with a weight).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetConfig {
    /// `"10.0.0.1:8080"`.
    Address(String),
    /// `{address: "10.0.0.1:8080", weight: 3}`.
    Weighted(WeightedTarget),
}

/// A target with a weight (an address, or an SRV name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// `host:port`.
    #[serde(default)]
    pub address: String,
    /// An SRV name (`_http._tcp.api.example`) instead of `address`.
    pub srv: Option<String>,
    /// Relative share of requests (1..=1000).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Upstream keep-alive pool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle connections kept per target per worker.
    pub max_idle_per_target: Option<usize>,
    /// Idle connections older than this are closed.
    pub idle_timeout_ms: Option<u64>,
}

/// TLS toward an upstream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Verify the upstream's certificate (default true).
    pub verify: Option<bool>,
    /// PEM file of CA certificates to trust instead of the system's.
    pub ca_file: Option<String>,
    /// Server name to send and verify; defaults to the target's host.
    pub sni: Option<String>,
    /// Trust store when there is no `ca_file`: `system` (default) or `builtin`.
    pub roots: Option<String>,
    /// PEM certificate chain presented to upstreams that ask for one (mutual TLS).
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

/// A route: which requests it takes and what it does with them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and metrics; defaults to `route-N`.
    pub name: Option<String>,
    /// Conditions; an absent `match` takes everything.
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Upstream name to proxy to. Optional when a plugin answers every request.
    pub upstream: Option<String>,
    /// Instead of `upstream`: the request header (set by a client or a script) whose value
    /// names the upstream, read after the request plugins ran (Envoy's `cluster_header`).
    pub cluster_header: Option<String>,
    /// Path rewriting before forwarding.
    pub rewrite: Option<RewriteConfig>,
    /// Queue requests durably and deliver them to `upstream` later (see docs/queue.md).
    pub queue: Option<crate::queue::QueueConfig>,
    /// Retries on another target (see docs/upstreams.md).
    pub retry: Option<crate::retry::RetryConfig>,
    /// The route's own plugins: built by the gateway from the node itself.
    #[serde(default)]
    pub plugins: Option<serde::de::IgnoredAny>,
    /// A mapping scripts read (`envoy_lua`'s `metadata()`): read by the gateway from the
    /// node itself.
    #[serde(default)]
    pub metadata: Option<serde::de::IgnoredAny>,
}

/// Route conditions. Every given condition must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host patterns: `api.example.com`, `*.example.com`, or `~regex`.
    #[serde(default)]
    pub hosts: OneOrMany,
    /// Path patterns: `/prefix`, `= /exact`, `~ regex` (see docs/configuration.md).
    #[serde(default)]
    pub paths: OneOrMany,
    /// Allowed methods.
    #[serde(default)]
    pub methods: OneOrMany,
    /// Header name → exact value, or `~regex`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A single string or a list of strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "OneOrManyRepr")]
pub struct OneOrMany(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrManyRepr {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrManyRepr> for OneOrMany {
    fn from(r: OneOrManyRepr) -> Self {
        match r {
            OneOrManyRepr::One(s) => OneOrMany(vec![s]),
            OneOrManyRepr::Many(v) => OneOrMany(v),
        }
    }
}

/// Path rewriting: strip a prefix, then add one; or a regex replacement.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Removed from the start of the path when present.
    pub strip_prefix: Option<String>,
    /// Put in front of the (stripped) path.
    pub add_prefix: Option<String>,
    /// `pattern` and `replacement` (`$1`, `${name}`), applied to the path.
    pub regex: Option<RegexRewriteConfig>,
}

/// A regex path replacement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteConfig {
    /// The regular expression (Rust `regex` syntax).
    pub pattern: String,
    /// The replacement, with `$1` / `${name}` groups.
    pub replacement: String,
}

/// The `lua:` section: limits of the Lua runtime and the shared dictionaries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaSectionConfig {
    /// CPU time one script call may use (default 50); time awaiting I/O does not count.
    pub cpu_budget_ms: Option<u64>,
    /// Memory cap of each worker's Lua VM (default 64 MiB).
    pub memory_limit_bytes: Option<usize>,
    /// `ngx.shared` dictionaries: name → size in bytes.
    #[serde(default)]
    pub shared_dicts: BTreeMap<String, usize>,
    /// Timers waiting per worker (default 1024).
    pub max_pending_timers: Option<usize>,
    /// Timers running at once per worker (default 256).
    pub max_running_timers: Option<usize>,
    /// Directories of user modules (relative to the configuration file), searched in
    /// order with the `?.lua` and `?/init.lua` patterns (see docs/lua-api.md#user-modules).
    #[serde(default)]
    pub package_path: OneOrMany,
}

fn yes() -> bool {
    true
}
