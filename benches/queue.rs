//! Durable queue benchmarks (`cargo bench --bench queue`): the real gateway in-process (one
//! worker), real sockets, a fast in-process upstream, 1 KiB bodies.
//!
//! 1. **Ack latency at a steady rate** (default 5,000 req/s for 10 s, open loop over 64
//!    keep-alive connections; latency counts from each request's scheduled send time, so a
//!    stall is not hidden by the client waiting), with deliveries running.
//! 2. **Maximum acknowledged messages per second** on one worker: closed loop, 128
//!    connections sending back to back for 5 s, delivery idle (upstream down).
//! 3. **Delivery throughput**: 50,000 messages queued while the upstream is down, then the
//!    gateway restarts with a fast upstream and the time to drain is measured, at
//!    `concurrency` 1 and 32.
//!
//! Environment: `QUEUE_BENCH_RATE`, `QUEUE_BENCH_SECS`, `QUEUE_BENCH_MESSAGES` override the
//! defaults. Without `--bench` (as under `cargo test --benches`) it is a one-second smoke run. Load generator, gateway, fsync thread, delivery thread and upstream all share
//! the machine: read the numbers as one run on this machine, not as limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluicegate::gateway::Gateway;

const BODY: usize = 1024;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) gets a quick
    // smoke run of the same code.
    let full = std::env::args().any(|a| a == "--bench");
    let rate = env("QUEUE_BENCH_RATE", if full { 5000 } else { 500 });
    let secs = env("QUEUE_BENCH_SECS", if full { 10 } else { 1 });
    let messages = env("QUEUE_BENCH_MESSAGES", if full { 50_000 } else { 1_000 });
    let burst = Duration::from_secs(if full { 5 } else { 1 });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "queue benchmarks: 1 worker, {BODY}-byte bodies, data dir under {}",
        std::env::temp_dir().display()
    );

    // 1. Ack latency at a steady rate, deliveries running.
    let up = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), up.addr, 16, 20);
    let r = rt.block_on(open_loop(gw.listeners[0], rate, Duration::from_secs(secs)));
    println!(
        "ack latency at {rate} req/s for {secs} s (64 connections, open loop): sent {} ok {} failed {} achieved {:.0} req/s; p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        r.sent,
        r.ok,
        r.failed,
        r.ok as f64 / secs as f64,
        r.pct(50.0),
        r.pct(90.0),
        r.pct(99.0),
        r.pct(99.9),
        r.pct(100.0)
    );
    let delivered = up.count.load(Ordering::Relaxed);
    let q = gw.shared.queues().get("bench").unwrap();
    println!(
        "  deliveries meanwhile: {delivered}; server-side append-to-fsync mean {:?}",
        q.metrics().ack_latency.mean().unwrap_or_default()
    );
    drop(q);
    let r = rt.block_on(open_loop_path(
        gw.listeners[0],
        "/plain",
        rate,
        Duration::from_secs(secs.min(5)),
    ));
    println!(
        "  baseline, same load on a route answered by the gateway (no queue): p50 {:.3} ms, p99 {:.3} ms",
        r.pct(50.0),
        r.pct(99.0)
    );
    gw.shutdown();
    drop(up);

    // 2. Maximum acknowledged messages per second, delivery idle.
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), down, 1, 60_000);
    let (acked, took, lat) = rt.block_on(closed_loop(gw.listeners[0], 128, burst));
    println!(
        "max acknowledged: {:.0} msg/s ({acked} in {:.1} s, 128 connections, closed loop); latency p50 {:.3} ms, p99 {:.3} ms",
        acked as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        lat.pct(50.0),
        lat.pct(99.0)
    );
    gw.shutdown();

    // 3. Delivery throughput to a fast upstream.
    for concurrency in [1usize, 32] {
        let down = free_port();
        let dir = tempfile::tempdir().unwrap();
        let gw = start(dir.path(), down, concurrency, 60_000);
        rt.block_on(fill(gw.listeners[0], messages));
        gw.shutdown();
        let up = Upstream::start(Some(down));
        let started = Instant::now();
        let gw = start(dir.path(), down, concurrency, 20);
        while up.count.load(Ordering::Relaxed) < messages as usize {
            std::thread::sleep(Duration::from_millis(5));
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "delivery stalled"
            );
        }
        let took = started.elapsed();
        // Acks trail the upstream's answers by one group commit.
        let pending = loop {
            let p = gw
                .shared
                .queues()
                .get("bench")
                .unwrap()
                .backend()
                .stats()
                .pending;
            if p == 0 || started.elapsed() > took + Duration::from_secs(10) {
                break p;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        println!(
            "delivery throughput, concurrency {concurrency}: {:.0} msg/s ({messages} messages in {:.2} s, including restart and recovery; {pending} still un-acked after)",
            messages as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        );
        gw.shutdown();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(dir: &Path, upstream: SocketAddr, concurrency: usize, backoff_ms: u64) -> Gateway {
    let path = dir.join("sluicegate.yaml");
    let config = format!(
        "workers: 1\ndata_dir: data\nlisteners: [{{address: '127.0.0.1:0', max_body_bytes: 65536}}]\nadmin: {{enabled: false}}\naccess_log: {{target: 'off'}}\nupstreams:\n  - name: app\n    targets: ['{upstream}']\n    connect_timeout_ms: 200\nroutes:\n  - name: plain\n    match: {{paths: /plain}}\n    plugins: [{{name: request_termination, config: {{status: 202, body: ok}}}}]\n  - name: bench\n    match: {{paths: /q/}}\n    upstream: app\n    rewrite: {{strip_prefix: /q}}\n    queue:\n      concurrency: {concurrency}\n      max_bytes: 4294967296\n      retry: {{initial_backoff_ms: {backoff_ms}, max_backoff_ms: {backoff_ms}, max_attempts: 1000000, max_age_ms: 0}}\n"
    );
    std::fs::write(&path, config).unwrap();
    Gateway::start(&path).unwrap()
}

/// A fast upstream: 200 to everything, counting requests.
struct Upstream {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(on: Option<SocketAddr>) -> Upstream {
        let listener =
            std::net::TcpListener::bind(on.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
                .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                                let counter = counter.clone();
                                async move {
                                    let _ = req.into_body().collect().await;
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        Full::new(Bytes::from_static(b"ok")),
                                    ))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! { _ = accept => {}, _ = stopped => {} }
            });
        });
        Upstream {
            addr,
            count,
            stop: Some(stop),
            thread: Some(thread),
        }
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

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn post(sender: &mut Sender, body: &Bytes) -> bool {
    post_to(sender, "/q/bench", body).await
}

