//! Both ends of one exchange through a proxy, on blocking sockets: a recording upstream that
//! keeps the exact bytes each connection brought and answers every request it can make out
//! with one fixed response, and a client that sends raw bytes and reads whatever comes back.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The upstream's one answer; the header marks a response as the upstream's (a proxy's own
/// error pages do not have it).
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-recorder: 1\r\n\r\nok";

/// How long the upstream must have been silent before a recording is taken: bytes a proxy
/// sends after the client had its answer still belong to the exchange.
const QUIET: Duration = Duration::from_millis(150);

/// How long the client waits for more after a final response.
const AFTER_LAST: Duration = Duration::from_millis(300);

/// How long the client waits in all (the proxies' own timeouts for a stalled request are 2 s).
const AT_MOST: Duration = Duration::from_secs(3);

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn>,
    last_activity: Option<Instant>,
    /// Answers written, over every connection so far.
    answered: usize,
}

struct Conn {
    bytes: Vec<u8>,
    stream: TcpStream,
}

/// A raw recording upstream on `127.0.0.1:0`: one thread per connection.
pub struct Recorder {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts it.
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let ids = AtomicU64::new(0);
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let conn = Conn {
                    bytes: Vec::new(),
                    stream: stream.try_clone().unwrap(),
                };
                s.lock().unwrap().conns.insert(id, conn);
                let s = s.clone();
                std::thread::spawn(move || serve(id, stream, &s));
            }
        });
        Recorder {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many answers it has written so far.
    pub fn answered(&self) -> usize {
        self.state.lock().unwrap().answered
    }

    /// Once the upstream has been quiet for a moment: the bytes each connection received
    /// since the last call (connections that received none are left out). Every connection
    /// is closed, so the next exchange starts on new ones.
    pub fn take(&self) -> Vec<Vec<u8>> {
        // A proxy may answer the client before it writes to the upstream: wait at least
        // once, even when nothing has arrived yet.
        let called = Instant::now();
        loop {
            let quiet = {
                let s = self.state.lock().unwrap();
                called.elapsed() >= QUIET && s.last_activity.is_none_or(|t| t.elapsed() >= QUIET)
            };
            if quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut s = self.state.lock().unwrap();
        s.last_activity = None;
        let mut conns: Vec<(u64, Conn)> = s.conns.drain().collect();
        conns.sort_by_key(|(id, _)| *id);
        conns
            .into_iter()
            .filter_map(|(_, c)| {
                let _ = c.stream.shutdown(Shutdown::Both);
                (!c.bytes.is_empty()).then_some(c.bytes)
            })
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = self.take();
    }
}

/// Records what connection `id` receives and answers each request in it, until the
/// connection closes. After bytes it cannot make out it only records.
fn serve(id: u64, mut stream: TcpStream, state: &Mutex<State>) {
    let mut pending = Vec::new();
    let mut lost = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        {
            let mut s = state.lock().unwrap();
            s.last_activity = Some(Instant::now());
            match s.conns.get_mut(&id) {
                Some(c) => c.bytes.extend_from_slice(&buf[..n]),
                None => return,
            }
        }
        if lost {
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        loop {
            match lenient::message_len(&pending) {
                Some(Ok(len)) => {
                    pending.drain(..len);
                    if stream.write_all(ANSWER).is_err() {
                        return;
                    }
                    state.lock().unwrap().answered += 1;
                }
                Some(Err(())) => {
                    lost = true;
                    break;
                }
                None => break,
            }
        }
    }
}

/// Just enough of HTTP/1.1 to know where a request ends, accepting what a strict parser
/// would not: this side answers, [`super::framing`] judges.
mod lenient {
    /// The length of the complete request at the front of `b`; `None` while incomplete.
    pub fn message_len(b: &[u8]) -> Option<Result<usize, ()>> {
        let head_end = find(b, b"\r\n\r\n").map(|i| i + 4)?;
        let head = String::from_utf8_lossy(&b[..head_end]).to_ascii_lowercase();
        let value = |name: &str| {
            head.split("\r\n")
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if value("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            return chunked_len(&b[head_end..]).map(|r| r.map(|n| head_end + n));
        }
        let body = match value("content-length:") {
            Some(v) => v.parse::<usize>().map_err(|_| ()),
            None => Ok(0),
        };
        match body {
            Ok(n) if b.len() >= head_end + n => Some(Ok(head_end + n)),
            Ok(_) => None,
            Err(()) => Some(Err(())),
        }
    }

    fn chunked_len(b: &[u8]) -> Option<Result<usize, ()>> {
        let mut at = 0;
        loop {
            let eol = find(&b[at..], b"\r\n")?;
            let line = String::from_utf8_lossy(&b[at..at + eol]);
            let hex = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(hex, 16) else {
                return Some(Err(()));
            };
            at += eol + 2;
            if size == 0 {
                // Trailer lines up to the empty one.
                loop {
                    let eol = find(&b[at..], b"\r\n")?;
                    at += eol + 2;
                    if eol == 0 {
                        return Some(Ok(at));
                    }
                }
            }
            if b.len() < at + size + 2 {
                return None;
            }
            at += size + 2;
        }
    }

    pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
}

/// What the client got back.
#[derive(Debug, Default, Clone)]
pub struct Reply {
    /// The status of each response, interim ones included, in order.
    pub statuses: Vec<u16>,
    /// How many of them came from the upstream.
    pub from_upstream: usize,
    /// The proxy closed the connection (or reset it).
    pub closed: bool,
    /// Bytes that are not an HTTP response.
    pub garbage: bool,
}

/// Sends `request` to `addr` as it is and reads responses until the connection closes,
/// or time runs out, or a final response is followed by a pause once the client has every
/// answer `upstream` wrote meanwhile (a slow proxy's last response is not cut off).
pub fn exchange(addr: SocketAddr, upstream: &Recorder, request: &[u8]) -> Reply {
    let before = upstream.answered();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    // A proxy may refuse and close before it has read everything: that is an answer too.
    let _ = s.write_all(request);
    let mut reply = Reply::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let start = Instant::now();
    let mut last = start;
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                reply.closed = true;
                break;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                reply.closed = true;
                break;
            }
        }
        take_responses(&mut buf, &mut reply, false);
        let finals = reply.statuses.iter().filter(|s| **s >= 200).count();
        let owed = upstream.answered() - before > reply.from_upstream;
        if (finals > 0 && !owed && last.elapsed() >= AFTER_LAST) || start.elapsed() >= AT_MOST {
            break;
        }
    }
    let closed = reply.closed;
    take_responses(&mut buf, &mut reply, closed);
    reply
}

/// Moves the complete responses at the front of `buf` into `reply`; with `closed`, a
/// response delimited by the close counts as complete.
fn take_responses(buf: &mut Vec<u8>, reply: &mut Reply, closed: bool) {
    while !buf.is_empty() && !reply.garbage {
        let Some(head_end) = lenient::find(buf, b"\r\n\r\n").map(|i| i + 4) else {
            reply.garbage |= closed || !buf.starts_with(&b"HTTP/1."[..buf.len().min(7)]);
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head
            .strip_prefix("http/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status else {
            reply.garbage = true;
            return;
        };
        let delimited = head.contains("\r\ncontent-length:") || head.contains("chunked");
        let len = if status < 200 || status == 204 || status == 304 {
            head_end
        } else if delimited {
            match lenient::message_len(buf) {
                Some(Ok(len)) => len,
                None if closed => buf.len(),
                None => return,
                Some(Err(())) => {
                    reply.garbage = true;
                    return;
                }
            }
        } else if closed {
            buf.len()
        } else {
            return;
        };
        reply.statuses.push(status);
        if head.contains("\r\nx-recorder: 1\r\n") {
            reply.from_upstream += 1;
        }
        buf.drain(..len);
    }
}
