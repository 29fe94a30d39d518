//! Append benchmark (plain `main`, std::time): raw fdatasync latency on the
//! target disk, maximum acknowledged 1 KiB appends/s with many concurrent
//! appenders (group commit), and ack-latency percentiles at a paced
//! 5,000 appends/s. Run with `cargo bench -p wal`; set `WAL_BENCH_DIR` to
//! measure a disk other than the system temp dir's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wal::{FileOps, Fs, RealFs, Wal, WalOptions};

const PAYLOAD: usize = 1024;

/// Counts data syncs so the benchmark can report the average batch size.
struct CountingFs {
    syncs: Arc<AtomicU64>,
}

struct CountingFile {
    inner: Arc<dyn FileOps>,
    syncs: Arc<AtomicU64>,
}

impl FileOps for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl Fs for CountingFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileOps>> {
        let inner = RealFs.open(path, create)?;
        let syncs = Arc::clone(&self.syncs);
        Ok(Arc::new(CountingFile { inner, syncs }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WAL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn raw_fdatasync() {
    let dir = bench_dir();
    let file = RealFs.open(&dir.path().join("raw"), true).unwrap();
    let buf = vec![0xabu8; PAYLOAD];
    let mut lat = Vec::new();
    for i in 0..3000u64 {
        let t = Instant::now();
        file.write_all_at(&buf, i * PAYLOAD as u64).unwrap();
        file.sync_data().unwrap();
        if i >= 200 {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    println!(
        "raw 1 KiB append + fdatasync: n={} mean {} p50 {} p99 {} max {}",
        lat.len(),
        us(mean),
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.99)),
        us(pct(&lat, 1.0))
    );
}

fn open(dir: &Path) -> (Arc<Wal>, Arc<AtomicU64>) {
    let syncs = Arc::new(AtomicU64::new(0));
    let fs = CountingFs {
        syncs: Arc::clone(&syncs),
    };
    let opts = WalOptions {
        max_bytes: 16 << 30,
        ..WalOptions::default()
    };
    (
        Arc::new(Wal::open_with_fs(dir, opts, Arc::new(fs)).unwrap()),
        syncs,
    )
}

fn throughput(threads: usize, secs: u64) {
    let dir = bench_dir();
    let (wal, syncs) = open(dir.path());
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let syncs0 = syncs.load(Ordering::Relaxed);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (wal, done) = (Arc::clone(&wal), Arc::clone(&done));
            std::thread::spawn(move || {
                let payload = vec![0x5au8; PAYLOAD];
                while Instant::now() < end {
                    wal.append(payload.clone()).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let s = syncs.load(Ordering::Relaxed) - syncs0;
    println!(
        "throughput, {threads:>3} appender threads: {:>8.0} acknowledged appends/s ({n} in {elapsed:.2} s, {s} fdatasyncs, {:.1} appends per fdatasync)",
        n as f64 / elapsed,
        n as f64 / s.max(1) as f64
    );
}

/// Paced load: one thread submits `append_async` at `rate`/s on a fixed
/// schedule (never blocked by slow acks, so no coordinated omission); a
/// collector waits on the tickets in order and records completion time minus
/// scheduled time.
fn paced(rate: u64, secs: u64) {
    let dir = bench_dir();
    let (wal, syncs) = open(dir.path());
    for _ in 0..200 {
        wal.append(vec![0u8; PAYLOAD]).unwrap();
    }
    let syncs0 = syncs.load(Ordering::Relaxed);
    let total = rate * secs;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, wal::Ticket<u64>)>();
    let collector = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(total as usize);
        for (due, ticket) in rx {
            ticket.wait().unwrap();
            lat.push(Instant::now().saturating_duration_since(due));
        }
        lat
    });
    let payload = vec![0x33u8; PAYLOAD];
    for k in 0..total {
        let due = start + interval * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        tx.send((due, wal.append_async(payload.clone()))).unwrap();
    }
    drop(tx);
    let mut lat = collector.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let s = syncs.load(Ordering::Relaxed) - syncs0;
    println!(
        "paced {rate}/s for {secs} s ({} appends, achieved {:.0}/s, {:.1} appends per fdatasync): ack latency p50 {} p90 {} p99 {} p99.9 {} max {}",
        lat.len(),
        lat.len() as f64 / elapsed,
        lat.len() as f64 / s.max(1) as f64,
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.9)),
        us(pct(&lat, 0.99)),
        us(pct(&lat, 0.999)),
        us(pct(&lat, 1.0))
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run us.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = std::env::var("WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("wal append benchmark, payload {PAYLOAD} B, {secs} s per run");
    raw_fdatasync();
    for threads in [1, 8, 64] {
        throughput(threads, secs);
    }
    paced(5000, secs);
}
