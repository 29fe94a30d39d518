//! Edge plugins end to end, one test at least per plugin, over real sockets: `key_auth`
//! (with secrets from files, rotation and reload), `hmac_signature`, `ip_restriction`,
//! `form_to_json`, `health`, `cors`, `security_headers`; then the shipped examples run by
//! the real binary: the Slack flow (signed form → JSON → queued → delivered to an upstream
//! that starts late), the egress proxy, and the bench's native auth configuration.

use std::path::Path;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Empty;

use crate::support::bin::{run_cli, Process};
use crate::support::client::full;
use crate::support::upstream::{reserve_port, Upstream};
use crate::support::{eventually, get, request, send, Config};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    hex(&m.finalize().into_bytes())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn empty() -> Empty<Bytes> {
    Empty::new()
}

#[tokio::test]
async fn key_auth_accepts_current_and_previous_keys_from_files_and_rereads_them_on_reload() {
    let up = Upstream::echo();
    let body = r#"
secrets:
  proxy_key: {file: key.txt, previous_file: key.old}
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: all
    upstream: app
    plugins:
      - name: key_auth
        config: {header: X-Proxy-Auth, keys: ["${secret:proxy_key}"], strip: true}
"#;
    let gw = Config::new(body)
        .var("app", up.addr())
        .file("key.txt", "key-two\n")
        .file("key.old", "key-one\n")
        .start();
    let call = |key: Option<&'static str>| {
        let addr = gw.addr;
        async move {
            let mut req = request("GET", "/data").header("authorization", "Bearer for-upstream");
            if let Some(k) = key {
                req = req.header("x-proxy-auth", k);
            }
            send(addr, req.body(empty()).unwrap()).await
        }
    };
    assert_eq!(call(Some("key-two")).await.status, 200);
    assert_eq!(call(Some("key-one")).await.status, 200, "previous key");
    let refused = call(Some("key-zero")).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "unauthorized");
    assert_eq!(refused.json()["request_id"], refused.header("x-request-id"));
    assert_eq!(call(None).await.status, 401);
    for seen in up.requests() {
        assert!(seen.headers.get("x-proxy-auth").is_none(), "key stripped");
        assert_eq!(seen.header("authorization"), "Bearer for-upstream");
    }
    assert_eq!(
        up.requests().len(),
        2,
        "refused requests never reach the upstream"
    );

    // Rotation finished: the old key is removed, a reload re-reads the files.
    std::fs::write(gw.dir.path().join("key.old"), "").unwrap();
    assert_eq!(gw.admin_post("/reload").await.status, 200);
    assert_eq!(call(Some("key-one")).await.status, 401);
    assert_eq!(call(Some("key-two")).await.status, 200);

    // The admin status never shows a secret.
    let status = gw.admin_get("/status").await.text();
    assert!(
        !status.contains("key-two") && !status.contains("key-one"),
        "{status}"
    );
}

#[tokio::test]
async fn hmac_signature_verifies_githubs_example_and_forwards_the_body_intact() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
secrets:
  github: {file: github.secret}
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: hooks
    upstream: app
    plugins:
      - name: hmac_signature
        config: {preset: github, secret: "${secret:github}"}
"#,
    )
    .var("app", up.addr())
    // GitHub Docs, "Validating webhook deliveries": this secret, this payload, this signature.
    .file("github.secret", "It's a Secret to Everybody")
    .start();
    let signed = request("POST", "/hooks")
        .header(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )
        .body(full("Hello, World!"))
        .unwrap();
    let reply = send(gw.addr, signed).await;
    assert_eq!(reply.status, 200);
    assert_eq!(up.only_request().body, "Hello, World!");

    let forged = request("POST", "/hooks")
        .header(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )
        .body(full("Hello, World?"))
        .unwrap();
    let reply = send(gw.addr, forged).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "invalid signature");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn ip_restriction_refuses_outside_addresses_and_honours_trusted_proxies() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: open
    match: {paths: /open}
    upstream: app
    plugins:
      - name: ip_restriction
        config: {allow: "127.0.0.0/8, ::1"}
  - name: closed
    match: {paths: /closed}
    upstream: app
    plugins:
      - name: ip_restriction
        config: {deny: [127.0.0.1]}
  - name: behind-proxy
    match: {paths: /proxied}
    upstream: app
    plugins:
      - name: ip_restriction
        config: {allow: [203.0.113.0/24], trusted_proxies: [127.0.0.0/8]}
