//! Open-time recovery: replays the state log, scans every segment, repairs
//! what can be repaired and builds the [`Index`] plus a [`RecoveryReport`].
//!
//! Policy (documented in the crate docs as well):
//! - state log: replayed up to its first unreadable frame; that tail is
//!   truncated. Entries with an intact header but a bad body are skipped.
//! - segments: a frame whose header is intact but whose payload fails the CRC
//!   is skipped (counted as corrupt, never handed out) and scanning resumes
//!   after it. An unreadable frame header (or out-of-order id) ends the scan
//!   of that segment: in the last segment the rest is truncated (torn tail),
//!   in a sealed segment it is left in place and reported as unreadable.
//! - a sealed segment whose segment header is unreadable is renamed to
//!   `*.seg.corrupt`; a last segment with an unreadable header is reset.
//! - ids continue above every id seen anywhere, plus `lost_bytes / 32 + 1`
//!   when any bytes were discarded, so ids that might have been handed out
//!   are never reused.
//!
//! Never panics on any file content; only I/O errors fail `open`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::frame::{self, ScanEvent, HEADER_LEN, RECORD_MAGIC};
use crate::fs::{FileOps, Fs};
use crate::index::{parse_segment_name, segment_name, Index, Loc, Segment, STATE_FILE, STATE_TMP};
use crate::state::{self, StateImage};
use crate::types::RecoveryReport;

/// Maximum number of corrupt ids listed in the report.
const MAX_REPORTED_IDS: usize = 1000;

/// What scanning one segment produced.
struct SegScan {
    seg: Segment,
    lost: u64,
}

/// Opens (creating if needed) the log directory and recovers its contents.
pub(crate) fn recover(fs: &dyn Fs, dir: &Path) -> Result<(Index, RecoveryReport)> {
    fs.create_dir_all(dir).ctx("creating the wal directory")?;
    let names = fs.list_dir(dir).ctx("listing the wal directory")?;
    if names.iter().any(|n| n == STATE_TMP) {
        fs.remove_file(&dir.join(STATE_TMP))
            .ctx("removing a leftover state.log.tmp")?;
    }
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort_unstable();

    let mut report = RecoveryReport::default();
    let state_file = fs
        .open(&dir.join(STATE_FILE), true)
        .ctx("opening state.log")?;
    let state_disk_len = state_file.size().ctx("reading state.log length")?;
    let img = state::load(&*state_file, state_disk_len).ctx("reading state.log")?;
    report.state_entries = img.entries;
    report.state_corrupt_entries = img.corrupt;
    if img.valid_end < state_disk_len {
        state_file
            .set_len(img.valid_end)
            .ctx("truncating state.log")?;
        state_file.sync_data().ctx("syncing state.log")?;
        report.state_bytes_truncated = state_disk_len - img.valid_end;
    }

    let mut pending = BTreeMap::new();
    let mut segments = BTreeMap::new();
    let mut max_id = img.max_id.max(img.watermark);
    let mut lost = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        max_id = max_id.max(base.saturating_sub(1));
        let path = dir.join(segment_name(base));
        let file = fs.open(&path, false).ctx("opening a segment")?;
        let len = file.size().ctx("reading a segment length")?;
        report.segments_scanned += 1;
        let found = (base, len, last);
        match scan_segment(file, found, &img, &mut pending, &mut report, &mut max_id)? {
            Some(s) => {
                lost += s.lost;
                segments.insert(base, s.seg);
            }
            None => {
                lost += len;
                report.bytes_unreadable += len;
                report.segments_quarantined += 1;
                let to = dir.join(format!("{}.corrupt", segment_name(base)));
                fs.rename(&path, &to)
                    .ctx("quarantining a corrupt segment")?;
            }
        }
    }

    let mut next_id = max_id.saturating_add(1).max(1);
    if lost > 0 {
        next_id = next_id.saturating_add(lost / HEADER_LEN as u64 + 1);
    }
    report.next_id = next_id;
    report.records_pending = pending.len() as u64;

    if segments.is_empty() {
        let file = fs
            .open(&dir.join(segment_name(next_id)), true)
            .ctx("creating the first segment")?;
        init_segment(&*file, next_id)?;
        segments.insert(
            next_id,
            Segment {
                base: next_id,
                file,
                len: HEADER_LEN as u64,
                live: 0,
                damaged: false,
            },
        );
    }

    let StateImage {
        watermark,
        resolved,
        dead,
        ..
    } = img;
    let mut index = Index {
        segments,
        pending,
        dead,
        watermark,
        resolved,
        next_id,
        state_file,
        state_len: state_disk_len - report.state_bytes_truncated,
        poisoned: false,
    };
    index.advance_watermark();
    for seg in index.take_reclaimable() {
        crate::writer::discard_segment(fs, dir, &seg)?;
        report.segments_reclaimed += 1;
    }
    fs.sync_dir(dir).ctx("syncing the wal directory")?;
    Ok((index, report))
}

/// Writes a fresh segment header into an empty (or reset) segment file.
pub(crate) fn init_segment(file: &dyn FileOps, base: u64) -> Result<()> {
    file.set_len(0).ctx("resetting a segment")?;
    file.write_all_at(&frame::segment_header(base), 0)
        .ctx("writing a segment header")?;
    file.sync_data().ctx("syncing a new segment")
}

