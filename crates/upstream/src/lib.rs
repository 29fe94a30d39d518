//! Upstreams: named groups of targets, how a target is chosen, and the settings used to
//! talk to them. An [`Upstream`] is immutable and belongs to one configuration snapshot;
//! connection pools are per worker ([`pool`]) and keyed by target, so they survive reloads
//! that keep a target.
//!
//! Configured targets ([`live::TargetSpec`]) resolve into the [`live::TargetSet`] a request
//! chooses from ([`balance`]); the resolver and health-check tasks (run by the application's
//! supervisor, [`health`]) keep that set and its targets' states current, and requests read
//! both without locks.
//!
//! Invariant: this crate knows nothing of the proxy or the server; it takes a request head
//! and body (the vocabulary crate's) and gives back a response.

pub mod balance;
pub mod config;
pub mod dns;
pub mod fetch;
pub mod forwarded;
pub mod h1;
pub mod health;
pub mod live;
pub mod pool;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (prior knowledge on cleartext, ALPN on TLS).
    Http2,
}

/// TLS settings toward an upstream, already loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The rustls client configuration (roots, ALPN).
    pub config: Arc<rustls::ClientConfig>,
    /// Server name override.
    pub sni: Option<String>,
}

/// One resolved target of an upstream: an address to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ip:port`, for logs and `/status`.
    pub address: Arc<str>,
    /// Host name (for SNI): the configured name, or the IP for static targets.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The address connections go to.
    pub addr: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Key of this target's pool: equal for equal (address, host, scheme, protocol, TLS).
    pub pool_key: u64,
    /// Health and load, shared across sets and reloads.
    pub state: Arc<live::TargetState>,
}

/// A named upstream.
pub struct Upstream {
    /// Name routes refer to.
    pub name: String,
    /// Targets as configured (static addresses, host names, SRV names).
    pub specs: Vec<live::TargetSpec>,
    /// The resolved targets, replaced as DNS answers change.
    pub live: Arc<live::LiveTargets>,
    /// The load-balancing policy.
    pub policy: balance::Policy,
    /// Active and passive health checks.
    pub health: config::Health,
    /// Per-target limits.
    pub circuit: config::Circuit,
    /// Hash of the connection settings (scheme, protocol, TLS) that pool keys start from.
    pub pool_seed: u64,
    /// Workers (each has a balancer cursor).
    pub workers: usize,
    /// Protocol.
    pub protocol: Protocol,
    /// TLS, for `https` upstreams.
    pub tls: Option<UpstreamTls>,
    /// Connect (and TLS handshake) timeout.
    pub connect_timeout: Duration,
    /// Time to the response head, and longest pause inside the response body.
    pub read_timeout: Duration,
    /// Longest stall while writing the request.
    pub write_timeout: Duration,
    /// Idle connections kept per target per worker.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// This upstream's error counters (resolved once, when the snapshot is built).
    pub metrics: Arc<sluicegate_telemetry::UpstreamMetrics>,
}

impl Upstream {
    /// The scheme to write in forwarded requests' `X-Forwarded-*` and logs.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether requests in flight per target must be counted (least-connections,
    /// random-two-choices, or a circuit breaker).
    pub fn counts_in_flight(&self) -> bool {
        self.policy.counts_in_flight() || self.circuit.max_connections > 0
    }
}
