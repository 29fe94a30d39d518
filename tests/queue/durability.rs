//! Nothing acknowledged is lost: across a clean restart, and across kill -9 of the real
//! binary in the middle of a load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::support::{
    config_text, eventually, metric, queued, reserve_port, send, Conn, Process, TestGateway,
    Upstream,
};

#[tokio::test]
async fn acknowledged_messages_wait_through_a_restart_and_keep_their_attempt_count() {
    let reserved = reserve_port();
    let addr = reserved.addr;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut gw = TestGateway::start_in(dir.clone(), &queued(addr, ""));
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(gw.post("/wal/r", &format!("m{i}")).await.id());
    }
    // Let the head fail a few times against the closed port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop();

    let up = Upstream::start_on(reserved, |_, _| (200, vec![]));
    let gw = TestGateway::start_in(dir, &queued(addr, ""));

    let seen = up.wait_for(10).await;
    for (i, id) in ids.iter().enumerate() {
        let s = seen.iter().find(|s| s.id() == *id).expect("delivered");
        assert_eq!(s.text(), format!("m{i}"));
    }
    assert!(
        seen[0].attempt() > 2,
        "attempts continue after a restart: {}",
        seen[0].attempt()
    );
    eventually("drained", || async {
        gw.admin_json("/queues/wal").await["pending"] == 0
    })
    .await;
}

/// Writes the config for the binary and returns its path.
fn binary_config(
    dir: &std::path::Path,
    upstream: std::net::SocketAddr,
    queue_extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("sluicegate.yaml");
    std::fs::write(
        &path,
        config_text(&queued(upstream, queue_extra)).replace("workers: 1", "workers: 2"),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn no_acknowledged_message_is_lost_when_the_gateway_is_killed_mid_load() {
    // A slowish upstream so that a backlog builds up while clients keep sending.
    let up = Upstream::start(|_, _| {
        std::thread::sleep(Duration::from_micros(300));
        (200, vec![])
    });
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), up.addr, "");
    let mut gateway = Process::start(&config);

    let acked: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), gateway.addr);
        clients.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(addr).await else {
                return;
            };
            let pad = "x".repeat(200);
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let body = format!("client {c} message {n} {pad}");
                match conn
                    .send("POST", "/wal/load", &[], Bytes::from(body.clone()))
                    .await
                {
                    Ok(a) if a.status == 202 => {
                        acked.lock().unwrap().insert(a.id(), body);
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    gateway.kill9();

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let acked = acked.lock().unwrap().clone();
    let delivered_before = up.count();
    assert!(
        acked.len() > 100,
        "only {} acknowledged before the kill",
        acked.len()
    );
    let restarted = Process::start(&config);

    eventually("every acknowledged message at the upstream", || async {
        let seen = up.seen();
        acked.keys().all(|id| seen.iter().any(|s| s.id() == *id))
    })
    .await;
    let seen = up.seen();
    for s in &seen {
        if let Some(body) = acked.get(&s.id()) {
            assert_eq!(
                &s.text(),
                body,
                "message {} delivered with another body",
                s.id()
            );
        }
    }
    let metrics = send(restarted.admin, "GET", "/metrics", &[], "")
        .await
        .text();
    let duplicates = metric(
        &metrics,
        "sluicegate_queue_duplicates_after_recovery_total{queue=\"wal\"}",
    )
    .unwrap();
    eprintln!(
        "acknowledged {} before kill -9; {} delivered before the kill; {} deliveries in all; {} counted as duplicates after recovery",
        acked.len(),
        delivered_before,
        seen.len(),
        duplicates
    );
}

#[tokio::test]
async fn a_message_in_flight_at_a_kill_is_delivered_again_and_counted_as_a_duplicate() {
    // The first delivery reaches the upstream, which holds it while the gateway dies.
    let up = Upstream::start(|_, n| {
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        (200, vec![])
    });
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), up.addr, "");
    let mut gateway = Process::start(&config);
    let id = send(gateway.addr, "POST", "/wal/once", &[], "exactly once?")
        .await
        .id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.kill9();

    let restarted = Process::start(&config);

    let seen = up.wait_for(2).await;
    assert!(seen
        .iter()
        .all(|s| s.id() == id && s.text() == "exactly once?"));
    assert_eq!(
        seen.iter().map(|s| s.attempt()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    eventually("the duplicate counted", || async {
        let text = send(restarted.admin, "GET", "/metrics", &[], "")
            .await
            .text();
        metric(
            &text,
            "sluicegate_queue_duplicates_after_recovery_total{queue=\"wal\"}",
        ) == Some(1.0)
    })
    .await;
}
