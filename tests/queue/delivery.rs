//! Delivery: what the upstream receives, retries and dead letters, ordering.

use std::time::{Duration, Instant};

use crate::support::{eventually, queued, reserve_port, TestGateway, Upstream};

#[tokio::test]
async fn acknowledges_with_the_message_id_and_delivers_with_the_prefix_stripped() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, ""));

    let ack = gw
        .post("/wal/hooks/slack?team=T1", "{\"text\":\"hi\"}")
        .await;

    assert_eq!(ack.status, 202, "{}", ack.text());
    let body = ack.json();
    let id = body["id"].as_u64().unwrap();
    assert_eq!(ack.id(), id);
    assert_eq!(body["queue"], "wal");
    let seen = up.wait_for(1).await;
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.target, "/hooks/slack?team=T1");
    assert_eq!(s.text(), "{\"text\":\"hi\"}");
    assert_eq!(s.id(), id);
    assert_eq!(s.attempt(), 1);
    assert_eq!(s.header("x-sluicegate-queue"), "wal");
    assert_eq!(s.header("x-request-id"), ack.header("x-request-id"));
    assert_eq!(s.header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(s.header("content-length"), "13");
}

#[tokio::test]
async fn a_slack_style_ack_is_an_empty_200_with_configured_headers() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(
        up.addr,
        "ack: {status: 200, body: '', headers: {X-Slack-No-Retry: '1'}}",
    ));

    let ack = gw.post("/wal/slack", "payload=x").await;

    assert_eq!(ack.status, 200);
    assert!(ack.body.is_empty());
    assert_eq!(ack.header("x-slack-no-retry"), "1");
    up.wait_for(1).await;
}

