//! The queue on distributed engines (`cargo bench --bench queue_engines`), against Debian's
//! `nats-server` and Google's Pub/Sub emulator (both started by `sluicegate-testkit`;
//! `scripts/test` installs them). Build the binary first: `cargo build --release`.
//!
//! 1. **nats, ack latency**: one `target/release/sluicegate` process with one worker and a
//!    `backend: nats` queue on a one-node JetStream; 16 keep-alive connections post at
//!    1,000 requests/s in all for `ENGINES_BENCH_SECS` (default 5) seconds: p50/p99 of the
//!    time to the 202. In the same run, a bare client (async-nats) publishes to a stream of
//!    its own at the same rate and waits for each PubAck: the difference is what the
//!    gateway adds.
//! 2. **nats, throughput**: 64 connections post as fast as they can: acknowledged msg/s on
//!    one worker.
//! 3. **pubsub**: the same two measures against the emulator (no production figure: it is
//!    a single JVM process on this machine keeping messages in memory), then the
//!    **playback path's CPU**: N envelopes published to a topic with a push subscription to
//!    `/wal-playback` (`verify: false`), the gateway's CPU time (from `/proc`) until the
//!    upstream has seen all N, divided by N.
//!
//! Without `--bench` (as under `cargo test --benches`) it is a short smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sluicegate_testkit::nats::NatsCluster;
use sluicegate_testkit::pubsub::PubSubEmulator;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("ENGINES_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(if full { secs } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(Upstream::start());

    // ---- nats
    let nats = NatsCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let queue = format!(
        "backend: nats\n      nats: {{url: \"{}\"}}\n      concurrency: 64",
        nats.url(0)
    );
    let gw = Gateway::start(dir.path(), up.addr, &queue, "");
    rt.block_on(wait_accepting(gw.addr));
    let (gw_lat, raw_lat) = rt.block_on(async {
        let gw_run = paced(gw.addr, 1000, run);
        let raw_run = bare_nats(nats.url(0), 1000, run);
        tokio::join!(gw_run, raw_run)
    });
    println!(
        "nats: ack latency at 1000 req/s: gateway p50 {:.3} ms, p99 {:.3} ms ({} requests); bare client publish p50 {:.3} ms, p99 {:.3} ms ({} publishes)",
        ms(&gw_lat, 0.50),
        ms(&gw_lat, 0.99),
        gw_lat.len(),
        ms(&raw_lat, 0.50),
        ms(&raw_lat, 0.99),
        raw_lat.len(),
    );
    println!(
        "nats: the gateway adds {:.3} ms at p50, {:.3} ms at p99",
        ms(&gw_lat, 0.50) - ms(&raw_lat, 0.50),
        ms(&gw_lat, 0.99) - ms(&raw_lat, 0.99)
    );
    let (acked, cpu) = rt.block_on(closed_loop(&gw, 64, run));
    println!(
        "nats: {:.0} acknowledged msg/s on one worker (64 connections, {acked} in {} s; {:.1} µs of gateway CPU each)",
        acked as f64 / run.as_secs_f64(),
        run.as_secs(),
        cpu.as_secs_f64() * 1e6 / acked.max(1) as f64
    );
    drop(gw);
    drop(nats);

    // ---- pubsub
    let emulator = PubSubEmulator::start();
    emulator.create_topic("bench", "wal");
    emulator.create_topic("bench", "play");
    let dir = tempfile::tempdir().unwrap();
    let queue = "backend: pubsub\n      pubsub: {project: bench, topic: wal}".to_string();
    let playback = "  - name: playback\n    match: {paths: /wal-playback}\n    plugins:\n      - {name: pubsub_push, config: {queue: wal, verify: false}}\n";
    let gw = Gateway::start_with_env(
        dir.path(),
        up.addr,
        &queue,
        playback,
        &[("PUBSUB_EMULATOR_HOST", &emulator.host())],
    );
    rt.block_on(wait_accepting(gw.addr));
    let rate = 200;
    let lat = rt.block_on(paced(gw.addr, rate, run));
    println!(
        "pubsub (emulator): ack latency at {rate} req/s: p50 {:.3} ms, p99 {:.3} ms ({} requests)",
        ms(&lat, 0.50),
        ms(&lat, 0.99),
        lat.len()
    );
    let (acked, _) = rt.block_on(closed_loop(&gw, 32, run));
    println!(
        "pubsub (emulator): {:.0} acknowledged msg/s (32 connections, {acked} in {} s)",
        acked as f64 / run.as_secs_f64(),
        run.as_secs()
    );
    let n: u64 = if full { 2000 } else { 100 };
    let envelope_attrs = [
        ("sluicegate_method", "POST"),
        ("sluicegate_uri", "/wal/played"),
        ("sluicegate_headers", "[[\"content-type\",\"text/plain\"]]"),
        ("sluicegate_queue", "wal"),
    ];
    // The push subscription points at the gateway from the start; the messages are
    // published to the emulator directly, so the gateway's CPU over the drain is the
    // playback path's alone.
    emulator.create_push_subscription(
        "bench",
        "play",
        "play-push",
        &format!("http://{}/wal-playback", gw.addr),
        10,
    );
    let before = up.played.load(Ordering::Relaxed);
    let cpu0 = gw.cpu();
    let started = Instant::now();
    for i in 0..n {
        emulator.publish(
            "bench",
            "play",
            format!("played {i}").as_bytes(),
            &envelope_attrs,
        );
    }
    while up.played.load(Ordering::Relaxed) - before < n {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} of {n} pushes delivered",
            up.played.load(Ordering::Relaxed) - before
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = gw.cpu() - cpu0;
    println!(
        "pubsub playback: {n} pushed messages delivered in {:.2} s, {:.1} µs of gateway CPU per delivered message",
        started.elapsed().as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64
    );
}

