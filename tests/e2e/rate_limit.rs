//! The `rate_limit` plugin end to end: per-key limits and headers on real responses,
//! counts kept across a reload, two gateways sharing one count through a real Redis, and
//! Redis killed and back under both failure policies.

use std::time::Duration;

use sluicegate_testkit::redis::RedisServer;

use crate::support::client::{request, send};
use crate::support::{Config, TestGateway, Upstream};

fn limited(limits: &str, extra: &str) -> Config {
    Config::new(&format!(
        r#"
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: api
    match: {{paths: /api/}}
    upstream: app
    plugins:
      - name: rate_limit
        config:
          limits: {limits}
{extra}
  - name: other
    upstream: app
"#
    ))
}

async fn get_as(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> crate::support::client::Reply {
    let mut b = request("GET", path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        gw.addr,
        b.body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await
}

async fn statuses(gw: &TestGateway, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_as(gw, path, headers).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn limits_hold_per_key_with_headers_on_every_answer() {
    let up = Upstream::echo();
    let gw = limited(
        "[{rate: 3, per: minute}]",
        "          key: {header: X-Tenant}",
    )
    .var("app", up.addr())
    .start();
    let first = get_as(&gw, "/api/x", &[("x-tenant", "a")]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-limit"), "3");
    assert_eq!(first.header("ratelimit-remaining"), "2");
    assert_eq!(first.header("ratelimit-reset"), "20");
    assert_eq!(first.header("ratelimit-policy"), "3;w=60");
    assert_eq!(
        statuses(&gw, "/api/x", &[("x-tenant", "a")], 3).await,
        [200, 200, 429]
    );
    let refused = get_as(&gw, "/api/x", &[("x-tenant", "a")]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "20");
    assert_eq!(refused.header("ratelimit-remaining"), "0");
    assert_eq!(refused.header("content-type"), "application/json");
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], refused.header("x-request-id"));
    // Another tenant, and another route, count apart; nothing refused reached the upstream.
    assert_eq!(
        statuses(&gw, "/api/x", &[("x-tenant", "b")], 3).await,
        [200, 200, 200]
    );
    assert_eq!(
        statuses(&gw, "/elsewhere", &[("x-tenant", "a")], 5).await,
        [200; 5]
    );
    assert_eq!(up.requests().len(), 3 + 3 + 5);
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics
            .contains("sluicegate_rate_limit_decisions_total{bucket=\"api\",result=\"limited\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("sluicegate_requests_total{route=\"api\",status=\"429\"} 2"));
}

#[tokio::test]
async fn the_client_address_counts_across_workers_and_survives_a_reload() {
    let up = Upstream::echo();
    let config = |rate: u32| {
        limited(
            &format!("[{{rate: {rate}, per: hour}}]"),
            "          bucket: reload-test",
        )
        .var("app", up.addr())
        .workers(2)
    };
    let gw = config(4).start();
    // Separate connections land on either worker: one count for the node.
    assert_eq!(statuses(&gw, "/api/", &[], 3).await, [200, 200, 200]);
    gw.rewrite_config(&config(4));
    let reply = gw.admin_post("/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(statuses(&gw, "/api/", &[], 3).await, [200, 429, 429]);
    // A reload that changes the limit starts a new count.
    gw.rewrite_config(&config(5));
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(
        statuses(&gw, "/api/", &[], 6).await,
        [200, 200, 200, 200, 200, 429]
    );
}

fn redis_config(url: &str, on_error: &str, bucket: &str) -> Config {
    limited(
        "[{rate: 5, per: minute}]",
        &format!(
            "          bucket: {bucket}\n          redis: {{url: '{url}', timeout_ms: 300, backoff_ms: 200, on_error: {on_error}}}"
        ),
    )
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_the_count() {
    let redis = RedisServer::start();
    let up = Upstream::echo();
    let a = redis_config(&redis.url(), "fail_open", "shared")
        .var("app", up.addr())
        .start();
    let b = redis_config(&redis.url(), "fail_open", "shared")
        .var("app", up.addr())
        .start();
    let mut seen = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = get_as(gw, "/api/", &[]).await;
        seen.push((
            r.status.as_u16(),
            r.header("ratelimit-remaining").to_string(),
        ));
    }
    let expected: Vec<(u16, String)> = [
        (200, "4"),
        (200, "3"),
        (200, "2"),
        (200, "1"),
        (200, "0"),
        (429, "0"),
        (429, "0"),
        (429, "0"),
    ]
    .iter()
    .map(|(s, r)| (*s, r.to_string()))
    .collect();
    assert_eq!(seen, expected);
    let keys = redis.command(&["KEYS", "sluicegate:rl:*"]);
    assert!(
        keys.contains("sluicegate:rl:{bucket:shared|client_ip|ip:127.0.0.1}:5/minute"),
        "{keys}"
    );
}

#[tokio::test]
async fn redis_down_fails_open_or_closed_and_recovers() {
    let mut redis = RedisServer::start();
    let up = Upstream::echo();
    let open = redis_config(&redis.url(), "fail_open", "down-open")
        .var("app", up.addr())
        .start();
    let closed = redis_config(&redis.url(), "fail_closed", "down-closed")
        .var("app", up.addr())
        .start();
    assert_eq!(
        get_as(&open, "/api/", &[])
            .await
            .header("ratelimit-remaining"),
        "4"
    );
    assert_eq!(
        get_as(&closed, "/api/", &[])
            .await
            .header("ratelimit-remaining"),
        "4"
    );

    redis.kill();
    // fail_open: through, unchecked (no headers); well beyond the limit.
    for _ in 0..8 {
        let r = get_as(&open, "/api/", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-remaining"), "");
    }
    // fail_closed: 503 with the usual JSON error and Retry-After.
    let r = get_as(&closed, "/api/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "unavailable");
    assert_eq!(r.header("retry-after"), "1");
    let metrics = open.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(
            "sluicegate_rate_limit_decisions_total{bucket=\"down-open\",result=\"failed_open\"} 8"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("sluicegate_rate_limit_store_errors_total{bucket=\"down-open\","));

    redis.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Back: counting again (Redis kept nothing: it runs without persistence here).
    let r = get_as(&closed, "/api/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-remaining"), "4");
    assert_eq!(
        get_as(&open, "/api/", &[])
            .await
            .header("ratelimit-remaining"),
        "4"
    );
}