async fn post_to(sender: &mut Sender, path: &str, body: &Bytes) -> bool {
    let req = Request::post(path)
        .header("host", "bench")
        .body(Full::new(body.clone()))
        .unwrap();
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status() == 202;
            let _ = resp.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

#[derive(Default)]
struct Latencies {
    us: Vec<u64>,
    sent: u64,
    ok: u64,
    failed: u64,
}

impl Latencies {
    fn pct(&self, p: f64) -> f64 {
        if self.us.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.us.len() - 1) as f64).round() as usize;
        self.us[i.min(self.us.len() - 1)] as f64 / 1000.0
    }
}

async fn open_loop(addr: SocketAddr, rate: u64, duration: Duration) -> Latencies {
    open_loop_path(addr, "/q/bench", rate, duration).await
}

async fn open_loop_path(
    addr: SocketAddr,
    path: &'static str,
    rate: u64,
    duration: Duration,
) -> Latencies {
    const CONNS: u64 = 64;
    let body = Bytes::from(vec![b'x'; BODY]);
    let interval = Duration::from_secs_f64(CONNS as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut out = Latencies::default();
            let first = start + interval.mul_f64(c as f64 / CONNS as f64);
            let mut k = 0u32;
            loop {
                let due = first + interval * k;
                if due.duration_since(start) >= duration {
                    break;
                }
                tokio::time::sleep_until(due).await;
                out.sent += 1;
                if post_to(&mut sender, path, &body).await {
                    out.ok += 1;
                    out.us.push(due.elapsed().as_micros() as u64);
                } else {
                    out.failed += 1;
                    sender = connect(addr).await;
                }
                k += 1;
            }
            out
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        let r = t.await.unwrap();
        all.us.extend(r.us);
        all.sent += r.sent;
        all.ok += r.ok;
        all.failed += r.failed;
    }
    all.us.sort_unstable();
    all
}

async fn closed_loop(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
) -> (u64, Duration, Latencies) {
    let body = Bytes::from(vec![b'x'; BODY]);
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (body, acked) = (body.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut lat = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                if post(&mut sender, &body).await {
                    acked.fetch_add(1, Ordering::Relaxed);
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            lat
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.us.extend(t.await.unwrap());
    }
    let took = started.elapsed();
    all.us.sort_unstable();
    (acked.load(Ordering::Relaxed), took, all)
}

async fn fill(addr: SocketAddr, messages: u64) {
    let body = Bytes::from(vec![b'x'; BODY]);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (body, next) = (body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                assert!(post(&mut sender, &body).await, "fill failed");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
