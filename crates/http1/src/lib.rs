//! The HTTP/1.1 wire format shared by the gateway's two sides, the server and the upstream
//! client: body framing (RFC 9112 §6), the chunked transfer coding (§7.1) and the keep-alive
//! rule (§9.3). It knows nothing of the gateway: no server, proxy or configuration logic.
//!
//! The header block of an upstream response is kept raw ([`raw`]).
//!
//! Invariant: bytes are never re-interpreted. A malformed chunk header is an error, never
//! a guess, so a body boundary is the same for the gateway and for its peer.

pub mod hop;
pub mod raw;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::Version;
use tokio::io::{AsyncRead, ReadBuf};

/// Largest trailer section accepted after the last chunk.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Implements `AsyncWrite` for a wrapper `$ty<T>` by passing every call to its `$field`
/// (the wrappers that only add behaviour to reads: [`Rewind`], the server's connection I/O).
#[macro_export]
macro_rules! pass_async_write {
    ($ty:ident, $field:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_shutdown(cx)
            }
        }
    };
}

/// Read buffer growth step.
pub const READ_CHUNK: usize = 16 * 1024;

/// Below this much free space, a read buffer grows before the next read.
const MIN_READ_SPACE: usize = 2 * 1024;

/// Makes room in `buf` for the next read. The space left after earlier messages (whose
/// bytes may still be shared with header values) is used up first: reserving a whole
/// [`READ_CHUNK`] before every read would allocate a new buffer for nearly every message.
pub fn make_read_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_CHUNK);
    }
}

/// Appends `data` as one chunk of the chunked transfer coding.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Whether a response with `status` never has a body (RFC 9110 §6.4.1: 1xx, 204, 304).
pub fn status_without_body(status: http::StatusCode) -> bool {
    status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
}

/// Whether a connection stays open after this message: HTTP/1.1 unless `Connection:
/// close`; HTTP/1.0 only with `Connection: keep-alive`.
pub fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut close = false;
    let mut keep = false;
    for t in tokens {
        close |= t.eq_ignore_ascii_case("close");
        keep |= t.eq_ignore_ascii_case("keep-alive");
    }
    if version == Version::HTTP_10 {
        keep && !close
    } else {
        !close
    }
}

/// A `Content-Length` value: digits only (no sign, no spaces inside), at most 18 of them.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Expecting a `size[;ext]\r\n` line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailers,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(ChunkState),
    /// Until the upstream closes the connection.
    Close,
    /// Finished.
    Done,
}

impl Framing {
    /// Whether the connection can carry another message after this body.
    pub fn reusable(&self) -> bool {
        !matches!(self, Framing::Close)
    }
}

/// What the buffer yielded.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A piece of the body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes the next piece of a body framed by `framing` from the front of `buf`. Chunk
/// extensions and trailer fields are read and dropped.
pub fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match *framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Decoded::End);
            }
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = n.min(buf.len() as u64) as usize;
                *framing = Framing::Length(n - take as u64);
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                return Ok(Decoded::Data(buf.split().freeze()));
            }
            Framing::Chunked(ChunkState::Size) => {
                let Some(end) = line_end(buf)? else {
                    if buf.len() > 4096 {
                        return Err("chunk size line too long");
                    }
                    return Ok(Decoded::NeedMore);
                };
                let size = chunk_size(&buf[..end])?;
                buf.advance(end + 2);
                *framing = if size == 0 {
                    Framing::Chunked(ChunkState::Trailers)
                } else {
                    Framing::Chunked(ChunkState::Data(size))
                };
            }
            Framing::Chunked(ChunkState::Data(n)) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = n.min(buf.len() as u64) as usize;
                let left = n - take as u64;
                *framing = Framing::Chunked(if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                });
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            Framing::Chunked(ChunkState::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("missing CRLF after chunk data");
                }
                buf.advance(2);
                *framing = Framing::Chunked(ChunkState::Size);
            }
            Framing::Chunked(ChunkState::Trailers) => {
                let Some(end) = line_end(buf)? else {
                    if buf.len() > MAX_TRAILER_BYTES {
                        return Err("trailers too large");
                    }
                    return Ok(Decoded::NeedMore);
                };
                trailer_line(&buf[..end])?;
                buf.advance(end + 2);
                if end == 0 {
                    *framing = Framing::Done;
                    return Ok(Decoded::End);
                }
            }
        }
    }
}

