//! Harness of the queue tests: a recording upstream on `127.0.0.1` (its own thread and
//! runtime; it can also start later on a reserved port, to play "down, then up"), the
//! gateway in-process from a YAML written to a temporary directory (with `data_dir` in
//! it), the real binary for crash tests, and small HTTP clients over real sockets.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluicegate::gateway::Gateway;
use tempfile::TempDir;
use tokio::net::TcpStream;

/// Upper bound of any single wait; it only turns a hang into a failure.
pub const STEP: Duration = Duration::from_secs(30);

/// Sends gateway logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Polls `check` every 20 ms until it is true; fails with `what` after [`STEP`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + STEP;
    while !check().await {
        assert!(Instant::now() < until, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- upstream

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub target: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Seen {
    /// Header `name` as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `X-Sluicegate-Message-Id`.
    pub fn id(&self) -> u64 {
        self.header("x-sluicegate-message-id").parse().unwrap_or(0)
    }

    /// `X-Sluicegate-Attempt`.
    pub fn attempt(&self) -> u32 {
        self.header("x-sluicegate-attempt").parse().unwrap_or(0)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the upstream answers: status, extra headers.
pub type Reply = (u16, Vec<(&'static str, String)>);
type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A recording upstream. `handler(seen, n)` gets the request and how many came before.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// An upstream on a new port.
    pub fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        Self::serve(listener, Arc::new(handler))
    }

    /// An upstream answering 200 to everything.
    pub fn ok() -> Upstream {
        Self::start(|_, _| (200, vec![]))
    }

    /// An upstream on a port reserved earlier with [`reserve_port`].
    pub fn start_on(
        reserved: Reserved,
        handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        reserved.socket.listen(1024).expect("listen");
        Self::serve(reserved.socket.into(), Arc::new(handler))
    }

    fn serve(listener: std::net::TcpListener, handler: Handler) -> Upstream {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let record = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let count = Arc::new(AtomicUsize::new(0));
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (handler, record, count) =
                            (handler.clone(), record.clone(), count.clone());
                        tokio::spawn(async move {
                            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                                let (handler, record, count) =
                                    (handler.clone(), record.clone(), count.clone());
                                async move {
                                    let (head, body) = req.into_parts();
                                    let body = body
                                        .collect()
                                        .await
                                        .map(|c| c.to_bytes())
                                        .unwrap_or_default();
                                    let seen = Seen {
                                        method: head.method,
                                        target: head
                                            .uri
                                            .path_and_query()
                                            .map(|p| p.to_string())
                                            .unwrap_or_default(),
                                        headers: head.headers,
                                        body,
                                    };
                                    let n = count.fetch_add(1, Ordering::SeqCst);
                                    let (status, headers) = handler(&seen, n);
                                    record.lock().unwrap().push(seen);
                                    let mut resp = Response::new(Full::new(Bytes::from(format!(
                                        "answer {status}"
                                    ))));
                                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                                    for (k, v) in headers {
                                        resp.headers_mut().insert(k, v.parse().unwrap());
                                    }
                                    Ok::<_, std::convert::Infallible>(resp)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Upstream {
            addr,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        eventually(&format!("{n} requests at the upstream"), || async {
            self.count() >= n
        })
        .await;
        self.seen()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A local address where nothing listens now (bound once, then released).
pub fn reserve_port() -> Reserved {
    // Bound but not listening: connections are refused (the upstream is "down"), and no other
    // test can take the port meanwhile (a released port could be handed to another test's
    // server, which would then receive these deliveries).
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("an IP address");
    Reserved { socket, addr }
}

/// A port held for an upstream that starts later (see [`reserve_port`]).
pub struct Reserved {
    socket: socket2::Socket,
    /// The reserved address.
    pub addr: SocketAddr,
}

// ---------------------------------------------------------------- gateway

/// A gateway under test, with its configuration and data in a temporary directory.
pub struct TestGateway {
    /// The first listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The gateway (dropping it stops it).
    pub gateway: Option<Gateway>,
    /// Configuration and data directory.
    pub dir: Arc<TempDir>,
}

/// The YAML of a gateway with one worker, listener and admin on port 0, `data_dir` in
/// `dir`, and `body` (upstreams, routes...).
pub fn config_text(body: &str) -> String {
    format!(
        "workers: 1\ndrain_timeout_ms: 2000\ndata_dir: data\nlisteners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\naccess_log: {{target: 'off'}}\n{body}\n"
    )
}

/// The usual queued route: `/wal/` queued to upstream `app` at `upstream` (prefix
/// stripped), with `queue_extra` lines added to the `queue:` block (indented by 6).
pub fn queued(upstream: SocketAddr, queue_extra: &str) -> String {
    let mut extra = String::new();
    for line in queue_extra.lines().filter(|l| !l.trim().is_empty()) {
        extra.push_str("      ");
        extra.push_str(line);
        extra.push('\n');
    }
    if !queue_extra.contains("retry:") {
        // Fast retries, and enough of them: with the default 15 attempts, a message whose
        // jittered delays came out short could be dead-lettered within the 1-2 s an
        // upstream is kept down by the tests, which made them fail now and then.
        extra.push_str(
            "      retry: {initial_backoff_ms: 20, max_backoff_ms: 200, max_attempts: 1000}\n",
        );
    }
    format!(
        "upstreams:\n  - name: app\n    targets: [\"{upstream}\"]\n    connect_timeout_ms: 500\n    read_timeout_ms: 5000\nroutes:\n  - name: wal\n    match: {{paths: /wal/}}\n    upstream: app\n    rewrite: {{strip_prefix: /wal}}\n    queue:\n      name: wal\n{extra}"
    )
}

impl TestGateway {
    /// Starts a gateway from `body` in a new temporary directory.
    pub fn start(body: &str) -> TestGateway {
        Self::start_in(Arc::new(tempfile::tempdir().expect("tempdir")), body)
    }

    /// Starts a gateway from `body` in `dir` (to restart on the same data).
    pub fn start_in(dir: Arc<TempDir>, body: &str) -> TestGateway {
        init_logs();
        let path = dir.path().join("sluicegate.yaml");
        std::fs::write(&path, config_text(body)).expect("write config");
        let gateway =
            Gateway::start(&path).unwrap_or_else(|e| panic!("gateway did not start: {e:#}"));
        TestGateway {
            addr: gateway.listeners[0],
            admin: gateway.admin.expect("admin listener"),
            gateway: Some(gateway),
            dir,
        }
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluicegate.yaml")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Replaces the configuration file's `body` (for reloads).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(self.config_path(), config_text(body)).expect("write config");
    }

    /// Stops it (drain) and waits for its threads.
    pub fn stop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown();
        }
    }

    /// The gateway's shared state.
    pub fn shared(&self) -> Arc<sluicegate::state::Shared> {
        self.gateway.as_ref().expect("running").shared.clone()
    }

    /// `POST path` with `body` on the listener.
    pub async fn post(&self, path: &str, body: &str) -> Answer {
        send(self.addr, "POST", path, &[], body).await
    }

    /// A request on the admin listener.
    pub async fn admin(&self, method: &str, path: &str) -> Answer {
        send(self.admin, method, path, &[], "").await
    }

    /// `GET path` on the admin listener, as JSON (must be 2xx).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let a = self.admin("GET", path).await;
        assert!(a.status < 300, "GET {path}: {} {}", a.status, a.text());
        a.json()
    }

    /// The Prometheus sample `series` (exact `name{labels}`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin("GET", "/metrics").await.text();
        metric(&text, series)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of the Prometheus sample `series` in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------- clients

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// Header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The message id of an acknowledgement.
    pub fn id(&self) -> u64 {
        self.header("x-sluicegate-message-id")
            .parse()
            .unwrap_or_else(|_| panic!("no message id: {self:?}"))
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> std::io::Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(std::io::Error::other)?;
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let (head, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Answer {
            status: head.status.as_u16(),
            headers: head.headers,
            body,
        })
    }
}

/// One request on a new connection (fails the test on a network error or after [`STEP`]).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let fut = async {
        let mut c = Conn::open(addr).await?;
        c.send(method, path, headers, Bytes::from(body.to_string()))
            .await
    };
    match tokio::time::timeout(STEP, fut).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => panic!("{method} {path} on {addr}: {e}"),
        Err(_) => panic!("{method} {path} on {addr}: timed out"),
    }
}

// ---------------------------------------------------------------- the binary

/// Runs `sluicegate args...` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `sluicegate run` process.
pub struct Process {
    child: Child,
    /// The first listener, from the `Listening.` log line.
    pub addr: SocketAddr,
    /// The admin listener, from the `Admin API listening.` log line.
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `sluicegate run -c config` and waits for its listening lines.
    pub fn start(config: &Path) -> Process {
        Process::start_with_env(config, &[])
    }

    /// [`Process::start`] with `env` added to the process's environment, as a user sets
    /// the variables an example file reads.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
            .args(["run", "-c"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluicegate run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let addr = v["address"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    match (v["message"].as_str(), addr) {
                        (Some("Listening."), Some(a)) => {
                            let _ = tx.send(("listen", a));
                        }
                        (Some("Admin API listening."), Some(a)) => {
                            let _ = tx.send(("admin", a));
                        }
                        _ => {}
                    }
                }
                if std::env::var_os("RUST_LOG").is_some() {
                    eprintln!("[gateway] {line}");
                }
            }
        });
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            match rx.recv_timeout(STEP) {
                Ok(("listen", a)) => addr = Some(a),
                Ok((_, a)) => admin = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the gateway process did not report its addresses");
                }
            }
        }
        Process {
            child,
            addr: addr.expect("listener"),
            admin: admin.expect("admin"),
            log,
        }
    }

    /// The log lines written so far (JSON, one per line).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}
