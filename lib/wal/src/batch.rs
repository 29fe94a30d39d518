//! Planning and committing one group-commit batch: [`Plan`] turns the
//! queued [`Op`]s into segment writes and state-log entries (allocating ids,
//! rotating segments, enforcing `max_bytes`), writes and fdatasyncs them in
//! the order the writer module documents, and publishes the result to the
//! [`Index`].
//!
//! Invariants: planning never mutates the index (so a failed batch leaves it
//! untouched); per-request refusals (`Full`, `NotPending`, ...) complete
//! their ticket at once, everything else is completed only after the batch
//! is durable; within a batch an id is resolved at most once (`touched`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::error::{IoContext, Result, WalError};
use crate::frame::{self, HEADER_LEN, RECORD_MAGIC};
use crate::fs::FileOps;
use crate::index::{self, segment_name, Index, Loc, Segment};
use crate::state::{self, DeadMeta};
use crate::ticket::Completer;
use crate::writer::{now_ms, Op, Shared};

/// A completion deferred until the batch is durable.
pub(crate) enum Reply {
    Id(Completer<u64>, u64),
    Unit(Completer<()>),
    Count(Completer<u64>, u64),
}

impl Reply {
    pub(crate) fn finish(self, err: Option<&WalError>) {
        match (self, err) {
            (Reply::Id(c, v), None) => c.complete(Ok(v)),
            (Reply::Unit(c), None) => c.complete(Ok(())),
            (Reply::Count(c, v), None) => c.complete(Ok(v)),
            (Reply::Id(c, _), Some(e)) => c.complete(Err(e.clone())),
            (Reply::Unit(c), Some(e)) => c.complete(Err(e.clone())),
            (Reply::Count(c, _), Some(e)) => c.complete(Err(e.clone())),
        }
    }
}

/// A contiguous write into one segment.
struct Chunk {
    base: u64,
    file: Arc<dyn FileOps>,
    offset: u64,
    buf: Vec<u8>,
}

/// Everything one batch will write and publish.
pub(crate) struct Plan {
    chunks: Vec<Chunk>,
    new_segments: Vec<Segment>,
    active: (u64, Arc<dyn FileOps>, u64),
    next_id: u64,
    records: Vec<(u64, Loc)>,
    added: u64,
    freed: u64,
    state_buf: Vec<u8>,
    acks: Vec<u64>,
    deads: Vec<DeadMeta>,
    undead: Vec<u64>,
    acked: HashSet<u64>,
    touched: HashSet<u64>,
    replies: Vec<Reply>,
}

impl Plan {
    pub(crate) fn new(idx: &Index) -> Option<Plan> {
        let seg = idx.segments.values().next_back()?;
        Some(Plan {
            chunks: Vec::new(),
            new_segments: Vec::new(),
            active: (seg.base, Arc::clone(&seg.file), seg.len),
            next_id: idx.next_id,
            records: Vec::new(),
            added: 0,
            freed: 0,
            state_buf: Vec::new(),
            acks: Vec::new(),
            deads: Vec::new(),
            undead: Vec::new(),
            acked: HashSet::new(),
            touched: HashSet::new(),
            replies: Vec::new(),
        })
    }

    pub(crate) fn fail(self, e: &WalError) {
        for r in self.replies {
            r.finish(Some(e));
        }
    }

    /// Plans one op. Per-op failures complete the op at once; an `Err` is a
    /// failure of the whole batch.
    pub(crate) fn add(&mut self, op: Op, idx: &Index, sh: &Shared) -> Result<()> {
        match op {
            Op::Append { payload, done } => self.add_append(&payload, done, None, idx, sh)?,
            Op::Ack { id, done } => {
                if self.acked.contains(&id) {
                    self.replies.push(Reply::Unit(done));
                    return Ok(());
                }
                match self.check_pending(id, idx) {
                    Ok(true) => {
                        self.acks.push(id);
                        self.acked.insert(id);
                        self.touched.insert(id);
                        self.replies.push(Reply::Unit(done));
                    }
                    Ok(false) => done.complete(Ok(())),
                    Err(e) => done.complete(Err(e)),
                }
            }
            Op::Dead { id, reason, done } => match self.add_dead(id, &reason, idx) {
                Ok(()) => self.replies.push(Reply::Unit(done)),
                Err(e) => done.complete(Err(e)),
            },
            Op::Replay { id, done } => {
                let found = idx.dead.get(&id).filter(|_| !self.touched.contains(&id));
                let payload = found
                    .ok_or(WalError::NotDead(id))
                    .and_then(|meta| index::read_dead(&*idx.state_file, meta));
                match payload {
                    Ok(p) => self.add_append(&p, done, Some(id), idx, sh)?,
                    Err(e) => done.complete(Err(e)),
                }
            }
            Op::PurgeDead { done } => {
                let ids: Vec<u64> = idx
                    .dead
                    .keys()
                    .filter(|id| !self.touched.contains(id))
                    .copied()
                    .collect();
                self.touched.extend(ids.iter().copied());
                self.undead.extend(ids.iter().copied());
                self.replies.push(Reply::Count(done, ids.len() as u64));
            }
        }
        Ok(())
    }

