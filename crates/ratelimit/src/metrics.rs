//! Counters of rate-limit decisions, by bucket, for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use sluicegate_telemetry::escape;

/// The counters of one bucket.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests let through.
    pub admitted: AtomicU64,
    /// Requests refused with 429.
    pub limited: AtomicU64,
    /// Requests let through unchecked because the shared store failed (`fail_open`).
    pub failed_open: AtomicU64,
    /// Requests refused with 503 because the shared store failed (`fail_closed`).
    pub failed_closed: AtomicU64,
    /// Failed round trips to the shared store, by kind.
    store_errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    /// Counts a failed round trip of `kind` (`connect`, `timeout`, `protocol`, `refused`).
    pub fn store_error(&self, kind: &'static str) {
        let mut m = self
            .store_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry(kind).or_insert(0) += 1;
    }
}

fn buckets() -> &'static Mutex<BTreeMap<String, Arc<Counters>>> {
    static BUCKETS: OnceLock<Mutex<BTreeMap<String, Arc<Counters>>>> = OnceLock::new();
    BUCKETS.get_or_init(Mutex::default)
}

/// The counters of `bucket`, created on first use and kept for the life of the process.
pub fn counters(bucket: &str) -> Arc<Counters> {
    let mut m = buckets().lock().unwrap_or_else(PoisonError::into_inner);
    m.entry(bucket.to_string()).or_default().clone()
}

/// Appends the Prometheus text of every bucket to `out`.
pub fn render(out: &mut String) {
    let all: Vec<(String, Arc<Counters>)> = buckets()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.push_str(
        "# HELP sluicegate_rate_limit_decisions_total Rate-limit decisions by bucket and result.\n",
    );
    out.push_str("# TYPE sluicegate_rate_limit_decisions_total counter\n");
    for (name, c) in &all {
        for (result, n) in [
            ("admitted", &c.admitted),
            ("limited", &c.limited),
            ("failed_open", &c.failed_open),
            ("failed_closed", &c.failed_closed),
        ] {
            let _ = writeln!(
                out,
                "sluicegate_rate_limit_decisions_total{{bucket=\"{}\",result=\"{result}\"}} {}",
                escape(name),
                n.load(Ordering::Relaxed)
            );
        }
    }
    out.push_str("# HELP sluicegate_rate_limit_store_errors_total Failed round trips to the shared rate-limit store, by bucket and kind.\n");
    out.push_str("# TYPE sluicegate_rate_limit_store_errors_total counter\n");
    for (name, c) in &all {
        let errors = c
            .store_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (kind, n) in errors.iter() {
            let _ = writeln!(
                out,
                "sluicegate_rate_limit_store_errors_total{{bucket=\"{}\",kind=\"{kind}\"}} {n}",
                escape(name)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluicegate_rate_limit_local_keys Keys the node's rate-limit tables hold.\n\
         # TYPE sluicegate_rate_limit_local_keys gauge\n\
         sluicegate_rate_limit_local_keys {}",
        super::local::keys_held()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_result_and_store_error() {
        let c = counters("metrics \"test\"");
        c.admitted.fetch_add(3, Ordering::Relaxed);
        c.limited.fetch_add(1, Ordering::Relaxed);
        c.store_error("timeout");
        c.store_error("timeout");
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains(
            "sluicegate_rate_limit_decisions_total{bucket=\"metrics \\\"test\\\"\",result=\"admitted\"} 3"
        ));
        assert!(out.contains("result=\"limited\"} 1"));
        assert!(out.contains(
            "sluicegate_rate_limit_store_errors_total{bucket=\"metrics \\\"test\\\"\",kind=\"timeout\"} 2"
        ));
        assert!(out.contains("sluicegate_rate_limit_local_keys "));
    }
}
