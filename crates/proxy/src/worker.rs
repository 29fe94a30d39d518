//! The per-worker state every request on a worker's thread reaches: the shared state, the
//! upstream connection pool, the Lua VM, the drain signal and tracker, the request-id
//! buffer. The thread, its runtime and its accept loop are the server's.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use sluicegate_core::context::WorkerView;
use sluicegate_upstream::pool::Pool;
use tokio::sync::Notify;

use crate::snapshot::Shared;

/// Worker-local state, reachable from every request on this thread.
pub struct Worker {
    /// Worker number (0-based).
    pub id: usize,
    /// Process-wide shared state.
    pub shared: Arc<Shared>,
    /// Upstream connections of this worker.
    pub pool: Pool,
    /// This worker's Lua VM (created on the first script call).
    pub lua: sluicegate_lua::WorkerLua,
    /// Client connections and upgraded tunnels in flight (what a drain waits for).
    pub tracker: Rc<Tracker>,
    /// Asks this worker's connections to finish their current request and close.
    pub drain: DrainSignal,
    /// Where this worker's generated request ids are written.
    pub request_ids: crate::RequestIds,
    /// The durable queues (one registry for the process's life), for plugins that
    /// play back pushed messages (`pubsub_push`).
    pub queues: Arc<sluicegate_queue::Queues>,
}

/// What plugins and scripts see of the worker (the vocabulary crate's narrow view).
impl WorkerView for Worker {
    fn id(&self) -> usize {
        self.id
    }

    fn draining(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    fn script_failed(&self, script: &str, kind: &'static str) {
        self.shared.metrics.script_failure(script, kind);
    }

    fn service_of(&self, ty: TypeId) -> Option<&dyn Any> {
        if ty == TypeId::of::<sluicegate_lua::WorkerLua>() {
            Some(&self.lua)
        } else if ty == TypeId::of::<sluicegate_code::CodeRegistry>() {
            Some(&*self.shared.code)
        } else if ty == TypeId::of::<Arc<sluicegate_queue::Queues>>() {
            Some(&self.queues)
        } else if ty == TypeId::of::<Worker>() {
            Some(self)
        } else {
            None
        }
    }
}

impl Worker {
    /// A worker's state (used by `run`, and by the Lua test harness outside a server).
    pub fn new(id: usize, shared: Arc<Shared>, lua: sluicegate_lua::WorkerLua) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            queues: shared.queues(),
            shared,
            pool: Pool::default(),
            lua,
            tracker: Rc::default(),
            drain: DrainSignal::default(),
            request_ids: Default::default(),
        })
    }
}

/// The worker-local shutdown signal for client connections: a flag plus the waker of each
/// connection task, registered once per connection. (A `watch` receiver polled next to every
/// connection cost a lock on each of its wake-ups, i.e. several times per request.)
#[derive(Default)]
pub struct DrainSignal {
    draining: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl DrainSignal {
    /// Whether the worker is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Flips the flag and wakes every registered connection.
    pub fn start(&self) {
        self.draining.set(true);
        let wakers: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// A registration for one connection.
    pub fn slot(&self) -> DrainSlot<'_> {
        DrainSlot {
            signal: self,
            slot: None,
        }
    }

    /// Stores (or refreshes) the waker in `slot`.
    fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        if let Some(Some(w)) = slot.and_then(|i| wakers.get_mut(i)) {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
            return;
        }
        let i = match slot.or_else(|| self.free.borrow_mut().pop()) {
            Some(i) if i < wakers.len() => {
                wakers[i] = Some(waker.clone());
                i
            }
            _ => {
                wakers.push(Some(waker.clone()));
                wakers.len() - 1
            }
        };
        *slot = Some(i);
    }

    fn release(&self, slot: Option<usize>) {
        if let Some(i) = slot {
            if let Some(w) = self.wakers.borrow_mut().get_mut(i) {
                *w = None;
                self.free.borrow_mut().push(i);
            }
        }
    }
}

/// A connection's registration with the [`DrainSignal`], released when dropped.
pub struct DrainSlot<'a> {
    signal: &'a DrainSignal,
    slot: Option<usize>,
}

impl DrainSlot<'_> {
    /// Whether the worker is draining.
    pub fn is_draining(&self) -> bool {
        self.signal.is_draining()
    }

    /// Wakes `waker` when the worker starts draining.
    pub fn watch(&mut self, waker: &Waker) {
        self.signal.register(&mut self.slot, waker);
    }
}

impl Drop for DrainSlot<'_> {
    fn drop(&mut self) {
        self.signal.release(self.slot.take());
    }
}

/// Counts what a graceful shutdown must wait for on this worker.
#[derive(Default)]
pub struct Tracker {
    /// Connections and tunnels in flight.
    pub active: Cell<usize>,
    /// Notified when `active` drops to zero.
    pub idle: Notify,
}

/// Holds one unit of in-flight work; dropping it releases it.
pub struct Active(Rc<Tracker>);

impl Tracker {
    /// Registers one connection or tunnel until the returned guard is dropped.
    pub fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let t = &self.0;
        t.active.set(t.active.get().saturating_sub(1));
        if t.active.get() == 0 {
            t.idle.notify_waiters();
        }
    }
}
