//! Operating the queues: the admin API, `/metrics`, replay and purge, `sluicegate wal`
//! on a stopped gateway and through the admin API, reloads, and the Rust API behind Lua's
//! `sluicegate.queue.enqueue`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluicegate_queue::{QueueError, QueuedRequest};

use crate::support::{eventually, queued, run_cli, TestGateway, Upstream};

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_delivered() {
    let accept = Arc::new(AtomicBool::new(false));
    let flag = accept.clone();
    let up = Upstream::start(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            (200, vec![])
        } else {
            (422, vec![])
        }
    });
    let gw = TestGateway::start(&queued(up.addr, ""));
    let first = gw.post("/wal/a?x=1", "first").await.id();
    let second = gw.post("/wal/b", "second").await.id();
    let third = gw.post("/wal/c", "third").await.id();
    eventually("three dead letters", || async {
        gw.admin_json("/queues/wal").await["dead_letters"] == 3
    })
    .await;

    let shown = gw
        .admin_json(&format!("/queues/wal/messages/{first}"))
        .await;
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["body"], "first");
    assert_eq!(shown["target"], "/wal/a?x=1");
    assert!(shown["reason"].as_str().unwrap().contains("422"));
    accept.store(true, Ordering::SeqCst);

    let one = gw
        .admin("POST", &format!("/queues/wal/dead-letters/{first}/replay"))
        .await;
    assert_eq!(one.status, 200, "{}", one.text());
    let new_id = one.json()["replayed"][0]["new_id"].as_u64().unwrap();
    assert!(new_id > third);
    eventually("the replayed message delivered", || async {
        up.seen()
            .iter()
            .any(|s| s.id() == new_id && s.text() == "first")
    })
    .await;

    let all = gw
        .admin("POST", "/queues/wal/dead-letters/replay")
        .await
        .json();
    assert_eq!(all["replayed"].as_array().unwrap().len(), 2);
    eventually("all delivered", || async {
        let bodies: Vec<String> = up
            .seen()
            .iter()
            .filter(|s| s.attempt() == 1 && s.id() > third)
            .map(|s| s.text())
            .collect();
        bodies.contains(&"second".to_string()) && bodies.contains(&"third".to_string())
    })
    .await;
    eventually("acked", || async {
        let stats = gw.admin_json("/queues/wal").await;
        stats["pending"] == 0 && stats["counters"]["delivered"] == 3
    })
    .await;
    let stats = gw.admin_json("/queues/wal").await;
    assert_eq!(stats["dead_letters"], 0);
    assert_eq!(stats["counters"]["dead_lettered"], 3);
    let missing = gw
        .admin("POST", &format!("/queues/wal/dead-letters/{second}/replay"))
        .await;
    assert_eq!(missing.status, 409, "{}", missing.text());
    assert_eq!(gw.admin("GET", "/queues/nope").await.status, 404);
}