"#,
    )
    .var("app", up.addr())
    .start();
    assert_eq!(gw.get("/open").await.status, 200);
    let closed = gw.get("/closed").await;
    assert_eq!(closed.status, 403);
    assert_eq!(closed.json()["error"], "forbidden");
    assert_eq!(gw.get("/proxied").await.status, 403);
    let via = |xff: &'static str| {
        let addr = gw.addr;
        async move {
            let req = request("GET", "/proxied")
                .header("x-forwarded-for", xff)
                .body(empty())
                .unwrap();
            send(addr, req).await.status
        }
    };
    assert_eq!(via("203.0.113.50").await, 200);
    assert_eq!(via("203.0.113.50, 198.51.100.1").await, 403);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn form_to_json_sends_json_with_the_right_length_upstream() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: forms
    upstream: app
    plugins: [{name: form_to_json}]
"#,
    )
    .var("app", up.addr())
    .start();
    let req = request("POST", "/submit")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("name=Ada+Lovelace&lang=en&lang=fr&note=%E2%9C%93"))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status, 200);
    let seen = up.only_request();
    assert_eq!(seen.header("content-type"), "application/json");
    assert_eq!(seen.header("content-length"), seen.body.len().to_string());
    let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"name": "Ada Lovelace", "lang": ["en", "fr"], "note": "✓"})
    );
    let bad = request("POST", "/submit")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("a=%G1"))
        .unwrap();
    let reply = send(gw.addr, bad).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "bad_request");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn health_answers_without_an_upstream() {
    let gw = Config::new(
        r#"
routes:
  - name: health
    match: {paths: "= /healthcheck"}
    plugins: [{name: health}]
"#,
    )
    .start();
    let reply = gw.get("/healthcheck").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(reply.header("content-type"), "application/json");
}

#[tokio::test]
async fn cors_answers_preflights_locally_and_marks_actual_responses() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"]}]
routes:
  - name: api
    upstream: app
    plugins:
      - name: cors
        config:
          origins: ["https://app.example.com"]
          methods: [GET, POST]
          exposed_headers: [X-Request-Id]
          max_age_secs: 300
"#,
    )
    .var("app", up.addr())
    .start();
    let preflight = request("OPTIONS", "/items")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .body(empty())
        .unwrap();
    let reply = send(gw.addr, preflight).await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(reply.header("access-control-allow-methods"), "GET, POST");
    assert_eq!(reply.header("access-control-max-age"), "300");
    assert!(
        up.requests().is_empty(),
        "preflights never reach the upstream"
    );

    let actual = request("GET", "/items")
        .header("origin", "https://app.example.com")
        .body(empty())
        .unwrap();
    let reply = send(gw.addr, actual).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(
        reply.header("access-control-expose-headers"),
        "X-Request-Id"
    );
    let other = request("OPTIONS", "/items")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .body(empty())
        .unwrap();
    assert_eq!(send(gw.addr, other).await.status, 403);
}

#[tokio::test]
async fn security_headers_apply_to_proxied_and_local_responses() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
secrets:
  k: {file: k.txt}
upstreams: [{name: app, targets: ["{{app}}"]}]
plugins:
  - name: security_headers
    config: {content_security_policy: "default-src 'none'"}
routes:
  - name: api
    upstream: app
    plugins:
      - name: key_auth
        config: {keys: ["${secret:k}"]}
"#,
    )
    .var("app", up.addr())
    .file("k.txt", "k")
    .start();
    let ok = send(
        gw.addr,
        request("GET", "/")
            .header("x-api-key", "k")
            .body(empty())
            .unwrap(),
    )
    .await;
    let refused = gw.get("/").await;
    assert_eq!((ok.status.as_u16(), refused.status.as_u16()), (200, 401));
    for reply in [ok, refused] {
        assert_eq!(reply.header("x-frame-options"), "DENY");
        assert_eq!(reply.header("x-content-type-options"), "nosniff");
        assert_eq!(
            reply.header("content-security-policy"),
            "default-src 'none'"
        );
        assert!(reply
            .header("strict-transport-security")
            .starts_with("max-age="));
    }
}

