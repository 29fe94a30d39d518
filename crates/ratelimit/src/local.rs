//! The node's store: one [`Table`] per scope and limit, each a lock-free hash map from key
//! to TAT, shared by every worker. A lookup is a read of the map; an update is one
//! compare-and-swap on the key's word, so workers never wait for each other, only retry
//! when two updated the same key in the same instant.
//!
//! Tables live in a process-wide registry keyed by scope and limit. A reload builds new
//! plugins that ask for the same tables and so keep the counts; a table no plugin holds is
//! dropped once every key in it is whole again. A background thread sweeps expired keys
//! every second (a key whose TAT has passed is indistinguishable from one never seen), so
//! memory follows the keys active in the last burst window. A table holds at most
//! `max_keys` keys: new keys beyond that share one overflow count, so a flood of distinct
//! keys is limited as one client instead of growing memory without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::gcra;
use super::{Limit, Verdict};

/// Keys a table holds by default before new keys share the overflow count.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Limits one check may combine.
pub const MAX_LIMITS: usize = 8;

/// Distinct (scope, limit) tables a process may hold: scripts choose limits at run time,
/// and a script that made one per request must not grow the registry without end.
pub const MAX_TABLES: usize = 10_000;

/// Nanoseconds since the first call in this process (a monotonic clock).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The TATs of one limit in one scope.
#[derive(Debug)]
pub struct Table {
    limit: Limit,
    rates: gcra::Rates,
    cells: papaya::HashMap<Box<[u8]>, AtomicU64>,
    /// The shared count of keys that arrived when the table was full.
    overflow: AtomicU64,
    max_keys: AtomicUsize,
}

impl Table {
    fn new(limit: Limit, max_keys: usize) -> Table {
        Table {
            limit,
            rates: (&limit).into(),
            cells: papaya::HashMap::new(),
            overflow: AtomicU64::new(0),
            max_keys: AtomicUsize::new(max_keys),
        }
    }

    /// The limit this table counts.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Decides one request for `key` at `now`, storing the new TAT when admitted.
    pub fn acquire(&self, key: &[u8], now: u64) -> Verdict {
        let map = self.cells.pin();
        let cell = match map.get(key) {
            Some(c) => c,
            None if map.len() >= self.max_keys.load(Ordering::Relaxed) => &self.overflow,
            None => map.get_or_insert_with(key.into(), || AtomicU64::new(0)),
        };
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let outcome = gcra::decide(current, now, &self.rates);
            let Some(next) = outcome.new_tat else {
                return outcome.verdict;
            };
            match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return outcome.verdict,
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back one request admitted for `key` (another limit of the same check refused
    /// it, so it must not count here either).
    pub fn refund(&self, key: &[u8]) {
        let emission = self.rates.emission;
        let map = self.cells.pin();
        let cell = map.get(key).unwrap_or(&self.overflow);
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t.saturating_sub(emission))
        });
    }

    /// Drops every key whose TAT is not after `now`.
    fn sweep(&self, now: u64) {
        self.cells
            .pin()
            .retain(|_, tat| tat.load(Ordering::Acquire) > now);
    }
}

/// Every table of the process, by scope and limit.
type Registry = Mutex<HashMap<(String, Limit), Arc<Table>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        start_sweeper();
        Mutex::default()
    })
}

/// The table of `limit` in `scope`: the one already in the registry (so counts survive a
/// reload), or a new one. `max_keys` applies from now on either way.
pub fn table(scope: &str, limit: Limit, max_keys: usize) -> Result<Arc<Table>, String> {
    let mut tables = registry().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = tables.get(&(scope.to_string(), limit)) {
        t.max_keys.store(max_keys, Ordering::Relaxed);
        return Ok(t.clone());
    }
    if tables.len() >= MAX_TABLES {
        return Err(format!(
            "too many distinct rate limits in this process (at most {MAX_TABLES})"
        ));
    }
    let t = Arc::new(Table::new(limit, max_keys));
    tables.insert((scope.to_string(), limit), t.clone());
    Ok(t)
}

/// Keys held by every table, for `/metrics`.
pub fn keys_held() -> usize {
    let tables = registry().lock().unwrap_or_else(PoisonError::into_inner);
    tables.values().map(|t| t.len()).sum()
}

/// Sweeps every table at `now`, then forgets the tables nobody holds that are empty.
pub fn sweep(now: u64) {
    let all: Vec<Arc<Table>> = registry()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    for t in &all {
        t.sweep(now);
    }
    drop(all);
    registry()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|_, t| Arc::strong_count(t) > 1 || !t.is_empty());
}

fn start_sweeper() {
    let spawned = std::thread::Builder::new()
        .name("sluicegate-ratelimit".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            sweep(now_ns());
        });
    if let Err(e) = spawned {
        // Counts stay right without it; only expired keys are kept longer.
        tracing::warn!(error = %e, "The rate-limit sweeper did not start: expired keys are kept.");
    }
}

/// Several limits checked together for one key, on the node's tables.
#[derive(Debug, Clone)]
pub struct LocalLimiter {
    tables: Vec<Arc<Table>>,
}