#[tokio::test]
async fn every_message_arrives_once_the_upstream_comes_up() {
    let reserved = reserve_port();
    let addr = reserved.addr;
    let gw = TestGateway::start(&queued(addr, ""));
    let mut ids = Vec::new();
    for i in 0..20 {
        let ack = gw.post(&format!("/wal/m/{i}"), &format!("body {i}")).await;
        assert_eq!(ack.status, 202);
        ids.push(ack.id());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let up = Upstream::start_on(reserved, |_, _| (200, vec![]));

    let seen = up.wait_for(20).await;
    for (i, id) in ids.iter().enumerate() {
        let s = seen
            .iter()
            .find(|s| s.id() == *id)
            .unwrap_or_else(|| panic!("message {id} never arrived"));
        assert_eq!(s.text(), format!("body {i}"));
        assert_eq!(s.target, format!("/m/{i}"));
    }
    // They were tried while the upstream was down.
    assert!(
        seen[0].attempt() > 1,
        "first delivery was attempt {}",
        seen[0].attempt()
    );
    eventually("the queue to drain", || async {
        gw.admin_json("/queues/wal").await["pending"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_500_is_retried_with_the_same_message_id_and_growing_attempt_numbers() {
    let up = Upstream::start(|_, n| if n < 2 { (500, vec![]) } else { (200, vec![]) });
    let gw = TestGateway::start(&queued(up.addr, ""));

    let id = gw.post("/wal/x", "retry me").await.id();

    let seen = up.wait_for(3).await;
    assert!(seen.iter().all(|s| s.id() == id && s.text() == "retry me"));
    assert_eq!(
        seen.iter().map(|s| s.attempt()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    eventually("delivered counted", || async {
        gw.metric("sluicegate_queue_delivered_total{queue=\"wal\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert_eq!(
        gw.metric("sluicegate_queue_retried_total{queue=\"wal\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_429_waits_at_least_its_retry_after() {
    let up = Upstream::start(|_, n| {
        if n == 0 {
            (429, vec![("retry-after", "1".into())])
        } else {
            (200, vec![])
        }
    });
    let gw = TestGateway::start(&queued(up.addr, ""));

    let started = Instant::now();
    gw.post("/wal/x", "slow down").await;
    up.wait_for(2).await;

    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "retried after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_400_goes_straight_to_the_dead_letters_with_its_reason() {
    let up = Upstream::start(|_, _| (400, vec![]));
    let gw = TestGateway::start(&queued(up.addr, ""));

    let id = gw.post("/wal/x", "bad one").await.id();

    eventually("a dead letter", || async {
        gw.admin_json("/queues/wal").await["dead_letters"] == 1
    })
    .await;
    assert_eq!(up.count(), 1, "a 400 is not retried");
    let dead = gw.admin_json("/queues/wal/dead-letters").await;
    assert_eq!(dead["dead_letters"][0]["id"], id);
    let reason = dead["dead_letters"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("400"), "{reason}");
    assert_eq!(gw.admin_json("/queues/wal").await["pending"], 0);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let up = Upstream::start(|_, _| (503, vec![]));
    let gw = TestGateway::start(&queued(
        up.addr,
        "retry: {max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 20}",
    ));

    gw.post("/wal/x", "never").await;

    eventually("a dead letter", || async {
        gw.admin_json("/queues/wal").await["dead_letters"] == 1
    })
    .await;
    assert_eq!(up.count(), 3);
    let dead = gw.admin_json("/queues/wal/dead-letters").await;
    let reason = dead["dead_letters"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("3 attempts") && reason.contains("503"),
        "{reason}"
    );
}

#[tokio::test]
async fn fifo_delivery_keeps_the_order_even_across_a_failing_head() {
    // The first message fails twice; nothing behind it may overtake it.
    let up = Upstream::start(|s, _| {
        if s.text() == "0" && s.attempt() < 3 {
            (500, vec![])
        } else {
            (200, vec![])
        }
    });
    let gw = TestGateway::start(&queued(up.addr, ""));
    for i in 0..30 {
        assert_eq!(gw.post("/wal/x", &i.to_string()).await.status, 202);
    }

    let seen = up.wait_for(32).await;

    let delivered: Vec<String> = seen.iter().map(|s| s.text()).filter(|t| t != "0").collect();
    assert_eq!(
        delivered,
        (1..30).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(
        seen[..3].iter().all(|s| s.text() == "0"),
        "the head was retried first: {:?}",
        seen.iter().map(|s| s.text()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn unordered_delivery_lets_others_pass_a_failing_message() {
    let up = Upstream::start(|s, _| {
        if s.text() == "stuck" {
            (500, vec![])
        } else {
            (200, vec![])
        }
    });
    let gw = TestGateway::start(&queued(up.addr, "ordering: unordered\nconcurrency: 4\nretry: {initial_backoff_ms: 500, max_backoff_ms: 1000}"));
    gw.post("/wal/x", "stuck").await;
    for i in 0..10 {
        gw.post("/wal/x", &i.to_string()).await;
    }

    eventually("the ten others delivered", || async {
        up.seen().iter().filter(|s| s.text() != "stuck").count() == 10
    })
    .await;
    eventually("only the stuck one pending", || async {
        gw.admin_json("/queues/wal").await["pending"] == 1
    })
    .await;
    assert!(up.seen().iter().filter(|s| s.text() == "stuck").count() >= 1);
}

#[tokio::test]
async fn rewrite_and_access_plugins_run_before_the_request_is_queued() {
    let up = Upstream::ok();
    let body = format!(
        r#"
upstreams:
  - name: app
    targets: ["{}"]
routes:
  - name: denied
    match: {{paths: "= /wal/denied"}}
    upstream: app
    queue: {{}}
    plugins:
      - name: request_termination
        config: {{status: 403, body: no}}
  - name: wal
    match: {{paths: /wal/}}
    upstream: app
    rewrite: {{strip_prefix: /wal}}
    queue: {{retry: {{initial_backoff_ms: 20}}}}
    plugins:
      - name: headers
        config: {{request: {{set: {{X-Verified: "yes"}}, remove: [X-Secret]}}}}
"#,
        up.addr
    );
    let gw = TestGateway::start(&body);

    let denied = gw.post("/wal/denied", "x").await;
    let ok = crate::support::send(gw.addr, "POST", "/wal/in", &[("x-secret", "s3cret")], "y").await;

    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(ok.status, 202, "{}", ok.text());
    let seen = up.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.count(), 1, "the denied request was not queued");
    assert_eq!(seen[0].header("x-verified"), "yes");
    assert_eq!(seen[0].header("x-secret"), "");
    assert_eq!(
        gw.admin_json("/queues/denied").await["enqueued"],
        serde_json::Value::Null
    );
    assert_eq!(
        gw.admin_json("/queues/denied").await["counters"]["enqueued"],
        0
    );
}