#[test]
fn check_reports_unset_and_undeclared_secrets_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluicegate.yaml");
    std::fs::write(
        &config,
        r#"listeners: [{address: "127.0.0.1:0"}]
secrets:
  declared: {env: SLUICEGATE_TEST_UNSET_SECRET}
upstreams: [{name: app, targets: ["127.0.0.1:9"]}]
routes:
  - upstream: app
    plugins:
      - name: key_auth
        config:
          keys:
            - "${secret:declared}"
            - "${secret:undeclared}"
"#,
    )
    .unwrap();
    let out = run_cli(&["check", "-c", config.to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(":11: routes[0].plugins[0].config.keys[0]: secret `declared`: environment variable `SLUICEGATE_TEST_UNSET_SECRET` is not set"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            ":12: routes[0].plugins[0].config.keys[1]: secret `undeclared` is not declared"
        ),
        "{}",
        out.stderr
    );

    // A reference where no option takes a secret would be sent as literal text: refused.
    std::fs::write(
        &config,
        r#"listeners: [{address: "127.0.0.1:0"}]
secrets:
  token: {env: SLUICEGATE_TEST_TOKEN}
upstreams: [{name: app, targets: ["127.0.0.1:9"]}]
routes:
  - upstream: app
    plugins:
      - name: headers
        config:
          request:
            set: {Authorization: "Bearer ${secret:token}"}
"#,
    )
    .unwrap();
    let out = run_cli(
        &["check", "-c", config.to_str().unwrap()],
        &[("SLUICEGATE_TEST_TOKEN", "t0ken")],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(":11: routes[0].plugins[0].config.request.set.Authorization: `${secret:...}` is resolved only where a secret is taken"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("t0ken"));
}

// ------------------------------------------------------------------ shipped examples

pub(crate) fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[tokio::test]
async fn slack_example_verifies_converts_queues_and_delivers_to_a_late_upstream() {
    let data = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let upstream = reserved.addr().to_string();
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let process = Process::start_with_env(
        &example("examples/slack.yaml"),
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("DATA_DIR", data.path().to_str().unwrap()),
            ("UPSTREAM", &upstream),
            ("SLACK_SIGNING_SECRET", secret),
        ],
    );
    let form = "token=xyz&team_id=T1&command=%2Fdeploy&text=prod+now&user_name=roadrunner";
    let ts = unix_now().to_string();
    let sig = format!(
        "v0={}",
        hmac_sha256(
            secret.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", form.as_bytes()]
        )
    );
    let signed = request("POST", "/slack/commands")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", &sig)
        .body(full(form))
        .unwrap();
    // Acknowledged at once although the upstream is down.
    let ack = send(process.addr, signed).await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    assert!(ack.body.is_empty());

    let unsigned = request("POST", "/slack/commands")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", "v0=0000")
        .body(full(form))
        .unwrap();
    assert_eq!(send(process.addr, unsigned).await.status, 401);
    let stale_ts = (unix_now() - 600).to_string();
    let stale_sig = format!(
        "v0={}",
        hmac_sha256(
            secret.as_bytes(),
            &[b"v0:", stale_ts.as_bytes(), b":", form.as_bytes()]
        )
    );
    let replayed = request("POST", "/slack/commands")
        .header("x-slack-request-timestamp", &stale_ts)
        .header("x-slack-signature", &stale_sig)
        .body(full(form))
        .unwrap();
    assert_eq!(send(process.addr, replayed).await.status, 401);

    // The upstream comes up later; the queued command arrives, as JSON.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let up = Upstream::echo_on(reserved);
    let seen = requests_once(&up, 1).await;
    let delivered = &seen[0];
    assert_eq!(delivered.method, "POST");
    assert_eq!(delivered.uri.path(), "/signals/slack");
    assert_eq!(delivered.header("content-type"), "application/json");
    let json: serde_json::Value = serde_json::from_slice(&delivered.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "token": "xyz", "team_id": "T1", "command": "/deploy",
            "text": "prod now", "user_name": "roadrunner"
        })
    );
    // Exactly one delivery: the refused requests were never queued.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(up.requests().len(), 1);
    let logs = process.stderr.lock().unwrap().join("\n");
    assert!(
        !logs.contains(secret),
        "the signing secret must never be logged"
    );
}

