//! [`Ticket`]: a one-shot completion handed back by the `*_async` methods.
//!
//! A ticket is completed exactly once by the writer thread, after the group
//! commit that carries its request has been fdatasync'ed (or has failed). It
//! can be consumed three ways: `.await` (it implements [`Future`] with std's
//! `Waker`, so any async runtime can await it without a thread per append),
//! [`Ticket::wait`] (blocks the calling thread), or polled with
//! [`Ticket::try_take`]. If the writer side is dropped without completing
//! (log closed), the ticket resolves to [`WalError::Closed`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::{Result, WalError};

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

struct SlotState<T> {
    value: Option<Result<T>>,
    taken: bool,
    waker: Option<Waker>,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The receiving half: resolves to the operation's result once it is durable.
#[must_use = "a ticket does nothing unless awaited or waited on"]
pub struct Ticket<T> {
    slot: Arc<Slot<T>>,
}

/// The sending half, held by the writer thread.
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

/// Makes a connected ticket/completer pair.
pub(crate) fn pair<T>() -> (Completer<T>, Ticket<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            value: None,
            taken: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Completer {
            slot: Some(Arc::clone(&slot)),
        },
        Ticket { slot },
    )
}

/// A ticket that is already resolved.
pub(crate) fn ready<T>(value: Result<T>) -> Ticket<T> {
    let (c, t) = pair();
    c.complete(value);
    t
}

impl<T> Completer<T> {
    /// Resolves the ticket and wakes its waiter.
    pub(crate) fn complete(mut self, value: Result<T>) {
        if let Some(slot) = self.slot.take() {
            let waker = {
                let mut s = slot.lock();
                s.value = Some(value);
                s.waker.take()
            };
            slot.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if self.slot.is_some() {
            let me = Completer {
                slot: self.slot.take(),
            };
            me.complete(Err(WalError::Closed));
        }
    }
}

impl<T> Ticket<T> {
    /// Blocks until the result is available.
    pub fn wait(self) -> Result<T> {
        let mut s = self.slot.lock();
        loop {
            if let Some(v) = s.value.take() {
                s.taken = true;
                return v;
            }
            if s.taken {
                return Err(WalError::Closed);
            }
            s = self.slot.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks for at most `timeout`; returns `None` if still pending.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<T>> {
        let s = self.slot.lock();
        let (mut s, _) = self
            .slot
            .ready
            .wait_timeout_while(s, timeout, |s| s.value.is_none() && !s.taken)
            .unwrap_or_else(|e| e.into_inner());
        let v = s.value.take();
        if v.is_some() {
            s.taken = true;
        }
        v
    }

    /// Returns the result if it is available, without blocking. Returns
    /// `Some` at most once.
    pub fn try_take(&mut self) -> Option<Result<T>> {
        let mut s = self.slot.lock();
        let v = s.value.take();
        if v.is_some() {
            s.taken = true;
        }
        v
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.slot.lock();
        if let Some(v) = s.value.take() {
            s.taken = true;
            return Poll::Ready(v);
        }
        if s.taken {
            return Poll::Ready(Err(WalError::Closed));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> std::fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = self.slot.lock().value.is_some();
        f.debug_struct("Ticket").field("ready", &done).finish()
    }
}