#[tokio::test]
async fn metrics_cover_depth_age_bytes_counters_and_latencies() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, ""));
    gw.post("/wal/m", "x").await;
    up.wait_for(1).await;

    eventually("delivered counted", || async {
        gw.metric("sluicegate_queue_delivered_total{queue=\"wal\"}")
            .await
            == Some(1.0)
    })
    .await;
    let text = gw.admin("GET", "/metrics").await.text();
    for series in [
        "sluicegate_queue_depth{queue=\"wal\"}",
        "sluicegate_queue_oldest_message_age_seconds{queue=\"wal\"}",
        "sluicegate_queue_bytes{queue=\"wal\"}",
        "sluicegate_queue_dead_letters{queue=\"wal\"}",
        "sluicegate_queue_enqueued_total{queue=\"wal\"}",
        "sluicegate_queue_retried_total{queue=\"wal\"}",
        "sluicegate_queue_dead_lettered_total{queue=\"wal\"}",
        "sluicegate_queue_duplicates_after_recovery_total{queue=\"wal\"}",
        "sluicegate_queue_ack_latency_seconds_count{queue=\"wal\"}",
        "sluicegate_queue_delivery_latency_seconds_count{queue=\"wal\"}",
    ] {
        assert!(
            crate::support::metric(&text, series).is_some(),
            "no {series} in:\n{text}"
        );
    }
    assert_eq!(
        crate::support::metric(
            &text,
            "sluicegate_queue_ack_latency_seconds_count{queue=\"wal\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        crate::support::metric(&text, "sluicegate_queue_enqueued_total{queue=\"wal\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_wal_command_inspects_and_repairs_a_stopped_gateways_queue() {
    let up = Upstream::start(|_, _| (400, vec![]));
    let mut gw = TestGateway::start(&queued(up.addr, ""));
    let id = gw.post("/wal/cli", "from the cli test").await.id();
    eventually("a dead letter", || async {
        gw.admin_json("/queues/wal").await["dead_letters"] == 1
    })
    .await;
    let data = gw.data_dir();
    let data = data.to_str().unwrap();

    // While it runs, the data directory is locked.
    let (code, _, stderr) = run_cli(&["wal", "--data-dir", data, "dead-letters"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    // ... and the admin API answers instead.
    let admin = gw.admin.to_string();
    let (code, out, stderr) = run_cli(&["wal", "--admin", &admin, "dead-letters"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("\"reason\""), "{out}");

    gw.stop();

    let (code, out, stderr) = run_cli(&["wal", "--data-dir", data, "stats"]);
    assert_eq!(code, 0, "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["queues"][0]["name"], "wal");
    assert_eq!(stats["queues"][0]["dead_letters"], 1);
    let (code, out, _) = run_cli(&["wal", "--data-dir", data, "show", &id.to_string()]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["body"], "from the cli test");
    assert_eq!(shown["state"], "dead");
    let (code, out, _) = run_cli(&[
        "wal",
        "--data-dir",
        data,
        "-q",
        "wal",
        "replay",
        &id.to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    let replayed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_id = replayed["replayed"][0]["new_id"].as_u64().unwrap();
    let (code, out, _) = run_cli(&["wal", "--data-dir", data, "list"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["messages"][0]["id"], new_id);
    assert_eq!(listed["messages"][0]["target"], "/wal/cli");
    let (code, _, stderr) = run_cli(&["wal", "--data-dir", data, "show", "999999"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no message 999999"), "{stderr}");
    let (code, _, _) = run_cli(&["wal", "--data-dir", data, "replay"]);
    assert_eq!(code, 2, "replay needs an id or --all-dead");

    // The replayed message goes out when the gateway is back, to an upstream that takes it.
    let ok = Upstream::ok();
    let gw = TestGateway::start_in(gw.dir.clone(), &queued(ok.addr, ""));
    let seen = ok.wait_for(1).await;
    assert_eq!(seen[0].id(), new_id);
    assert_eq!(seen[0].text(), "from the cli test");
    drop(gw);
}

#[tokio::test]
async fn replay_all_and_purge_work_offline_too() {
    let up = Upstream::start(|_, _| (404, vec![]));
    let mut gw = TestGateway::start(&queued(up.addr, ""));
    for i in 0..3 {
        gw.post("/wal/p", &i.to_string()).await;
    }
    eventually("three dead letters", || async {
        gw.admin_json("/queues/wal").await["dead_letters"] == 3
    })
    .await;
    gw.stop();
    let data = gw.data_dir();
    let data = data.to_str().unwrap();

    let (code, out, _) = run_cli(&["wal", "--data-dir", data, "replay", "--all-dead"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replayed"].as_array().unwrap().len(), 3);
    let (_, out, _) = run_cli(&["wal", "--data-dir", data, "stats"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["queues"][0]["pending"], 3);
    assert_eq!(v["queues"][0]["dead_letters"], 0);

    // Back to dead letters (the upstream still says 404), then purged through the API.
    let gw = TestGateway::start_in(gw.dir.clone(), &queued(up.addr, ""));
    eventually("three dead letters again", || async {
        gw.admin_json("/queues/wal").await["dead_letters"] == 3
    })
    .await;
    let purged = gw.admin("DELETE", "/queues/wal/dead-letters").await;
    assert_eq!(purged.json()["purged"], 3);
    assert_eq!(
        gw.admin_json("/queues/wal/dead-letters").await["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn a_reload_opens_a_new_queue_and_applies_new_delivery_settings_live() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, ""));
    assert_eq!(
        gw.admin_json("/queues/wal").await["settings"]["concurrency"],
        1
    );
    let more = format!(
        "{}  - name: audit\n    match: {{paths: /audit/}}\n    upstream: app\n    queue: {{ordering: unordered}}\n",
        queued(up.addr, "concurrency: 8\nretry: {initial_backoff_ms: 20, max_backoff_ms: 200, max_attempts: 4}")
    );
    gw.rewrite(&more);

    let reloaded = gw.admin("POST", "/reload").await;

    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let wal = gw.admin_json("/queues/wal").await;
    assert_eq!(wal["settings"]["concurrency"], 8);
    assert_eq!(wal["settings"]["retry"]["max_attempts"], 4);
    let ack = gw.post("/audit/x", "audited").await;
    assert_eq!(ack.status, 202, "{}", ack.text());
    let seen = up.wait_for(1).await;
    assert_eq!(seen[0].header("x-sluicegate-queue"), "audit");
    assert_eq!(seen[0].target, "/audit/x");
    let queues = gw.admin_json("/queues").await;
    assert_eq!(queues["queues"].as_array().unwrap().len(), 2);
    assert!(gw.data_dir().join("queues/audit").is_dir());

    // Dropping the route pauses its queue; requests to it no longer match.
    gw.rewrite(&queued(up.addr, ""));
    assert_eq!(gw.admin("POST", "/reload").await.status, 200);
    assert_eq!(gw.admin_json("/queues/audit").await["configured"], false);
    assert_eq!(gw.post("/audit/x", "gone").await.status, 404);
}

#[tokio::test]
async fn the_rust_api_behind_lua_enqueues_and_returns_the_id_once_durable() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, ""));
    let queues = gw.shared().queues();
    let mut req = QueuedRequest::new(http::Method::PUT, "/wal/from-lua?k=v");
    req.headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    req.body = bytes::Bytes::from_static(b"{\"lua\":true}");

    let id = queues.enqueue("wal", req).await.unwrap();

    let seen = up.wait_for(1).await;
    assert_eq!(seen[0].id(), id);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].target, "/from-lua?k=v");
    assert_eq!(seen[0].header("content-type"), "application/json");
    let unknown = queues
        .enqueue("nope", QueuedRequest::new(http::Method::POST, "/"))
        .await;
    assert!(
        matches!(unknown, Err(QueueError::Unknown(_))),
        "{unknown:?}"
    );
    let invalid = queues
        .enqueue("wal", QueuedRequest::new(http::Method::POST, "no-slash"))
        .await;
    assert!(
        matches!(invalid, Err(QueueError::Invalid { .. })),
        "{invalid:?}"
    );
}

#[tokio::test]
async fn a_reload_whose_new_queue_cannot_be_opened_is_rejected_and_the_old_config_keeps_serving() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, ""));
    // A file where the new queue's directory would go.
    std::fs::write(gw.data_dir().join("queues/blocked"), "not a directory").unwrap();
    gw.rewrite(&format!(
        "{}  - name: blocked\n    match: {{paths: /blocked/}}\n    upstream: app\n    queue: {{}}\n",
        queued(up.addr, "")
    ));

    let reloaded = gw.admin("POST", "/reload").await;

    assert_eq!(reloaded.status, 422, "{}", reloaded.text());
    assert!(
        reloaded
            .text()
            .contains("routes[1].queue: cannot open the queue"),
        "{}",
        reloaded.text()
    );
    assert_eq!(gw.post("/blocked/x", "x").await.status, 404);
    assert_eq!(gw.post("/wal/x", "still queued").await.status, 202);
    up.wait_for(1).await;
}
