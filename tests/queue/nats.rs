//! The `nats` backend against Debian's `nats-server` (a JetStream server or a three-node
//! cluster on loopback, started by the test support): ack after the PubAck, delivery with
//! the route's retries (NAK with delay) and dead letters, two gateways on one queue, the
//! engine down and the stream full (503, then recovery), and kill -9 of a gateway and of
//! the stream's leader under load.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluicegate_testkit::nats::NatsCluster;

use crate::support::{config_text, eventually, queued, Conn, Process, TestGateway, Upstream};

/// The `queue:` lines of a nats queue on `urls`.
fn nats_queue(urls: &str, replicas: usize, extra: &str) -> String {
    format!(
        "backend: nats\nnats: {{url: \"{urls}\", replicas: {replicas}, ack_wait_ms: 2000, publish_timeout_ms: 2000}}\nconcurrency: 8\n{extra}"
    )
}

#[tokio::test]
async fn acked_after_the_puback_and_delivered_with_retries_then_dead_letters() {
    let nats = NatsCluster::start(1);
    // /fail answers 500 twice then 200; /bad always 400.
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let up = {
        let calls = calls.clone();
        Upstream::start(move |seen, _| {
            let mut c = calls.lock().unwrap();
            let n = c.entry(seen.text()).or_default();
            *n += 1;
            match seen.target.as_str() {
                "/fail" if *n <= 2 => (500, vec![]),
                "/bad" => (400, vec![]),
                _ => (200, vec![]),
            }
        })
    };
    let gw = TestGateway::start(&queued(up.addr, &nats_queue(&nats.url(0), 1, "")));
    eventually("the stream exists", || async {
        gw.post("/wal/ok?x=1", "first").await.status == 202
    })
    .await;
    let a = gw.post("/wal/fail", "flaky").await;
    assert_eq!(a.status, 202, "{}", a.text());
    let ack = a.json();
    assert_eq!(ack["queue"], "wal");
    assert!(
        ack["durability"].as_str().unwrap().contains("JetStream"),
        "{ack}"
    );
    let bad = gw.post("/wal/bad", "poison").await;
    assert_eq!(bad.status, 202);

    eventually("flaky delivered on its third attempt", || async {
        up.seen()
            .iter()
            .any(|s| s.text() == "flaky" && s.attempt() == 3)
    })
    .await;
    let seen = up.seen();
    let first = seen.iter().find(|s| s.text() == "first").unwrap();
    assert_eq!(first.target, "/ok?x=1", "prefix stripped, query kept");
    let flaky: Vec<_> = seen.iter().filter(|s| s.text() == "flaky").collect();
    assert_eq!(flaky.len(), 3);
    assert!(
        flaky.iter().all(|s| s.id() == a.id()),
        "same id every attempt"
    );

    let dead_id = bad.id();
    eventually("the 400 is a dead letter", || async {
        gw.admin_json("/queues/wal/dead-letters").await["dead_letters"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == dead_id))
    })
    .await;
    let shown = gw
        .admin_json(&format!("/queues/wal/messages/{dead_id}"))
        .await;
    assert_eq!(shown["body"], "poison", "{shown}");
    assert!(
        shown["reason"].as_str().unwrap_or_default().contains("400"),
        "{shown}"
    );
    eventually("nothing pending, one dead letter", || async {
        let status = gw.admin_json("/queues/wal").await;
        status["pending"] == 0 && status["dead_letters"] == 1 && status["next_id"] == 4
    })
    .await;
    let status = gw.admin_json("/queues/wal").await;
    assert_eq!(status["backend"], "nats");
    assert_eq!(status["counters"]["dead_lettered"], 1, "{status}");

    // Replayed: published again with a new id (and dead-lettered again by the 400).
    let r = gw
        .admin(
            "POST",
            &format!("/queues/wal/dead-letters/{dead_id}/replay"),
        )
        .await;
    assert!(r.status < 300, "{} {}", r.status, r.text());
    eventually("the replay reached the upstream", || async {
        calls.lock().unwrap().get("poison").copied() == Some(2)
    })
    .await;
    let purge = gw.admin("DELETE", "/queues/wal/dead-letters").await;
    assert!(purge.status < 300, "{} {}", purge.status, purge.text());
    eventually("purged", || async {
        gw.admin_json("/queues/wal/dead-letters").await["dead_letters"]
            .as_array()
            .is_some_and(|d| d.is_empty())
    })
    .await;
}

#[tokio::test]
async fn two_gateways_on_one_queue_deliver_every_message_once() {
    let nats = NatsCluster::start(1);
    let up = Upstream::ok();
    let body = queued(up.addr, &nats_queue(&nats.url(0), 1, ""));
    let a = TestGateway::start(&body);
    let b = TestGateway::start(&body);
    eventually("both ready", || async {
        a.post("/wal/warm", "warm-a").await.status == 202
            && b.post("/wal/warm", "warm-b").await.status == 202
    })
    .await;
    let mut sent = HashSet::new();
    for i in 0..200 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let body = format!("m{i}");
        assert_eq!(gw.post("/wal/x", &body).await.status, 202);
        sent.insert(body);
    }
    eventually("all delivered", || async {
        let seen: HashSet<String> = up.seen().iter().map(|s| s.text()).collect();
        sent.iter().all(|m| seen.contains(m))
    })
    .await;
    // Give a duplicate the time to show up, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = up.seen();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in &seen {
        *counts.entry(s.text()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let by_a = a.admin_json("/queues/wal").await["counters"]["delivered"]
        .as_u64()
        .unwrap();
    let by_b = b.admin_json("/queues/wal").await["counters"]["delivered"]
        .as_u64()
        .unwrap();
    assert_eq!(by_a + by_b, seen.len() as u64);
    assert!(by_a > 0 && by_b > 0, "both delivered: {by_a} and {by_b}");
}

