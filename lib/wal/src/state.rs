//! The state log (`state.log`): durable acks, dead letters, dead-letter
//! removals and checkpoints, as frames with magic `SGS1` (see the crate docs
//! for the byte layout). This module owns the entry codec and the replay of a
//! state log into a [`StateImage`] at open.
//!
//! Invariants: replaying entries in file order yields the resolved-id set and
//! the dead-letter set; a checkpoint entry only ever raises the watermark; a
//! dead letter's id stays resolved even after it is replayed or purged (the
//! replay is a new record with a new id).

use std::collections::BTreeMap;
use std::io;

use crate::frame::{self, ScanEvent, ScanStop, STATE_MAGIC};
use crate::fs::FileOps;
use crate::ranges::IdRanges;

/// Entry kind: body is `n × u64` acked ids.
pub(crate) const KIND_ACK: u64 = 1;
/// Entry kind: a dead letter with its payload.
pub(crate) const KIND_DEAD: u64 = 2;
/// Entry kind: body is `n × u64` ids leaving the dead-letter set.
pub(crate) const KIND_UNDEAD: u64 = 3;
/// Entry kind: watermark, next id and resolved ranges.
pub(crate) const KIND_CHECKPOINT: u64 = 4;

/// Fixed part of a dead-letter body: id, append time, reason length.
const DEAD_FIXED: usize = 20;

/// Longest reason kept, in bytes (longer reasons are cut at a char boundary).
pub(crate) const MAX_REASON: usize = 4096;

/// Where a dead letter's data lives in the state log, plus its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadMeta {
    pub id: u64,
    pub append_ts: u64,
    pub dead_ts: u64,
    pub reason: String,
    /// Offset of the entry's frame in the state log.
    pub entry_off: u64,
    /// Body length of that frame.
    pub body_len: u32,
    /// Payload length.
    pub payload_len: u32,
}

impl DeadMeta {
    /// Offset of the payload within the entry's body.
    pub(crate) fn payload_in_body(&self) -> usize {
        DEAD_FIXED + self.reason.len()
    }
}

/// What the state log says, after replaying it.
#[derive(Debug, Default)]
pub(crate) struct StateImage {
    /// Every id `<= watermark` is resolved.
    pub watermark: u64,
    /// Resolved ids above the watermark.
    pub resolved: IdRanges,
    /// Current dead letters.
    pub dead: BTreeMap<u64, DeadMeta>,
    /// Highest id any entry mentions (ids must continue above it).
    pub max_id: u64,
    /// Valid entries read.
    pub entries: u64,
    /// Entries skipped because their body failed its CRC.
    pub corrupt: u64,
    /// Where the valid prefix ends.
    pub valid_end: u64,
    /// Why the scan stopped.
    pub stop: Option<ScanStop>,
}

fn u64s(body: &[u8]) -> impl Iterator<Item = u64> + '_ {
    body.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        u64::from_le_bytes(a)
    })
}

fn ids_body(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// Appends an ack entry for `ids`.
pub(crate) fn encode_ack(out: &mut Vec<u8>, now: u64, ids: &[u64]) {
    frame::encode_frame(out, STATE_MAGIC, KIND_ACK, now, &[&ids_body(ids)]);
}

/// Appends an entry removing `ids` from the dead-letter set.
pub(crate) fn encode_undead(out: &mut Vec<u8>, now: u64, ids: &[u64]) {
    frame::encode_frame(out, STATE_MAGIC, KIND_UNDEAD, now, &[&ids_body(ids)]);
}

/// Appends a dead-letter entry; returns its body length.
pub(crate) fn encode_dead(
    out: &mut Vec<u8>,
    id: u64,
    append_ts: u64,
    dead_ts: u64,
    reason: &str,
    payload: &[u8],
) -> u32 {
    let mut fixed = [0u8; DEAD_FIXED];
    fixed[0..8].copy_from_slice(&id.to_le_bytes());
    fixed[8..16].copy_from_slice(&append_ts.to_le_bytes());
    fixed[16..20].copy_from_slice(&(reason.len() as u32).to_le_bytes());
    let parts: [&[u8]; 3] = [&fixed, reason.as_bytes(), payload];
    frame::encode_frame(out, STATE_MAGIC, KIND_DEAD, dead_ts, &parts);
    (DEAD_FIXED + reason.len() + payload.len()) as u32
}

/// Appends a checkpoint entry.
pub(crate) fn encode_checkpoint(
    out: &mut Vec<u8>,
    now: u64,
    watermark: u64,
    next_id: u64,
    resolved: &IdRanges,
) {
    let mut body = Vec::with_capacity(20 + resolved.range_count() * 16);
    body.extend_from_slice(&watermark.to_le_bytes());
    body.extend_from_slice(&next_id.to_le_bytes());
    body.extend_from_slice(&(resolved.range_count() as u32).to_le_bytes());
    for (s, e) in resolved.ranges() {
        body.extend_from_slice(&s.to_le_bytes());
        body.extend_from_slice(&e.to_le_bytes());
    }
    frame::encode_frame(out, STATE_MAGIC, KIND_CHECKPOINT, now, &[&body]);
}

/// Cuts `reason` to at most [`MAX_REASON`] bytes at a char boundary.
pub(crate) fn clip_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut cut = MAX_REASON;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.get(..cut).unwrap_or("")
}

