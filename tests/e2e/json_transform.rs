//! `json_transform` end to end: a Zapier "signal" reshaped into the upstream's schema on
//! the way in, invalid JSON refused at the gateway, and a JSON response reshaped on the way
//! out.

use serde_json::{json, Value};

use crate::support::client::full;
use crate::support::upstream::Seen;
use crate::support::{request, send, Config, Upstream};

#[tokio::test]
async fn json_transform_reshapes_request_and_response_bodies() {
    let up = Upstream::start(|seen: Seen| async move {
        let reply = json!({
            "data": {"id": 42, "received": serde_json::from_slice::<Value>(&seen.body).ok()},
            "debug": {"host": "internal-7"},
        });
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(reply.to_string()))
            .unwrap()
    });
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: zapier
    match: {paths: /signals, methods: [POST]}
    upstream: app
    plugins:
      - name: json_transform
        config:
          request:
            fields:
              - {to: event.type, from: name}
              - {to: event.user_id, from: variables.user_id, required: true}
              - {to: event.amount, from: variables.amount, default: "0"}
              - {to: event.source, value: zapier}
          response:
            fields:
              - {to: id, from: data.id}
              - {to: accepted, value: true}
"#,
    )
    .var("app", up.addr())
    .start();

    let signal = json!({"name": "deal_won", "variables": {"user_id": "u1", "note": "hi"}});
    let req = request("POST", "/signals")
        .header("content-type", "application/json")
        .body(full(signal.to_string()))
        .unwrap();
    let reply = send(gw.addr, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"id": 42, "accepted": true}));

    let seen = up.only_request();
    let forwarded: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        forwarded,
        json!({"event": {"type": "deal_won", "user_id": "u1", "amount": "0", "source": "zapier"}})
    );
    assert_eq!(seen.header("content-type"), "application/json");
    assert_eq!(seen.header("content-length"), seen.body.len().to_string());

    for (body, expected) in [
        ("{\"name\": ", "invalid_json"),
        ("{\"name\": \"x\"}", "bad_request"),
    ] {
        let req = request("POST", "/signals")
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap();
        let reply = send(gw.addr, req).await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.json()["error"], expected);
        assert_eq!(reply.json()["request_id"], reply.header("x-request-id"));
    }
    assert_eq!(
        up.requests().len(),
        1,
        "refused bodies never reach the upstream"
    );
}

#[tokio::test]
async fn form_to_json_output_can_be_reshaped_further() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: slack
    upstream: app
    plugins:
      - name: form_to_json
      - name: json_transform
        config:
          request:
            fields:
              - {to: command.name, from: command}
              - {to: command.args, from: text, default: ""}
              - {to: user, from: user_name}
"#,
    )
    .var("app", up.addr())
    .start();
    let req = request("POST", "/commands")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("command=%2Fdeploy&text=prod+now&user_name=ada"))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status, 200);
    let seen = up.only_request();
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        json!({"command": {"name": "/deploy", "args": "prod now"}, "user": "ada"})
    );
}