/// Scans one segment. Returns `None` if a sealed segment's header is bad.
fn scan_segment(
    file: Arc<dyn FileOps>,
    (base, len, last): (u64, u64, bool),
    img: &StateImage,
    pending: &mut BTreeMap<u64, Loc>,
    report: &mut RecoveryReport,
    max_id: &mut u64,
) -> Result<Option<SegScan>> {
    let mut hdr = [0u8; HEADER_LEN];
    if len >= HEADER_LEN as u64 {
        file.read_exact_at(&mut hdr, 0)
            .ctx("reading a segment header")?;
    }
    if frame::decode_segment_header(&hdr) != Some(base) {
        if !last {
            return Ok(None);
        }
        init_segment(&*file, base)?;
        report.bytes_truncated += len;
        let seg = Segment {
            base,
            file,
            len: HEADER_LEN as u64,
            live: 0,
            damaged: false,
        };
        return Ok(Some(SegScan { seg, lost: len }));
    }

    let mut prev: Option<u64> = None;
    let mut live = 0u64;
    // `u64::MAX` is never handed out (the writer stops below it), so a frame with it is
    // not one the log wrote: trusting it would leave no id for the next append.
    let in_order =
        |prev: Option<u64>, id: u64| id >= base && id < u64::MAX && prev.is_none_or(|p| id > p);
    let end = frame::scan(
        &*file,
        HEADER_LEN as u64,
        len,
        RECORD_MAGIC,
        |ev| match ev {
            ScanEvent::Frame { offset, header, .. } => {
                let id = header.a;
                if !in_order(prev, id) {
                    return false;
                }
                prev = Some(id);
                *max_id = (*max_id).max(id);
                report.records_recovered += 1;
                if !img.is_resolved(id) && !img.dead.contains_key(&id) {
                    let loc = Loc {
                        seg: base,
                        offset,
                        len: header.len,
                        ts: header.b,
                    };
                    pending.insert(id, loc);
                    live += 1;
                }
                true
            }
            ScanEvent::CorruptBody { header, .. } => {
                let id = header.a;
                if !in_order(prev, id) {
                    return false;
                }
                prev = Some(id);
                *max_id = (*max_id).max(id);
                report.corrupt_records += 1;
                if report.corrupt_record_ids.len() < MAX_REPORTED_IDS {
                    report.corrupt_record_ids.push(id);
                }
                true
            }
        },
    )
    .ctx("scanning a segment")?;

    let bad = len - end.valid_end;
    let mut seg_len = len;
    let mut damaged = false;
    if bad > 0 {
        if last {
            file.set_len(end.valid_end)
                .ctx("truncating a torn segment tail")?;
            file.sync_data().ctx("syncing a truncated segment")?;
            seg_len = end.valid_end;
            report.bytes_truncated += bad;
        } else {
            report.bytes_unreadable += bad;
            damaged = true;
        }
    }
    let seg = Segment {
        base,
        file,
        len: seg_len,
        live,
        damaged,
    };
    Ok(Some(SegScan { seg, lost: bad }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::{Wal, WalError, WalOptions};

    /// A segment with base id 1 whose one record (`last`) claims the last id, `u64::MAX`.
    /// Found by the `wal_recovery` fuzz target: the next append overflowed the id counter
    /// in the writer thread (a panic there; ids wrapping to 0 without overflow checks).
    const LAST_ID_SEGMENT: [u8; 68] = [
        // Segment header: `SLUICEWL`, version 1, base id 1, CRC.
        0x53, 0x4c, 0x55, 0x49, 0x43, 0x45, 0x57, 0x4c, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x93, 0x8e,
        0x03, 0xcf, //
        // Record frame: `SGR1`, length 4, id u64::MAX, time, CRCs, then the payload.
        0x53, 0x47, 0x52, 0x31, 0x04, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x0a, 0xac, 0x53, 0xfc, 0x57, 0x6d,
        0x89, 0xc8, 0x6c, 0x61, 0x73, 0x74,
    ];

    /// A state log whose one entry acks id `u64::MAX`.
    const LAST_ID_ACK: [u8; 40] = [
        0x53, 0x47, 0x53, 0x31, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x1a, 0x75, 0xa6, 0x59, 0x30, 0x72,
        0x86, 0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];

    #[test]
    fn a_record_with_the_last_id_is_dropped_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.seg"), LAST_ID_SEGMENT).unwrap();
        let log = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert!(log.read_pending(0, 10).unwrap().is_empty());
        let id = log.append(b"next".to_vec()).unwrap();
        assert!(id < u64::MAX);
        log.close().unwrap();
        let log = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let pending = log.read_pending(0, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].id, &pending[0].payload[..]), (id, &b"next"[..]));
    }

    #[test]
    fn a_log_whose_ids_are_used_up_refuses_appends_instead_of_wrapping() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.log"), LAST_ID_ACK).unwrap();
        let log = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert!(matches!(
            log.append(b"x".to_vec()),
            Err(WalError::IdsExhausted)
        ));
        log.close().unwrap();
        assert!(Wal::open(dir.path(), WalOptions::default()).is_ok());
    }
}
