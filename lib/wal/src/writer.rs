//! The writer thread and group commit. Every mutation (append, ack,
//! dead-letter, replay, purge) is an [`Op`] pushed onto one queue; the single
//! writer thread takes *everything* queued, plans it as one batch, writes it,
//! issues one fdatasync per touched file, publishes the result to the index
//! and only then completes the batch's tickets.
//!
//! Ordering within a batch (the durability argument):
//! 1. segment frames are written and fdatasync'ed (plus the directory if a
//!    segment was created);
//! 2. only then are state-log entries written and fdatasync'ed, so an entry
//!    that depends on a new record (a replay's "no longer dead") can never be
//!    durable without it;
//! 3. only then is the index updated, tickets completed, and fully resolved
//!    segments deleted.
//!
//! Any write or sync error fails every request of the batch with that error
//! and poisons the log: later requests fail with [`WalError::Poisoned`] until
//! the log is reopened (after a failed fsync the page cache cannot be trusted).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::batch::Plan;
use crate::error::{IoContext, Result, WalError};
use crate::fs::Fs;
use crate::index::{segment_name, Index, Segment};
use crate::ticket::Completer;
use crate::types::WalOptions;

/// One queued mutation and the ticket to complete.
pub(crate) enum Op {
    Append {
        payload: Vec<u8>,
        done: Completer<u64>,
    },
    Ack {
        id: u64,
        done: Completer<()>,
    },
    Dead {
        id: u64,
        reason: String,
        done: Completer<()>,
    },
    Replay {
        id: u64,
        done: Completer<u64>,
    },
    PurgeDead {
        done: Completer<u64>,
    },
}

/// The request queue.
#[derive(Default)]
pub(crate) struct Queue {
    pub ops: Vec<Op>,
    pub shutdown: bool,
}

/// State shared by the `Wal` handle, readers and the writer thread.
pub(crate) struct Shared {
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    pub index: Mutex<Index>,
    pub fs: Arc<dyn Fs>,
    pub dir: PathBuf,
    pub opts: WalOptions,
}

impl Shared {
    /// Locks the index (a poisoned mutex is recovered: no code here panics
    /// while holding it, and the index is consistent between statements).
    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` for the writer; fails it with `Closed` after shutdown.
    pub(crate) fn submit(&self, op: Op) {
        let mut q = self.queue();
        if q.shutdown {
            drop(q);
            drop(op); // completers resolve to Closed on drop
            return;
        }
        q.ops.push(op);
        drop(q);
        self.wake.notify_one();
    }

    /// Asks the writer to finish queued work and exit.
    pub(crate) fn shutdown(&self) {
        self.queue().shutdown = true;
        self.wake.notify_all();
    }
}

/// Current time in unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Deletes a fully resolved segment, or renames it to `*.corrupt` if part
/// of it was unreadable at open.
pub(crate) fn discard_segment(fs: &dyn Fs, dir: &Path, seg: &Segment) -> Result<()> {
    let path = dir.join(segment_name(seg.base));
    if seg.damaged {
        let to = dir.join(format!("{}.corrupt", segment_name(seg.base)));
        fs.rename(&path, &to).ctx("quarantining a damaged segment")
    } else {
        fs.remove_file(&path).ctx("deleting a reclaimed segment")
    }
}

/// The writer thread's own state.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    compact_base: u64,
}

/// The writer thread's main loop: runs until shutdown with an empty queue.
pub(crate) fn run(shared: Arc<Shared>) {
    let compact_base = shared.index().state_len;
    let mut w = Writer {
        shared,
        compact_base,
    };
    loop {
        let ops = {
            let mut q = w.shared.queue();
            while q.ops.is_empty() && !q.shutdown {
                q = w.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.ops.is_empty() {
                return;
            }
            std::mem::take(&mut q.ops)
        };
        w.process(ops);
    }
}

impl Writer {
    fn process(&mut self, ops: Vec<Op>) {
        let shared = Arc::clone(&self.shared);
        let mut idx = shared.index();
        if idx.poisoned {
            drop(idx);
            fail_ops(ops, &WalError::Poisoned);
            return;
        }
        let Some(mut plan) = Plan::new(&idx) else {
            drop(idx);
            fail_ops(ops, &WalError::Closed);
            return;
        };
        let mut ops = ops.into_iter();
        while let Some(op) = ops.next() {
            if let Err(e) = plan.add(op, &idx, &shared) {
                // A rotation could not create its segment file: the batch
                // (and the log) is unusable from here on.
                idx.poisoned = true;
                drop(idx);
                plan.fail(&e);
                fail_ops(ops.collect(), &e);
                return;
            }
        }
        plan.encode_state_entries();
        let state_at = idx.state_len;
        drop(idx);

        if let Err(e) = plan.write_and_sync(&shared, state_at) {
            shared.index().poisoned = true;
            plan.fail(&e);
            return;
        }

        let mut idx = shared.index();
        let replies = plan.apply(&mut idx, state_at);
        let reclaim = idx.take_reclaimable();
        let compact = idx.state_len >= shared.opts.state_compact_bytes.max(2 * self.compact_base);
        drop(idx);
        // Delete before completing, so a caller whose ack returned sees the
        // space freed (deletions happen once per segment, so this is cheap).
        for seg in &reclaim {
            // A failed delete only leaves a fully resolved file behind; it is
            // reclaimed again at the next open.
            let _ = discard_segment(&*shared.fs, &shared.dir, seg);
        }
        for r in replies {
            r.finish(None);
        }
        if compact {
            self.compact_base = match crate::compact::compact(&shared) {
                Ok(len) => len,
                Err(_) => shared.index().state_len,
            };
        }
    }
}

fn fail_ops(ops: Vec<Op>, e: &WalError) {
    for op in ops {
        match op {
            Op::Append { done, .. } | Op::Replay { done, .. } => done.complete(Err(e.clone())),
            Op::Ack { done, .. } | Op::Dead { done, .. } => done.complete(Err(e.clone())),
            Op::PurgeDead { done } => done.complete(Err(e.clone())),
        }
    }
}
