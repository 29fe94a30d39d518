//! State-log compaction, run by the writer thread between batches.
//!
//! The new log is `checkpoint(watermark, next_id, resolved ranges)` followed
//! by a verbatim copy of every live dead-letter frame. It is written to
//! `state.log.tmp`, fdatasync'ed, renamed over `state.log`, and the directory
//! is fsync'ed. A crash at any point leaves either the old or the new log
//! complete (a leftover `.tmp` is deleted at open). A failure before the
//! rename just abandons the attempt; a failure to sync the directory after it
//! poisons the log, because later entries would go to a file whose name may
//! not survive a crash.

use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::frame::HEADER_LEN;
use crate::fs::FileOps;
use crate::index::{STATE_FILE, STATE_TMP};
use crate::state;
use crate::writer::{now_ms, Shared};

/// Flush the copy buffer to the temp file once it grows past this.
const FLUSH_AT: usize = 4 << 20;

/// Compacts the state log; returns its new length.
pub(crate) fn compact(sh: &Shared) -> Result<u64> {
    // The writer thread is the only mutator and is running this, so the
    // snapshot stays accurate until the swap below.
    let (watermark, next_id, resolved, mut dead, old) = {
        let idx = sh.index();
        let dead: Vec<_> = idx.dead.values().cloned().collect();
        (
            idx.watermark,
            idx.next_id,
            idx.resolved.clone(),
            dead,
            Arc::clone(&idx.state_file),
        )
    };
    let tmp_path = sh.dir.join(STATE_TMP);
    let tmp = sh.fs.open(&tmp_path, true).ctx("creating state.log.tmp")?;
    let written = write_compacted(&*tmp, &*old, watermark, next_id, &resolved, &mut dead);
    let len =
        match written.and_then(|len| tmp.sync_data().ctx("syncing state.log.tmp").map(|_| len)) {
            Ok(len) => len,
            Err(e) => {
                let _ = sh.fs.remove_file(&tmp_path);
                return Err(e);
            }
        };
    if let Err(e) = sh.fs.rename(&tmp_path, &sh.dir.join(STATE_FILE)) {
        let _ = sh.fs.remove_file(&tmp_path);
        return Err(e).ctx("renaming state.log.tmp");
    }
    let synced = sh.fs.sync_dir(&sh.dir).ctx("syncing the wal directory");
    let mut idx = sh.index();
    idx.state_file = tmp;
    idx.state_len = len;
    for meta in dead {
        idx.dead.insert(meta.id, meta);
    }
    if synced.is_err() {
        idx.poisoned = true;
    }
    drop(idx);
    synced.map(|_| len)
}

fn write_compacted(
    tmp: &dyn FileOps,
    old: &dyn FileOps,
    watermark: u64,
    next_id: u64,
    resolved: &crate::ranges::IdRanges,
    dead: &mut [state::DeadMeta],
) -> Result<u64> {
    tmp.set_len(0).ctx("truncating state.log.tmp")?;
    let mut buf = Vec::new();
    state::encode_checkpoint(&mut buf, now_ms(), watermark, next_id, resolved);
    let mut flushed = 0u64;
    for meta in dead.iter_mut() {
        let frame_len = HEADER_LEN + meta.body_len as usize;
        let at = buf.len();
        buf.resize(at + frame_len, 0);
        let dst = buf.get_mut(at..).unwrap_or_default();
        old.read_exact_at(dst, meta.entry_off)
            .ctx("copying a dead letter")?;
        meta.entry_off = flushed + at as u64;
        if buf.len() >= FLUSH_AT {
            tmp.write_all_at(&buf, flushed)
                .ctx("writing state.log.tmp")?;
            flushed += buf.len() as u64;
            buf.clear();
        }
    }
    tmp.write_all_at(&buf, flushed)
        .ctx("writing state.log.tmp")?;
    Ok(flushed + buf.len() as u64)
}