#[tokio::test]
async fn egress_example_checks_ip_and_key_strips_it_and_forwards() {
    let up = Upstream::echo();
    let data = tempfile::tempdir().unwrap();
    let upstream = up.addr().to_string();
    let data_dir = data.path().to_str().unwrap();
    let env = |allow: &'static str| -> Vec<(&str, &str)> {
        vec![
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("DATA_DIR", data_dir),
            ("UPSTREAM", &upstream),
            ("PROXY_KEY", "new-key"),
            ("PROXY_KEY_PREVIOUS", "old-key"),
            ("ALLOW_CIDRS", allow),
        ]
    };
    let process = Process::start_with_env(
        &example("examples/egress.yaml"),
        &env("10.0.0.0/8,127.0.0.0/8"),
    );
    let health = get(process.addr, "/healthcheck").await;
    assert_eq!(
        (health.status.as_u16(), health.json()["status"].as_str()),
        (200, Some("ok"))
    );

    let call = |key: &'static str| {
        let addr = process.addr;
        async move {
            let req = request("POST", "/v1/charges")
                .header("x-proxy-auth", key)
                .header("authorization", "Bearer upstream-token")
                .body(full("amount=1"))
                .unwrap();
            send(addr, req).await
        }
    };
    assert_eq!(call("new-key").await.status, 200);
    assert_eq!(
        call("old-key").await.status,
        200,
        "previous key during rotation"
    );
    let refused = call("wrong").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "unauthorized");
    assert_eq!(get(process.addr, "/v1/charges").await.status, 401);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.uri.path(), "/v1/charges");
        assert!(s.headers.get("x-proxy-auth").is_none(), "key stripped");
        assert_eq!(s.header("authorization"), "Bearer upstream-token");
        assert_eq!(s.body, "amount=1");
    }
    drop(process);

    // Outside the allow-list: 403 even with a good key; the health check still answers.
    let process = Process::start_with_env(&example("examples/egress.yaml"), &env("10.0.0.0/8"));
    assert_eq!(call_at(process.addr, "new-key").await, 403);
    assert_eq!(get(process.addr, "/healthcheck").await.status, 200);
    assert_eq!(up.requests().len(), 2);
}

pub(crate) async fn call_at(addr: std::net::SocketAddr, key: &str) -> u16 {
    let req = request("GET", "/x")
        .header("x-proxy-auth", key)
        .body(empty())
        .unwrap();
    send(addr, req).await.status.as_u16()
}

#[tokio::test]
async fn native_auth_bench_config_does_the_auth_scenarios_work() {
    let up = Upstream::echo();
    let upstream = up.addr().to_string();
    let process = Process::start_with_env(
        &example("bench/auth-native.yaml"),
        &[
            ("PORT", "0"),
            ("BENCH_UPSTREAM", &upstream),
            ("BENCH_API_KEY", "bench-secret-key"),
        ],
    );
    let with_key = |key: Option<&'static str>| {
        let addr = process.addr;
        async move {
            let mut req = request("GET", "/");
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            send(addr, req.body(empty()).unwrap()).await
        }
    };
    assert_eq!(with_key(None).await.status, 401);
    assert_eq!(with_key(Some("bench-secret-kez")).await.status, 401);
    let ok = with_key(Some("bench-secret-key")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-gateway"), "sluicegate");
    let post = request("POST", "/echo")
        .header("x-api-key", "bench-secret-key")
        .body(full("ping"))
        .unwrap();
    let echoed = send(process.addr, post).await;
    assert_eq!(
        (echoed.status.as_u16(), echoed.text()),
        (200, "ping".to_string())
    );
    assert_eq!(up.requests().len(), 2);
}

/// Every request `up` received, once there are at least `n`.
async fn requests_once(up: &Upstream, n: usize) -> Vec<crate::support::upstream::Seen> {
    eventually(&format!("{n} requests at the upstream"), || async {
        up.requests().len() >= n
    })
    .await;
    up.requests()
}
