//! Opening a write-ahead log from damaged or hostile files: the segment and state-log
//! frame decoding and the recovery that repairs them (`lib/wal`), on an in-memory
//! filesystem.
//!
//! Input: a mode byte, a state-log length (2 bytes, little-endian), the state log, then
//! the segment bytes. Mode bits: 1 gives the segment a valid header, 2 and 4 give the
//! segment's and the state log's frames valid lengths and CRCs (so the fuzzer reaches what
//! lies behind the checksums), 8 splits the segment bytes into two segments.
//!
//! Invariants: no panic; pending ids increase; no payload is longer than the input; a log
//! opened, appended to and closed opens again with the same pending records plus the new
//! one (recovery repairs for good, and loses nothing it reported).
#![no_main]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use wal::{FileOps, Fs, Wal, WalOptions};

#[derive(Default)]
struct MemFile(Mutex<Vec<u8>>);

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileOps for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = lock(&self.0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = lock(&self.0);
        let start = offset as usize;
        if data.len() < start + buf.len() {
            data.resize(start + buf.len(), 0);
        }
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.0).resize(len as usize, 0);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.0).len() as u64)
    }
}

#[derive(Default)]
struct MemFs(Mutex<HashMap<PathBuf, Arc<MemFile>>>);

impl MemFs {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<MemFile>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Fs for MemFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(self
            .files()
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileOps>> {
        let mut files = self.files();
        if let Some(f) = files.get(path) {
            return Ok(f.clone());
        }
        if !create {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let f = Arc::new(MemFile::default());
        files.insert(path.to_path_buf(), f.clone());
        Ok(f)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.files()
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = self.files();
        let f = files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        files.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// Gives every frame from `pos` on a length that fits the bytes left and correct CRCs
/// (the layout of `lib/wal/src/frame.rs`).
fn fix_frames(bytes: &mut [u8], mut pos: usize) {
    while bytes.len() - pos >= 32 {
        let room = (bytes.len() - pos - 32) as u32;
        let mut len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        if len > room {
            len %= room + 1;
        }
        bytes[pos + 4..pos + 8].copy_from_slice(&len.to_le_bytes());
        let header_crc = crc32c::crc32c(&bytes[pos..pos + 24]);
        let body = &bytes[pos + 32..pos + 32 + len as usize];
        let frame_crc = crc32c::crc32c_append(header_crc, body);
        bytes[pos + 24..pos + 28].copy_from_slice(&header_crc.to_le_bytes());
        bytes[pos + 28..pos + 32].copy_from_slice(&frame_crc.to_le_bytes());
        pos += 32 + len as usize;
    }
}

fn segment(base: u64, mut bytes: Vec<u8>, mode: u8) -> Vec<u8> {
    if mode & 1 != 0 {
        let mut h = [0u8; 32];
        h[0..8].copy_from_slice(b"SLUICEWL");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[16..24].copy_from_slice(&base.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes.splice(0..0, h);
    }
    if mode & 2 != 0 && bytes.len() >= 32 {
        fix_frames(&mut bytes, 32);
    }
    bytes
}

fn pending(log: &Wal) -> Option<Vec<(u64, Vec<u8>)>> {
    let records = log.read_pending(0, usize::MAX).ok()?;
    Some(records.into_iter().map(|r| (r.id, r.payload)).collect())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mode = data[0];
    let state_len = usize::from(u16::from_le_bytes([data[1], data[2]])).min(data.len() - 3);
    let mut state = data[3..3 + state_len].to_vec();
    let seg_bytes = &data[3 + state_len..];
    if mode & 4 != 0 {
        fix_frames(&mut state, 0);
    }
    let dir = Path::new("/wal");
    let fs = Arc::new(MemFs::default());
    let put = |name: String, bytes: Vec<u8>| {
        fs.files()
            .insert(dir.join(name), Arc::new(MemFile(Mutex::new(bytes))));
    };
    put("state.log".into(), state);
    if mode & 8 != 0 && seg_bytes.len() > 1 {
        let split = usize::from(seg_bytes[0]).min(seg_bytes.len() - 1) + 1;
        let second_base = 1 + u64::from(mode >> 4) * 3;
        put(
            format!("{:020}.seg", 1),
            segment(1, seg_bytes[1..split].to_vec(), mode),
        );
        put(
            format!("{second_base:020}.seg"),
            segment(second_base, seg_bytes[split..].to_vec(), mode),
        );
    } else {
        put(
            format!("{:020}.seg", 1),
            segment(1, seg_bytes.to_vec(), mode),
        );
    }

    let opts = WalOptions::default();
    let Ok(log) = Wal::open_with_fs(dir, opts.clone(), fs.clone()) else {
        return;
    };
    let Some(before) = pending(&log) else {
        return;
    };
    for pair in before.windows(2) {
        assert!(pair[0].0 < pair[1].0, "pending ids out of order");
    }
    for (id, payload) in &before {
        assert!(*id >= 1);
        assert!(
            payload.len() <= data.len(),
            "a payload longer than the input"
        );
    }
    let stats = log.stats();
    assert_eq!(stats.pending_count, before.len() as u64);
    let Ok(new_id) = log.append(b"after recovery".to_vec()) else {
        return;
    };
    assert!(
        before.iter().all(|(id, _)| *id < new_id),
        "a new id not above the old ones"
    );
    let _ = log.close();

    let Ok(log) = Wal::open_with_fs(dir, opts, fs.clone()) else {
        panic!("a log that opened once does not open again");
    };
    let mut expected = before;
    expected.push((new_id, b"after recovery".to_vec()));
    assert_eq!(
        pending(&log),
        Some(expected),
        "the pending records changed across a reopen"
    );
});
