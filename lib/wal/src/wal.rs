//! [`Wal`]: the public handle. It owns the writer thread (group commit) and
//! serves reads straight from the shared index and the segment files.
//!
//! Every mutating method has a blocking form (returns once the change is
//! durable) and an `_async` form returning a [`Ticket`] (a `Future`, also
//! waitable) that resolves at the same moment. Readers never wait for the
//! writer: they copy locations out of the index under a short lock and read
//! the files with positional reads (an open file stays readable even if its
//! segment is reclaimed meanwhile).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::error::{IoContext, Result, WalError};
use crate::fs::{Fs, RealFs};
use crate::index::{self, Located};
use crate::recovery;
use crate::ticket::{self, Ticket};
use crate::types::{DeadLetter, Record, RecordState, RecoveryReport, Stats, WalOptions};
use crate::writer::{self, Op, Queue, Shared};

/// A durable, group-committed write-ahead queue. `Wal` is `Send + Sync`:
/// share it via `Arc<Wal>` between request handlers and delivery workers.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    report: RecoveryReport,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real filesystem,
    /// running recovery first. Only one `Wal` may use a directory at a time.
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal> {
        Self::open_with_fs(dir, opts, Arc::new(RealFs))
    }

    /// Like [`Wal::open`], over a custom [`Fs`] (e.g. [`crate::FaultyFs`]).
    pub fn open_with_fs(dir: impl AsRef<Path>, opts: WalOptions, fs: Arc<dyn Fs>) -> Result<Wal> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let (index, report) = recovery::recover(&*fs, &dir)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            index: Mutex::new(index),
            fs,
            dir,
            opts,
        });
        let for_thread = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer::run(for_thread))
            .ctx("spawning the wal writer thread")?;
        Ok(Wal {
            shared,
            writer: Mutex::new(Some(handle)),
            report,
        })
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Appends `payload` and returns its id once it is fdatasync'ed.
    /// Fails with [`WalError::Full`] if the log would exceed `max_bytes`.
    pub fn append(&self, payload: impl Into<Vec<u8>>) -> Result<u64> {
        self.append_async(payload).wait()
    }

    /// Queues an append; the ticket resolves to the id once it is durable.
    /// Non-blocking: suitable for async callers (`ticket.await`).
    pub fn append_async(&self, payload: impl Into<Vec<u8>>) -> Ticket<u64> {
        let payload = payload.into();
        let (len, max) = (payload.len() as u64, self.shared.opts.max_payload_bytes);
        if len > max {
            return ticket::ready(Err(WalError::PayloadTooLarge { len, max }));
        }
        let (done, t) = ticket::pair();
        self.shared.submit(Op::Append { payload, done });
        t
    }

    /// Marks a record delivered, durably. Idempotent for already-acked ids;
    /// fails with [`WalError::NotPending`] for dead letters and
    /// [`WalError::UnknownId`] for ids never handed out.
    pub fn ack(&self, id: u64) -> Result<()> {
        self.ack_async(id).wait()
    }

    /// Non-blocking [`Wal::ack`].
    pub fn ack_async(&self, id: u64) -> Ticket<()> {
        let (done, t) = ticket::pair();
        self.shared.submit(Op::Ack { id, done });
        t
    }

    /// Moves a pending record to the dead-letter set with `reason` (cut to
    /// 4096 bytes). Its payload is copied into the state log, so its segment
    /// can be reclaimed.
    pub fn dead_letter(&self, id: u64, reason: &str) -> Result<()> {
        self.dead_letter_async(id, reason).wait()
    }

    /// Non-blocking [`Wal::dead_letter`].
    pub fn dead_letter_async(&self, id: u64, reason: &str) -> Ticket<()> {
        let (done, t) = ticket::pair();
        let reason = reason.to_owned();
        self.shared.submit(Op::Dead { id, reason, done });
        t
    }

    /// Re-enqueues a dead letter as a **new pending record with a new id**
    /// (returned; it sorts after everything already pending) and removes the
    /// old id from the dead-letter set. Subject to `max_bytes` like an append.
    /// If the process crashes between the two steps the message can exist
    /// both as a dead letter and as the new record (never as neither).
    pub fn replay(&self, id: u64) -> Result<u64> {
        self.replay_async(id).wait()
    }

    /// Non-blocking [`Wal::replay`].
    pub fn replay_async(&self, id: u64) -> Ticket<u64> {
        let (done, t) = ticket::pair();
        self.shared.submit(Op::Replay { id, done });
        t
    }

    /// Durably empties the dead-letter set; returns how many were removed.
    pub fn purge_dead(&self) -> Result<u64> {
        let (done, t) = ticket::pair();
        self.shared.submit(Op::PurgeDead { done });
        t.wait()
    }

    /// The record `id` if it is pending or dead, `None` if it was acked,
    /// purged, replayed or never existed. Payload checksums are verified.
    pub fn get(&self, id: u64) -> Result<Option<Record>> {
        let located = self.shared.index().locate(id);
        located.map(|l| read_located(id, l)).transpose()
    }

    /// Up to `max` pending records with id `>= from_id`, in id (FIFO) order.
    /// A delivery worker passes `last_id + 1` as the next cursor. If a record
    /// cannot be read back the call fails with [`WalError::Unreadable`]
    /// naming it; dead-lettering that id unblocks the queue.
    pub fn read_pending(&self, from_id: u64, max: usize) -> Result<Vec<Record>> {
        let found: Vec<(u64, Located)> = {
            let idx = self.shared.index();
            idx.pending
                .range(from_id..)
                .take(max)
                .filter_map(|(&id, _)| idx.locate(id).map(|l| (id, l)))
                .collect()
        };
        found
            .into_iter()
            .map(|(id, l)| read_located(id, l))
            .collect()
    }

    /// Iterates pending records with id `>= from_id` in id order, reading in
    /// batches of 64 (records acked meanwhile may or may not be returned).
    pub fn iter_pending(&self, from_id: u64) -> PendingIter<'_> {
        PendingIter {
            wal: self,
            next: from_id,
            buf: VecDeque::new(),
            done: false,
        }
    }

    /// Metadata of every dead letter, in id order.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared.index().dead_letters()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.shared.index().stats()
    }

    /// Finishes queued work, stops the writer thread and closes the files.
    /// Dropping a `Wal` does the same, ignoring errors.
    pub fn close(self) -> Result<()> {
        self.stop();
        if self.shared.index().poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    fn stop(&self) {
        self.shared.shutdown();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_located(id: u64, located: Located) -> Result<Record> {
    read_located_inner(id, located).map_err(|e| WalError::Unreadable {
        id,
        source: Box::new(e),
    })
}

fn read_located_inner(id: u64, located: Located) -> Result<Record> {
    match located {
        Located::Pending(file, loc) => Ok(Record {
            id,
            appended_at_ms: loc.ts,
            payload: index::read_record(&*file, &loc, id)?,
            state: RecordState::Pending,
        }),
        Located::Dead(file, meta) => Ok(Record {
            id,
            appended_at_ms: meta.append_ts,
            payload: index::read_dead(&*file, &meta)?,
            state: RecordState::Dead {
                reason: meta.reason,
                dead_at_ms: meta.dead_ts,
            },
        }),
    }
}

/// Iterator over pending records returned by [`Wal::iter_pending`]. Yields
/// `Err` once (and then stops) if a record cannot be read.
#[derive(Debug)]
pub struct PendingIter<'a> {
    wal: &'a Wal,
    next: u64,
    buf: VecDeque<Record>,
    done: bool,
}

impl Iterator for PendingIter<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            match self.wal.read_pending(self.next, 64) {
                Ok(batch) => {
                    self.done = batch.is_empty();
                    self.buf.extend(batch);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let rec = self.buf.pop_front()?;
        self.next = rec.id.saturating_add(1);
        Some(Ok(rec))
    }
}
