//! The admin API (status, health, metrics, reload) and the access log.

use bytes::Bytes;

use crate::support::client::{full, Raw};
use crate::support::{eventually, metric, request, send, Config, Upstream};

fn routes_a_only(up: &Upstream) -> Config {
    Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - {name: a, match: {paths: /a}, upstream: app}
"#,
    )
    .var("app", up.addr())
}

fn routes_a_and_b(up: &Upstream) -> Config {
    Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - {name: a, match: {paths: /a}, upstream: app}
  - name: b
    match: {paths: /b}
    plugins: [{name: request_termination, config: {status: 200, body: route b is live}}]
"#,
    )
    .var("app", up.addr())
}

#[tokio::test]
async fn status_reports_version_uptime_config_version_and_workers() {
    let up = Upstream::echo();
    let gw = routes_a_only(&up).workers(2).start();
    let reply = gw.admin_get("/status").await;

    assert_eq!(reply.status, 200);
    let status = reply.json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64(), "{status}");
    assert_eq!(status["config"]["version"], 1);
    assert_eq!(
        status["config"]["source"],
        gw.config_path.display().to_string()
    );
    assert_eq!(status["workers"], 2);
    assert_eq!(status["routes"][0]["name"], "a");
    assert_eq!(
        status["upstreams"][0]["targets"][0]["address"],
        up.addr().to_string()
    );
}

#[tokio::test]
async fn healthz_answers_ok_and_unknown_admin_paths_answer_404_json() {
    let up = Upstream::echo();
    let gw = routes_a_only(&up).start();
    let health = gw.admin_get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let missing = gw.admin_get("/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");
}

