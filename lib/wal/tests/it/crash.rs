//! Crash test: this test binary re-executes itself as a child process that
//! appends from several threads and prints every acknowledged id (flushed,
//! after `append` returned); the parent SIGKILLs it mid-load, reopens the log
//! and checks that every acknowledged append is present with its payload and
//! every acknowledged ack is not handed out again. Three kill/reopen rounds
//! run against the same directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use wal::{Wal, WalOptions};

use crate::common::payload;

const CHILD_DIR: &str = "WAL_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "WAL_CRASH_CHILD_ROUND";
const TEST_NAME: &str = "crash::sigkill_mid_load_never_loses_an_acknowledged_append";
const THREADS: u64 = 8;

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes: 256 << 10,
        max_bytes: 1 << 30,
        ..WalOptions::default()
    }
}

fn seed(round: u64, thread: u64, seq: u64) -> u64 {
    (round << 40) | (thread << 32) | seq
}

fn len_for(seed: u64) -> usize {
    64 + (seed % 1500) as usize
}

/// Child mode: append forever (until killed), printing acknowledgements.
fn child(dir: &Path, round: u64) {
    let wal = Arc::new(Wal::open(dir, opts()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let s = seed(round, t, seq);
                    let id = wal.append(payload(s, len_for(s))).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "A {id} {round} {t} {seq}").unwrap();
                    out.flush().unwrap();
                    drop(out);
                    if seq % 4 == 1 {
                        wal.ack(id).unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "K {id}").unwrap();
                        out.flush().unwrap();
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    for h in threads {
        let _ = h.join();
    }
}

#[test]
fn sigkill_mid_load_never_loses_an_acknowledged_append() {
    if let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ROUND)) {
        child(Path::new(&dir), round.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut appended: BTreeMap<u64, u64> = BTreeMap::new();
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill once the child is well into its load (or after a timeout).
        let start = Instant::now();
        let mut lines = Vec::new();
        let kill_after = 1500 + 700 * round as usize;
        while lines.len() < kill_after && start.elapsed() < Duration::from_secs(30) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(l);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        let before = appended.len();
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["A", id, r, t, s] => {
                    let (r, t, s): (u64, u64, u64) =
                        (r.parse().unwrap(), t.parse().unwrap(), s.parse().unwrap());
                    appended.insert(id.parse().unwrap(), seed(r, t, s));
                }
                ["K", id] => acked.push(id.parse().unwrap()),
                _ => {}
            }
        }
        assert!(
            appended.len() - before >= 100,
            "child acknowledged too little before the kill"
        );

        let wal = Wal::open(dir.path(), opts()).unwrap();
        for (id, s) in &appended {
            if acked.contains(id) {
                continue;
            }
            let rec = wal.get(*id).unwrap();
            // The child acks every record with seq % 4 == 1; if it was killed
            // after that ack became durable but before it printed "K", the
            // record is legitimately gone.
            let ack_in_flight = (s & 0xffff_ffff) % 4 == 1;
            let Some(rec) = rec else {
                assert!(ack_in_flight, "acknowledged id {id} lost in round {round}");
                continue;
            };
            assert_eq!(
                rec.payload,
                payload(*s, len_for(*s)),
                "payload of {id} damaged"
            );
        }
        for id in &acked {
            assert_eq!(
                wal.get(*id).unwrap(),
                None,
                "acked id {id} handed out again"
            );
        }
        let r = wal.recovery_report();
        println!(
            "round {round}: {} acknowledged appends so far, {} acks; recovery: {} recovered, {} truncated bytes",
            appended.len(),
            acked.len(),
            r.records_recovered,
            r.bytes_truncated
        );
        assert_eq!(r.corrupt_records, 0);
        assert_eq!(r.bytes_unreadable, 0);
        wal.close().unwrap();
    }
}
