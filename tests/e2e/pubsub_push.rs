//! The `pubsub_push` plugin's token check end to end, with tokens minted by the test's own
//! keys served as a JWKS: a valid push is delivered (204); no token, a bad signature,
//! `alg: none`, a wrong `iss` or `aud`, an expired token, a missing or other `email`, and
//! `email_verified: false` are each refused with no upstream call. (The whole path through
//! Google's emulator is in the queue suite.)

use http::Request;
use serde_json::{json, Value};

use crate::support::client::full;
use crate::support::jwt::{self, b64, sign, RSA_A, RSA_B};
use crate::support::upstream::Seen;
use crate::support::{send, Config, Upstream};

const AUDIENCE: &str = "https://gw.example/wal-playback";
const PUSHER: &str = "pusher@project.iam.gserviceaccount.com";

fn push_body(path: &str, body: &[u8]) -> String {
    let mut req = sluicegate_queue::QueuedRequest::new(http::Method::POST, path);
    req.headers
        .insert("x-custom", http::HeaderValue::from_static("kept"));
    req.body = bytes::Bytes::copy_from_slice(body);
    let mut message = sluicegate_queue::envelope::encode("wal", &req)
        .unwrap()
        .to_json();
    message["messageId"] = json!("4242");
    message["publishTime"] = json!("2026-12-05T10:00:00Z");
    json!({"message": message, "subscription": "projects/p/subscriptions/push"}).to_string()
}

fn good_claims() -> Value {
    jwt::claims(json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": PUSHER,
        "email_verified": true,
    }))
}

#[tokio::test]
async fn push_tokens_are_checked_before_anything_is_delivered() {
    let keys = Upstream::start(move |_: Seen| async move {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(json!({"keys": [jwt::jwk(RSA_A, "k1")]}).to_string()))
            .unwrap()
    });
    let app = Upstream::echo();
    let gw = Config::new(&format!(
        r#"
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - name: wal
    match: {{paths: /wal/}}
    upstream: app
    rewrite: {{strip_prefix: /wal}}
    queue: {{name: wal}}
  - name: playback
    match: {{paths: /wal-playback}}
    plugins:
      - name: pubsub_push
        config:
          queue: wal
          audience: "{AUDIENCE}"
          service_account: "{PUSHER}"
          jwks_url: "http://{keys}/certs"
"#,
        keys = keys.addr()
    ))
    .var("app", app.addr())
    .start();

    let push = |token: Option<String>| {
        let mut b = Request::post("/wal-playback").header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(full(push_body("/wal/hooks?x=1", b"payload")))
            .unwrap()
    };
    let with = |extra: Value| {
        let mut c = good_claims();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign("RS256", RSA_A, Some("k1"), &c)
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(good_claims().to_string().as_bytes())
    );
    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "bad signature",
            Some(sign("RS256", RSA_B, Some("k1"), &good_claims())),
        ),
        ("alg none", Some(unsigned)),
        (
            "wrong iss",
            Some(with(json!({"iss": "https://evil.example"}))),
        ),
        (
            "wrong aud",
            Some(with(json!({"aud": "https://other.example/push"}))),
        ),
        (
            "expired",
            Some(with(
                json!({"iat": jwt::now() - 7200, "exp": jwt::now() - 3600}),
            )),
        ),
        ("no email", Some(with(json!({"email": null})))),
        (
            "another email",
            Some(with(json!({"email": "someone@else.example"}))),
        ),
        (
            "email not verified",
            Some(with(json!({"email_verified": false}))),
        ),
    ];
    for (what, token) in refused {
        let r = send(gw.addr, push(token)).await;
        assert!(
            r.status == 401 || r.status == 403,
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert!(app.requests().is_empty(), "{what}: the upstream was called");
    }

    // The other spelling of Google's issuer, and a valid token: delivered, 204.
    for iss in ["accounts.google.com", "https://accounts.google.com"] {
        let r = send(gw.addr, push(Some(with(json!({"iss": iss}))))).await;
        assert_eq!(r.status, 204, "{iss}: {}", r.text());
    }
    let seen = app.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].uri.to_string(),
        "/hooks?x=1",
        "prefix stripped, query kept"
    );
    assert_eq!(seen[0].header("x-custom"), "kept");
    assert_eq!(&seen[0].body[..], b"payload");

    // Not a push at all: 400, never an upstream call (with a valid token too).
    let r = send(
        gw.addr,
        Request::post("/wal-playback")
            .header("authorization", format!("Bearer {}", with(json!({}))))
            .body(full("{\"hello\": 1}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(app.requests().len(), 2);
}