/// Checks the part of a chunked body already in `buf` (from `state` on) without consuming
/// it, so that a request whose body is already known to be malformed can be refused before
/// any of it is forwarded. Bytes after the body's end are not looked at; a body that is
/// not complete yet is fine as far as it goes.
pub fn check_buffered_chunks(state: ChunkState, buf: &[u8]) -> Result<(), &'static str> {
    // The decoder itself, on a copy (only chunked requests pay for it): the check and the
    // reading of the body can never disagree on what is malformed.
    let mut framing = Framing::Chunked(state);
    let mut copy = BytesMut::from(buf);
    loop {
        match decode(&mut framing, &mut copy)? {
            Decoded::Data(_) => {}
            Decoded::End | Decoded::NeedMore => return Ok(()),
        }
    }
}

/// The size in a chunk-size line (`line` without its CRLF): RFC 9112 §7.1's
/// `1*HEXDIG [ chunk-ext ]`. Nothing may come before the digits, and the extensions
/// (read and dropped) may hold no control character: a bare CR there is a line end to a
/// lenient reader, which then frames the body differently (§2.2).
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // 15 hex digits is the most that fits a u64 with room to spare.
    if digits == 0 || digits > 15 {
        return Err("invalid chunk size");
    }
    let ext = &line[digits..];
    let ext_start = ext.iter().position(|b| *b != b' ' && *b != b'\t');
    if ext_start.is_some_and(|i| ext[i] != b';') {
        return Err("invalid chunk size");
    }
    if ext.iter().any(|b| is_ctl(*b)) {
        return Err("a control character in a chunk extension");
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "invalid chunk size")
}

/// A trailer line (read and dropped) may hold no control character, for the reason
/// [`chunk_size`] gives.
fn trailer_line(line: &[u8]) -> Result<(), &'static str> {
    if line.iter().any(|b| is_ctl(*b)) {
        return Err("a control character in a trailer field");
    }
    Ok(())
}

/// A control character other than HTAB (RFC 5234's CTL, DEL included).
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Where the line at the front of `buf` ends (the index of its `\r\n`), `None` while no
/// line feed has arrived. A line feed without a carriage return before it is an error: a
/// peer that ends chunk lines with bare LFs frames the body differently from one that does
/// not, which is how bodies get smuggled (RFC 9112 §2.2 lets a recipient refuse them).
fn line_end(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    match buf.iter().position(|b| *b == b'\n') {
        None => Ok(None),
        Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err("a chunk line ends with a bare LF"),
    }
}

