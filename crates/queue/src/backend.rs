//! Queue storage behind one trait, [`QueueBackend`], so the HTTP side (enqueue, delivery,
//! admin, CLI) never names the storage engine. [`WalBackend`] is the local one: the
//! `wal` crate's durable log in `data_dir/queues/NAME/`, guarded by an exclusive `flock`
//! on `NAME/LOCK` so that two processes (a running gateway and `sluicegate wal`) never
//! write the same log. A replicated backend (NATS JetStream) implements the same trait.
//!
//! Every operation that may wait on storage or the network returns a `Send` future; the
//! local log completes them from its writer thread after the group commit (fsync).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use wal::{Wal, WalError, WalOptions};

use super::QueueError;

/// A boxed, `Send` future of a backend operation.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, QueueError>> + Send + 'static>>;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Message id: unique in its queue, increasing in append order.
    pub id: u64,
    /// When it was appended (unix millis).
    pub appended_at_ms: u64,
    /// The encoded request (see `record.rs`).
    pub payload: Bytes,
    /// Set when the message is a dead letter.
    pub dead: Option<DeadInfo>,
    /// Delivery attempts made before this one, as the engine counts them (engines that
    /// [redeliver](QueueBackend::redelivers)); 0 where the delivery loop counts them.
    pub attempts: u32,
}

/// Why and when a message became a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadInfo {
    /// The last delivery error.
    pub reason: String,
    /// When (unix millis).
    pub dead_at_ms: u64,
}

/// A dead letter's metadata (payload through [`QueueBackend::get`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterInfo {
    /// Message id.
    pub id: u64,
    /// When it was appended (unix millis).
    pub appended_at_ms: u64,
    /// When it became a dead letter (unix millis).
    pub dead_at_ms: u64,
    /// The last delivery error.
    pub reason: String,
    /// Stored size in bytes.
    pub payload_len: u64,
}

/// A backend's counters (cheap: read on every `/metrics` scrape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Messages waiting for delivery.
    pub pending: u64,
    /// Smallest pending id.
    pub oldest_pending_id: Option<u64>,
    /// Append time of the oldest pending message (unix millis).
    pub oldest_pending_appended_at_ms: Option<u64>,
    /// Dead letters.
    pub dead: u64,
    /// Bytes the queue occupies on disk.
    pub bytes_on_disk: u64,
    /// The configured bound on `bytes_on_disk`.
    pub max_bytes: u64,
    /// The id the next message gets (at least).
    pub next_id: u64,
    /// False after a storage failure that stops writes until restart.
    pub healthy: bool,
}

/// Storage of one queue. Implementations are shared between threads.
pub trait QueueBackend: Send + Sync {
    /// A short name of the engine (`wal`), for status output.
    fn kind(&self) -> &'static str;
    /// What an acknowledged append means, for the caller's ack (docs/queue.md).
    fn durability(&self) -> &'static str {
        "fsynced to this gateway's disk"
    }
    /// Whether this gateway's delivery loop sends the messages (false: the engine pushes
    /// them to a route of their own, as a Pub/Sub push subscription does).
    fn delivers(&self) -> bool {
        true
    }
    /// Whether the engine redelivers a failed message itself ([`QueueBackend::retry_later`]),
    /// counts the attempts ([`StoredMessage::attempts`]) and hands each message to one of
    /// several gateways; `read_pending` then ignores `from_id`.
    fn redelivers(&self) -> bool {
        false
    }
    /// Gives a delivered-but-failed message back to the engine, to be delivered again (by
    /// any gateway) after `delay`.
    fn retry_later(&self, id: u64, delay: std::time::Duration) -> BoxFuture<()> {
        let _ = delay;
        Box::pin(std::future::ready(Err(QueueError::Unsupported {
            queue: format!("#{id}"),
            what: "engine redelivery".into(),
            backend: self.kind(),
        })))
    }
    /// Notified when messages this process did not append may be ready to read (another
    /// gateway's, or the engine's redeliveries).
    fn arrivals(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// Stores `payload` directly as a dead letter with `reason` (a delivery that failed
    /// outside the delivery loop, as a push playback's); resolves to its id.
    fn record_dead(&self, payload: Vec<u8>, reason: &str) -> BoxFuture<u64>;
    /// Stores `payload` durably; resolves to its id.
    fn append(&self, payload: Vec<u8>) -> BoxFuture<u64>;
    /// Up to `max` pending messages with id `>= from_id`, in id order.
    fn read_pending(&self, from_id: u64, max: usize) -> BoxFuture<Vec<StoredMessage>>;
    /// Up to `max` pending messages with id `>= from_id`, in id order, for an operator's
    /// listing: unlike [`QueueBackend::read_pending`] this never hands a message to this
    /// gateway's delivery.
    fn browse(&self, from_id: u64, max: usize) -> BoxFuture<Vec<StoredMessage>> {
        self.read_pending(from_id, max)
    }
    /// A pending message or dead letter; `None` when it was delivered or never existed.
    fn get(&self, id: u64) -> BoxFuture<Option<StoredMessage>>;
    /// Marks a pending message delivered, durably.
    fn ack(&self, id: u64) -> BoxFuture<()>;
    /// Moves a pending message to the dead letters with `reason`, durably.
    fn dead_letter(&self, id: u64, reason: &str) -> BoxFuture<()>;
    /// Metadata of every dead letter, in id order.
    fn dead_letters(&self) -> BoxFuture<Vec<DeadLetterInfo>>;
    /// Re-enqueues dead letter `id` as a new pending message; resolves to the new id.
    fn replay(&self, id: u64) -> BoxFuture<u64>;
    /// Deletes every dead letter; resolves to how many there were.
    fn purge_dead(&self) -> BoxFuture<u64>;
    /// Current counters.
    fn stats(&self) -> BackendStats;
    /// Finishes queued writes and releases the storage; later calls fail with `Closed`.
    fn close(&self);
}

