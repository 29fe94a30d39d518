//! Upstreams: named groups of targets, how a target is chosen, and the settings used to
//! talk to them. An [`Upstream`] is immutable and belongs to one configuration snapshot;
//! connection pools are per worker ([`pool`]) and keyed by target, so they survive reloads
//! that keep a target.
//!
//! Target choice is behind [`Balancer`] so more policies (least-connections, hashing) and
//! health state can be added without touching the proxy.

pub mod h1;
pub mod pool;

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

    /// Picks a target for worker `worker`, skipping the first `attempt` choices (so a retry
    /// after a connect failure goes to the next target).
    pub fn pick(&self, worker: usize, attempt: usize) -> Option<&Target> {
        self.balancer.pick(&self.targets, worker, attempt)
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

    fn pick<'t>(&self, targets: &'t [Target], worker: usize, attempt: usize) -> Option<&'t Target> {
        if self.schedule.is_empty() {
            return None;
        }
        let cursor = &self.cursors[worker % self.cursors.len()].0;
        let base = if attempt == 0 {
            cursor.fetch_add(1, Ordering::Relaxed)
        } else {
            cursor.load(Ordering::Relaxed).wrapping_sub(1)
        };
        let first = self.schedule[base % self.schedule.len()];
        // Retries walk the targets in order from the first choice, so each is tried once.
        targets.get((first + attempt) % targets.len())
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
        let t = [target("a", 1), target("b", 1)];
        let b = Balancer::round_robin(&t, 1);
        let first = b.pick(&t, 0, 0).unwrap().address.clone();
        let retry = b.pick(&t, 0, 1).unwrap().address.clone();
        assert_ne!(first, retry);
        let next = b.pick(&t, 0, 0).unwrap().address.clone();
        assert_ne!(first, next);
    }
}
