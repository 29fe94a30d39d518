//! Deadlines on the coarse clock, without a timer-wheel entry each.
//!
//! A tokio `Sleep` registers in the runtime's timer wheel (under the driver's lock) when it
//! is first polled or reset, and deregisters when dropped: per request that was one of the
//! largest user-space costs (the keep-alive timeout re-armed between requests, the upstream
//! read timeout around every upstream exchange). Timeouts here only need the precision of the
//! coarse clock ([`crate::clock::TICK`]), so a worker keeps its pending deadlines in a
//! thread-local table instead: arming one stores its instant and the task's waker in a slot,
//! and the worker's clock ticker wakes every task whose deadline has passed on each tick.
//!
//! Invariants: a slot belongs to exactly one [`Deadline`] and is freed when it drops; a
//! deadline reports "elapsed" only once the coarse clock has reached it, so a spurious or
//! early wake-up is harmless. On a thread without a ticker (tests, tools) a deadline falls
//! back to a tokio `Sleep`, so it still fires.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

use crate::clock::coarse_now;

/// One armed deadline: the instant and the task to wake (taken when woken).
struct Slot {
    at: Instant,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    /// Whether this thread's clock ticker runs (and so sweeps the table).
    static SWEPT: Cell<bool> = const { Cell::new(false) };
}

/// Wakes every task whose deadline is at or before `now`; called by the clock ticker.
pub(super) fn sweep(now: Instant) {
    // Wakers are collected first: waking may run code that arms or drops deadlines.
    let mut due: Vec<Waker> = Vec::new();
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        for slot in t.slots.iter_mut().flatten() {
            if slot.at <= now {
                if let Some(w) = slot.waker.take() {
                    due.push(w);
                }
            }
        }
    });
    for w in due {
        w.wake();
    }
}

/// Marks this thread as swept by a ticker for as long as the guard lives.
pub(super) struct SweepGuard(());

impl SweepGuard {
    pub(super) fn new() -> Self {
        SWEPT.with(|s| s.set(true));
        SweepGuard(())
    }
}

impl Drop for SweepGuard {
    fn drop(&mut self) {
        SWEPT.with(|s| s.set(false));
        // Nobody sweeps from now on: wake whatever still waits, so it falls back to a timer.
        let wakers: Vec<Waker> = TABLE.with(|t| {
            t.borrow_mut()
                .slots
                .iter_mut()
                .flatten()
                .filter_map(|s| s.waker.take())
                .collect()
        });
        for w in wakers {
            w.wake();
        }
    }
}

/// A resettable deadline, checked on the coarse clock.
pub struct Deadline {
    at: Instant,
    slot: Option<usize>,
    /// Used instead of the table on threads without a ticker.
    fallback: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Deadline {
            at,
            slot: None,
            fallback: None,
        }
    }

    /// Moves the deadline to `at` (registration happens on the next poll).
    pub fn reset(&mut self, at: Instant) {
        self.at = at;
        if let Some(i) = self.slot {
            TABLE.with(|t| {
                if let Some(Some(s)) = t.borrow_mut().slots.get_mut(i) {
                    s.at = at;
                }
            });
        }
        if let Some(sleep) = self.fallback.as_mut() {
            sleep.as_mut().reset(at);
        }
    }

    /// Ready once the deadline has passed; otherwise arranges for the task to be woken then.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if coarse_now() >= self.at {
            return Poll::Ready(());
        }
        if !SWEPT.with(Cell::get) {
            self.release();
            let at = self.at;
            let sleep = self
                .fallback
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            return sleep.as_mut().poll(cx);
        }
        let at = self.at;
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            match self
                .slot
                .and_then(|i| t.slots.get_mut(i))
                .and_then(Option::as_mut)
            {
                Some(s) => {
                    s.at = at;
                    match &s.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => s.waker = Some(cx.waker().clone()),
                    }
                }
                None => {
                    let slot = Slot {
                        at,
                        waker: Some(cx.waker().clone()),
                    };
                    let i = match t.free.pop() {
                        Some(i) => {
                            t.slots[i] = Some(slot);
                            i
                        }
                        None => {
                            t.slots.push(Some(slot));
                            t.slots.len() - 1
                        }
                    };
                    self.slot = Some(i);
                }
            }
        });
        Poll::Pending
    }

    fn release(&mut self) {
        if let Some(i) = self.slot.take() {
            // `try_with`: a deadline dropped during thread teardown finds no table.
            let _ = TABLE.try_with(|t| {
                if let Ok(mut t) = t.try_borrow_mut() {
                    if let Some(s) = t.slots.get_mut(i) {
                        *s = None;
                        t.free.push(i);
                    }
                }
            });
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.release();
    }
}

/// The deadline passed before the future finished.
#[derive(Debug)]
pub struct Elapsed;

/// Runs `fut` until it finishes or `at` passes (checked on the coarse clock).
pub async fn timeout_at<F: Future>(at: Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let mut deadline = Deadline::at(at);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        deadline.poll_elapsed(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_through_the_fallback_timer_without_a_ticker() {
        let start = Instant::now();
        let r = timeout_at(
            start + Duration::from_millis(30),
            std::future::pending::<()>(),
        )
        .await;
        assert!(r.is_err());
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn fires_on_a_ticker_sweep_and_frees_its_slot() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let ticker = tokio::task::spawn_local(crate::clock::run_ticker(|| {}));
                tokio::task::yield_now().await;
                let start = Instant::now();
                let r = timeout_at(
                    start + Duration::from_millis(50),
                    std::future::pending::<()>(),
                )
                .await;
                assert!(r.is_err());
                assert!(start.elapsed() >= Duration::from_millis(40));
                let ok = timeout_at(start + Duration::from_secs(5), async { 7 }).await;
                assert_eq!(ok.ok(), Some(7));
                let used = TABLE.with(|t| t.borrow().slots.iter().flatten().count());
                assert_eq!(used, 0);
                ticker.abort();
            })
            .await;
    }
}