/// The local write-ahead-log backend.
pub struct WalBackend {
    name: String,
    dir: PathBuf,
    wal: RwLock<Option<Arc<Wal>>>,
    max_bytes: u64,
    /// Holds the `flock` until the log is closed.
    lock: std::sync::Mutex<Option<File>>,
}

impl std::fmt::Debug for WalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalBackend")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The log options for a queue bounded to `max_bytes`: segments and state-log compaction
/// scale down with small bounds so that delivered data can be reclaimed before the bound
/// is reached.
pub fn wal_options(max_bytes: u64) -> WalOptions {
    let d = WalOptions::default();
    let eighth = (max_bytes / 8).max(4096);
    WalOptions {
        max_bytes,
        segment_bytes: d.segment_bytes.min(eighth),
        state_compact_bytes: d.state_compact_bytes.min(eighth),
        max_payload_bytes: d.max_payload_bytes.min(max_bytes / 2).max(1),
    }
}

/// Takes the exclusive lock of queue directory `dir` (creating it), or says who has it.
pub fn lock_dir(name: &str, dir: &Path) -> Result<File, QueueError> {
    let io = |e: std::io::Error| QueueError::Io {
        queue: name.to_string(),
        message: format!("{}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(QueueError::Locked {
            queue: name.to_string(),
            path: path.display().to_string(),
        }),
        Err(e) => Err(io(e.into())),
    }
}

