//! Happy-path API behaviour: append/get/read, ack, dead letters, replay,
//! purge, stats, async tickets and group commit.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use wal::{RecordState, WalError, WalOptions};

use crate::common::{open, open_faulty, payload, pending_ids, small_opts};

#[test]
fn append_returns_increasing_ids_and_get_reads_back_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small_opts());
    let a = wal.append(b"first".to_vec()).unwrap();
    let b = wal.append(payload(2, 3000)).unwrap();
    let c = wal.append(Vec::new()).unwrap();
    assert!(a < b && b < c);
    let rec = wal.get(b).unwrap().unwrap();
    assert_eq!(rec.payload, payload(2, 3000));
    assert_eq!(rec.state, RecordState::Pending);
    assert!(rec.appended_at_ms > 1_600_000_000_000);
    assert_eq!(wal.get(c).unwrap().unwrap().payload, Vec::<u8>::new());
    assert_eq!(wal.get(c + 100).unwrap(), None);
}

#[test]
fn read_pending_returns_unacked_records_in_fifo_order_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small_opts());
    let ids: Vec<u64> = (0..20)
        .map(|i| wal.append(payload(i, 300)).unwrap())
        .collect();
    wal.ack(ids[3]).unwrap();
    wal.ack(ids[0]).unwrap();
    let from = ids[2];
    let got: Vec<u64> = wal
        .read_pending(from, 5)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, vec![ids[2], ids[4], ids[5], ids[6], ids[7]]);
    let all: Vec<u64> = wal.iter_pending(0).map(|r| r.unwrap().id).collect();
    let expected: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&i| i != ids[0] && i != ids[3])
        .collect();
    assert_eq!(all, expected);
}

#[test]
fn ack_is_idempotent_and_rejects_unknown_and_dead_ids() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small_opts());
    let a = wal.append(b"a".to_vec()).unwrap();
    let b = wal.append(b"b".to_vec()).unwrap();
    wal.ack(a).unwrap();
    wal.ack(a).unwrap();
    assert!(matches!(wal.ack(b + 1000), Err(WalError::UnknownId(_))));
    wal.dead_letter(b, "boom").unwrap();
    assert!(matches!(wal.ack(b), Err(WalError::NotPending(_))));
    assert!(matches!(
        wal.dead_letter(a, "x"),
        Err(WalError::NotPending(_))
    ));
}

#[test]
fn dead_letter_moves_a_record_out_of_pending_and_keeps_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts();
    let wal = open(dir.path(), &opts);
    let a = wal.append(payload(1, 500)).unwrap();
    let b = wal.append(payload(2, 500)).unwrap();
    wal.dead_letter(a, "upstream said 500").unwrap();
    assert_eq!(pending_ids(&wal), vec![b]);
    let dead = wal.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].reason.as_str()),
        (a, "upstream said 500")
    );
    assert_eq!(dead[0].payload_len, 500);
    drop(wal);
    let wal = open(dir.path(), &opts);
    let rec = wal.get(a).unwrap().unwrap();
    assert_eq!(rec.payload, payload(1, 500));
    assert!(
        matches!(rec.state, RecordState::Dead { ref reason, .. } if reason == "upstream said 500")
    );
    assert_eq!(pending_ids(&wal), vec![b]);
}

#[test]
fn replay_reenqueues_a_dead_letter_under_a_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts();
    let wal = open(dir.path(), &opts);
    let a = wal.append(payload(7, 100)).unwrap();
    let b = wal.append(payload(8, 100)).unwrap();
    wal.dead_letter(a, "nope").unwrap();
    let n = wal.replay(a).unwrap();
    assert!(n > b);
    assert!(matches!(wal.replay(a), Err(WalError::NotDead(_))));
    assert_eq!(pending_ids(&wal), vec![b, n]);
    assert_eq!(wal.get(n).unwrap().unwrap().payload, payload(7, 100));
    assert_eq!(wal.get(a).unwrap(), None);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(pending_ids(&wal), vec![b, n]);
    assert!(wal.dead_letters().is_empty());
}

#[test]
fn purge_dead_empties_the_dead_letter_set_durably() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts();
    let wal = open(dir.path(), &opts);
    for i in 0..5 {
        let id = wal.append(payload(i, 64)).unwrap();
        wal.dead_letter(id, "x").unwrap();
    }
    assert_eq!(wal.purge_dead().unwrap(), 5);
    assert_eq!(wal.purge_dead().unwrap(), 0);
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert!(wal.dead_letters().is_empty());
    assert_eq!(wal.stats().pending_count, 0);
}

#[test]
fn stats_report_oldest_pending_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small_opts());
    let s = wal.stats();
    assert_eq!(
        (s.pending_count, s.oldest_pending_id, s.dead_count),
        (0, None, 0)
    );
    let a = wal.append(payload(1, 10)).unwrap();
    let b = wal.append(payload(2, 10)).unwrap();
    let c = wal.append(payload(3, 10)).unwrap();
    wal.ack(a).unwrap();
    wal.dead_letter(c, "r").unwrap();
    let s = wal.stats();
    assert_eq!(s.pending_count, 1);
    assert_eq!(s.oldest_pending_id, Some(b));
    assert_eq!(
        s.oldest_pending_appended_at_ms,
        Some(wal.get(b).unwrap().unwrap().appended_at_ms)
    );
    assert_eq!(s.dead_count, 1);
    assert_eq!(s.segment_count, 1);
    assert!(s.bytes_on_disk > 0 && !s.poisoned);
}

#[test]
fn acked_records_are_not_handed_out_after_reopen_and_unacked_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts();
    let wal = open(dir.path(), &opts);
    let ids: Vec<u64> = (0..50)
        .map(|i| wal.append(payload(i, 200)).unwrap())
        .collect();
    for id in ids.iter().rev().step_by(3) {
        wal.ack(*id).unwrap();
    }
    let before = pending_ids(&wal);
    let last = *ids.last().unwrap();
    drop(wal);
    let wal = open(dir.path(), &opts);
    assert_eq!(pending_ids(&wal), before);
    assert!(wal.append(b"next".to_vec()).unwrap() > last);
}

#[test]
fn oversized_payload_is_rejected_without_touching_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small_opts());
    let err = wal.append(vec![0u8; (64 << 10) + 1]).unwrap_err();
    assert!(matches!(err, WalError::PayloadTooLarge { .. }));
    assert_eq!(wal.stats().pending_count, 0);
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn append_async_tickets_can_be_awaited_without_blocking_a_thread_per_append() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &small_opts());
    let tickets: Vec<_> = (0..100)
        .map(|i| wal.append_async(payload(i, 100)))
        .collect();
    let ids = block_on(async {
        let mut ids = Vec::new();
        for t in tickets {
            ids.push(t.await.unwrap());
        }
        ids
    });
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    block_on(wal.ack_async(ids[0])).unwrap();
    assert_eq!(wal.stats().pending_count, 99);
}

#[test]
fn many_concurrent_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        ..small_opts()
    };
    let (wal, plan) = open_faulty(dir.path(), &opts);
    let wal = Arc::new(wal);
    let syncs_before = plan.syncs();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..40 {
                    wal.append(payload(t * 1000 + i, 64)).unwrap();
                }
                40usize
            })
        })
        .collect();
    let appended: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let syncs = plan.syncs() - syncs_before;
    assert_eq!(appended, 640);
    assert!(
        syncs < 640,
        "group commit should need fewer fsyncs than appends, got {syncs}"
    );
    assert_eq!(wal.stats().pending_count, 640);
}
