//! The runtime forms of the process-wide and per-listener settings of a configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluicegate_config::file;

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Worker threads (0 = one per core).
    pub workers: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Admin listener address, if enabled.
    pub admin_address: Option<String>,
    /// Directory for durable state.
    pub data_dir: PathBuf,
    /// Bearer tokens the admin API accepts; empty means the API is open (loopback only).
    pub admin_tokens: Vec<sluicegate_secrets::SecretValue>,
    /// Admin paths that stay open when tokens are set.
    pub admin_public_paths: Vec<String>,
    /// The `cluster:` section, when the node shares its configuration through a store.
    pub cluster: Option<ClusterSettings>,
}

/// The resolved `cluster:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// The store's libpq URL.
    pub store: String,
    /// This node's name.
    pub node_name: String,
    /// How often the node checks the store's revision besides being notified.
    pub poll_interval: Duration,
    /// Connect and query timeout toward the store.
    pub store_timeout: Duration,
}

impl Settings {
    /// How many workers to run: the configured count, else one per usable core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Settings of one listener.
#[derive(Clone)]
pub struct ListenerSettings {
    /// Name for logs.
    pub name: String,
    /// Address to bind.
    pub address: String,
    /// TLS server configuration (with ALPN), if TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether HTTP/2 is accepted.
    pub http2: bool,
    /// Whether the client's `X-Request-Id` is kept.
    pub trust_request_id: bool,
    /// Limit on request line + headers.
    pub max_header_bytes: usize,
    /// Limit on the request body.
    pub max_body_bytes: u64,
    /// Time to receive the request head (and keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Longest pause inside a request body.
    pub body_timeout: Duration,
    /// Longest wait of a response write on a client that does not read (HTTP/1.1).
    pub send_timeout: Duration,
}

impl ListenerSettings {
    /// Settings used when a connection's listener is no longer in the configuration (built
    /// once, not per request).
    pub fn fallback() -> &'static Arc<ListenerSettings> {
        static FALLBACK: std::sync::LazyLock<Arc<ListenerSettings>> =
            std::sync::LazyLock::new(|| {
                Arc::new(ListenerSettings {
                    name: String::new(),
                    address: String::new(),
                    tls: None,
                    http2: true,
                    trust_request_id: false,
                    max_header_bytes: file::defaults::MAX_HEADER_BYTES,
                    max_body_bytes: file::defaults::MAX_BODY_BYTES,
                    header_timeout: Duration::from_millis(file::defaults::CLIENT_TIMEOUT_MS),
                    body_timeout: Duration::from_millis(file::defaults::CLIENT_TIMEOUT_MS),
                    send_timeout: Duration::from_millis(file::defaults::CLIENT_TIMEOUT_MS),
                })
            });
        &FALLBACK
    }
}
