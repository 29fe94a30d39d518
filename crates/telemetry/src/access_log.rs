//! The access log: one JSON line per request.
//!
//! Lines are formatted by hand into a per-thread buffer (no JSON tree, no allocation per
//! field) and written in batches: a worker writes its buffer on every clock tick (at most
//! 20 ms later, see `sluicegate_core::clock`), when the buffer passes [`FLUSH_BYTES`], when
//! the destination changes after a reload, and when the worker stops. A thread without a
//! ticker writes each line at once. Writing a line per request had cost a system call and
//! a dozen allocations per request: about 6 µs, half as much again as the proxying itself.
//!
//! Invariant: lines from different workers never interleave. Every write holds whole lines
//! and goes to an `O_APPEND` descriptor; writes to something that is not a regular file
//! (a pipe, a terminal) are cut, at line ends, into pieces of at most `PIPE_BUF` bytes, the
//! size up to which POSIX keeps a pipe write in one piece.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A worker's buffer is written once it holds this much.
const FLUSH_BYTES: usize = 64 * 1024;

/// The largest write a pipe keeps in one piece (POSIX `PIPE_BUF` on Linux).
const PIPE_BUF: usize = 4096;

/// Where access-log lines go.
#[derive(Debug)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// A file descriptor opened for appending (a file, or a duplicate of stdout/stderr).
    File(File),
    /// A log file that does not exist yet: created on the first line, so validating a
    /// configuration (`sluicegate check`) never creates files.
    Deferred {
        /// Where the file goes.
        path: std::path::PathBuf,
        /// The file once opened (`None` if creating it failed; that is logged once).
        file: std::sync::OnceLock<Option<File>>,
    },
}

/// One access-log record.
pub struct AccessRecord<'a> {
    /// When the request head arrived.
    pub time: SystemTime,
    /// Request id.
    pub request_id: &'a str,
    /// Client address.
    pub client: std::net::SocketAddr,
    /// Method.
    pub method: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// Matched route.
    pub route: &'a str,
    /// Upstream target.
    pub upstream: Option<&'a str>,
    /// Status sent.
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Total duration.
    pub duration: Duration,
    /// Time to the upstream's response head.
    pub upstream_duration: Option<Duration>,
    /// Whether the response body was cut short.
    pub aborted: bool,
    /// For gRPC calls, the `grpc-status` the call ended with (written only when known).
    pub grpc_status: Option<u16>,
}

/// Lines formatted on this thread and not written yet, with their destination.
#[derive(Default)]
struct Pending {
    log: Option<Arc<AccessLog>>,
    buf: Vec<u8>,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

impl AccessLog {
    /// Opens the log for `target` (`stdout`, `stderr`, `file`, `off`).
    pub fn open(target: &str, path: Option<&str>) -> std::io::Result<AccessLog> {
        use std::os::fd::AsFd;
        Ok(match target {
            "off" => AccessLog::Off,
            "stdout" => {
                AccessLog::File(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
            }
            "stderr" => {
                AccessLog::File(File::from(std::io::stderr().as_fd().try_clone_to_owned()?))
            }
            _ => {
                let path = std::path::PathBuf::from(path.unwrap_or("access.log"));
                if path.exists() {
                    AccessLog::File(std::fs::OpenOptions::new().append(true).open(&path)?)
                } else {
                    let dir = path
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(std::path::Path::new("."));
                    if !dir.is_dir() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("directory `{}` does not exist", dir.display()),
                        ));
                    }
                    AccessLog::Deferred {
                        path,
                        file: std::sync::OnceLock::new(),
                    }
                }
            }
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        !matches!(self, AccessLog::Off)
    }

    fn file(&self) -> Option<&File> {
        match self {
            AccessLog::Off => None,
            AccessLog::File(f) => Some(f),
            AccessLog::Deferred { path, file } => file
                .get_or_init(|| {
                    let opened = std::fs::OpenOptions::new().create(true).append(true).open(path);
                    match opened {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "Cannot create the access log; access lines are dropped.");
                            None
                        }
                    }
                })
                .as_ref(),
        }
    }

    /// Queues one line for `rec` (see the module documentation for when it is written).
    pub fn write(self: &Arc<Self>, rec: &AccessRecord<'_>) {
        if !self.enabled() {
            return;
        }
        let ticking = sluicegate_core::clock::ticking();
        let _ = PENDING.try_with(|pending| {
            let Ok(mut pending) = pending.try_borrow_mut() else {
                return;
            };
            if pending.log.as_ref().is_some_and(|l| !Arc::ptr_eq(l, self)) {
                pending.flush();
            }
            if pending.log.is_none() {
                pending.log = Some(self.clone());
            }
            format_line(&mut pending.buf, rec);
            if !ticking || pending.buf.len() >= FLUSH_BYTES {
                pending.flush();
            }
        });
    }
}

/// Writes the lines this thread has queued. Workers call it on every clock tick and when
/// they stop.
pub fn flush_access_log() {
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.flush();
        }
    });
}

impl Pending {
    fn flush(&mut self) {
        let Some(log) = self.log.take() else {
            self.buf.clear();
            return;
        };
        if self.buf.is_empty() {
            return;
        }
        if let Some(mut file) = log.file() {
            let regular = file.metadata().is_ok_and(|m| m.is_file());
            let piece = if regular { usize::MAX } else { PIPE_BUF };
            for chunk in whole_lines(&self.buf, piece) {
                if let Err(e) = file.write_all(chunk) {
                    tracing::warn!(error = %e, "Writing the access log failed; lines dropped.");
                    break;
                }
            }
        }
        self.buf.clear();
    }
}

