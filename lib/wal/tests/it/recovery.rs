//! Recovery on open: torn tails, bad CRCs, damaged sealed segments, the
//! state log, id continuation, and arbitrary garbage (never a panic).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use proptest::prelude::*;
use wal::{Wal, WalOptions};

use crate::common::{open, payload, pending_ids, segments, small_opts};

const HDR: u64 = 32;

fn big_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        ..small_opts()
    }
}

/// Appends `n` records of `len` bytes, closes, returns their ids.
fn fill(dir: &Path, opts: &WalOptions, n: u64, len: usize) -> Vec<u64> {
    let wal = open(dir, opts);
    let ids = (0..n)
        .map(|i| wal.append(payload(i, len)).unwrap())
        .collect();
    wal.close().unwrap();
    ids
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn patch(p: &Path, at: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

fn flip(p: &Path, at: u64) {
    let mut b = std::fs::read(p).unwrap();
    b[at as usize] ^= 0x5a;
    std::fs::write(p, b).unwrap();
}

#[test]
fn truncates_a_torn_tail_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let ids = fill(dir.path(), &opts, 3, 100);
    let seg = segments(dir.path()).pop().unwrap();
    let good = file_len(&seg);
    // A fourth frame that was only half written: header plus part of a body.
    let mut torn = Vec::new();
    torn.extend_from_slice(b"SGR1");
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&[7u8; 40]);
    patch(&seg, good, &torn);

    let wal = open(dir.path(), &opts);
    let r = wal.recovery_report().clone();
    assert_eq!(r.bytes_truncated, torn.len() as u64);
    assert_eq!(r.records_recovered, 3);
    assert_eq!(file_len(&seg), good);
    assert_eq!(pending_ids(&wal), ids);
    let next = wal.append(payload(9, 10)).unwrap();
    assert!(next > ids[2]);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(wal.recovery_report().bytes_truncated, 0);
    assert_eq!(wal.get(next).unwrap().unwrap().payload, payload(9, 10));
}

#[test]
fn a_bad_crc_in_the_last_record_is_treated_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let ids = fill(dir.path(), &opts, 3, 100);
    let seg = segments(dir.path()).pop().unwrap();
    let len = file_len(&seg);
    flip(&seg, len - 5);
    let wal = open(dir.path(), &opts);
    assert_eq!(wal.recovery_report().bytes_truncated, HDR + 100);
    assert_eq!(wal.recovery_report().corrupt_records, 0);
    assert_eq!(pending_ids(&wal), ids[..2].to_vec());
}

#[test]
fn a_corrupt_record_in_the_middle_is_skipped_and_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let ids = fill(dir.path(), &opts, 3, 100);
    let seg = segments(dir.path()).pop().unwrap();
    // Payload byte of the second record.
    flip(&seg, HDR + (HDR + 100) + HDR + 10);
    let wal = open(dir.path(), &opts);
    let r = wal.recovery_report();
    assert_eq!(
        (r.corrupt_records, r.corrupt_record_ids.clone()),
        (1, vec![ids[1]])
    );
    assert_eq!(r.bytes_truncated, 0);
    assert_eq!(pending_ids(&wal), vec![ids[0], ids[2]]);
    assert_eq!(wal.get(ids[1]).unwrap(), None);
    assert_eq!(wal.get(ids[2]).unwrap().unwrap().payload, payload(2, 100));
}

#[test]
fn a_corrupt_header_in_a_sealed_segment_hides_only_the_rest_of_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1024,
        ..small_opts()
    };
    // 200-byte payloads: 4 records per segment.
    let ids = fill(dir.path(), &opts, 12, 200);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    // Header of the second record of the first segment.
    flip(&segs[0], HDR + (HDR + 200) + 2);
    let wal = open(dir.path(), &opts);
    let r = wal.recovery_report().clone();
    assert_eq!(r.bytes_unreadable, 3 * (HDR + 200));
    assert_eq!(r.bytes_truncated, 0);
    let mut expected = vec![ids[0]];
    expected.extend_from_slice(&ids[4..]);
    assert_eq!(pending_ids(&wal), expected);
    // Ids never reuse anything that might have been in the damaged region.
    assert!(r.next_id > ids[11]);
    assert!(wal.append(b"x".to_vec()).unwrap() > ids[11]);
}

#[test]
fn a_sealed_segment_with_a_bad_segment_header_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1024,
        ..small_opts()
    };
    let ids = fill(dir.path(), &opts, 8, 200);
    let segs = segments(dir.path());
    flip(&segs[0], 3);
    let wal = open(dir.path(), &opts);
    assert_eq!(wal.recovery_report().segments_quarantined, 1);
    assert_eq!(pending_ids(&wal), ids[4..].to_vec());
    let corrupt = segs[0].with_extension("seg.corrupt");
    assert!(corrupt.exists());
}

#[test]
fn ids_continue_above_the_highest_recovered_id_even_when_everything_was_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 512,
        ..small_opts()
    };
    let wal = open(dir.path(), &opts);
    let ids: Vec<u64> = (0..20)
        .map(|i| wal.append(payload(i, 100)).unwrap())
        .collect();
    for id in &ids {
        wal.ack(*id).unwrap();
    }
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert!(pending_ids(&wal).is_empty());
    assert!(wal.append(b"later".to_vec()).unwrap() > ids[19]);
}

#[test]
fn a_torn_state_log_tail_is_truncated_and_its_ack_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let wal = open(dir.path(), &opts);
    let a = wal.append(b"a".to_vec()).unwrap();
    let b = wal.append(b"b".to_vec()).unwrap();
    wal.ack(a).unwrap();
    wal.ack(b).unwrap();
    drop(wal);
    let state = dir.path().join("state.log");
    let len = file_len(&state);
    // Cut the last ack entry (32-byte header + one id) in half.
    let f = OpenOptions::new().write(true).open(&state).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    let wal = open(dir.path(), &opts);
    assert_eq!(wal.recovery_report().state_bytes_truncated, HDR + 8 - 20);
    assert_eq!(pending_ids(&wal), vec![b]);
}

#[test]
fn a_leftover_compaction_temp_file_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts();
    fill(dir.path(), &opts, 2, 10);
    std::fs::write(dir.path().join("state.log.tmp"), b"half written").unwrap();
    let wal = open(dir.path(), &opts);
    assert!(!dir.path().join("state.log.tmp").exists());
    assert_eq!(wal.stats().pending_count, 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_in_segments_and_state_log_never_make_open_panic(
        seg in proptest::collection::vec(any::<u8>(), 0..600),
        state in proptest::collection::vec(any::<u8>(), 0..300),
        keep_header in any::<bool>(),
        cut in 0usize..400,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = big_segments();
        fill(dir.path(), &opts, 3, 50);
        let path = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        if keep_header {
            bytes.truncate(32 + cut.min(bytes.len() - 32));
            bytes.extend_from_slice(&seg);
        } else {
            bytes = seg.clone();
        }
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(dir.path().join("state.log"), &state).unwrap();
        std::fs::write(dir.path().join("00000000000000000099.seg"), &seg).unwrap();
        let wal = Wal::open(dir.path(), opts.clone()).unwrap();
        for r in wal.iter_pending(0) {
            r.unwrap();
        }
        let id = wal.append(b"after".to_vec()).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), opts).unwrap();
        prop_assert_eq!(wal.get(id).unwrap().unwrap().payload, b"after".to_vec());
    }
}
