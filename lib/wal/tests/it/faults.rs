//! Fault injection: failed fsyncs and torn writes must never acknowledge an
//! append, must poison the log, and must be repaired by reopening.

use std::sync::Arc;

use wal::{FaultTarget, FaultyFs, Wal, WalError, WalOptions};

use crate::common::{open, open_faulty, payload, pending_ids, small_opts};

fn big_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        ..small_opts()
    }
}

#[test]
fn an_fsync_failure_fails_the_append_and_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let (wal, plan) = open_faulty(dir.path(), &opts);
    let ok = wal.append(b"before".to_vec()).unwrap();
    plan.fail_next_syncs(FaultTarget::Segments, 1);
    let err = wal.append(b"doomed".to_vec()).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err:?}");
    assert!(wal.stats().poisoned);
    assert!(matches!(
        wal.append(b"after".to_vec()),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(wal.ack(ok), Err(WalError::Poisoned)));
    // The failed record was never published to readers.
    assert_eq!(pending_ids(&wal), vec![ok]);
    assert!(matches!(wal.close(), Err(WalError::Poisoned)));

    let wal = open(dir.path(), &opts);
    assert!(!wal.stats().poisoned);
    assert_eq!(wal.get(ok).unwrap().unwrap().payload, b"before".to_vec());
    let next = wal.append(b"fresh".to_vec()).unwrap();
    assert!(next > ok);
}

#[test]
fn an_fsync_failure_fails_every_concurrent_append_in_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, plan) = open_faulty(dir.path(), &big_segments());
    let wal = Arc::new(wal);
    plan.fail_next_syncs(FaultTarget::Segments, 1);
    let tickets: Vec<_> = (0..64)
        .map(|i| wal.append_async(payload(i, 1024)))
        .collect();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || wal.append(payload(100 + t, 1024)))
        })
        .collect();
    let mut results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    results.extend(threads.into_iter().map(|h| h.join().unwrap()));
    let acked: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert!(
        acked.is_empty(),
        "an append was acknowledged despite the failed fsync: {acked:?}"
    );
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(WalError::Io { .. }))));
    assert_eq!(wal.stats().pending_count, 0);
}

#[test]
fn a_torn_segment_write_fails_the_append_and_recovery_truncates_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let (wal, plan) = open_faulty(dir.path(), &opts);
    let a = wal.append(payload(1, 300)).unwrap();
    plan.tear_next_write(FaultTarget::Segments, 100);
    assert!(wal.append(payload(2, 300)).is_err());
    assert!(plan.crashed());
    drop(wal);

    let wal = open(dir.path(), &opts);
    let r = wal.recovery_report().clone();
    assert_eq!(r.bytes_truncated, 100);
    assert_eq!(pending_ids(&wal), vec![a]);
    let b = wal.append(payload(3, 300)).unwrap();
    assert!(b > a);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(pending_ids(&wal), vec![a, b]);
    assert_eq!(wal.get(b).unwrap().unwrap().payload, payload(3, 300));
}

#[test]
fn a_torn_write_of_a_new_segment_header_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 512,
        ..small_opts()
    };
    let (wal, plan) = open_faulty(dir.path(), &opts);
    // 3 records of 132 bytes fill a 512-byte segment; the 4th rotates.
    let ids: Vec<u64> = (0..3)
        .map(|i| wal.append(payload(i, 100)).unwrap())
        .collect();
    plan.tear_next_write(FaultTarget::Segments, 10);
    assert!(wal.append(payload(9, 100)).is_err());
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(pending_ids(&wal), ids);
    let id = wal.append(payload(10, 100)).unwrap();
    assert_eq!(wal.get(id).unwrap().unwrap().payload, payload(10, 100));
}

#[test]
fn a_failed_state_log_write_fails_the_ack_and_the_record_is_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let (wal, plan) = open_faulty(dir.path(), &opts);
    let a = wal.append(b"a".to_vec()).unwrap();
    plan.tear_next_write(FaultTarget::StateLog, 7);
    assert!(wal.ack(a).is_err());
    assert_eq!(pending_ids(&wal), vec![a]);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(wal.recovery_report().state_bytes_truncated, 7);
    assert_eq!(pending_ids(&wal), vec![a]);
    wal.ack(a).unwrap();
    assert!(pending_ids(&wal).is_empty());
}

#[test]
fn a_state_log_fsync_failure_fails_the_dead_letter_and_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let plan = fs.plan();
    let wal = Wal::open_with_fs(dir.path(), big_segments(), Arc::new(fs)).unwrap();
    let a = wal.append(b"a".to_vec()).unwrap();
    plan.fail_next_syncs(FaultTarget::StateLog, 1);
    assert!(matches!(wal.dead_letter(a, "r"), Err(WalError::Io { .. })));
    assert!(wal.dead_letters().is_empty());
    assert!(matches!(wal.append(b"b".to_vec()), Err(WalError::Poisoned)));
}

#[test]
fn a_record_corrupted_after_open_is_reported_by_id_and_can_be_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let opts = big_segments();
    let wal = open(dir.path(), &opts);
    let a = wal.append(payload(1, 100)).unwrap();
    let b = wal.append(payload(2, 100)).unwrap();
    // Bit rot under a running log: flip a payload byte of `a`.
    let seg = crate::common::segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[32 + 32 + 5] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    match wal.read_pending(0, 10) {
        Err(WalError::Unreadable { id, .. }) => assert_eq!(id, a),
        other => panic!("expected Unreadable, got {other:?}"),
    }
    wal.dead_letter(a, "cannot read").unwrap();
    assert_eq!(pending_ids(&wal), vec![b]);
    let dead = wal.dead_letters();
    assert!(dead[0]
        .reason
        .starts_with("cannot read [payload unreadable"));
    assert_eq!(dead[0].payload_len, 0);
}