impl LocalLimiter {
    /// The limiter of `limits` (1..=[`MAX_LIMITS`]) in `scope`.
    pub fn new(scope: &str, limits: &[Limit], max_keys: usize) -> Result<LocalLimiter, String> {
        if limits.is_empty() || limits.len() > MAX_LIMITS {
            return Err(format!("give 1 to {MAX_LIMITS} limits"));
        }
        let tables = limits
            .iter()
            .map(|l| table(scope, *l, max_keys))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LocalLimiter { tables })
    }

    /// Decides one request for `key` now: admitted only if every limit admits it, and
    /// counted by none of them otherwise.
    pub fn check(&self, key: &[u8]) -> Verdict {
        self.check_at(key, now_ns())
    }

    /// [`check`](Self::check) at a given time (for tests and benchmarks).
    pub fn check_at(&self, key: &[u8], now: u64) -> Verdict {
        let mut verdicts = [Verdict::UNLIMITED; MAX_LIMITS];
        for (i, t) in self.tables.iter().enumerate() {
            let v = t.acquire(key, now);
            if !v.admitted {
                for earlier in &self.tables[..i] {
                    earlier.refund(key);
                }
                return v;
            }
            verdicts[i] = v;
        }
        Verdict::combine(&verdicts[..self.tables.len()]).unwrap_or(Verdict::UNLIMITED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Period;

    const SEC: u64 = 1_000_000_000;

    fn per_second(rate: u64) -> Limit {
        Limit::new(rate, Period::Second, None).unwrap()
    }

    #[test]
    fn keys_are_counted_apart() {
        let l = LocalLimiter::new("test:apart", &[per_second(2)], 100).unwrap();
        let now = 10 * SEC;
        assert!(l.check_at(b"a", now).admitted);
        assert!(l.check_at(b"a", now).admitted);
        assert!(!l.check_at(b"a", now).admitted);
        assert!(l.check_at(b"b", now).admitted);
    }

    #[test]
    fn a_refusal_by_one_limit_is_not_counted_by_the_others() {
        let l = LocalLimiter::new(
            "test:refund",
            &[
                per_second(100),
                Limit::new(2, Period::Minute, None).unwrap(),
            ],
            100,
        )
        .unwrap();
        let now = 10 * SEC;
        let first = l.check_at(b"k", now);
        assert!(first.admitted);
        assert_eq!(
            (first.limit, first.remaining),
            (2, 1),
            "the minute limit binds"
        );
        assert!(l.check_at(b"k", now).admitted);
        for _ in 0..50 {
            let v = l.check_at(b"k", now);
            assert!(!v.admitted);
            assert_eq!(v.limit, 2);
        }
        // The 50 refusals gave their per-second share back: 98 of 100 are left.
        let t = table("test:refund", per_second(100), 100).unwrap();
        let v = t.acquire(b"k", now);
        assert_eq!(v.remaining, 97);
    }

    #[test]
    fn the_registry_hands_out_the_same_table_for_the_same_scope_and_limit() {
        let a = LocalLimiter::new("test:reload", &[per_second(1)], 100).unwrap();
        assert!(a.check_at(b"x", SEC).admitted);
        // What a reload does: build a new limiter, then drop the old one.
        let b = LocalLimiter::new("test:reload", &[per_second(1)], 100).unwrap();
        drop(a);
        assert!(!b.check_at(b"x", SEC).admitted, "the count carried over");
        let other = LocalLimiter::new("test:reload-other", &[per_second(1)], 100).unwrap();
        assert!(other.check_at(b"x", SEC).admitted);
    }

    #[test]
    fn a_full_table_counts_new_keys_together() {
        let l = LocalLimiter::new("test:full", &[per_second(3)], 2).unwrap();
        let now = SEC;
        assert!(l.check_at(b"a", now).admitted);
        assert!(l.check_at(b"b", now).admitted);
        let admitted = (0..10)
            .filter(|i| l.check_at(format!("new{i}").as_bytes(), now).admitted)
            .count();
        assert_eq!(admitted, 3, "ten new keys share one count of 3");
    }

    #[test]
    fn sweeping_drops_expired_keys_and_unused_tables() {
        let scope = "test:sweep";
        let l = LocalLimiter::new(scope, &[per_second(10)], 100).unwrap();
        let start = now_ns();
        for i in 0..20u32 {
            l.check_at(&i.to_be_bytes(), start);
        }
        let t = table(scope, per_second(10), 100).unwrap();
        assert_eq!(t.len(), 20);
        sweep(start);
        assert_eq!(t.len(), 20, "nothing has expired yet");
        sweep(start + SEC);
        assert_eq!(t.len(), 0);
        drop((l, t));
        sweep(start + SEC);
        let fresh = table(scope, per_second(10), 100).unwrap();
        assert_eq!(
            Arc::strong_count(&fresh),
            2,
            "a new table, registry + this one"
        );
    }

    #[test]
    fn workers_on_many_threads_never_admit_more_than_the_limit() {
        let l = Arc::new(LocalLimiter::new("test:threads", &[per_second(1000)], 100).unwrap());
        let now = 3 * SEC;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .filter(|_| l.check_at(b"hot", now).admitted)
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
