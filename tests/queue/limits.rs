//! Bounds: a full queue refuses new requests with 503 + `Retry-After` and never drops
//! what it acknowledged; a body larger than the queue takes is refused with 413.

use crate::support::{eventually, queued, reserve_port, TestGateway, Upstream};

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_delivers_everything_it_acknowledged() {
    let reserved = reserve_port();
    let addr = reserved.addr;
    let gw = TestGateway::start(&queued(addr, "max_bytes: 65536"));
    let body = "k".repeat(1024);
    let mut acked = Vec::new();
    let refused = loop {
        let a = gw
            .post("/wal/fill", &format!("{}{body}", acked.len()))
            .await;
        match a.status {
            202 => acked.push(a.id()),
            _ => break a,
        }
        assert!(acked.len() < 1000, "never full");
    };

    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.json()["error"], "unavailable");
    assert!(acked.len() > 20, "only {} fit", acked.len());
    let stats = gw.admin_json("/queues/wal").await;
    assert!(stats["bytes_on_disk"].as_u64().unwrap() <= 65536, "{stats}");
    assert_eq!(stats["pending"], acked.len());
    assert_eq!(
        gw.metric("sluicegate_queue_rejected_full_total{queue=\"wal\"}")
            .await,
        Some(1.0)
    );

    let up = Upstream::start_on(reserved, |_, _| (200, vec![]));
    eventually("every acknowledged message delivered", || async {
        let seen = up.seen();
        acked.iter().all(|id| seen.iter().any(|s| s.id() == *id))
    })
    .await;
    // Delivered data is reclaimed: the queue takes requests again.
    eventually("room again", || async {
        gw.post("/wal/fill", &body).await.status == 202
    })
    .await;
}

#[tokio::test]
async fn a_body_larger_than_the_queue_takes_is_413() {
    let up = Upstream::ok();
    let gw = TestGateway::start(&queued(up.addr, "max_bytes: 65536"));

    let a = gw.post("/wal/big", &"b".repeat(40 * 1024)).await;

    assert_eq!(a.status, 413, "{}", a.text());
    assert_eq!(gw.admin_json("/queues/wal").await["pending"], 0);
}

#[tokio::test]
async fn a_queued_route_needs_an_upstream_and_a_queue_name_is_used_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners: [{address: '127.0.0.1:0'}]\nupstreams: [{name: app, targets: ['127.0.0.1:9']}]\nroutes:\n  - name: a\n    queue: {}\n    plugins: [{name: request_termination}]\n  - name: b\n    upstream: app\n    queue: {name: q, retry: {on_status: [700]}}\n  - name: c\n    upstream: app\n    queue: {name: q}\n",
    )
    .unwrap();

    let (code, _, stderr) = crate::support::run_cli(&["check", "-c", path.to_str().unwrap()]);

    assert_eq!(code, 2, "{stderr}");
    for needle in [
        ":5: routes[0].queue: a queued route needs an `upstream`",
        "routes[1].queue.retry.on_status[0]",
        "routes[2].queue.name: queue `q` is already used",
    ] {
        assert!(stderr.contains(needle), "no `{needle}` in:\n{stderr}");
    }
}
