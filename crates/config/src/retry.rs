//! A route's `retry:` section (docs/upstreams.md).

use serde::Deserialize;

/// `retry:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try (default 2).
    pub attempts: Option<u32>,
    /// What is retried: `timeout`, `reset`, and status codes (default 502, 503, 504).
    pub on: Option<Vec<RetryOn>>,
    /// Retry non-idempotent methods (POST, PATCH) too.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Bodies up to this size are buffered so they can be replayed (default 64 KiB).
    pub max_body_bytes: Option<u64>,
    /// Retries allowed per request, on average (default 0.2).
    pub budget_ratio: Option<f64>,
    /// Retries allowed per second whatever the traffic (default 10).
    pub min_retries_per_second: Option<u32>,
}

/// One retry condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RetryOn {
    /// A response status.
    Status(u16),
    /// `timeout` or `reset`.
    Event(String),
}
