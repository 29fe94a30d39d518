//! The `pubsub` backend and its push playback against Google's Pub/Sub emulator (started by
//! the test support; the topic and the push subscription are created through its REST
//! API): `/wal/` → emulator → push → `/wal-playback` → upstream, retried by Pub/Sub while
//! the upstream answers 500, the body and headers intact; a 4xx kept as a dead letter on
//! the gateway and replayed; the envelope as published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluicegate_testkit::pubsub::PubSubEmulator;

use crate::support::{eventually, send, TestGateway, Upstream};

fn config(upstream: std::net::SocketAddr, emulator: &str, topic: &str) -> String {
    format!(
        r#"upstreams:
  - name: app
    targets: ["{upstream}"]
    connect_timeout_ms: 500
    read_timeout_ms: 5000
routes:
  - name: wal
    match: {{paths: /wal/}}
    upstream: app
    rewrite: {{strip_prefix: /wal}}
    queue:
      name: wal
      backend: pubsub
      pubsub: {{project: test, topic: {topic}, emulator_host: "{emulator}", publish_timeout_ms: 3000}}
  - name: playback
    match: {{paths: /wal-playback}}
    plugins:
      - {{name: pubsub_push, config: {{queue: wal, verify: false}}}}
"#
    )
}

#[tokio::test]
async fn published_pushed_retried_and_delivered_intact() {
    let emulator = PubSubEmulator::start();
    emulator.create_topic("test", "wal");
    emulator.create_pull_subscription("test", "wal", "tap");
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let up = {
        let calls = calls.clone();
        Upstream::start(move |seen, _| {
            let mut c = calls.lock().unwrap();
            let n = c.entry(seen.target.clone()).or_default();
            *n += 1;
            match seen.target.as_str() {
                "/flaky?x=1" if *n <= 2 => (500, vec![]),
                "/poison" => (400, vec![]),
                _ => (200, vec![]),
            }
        })
    };
    let gw = TestGateway::start(&config(up.addr, &emulator.host(), "wal"));

    // Published: the ack comes with Pub/Sub's message id; the envelope is as documented.
    let a = send(
        gw.addr,
        "POST",
        "/wal/flaky?x=1",
        &[("content-type", "text/plain"), ("x-custom", "kept")],
        "the body \u{e9}",
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let ack = a.json();
    assert_eq!(
        ack["durability"], "held by the Pub/Sub emulator (in its memory)",
        "the emulator is no durable store: {ack}"
    );
    let tapped = emulator.pull("test", "tap", 10);
    assert_eq!(tapped.len(), 1, "{tapped:?}");
    let m = &tapped[0];
    assert_eq!(m["messageId"].as_str().unwrap(), ack["id"].to_string());
    assert_eq!(m["attributes"]["sluicegate_method"], "POST");
    assert_eq!(m["attributes"]["sluicegate_uri"], "/wal/flaky?x=1");
    assert_eq!(m["attributes"]["sluicegate_queue"], "wal");
    assert_eq!(
        m["data_bytes"],
        serde_json::json!("the body \u{e9}".as_bytes())
    );

    // Now the push subscription plays them back.
    emulator.create_push_subscription(
        "test",
        "wal",
        "push",
        &format!("http://{}/wal-playback", gw.addr),
        10,
    );
    let b = send(
        gw.addr,
        "POST",
        "/wal/flaky?x=1",
        &[("x-custom", "kept")],
        "second",
    )
    .await;
    assert_eq!(b.status, 202);
    eventually("the flaky one delivered after two 500s", || async {
        up.seen().iter().filter(|s| s.text() == "second").count() == 3
    })
    .await;
    let delivered = up
        .seen()
        .into_iter()
        .filter(|s| s.text() == "second")
        .last()
        .unwrap();
    assert_eq!(
        delivered.target, "/flaky?x=1",
        "prefix stripped, query kept"
    );
    assert_eq!(delivered.header("x-custom"), "kept");
    assert!(!delivered.header("x-forwarded-for").is_empty());

    // A 4xx: a dead letter on the gateway, answered 204 (Pub/Sub does not retry it).
    let p = send(gw.addr, "POST", "/wal/poison", &[], "poison").await;
    assert_eq!(p.status, 202);
    eventually("the poison message is a dead letter", || async {
        gw.admin_json("/queues/wal/dead-letters").await["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        calls.lock().unwrap().get("/poison").copied(),
        Some(1),
        "not retried"
    );
    let dead = gw.admin_json("/queues/wal/dead-letters").await;
    let id = dead["dead_letters"][0]["id"].as_u64().unwrap();
    let shown = gw.admin_json(&format!("/queues/wal/messages/{id}")).await;
    assert_eq!(shown["body"], "poison", "{shown}");
    assert!(shown["reason"].as_str().unwrap().contains("400"), "{shown}");

    // Replayed: published again (and dead again), out of the local log meanwhile.
    let r = gw
        .admin("POST", &format!("/queues/wal/dead-letters/{id}/replay"))
        .await;
    assert!(r.status < 300, "{} {}", r.status, r.text());
    eventually("the replay was pushed again", || async {
        calls.lock().unwrap().get("/poison").copied() == Some(2)
    })
    .await;

    // Not a push: 400 and no upstream call.
    let before = up.count();
    let n = send(gw.addr, "POST", "/wal-playback", &[], "{\"a\":1}").await;
    assert_eq!(n.status, 400, "{}", n.text());
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn a_missing_topic_and_an_unreachable_emulator_are_clear_errors() {
    let emulator = PubSubEmulator::start();
    let up = Upstream::ok();
    let gw = TestGateway::start(&config(up.addr, &emulator.host(), "nope"));
    let a = gw.post("/wal/x", "body").await;
    assert_eq!(a.status, 503, "{}", a.text());
    drop(gw);

    let port = sluicegate_testkit::free_port();
    let gw = TestGateway::start(&config(up.addr, &format!("127.0.0.1:{port}"), "wal"));
    let started = std::time::Instant::now();
    let a = gw.post("/wal/x", "body").await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(!a.header("retry-after").is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}
