//! Behaviour and configuration tests of the `hmac_signature` plugin (the scheme vectors from
//! the published documentation are in `scheme.rs`).

use super::*;
use crate::testing::{self, access, request, responded};
use sluicegate_core::context::RequestBody;

const SECRETS: &[(&str, &str, Option<&str>)] = &[
    ("slack", "current-secret", Some("previous-secret")),
    ("docs", "8f742231b10e8888abcd99yyyzzz85a5", None),
    (
        "whsec",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        Some("whsec_c2Vjb25kIHNlY3JldA=="),
    ),
    ("plain", "not base64 !", None),
];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn slack_signature(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let h = http::HeaderMap::new();
    let signed = Signed {
        body,
        timestamp: ts.as_bytes(),
        method: "POST",
        path: "/",
        headers: &h,
    };
    let (d, n) = Scheme::slack().digest(secret, &signed).unwrap();
    format!("v0={}", hex(&d[..n]))
}

fn slack_request(
    h: &sluicegate_lua::harness::Harness,
    secret: &[u8],
    ts: i64,
    body: &[u8],
) -> RequestCtx {
    let ts = ts.to_string();
    let sig = slack_signature(secret, &ts, body);
    request(
        h,
        "POST",
        "/slack/commands",
        &[
            ("x-slack-request-timestamp", &ts),
            ("x-slack-signature", &sig),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some(body),
    )
}

#[test]
fn accepts_a_fresh_slack_signature_and_keeps_the_body_intact() {
    let p = testing::plugin(build, "{preset: slack, secret: '${secret:slack}'}", SECRETS);
    let h = testing::harness();
    let body = b"command=%2Fdeploy&text=prod+now";
    let mut ctx = slack_request(&h, b"current-secret", now(), body);
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    match &ctx.body {
        RequestBody::Buffered(b) => assert_eq!(&b[..], body),
        _ => panic!("the body must stay buffered for forwarding"),
    }
}

#[test]
fn accepts_the_previous_secret_during_a_rotation() {
    let p = testing::plugin(build, "{preset: slack, secret: '${secret:slack}'}", SECRETS);
    let h = testing::harness();
    let mut ctx = slack_request(&h, b"previous-secret", now(), b"a=1");
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    let mut ctx = slack_request(&h, b"some-other-secret", now(), b"a=1");
    let (status, body) = responded(access(&*p, &mut ctx));
    assert_eq!(
        (status, body["message"].as_str().unwrap()),
        (401, "invalid signature")
    );
}

#[test]
fn verifies_slacks_documentation_example_through_the_plugin() {
    // The example's timestamp is from 2018: a tolerance wide enough to reach it.
    let p = testing::plugin(
        build,
        "{preset: slack, secret: '${secret:docs}', tolerance_secs: 4000000000}",
        SECRETS,
    );
    let h = testing::harness();
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[
            ("x-slack-request-timestamp", "1531420618"),
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ],
        Some(b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"),
    );
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
}

#[test]
fn refuses_stale_and_future_timestamps_before_reading_the_body() {
    let p = testing::plugin(
        build,
        "{preset: slack, secret: '${secret:slack}', tolerance_secs: 60}",
        SECRETS,
    );
    let h = testing::harness();
    for ts in [now() - 120, now() + 120] {
        let mut ctx = slack_request(&h, b"current-secret", ts, b"a=1");
        let (status, body) = responded(access(&*p, &mut ctx));
        assert_eq!(status, 401);
        assert!(body["message"].as_str().unwrap().contains("60 s"), "{body}");
    }
    let mut ctx = slack_request(&h, b"current-secret", now() - 30, b"a=1");
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
}

#[test]
fn refuses_missing_or_malformed_headers_with_a_json_401() {
    let p = testing::plugin(build, "{preset: slack, secret: '${secret:slack}'}", SECRETS);
    let h = testing::harness();
    let mut ctx = request(&h, "POST", "/", &[], Some(b"a=1"));
    let (status, body) = responded(access(&*p, &mut ctx));
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("x-slack-signature"));
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[
            ("x-slack-signature", "v0=00"),
            ("x-slack-request-timestamp", "yesterday"),
        ],
        Some(b"a=1"),
    );
    let (_, body) = responded(access(&*p, &mut ctx));
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("not a Unix timestamp"));
    let ts = now().to_string();
    for sig in [
        "",
        "v0=",
        "v0=zz",
        "a2114d57",
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
    ] {
        let mut ctx = request(
            &h,
            "POST",
            "/",
            &[
                ("x-slack-signature", sig),
                ("x-slack-request-timestamp", &ts),
            ],
            Some(b"a=1"),
        );
        assert_eq!(responded(access(&*p, &mut ctx)).0, 401, "{sig}");
    }
}

