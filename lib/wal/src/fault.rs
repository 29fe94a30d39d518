//! A fault-injecting [`Fs`] for tests: [`FaultyFs`] wraps [`RealFs`] and,
//! when armed, tears writes (writes only a prefix of the buffer, then fails)
//! and fails `fdatasync` calls.
//!
//! Faults are armed through a shared [`FaultPlan`] and aimed at a
//! [`FaultTarget`] (segment files, the state log, or any file). Each armed
//! fault fires once, on the next matching call. After a torn write the plan
//! is "crashed": every later write and sync through this `Fs` fails too,
//! modelling a process that died mid-write, until [`FaultPlan::reset`].
//!
//! It is part of the public API so integration tests and the gateway's own
//! tests can use it; it has no cost unless constructed.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::fs::{FileOps, Fs, RealFs};

/// Which files a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    /// Any file or directory.
    Any,
    /// Segment files (`*.seg`).
    Segments,
    /// The state log (`state.log`).
    StateLog,
}

impl FaultTarget {
    fn matches(self, kind: FileKind) -> bool {
        match self {
            FaultTarget::Any => true,
            FaultTarget::Segments => kind == FileKind::Segment,
            FaultTarget::StateLog => kind == FileKind::State,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Segment,
    State,
    Other,
}

fn kind_of(path: &Path) -> FileKind {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(n) if n.ends_with(".seg") => FileKind::Segment,
        Some(n) if n.starts_with("state.log") => FileKind::State,
        _ => FileKind::Other,
    }
}

#[derive(Debug, Default)]
struct PlanState {
    torn_write: Option<(FaultTarget, usize)>,
    failing_syncs: Option<(FaultTarget, u32)>,
    crashed: bool,
    sync_noop: bool,
    syncs: u64,
    writes: u64,
}

/// Shared, thread-safe switchboard for the faults a [`FaultyFs`] injects.
#[derive(Debug, Default)]
pub struct FaultPlan {
    state: Mutex<PlanState>,
}

impl FaultPlan {
    fn with<R>(&self, f: impl FnOnce(&mut PlanState) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// The next write to a `target` file writes only its first `keep` bytes
    /// (fewer if the buffer is shorter than `keep + 1`) and then fails; the
    /// plan is then crashed.
    pub fn tear_next_write(&self, target: FaultTarget, keep: usize) {
        self.with(|s| s.torn_write = Some((target, keep)));
    }

    /// The next `count` syncs of `target` files fail with an I/O error
    /// (nothing else about them changes: the data stays in the page cache).
    pub fn fail_next_syncs(&self, target: FaultTarget, count: u32) {
        self.with(|s| s.failing_syncs = Some((target, count)));
    }

    /// When `on`, syncs succeed without calling the OS (speeds up tests that
    /// do not examine durability).
    pub fn set_sync_noop(&self, on: bool) {
        self.with(|s| s.sync_noop = on);
    }

    /// Disarms every fault and clears the crashed flag.
    pub fn reset(&self) {
        self.with(|s| {
            s.torn_write = None;
            s.failing_syncs = None;
            s.crashed = false;
        });
    }

    /// True once a torn write has fired (until [`FaultPlan::reset`]).
    pub fn crashed(&self) -> bool {
        self.with(|s| s.crashed)
    }

    /// Number of successful data/dir syncs so far.
    pub fn syncs(&self) -> u64 {
        self.with(|s| s.syncs)
    }

    /// Number of write calls so far.
    pub fn writes(&self) -> u64 {
        self.with(|s| s.writes)
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

/// An [`Fs`] over the real filesystem that injects the faults armed in its
/// [`FaultPlan`].
#[derive(Debug, Clone, Default)]
pub struct FaultyFs {
    plan: Arc<FaultPlan>,
}

impl FaultyFs {
    /// A new faulty filesystem with nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The plan that controls this filesystem's faults.
    pub fn plan(&self) -> Arc<FaultPlan> {
        Arc::clone(&self.plan)
    }

    fn sync(&self, kind: FileKind, real: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let noop = self.plan.with(|s| {
            if s.crashed {
                return Err(injected("sync after crash"));
            }
            if let Some((target, left)) = s.failing_syncs {
                if target.matches(kind) && left > 0 {
                    s.failing_syncs = (left > 1).then_some((target, left - 1));
                    return Err(injected("fdatasync failure"));
                }
            }
            Ok(s.sync_noop)
        })?;
        if !noop {
            real()?;
        }
        self.plan.with(|s| s.syncs += 1);
        Ok(())
    }
}

struct FaultyFile {
    inner: Arc<dyn FileOps>,
    kind: FileKind,
    fs: FaultyFs,
}

impl FileOps for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let tear = self.fs.plan.with(|s| {
            s.writes += 1;
            if s.crashed {
                return Err(injected("write after crash"));
            }
            match s.torn_write {
                Some((target, keep)) if target.matches(self.kind) => {
                    s.torn_write = None;
                    s.crashed = true;
                    Ok(Some(keep.min(buf.len().saturating_sub(1))))
                }
                _ => Ok(None),
            }
        })?;
        match tear {
            Some(keep) => {
                self.inner
                    .write_all_at(buf.get(..keep).unwrap_or(&[]), offset)?;
                Err(injected("torn write"))
            }
            None => self.inner.write_all_at(buf, offset),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.sync(self.kind, || self.inner.sync_data())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.fs.plan.crashed() {
            return Err(injected("truncate after crash"));
        }
        self.inner.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileOps>> {
        let inner = RealFs.open(path, create)?;
        Ok(Arc::new(FaultyFile {
            inner,
            kind: kind_of(path),
            fs: self.clone(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.plan.crashed() {
            return Err(injected("rename after crash"));
        }
        RealFs.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync(FileKind::Other, || RealFs.sync_dir(dir))
    }
}
