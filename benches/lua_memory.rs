//! Memory stays flat while a script assigns a new global on every request.
//!
//! Starts the real gateway in-process (one worker, port 0) with a `content` script that
//! assigns a global with a new name (and a fresh table) on every request, drives
//! `REQUESTS` (default 1,000,000) keep-alive requests through it, and prints the process
//! RSS after a warm-up and at the end. Envoy's Lua filter grew to ~1 GB after ~920K such
//! requests; here the globals die with each call's environment.
//!
//! With `FILTER=envoy` the same is done by an Envoy filter script (`envoy_lua`) — the
//! seed's leak: a global assigned in `envoy_on_request` on every request.
//!
//! `cargo bench --bench lua_memory` (or `REQUESTS=200000 cargo bench --bench lua_memory`,
//! `FILTER=envoy cargo bench --bench lua_memory`)

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const CONFIG: &str = r#"workers: 1
listeners: [{address: '127.0.0.1:0'}]
admin: {enabled: false}
access_log: {target: 'off'}
routes:
  - name: leak
    plugins:
      - name: lua
        config:
          name: globals
          phase: content
          code: |
            -- A new global name every request, holding a new table.
            local name = "seen_" .. ngx.var.request_id
            _G[name] = { uri = ngx.var.uri, at = ngx.now() }
            counter = (counter or 0) + 1
            ngx.say(name ~= nil, " ", counter)
"#;

const ENVOY_CONFIG: &str = r#"workers: 1
listeners: [{address: '127.0.0.1:0'}]
admin: {enabled: false}
access_log: {target: 'off'}
upstreams: [{name: never, targets: ['127.0.0.1:9']}]
routes:
  - name: leak
    upstream: never
    plugins:
      - name: envoy_lua
        config:
          name: globals
          code: |
            function envoy_on_request(request_handle)
              -- A new global name every request, holding a new table.
              local name = "seen_" .. request_handle:timestamp() .. "_" .. math.random()
              _G[name] = { path = request_handle:headers():get(":path") }
              counter = (counter or 0) + 1
              request_handle:respond({[":status"] = "200"}, tostring(_G[name] ~= nil) .. " " .. counter .. "\n")
            end
"#;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn drive(addr: std::net::SocketAddr, count: u64, done: Arc<AtomicU64>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for _ in 0..count {
        let req = http::Request::builder()
            .uri("/x")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(body.starts_with(b"true 1\n"), "{body:?}");
        done.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let total: u64 = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluicegate.yaml");
    let config = match std::env::var("FILTER").as_deref() {
        Ok("envoy") => ENVOY_CONFIG,
        _ => CONFIG,
    };
    std::fs::write(&path, config).expect("config");
    let gateway = sluicegate::gateway::Gateway::start(&path).expect("gateway");
    let addr = gateway.listeners[0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conns = 16u64;
    let run = |n: u64| {
        let done = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let tasks: Vec<_> = (0..conns)
                .map(|_| tokio::spawn(drive(addr, n / conns, done.clone())))
                .collect();
            for t in tasks {
                t.await.expect("client task");
            }
        });
        done.load(Ordering::Relaxed)
    };
    let warm = (total / 20).max(conns);
    run(warm);
    let rss_warm = rss_kib();
    let started = Instant::now();
    let mut sent = 0;
    let step = (total / 10).max(conns);
    while sent < total {
        sent += run(step.min(total - sent).max(conns));
        println!("{sent:>9} requests  RSS {:>7} KiB", rss_kib());
    }
    let rss_end = rss_kib();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "after warm-up ({warm} requests): {rss_warm} KiB; after {sent} more requests: {rss_end} KiB; growth {} KiB ({:.0} req/s)",
        rss_end as i64 - rss_warm as i64,
        sent as f64 / secs
    );
    gateway.shutdown();
}