/// A stream whose first bytes were already read into a buffer: reads return those
/// bytes first (an upgraded connection's leftovers, an HTTP/2 preface read while sniffing).
pub struct Rewind<T> {
    leftover: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    /// Joins leftover bytes and the stream.
    pub fn new(io: T, leftover: Bytes) -> Self {
        Rewind { leftover, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

pass_async_write!(Rewind, io);

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        let mut h = HeaderMap::new();
        assert!(keep_alive(Version::HTTP_11, &h));
        assert!(!keep_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(keep_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert!(!keep_alive(Version::HTTP_11, &h));
    }

    fn drain(framing: &mut Framing, buf: &mut BytesMut) -> (Vec<u8>, Decoded) {
        let mut out = Vec::new();
        loop {
            match decode(framing, buf).unwrap() {
                Decoded::Data(d) => out.extend_from_slice(&d),
                other => return (out, other),
            }
        }
    }

    #[test]
    fn decodes_chunked_bodies_split_across_reads() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 1..wire.len() {
            let mut framing = Framing::Chunked(ChunkState::Size);
            let mut buf = BytesMut::from(&wire[..split]);
            let (mut body, mut state) = drain(&mut framing, &mut buf);
            buf.extend_from_slice(&wire[split..]);
            if state == Decoded::NeedMore {
                let (more, s2) = drain(&mut framing, &mut buf);
                body.extend_from_slice(&more);
                state = s2;
            }
            assert_eq!(state, Decoded::End, "split at {split}");
            assert_eq!(body, b"hello world", "split at {split}");
            assert_eq!(&buf[..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn rejects_malformed_chunks() {
        for wire in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"\r\n"] {
            let mut framing = Framing::Chunked(ChunkState::Size);
            let mut buf = BytesMut::from(wire);
            let mut failed = false;
            for _ in 0..4 {
                match decode(&mut framing, &mut buf) {
                    Err(_) => {
                        failed = true;
                        break;
                    }
                    Ok(Decoded::NeedMore) | Ok(Decoded::End) => break,
                    Ok(Decoded::Data(_)) => {}
                }
            }
            assert!(failed, "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn length_framing_stops_at_the_length_and_leaves_the_rest() {
        let mut framing = Framing::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let (body, state) = drain(&mut framing, &mut buf);
        assert_eq!(body, b"abc");
        assert_eq!(state, Decoded::End);
        assert_eq!(&buf[..], b"def");
    }

    /// The first error decoding `wire` as a chunked body, if any.
    fn decode_error(wire: &[u8]) -> Option<&'static str> {
        let mut framing = Framing::Chunked(ChunkState::Size);
        let mut buf = BytesMut::from(wire);
        loop {
            match decode(&mut framing, &mut buf) {
                Err(e) => return Some(e),
                Ok(Decoded::Data(_)) => {}
                Ok(_) => return None,
            }
        }
    }

    #[test]
    fn refuses_chunk_lines_a_lenient_reader_would_split_differently() {
        for wire in [
            &b" 3\r\nabc\r\n0\r\n\r\n"[..],
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b"3\rX\r\nabc\r\n0\r\n\r\n",
            b"3;a=\x00\r\nabc\r\n0\r\n\r\n",
            b"3x\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX-T: a\rb\r\n\r\n",
        ] {
            assert!(
                decode_error(wire).is_some(),
                "{:?}",
                wire.escape_ascii().to_string()
            );
            assert!(
                check_buffered_chunks(ChunkState::Size, wire).is_err(),
                "{:?}",
                wire.escape_ascii().to_string()
            );
        }
        // Whitespace after the size, extensions with or without values and spaces around
        // them, and trailer values with tabs are all valid.
        for wire in [
            &b"3  \r\nabc\r\n0\r\n\r\n"[..],
            b"3 ; a = \"b c\";d\r\nabc\r\n0;e\r\nX-T: a\tb\r\n\r\n",
        ] {
            assert_eq!(
                decode_error(wire),
                None,
                "{:?}",
                wire.escape_ascii().to_string()
            );
            assert_eq!(check_buffered_chunks(ChunkState::Size, wire), Ok(()));
        }
    }

    #[test]
    fn checks_a_buffered_chunked_body_as_far_as_it_has_arrived_and_no_further() {
        let body = b"5;x=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..=body.len() {
            assert_eq!(
                check_buffered_chunks(ChunkState::Size, &body[..cut]),
                Ok(()),
                "cut at {cut}"
            );
        }
        let mut then = body.to_vec();
        then.extend_from_slice(b"\n\nnot http at all\r");
        assert_eq!(check_buffered_chunks(ChunkState::Size, &then), Ok(()));
        // It starts where the decoder is: inside a chunk, the CRLF after its data is next.
        assert_eq!(
            check_buffered_chunks(ChunkState::Data(2), b"abXX"),
            Err("missing CRLF after chunk data")
        );
        assert_eq!(check_buffered_chunks(ChunkState::Data(2), b"ab\r"), Ok(()));
    }

    #[test]
    fn refuses_chunk_and_trailer_lines_ending_in_a_bare_lf() {
        for wire in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
            b"\n",
        ] {
            let mut framing = Framing::Chunked(ChunkState::Size);
            let mut buf = BytesMut::from(wire);
            let mut result = decode(&mut framing, &mut buf);
            while let Ok(Decoded::Data(_)) = result {
                result = decode(&mut framing, &mut buf);
            }
            assert_eq!(result, Err("a chunk line ends with a bare LF"), "{wire:?}");
        }
    }
}
