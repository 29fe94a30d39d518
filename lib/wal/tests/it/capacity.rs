//! Bounded size and reclamation: `Full`, segment deletion once everything in
//! a sealed segment is resolved, and state-log compaction.

use wal::{WalError, WalOptions};

use crate::common::{open, payload, pending_ids, segments, small_opts};

#[test]
fn an_append_past_max_bytes_fails_with_full_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        max_bytes: 4096,
        ..small_opts()
    };
    let wal = open(dir.path(), &opts);
    let mut ids = Vec::new();
    let err = loop {
        match wal.append(payload(ids.len() as u64, 500)) {
            Ok(id) => ids.push(id),
            Err(e) => break e,
        }
    };
    assert!(err.is_full(), "{err:?}");
    assert!(matches!(err, WalError::Full { max: 4096, .. }));
    assert_eq!(ids.len(), 7); // 32 + 7 * 532 = 3756; an 8th would need 4288
    let bytes = wal.stats().bytes_on_disk;
    assert!(bytes <= 4096);
    // Still full after a reopen: nothing was dropped to make room.
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(pending_ids(&wal), ids);
    assert!(wal.append(payload(99, 500)).unwrap_err().is_full());
}

#[test]
fn acking_frees_room_once_the_segment_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        max_bytes: 4096,
        ..small_opts()
    };
    let wal = open(dir.path(), &opts);
    let ids: Vec<u64> = (0..7)
        .map(|i| wal.append(payload(i, 500)).unwrap())
        .collect();
    assert!(wal.append(payload(7, 500)).unwrap_err().is_full());
    for id in &ids {
        wal.ack(*id).unwrap();
    }
    // The active segment holds only acked records: it is sealed and deleted.
    let id = wal.append(payload(8, 500)).unwrap();
    assert_eq!(pending_ids(&wal), vec![id]);
    assert_eq!(segments(dir.path()).len(), 1);
}

#[test]
fn reclamation_deletes_fully_acked_sealed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1024,
        ..small_opts()
    };
    let wal = open(dir.path(), &opts);
    // 4 records of 232 bytes per segment: 3 segments.
    let ids: Vec<u64> = (0..12)
        .map(|i| wal.append(payload(i, 200)).unwrap())
        .collect();
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 3);
    // Ack all of segment 0 except one: nothing is deleted.
    for id in &ids[0..3] {
        wal.ack(*id).unwrap();
    }
    assert_eq!(segments(dir.path()), segs);
    // Dead-lettering the last one moves it out: segment 0 goes away.
    wal.dead_letter(ids[3], "gave up").unwrap();
    assert_eq!(segments(dir.path()), segs[1..].to_vec());
    assert_eq!(wal.get(ids[3]).unwrap().unwrap().payload, payload(3, 200));
    // Ack everything in segment 1 out of order.
    for id in [ids[6], ids[4], ids[7], ids[5]] {
        wal.ack(id).unwrap();
    }
    assert_eq!(segments(dir.path()), segs[2..].to_vec());
    // The active segment is kept even when fully acked.
    for id in &ids[8..] {
        wal.ack(*id).unwrap();
    }
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(wal.stats().segment_count, 1);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert!(pending_ids(&wal).is_empty());
    assert_eq!(wal.dead_letters().len(), 1);
}

#[test]
fn state_log_compaction_keeps_acks_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        state_compact_bytes: 2048,
        ..small_opts()
    };
    let wal = open(dir.path(), &opts);
    let ids: Vec<u64> = (0..300)
        .map(|i| wal.append(payload(i, 50)).unwrap())
        .collect();
    let mut expect_pending = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match i % 10 {
            0 => expect_pending.push(*id),
            3 => wal.dead_letter(*id, &format!("reason {i}")).unwrap(),
            _ => wal.ack(*id).unwrap(),
        }
    }
    let state_len = std::fs::metadata(dir.path().join("state.log"))
        .unwrap()
        .len();
    // 270 separate ack/dead entries would be > 10 KiB uncompacted.
    assert!(
        state_len < 8192,
        "state.log was not compacted: {state_len} bytes"
    );
    assert_eq!(pending_ids(&wal), expect_pending);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(pending_ids(&wal), expect_pending);
    let dead = wal.dead_letters();
    assert_eq!(dead.len(), 30);
    assert_eq!(dead[1].reason, "reason 13");
    assert_eq!(wal.get(ids[13]).unwrap().unwrap().payload, payload(13, 50));
}
