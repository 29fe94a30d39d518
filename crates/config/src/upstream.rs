//! The upstream sections of the format: `hash_on`, `health`, `circuit_breaker` (targets
//! and pools are in [`crate::file`]). Defaults are documented in docs/upstreams.md.

use serde::Deserialize;

/// `hash_on:` — what consistent hashing hashes (exactly one key).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOnConfig {
    /// A request header's name.
    pub header: Option<String>,
    /// A cookie's name.
    pub cookie: Option<String>,
    /// `true` to hash the client IP.
    #[serde(default)]
    pub client_ip: bool,
}

/// `health:` — active and passive checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Periodic HTTP checks of every target.
    pub active: Option<ActiveConfig>,
    /// Ejection of targets that fail real requests.
    pub passive: Option<PassiveConfig>,
    /// `fail_open` (default: use every target anyway) or `fail_closed` (503).
    pub all_unhealthy: Option<String>,
}

/// `health.active:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveConfig {
    /// Path to GET.
    #[serde(default = "default_check_path")]
    pub path: String,
    /// `Host` header to send; defaults to the target's `host:port`.
    pub host: Option<String>,
    /// Time between two checks of a target.
    pub interval_ms: Option<u64>,
    /// Time a check may take.
    pub timeout_ms: Option<u64>,
    /// Successes in a row that bring a target back.
    pub healthy_threshold: Option<u32>,
    /// Failures in a row that take a target out.
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that count as healthy: codes (`204`) or classes (`"2xx"`).
    pub expected_statuses: Option<Vec<StatusSpec>>,
}

fn default_check_path() -> String {
    "/".to_string()
}

/// A status code or a class such as `"2xx"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// One code.
    Code(u16),
    /// `"2xx"`, `"3xx"`...
    Class(String),
}

/// `health.passive:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Consecutive failures (connect errors, timeouts, `failure_statuses`) that eject a target.
    pub max_failures: Option<u32>,
    /// Response statuses that count as failures.
    pub failure_statuses: Option<Vec<u16>>,
    /// How long the first ejection lasts; each further one in a row lasts longer.
    pub backoff_ms: Option<u64>,
    /// Cap on an ejection's length.
    pub max_backoff_ms: Option<u64>,
}

/// `circuit_breaker:` — limits per target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Requests in flight to one target (for HTTP/1.1, its open connections in use).
    pub max_connections: Option<usize>,
    /// Requests of the upstream waiting for a target under its limit.
    pub max_pending: Option<usize>,
    /// How long a request may wait for a slot.
    pub pending_timeout_ms: Option<u64>,
}
