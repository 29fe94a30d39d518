//! Sluicegate's durable write-ahead queue.
//!
//! The gateway answers a request as soon as it is durably on disk
//! ([`Wal::append`] returns only after `fdatasync`), then delivery workers
//! read pending records in FIFO order ([`Wal::read_pending`]), send them
//! upstream and [`Wal::ack`] them, or [`Wal::dead_letter`] them after giving
//! up. After a crash every acknowledged append is still there and every
//! un-acked record is handed out again (at-least-once).
//!
//! ```
//! # fn main() -> Result<(), wal::WalError> {
//! # let tmp = tempfile::tempdir().map_err(|_| wal::WalError::Closed)?;
//! use wal::{Wal, WalOptions};
//! let log = Wal::open(tmp.path(), WalOptions::default())?;
//! let id = log.append(b"POST /hooks/slack ...".to_vec())?; // durable now: answer 202
//! // A delivery worker:
//! let mut cursor = 0;
//! for rec in log.read_pending(cursor, 64)? {
//!     cursor = rec.id + 1;
//!     // ... send rec.payload upstream, then:
//!     log.ack(rec.id)?; // or log.dead_letter(rec.id, "upstream 400: bad request")?
//! }
//! assert_eq!(log.stats().pending_count, 0);
//! # let _ = (id, cursor);
//! # Ok(()) }
//! ```
//!
//! # Concurrency and group commit
//!
//! One writer thread owns all writes. Appends, acks and dead-letter
//! operations are queued; the writer takes everything queued at once, writes
//! it with one `write` per touched file, issues one `fdatasync` per touched
//! file, and then completes every request of the batch. Many concurrent
//! appenders therefore share one fdatasync. Callers either block
//! ([`Wal::append`]) or take a [`Ticket`] ([`Wal::append_async`]), which
//! implements `Future` (std `Waker`, no runtime dependency) and can also be
//! `wait()`ed. Reads never go through the writer thread.
//!
//! # Failure semantics
//!
//! - Any write or `fdatasync` error fails **every** request in that batch
//!   (none is acknowledged) and poisons the log: all later writes fail with
//!   [`WalError::Poisoned`] until it is reopened, because after a failed
//!   fsync the page cache can no longer be trusted ("fsyncgate"). A failed
//!   append may still turn out to be on disk after reopen (the caller must
//!   treat failure as "unknown", which at-least-once delivery allows).
//! - An append that would take the bytes on disk (segments + state log)
//!   past [`WalOptions::max_bytes`] fails with [`WalError::Full`]; pending
//!   and dead data is never dropped to make room.
//! - One process per directory; this is not enforced with a lock file.
//!
//! # Directory layout
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg` — segment files, named by the 20-digit,
//!   zero-padded decimal *base id* (no record in it has a smaller id).
//!   The highest-named segment is the active one; the others are sealed.
//! - `state.log` — acks, dead letters and checkpoints.
//! - `state.log.tmp` — compaction in progress (deleted at open).
//! - `*.seg.corrupt` — damaged segments set aside by recovery (ignored).
//!
//! All integers are little-endian. CRCs are CRC32C (Castagnoli).
//!
//! ## Segment file
//!
//! A 32-byte segment header, then frames back to back:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `SLUICEWL` |
//! | 8 | 4 | version = 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | base id (equals the file name) |
//! | 24 | 4 | reserved, 0 |
//! | 28 | 4 | CRC32C of bytes 0..28 |
//!
//! ## Frame (records and state-log entries)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic: `SGR1` (record) or `SGS1` (state entry) |
//! | 4 | 4 | body length `n` |
//! | 8 | 8 | record: id / state entry: kind |
//! | 16 | 8 | record: append time / state entry: event time (unix ms) |
//! | 24 | 4 | header CRC = CRC32C(bytes 0..24) |
//! | 28 | 4 | frame CRC = CRC32C(bytes 0..24 ‖ body) |
//! | 32 | n | body (a record's body is the opaque payload) |
//!
//! Record invariants: within a segment ids strictly increase and are `>=`
//! the base id; across segments they keep increasing. Within one open
//! session ids are consecutive; after recovery they may skip (see below).
//!
//! ## State-log entries (kind, body)
//!
//! - 1 `ACK`: `n × u64` ids now delivered.
//! - 2 `DEAD`: `id u64, append_time u64, reason_len u32, reason (UTF-8),
//!   payload (rest)`; the frame's time field is the dead-letter time. The id
//!   counts as resolved (its segment copy is no longer needed).
//! - 3 `UNDEAD`: `n × u64` ids leaving the dead-letter set (replayed or
//!   purged); they stay resolved.
//! - 4 `CHECKPOINT`: `watermark u64, next_id u64, count u32, count × (first
//!   u64, last u64)`: every id `<= watermark` and every id in the inclusive
//!   ranges is resolved; ids continue at `>= next_id`. Written first in a
//!   compacted log, followed by copies of the live `DEAD` frames.
//!
//! Replaying the entries in order gives the resolved set and the dead set.
//! A record in a segment is **pending** iff its id is not resolved.
//!
//! ## Write ordering
//!
//! Per batch: segment frames are written and fdatasync'ed (and the
//! directory, if a segment was created) before state-log entries are written
//! and fdatasync'ed; only then are requests completed and fully resolved
//! sealed segments deleted. The state log is compacted by writing a new file
//! and renaming it over the old one (see `compact.rs`).
//!
//! # Recovery (what a reader must do)
//!
//! 1. Replay `state.log` frame by frame. Stop at the first frame whose header
//!    is unreadable (bad magic/header CRC, or running past end of file) and
//!    truncate there; skip (but do not apply) a frame whose header is valid
//!    and whose body fails the frame CRC.
//! 2. Scan each segment in base-id order. A valid frame is a record. A frame
//!    with a valid header but bad frame CRC is a **corrupt record: skipped,
//!    never handed out**, scanning continues after it (its length is trusted
//!    because the header CRC vouches for it; no guessing at frame boundaries,
//!    so a crafted payload can never be parsed as a frame). A bad header, an
//!    id out of order, or a frame running past end of file ends the segment:
//!    in the last segment the remainder is truncated (a torn tail; a bad
//!    final frame ending exactly at EOF is also a torn tail); in a sealed
//!    segment it is left in place and reported. A sealed segment with a bad
//!    segment header is renamed `*.seg.corrupt`.
//! 3. Next id = 1 + the highest id seen anywhere (records, state entries,
//!    segment names), plus `lost_bytes / 32 + 1` if anything was discarded,
//!    so an id that may have been handed out before is never reused.
//!
//! Everything found is summarised in a [`RecoveryReport`]. No file content
//! can make `open` panic; only I/O errors make it fail. A record that stops
//! being readable *after* open (bit rot) makes reads fail with
//! [`WalError::Unreadable`] naming its id; dead-lettering that id stores an
//! empty payload with the error appended to the reason, so one bad record
//! cannot stall the queue.
//!
//! # Modules
//!
//! `frame` (byte layout, scanner), `state` (state-log entries), `ranges`
//! (resolved-id ranges), `recovery` (open), `index` (shared in-memory
//! index), `writer` (writer thread), `batch` (planning/committing one group
//! commit), `compact` (state-log compaction), `ticket` (completion future),
//! `fs` / [`fault`] (filesystem trait, real and fault-injecting).

#![warn(missing_docs)]

mod batch;
mod compact;
mod error;
pub mod fault;
mod frame;
mod fs;
mod index;
mod ranges;
mod recovery;
mod state;
mod ticket;
mod types;
mod wal;
mod writer;

pub use error::{Result, WalError};
pub use fault::{FaultPlan, FaultTarget, FaultyFs};
pub use fs::{FileOps, Fs, RealFile, RealFs};
pub use ticket::Ticket;
pub use types::{DeadLetter, Record, RecordState, RecoveryReport, Stats, WalOptions};
pub use wal::{PendingIter, Wal};