/// Parses a dead-letter body (without its payload).
pub(crate) fn decode_dead(body: &[u8], entry_off: u64, dead_ts: u64) -> Option<DeadMeta> {
    let mut it = u64s(body.get(0..16)?);
    let id = it.next()?;
    let append_ts = it.next()?;
    let mut n = [0u8; 4];
    n.copy_from_slice(body.get(16..20)?);
    let reason_len = u32::from_le_bytes(n) as usize;
    let reason = body.get(DEAD_FIXED..DEAD_FIXED.checked_add(reason_len)?)?;
    let reason = std::str::from_utf8(reason).ok()?.to_owned();
    let payload_len = body.len() - DEAD_FIXED - reason_len;
    Some(DeadMeta {
        id,
        append_ts,
        dead_ts,
        reason,
        entry_off,
        body_len: u32::try_from(body.len()).ok()?,
        payload_len: u32::try_from(payload_len).ok()?,
    })
}

impl StateImage {
    /// Marks `id` resolved.
    pub(crate) fn resolve(&mut self, id: u64) {
        if id > self.watermark {
            self.resolved.insert(id);
        }
    }

    /// True if `id` is resolved (acked or dead-lettered).
    pub(crate) fn is_resolved(&self, id: u64) -> bool {
        id <= self.watermark || self.resolved.contains(id)
    }

    /// Applies one valid entry; returns false if it is malformed.
    fn apply(&mut self, kind: u64, ts: u64, offset: u64, body: &[u8]) -> bool {
        match kind {
            KIND_ACK | KIND_UNDEAD if body.len().is_multiple_of(8) => {
                for id in u64s(body) {
                    self.max_id = self.max_id.max(id);
                    if kind == KIND_ACK {
                        self.resolve(id);
                    } else {
                        self.dead.remove(&id);
                    }
                }
                true
            }
            KIND_DEAD => match decode_dead(body, offset, ts) {
                Some(meta) => {
                    self.max_id = self.max_id.max(meta.id);
                    self.resolve(meta.id);
                    self.dead.insert(meta.id, meta);
                    true
                }
                None => false,
            },
            KIND_CHECKPOINT => self.apply_checkpoint(body).is_some(),
            _ => false,
        }
    }

    fn apply_checkpoint(&mut self, body: &[u8]) -> Option<()> {
        let mut head = u64s(body.get(0..16)?);
        let watermark = head.next()?;
        let next_id = head.next()?;
        let mut n = [0u8; 4];
        n.copy_from_slice(body.get(16..20)?);
        let count = u32::from_le_bytes(n) as usize;
        let ranges = body.get(20..)?;
        if ranges.len() != count.checked_mul(16)? {
            return None;
        }
        self.watermark = self.watermark.max(watermark);
        self.max_id = self.max_id.max(next_id.saturating_sub(1)).max(watermark);
        let vals: Vec<u64> = u64s(ranges).collect();
        for pair in vals.chunks_exact(2) {
            if let [s, e] = pair {
                self.max_id = self.max_id.max(*e);
                self.resolved.insert_range(*s, *e);
            }
        }
        self.resolved.remove_through(self.watermark);
        Some(())
    }
}

/// Replays the first `len` bytes of a state log.
pub(crate) fn load(file: &dyn FileOps, len: u64) -> io::Result<StateImage> {
    let mut img = StateImage::default();
    let end = frame::scan(file, 0, len, STATE_MAGIC, |ev| match ev {
        ScanEvent::Frame {
            offset,
            header,
            body,
        } => {
            let ok = img.apply(header.a, header.b, offset, body);
            img.entries += u64::from(ok);
            ok
        }
        ScanEvent::CorruptBody { .. } => {
            img.corrupt += 1;
            true
        }
    })?;
    img.valid_end = end.valid_end;
    img.stop = Some(end.stop);
    Ok(img)
}
