//! Shared helpers: small options that force rotation, openers for the real
//! and the fault-injecting filesystem, and directory inspection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wal::{FaultPlan, FaultyFs, Wal, WalOptions};

/// Options with tiny segments and a tiny compaction threshold.
pub fn small_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        max_bytes: 4 << 20,
        max_payload_bytes: 64 << 10,
        state_compact_bytes: 4096,
    }
}

/// Opens a log on the real filesystem.
pub fn open(dir: &Path, opts: &WalOptions) -> Wal {
    Wal::open(dir, opts.clone()).expect("open wal")
}

/// Opens a log through a fresh [`FaultyFs`]; returns the log and its plan.
pub fn open_faulty(dir: &Path, opts: &WalOptions) -> (Wal, Arc<FaultPlan>) {
    let fs = FaultyFs::new();
    let plan = fs.plan();
    let wal = Wal::open_with_fs(dir, opts.clone(), Arc::new(fs)).expect("open faulty wal");
    (wal, plan)
}

/// Deterministic payload of `len` bytes derived from `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Segment files in `dir`, sorted by name.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Ids of all pending records, in order.
pub fn pending_ids(wal: &Wal) -> Vec<u64> {
    wal.read_pending(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}
