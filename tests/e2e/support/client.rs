//! Clients over real sockets: hyper HTTP/1.1 and HTTP/2 (one connection per request unless
//! a test keeps a [`Conn`]), and [`Raw`] TCP for requests no well-behaved client would send.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Protocol version of the response.
    pub version: Version,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// Header `name` as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (fails the test when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A request builder for `path`. HTTP/1.1 requests without a `Host` header get
/// `Host: localhost` when sent (hyper's connection-level client does not add one).
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

/// `GET path` on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(
        addr,
        request("GET", path).body(Empty::<Bytes>::new()).unwrap(),
    )
    .await
}

/// Sends `req` over a new HTTP/1.1 connection and reads the whole response.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match try_send(addr, req).await {
        Ok(r) => r,
        Err(e) => panic!("request to {addr} failed: {e}"),
    }
}

/// Like [`send`], but a failure (reset, truncated body) is returned instead of failing.
pub async fn try_send<B>(addr: SocketAddr, req: Request<B>) -> Result<Reply, String>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut conn = Conn::h1(addr).await;
    conn.try_send(req).await
}

/// Sends `req` as HTTP/2 with prior knowledge (h2c) over a new connection.
pub async fn send_h2<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut conn = Conn::handshake(stream, true).await;
    conn.try_send(req)
        .await
        .unwrap_or_else(|e| panic!("h2 request failed: {e}"))
}

/// One client connection that can carry several requests.
pub enum Conn<B> {
    /// HTTP/1.1.
    H1(http1::SendRequest<B>),
    /// HTTP/2.
    H2(http2::SendRequest<B>),
}

impl<B> Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A new HTTP/1.1 connection to `addr`.
    pub async fn h1(addr: SocketAddr) -> Self {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        Self::handshake(stream, false).await
    }

    /// Starts HTTP/1.1 or HTTP/2 on `io` (plain TCP, or TLS after ALPN).
    pub async fn handshake<I>(io: I, h2: bool) -> Self
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (sender, conn) = within("h2 handshake", http2::handshake(TokioExecutor::new(), io))
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(sender)
        } else {
            let (sender, conn) = within("h1 handshake", http1::handshake(io)).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(sender)
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn try_send(&mut self, mut req: Request<B>) -> Result<Reply, String> {
        let sent = match self {
            Conn::H1(s) => {
                req.headers_mut()
                    .entry(http::header::HOST)
                    .or_insert(http::HeaderValue::from_static("localhost"));
                within("connection ready", s.ready())
                    .await
                    .map_err(|e| e.to_string())?;
                within("response head", s.send_request(req)).await
            }
            Conn::H2(s) => {
                within("connection ready", s.ready())
                    .await
                    .map_err(|e| e.to_string())?;
                within("response head", s.send_request(req)).await
            }
        };
        let resp = sent.map_err(|e| format!("{e} ({e:?})"))?;
        let (head, body) = resp.into_parts();
        let body = within("response body", body.collect())
            .await
            .map_err(|e| format!("body: {e} ({e:?})"))?
            .to_bytes();
        Ok(Reply {
            status: head.status,
            version: head.version,
            headers: head.headers,
            body,
        })
    }
}

/// A full in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(bytes.into())
}

/// A raw TCP connection for hand-written (and malformed) requests.
pub struct Raw {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read past the end of the last response (pipelined answers).
    pending: Vec<u8>,
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Status line and headers, as text.
    pub head: String,
    /// Body (as far as it was read).
    pub body: String,
}

impl RawResponse {
    /// Header `name` (case-insensitive) from the head.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

impl Raw {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        Raw {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes `bytes` (a write error means the peer closed; the caller reads to find out).
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = within("write", self.stream.write_all(bytes)).await;
    }

    /// Reads until the peer closes (or resets) the connection.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.pending);
        let mut buf = [0u8; 8192];
        loop {
            match within("read to end", self.stream.read(&mut buf)).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads one response: the head, then a `Content-Length` body (or up to the close).
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        let mut data = std::mem::take(&mut self.pending);
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = find(&data, b"\r\n\r\n") {
                break i + 4;
            }
            match within("response head", self.stream.read(&mut buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        let mut resp = RawResponse {
            status: head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            head,
            body: String::new(),
        };
        let mut body = data[head_end..].to_vec();
        let bodiless =
            (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304;
        match resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            _ if bodiless => self.pending = std::mem::take(&mut body),
            Some(len) => {
                while body.len() < len {
                    match within("response body", self.stream.read(&mut buf)).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                    }
                }
                if body.len() > len {
                    self.pending = body.split_off(len);
                }
            }
            None => body.extend(self.read_to_end().await),
        }
        resp.body = String::from_utf8_lossy(&body).into_owned();
        Some(resp)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `head` and then `body_len` bytes of body on one task while reading the answer on
/// another (as a browser uploading a file does), and returns every byte read until the
/// connection closes. Write errors are ignored: the peer may close early on purpose.
pub async fn upload_while_reading(addr: SocketAddr, head: &[u8], body_len: usize) -> Vec<u8> {
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = head.to_vec();
    let writing = tokio::spawn(async move {
        if writer.write_all(&head).await.is_err() {
            return;
        }
        let chunk = vec![b'u'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            if writer.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match within("read the answer to an upload", reader.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    writing.abort();
    out
}
