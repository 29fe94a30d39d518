//! The delivery journal: one small file per queue (`delivery.journal`) where the delivery
//! loop notes, for each attempt, that it started and how it ended. It is written without
//! fsync: it survives a killed process (the page cache does) and is only a hint after a
//! power loss. It lets a restarted gateway
//!
//! - continue `X-Sluicegate-Attempt` numbering where the previous process stopped, and
//! - count **duplicates after recovery**: a message whose last note before the restart
//!   was "started" or "delivered" may already have reached the upstream, so delivering it
//!   again is counted as a (possible) duplicate.
//!
//! Entries are 16 bytes: `id u64, attempt u32, mark u8, 0 u8, check u16` (little-endian;
//! `check` is the low 16 bits of FNV-1a over the first 14 bytes). Reading stops at the
//! first bad entry and the file is cut there. The file is rewritten with one entry per
//! live message once it is mostly dead weight.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const ENTRY: usize = 16;
/// Compaction starts once the file is this large and mostly obsolete.
const COMPACT_BYTES: u64 = 1 << 20;

/// What happened to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The request is about to be sent.
    Started = 1,
    /// The attempt failed (will be retried or dead-lettered).
    Failed = 2,
    /// The upstream answered 2xx (the ack may not be durable yet).
    Delivered = 3,
    /// Acked or dead-lettered: nothing more will happen to it.
    Resolved = 4,
}

