//! On-disk framing shared by segment files and the state log: the 32-byte
//! segment header, the 32-byte frame header, encoding, and a scanner that
//! walks a file frame by frame and classifies where (and why) it stops.
//!
//! Invariants: a frame is trusted only if its header CRC matches; its body is
//! trusted only if the frame CRC (header fields + body) matches. A frame whose
//! header is intact but whose body is not is *skipped* (its length is trusted
//! because the header CRC vouches for it); a frame whose header is bad ends
//! the scan, since nothing after it can be located safely. The scanner never
//! reads past the file length it was given and never panics on any input.
//! The byte layout is specified in the crate-level docs.

use std::io;

use crate::fs::FileOps;

/// Length of a segment header and of every frame header.
pub(crate) const HEADER_LEN: usize = 32;
/// Magic at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLUICEWL";
/// Segment format version.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Magic of a data record frame.
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"SGR1";
/// Magic of a state-log entry frame.
pub(crate) const STATE_MAGIC: [u8; 4] = *b"SGS1";

/// A decoded, header-CRC-verified frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Body length in bytes.
    pub len: u32,
    /// First u64 field: record id (records) or entry kind (state log).
    pub a: u64,
    /// Second u64 field: append time in unix millis.
    pub b: u64,
    /// CRC32C of header bytes 0..24.
    pub header_crc: u32,
    /// CRC32C of header bytes 0..24 followed by the body.
    pub frame_crc: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Appends one frame (header + concatenated `body` parts) to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, magic: [u8; 4], a: u64, b: u64, body: &[&[u8]]) {
    let len: usize = body.iter().map(|p| p.len()).sum();
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&magic);
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&a.to_le_bytes());
    h[16..24].copy_from_slice(&b.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[0..24]);
    let frame_crc = body
        .iter()
        .fold(header_crc, |crc, p| crc32c::crc32c_append(crc, p));
    h[24..28].copy_from_slice(&header_crc.to_le_bytes());
    h[28..32].copy_from_slice(&frame_crc.to_le_bytes());
    out.extend_from_slice(&h);
    for p in body {
        out.extend_from_slice(p);
    }
}

/// Decodes a frame header, checking magic and header CRC.
pub(crate) fn decode_header(h: &[u8], magic: [u8; 4]) -> Option<FrameHeader> {
    if h.len() < HEADER_LEN || h.get(0..4) != Some(&magic[..]) {
        return None;
    }
    let header_crc = le_u32(h, 24);
    if crc32c::crc32c(h.get(0..24)?) != header_crc {
        return None;
    }
    Some(FrameHeader {
        len: le_u32(h, 4),
        a: le_u64(h, 8),
        b: le_u64(h, 16),
        header_crc,
        frame_crc: le_u32(h, 28),
    })
}

/// True if `body` matches the frame CRC in `h`.
pub(crate) fn body_ok(h: &FrameHeader, body: &[u8]) -> bool {
    crc32c::crc32c_append(h.header_crc, body) == h.frame_crc
}

/// Encodes the 32-byte header of the segment whose first id is `base`.
pub(crate) fn segment_header(base: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header; returns its base id if magic, version and CRC
/// are all valid.
pub(crate) fn decode_segment_header(h: &[u8]) -> Option<u64> {
    if h.len() < HEADER_LEN || h.get(0..8) != Some(&SEGMENT_MAGIC[..]) {
        return None;
    }
    if le_u32(h, 8) != SEGMENT_VERSION || crc32c::crc32c(h.get(0..28)?) != le_u32(h, 28) {
        return None;
    }
    Some(le_u64(h, 16))
}

/// Reads a file through a large window so scanning costs few syscalls.
pub(crate) struct WindowReader<'a> {
    file: &'a dyn FileOps,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 1 << 20;

impl<'a> WindowReader<'a> {
    /// A reader over the first `len` bytes of `file`.
    pub(crate) fn new(file: &'a dyn FileOps, len: u64) -> Self {
        WindowReader {
            file,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Returns bytes `[off, off + n)`; the caller guarantees `off + n <= len`.
    pub(crate) fn get(&mut self, off: u64, n: usize) -> io::Result<&[u8]> {
        let end = off + n as u64;
        let have = self.start + self.buf.len() as u64;
        if off < self.start || end > have {
            let want = (n.max(WINDOW) as u64).min(self.len - off) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let at = (off - self.start) as usize;
        self.buf
            .get(at..at + n)
            .ok_or_else(|| io::Error::other("window read out of range"))
    }
}

/// One thing the scanner found.
pub(crate) enum ScanEvent<'b> {
    /// A fully valid frame.
    Frame {
        offset: u64,
        header: FrameHeader,
        body: &'b [u8],
    },
    /// A frame with an intact header but a body that fails its CRC; skipped.
    CorruptBody { header: FrameHeader },
}

/// Why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Reached end of file exactly at a frame boundary.
    Clean,
    /// The file ends inside a frame, or the last frame's body fails its CRC.
    Torn,
    /// A frame header failed its magic/CRC check, or the visitor rejected a
    /// frame (e.g. ids out of order).
    BadFrame,
}

/// Where and why a scan stopped: bytes from `valid_end` on were not accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanEnd {
    pub valid_end: u64,
    pub stop: ScanStop,
}

/// Walks frames with `magic` from `start` to `len`, calling `visit` for each.
/// `visit` returns `false` to reject a frame, which stops the scan there.
pub(crate) fn scan(
    file: &dyn FileOps,
    start: u64,
    len: u64,
    magic: [u8; 4],
    mut visit: impl FnMut(ScanEvent<'_>) -> bool,
) -> io::Result<ScanEnd> {
    let mut r = WindowReader::new(file, len);
    let mut pos = start;
    let end = |valid_end, stop| Ok(ScanEnd { valid_end, stop });
    loop {
        if pos >= len {
            return end(pos, ScanStop::Clean);
        }
        if len - pos < HEADER_LEN as u64 {
            return end(pos, ScanStop::Torn);
        }
        let Some(header) = decode_header(r.get(pos, HEADER_LEN)?, magic) else {
            return end(pos, ScanStop::BadFrame);
        };
        let body_at = pos + HEADER_LEN as u64;
        let next = body_at + u64::from(header.len);
        if next > len {
            return end(pos, ScanStop::Torn);
        }
        let body = r.get(body_at, header.len as usize)?;
        if body_ok(&header, body) {
            let event = ScanEvent::Frame {
                offset: pos,
                header,
                body,
            };
            if !visit(event) {
                return end(pos, ScanStop::BadFrame);
            }
        } else if next == len {
            return end(pos, ScanStop::Torn);
        } else if !visit(ScanEvent::CorruptBody { header }) {
            return end(pos, ScanStop::BadFrame);
        }
        pos = next;
    }
}
