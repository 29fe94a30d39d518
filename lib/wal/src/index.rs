//! The in-memory index shared by the writer thread and readers: open
//! segments, the location of every pending record, the dead-letter set, and
//! the resolved-id set (watermark + ranges) — plus helpers that read a
//! record or dead letter back from disk and verify its checksum.
//!
//! Invariants (hold whenever the index mutex is released):
//! - only durable state is visible: a record enters `pending` after the
//!   fdatasync that made it durable, and leaves it after the fdatasync of the
//!   ack / dead-letter entry that resolved it;
//! - `pending`, `dead` and the resolved set are disjoint in the sense that a
//!   pending id is never resolved; a dead id is always resolved;
//! - every id `<= watermark` is resolved, `resolved` only holds ids above it;
//! - `Segment::live` is the number of pending records located in it; the last
//!   segment in `segments` is the active (appendable) one.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{IoContext, Result, WalError};
use crate::frame::{self, HEADER_LEN, RECORD_MAGIC, STATE_MAGIC};
use crate::fs::FileOps;
use crate::ranges::IdRanges;
use crate::state::DeadMeta;
use crate::types::{DeadLetter, Stats};

/// Name of the state log.
pub(crate) const STATE_FILE: &str = "state.log";
/// Name used while a compacted state log is being written.
pub(crate) const STATE_TMP: &str = "state.log.tmp";

/// File name of the segment whose first id is `base`.
pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// Parses a segment file name back to its base id.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment file.
pub(crate) struct Segment {
    /// First id it may contain; also its file name.
    pub base: u64,
    /// Open handle (read + write).
    pub file: Arc<dyn FileOps>,
    /// Durable length: appends continue here.
    pub len: u64,
    /// Pending records located in it.
    pub live: u64,
    /// Part of it could not be read at open; quarantine instead of deleting.
    pub damaged: bool,
}

/// Where a pending record's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment base.
    pub seg: u64,
    /// Offset of the frame header.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// Append time (unix millis).
    pub ts: u64,
}

/// The shared index (see module docs for invariants).
pub(crate) struct Index {
    pub segments: BTreeMap<u64, Segment>,
    pub pending: BTreeMap<u64, Loc>,
    pub dead: BTreeMap<u64, DeadMeta>,
    pub watermark: u64,
    pub resolved: IdRanges,
    pub next_id: u64,
    pub state_file: Arc<dyn FileOps>,
    pub state_len: u64,
    pub poisoned: bool,
}

/// A record located for reading, resolved outside the index lock.
pub(crate) enum Located {
    Pending(Arc<dyn FileOps>, Loc),
    Dead(Arc<dyn FileOps>, DeadMeta),
}

impl Index {
    /// Bytes on disk that count against `max_bytes`.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum::<u64>() + self.state_len
    }

    /// Marks `id` resolved.
    pub(crate) fn resolve(&mut self, id: u64) {
        if id > self.watermark {
            self.resolved.insert(id);
        }
    }

    /// Raises the watermark to just below the oldest pending id.
    pub(crate) fn advance_watermark(&mut self) {
        let floor = self
            .pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_id)
            .min(self.next_id);
        let w = floor.saturating_sub(1);
        if w > self.watermark {
            self.watermark = w;
            self.resolved.remove_through(w);
        }
    }

    /// Takes a pending record out of the index (ack or dead-letter).
    pub(crate) fn remove_pending(&mut self, id: u64) -> Option<Loc> {
        let loc = self.pending.remove(&id)?;
        if let Some(seg) = self.segments.get_mut(&loc.seg) {
            seg.live = seg.live.saturating_sub(1);
        }
        self.resolve(id);
        Some(loc)
    }

    /// Removes and returns sealed segments that no longer hold pending records.
    pub(crate) fn take_reclaimable(&mut self) -> Vec<Segment> {
        let active = self.segments.keys().next_back().copied();
        let dead: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.live == 0 && Some(s.base) != active)
            .map(|s| s.base)
            .collect();
        dead.iter()
            .filter_map(|b| self.segments.remove(b))
            .collect()
    }

    /// Finds a pending or dead record.
    pub(crate) fn locate(&self, id: u64) -> Option<Located> {
        if let Some(loc) = self.pending.get(&id) {
            let seg = self.segments.get(&loc.seg)?;
            return Some(Located::Pending(Arc::clone(&seg.file), *loc));
        }
        self.dead
            .get(&id)
            .map(|m| Located::Dead(Arc::clone(&self.state_file), m.clone()))
    }

    /// Counters for [`crate::Wal::stats`].
    pub(crate) fn stats(&self) -> Stats {
        let oldest = self.pending.iter().next();
        Stats {
            pending_count: self.pending.len() as u64,
            oldest_pending_id: oldest.map(|(id, _)| *id),
            oldest_pending_appended_at_ms: oldest.map(|(_, l)| l.ts),
            dead_count: self.dead.len() as u64,
            bytes_on_disk: self.disk_bytes(),
            segment_count: self.segments.len() as u64,
            next_id: self.next_id,
            poisoned: self.poisoned,
        }
    }

    /// Dead-letter metadata in id order.
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .values()
            .map(|m| DeadLetter {
                id: m.id,
                appended_at_ms: m.append_ts,
                dead_at_ms: m.dead_ts,
                reason: m.reason.clone(),
                payload_len: u64::from(m.payload_len),
            })
            .collect()
    }
}

fn corrupt(file: &str, offset: u64, detail: &'static str) -> WalError {
    WalError::Corrupt {
        file: file.to_owned(),
        offset,
        detail,
    }
}

/// Reads the frame at `offset` with body length `len` and verifies it.
fn read_frame(
    file: &dyn FileOps,
    offset: u64,
    len: u32,
    magic: [u8; 4],
    name: &str,
) -> Result<(frame::FrameHeader, Vec<u8>)> {
    let mut buf = vec![0u8; HEADER_LEN + len as usize];
    file.read_exact_at(&mut buf, offset)
        .ctx("reading a frame")?;
    let header = frame::decode_header(&buf, magic)
        .ok_or_else(|| corrupt(name, offset, "bad frame header"))?;
    let body = buf.split_off(HEADER_LEN);
    if header.len != len || !frame::body_ok(&header, &body) {
        return Err(corrupt(name, offset, "frame checksum mismatch"));
    }
    Ok((header, body))
}

/// Reads and verifies a pending record's payload.
pub(crate) fn read_record(file: &dyn FileOps, loc: &Loc, id: u64) -> Result<Vec<u8>> {
    let name = segment_name(loc.seg);
    let (header, body) = read_frame(file, loc.offset, loc.len, RECORD_MAGIC, &name)?;
    if header.a != id {
        return Err(corrupt(&name, loc.offset, "record id mismatch"));
    }
    Ok(body)
}

/// Reads and verifies a dead letter's payload from the state log.
pub(crate) fn read_dead(file: &dyn FileOps, meta: &DeadMeta) -> Result<Vec<u8>> {
    let (_, mut body) = read_frame(file, meta.entry_off, meta.body_len, STATE_MAGIC, STATE_FILE)?;
    let at = meta.payload_in_body();
    if at > body.len() {
        return Err(corrupt(
            STATE_FILE,
            meta.entry_off,
            "dead letter body too short",
        ));
    }
    Ok(body.split_off(at))
}