#[test]
fn standard_webhooks_decodes_whsec_secrets_and_checks_the_timestamp() {
    use base64::Engine as _;
    let p = testing::plugin(
        build,
        "{preset: standard_webhooks, secret: '${secret:whsec}'}",
        SECRETS,
    );
    let h = testing::harness();
    let ts = now().to_string();
    let body = br#"{"type":"invoice.paid"}"#;
    // Signed with the previous key ("second secret"), as a sender mid-rotation might.
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", "msg_1".parse().unwrap());
    let signed = Signed {
        body,
        timestamp: ts.as_bytes(),
        method: "POST",
        path: "/",
        headers: &headers,
    };
    let (d, n) = Scheme::standard_webhooks()
        .digest(b"second secret", &signed)
        .unwrap();
    let sig = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(&d[..n])
    );
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ],
        Some(body),
    );
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[("webhook-timestamp", &ts), ("webhook-signature", &sig)],
        Some(body),
    );
    let (_, body) = responded(access(&*p, &mut ctx));
    assert!(body["message"].as_str().unwrap().contains("webhook-id"));
}

#[test]
fn generic_scheme_with_timestamp_and_prefix() {
    let cfg =
        "{preset: generic, secrets: ['${secret:slack}'], header: X-Signature, algorithm: sha1, \
               encoding: hex, prefix: 'sha1=', signed_content: '{timestamp}.{method}.{body}', \
               timestamp_header: X-Timestamp, tolerance_secs: 30}";
    let p = testing::plugin(build, cfg, SECRETS);
    let h = testing::harness();
    let ts = now().to_string();
    let headers = http::HeaderMap::new();
    let scheme = super::generic(
        &sluicegate_core::de::from_node(
            &sluicegate_core::yaml::parse(cfg, &std::collections::HashMap::new()).unwrap(),
            &Path::root(),
        )
        .unwrap(),
        &Path::root(),
        &mut Diags::default(),
    )
    .unwrap();
    let signed = Signed {
        body: b"x",
        timestamp: ts.as_bytes(),
        method: "PUT",
        path: "/",
        headers: &headers,
    };
    let (d, n) = scheme.digest(b"current-secret", &signed).unwrap();
    assert_eq!(n, 20);
    let sig = format!("sha1={}", hex(&d[..n]));
    let mut ctx = request(
        &h,
        "PUT",
        "/",
        &[("x-signature", &sig), ("x-timestamp", &ts)],
        Some(b"x"),
    );
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[("x-signature", &sig), ("x-timestamp", &ts)],
        Some(b"x"),
    );
    assert_eq!(
        responded(access(&*p, &mut ctx)).0,
        401,
        "the method is signed"
    );
}

#[test]
fn rejects_bad_configs_with_their_paths() {
    let paths = |text: &str| -> Vec<String> {
        testing::errors(build, text, SECRETS)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(paths("{preset: slack}"), ["secret"]);
    assert_eq!(
        paths("{preset: slak, secret: '${secret:slack}'}"),
        ["preset"]
    );
    assert_eq!(
        paths("{preset: github, secret: '${secret:slack}', tolerance_secs: 10, header: X-Sig}"),
        ["header", "tolerance_secs"]
    );
    assert_eq!(
        paths("{preset: slack, secret: '${secret:slack}', secrets: ['${secret:docs}']}"),
        [""]
    );
    assert_eq!(
        paths("{preset: slack, secret: '${secret:nope}'}"),
        ["secret"]
    );
    assert_eq!(paths("{preset: slack, secret: literal-value}"), ["secret"]);
    assert_eq!(
        paths("{preset: standard_webhooks, secrets: ['${secret:whsec}', '${secret:plain}']}"),
        ["secrets[1]"]
    );
    assert_eq!(
        paths("{preset: generic, secret: '${secret:slack}'}"),
        ["header"]
    );
    assert_eq!(
        paths("{preset: generic, secret: '${secret:slack}', header: X-S, signed_content: '{timestamp}'}"),
        ["signed_content", "signed_content"]
    );
    assert_eq!(
        paths("{preset: generic, secret: '${secret:slack}', header: X-S, algorithm: md5}"),
        ["algorithm"]
    );
}

#[test]
fn debug_output_shows_no_key() {
    let plugin = HmacSignature {
        scheme: Scheme::github(),
        keys: vec![SecretValue::new(b"current-secret".to_vec())],
        required: Vec::new(),
        tolerance_secs: 1,
    };
    let shown = format!("{plugin:?}");
    assert!(!shown.contains("current-secret"), "{shown}");
}
