//! Plain public data types: [`WalOptions`] (configuration), [`Record`] and
//! [`RecordState`] (what readers get back), [`DeadLetter`], [`Stats`] and
//! [`RecoveryReport`]. No behaviour beyond defaults and validation lives here.

use crate::error::{Result, WalError};
use crate::frame::HEADER_LEN;

/// Configuration for [`crate::Wal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is sealed and a new one started once appending the next
    /// record would take it past this size (a single larger record still gets
    /// a segment of its own). Default 64 MiB.
    pub segment_bytes: u64,
    /// Upper bound on the log's bytes on disk (segments + state log). An
    /// append that would exceed it fails with [`WalError::Full`]. Default 1 GiB.
    pub max_bytes: u64,
    /// Largest accepted payload. Default 16 MiB; at most `u32::MAX - 4200`.
    pub max_payload_bytes: u64,
    /// The state log is compacted (rewritten as a checkpoint plus the live
    /// dead letters) once it exceeds this size and twice its size after the
    /// previous compaction. Default 8 MiB.
    pub state_compact_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            max_payload_bytes: 16 << 20,
            state_compact_bytes: 8 << 20,
        }
    }
}

impl WalOptions {
    /// Checks that the options are usable together.
    pub fn validate(&self) -> Result<()> {
        if self.max_payload_bytes == 0 || self.max_payload_bytes > u64::from(u32::MAX) - 4200 {
            return Err(WalError::InvalidOptions(
                "max_payload_bytes must be in 1..=u32::MAX-4200",
            ));
        }
        if self.segment_bytes < 2 * HEADER_LEN as u64 {
            return Err(WalError::InvalidOptions(
                "segment_bytes must be at least 64",
            ));
        }
        if self.max_bytes < 4 * HEADER_LEN as u64 {
            return Err(WalError::InvalidOptions("max_bytes must be at least 128"));
        }
        Ok(())
    }
}

/// State of a record returned by [`crate::Wal::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Appended and neither acked nor dead-lettered: will be handed out.
    Pending,
    /// Moved to the dead-letter set.
    Dead {
        /// The last delivery error, as given to `dead_letter`.
        reason: String,
        /// When it was dead-lettered (unix millis).
        dead_at_ms: u64,
    },
}

/// One record as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's id (message id), unique and increasing in append order.
    pub id: u64,
    /// When the writer thread framed it (unix millis).
    pub appended_at_ms: u64,
    /// The opaque payload given to `append`.
    pub payload: Vec<u8>,
    /// Pending or dead.
    pub state: RecordState,
}

/// Metadata of one dead letter (payload via [`crate::Wal::get`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record's original id.
    pub id: u64,
    /// When it was appended (unix millis).
    pub appended_at_ms: u64,
    /// When it was dead-lettered (unix millis).
    pub dead_at_ms: u64,
    /// The last delivery error (cut to 4096 bytes).
    pub reason: String,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// A snapshot of the log's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Records that are pending (not acked, not dead).
    pub pending_count: u64,
    /// Smallest pending id.
    pub oldest_pending_id: Option<u64>,
    /// Append time of the oldest pending record (unix millis).
    pub oldest_pending_appended_at_ms: Option<u64>,
    /// Records in the dead-letter set.
    pub dead_count: u64,
    /// Bytes of segment files plus the state log (what `max_bytes` bounds).
    pub bytes_on_disk: u64,
    /// Segment files in use.
    pub segment_count: u64,
    /// The id the next append will get (at least).
    pub next_id: u64,
    /// True after a write/fsync failure: appends are refused until reopen.
    pub poisoned: bool,
}

/// What `open` found and repaired. Also available later via
/// [`crate::Wal::recovery_report`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files examined.
    pub segments_scanned: u64,
    /// Valid records found in segments (pending or already resolved).
    pub records_recovered: u64,
    /// Of those, records still pending.
    pub records_pending: u64,
    /// Records whose header was intact but whose payload failed its CRC:
    /// skipped, never handed out.
    pub corrupt_records: u64,
    /// Ids of the first 1000 corrupt records.
    pub corrupt_record_ids: Vec<u64>,
    /// Bytes cut off the end of the last segment (torn tail, or anything
    /// after an unreadable frame header).
    pub bytes_truncated: u64,
    /// Bytes after an unreadable frame header in sealed segments: left in
    /// place (never handed out), not truncated.
    pub bytes_unreadable: u64,
    /// Sealed segments whose own header was unreadable; renamed to
    /// `*.seg.corrupt` and left for inspection.
    pub segments_quarantined: u64,
    /// Valid state-log entries replayed.
    pub state_entries: u64,
    /// State-log entries skipped because their body failed its CRC.
    pub state_corrupt_entries: u64,
    /// Bytes cut off the end of the state log.
    pub state_bytes_truncated: u64,
    /// Fully resolved segments deleted during open.
    pub segments_reclaimed: u64,
    /// The id the next append gets. Ids are advanced past any damaged
    /// region (by its size / 32 + 1) so no id that might have been handed out
    /// before the crash is ever reused.
    pub next_id: u64,
}
