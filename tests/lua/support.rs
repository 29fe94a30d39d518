//! Harness for the Lua end-to-end tests: an in-process upstream on `127.0.0.1:0` (its own
//! thread and runtime), the real gateway started from a YAML file in a temporary directory
//! with every port ephemeral, a small HTTP/1.1 client, and the real binary for CLI tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluicegate::gateway::Gateway;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};

/// Longest any network step may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(15);

/// An upstream that answers every request with a JSON description of it, sets two
/// `Set-Cookie` headers and `X-Upstream: yes`, and sleeps `?sleep_ms=N` first.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

impl Upstream {
    /// Starts the upstream.
    pub fn start() -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let service =
                            service_fn(|req: Request<hyper::body::Incoming>| async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let query = parts.uri.query().unwrap_or("").to_string();
                                if let Some(ms) = query
                                    .strip_prefix("sleep_ms=")
                                    .and_then(|v| v.parse::<u64>().ok())
                                {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                let headers: serde_json::Map<String, serde_json::Value> = parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            serde_json::Value::String(
                                                v.to_str().unwrap_or("").to_string(),
                                            ),
                                        )
                                    })
                                    .collect();
                                let json = serde_json::json!({
                                    "method": parts.method.as_str(),
                                    "uri": parts.uri.to_string(),
                                    "headers": headers,
                                    "body": String::from_utf8_lossy(&body),
                                });
                                let resp = http::Response::builder()
                                    .header("content-type", "application/json")
                                    .header("x-upstream", "yes")
                                    .header("set-cookie", "a=1")
                                    .header("set-cookie", "b=2")
                                    .body(Full::new(Bytes::from(json.to_string())))
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Upstream {
            addr,
            _thread: thread,
        }
    }
}

/// A running gateway and the directory its configuration lives in.
pub struct TestGateway {
    /// The gateway (dropping it stops it).
    pub gateway: Gateway,
    /// The configuration directory, kept alive as long as the gateway runs.
    #[allow(dead_code)]
    pub dir: TempDir,
}

impl TestGateway {
    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.listeners[0]
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.gateway.admin.expect("admin listener")
    }
}

/// The settings every test config gets: one worker, ephemeral ports, no access log.
pub const HEADER: &str = "workers: 1\nlisteners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\naccess_log: {target: 'off'}\ndrain_timeout_ms: 500\n";

/// Starts the gateway with `HEADER` + `body`; `files` are written next to the config first.
pub fn start(body: &str, files: &[(&str, &str)]) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().join("sluicegate.yaml");
    let header = if body.contains("workers:") {
        HEADER.replacen("workers: 1\n", "", 1)
    } else {
        HEADER.to_string()
    };
    std::fs::write(&path, format!("{header}{body}")).unwrap();
    let gateway = Gateway::start(&path).unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
    TestGateway { gateway, dir }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// Header `name` as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
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

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    /// Sends a request with `headers` and `body`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let fut = async {
            let resp = self.sender.send_request(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("request timed out")
    }
}

/// `GET path` with `headers` on a new connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Conn::open(addr).await.send("GET", path, headers, "").await
}

/// The `sluicegate` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluicegate"))
}

/// The repository root (for `bench/`, `examples/` and the spec files).
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}