    /// Plans an append (or the new record of a replay of `replay_of`).
    fn add_append(
        &mut self,
        payload: &[u8],
        done: Completer<u64>,
        replay_of: Option<u64>,
        idx: &Index,
        sh: &Shared,
    ) -> Result<()> {
        match self.add_record(payload, idx, sh) {
            Err(fatal) => {
                done.complete(Err(fatal.clone()));
                return Err(fatal);
            }
            Ok(Err(e)) => done.complete(Err(e)),
            Ok(Ok(new_id)) => {
                if let Some(old) = replay_of {
                    self.undead.push(old);
                    self.touched.insert(old);
                }
                self.replies.push(Reply::Id(done, new_id));
            }
        }
        Ok(())
    }

    /// `Ok(true)`: pending, `Ok(false)`: already acked (idempotent no-op).
    fn check_pending(&self, id: u64, idx: &Index) -> Result<bool> {
        if self.touched.contains(&id) || idx.dead.contains_key(&id) {
            return Err(WalError::NotPending(id));
        }
        if idx.pending.contains_key(&id) {
            return Ok(true);
        }
        if id >= idx.next_id || id == 0 {
            return Err(WalError::UnknownId(id));
        }
        Ok(false)
    }

    fn add_dead(&mut self, id: u64, reason: &str, idx: &Index) -> Result<()> {
        if !self.check_pending(id, idx)? {
            return Err(WalError::NotPending(id));
        }
        let loc = idx.pending.get(&id).ok_or(WalError::NotPending(id))?;
        let seg = idx.segments.get(&loc.seg).ok_or(WalError::NotPending(id))?;
        // An unreadable payload must not pin the queue: dead-letter the id
        // with an empty payload and say why.
        let (payload, reason) = match index::read_record(&*seg.file, loc, id) {
            Ok(p) => (p, reason.to_owned()),
            Err(e) => (Vec::new(), format!("{reason} [payload unreadable: {e}]")),
        };
        let reason = state::clip_reason(&reason);
        let entry_off = self.state_buf.len() as u64;
        let dead_ts = now_ms();
        let body_len =
            state::encode_dead(&mut self.state_buf, id, loc.ts, dead_ts, reason, &payload);
        self.deads.push(DeadMeta {
            id,
            append_ts: loc.ts,
            dead_ts,
            reason: reason.to_owned(),
            entry_off,
            body_len,
            payload_len: payload.len() as u32,
        });
        self.touched.insert(id);
        Ok(())
    }