impl WalBackend {
    /// Opens (creating, recovering) the log of queue `name` in `dir`, bounded to
    /// `max_bytes`. Fails with [`QueueError::Locked`] when another process has it open.
    pub fn open(name: &str, dir: &Path, max_bytes: u64) -> Result<WalBackend, QueueError> {
        let lock = lock_dir(name, dir)?;
        let wal = Wal::open(dir, wal_options(max_bytes)).map_err(|e| map_err(name, e))?;
        let r = wal.recovery_report();
        if r.corrupt_records > 0
            || r.bytes_truncated > 0
            || r.segments_quarantined > 0
            || r.state_corrupt_entries > 0
        {
            tracing::warn!(
                queue = name,
                corrupt_records = r.corrupt_records,
                bytes_truncated = r.bytes_truncated,
                bytes_unreadable = r.bytes_unreadable,
                segments_quarantined = r.segments_quarantined,
                state_corrupt_entries = r.state_corrupt_entries,
                "Queue recovered with damage; see `sluicegate wal stats`."
            );
        }
        tracing::info!(queue = name, dir = %dir.display(), pending = r.records_pending, "Queue opened.");
        Ok(WalBackend {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            wal: RwLock::new(Some(Arc::new(wal))),
            max_bytes,
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    /// What recovery found when the log was opened.
    pub fn recovery_report(&self) -> Option<wal::RecoveryReport> {
        self.wal().ok().map(|w| w.recovery_report().clone())
    }

    fn wal(&self) -> Result<Arc<Wal>, QueueError> {
        self.wal
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| QueueError::Closed(self.name.clone()))
    }

    fn run<T: Send + 'static>(&self, op: impl FnOnce(&Wal) -> wal::Ticket<T>) -> BoxFuture<T> {
        match self.wal() {
            Ok(wal) => {
                let ticket = op(&wal);
                let name = self.name.clone();
                Box::pin(async move { ticket.await.map_err(|e| map_err(&name, e)) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn now<T: Send + 'static>(&self, op: impl FnOnce(&Wal) -> Result<T, WalError>) -> BoxFuture<T> {
        let result = self
            .wal()
            .and_then(|w| op(&w).map_err(|e| map_err(&self.name, e)));
        Box::pin(std::future::ready(result))
    }
}

fn stored(rec: wal::Record) -> StoredMessage {
    StoredMessage {
        id: rec.id,
        appended_at_ms: rec.appended_at_ms,
        payload: Bytes::from(rec.payload),
        dead: match rec.state {
            wal::RecordState::Pending => None,
            wal::RecordState::Dead { reason, dead_at_ms } => Some(DeadInfo { reason, dead_at_ms }),
        },
        attempts: 0,
    }
}

impl QueueBackend for WalBackend {
    fn kind(&self) -> &'static str {
        "wal"
    }

    fn record_dead(&self, payload: Vec<u8>, reason: &str) -> BoxFuture<u64> {
        let wal = match self.wal() {
            Ok(w) => w,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let name = self.name.clone();
        let reason = reason.to_string();
        let append = wal.append_async(payload);
        Box::pin(async move {
            let id = append.await.map_err(|e| map_err(&name, e))?;
            wal.dead_letter_async(id, &reason)
                .await
                .map_err(|e| map_err(&name, e))?;
            Ok(id)
        })
    }

    fn append(&self, payload: Vec<u8>) -> BoxFuture<u64> {
        self.run(|w| w.append_async(payload))
    }

    fn read_pending(&self, from_id: u64, max: usize) -> BoxFuture<Vec<StoredMessage>> {
        self.now(|w| {
            Ok(w.read_pending(from_id, max)?
                .into_iter()
                .map(stored)
                .collect())
        })
    }

    fn get(&self, id: u64) -> BoxFuture<Option<StoredMessage>> {
        self.now(|w| Ok(w.get(id)?.map(stored)))
    }

    fn ack(&self, id: u64) -> BoxFuture<()> {
        self.run(|w| w.ack_async(id))
    }

    fn dead_letter(&self, id: u64, reason: &str) -> BoxFuture<()> {
        self.run(|w| w.dead_letter_async(id, reason))
    }

    fn dead_letters(&self) -> BoxFuture<Vec<DeadLetterInfo>> {
        self.now(|w| {
            Ok(w.dead_letters()
                .into_iter()
                .map(|d| DeadLetterInfo {
                    id: d.id,
                    appended_at_ms: d.appended_at_ms,
                    dead_at_ms: d.dead_at_ms,
                    reason: d.reason,
                    payload_len: d.payload_len,
                })
                .collect())
        })
    }

    fn replay(&self, id: u64) -> BoxFuture<u64> {
        self.run(|w| w.replay_async(id))
    }

    fn purge_dead(&self) -> BoxFuture<u64> {
        // The log offers purging only as a blocking call; it is rare (an operator's
        // command), so a short-lived thread keeps every runtime free.
        let wal = match self.wal() {
            Ok(w) => w,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("queue-purge".into())
            .spawn(move || {
                let _ = tx.send(wal.purge_dead());
            });
        let name = self.name.clone();
        if let Err(e) = spawned {
            return Box::pin(std::future::ready(Err(QueueError::Io {
                queue: name,
                message: format!("cannot start the purge thread: {e}"),
            })));
        }
        Box::pin(async move {
            match rx.await {
                Ok(r) => r.map_err(|e| map_err(&name, e)),
                Err(_) => Err(QueueError::Closed(name)),
            }
        })
    }

    fn stats(&self) -> BackendStats {
        match self.wal() {
            Ok(w) => {
                let s = w.stats();
                BackendStats {
                    pending: s.pending_count,
                    oldest_pending_id: s.oldest_pending_id,
                    oldest_pending_appended_at_ms: s.oldest_pending_appended_at_ms,
                    dead: s.dead_count,
                    bytes_on_disk: s.bytes_on_disk,
                    max_bytes: self.max_bytes,
                    next_id: s.next_id,
                    healthy: !s.poisoned,
                }
            }
            Err(_) => BackendStats {
                max_bytes: self.max_bytes,
                ..BackendStats::default()
            },
        }
    }

    fn close(&self) {
        let Some(mut wal) = self.wal.write().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        // Operations in flight hold the log for a moment (a read, a ticket being created);
        // wait for them so the log is really closed, and only then release the lock.
        for _ in 0..200 {
            match Arc::try_unwrap(wal) {
                Ok(w) => {
                    if let Err(e) = w.close() {
                        tracing::error!(queue = %self.name, error = %e, "Queue closed after a storage failure.");
                    }
                    self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
                    return;
                }
                Err(still_shared) => {
                    wal = still_shared;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        tracing::warn!(queue = %self.name, "Queue still in use after 2 s; it closes when the last user lets go.");
    }
}

/// Maps a log error of queue `name` to a [`QueueError`].
pub fn map_err(name: &str, e: WalError) -> QueueError {
    let queue = name.to_string();
    match e {
        WalError::Full { used, needed, max } => QueueError::Full {
            queue,
            used,
            needed,
            max,
        },
        WalError::PayloadTooLarge { len, max } => QueueError::TooLarge { queue, len, max },
        WalError::Poisoned => QueueError::Unhealthy(queue),
        WalError::Closed => QueueError::Closed(queue),
        WalError::UnknownId(id) => QueueError::NotFound { queue, id },
        WalError::NotPending(id) => QueueError::NotPending { queue, id },
        WalError::NotDead(id) => QueueError::NotDead { queue, id },
        WalError::Unreadable { id, source } => QueueError::Unreadable {
            queue,
            id,
            message: source.to_string(),
        },
        other => QueueError::Io {
            queue,
            message: other.to_string(),
        },
    }
}
