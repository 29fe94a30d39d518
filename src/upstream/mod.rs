//! Upstreams: named groups of targets, how a target is chosen, and the settings used to
//! talk to them. An [`Upstream`] is immutable and belongs to one configuration snapshot;
//! connection pools are per worker ([`pool`]) and keyed by target, so they survive reloads
//! that keep a target.
//!
//! Target choice is behind [`Balancer`] so more policies (least-connections, hashing) and
//! health state can be added without touching the proxy.

pub mod h1;
pub mod pool;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
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

/// One target of an upstream.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as written.
    pub address: Arc<str>,
    /// Host part (for SNI and the pool key).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Relative weight.
    pub weight: u32,
    /// Key of this target's pool: equal for equal (address, scheme, protocol, TLS).
    pub pool_key: u64,
}

/// A named upstream.
pub struct Upstream {
    /// Name routes refer to.
    pub name: String,
    /// Targets, in configuration order.
    pub targets: Vec<Target>,
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
    /// The balancing policy.
    pub balancer: Balancer,
    /// This upstream's error counters (resolved once, when the snapshot is built).
    pub metrics: Arc<crate::telemetry::UpstreamMetrics>,
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

    /// The balancer's choice for worker `worker`: an index into `targets`. Pass it to
    /// [`Upstream::target`] with the attempt number so retries walk the other targets.
    pub fn pick(&self, worker: usize) -> Option<usize> {
        self.balancer.pick(worker)
    }

    /// The target for `attempt` (0 = first try) after the balancer chose `first`: each
    /// target is tried once, in order from the first choice.
    pub fn target(&self, first: usize, attempt: usize) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        self.targets.get((first + attempt) % self.targets.len())
    }
}

/// Weighted round-robin, with one cursor per worker so workers never contend.
pub struct Balancer {
    /// The expanded schedule: target indexes, each repeated by weight, interleaved.
    schedule: Vec<usize>,
    /// One cursor per worker, each on its own cache line.
    cursors: Vec<PaddedCursor>,
}

#[repr(align(64))]
struct PaddedCursor(AtomicUsize);

impl Balancer {
    /// A weighted round-robin over `targets` for `workers` workers.
    pub fn round_robin(targets: &[Target], workers: usize) -> Self {
        Balancer {
            schedule: smooth_schedule(targets),
            cursors: (0..workers.max(1))
                .map(|w| PaddedCursor(AtomicUsize::new(w)))
                .collect(),
        }
    }

    fn pick(&self, worker: usize) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let cursor = &self.cursors[worker % self.cursors.len()].0;
        let base = cursor.fetch_add(1, Ordering::Relaxed);
        Some(self.schedule[base % self.schedule.len()])
    }
}

/// nginx's smooth weighted round-robin, unrolled into a schedule: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_schedule(targets: &[Target]) -> Vec<usize> {
    let total: i64 = targets.iter().map(|t| i64::from(t.weight)).sum();
    let mut current = vec![0i64; targets.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, t) in targets.iter().enumerate() {
            current[i] += i64::from(t.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str, weight: u32) -> Target {
        Target {
            address: Arc::from(addr),
            host: addr.to_string(),
            port: 80,
            weight,
            pool_key: 0,
        }
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let t = [target("a", 5), target("b", 1), target("c", 1)];
        assert_eq!(smooth_schedule(&t), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_visits_every_target_and_retries_move_on() {
        let u = Upstream {
            name: "u".into(),
            balancer: Balancer::round_robin(&[target("a", 1), target("b", 1)], 1),
            targets: vec![target("a", 1), target("b", 1)],
            protocol: Protocol::Http1,
            tls: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_idle: 1,
            idle_timeout: Duration::from_secs(1),
            metrics: Default::default(),
        };
        let first = u.pick(0).unwrap();
        let try0 = u.target(first, 0).unwrap().address.clone();
        let try1 = u.target(first, 1).unwrap().address.clone();
        assert_ne!(try0, try1, "a retry goes to the other target");
        let next = u.target(u.pick(0).unwrap(), 0).unwrap().address.clone();
        assert_ne!(try0, next, "the next request goes to the next target");
    }
}
