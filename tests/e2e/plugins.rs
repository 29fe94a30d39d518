//! Built-in plugins end to end: `headers` on both sides, `request_termination`, global
//! plugins, and priorities deciding the order.

use bytes::Bytes;
use http_body_util::Empty;

use crate::support::client::full;
use crate::support::{request, send, Config, Upstream};

#[tokio::test]
async fn headers_plugin_changes_the_upstream_request_and_the_client_response() {
    let up = Upstream::start(|_| async {
        http::Response::builder()
            .header("x-resp-set", "old")
            .header("x-resp-add", "first")
            .header("x-resp-remove", "1")
            .body(full("ok"))
            .unwrap()
    });
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: all
    upstream: app
    plugins:
      - name: headers
        config:
          request:
            set: {x-set: new}
            add: {x-add: second}
            remove: [x-remove]
          response:
            set: {x-resp-set: new}
            add: {x-resp-add: second}
            remove: [x-resp-remove]
"#,
    )
    .var("app", up.addr())
    .start();
    let req = request("GET", "/")
        .header("x-set", "old")
        .header("x-add", "first")
        .header("x-remove", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = send(gw.addr, req).await;

    let seen = up.only_request();
    assert_eq!(seen.header("x-set"), "new");
    let added: Vec<&str> = seen
        .headers
        .get_all("x-add")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(added, ["first", "second"]);
    assert!(!seen.headers.contains_key("x-remove"));

    assert_eq!(reply.status, 200);
    // Replaced, not added to (the upstream's lines pass raw, minus the replaced one).
    assert_eq!(reply.header_all("x-resp-set"), ["new"]);
    assert_eq!(reply.header_all("x-resp-add"), ["first", "second"]);
    assert!(!reply.headers.contains_key("x-resp-remove"));
}

#[tokio::test]
async fn request_termination_answers_with_its_status_body_and_headers() {
    let gw = Config::new(
        r#"
routes:
  - name: teapot
    match: {paths: "= /tea"}
    plugins:
      - name: request_termination
        config:
          status: 418
          body: short and stout
          content_type: text/x-tea
          headers: {x-tea: earl-grey}
  - name: created
    match: {paths: "= /json"}
    plugins:
      - name: request_termination
        config: {status: 201, json: {ok: true, items: [1, 2]}}
  - name: maintenance
    match: {paths: "= /down"}
    plugins: [{name: request_termination}]
"#,
    )
    .start();

    let tea = gw.get("/tea").await;
    assert_eq!(tea.status, 418);
    assert_eq!(tea.text(), "short and stout");
    assert_eq!(tea.header("content-type"), "text/x-tea");
    assert_eq!(tea.header("x-tea"), "earl-grey");
    assert!(crate::support::is_uuid(tea.header("x-request-id")));

    let json = gw.get("/json").await;
    assert_eq!(json.status, 201);
    assert_eq!(json.header("content-type"), "application/json");
    assert_eq!(
        json.json(),
        serde_json::json!({"ok": true, "items": [1, 2]})
    );

    let down = gw.get("/down").await;
    assert_eq!(down.status, 503);
    assert!(down.body.is_empty());
}

#[tokio::test]
async fn global_plugins_apply_to_every_route_and_to_unmatched_requests() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
plugins:
  - name: headers
    config:
      request: {set: {x-global: "yes"}}
      response: {set: {x-served-by: sluicegate}}
routes:
  - {name: proxied, match: {paths: /up}, upstream: app}
  - name: local
    match: {paths: /local}
    plugins: [{name: request_termination, config: {status: 200, body: here}}]
"#,
    )
    .var("app", up.addr())
    .start();

    let proxied = gw.get("/up").await;
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.header("x-served-by"), "sluicegate");
    assert_eq!(up.only_request().header("x-global"), "yes");

    let local = gw.get("/local").await;
    assert_eq!(local.text(), "here");
    assert_eq!(local.header("x-served-by"), "sluicegate");

    let missing = gw.get("/missing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-served-by"), "sluicegate");
}

#[tokio::test]
async fn higher_priority_plugins_run_first_whatever_their_order_in_the_file() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: answer
    match: {paths: /answer}
    plugins:
      - {name: request_termination, priority: 1, config: {status: 200, body: low}}
      - {name: request_termination, priority: 10, config: {status: 200, body: high}}
  - name: order
    match: {paths: /order}
    upstream: app
    plugins:
      - {name: headers, priority: 100, config: {request: {set: {x-order: priority-100-ran-last}}}}
      - {name: headers, priority: 900, config: {request: {set: {x-order: priority-900-ran-last}}}}
"#,
    )
    .var("app", up.addr())
    .start();

    assert_eq!(gw.get("/answer").await.text(), "high");
    assert_eq!(gw.get("/order").await.status, 200);
    assert_eq!(up.only_request().header("x-order"), "priority-100-ran-last");
}
