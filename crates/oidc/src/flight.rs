//! Single flight: one execution of an operation per key at a time, its result shared with
//! every caller that asked meanwhile, and kept a little longer for callers that arrive just
//! after. The plugin refreshes a session's tokens through it, keyed by the session id: a page
//! that fires twenty requests with an expired session makes one refresh, not twenty (which
//! a provider rotating refresh tokens would answer with nineteen `invalid_grant`s).
//!
//! Invariants: while a leader runs, at most one entry exists for its key; a result is served
//! for `keep` after it was produced and never after; a leader whose future is dropped
//! removes its entry and wakes its followers, one of which takes over, so nobody waits for a
//! result that will not come; the table never holds more than [`MAX_ENTRIES`] entries
//! (beyond that, calls run unshared).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The most keys tracked at once; one entry is a few hundred bytes at most.
pub const MAX_ENTRIES: usize = 100_000;

enum Slot<V> {
    /// A leader is running; its result will arrive on the channel.
    Running {
        id: u64,
        result: watch::Receiver<Option<V>>,
    },
    /// The result, produced at `at`.
    Done { value: V, at: Instant },
}

struct Table<V> {
    slots: HashMap<String, Slot<V>>,
    next_id: u64,
    last_sweep: Instant,
}

/// Runs one operation per key at a time and shares its result (see the module docs).
pub struct SingleFlight<V: Clone + Send + Sync + 'static> {
    keep: Duration,
    table: Mutex<Table<V>>,
}

enum Join<V> {
    Ready(V),
    Follow(watch::Receiver<Option<V>>),
    Lead(u64, watch::Sender<Option<V>>),
    Alone,
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// A table that keeps each result for `keep` after it was produced.
    pub fn new(keep: Duration) -> SingleFlight<V> {
        SingleFlight {
            keep,
            table: Mutex::new(Table {
                slots: HashMap::new(),
                next_id: 0,
                last_sweep: Instant::now(),
            }),
        }
    }