#[tokio::test]
async fn engine_down_is_503_with_retry_after_then_recovers() {
    let mut nats = NatsCluster::start(1);
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, &nats_queue(&nats.url(0), 1, "")));
    eventually("ready", || async {
        gw.post("/wal/a", "before").await.status == 202
    })
    .await;

    nats.kill(0);
    let started = Instant::now();
    let down = gw.post("/wal/a", "while down").await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(!down.header("retry-after").is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by the publish timeout: {:?}",
        started.elapsed()
    );

    nats.restart(0);
    eventually("accepted again", || async {
        gw.post("/wal/a", "after").await.status == 202
    })
    .await;
    eventually("delivered after recovery", || async {
        up.seen().iter().any(|s| s.text() == "after")
    })
    .await;
    assert!(up.seen().iter().any(|s| s.text() == "before"));
}

#[tokio::test]
async fn a_full_stream_is_503_until_it_drains() {
    let nats = NatsCluster::start(1);
    let open = Arc::new(AtomicBool::new(false));
    let up = {
        let open = open.clone();
        Upstream::start(move |_, _| {
            if open.load(Ordering::Relaxed) {
                (200, vec![])
            } else {
                (503, vec![])
            }
        })
    };
    let gw = TestGateway::start(&queued(
        up.addr,
        &nats_queue(&nats.url(0), 1, "max_bytes: 65536"),
    ));
    eventually("ready", || async {
        gw.post("/wal/f", "warm").await.status == 202
    })
    .await;
    let pad = "p".repeat(2000);
    let mut acked = 0;
    let mut full = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while full.is_none() && Instant::now() < deadline {
        let a = gw.post("/wal/f", &format!("{acked} {pad}")).await;
        match a.status {
            202 => acked += 1,
            503 => full = Some(a),
            other => panic!("unexpected {other}: {}", a.text()),
        }
    }
    let full = full.expect("the stream filled up");
    assert!(full.text().contains("full"), "{}", full.text());
    assert!(!full.header("retry-after").is_empty());
    assert!(acked > 5, "{acked} accepted before full");

    open.store(true, Ordering::Relaxed);
    eventually("accepted again once drained", || async {
        gw.post("/wal/f", "after").await.status == 202
    })
    .await;
    // What the upstream saw is the proof; the queue's `pending` is a periodic reading of
    // the stream, which can still show the count from before the stream filled.
    eventually("every accepted message delivered", || async {
        let seen: HashSet<String> = up.seen().iter().map(|s| s.text()).collect();
        (0..acked).all(|i| seen.contains(&format!("{i} {pad}"))) && seen.contains("after")
    })
    .await;
    eventually("the stream drained", || async {
        gw.admin_json("/queues/wal").await["pending"] == 0
    })
    .await;
}

#[tokio::test]
async fn nothing_acked_is_lost_when_a_gateway_and_the_stream_leader_are_killed() {
    let mut nats = NatsCluster::start(3);
    let up = Upstream::ok();
    let dir = tempfile::tempdir().unwrap();
    let body = queued(up.addr, &nats_queue(&nats.urls(), 3, ""));
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        config_text(&body).replace("workers: 1", "workers: 2"),
    )
    .unwrap();
    let mut doomed = Process::start(&config);
    let survivor = TestGateway::start(&body);
    eventually("ready", || async {
        survivor.post("/wal/w", "warm").await.status == 202
    })
    .await;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..16 {
        let addr = if c % 2 == 0 {
            doomed.addr
        } else {
            survivor.addr
        };
        let fallback = survivor.addr;
        let (acked, stop) = (acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.ok();
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let body = format!("client {c} message {n}");
                let answer = match conn.as_mut() {
                    Some(conn) => conn
                        .send("POST", "/wal/load", &[], Bytes::from(body.clone()))
                        .await
                        .ok(),
                    None => None,
                };
                match answer {
                    Some(a) if a.status == 202 => {
                        acked.lock().unwrap().insert(body);
                    }
                    // 503 while the stream elects a leader: not acknowledged, try on.
                    Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    // The gateway is gone: go on at the other one.
                    None => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        conn = Conn::open(fallback).await.ok();
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = nats.stream_leader("wal").expect("the stream has a leader");
    nats.kill(leader);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 200, "only {} acknowledged", acked.len());
    eventually("every acknowledged message at the upstream", || async {
        let seen: HashSet<String> = up.seen().iter().map(|s| s.text()).collect();
        acked.iter().all(|m| seen.contains(m))
    })
    .await;
}