#[tokio::test]
async fn metrics_expose_request_counts_durations_and_active_connections() {
    let up = Upstream::echo();
    let gw = routes_a_only(&up).start();
    for _ in 0..2 {
        assert_eq!(gw.get("/a").await.status, 200);
    }
    assert_eq!(gw.get("/unrouted").await.status, 404);
    // One keep-alive connection stays open while the metrics are read.
    let mut held = Raw::connect(gw.addr).await;
    held.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(held.read_response().await.unwrap().status, 200);

    let read = || async { gw.admin_get("/metrics").await };
    eventually("three requests on route a are counted", || async {
        metric(
            &read().await.text(),
            r#"sluicegate_requests_total{route="a",status="200"}"#,
        ) == Some(3.0)
    })
    .await;
    let reply = read().await;
    assert!(
        reply.header("content-type").starts_with("text/plain"),
        "{:?}",
        reply.headers
    );
    let text = reply.text();
    assert_eq!(
        metric(
            &text,
            r#"sluicegate_requests_total{route="_unmatched",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(text.contains("# TYPE sluicegate_request_duration_seconds histogram"));
    // Open descriptors (the held connection among them) against the limit.
    let open = metric(&text, "sluicegate_process_open_fds").expect("open descriptors");
    let max = metric(&text, "sluicegate_process_max_fds").expect("descriptor limit");
    assert!(open >= 4.0 && max >= open, "{open} of {max}");
    assert_eq!(
        metric(
            &text,
            r#"sluicegate_request_duration_seconds_count{route="a"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"sluicegate_request_duration_seconds_bucket{route="a",le="+Inf"}"#
        ),
        Some(3.0)
    );
    assert!(metric(
        &text,
        r#"sluicegate_request_duration_seconds_sum{route="a"}"#
    )
    .is_some_and(|s| s > 0.0));
    assert!(
        metric(&text, "sluicegate_active_connections").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(metric(&text, "sluicegate_accepted_connections_total").is_some_and(|n| n >= 4.0));

    drop(held);
    eventually("closed connections leave the gauge", || async {
        metric(&read().await.text(), "sluicegate_active_connections") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn reload_applies_an_edited_config_file() {
    let up = Upstream::echo();
    let gw = routes_a_only(&up).start();
    assert_eq!(gw.get("/b").await.status, 404);

    gw.rewrite_config(&routes_a_and_b(&up));
    let reply = gw.admin_post("/reload").await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "reloaded");
    assert_eq!(reply.json()["version"], 2);
    assert_eq!(gw.get("/b").await.text(), "route b is live");
    assert_eq!(gw.get("/a").await.status, 200);
    assert_eq!(gw.admin_get("/status").await.json()["config"]["version"], 2);
    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        metric(&metrics, "sluicegate_config_reloads_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn reload_rejects_an_invalid_config_with_422_and_keeps_the_old_one_serving() {
    let up = Upstream::echo();
    let gw = routes_a_and_b(&up).start();
    gw.write_config_text(
        "listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0'}\nroutes:\n  - {name: a, upstream: missing}\n",
    );
    let reply = gw.admin_post("/reload").await;

    assert_eq!(reply.status, 422);
    let body = reply.json();
    assert_eq!(body["error"], "invalid_config");
    let errors = body["errors"].as_array().expect("a list of errors");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap_or("").contains("routes[0].upstream")),
        "{errors:?}"
    );
    assert_eq!(gw.get("/b").await.text(), "route b is live");
    assert_eq!(gw.get("/a").await.status, 200);
    assert_eq!(gw.admin_get("/status").await.json()["config"]["version"], 1);
    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        metric(&metrics, "sluicegate_config_reload_failures_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn writes_one_access_log_line_per_request_to_a_file() {
    let up = Upstream::echo();
    let gw = routes_a_and_b(&up)
        .access_log("access_log: {target: file, path: access.log}")
        .start();
    let posted = send(
        gw.addr,
        request("POST", "/a?x=1")
            .body(full(vec![1u8; 300]))
            .unwrap(),
    )
    .await;
    let local = gw.get("/b").await;
    let missing = send(
        gw.addr,
        request("GET", "/none")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;

    let path = gw.dir.path().join("access.log");
    let lines = || std::fs::read_to_string(&path).unwrap_or_default();
    eventually("three access-log lines", || async {
        lines().lines().count() >= 3
    })
    .await;
    let records: Vec<serde_json::Value> = lines()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for request {id}: {records:#?}"))
            .clone()
    };

    let r = by_id(posted.header("x-request-id"));
    assert_eq!(r["route"], "a");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/a");
    assert_eq!(r["status"], 200);
    assert_eq!(r["bytes_in"], 300);
    assert_eq!(r["bytes_out"], 300);
    assert_eq!(r["upstream"], up.addr().to_string());
    assert!(r["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{r}");
    assert!(
        r["upstream_duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{r}"
    );
    assert_eq!(r["aborted"], false);

    let r = by_id(local.header("x-request-id"));
    assert_eq!(r["route"], "b");
    assert_eq!(r["status"], 200);
    assert_eq!(r["bytes_out"], "route b is live".len());
    assert!(r["upstream_duration_ms"].is_null());

    let r = by_id(missing.header("x-request-id"));
    assert_eq!(r["route"], "-");
    assert_eq!(r["status"], 404);
}

#[tokio::test]
async fn reload_lets_an_in_flight_request_finish_on_the_config_it_started_with() {
    let up = Upstream::slow(std::time::Duration::from_millis(500));
    let gw = routes_a_only(&up).start();
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { crate::support::get(addr, "/a").await });
    eventually("the request reached the upstream", || async {
        !up.requests().is_empty()
    })
    .await;

    // The new configuration drops route `a`.
    gw.write_config_text(
        &routes_a_and_b(&up)
            .render(gw.dir.path())
            .replace("  - {name: a, match: {paths: /a}, upstream: app}\n", ""),
    );
    assert_eq!(gw.admin_post("/reload").await.status, 200);

    let reply = crate::support::within("the in-flight response", in_flight)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream-path"), "/a");
    assert_eq!(gw.get("/a").await.status, 404);
    assert_eq!(gw.get("/b").await.status, 200);
}
