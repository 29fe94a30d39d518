//! A route's `queue:` section (docs/queue.md).

use std::collections::BTreeMap;

use serde::Deserialize;

/// `queue:` of a route, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name (directory `data_dir/queues/NAME`); defaults to the route's name.
    pub name: Option<String>,
    /// The answer sent once the request is durable.
    #[serde(default)]
    pub ack: AckConfig,
    /// Retry policy of deliveries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Deliveries in flight at once (default 1).
    pub concurrency: Option<usize>,
    /// `fifo` (default) or `unordered`.
    pub ordering: Option<String>,
    /// Statuses (not retried) that go straight to the dead letters; default `["4xx"]`.
    pub dead_letter_on: Option<Vec<StatusPattern>>,
    /// Bound on the queue's bytes on disk (default 1 GiB).
    pub max_bytes: Option<u64>,
}

/// `queue.ack`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckConfig {
    /// Status (2xx; default 202).
    pub status: Option<u16>,
    /// Body template (`{id}`, `{queue}`, `{request_id}` are replaced); default a JSON
    /// object with the id.
    pub body: Option<String>,
    /// Headers to add.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `queue.retry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Statuses that are retried; default `[429, "5xx"]`.
    pub on_status: Option<Vec<StatusPattern>>,
    /// Wait before the first retry (default 500).
    pub initial_backoff_ms: Option<u64>,
    /// Longest computed wait (default 60000).
    pub max_backoff_ms: Option<u64>,
    /// Growth per retry (default 2).
    pub multiplier: Option<f64>,
    /// Attempts in total before dead-lettering (default 15).
    pub max_attempts: Option<u32>,
    /// Messages older than this are dead-lettered on their next failure (default one day;
    /// 0 = no limit).
    pub max_age_ms: Option<u64>,
}

/// A status code (`429`) or class (`"5xx"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusPattern {
    /// A code.
    Code(u16),
    /// A code or class as text.
    Text(String),
}
