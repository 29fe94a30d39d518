//! Configuration of the `pubsub_push` plugin.

use serde::Deserialize;

use sluicegate_config::file::{OneOrMany, UpstreamTlsConfig};

/// `config` of a `pubsub_push` plugin entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubPushConfig {
    /// The queue (`backend: pubsub`) whose pushes this route plays back: its route's
    /// upstream, rewrite and retry policy apply, its dead letters keep the poison pushes.
    pub queue: String,
    /// Whether the push's OpenID token is checked (true by default; `false` only for the
    /// emulator, which sends none).
    #[serde(default = "yes")]
    pub verify: bool,
    /// The audience the subscription's token names (its `pushConfig.oidcToken.audience`;
    /// by default Pub/Sub uses the push endpoint's URL).
    #[serde(default)]
    pub audience: String,
    /// The email(s) of the service account the subscription signs its tokens as.
    #[serde(default)]
    pub service_account: OneOrMany,
    /// The key set's URL (Google's by default).
    pub jwks_url: Option<String>,
    /// Accepted `iss` values (Google's two spellings by default).
    #[serde(default)]
    pub issuer: OneOrMany,
    /// Clock skew allowed on `exp` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Limit on one key-set fetch, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// TLS settings for an `https` key-set URL (the system roots by default).
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
}

fn yes() -> bool {
    true
}

fn default_leeway() -> u64 {
    30
}

fn default_timeout() -> u64 {
    5000
}
