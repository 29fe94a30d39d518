//! Per-queue counters and latency histograms, and their Prometheus rendering. Counters are
//! relaxed atomics bumped from the request path (enqueue) and the delivery thread; gauges
//! (depth, age, bytes) are read from the backend at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::backend::BackendStats;

/// Ack latency buckets (seconds): an fsync takes from tens of microseconds (NVMe with a
/// write cache) to tens of milliseconds (network disks).
pub const ACK_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Delivery latency buckets (seconds): from a fast upstream (milliseconds) to retries over
/// an outage (hours).
pub const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
];

/// A histogram over fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// An empty histogram with `bounds` (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The mean observation, if any.
    pub fn mean(&self) -> Option<Duration> {
        let n = self.count();
        (n > 0).then(|| Duration::from_micros(self.sum_us.load(Ordering::Relaxed) / n))
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one queue since the process started.
#[derive(Debug)]
pub struct QueueMetrics {
    /// Messages appended (acknowledged to the client).
    pub enqueued: AtomicU64,
    /// Appends refused because the queue was full.
    pub rejected_full: AtomicU64,
    /// Messages the upstream accepted (2xx).
    pub delivered: AtomicU64,
    /// Failed attempts that were scheduled for a retry.
    pub retried: AtomicU64,
    /// Messages moved to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Messages delivered again after a restart although they may have reached the
    /// upstream before it (at-least-once duplicates).
    pub duplicates: AtomicU64,
    /// Time from append to durable (the client's wait for its acknowledgement).
    pub ack_latency: Histogram,
    /// Time from append to the upstream's 2xx.
    pub delivery_latency: Histogram,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        QueueMetrics {
            enqueued: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            ack_latency: Histogram::new(ACK_BUCKETS),
            delivery_latency: Histogram::new(DELIVERY_BUCKETS),
        }
    }
}

impl QueueMetrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as JSON (for the admin API).
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "enqueued": get(&self.enqueued),
            "rejected_full": get(&self.rejected_full),
            "delivered": get(&self.delivered),
            "retried": get(&self.retried),
            "dead_lettered": get(&self.dead_lettered),
            "duplicates_after_recovery": get(&self.duplicates),
        })
    }
}

type Gauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Sample<'_>, u64) -> f64,
);
type Counter = (&'static str, &'static str, fn(&QueueMetrics) -> &AtomicU64);
type Hist = (&'static str, &'static str, fn(&QueueMetrics) -> &Histogram);

/// One queue's data for rendering.
pub struct Sample<'a> {
    /// Queue name.
    pub name: &'a str,
    /// Its counters.
    pub metrics: &'a QueueMetrics,
    /// Its backend's counters now.
    pub stats: BackendStats,
}

/// Writes the Prometheus text for `queues` (every family once, one series per queue).
pub fn render(out: &mut String, queues: &[Sample<'_>], now_ms: u64) {
    if queues.is_empty() {
        return;
    }
    let label = |s: &Sample<'_>| format!("queue=\"{}\"", escape(s.name));
    let gauges: [Gauge; 5] = [
        (
            "sluicegate_queue_depth",
            "gauge",
            "Messages waiting for delivery.",
            |s, _| s.stats.pending as f64,
        ),
        (
            "sluicegate_queue_oldest_message_age_seconds",
            "gauge",
            "Age of the oldest message waiting for delivery (0 when empty).",
            |s, now| {
                s.stats
                    .oldest_pending_appended_at_ms
                    .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0)
            },
        ),
        (
            "sluicegate_queue_bytes",
            "gauge",
            "Bytes the queue occupies on disk.",
            |s, _| s.stats.bytes_on_disk as f64,
        ),
        (
            "sluicegate_queue_max_bytes",
            "gauge",
            "Configured bound on the queue's bytes on disk.",
            |s, _| s.stats.max_bytes as f64,
        ),
        (
            "sluicegate_queue_dead_letters",
            "gauge",
            "Messages in the dead-letter store.",
            |s, _| s.stats.dead as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in queues {
            let _ = writeln!(out, "{name}{{{}}} {}", label(s), value(s, now_ms));
        }
    }
    let counters: [Counter; 6] = [
        ("sluicegate_queue_enqueued_total", "Messages appended and acknowledged.", |m| &m.enqueued),
        ("sluicegate_queue_rejected_full_total", "Requests refused with 503 because the queue was full.", |m| &m.rejected_full),
        ("sluicegate_queue_delivered_total", "Messages the upstream accepted (2xx).", |m| &m.delivered),
        ("sluicegate_queue_retried_total", "Failed delivery attempts scheduled for a retry.", |m| &m.retried),
        ("sluicegate_queue_dead_lettered_total", "Messages moved to the dead-letter store.", |m| &m.dead_lettered),
        (
            "sluicegate_queue_duplicates_after_recovery_total",
            "Messages delivered again after a restart that may have reached the upstream before it.",
            |m| &m.duplicates,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in queues {
            let _ = writeln!(
                out,
                "{name}{{{}}} {}",
                label(s),
                counter(s.metrics).load(Ordering::Relaxed)
            );
        }
    }
    let histograms: [Hist; 2] = [
        (
            "sluicegate_queue_ack_latency_seconds",
            "Time from append to durable (fsync), as the client waits for it.",
            |m| &m.ack_latency,
        ),
        (
            "sluicegate_queue_delivery_latency_seconds",
            "Time from append to the upstream's 2xx.",
            |m| &m.delivery_latency,
        ),
    ];
    for (name, help, hist) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for s in queues {
            hist(s.metrics).render(out, name, &label(s));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_a_queue_label() {
        let m = QueueMetrics::default();
        QueueMetrics::inc(&m.enqueued);
        m.ack_latency.observe(Duration::from_micros(300));
        let stats = BackendStats {
            pending: 3,
            oldest_pending_appended_at_ms: Some(1_000),
            bytes_on_disk: 4096,
            ..BackendStats::default()
        };
        let mut out = String::new();
        render(
            &mut out,
            &[Sample {
                name: "wal",
                metrics: &m,
                stats,
            }],
            3_500,
        );
        assert!(
            out.contains("sluicegate_queue_depth{queue=\"wal\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("sluicegate_queue_oldest_message_age_seconds{queue=\"wal\"} 2.5\n"),
            "{out}"
        );
        assert!(
            out.contains("sluicegate_queue_enqueued_total{queue=\"wal\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "sluicegate_queue_ack_latency_seconds_bucket{queue=\"wal\",le=\"0.0005\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("sluicegate_queue_ack_latency_seconds_count{queue=\"wal\"} 1\n"),
            "{out}"
        );
    }
}
