//! The crate's single error type, [`WalError`].
//!
//! Every fallible public function returns `Result<_, WalError>`. The type is
//! `Clone` (I/O errors are held behind an `Arc`) because one failed group
//! commit has to report the same failure to every request in its batch.

use std::io;
use std::sync::Arc;

/// Shorthand for `Result<T, WalError>`.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Everything that can go wrong in the write-ahead log.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An operating-system call failed. `op` names what the log was doing.
    #[error("wal i/o error while {op}: {source}")]
    Io {
        /// What the log was doing, e.g. `"syncing segment"`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The append would take the log past its configured `max_bytes`.
    /// Nothing was written; retry later (the gateway answers 503 + Retry-After).
    #[error("wal is full: {used} of {max} bytes used, {needed} more needed")]
    Full {
        /// Bytes the log occupies on disk now (including this batch's earlier appends).
        used: u64,
        /// Bytes this record needs.
        needed: u64,
        /// The configured limit.
        max: u64,
    },

    /// Every record id has been handed out (the log says some id reached `u64::MAX`,
    /// which only a damaged or forged log can). Nothing was written.
    #[error("wal has no record ids left")]
    IdsExhausted,

    /// An earlier write or fsync failed, so the page cache can no longer be
    /// trusted; the log refuses all writes until it is closed and reopened.
    #[error("wal refuses writes after an earlier write/fsync failure; reopen it")]
    Poisoned,

    /// The payload exceeds `WalOptions::max_payload_bytes`.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: u64,
        /// The configured limit.
        max: u64,
    },

    /// The id was never handed out by this log.
    #[error("unknown record id {0}")]
    UnknownId(u64),

    /// The operation needs a pending record, but the record is dead-lettered.
    #[error("record {0} is not pending")]
    NotPending(u64),

    /// The operation needs a dead-lettered record, but the id is not in the
    /// dead-letter set.
    #[error("record {0} is not a dead letter")]
    NotDead(u64),

    /// Data read back from disk failed its checksum or framing checks.
    #[error("corrupt data in {file} at offset {offset}: {detail}")]
    Corrupt {
        /// File name (not the full path).
        file: String,
        /// Byte offset of the bad frame.
        offset: u64,
        /// What was wrong.
        detail: &'static str,
    },

    /// A pending record or dead letter could not be read back (I/O error or
    /// checksum mismatch). The id is given so a delivery worker can
    /// dead-letter it instead of stalling on it.
    #[error("record {id} is unreadable: {source}")]
    Unreadable {
        /// The record's id.
        id: u64,
        /// What went wrong.
        #[source]
        source: Box<WalError>,
    },

    /// The options passed to `Wal::open` are inconsistent.
    #[error("invalid wal options: {0}")]
    InvalidOptions(&'static str),

    /// The log has been closed (or its writer thread is gone).
    #[error("wal is closed")]
    Closed,
}

impl WalError {
    /// Wraps an `io::Error` with a description of the failed operation.
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        WalError::Io {
            op,
            source: Arc::new(source),
        }
    }

    /// True for [`WalError::Full`], the one error a caller should answer with
    /// "try again later" rather than "failed".
    pub fn is_full(&self) -> bool {
        matches!(self, WalError::Full { .. })
    }
}

/// Extension to attach an operation name to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`WalError::Io`] with `op` as context.
    fn ctx(self, op: &'static str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str) -> Result<T> {
        self.map_err(|e| WalError::io(op, e))
    }
}