    /// The result of `f` for `key`: the result kept from a run that ended less than `keep`
    /// ago, else the result of the run in progress, else of running `f` now.
    pub async fn run<F, Fut>(&self, key: &str, f: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        loop {
            match self.join(key) {
                Join::Ready(value) => return value,
                Join::Follow(result) => {
                    if let Some(value) = wait(result).await {
                        return value;
                    }
                    // The leader was cancelled: take over (or follow whoever did).
                }
                Join::Lead(id, sender) => {
                    let lead = Lead {
                        flight: self,
                        key,
                        id,
                        sender: Some(sender),
                    };
                    let value = f().await;
                    lead.finish(value.clone());
                    return value;
                }
                Join::Alone => return f().await,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<V>> {
        // Nothing panics while the lock is held; if something did, the table is still whole.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, key: &str) -> Join<V> {
        let now = Instant::now();
        let mut table = self.lock();
        let table = &mut *table;
        // A full sweep at most once per `keep`: stale results are never served anyway, so
        // this only bounds memory, without an O(n) scan on every call.
        if now.duration_since(table.last_sweep) >= self.keep || table.slots.len() >= MAX_ENTRIES {
            let keep = self.keep;
            table.slots.retain(|_, slot| match slot {
                Slot::Running { .. } => true,
                Slot::Done { at, .. } => now.duration_since(*at) < keep,
            });
            table.last_sweep = now;
        }
        match table.slots.get(key) {
            Some(Slot::Done { value, at }) if now.duration_since(*at) < self.keep => {
                return Join::Ready(value.clone());
            }
            Some(Slot::Running { result, .. }) => return Join::Follow(result.clone()),
            _ => {}
        }
        if table.slots.len() >= MAX_ENTRIES && !table.slots.contains_key(key) {
            return Join::Alone;
        }
        let (sender, result) = watch::channel(None);
        table.next_id += 1;
        let id = table.next_id;
        table
            .slots
            .insert(key.to_owned(), Slot::Running { id, result });
        Join::Lead(id, sender)
    }
}

/// The result sent on `result`, or `None` if its leader went away without one.
async fn wait<V: Clone>(mut result: watch::Receiver<Option<V>>) -> Option<V> {
    loop {
        let current = result.borrow_and_update().clone();
        if current.is_some() {
            return current;
        }
        if result.changed().await.is_err() {
            // A value sent just before the sender was dropped is still there.
            return result.borrow().clone();
        }
    }
}

/// The leader's hold on its entry: on [`Lead::finish`] it stores and sends the result; if
/// dropped before (the leader's future was cancelled), it removes the entry, and dropping
/// the sender wakes the followers.
struct Lead<'a, V: Clone + Send + Sync + 'static> {
    flight: &'a SingleFlight<V>,
    key: &'a str,
    id: u64,
    sender: Option<watch::Sender<Option<V>>>,
}

impl<V: Clone + Send + Sync + 'static> Lead<'_, V> {
    fn finish(mut self, value: V) {
        {
            let mut table = self.flight.lock();
            let done = Slot::Done {
                value: value.clone(),
                at: Instant::now(),
            };
            table.slots.insert(self.key.to_owned(), done);
        }
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(value));
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Drop for Lead<'_, V> {
    fn drop(&mut self) {
        if self.sender.is_none() {
            return;
        }
        let mut table = self.flight.lock();
        if matches!(table.slots.get(self.key), Some(Slot::Running { id, .. }) if *id == self.id) {
            table.slots.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::time::{sleep, timeout};

    fn counted(runs: &Arc<AtomicUsize>, value: u32, delay_ms: u64) -> impl Future<Output = u32> {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(delay_ms)).await;
            value
        }
    }

    #[tokio::test]
    async fn runs_once_for_32_concurrent_callers_and_shares_the_result() {
        let flight = Arc::new(SingleFlight::new(Duration::from_secs(5)));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (flight, runs) = (flight.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flight.run("sid", || counted(&runs, 7, 30)).await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn runs_separately_for_different_keys() {
        let flight = SingleFlight::new(Duration::from_secs(5));
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, b) = tokio::join!(
            flight.run("a", || counted(&runs, 1, 10)),
            flight.run("b", || counted(&runs, 2, 10)),
        );
        assert_eq!((a, b), (1, 2));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_leave_its_followers_waiting() {
        let flight = Arc::new(SingleFlight::new(Duration::from_secs(5)));
        let runs = Arc::new(AtomicUsize::new(0));
        let leader = {
            let (flight, runs) = (flight.clone(), runs.clone());
            tokio::spawn(async move { flight.run("sid", || counted(&runs, 1, 60_000)).await })
        };
        sleep(Duration::from_millis(10)).await;
        let followers: Vec<_> = (0..4)
            .map(|_| {
                let (flight, runs) = (flight.clone(), runs.clone());
                tokio::spawn(async move { flight.run("sid", || counted(&runs, 2, 10)).await })
            })
            .collect();
        sleep(Duration::from_millis(10)).await;
        leader.abort();
        for follower in followers {
            let value = timeout(Duration::from_secs(2), follower)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(value, 2);
        }
        // The cancelled leader, then one follower that took over.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn serves_a_result_for_keep_and_runs_again_after() {
        let flight = SingleFlight::new(Duration::from_millis(100));
        let runs = Arc::new(AtomicUsize::new(0));
        assert_eq!(flight.run("sid", || counted(&runs, 1, 0)).await, 1);
        assert_eq!(flight.run("sid", || counted(&runs, 2, 0)).await, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        sleep(Duration::from_millis(150)).await;
        assert_eq!(flight.run("sid", || counted(&runs, 3, 0)).await, 3);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn prunes_results_older_than_keep() {
        let flight = SingleFlight::new(Duration::from_millis(50));
        for k in 0..10 {
            flight.run(&format!("k{k}"), || async { 0u8 }).await;
        }
        assert_eq!(flight.lock().slots.len(), 10);
        sleep(Duration::from_millis(80)).await;
        flight.run("other", || async { 0u8 }).await;
        assert_eq!(flight.lock().slots.len(), 1);
    }

    #[tokio::test]
    async fn a_leader_dropped_before_running_leaves_no_entry() {
        let flight: SingleFlight<u8> = SingleFlight::new(Duration::from_secs(5));
        {
            let call = flight.run("sid", std::future::pending);
            let _ = timeout(Duration::from_millis(10), call).await;
        }
        assert!(flight.lock().slots.is_empty());
        assert_eq!(flight.run("sid", || async { 9 }).await, 9);
    }
}
