//! Model-based property test: random sequences of append / ack /
//! dead_letter / replay / purge / reopen, plus appends killed by a torn write
//! or a failed fsync, are run against the log and against an in-memory
//! model; after every step the pending list (ids, order, payloads), the dead
//! set (ids, reasons, payloads) and the counters must agree.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use wal::{FaultPlan, FaultTarget, FaultyFs, Wal, WalError, WalOptions};

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<u8>),
    Ack(usize),
    AckUnknown,
    Dead(usize, String),
    Replay(usize),
    Purge,
    Reopen,
    TornAppend(Vec<u8>, usize),
    SyncFailAppend(Vec<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        6 => bytes.clone().prop_map(Step::Append),
        3 => any::<usize>().prop_map(Step::Ack),
        1 => Just(Step::AckUnknown),
        2 => (any::<usize>(), "[a-z ]{0,20}").prop_map(|(i, r)| Step::Dead(i, r)),
        2 => any::<usize>().prop_map(Step::Replay),
        1 => Just(Step::Purge),
        2 => Just(Step::Reopen),
        1 => (bytes.clone(), 0usize..400).prop_map(|(b, k)| Step::TornAppend(b, k)),
        1 => bytes.prop_map(Step::SyncFailAppend),
    ]
}

#[derive(Default)]
struct Model {
    pending: BTreeMap<u64, Vec<u8>>,
    dead: BTreeMap<u64, (Vec<u8>, String)>,
    max_id: u64,
    /// Payload of an append whose fsync failed: it may or may not survive.
    maybe: Option<Vec<u8>>,
}

struct Harness {
    dir: tempfile::TempDir,
    opts: WalOptions,
    plan: Arc<FaultPlan>,
    wal: Option<Wal>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 700,
            max_bytes: 64 << 20,
            max_payload_bytes: 4096,
            state_compact_bytes: 600,
        };
        let fs = FaultyFs::new();
        let plan = fs.plan();
        plan.set_sync_noop(true);
        let wal = open(dir.path(), &opts, &fs);
        Harness {
            dir,
            opts,
            plan,
            wal: Some(wal),
        }
    }

    fn wal(&self) -> &Wal {
        self.wal.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        drop(self.wal.take());
        self.plan.reset();
        let fs = FaultyFs::new();
        self.plan = fs.plan();
        self.plan.set_sync_noop(true);
        self.wal = Some(open(self.dir.path(), &self.opts, &fs));
    }
}

fn open(dir: &Path, opts: &WalOptions, fs: &FaultyFs) -> Wal {
    Wal::open_with_fs(dir, opts.clone(), Arc::new(fs.clone())).unwrap()
}

fn nth<V>(map: &BTreeMap<u64, V>, i: usize) -> Option<u64> {
    (!map.is_empty()).then(|| *map.keys().nth(i % map.len()).unwrap_or(&0))
}

fn run(h: &mut Harness, m: &mut Model, s: Step) -> Result<(), TestCaseError> {
    match s {
        Step::Append(p) => {
            let id = h.wal().append(p.clone()).unwrap();
            prop_assert!(id > m.max_id);
            m.max_id = id;
            m.pending.insert(id, p);
        }
        Step::Ack(i) => {
            if let Some(id) = nth(&m.pending, i) {
                h.wal().ack(id).unwrap();
                m.pending.remove(&id);
            }
        }
        Step::AckUnknown => {
            let r = h.wal().ack(h.wal().stats().next_id + 5);
            prop_assert!(matches!(r, Err(WalError::UnknownId(_))), "{:?}", r);
        }
        Step::Dead(i, reason) => {
            if let Some(id) = nth(&m.pending, i) {
                h.wal().dead_letter(id, &reason).unwrap();
                let p = m.pending.remove(&id).unwrap_or_default();
                m.dead.insert(id, (p, reason));
            }
        }
        Step::Replay(i) => {
            if let Some(id) = nth(&m.dead, i) {
                let new_id = h.wal().replay(id).unwrap();
                prop_assert!(new_id > m.max_id);
                m.max_id = new_id;
                let (p, _) = m.dead.remove(&id).unwrap_or_default();
                m.pending.insert(new_id, p);
            }
        }
        Step::Purge => {
            prop_assert_eq!(h.wal().purge_dead().unwrap(), m.dead.len() as u64);
            m.dead.clear();
        }
        Step::Reopen => h.reopen(),
        Step::TornAppend(p, keep) => {
            h.plan.tear_next_write(FaultTarget::Segments, keep);
            prop_assert!(h.wal().append(p).is_err());
            h.reopen();
        }
        Step::SyncFailAppend(p) => {
            h.plan.fail_next_syncs(FaultTarget::Segments, 1);
            prop_assert!(h.wal().append(p.clone()).is_err());
            prop_assert!(matches!(
                h.wal().append(b"x".to_vec()),
                Err(WalError::Poisoned)
            ));
            m.maybe = Some(p);
            h.reopen();
        }
    }
    check(h, m)
}

fn check(h: &Harness, m: &mut Model) -> Result<(), TestCaseError> {
    let wal = h.wal();
    let mut got: Vec<(u64, Vec<u8>)> = wal
        .read_pending(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.payload))
        .collect();
    if let Some(p) = m.maybe.take() {
        // The un-synced record reached the page cache, so it normally
        // survives; if so it must be the newest record, intact.
        if got.len() == m.pending.len() + 1 {
            let (id, payload) = got.last().cloned().unwrap_or_default();
            prop_assert!(id > m.max_id);
            prop_assert_eq!(&payload, &p);
            m.max_id = id;
            m.pending.insert(id, payload);
        }
    }
    let want: Vec<(u64, Vec<u8>)> = m.pending.iter().map(|(k, v)| (*k, v.clone())).collect();
    prop_assert_eq!(&got, &want);
    got.clear();
    let dead: Vec<(u64, String)> = wal
        .dead_letters()
        .into_iter()
        .map(|d| (d.id, d.reason))
        .collect();
    let want_dead: Vec<(u64, String)> = m.dead.iter().map(|(k, (_, r))| (*k, r.clone())).collect();
    prop_assert_eq!(dead, want_dead);
    for (id, (p, _)) in &m.dead {
        prop_assert_eq!(&wal.get(*id).unwrap().unwrap().payload, p);
    }
    let s = wal.stats();
    prop_assert_eq!(s.pending_count, m.pending.len() as u64);
    prop_assert_eq!(s.dead_count, m.dead.len() as u64);
    prop_assert_eq!(s.oldest_pending_id, m.pending.keys().next().copied());
    prop_assert!(s.next_id > m.max_id);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_log_behaves_like_an_in_memory_queue(steps in proptest::collection::vec(step(), 1..60)) {
        let mut h = Harness::new();
        let mut m = Model::default();
        for s in steps {
            run(&mut h, &mut m, s)?;
        }
    }
}