impl Mark {
    fn from_u8(b: u8) -> Option<Mark> {
        Some(match b {
            1 => Mark::Started,
            2 => Mark::Failed,
            3 => Mark::Delivered,
            4 => Mark::Resolved,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    attempts: u32,
    last: Mark,
}

/// A queue's delivery journal (owned by its delivery loop).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    live: HashMap<u64, Entry>,
    recovered: HashSet<u64>,
    bytes: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`. Never fails: a journal that cannot be
    /// opened is disabled with a warning (delivery works without it).
    pub fn open(path: &Path) -> Journal {
        let mut j = Journal {
            path: path.to_path_buf(),
            file: None,
            buf: Vec::new(),
            live: HashMap::new(),
            recovered: HashSet::new(),
            bytes: 0,
        };
        if let Err(e) = j.load() {
            tracing::warn!(path = %path.display(), error = %e, "Delivery journal unavailable; attempt numbers restart at 1 and duplicates are not counted.");
            j.file = None;
        }
        j.recovered = j
            .live
            .iter()
            .filter(|(_, e)| matches!(e.last, Mark::Started | Mark::Delivered))
            .map(|(id, _)| *id)
            .collect();
        j
    }

    fn load(&mut self) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut good = 0;
        for chunk in data.chunks_exact(ENTRY) {
            let Some((id, attempt, mark)) = parse(chunk) else {
                break;
            };
            good += ENTRY;
            if mark == Mark::Resolved {
                self.live.remove(&id);
            } else {
                let e = self.live.entry(id).or_insert(Entry {
                    attempts: 0,
                    last: mark,
                });
                e.attempts = e.attempts.max(attempt);
                e.last = mark;
            }
        }
        if good != data.len() {
            file.set_len(good as u64)?;
        }
        self.bytes = good as u64;
        self.file = Some(file);
        Ok(())
    }

    /// Attempts already made for `id` (0 if none are known).
    pub fn attempts(&self, id: u64) -> u32 {
        self.live.get(&id).map_or(0, |e| e.attempts)
    }

    /// Whether `id` may have reached the upstream before this process started.
    pub fn possibly_delivered_before(&self, id: u64) -> bool {
        self.recovered.contains(&id)
    }

    /// Notes `mark` for attempt `attempt` of `id` (buffered until [`flush`](Self::flush)).
    pub fn mark(&mut self, id: u64, attempt: u32, mark: Mark) {
        if mark == Mark::Resolved {
            self.live.remove(&id);
            self.recovered.remove(&id);
        } else {
            self.live.insert(
                id,
                Entry {
                    attempts: attempt,
                    last: mark,
                },
            );
        }
        if self.file.is_some() {
            self.buf.extend_from_slice(&entry(id, attempt, mark));
        }
    }

    /// Writes what was noted since the last flush (one `write`).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            self.buf.clear();
            return;
        };
        match file.write_all(&self.buf) {
            Ok(()) => self.bytes += self.buf.len() as u64,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Delivery journal write failed; journal disabled.");
                self.file = None;
            }
        }
        self.buf.clear();
    }

    /// Whether the file is large and mostly obsolete.
    pub fn wants_compaction(&self) -> bool {
        let live_bytes = (self.live.len() * ENTRY) as u64;
        self.file.is_some() && self.bytes >= COMPACT_BYTES && self.bytes >= 8 * live_bytes.max(1)
    }

    /// Rewrites the file when it [wants compaction](Self::wants_compaction). Entries of
    /// ids below `oldest_pending` (all resolved) are dropped too.
    pub fn maybe_compact(&mut self, oldest_pending: Option<u64>) {
        if !self.wants_compaction() {
            return;
        }
        self.flush();
        let floor = oldest_pending.unwrap_or(u64::MAX);
        self.live.retain(|id, _| *id >= floor);
        let tmp = self.path.with_extension("journal.tmp");
        let result = (|| {
            let mut out = Vec::with_capacity(self.live.len() * ENTRY);
            for (id, e) in &self.live {
                out.extend_from_slice(&entry(*id, e.attempts, e.last));
            }
            std::fs::write(&tmp, &out)?;
            std::fs::rename(&tmp, &self.path)?;
            let file = OpenOptions::new().append(true).open(&self.path)?;
            Ok::<_, std::io::Error>((file, out.len() as u64))
        })();
        match result {
            Ok((file, bytes)) => {
                self.file = Some(file);
                self.bytes = bytes;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Delivery journal compaction failed; journal disabled.");
                self.file = None;
            }
        }
    }
}

fn fnv16(bytes: &[u8]) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h ^ (h >> 16)) as u16
}

fn entry(id: u64, attempt: u32, mark: Mark) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[0..8].copy_from_slice(&id.to_le_bytes());
    e[8..12].copy_from_slice(&attempt.to_le_bytes());
    e[12] = mark as u8;
    let check = fnv16(&e[..14]);
    e[14..16].copy_from_slice(&check.to_le_bytes());
    e
}

fn parse(chunk: &[u8]) -> Option<(u64, u32, Mark)> {
    let b: &[u8; ENTRY] = chunk.try_into().ok()?;
    if u16::from_le_bytes([b[14], b[15]]) != fnv16(&b[..14]) || b[13] != 0 {
        return None;
    }
    let id = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let attempt = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    Some((id, attempt, Mark::from_u8(b[12])?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn attempt_numbers_and_possible_duplicates_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.journal");
        let mut j = Journal::open(&path);
        j.mark(1, 1, Mark::Started);
        j.mark(1, 1, Mark::Failed);
        j.mark(2, 1, Mark::Started);
        j.mark(3, 1, Mark::Started);
        j.mark(3, 1, Mark::Delivered);
        j.mark(4, 1, Mark::Started);
        j.mark(4, 1, Mark::Delivered);
        j.mark(4, 1, Mark::Resolved);
        j.flush();
        drop(j);

        let j = Journal::open(&path);
        assert_eq!(j.attempts(1), 1);
        assert!(!j.possibly_delivered_before(1), "its last attempt failed");
        assert!(j.possibly_delivered_before(2), "started, outcome unknown");
        assert!(j.possibly_delivered_before(3), "delivered, ack not durable");
        assert!(
            !j.possibly_delivered_before(4) && j.attempts(4) == 0,
            "resolved"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.journal");
        let mut j = Journal::open(&path);
        j.mark(7, 2, Mark::Failed);
        j.flush();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0xAB; 9]).unwrap();
        drop(f);
        let mut j = Journal::open(&path);
        assert_eq!(j.attempts(7), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ENTRY as u64);
        j.mark(7, 3, Mark::Failed);
        j.flush();
        drop(j);
        assert_eq!(Journal::open(&path).attempts(7), 3);
    }

    #[test]
    fn compaction_keeps_only_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.journal");
        let mut j = Journal::open(&path);
        for id in 0..70_000u64 {
            j.mark(id, 1, Mark::Started);
            j.mark(id, 1, Mark::Resolved);
        }
        j.mark(99_999, 4, Mark::Failed);
        j.flush();
        j.maybe_compact(Some(0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ENTRY as u64);
        j.mark(99_999, 5, Mark::Started);
        j.flush();
        drop(j);
        let j = Journal::open(&path);
        assert_eq!(j.attempts(99_999), 5);
        assert!(j.possibly_delivered_before(99_999));
    }
}