/// Splits `buf` (whole lines) into pieces of at most `max` bytes that end at line ends; a
/// single line longer than `max` is a piece of its own.
fn whole_lines(buf: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= max {
            return Some(std::mem::take(&mut rest));
        }
        let cut = rest[..max]
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1)
            .or_else(|| rest.iter().position(|b| *b == b'\n').map(|i| i + 1))
            .unwrap_or(rest.len());
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// Appends the JSON line for `rec`. Keys are in sorted order, as a JSON object serialiser
/// with sorted maps writes them, so lines compare equal across versions.
fn format_line(out: &mut Vec<u8>, rec: &AccessRecord<'_>) {
    let mut s = String::with_capacity(320);
    let _ = write!(
        s,
        "{{\"aborted\":{},\"bytes_in\":{},\"bytes_out\":{},\"client\":\"{}\",\"duration_ms\":{}",
        rec.aborted,
        rec.bytes_in,
        rec.bytes_out,
        rec.client,
        millis(rec.duration)
    );
    if let Some(status) = rec.grpc_status {
        let _ = write!(s, ",\"grpc_status\":{status}");
    }
    s.push_str(",\"method\":");
    json_string(&mut s, rec.method);
    s.push_str(",\"path\":");
    json_string(&mut s, rec.path);
    s.push_str(",\"request_id\":");
    json_string(&mut s, rec.request_id);
    s.push_str(",\"route\":");
    json_string(&mut s, rec.route);
    let _ = write!(s, ",\"status\":{},\"time\":\"", rec.status);
    write_rfc3339(&mut s, rec.time);
    s.push_str("\",\"upstream\":");
    match rec.upstream {
        Some(u) => json_string(&mut s, u),
        None => s.push_str("null"),
    }
    s.push_str(",\"upstream_duration_ms\":");
    match rec.upstream_duration {
        Some(d) => {
            let _ = write!(s, "{}", millis(d));
        }
        None => s.push_str("null"),
    }
    s.push_str("}\n");
    out.extend_from_slice(s.as_bytes());
}

/// Milliseconds with microsecond precision (`2.358`), as a JSON number.
fn millis(d: Duration) -> impl std::fmt::Display {
    struct Millis(u128);
    impl std::fmt::Display for Millis {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
        }
    }
    Millis(d.as_micros())
}

/// Appends `v` as a JSON string (RFC 8259 §7 escapes).
fn json_string(out: &mut String, v: &str) {
    out.push('"');
    if !v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(v);
        out.push('"');
        return;
    }
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
pub fn httpdate_rfc3339(t: SystemTime) -> String {
    let mut s = String::with_capacity(24);
    write_rfc3339(&mut s, t);
    s
}

fn write_rfc3339(out: &mut String, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &'a str, upstream: Option<&'a str>) -> AccessRecord<'a> {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: "id-1",
            client: "127.0.0.1:1".parse().unwrap(),
            method: "GET",
            path,
            route: "r",
            upstream,
            status: 200,
            bytes_in: 0,
            bytes_out: 2,
            duration: Duration::from_micros(1500),
            upstream_duration: upstream.map(|_| Duration::from_millis(1)),
            aborted: false,
            grpc_status: None,
        }
    }

    #[test]
    fn opening_a_new_log_file_creates_it_only_on_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = Arc::new(AccessLog::open("file", path.to_str()).unwrap());
        assert!(!path.exists(), "validating a config must not create files");
        // No ticker on a test thread: the line is written at once.
        log.write(&record("/", None));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"request_id\":\"id-1\""), "{text}");
        assert!(
            !text.contains("grpc_status"),
            "only gRPC calls have it: {text}"
        );
        let missing = dir.path().join("nope").join("access.log");
        assert!(AccessLog::open("file", missing.to_str()).is_err());
    }

    #[test]
    fn writes_valid_json_with_every_field_and_escaped_strings() {
        let mut out = Vec::new();
        let path = "/a\"b\\c\u{1}d\u{e9}";
        let mut rec = record(path, Some("10.0.0.1:80"));
        rec.grpc_status = Some(14);
        format_line(&mut out, &rec);
        format_line(&mut out, &record("/", None));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["path"], path);
        assert_eq!(lines[0]["grpc_status"], 14);
        assert_eq!(lines[0]["upstream"], "10.0.0.1:80");
        assert_eq!(lines[0]["upstream_duration_ms"], 1.0);
        assert_eq!(lines[0]["duration_ms"], 1.5);
        assert!(text.contains("\"duration_ms\":1.500,"), "{text}");
        assert_eq!(lines[0]["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(lines[0]["client"], "127.0.0.1:1");
        assert_eq!(lines[0]["aborted"], false);
        assert!(lines[1]["upstream"].is_null());
        assert!(lines[1]["upstream_duration_ms"].is_null());
        assert!(lines[1].get("grpc_status").is_none());
    }

    #[test]
    fn cuts_pipe_writes_at_line_ends() {
        let buf = b"aaaa\nbb\ncccccc\nd\n";
        let pieces: Vec<&[u8]> = whole_lines(buf, 8).collect();
        assert_eq!(pieces, [&b"aaaa\nbb\n"[..], b"cccccc\n", b"d\n"]);
        let long: Vec<&[u8]> = whole_lines(b"0123456789\nx\n", 4).collect();
        assert_eq!(long, [&b"0123456789\n"[..], b"x\n"]);
        assert_eq!(whole_lines(buf, usize::MAX).count(), 1);
    }

    #[test]
    fn formats_rfc3339_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(httpdate_rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
