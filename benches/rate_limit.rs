//! Rate-limit benchmarks (`cargo bench --bench rate_limit`), against a real `redis-server`
//! started on a free loopback port (`scripts/test` installs it).
//!
//! 1. **Accuracy across nodes**: two gateways (one worker each) on one Redis, the `redis`
//!    policy at `RL_BENCH_LIMIT` req/s (default 100, burst = rate), offered
//!    `RL_BENCH_RATE` req/s (default 1,000) for `RL_BENCH_SECS` (default 30), paced and
//!    split evenly over the two; the admitted count is compared with `limit × seconds`
//!    (plus the one burst GCRA allows at the start).
//! 2. **CPU per check, local policy**: `LocalLimiter::check` in a loop, one key and many
//!    keys, one thread and two threads on the same key.
//! 3. **The Redis round trip**: sequential `RedisLimiter::check` latency, and a gateway's
//!    closed-loop throughput (one worker, 32 connections) with no limit, the local policy
//!    and the redis policy, as µs of gateway time per request.
//!
//! Without `--bench` (as under `cargo test --benches`) it is a short smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sluicegate::gateway::Gateway;
use sluicegate_ratelimit::local::LocalLimiter;
use sluicegate_ratelimit::redis::{Endpoint, RedisLimiter, RedisSettings};
use sluicegate_ratelimit::{Limit, Period};
use sluicegate_testkit::redis::RedisServer;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

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
    let full = std::env::args().any(|a| a == "--bench");
    let limit = env("RL_BENCH_LIMIT", 100);
    let offered = env("RL_BENCH_RATE", 1000);
    let secs = env("RL_BENCH_SECS", if full { 30 } else { 2 });
    let checks = if full { 10_000_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();

    // 1. Accuracy: two nodes, one Redis.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let policy = format!(
        "limits: [{{rate: {limit}, per: second}}]\n          redis: {{url: '{}', timeout_ms: 200}}",
        redis.url()
    );
    let nodes: Vec<Gateway> = dirs.iter().map(|d| start(d.path(), &policy)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|g| g.listeners[0]).collect();
    let r = rt.block_on(paced(&addrs, offered, Duration::from_secs(secs)));
    let expected = limit * secs + limit;
    println!(
        "accuracy: 2 gateways on one Redis, limit {limit} req/s, offered {offered} req/s for {secs} s ({:.0} req/s achieved): admitted {}, refused {}, other {}; admitted / (limit × {secs} s) = {:.3}, / (limit × {secs} s + one burst of {limit}) = {:.3}",
        r.sent as f64 / secs as f64,
        r.ok,
        r.limited,
        r.other,
        r.ok as f64 / (limit * secs) as f64,
        r.ok as f64 / expected as f64
    );
    for g in nodes {
        g.shutdown();
    }

    // 2. CPU per check, local policy.
    let per_second = |rate| Limit::new(rate, Period::Second, None).unwrap();
    let l = LocalLimiter::new("bench:one", &[per_second(1_000_000_000)], 1_000_000).unwrap();
    let started = Instant::now();
    for _ in 0..checks {
        std::hint::black_box(l.check(std::hint::black_box(b"ip:127.0.0.1")));
    }
    let one_key = started.elapsed().as_nanos() as f64 / checks as f64;
    let keys: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).into_bytes())
        .collect();
    let many = LocalLimiter::new("bench:many", &[per_second(1_000_000_000)], 1_000_000).unwrap();
    for k in &keys {
        many.check(k);
    }
    let started = Instant::now();
    for i in 0..checks {
        std::hint::black_box(many.check(&keys[i % keys.len()]));
    }
    let many_keys = started.elapsed().as_nanos() as f64 / checks as f64;
    let shared = Arc::new(
        LocalLimiter::new("bench:threads", &[per_second(1_000_000_000)], 1_000_000).unwrap(),
    );
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let l = shared.clone();
            std::thread::spawn(move || {
                for _ in 0..checks / 2 {
                    std::hint::black_box(l.check(b"ip:127.0.0.1"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let contended = started.elapsed().as_nanos() as f64 * 2.0 / checks as f64;
    println!(
        "local check: {one_key:.0} ns (one key), {many_keys:.0} ns (100,000 keys), {contended:.0} ns of thread time (two threads on one key), {checks} checks each"
    );

    // 3. The Redis round trip.
    let limiter = RedisLimiter::new(
        "bench:rtt",
        &[per_second(1_000_000_000)],
        RedisSettings {
            endpoint: Endpoint::parse(&redis.url()).unwrap(),
            timeout: Duration::from_millis(500),
            backoff: Duration::ZERO,
            prefix: "bench".into(),
        },
    )
    .unwrap();
    let n = if full { 20_000 } else { 500 };
    let mut lat: Vec<u64> = rt.block_on(async {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            limiter.check(b"ip:127.0.0.1").await.unwrap();
            lat.push(t.elapsed().as_nanos() as u64);
        }
        lat
    });
    lat.sort_unstable();
    println!(
        "redis check, sequential: p50 {:.1} µs, p99 {:.1} µs ({n} checks)",
        lat[n / 2] as f64 / 1000.0,
        lat[n * 99 / 100] as f64 / 1000.0
    );
    let burst = Duration::from_secs(if full { 5 } else { 1 });
    for (name, plugins) in [
        ("no limit", String::new()),
        (
            "local policy",
            format!("limits: [{{rate: {}, per: second}}]", 1_000_000_000),
        ),
        (
            "redis policy",
            format!(
                "limits: [{{rate: {}, per: second}}]\n          redis: {{url: '{}', timeout_ms: 500}}",
                1_000_000_000,
                redis.url()
            ),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gw = start(dir.path(), &plugins);
        let addr = gw.listeners[0];
        rt.block_on(closed_loop(addr, 32, Duration::from_millis(500)));
        let (done, took) = rt.block_on(closed_loop(addr, 32, burst));
        println!(
            "gateway, 1 worker, 32 connections, {name}: {:.0} req/s, {:.2} µs per request",
            done as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / done as f64
        );
        gw.shutdown();
    }
}

/// A gateway with one worker whose route answers 200 itself, after `rate_limit` with
/// `config` (none when empty).
fn start(dir: &Path, config: &str) -> Gateway {
    let limit = if config.is_empty() {
        String::new()
    } else {
        format!("      - name: rate_limit\n        config:\n          {config}\n")
    };
    let text = format!(
        "workers: 1\nlisteners: [{{address: '127.0.0.1:0', http2: false}}]\nadmin: {{enabled: false}}\naccess_log: {{target: 'off'}}\nroutes:\n  - name: api\n    plugins:\n{limit}      - name: request_termination\n        config: {{status: 200, body: ok}}\n"
    );
    let path = dir.join("sluicegate.yaml");
    std::fs::write(&path, text).unwrap();
    Gateway::start(&path).unwrap()
}

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

async fn get(sender: &mut Sender) -> Option<u16> {
    let req = Request::get("/")
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    sender.ready().await.ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

#[derive(Default)]
struct Counts {
    sent: u64,
    ok: u64,
    limited: u64,
    other: u64,
}

/// `rate` req/s for `duration`, over 16 keep-alive connections per address, each sending
/// on its own fixed schedule.
async fn paced(addrs: &[SocketAddr], rate: u64, duration: Duration) -> Counts {
    const PER_ADDR: usize = 16;
    let conns = addrs.len() * PER_ADDR;
    let interval = Duration::from_secs_f64(conns as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let (ok, limited, other, sent) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for k in 0..conns {
        let addr = addrs[k % addrs.len()];
        let (ok, limited, other, sent) = (ok.clone(), limited.clone(), other.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let first = start + Duration::from_secs_f64(k as f64 / rate as f64);
            let mut ticker = tokio::time::interval_at(first, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let at = ticker.tick().await;
                if at >= start + duration {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                match get(&mut sender).await {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    Some(429) => limited.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Counts {
        sent: sent.load(Ordering::Relaxed),
        ok: ok.load(Ordering::Relaxed),
        limited: limited.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
    }
}

async fn closed_loop(addr: SocketAddr, conns: usize, duration: Duration) -> (u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            while started.elapsed() < duration {
                if get(&mut sender).await == Some(200) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}