    /// Frames one record into the active segment (rotating if needed).
    /// Outer `Err`: batch-fatal; inner `Err`: this record is refused.
    fn add_record(&mut self, payload: &[u8], idx: &Index, sh: &Shared) -> Result<Result<u64>> {
        let len = payload.len() as u64;
        if len > sh.opts.max_payload_bytes {
            let max = sh.opts.max_payload_bytes;
            return Ok(Err(WalError::PayloadTooLarge { len, max }));
        }
        // `u64::MAX` is never handed out, so `next_id` never overflows: only a damaged log
        // (one that says some id reached the end) gets here.
        if self.next_id == u64::MAX {
            return Ok(Err(WalError::IdsExhausted));
        }
        let frame_len = HEADER_LEN as u64 + len;
        let mut rotate =
            self.active.2 + frame_len > sh.opts.segment_bytes && self.active.2 > HEADER_LEN as u64;
        let extra = if rotate { HEADER_LEN as u64 } else { 0 };
        let used = (idx.disk_bytes() + self.added).saturating_sub(self.freed);
        if used + frame_len + extra > sh.opts.max_bytes {
            // Last resort: if the active segment holds only resolved records
            // and nothing from this batch, seal it so it can be deleted.
            let active = idx.segments.get(&self.active.0);
            let reclaimable = active.is_some_and(|s| s.live == 0 && s.len == self.active.2)
                && self.active.2 > HEADER_LEN as u64;
            if !reclaimable
                || used + frame_len + HEADER_LEN as u64 > sh.opts.max_bytes + self.active.2
            {
                let needed = frame_len + extra;
                let max = sh.opts.max_bytes;
                return Ok(Err(WalError::Full { used, needed, max }));
            }
            self.freed += self.active.2;
            rotate = true;
        }
        if rotate {
            self.rotate(sh)?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let ts = now_ms();
        let (base, file, at) = (self.active.0, Arc::clone(&self.active.1), self.active.2);
        let buf = match self.chunks.last_mut() {
            Some(c) if c.base == base && c.offset + c.buf.len() as u64 == at => &mut c.buf,
            _ => {
                self.chunks.push(Chunk {
                    base,
                    file,
                    offset: at,
                    buf: Vec::with_capacity(64 << 10),
                });
                match self.chunks.last_mut() {
                    Some(c) => &mut c.buf,
                    None => return Err(WalError::Closed),
                }
            }
        };
        frame::encode_frame(buf, RECORD_MAGIC, id, ts, &[payload]);
        let loc = Loc {
            seg: base,
            offset: at,
            len: len as u32,
            ts,
        };
        self.records.push((id, loc));
        self.active.2 += frame_len;
        self.added += frame_len;
        Ok(Ok(id))
    }

    fn rotate(&mut self, sh: &Shared) -> Result<()> {
        let base = self.next_id;
        let path = sh.dir.join(segment_name(base));
        let file = sh.fs.open(&path, true).ctx("creating a segment")?;
        self.chunks.push(Chunk {
            base,
            file: Arc::clone(&file),
            offset: 0,
            buf: frame::segment_header(base).to_vec(),
        });
        self.new_segments.push(Segment {
            base,
            file: Arc::clone(&file),
            len: HEADER_LEN as u64,
            live: 0,
            damaged: false,
        });
        self.active = (base, file, HEADER_LEN as u64);
        self.added += HEADER_LEN as u64;
        Ok(())
    }

    pub(crate) fn encode_state_entries(&mut self) {
        let now = now_ms();
        if !self.acks.is_empty() {
            state::encode_ack(&mut self.state_buf, now, &self.acks);
        }
        if !self.undead.is_empty() {
            state::encode_undead(&mut self.state_buf, now, &self.undead);
        }
    }

    pub(crate) fn write_and_sync(&self, sh: &Shared, state_at: u64) -> Result<()> {
        for c in &self.chunks {
            c.file
                .write_all_at(&c.buf, c.offset)
                .ctx("writing a segment")?;
        }
        let mut synced: Vec<u64> = Vec::new();
        for c in &self.chunks {
            if !synced.contains(&c.base) {
                c.file.sync_data().ctx("syncing a segment")?;
                synced.push(c.base);
            }
        }
        if !self.new_segments.is_empty() {
            sh.fs.sync_dir(&sh.dir).ctx("syncing the wal directory")?;
        }
        if !self.state_buf.is_empty() {
            let idx_file = Arc::clone(&sh.index().state_file);
            idx_file
                .write_all_at(&self.state_buf, state_at)
                .ctx("writing state.log")?;
            idx_file.sync_data().ctx("syncing state.log")?;
        }
        Ok(())
    }

    /// Publishes the durable batch to the index; returns the replies.
    pub(crate) fn apply(self, idx: &mut Index, state_at: u64) -> Vec<Reply> {
        for seg in self.new_segments {
            idx.segments.insert(seg.base, seg);
        }
        let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
        for c in &self.chunks {
            let end = ends.entry(c.base).or_default();
            *end = (*end).max(c.offset + c.buf.len() as u64);
        }
        for (base, end) in ends {
            if let Some(seg) = idx.segments.get_mut(&base) {
                seg.len = seg.len.max(end);
            }
        }
        for (id, loc) in self.records {
            if let Some(seg) = idx.segments.get_mut(&loc.seg) {
                seg.live += 1;
            }
            idx.pending.insert(id, loc);
        }
        idx.next_id = idx.next_id.max(self.next_id);
        for id in self.acks {
            idx.remove_pending(id);
        }
        for mut meta in self.deads {
            idx.remove_pending(meta.id);
            meta.entry_off += state_at;
            idx.dead.insert(meta.id, meta);
        }
        for id in self.undead {
            idx.dead.remove(&id);
        }
        idx.state_len = state_at + self.state_buf.len() as u64;
        idx.advance_watermark();
        self.replies
    }
}
