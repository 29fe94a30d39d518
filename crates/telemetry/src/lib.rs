//! Logs and metrics. Metrics live in one process-wide [`Metrics`] registry that outlives
//! configuration snapshots (so counters do not reset on reload); snapshots hold `Arc`s to
//! the per-route and per-upstream entries they need, so the hot path only does relaxed
//! atomic adds. [`Metrics::render`] writes the Prometheus text format.
//!
//! The access log is in [`access_log`].

mod access_log;

pub use self::access_log::{flush_access_log, httpdate_rfc3339, AccessLog, AccessRecord};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the request-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        static BOUNDS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| DURATION_BUCKETS.iter().map(|b| b.to_string()).collect());
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(BOUNDS.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one route.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Requests by status code (index = status - 100).
    by_status: Box<[AtomicU64]>,
    /// Total request duration.
    pub duration: Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::default(),
        }
    }
}

impl RouteMetrics {
    /// Counts a finished request.
    pub fn record(&self, status: u16, took: Duration) {
        if let Some(c) = self.by_status.get(usize::from(status).wrapping_sub(100)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took);
    }
}

/// Counters of one upstream.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Errors by kind (`connect`, `timeout`, `protocol`, `body`).
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests retried on another target (route `retry:` policies).
    pub retries: AtomicU64,
    /// Retries refused because the route's retry budget was spent.
    pub retry_budget_exhausted: AtomicU64,
    /// Requests refused with 503 because every target was at its circuit-breaker limit.
    pub circuit_open: AtomicU64,
}

impl UpstreamMetrics {
    /// Counts an upstream error of `kind` (rare, so a mutex is fine).
    pub fn error(&self, kind: &'static str) {
        let mut m = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(kind).or_insert(0) += 1;
    }
}

/// The process-wide metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    upstreams: Mutex<BTreeMap<String, Arc<UpstreamMetrics>>>,
    /// Client connections open now.
    pub active_connections: AtomicI64,
    /// Of those, idle HTTP/1.1 connections parked without a task or buffers.
    pub parked_connections: AtomicI64,
    /// Client connections accepted since start.
    pub accepted_connections: AtomicU64,
    /// Requests hyper rejected as malformed before they reached a route (400/431).
    pub malformed_requests: AtomicU64,
    /// Successful configuration reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected configuration reloads.
    pub reloads_failed: AtomicU64,
    /// Script failures by (script, kind).
    scripts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Metrics {
    /// The entry for route `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut m = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(name.to_string()).or_default().clone()
    }

    /// The entry for upstream `name`, created on first use.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        let mut m = self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        m.entry(name.to_string()).or_default().clone()
    }

    /// Counts a script failure of `kind` (`error` or `budget`).
    pub fn script_failure(&self, script: &str, kind: &'static str) {
        let mut m = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((script.to_string(), kind)).or_insert(0) += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP sluicegate_requests_total Requests by route and status.\n");
        out.push_str("# TYPE sluicegate_requests_total counter\n");
        // A route appears once it has served a request: with thousands of routes, most
        // idle, their empty histograms would be most of the text.
        let routes: Vec<(String, Arc<RouteMetrics>)> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, v)| v.duration.count.load(Ordering::Relaxed) > 0)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, m) in &routes {
            for (i, c) in m.by_status.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "sluicegate_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        escape(name),
                        i + 100
                    );
                }
            }
        }
        out.push_str("# HELP sluicegate_request_duration_seconds Time from request head to end of response body.\n");
        out.push_str("# TYPE sluicegate_request_duration_seconds histogram\n");
        for (name, m) in &routes {
            let labels = format!("route=\"{}\"", escape(name));
            m.duration
                .render(&mut out, "sluicegate_request_duration_seconds", &labels);
        }
        out.push_str(
            "# HELP sluicegate_upstream_errors_total Upstream failures by upstream and kind.\n",
        );
        out.push_str("# TYPE sluicegate_upstream_errors_total counter\n");
        for (name, m) in self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (kind, n) in m
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                let _ = writeln!(
                    out,
                    "sluicegate_upstream_errors_total{{upstream=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(name)
                );
            }
        }
        out.push_str(
            "# HELP sluicegate_script_failures_total Lua script failures by script and kind.\n",
        );
        out.push_str("# TYPE sluicegate_script_failures_total counter\n");
        for ((script, kind), n) in self
            .scripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "sluicegate_script_failures_total{{script=\"{}\",kind=\"{kind}\"}} {n}",
                escape(script)
            );
        }
        let gauges = [
            (
                "sluicegate_active_connections",
                "gauge",
                "Client connections open now.",
                self.active_connections.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_parked_connections",
                "gauge",
                "Idle HTTP/1.1 client connections parked without a task or buffers.",
                self.parked_connections.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_accepted_connections_total",
                "counter",
                "Client connections accepted.",
                self.accepted_connections
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "sluicegate_malformed_requests_total",
                "counter",
                "Requests rejected as malformed HTTP before routing.",
                self.malformed_requests.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_config_reloads_total",
                "counter",
                "Configuration reloads applied.",
                self.reloads_ok.load(Ordering::Relaxed).to_string(),
            ),
            (
                "sluicegate_config_reload_failures_total",
                "counter",
                "Configuration reloads rejected.",
                self.reloads_failed.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// `s` as a Prometheus label value: backslash, double quote and newline escaped.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_by_route_and_status() {
        let m = Metrics::default();
        m.route("api").record(200, Duration::from_millis(3));
        m.route("api").record(502, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("sluicegate_requests_total{route=\"api\",status=\"200\"} 1"));
        assert!(text.contains("sluicegate_requests_total{route=\"api\",status=\"502\"} 1"));
        assert!(text.contains("sluicegate_request_duration_seconds_count{route=\"api\"} 2"));
        assert!(text
            .contains("sluicegate_request_duration_seconds_bucket{route=\"api\",le=\"0.0005\"} 0"));
        assert!(text
            .contains("sluicegate_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 2"));
    }

    #[test]
    fn a_route_appears_once_it_served_a_request() {
        let m = Metrics::default();
        let idle = m.route("idle");
        assert!(!m.render().contains("route=\"idle\""));
        idle.record(404, Duration::from_millis(1));
        assert!(m
            .render()
            .contains("sluicegate_request_duration_seconds_count{route=\"idle\"} 1"));
    }
}
