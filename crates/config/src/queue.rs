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
    /// Bound on the queue's bytes on disk (default 1 GiB); for `nats`, the stream's bound.
    pub max_bytes: Option<u64>,
    /// Where messages are stored: `local` (default: this node's disk), `nats` (a
    /// JetStream stream) or `pubsub` (a Google Pub/Sub topic).
    pub backend: Option<String>,
    /// Settings of the `nats` backend.
    pub nats: Option<NatsConfig>,
    /// Settings of the `pubsub` backend.
    pub pubsub: Option<PubSubConfig>,
}

/// `queue.nats`: a JetStream stream and one durable pull consumer shared by every gateway.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, a list or one comma-separated string (`nats://host:4222`).
    pub url: Option<crate::file::OneOrMany>,
    /// Replicas of the stream (1 to 5, default 1).
    pub replicas: Option<u64>,
    /// Stream name (default: the queue's name, `.` as `_`).
    pub stream: Option<String>,
    /// Subject the stream stores (default `sluicegate.queue.STREAM`).
    pub subject: Option<String>,
    /// Durable consumer's name (default `sluicegate`).
    pub consumer: Option<String>,
    /// How long a delivery may take before the engine gives the message to another
    /// gateway (default 60000; longer than the upstream's timeouts).
    pub ack_wait_ms: Option<u64>,
    /// Bound on a publish, from the request to the engine's acknowledgement (default 5000).
    pub publish_timeout_ms: Option<u64>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (from the environment: `${NATS_PASSWORD}`).
    pub password: Option<String>,
    /// Authentication token (from the environment: `${NATS_TOKEN}`).
    pub token: Option<String>,
}

/// `queue.pubsub`: a Google Pub/Sub topic; a push subscription delivers the messages to a
/// route with the `pubsub_push` plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    /// Google Cloud project.
    pub project: Option<String>,
    /// Topic name (in `project`).
    pub topic: Option<String>,
    /// The emulator's `host:port`; default `PUBSUB_EMULATOR_HOST`, as Google's client
    /// libraries do. With an emulator no credentials are sent.
    pub emulator_host: Option<String>,
    /// A service-account key (its JSON, from the environment); without it (and without an
    /// emulator) the metadata server's token is used, as on Google Cloud.
    pub credentials: Option<String>,
    /// Bound on a publish, from the request to Pub/Sub's answer (default 10000).
    pub publish_timeout_ms: Option<u64>,
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