fn ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// An upstream that answers 200 and counts requests (those to `/played` apart).
struct Upstream {
    addr: SocketAddr,
    played: Arc<AtomicU64>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let played = Arc::new(AtomicU64::new(0));
        let counter = played.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let counter = counter.clone();
                            async move {
                                if req.uri().path() == "/played" {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = req.into_body().collect().await;
                                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream { addr, played }
    }
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    fn start(dir: &Path, upstream: SocketAddr, queue: &str, routes: &str) -> Gateway {
        Self::start_with_env(dir, upstream, queue, routes, &[])
    }

    fn start_with_env(
        dir: &Path,
        upstream: SocketAddr,
        queue: &str,
        routes: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let port = sluicegate_testkit::free_port();
        let config = format!(
            r#"workers: 1
data_dir: "{dir}/data"
listeners: [{{address: "127.0.0.1:{port}", http2: false}}]
admin: {{enabled: false}}
access_log: {{target: 'off'}}
upstreams:
  - name: app
    targets: ["{upstream}"]
routes:
  - name: wal
    match: {{paths: /wal/}}
    upstream: app
    rewrite: {{strip_prefix: /wal}}
    queue:
      name: wal
      {queue}
{routes}"#,
            dir = dir.display(),
        );
        let path = dir.join("sluicegate.yaml");
        std::fs::write(&path, config).unwrap();
        let bin = binary();
        let child = Command::new(&bin)
            .args(["run", "-c"])
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (run `cargo build --release` first)", bin.display())
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// CPU time (user + system) the process used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // Fields 14 and 15 of proc(5) (utime, stime), counted after the command name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / 100.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sluicegate")
}

async fn connect(addr: SocketAddr) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn post(s: &mut Sender, n: u64) -> Option<u16> {
    let req = http::Request::post("/wal/bench")
        .header("host", "bench")
        .body(Full::new(Bytes::from(format!(
            "{{\"n\":{n},\"pad\":\"0123456789abcdef0123456789abcdef\"}}"
        ))))
        .unwrap();
    let resp = s.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// Waits until the queue acknowledges (the engine connected, the stream exists).
async fn wait_accepting(addr: SocketAddr) {
    let mut s = connect(addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(&mut s, 0).await != Some(202) {
        assert!(Instant::now() < deadline, "the queue never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 16 connections posting `rate` requests/s in all for `run`: sorted latencies of the
/// acknowledged ones.
async fn paced(addr: SocketAddr, rate: u64, run: Duration) -> Vec<Duration> {
    let conns = 16;
    let every = Duration::from_secs_f64(conns as f64 / rate as f64);
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let mut out = Vec::new();
            // Spread the connections' ticks over one period.
            tokio::time::sleep(every.mul_f64(c as f64 / conns as f64)).await;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + run;
            let mut n = 0;
            while Instant::now() < end {
                tick.tick().await;
                let t = Instant::now();
                n += 1;
                if post(&mut s, n).await == Some(202) {
                    out.push(t.elapsed());
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// A bare JetStream client: 16 tasks publishing `rate` messages/s in all to a stream of
/// their own, each waiting for its PubAck: sorted latencies.
async fn bare_nats(url: String, rate: u64, run: Duration) -> Vec<Duration> {
    use async_nats::jetstream;
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: "bare".into(),
        subjects: vec!["bare".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let conns = 16;
    let every = Duration::from_secs_f64(conns as f64 / rate as f64);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let js = js.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            tokio::time::sleep(every.mul_f64(c as f64 / conns as f64)).await;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + run;
            while Instant::now() < end {
                tick.tick().await;
                let t = Instant::now();
                let msg = jetstream::message::PublishMessage::build()
                    .payload(Bytes::from_static(
                        b"{\"n\":1,\"pad\":\"0123456789abcdef0123456789abcdef\"}",
                    ))
                    .message_id(uuid::Uuid::new_v4().to_string());
                if let Ok(ack) = js.send_publish("bare", msg).await {
                    if ack.await.is_ok() {
                        out.push(t.elapsed());
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// `conns` connections posting back to back for `run`: acknowledged requests and the
/// gateway's CPU time.
async fn closed_loop(gw: &Gateway, conns: usize, run: Duration) -> (u64, Duration) {
    let acked = Arc::new(AtomicU64::new(0));
    let cpu0 = gw.cpu();
    let end = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (acked, addr) = (acked.clone(), gw.addr);
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let mut n = 0;
            while Instant::now() < end {
                n += 1;
                if post(&mut s, n).await == Some(202) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (acked.load(Ordering::Relaxed), gw.cpu() - cpu0)
}
