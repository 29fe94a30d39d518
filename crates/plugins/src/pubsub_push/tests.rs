#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::{build, unpack};
use crate::testing;
use sluicegate_queue::{envelope, QueuedRequest};

fn sample() -> QueuedRequest {
    let mut r = QueuedRequest::new(Method::POST, "/wal/hooks?x=1");
    r.headers
        .append("content-type", HeaderValue::from_static("text/plain"));
    r.body = Bytes::from_static(b"hello");
    r.request_id = "rid".into();
    r
}

fn wrapped(id_key: &str, time_key: &str) -> Bytes {
    let env = envelope::encode("wal", &sample()).unwrap();
    let mut message = env.to_json();
    let m = message.as_object_mut().unwrap();
    m.insert(id_key.into(), "123".into());
    m.insert(time_key.into(), "2026-12-05T10:00:00Z".into());
    Bytes::from(
        serde_json::json!({"message": message, "subscription": "projects/p/subscriptions/s", "deliveryAttempt": 3})
            .to_string(),
    )
}

#[test]
fn wrapped_pushes_in_either_spelling_rebuild_the_request() {
    for (id, time) in [("messageId", "publishTime"), ("message_id", "publish_time")] {
        let push = unpack(&HeaderMap::new(), &wrapped(id, time)).unwrap();
        assert_eq!(push.message_id, "123");
        assert_eq!(push.attempt, 3);
        assert_eq!(push.request.unwrap(), sample());
    }
}

#[test]
fn unwrapped_pushes_take_the_attributes_from_headers() {
    let env = envelope::encode("wal", &sample()).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-goog-pubsub-message-id", HeaderValue::from_static("77"));
    for (k, v) in &env.attributes {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let push = unpack(&headers, &env.data).unwrap();
    assert_eq!(push.message_id, "77");
    assert_eq!(push.attempt, 1);
    assert_eq!(push.request.unwrap(), sample());
}

#[test]
fn what_is_not_a_push_is_refused_and_a_foreign_push_is_kept_apart() {
    for body in [
        &b"not json"[..],
        br#"{"hello": 1}"#,
        br#"{"message": "x"}"#,
        br#"{"message": {"data": "aGk="}}"#,
        br#"{"message": {"messageId": "1", "data": "aGk="}}"#,
        br#"{"message": {"messageId": "1", "publishTime": "t", "data": "!!"}}"#,
        br#"{"message": {"messageId": "1", "publishTime": "t", "data": 5}}"#,
        br#"{"message": {"messageId": "1", "publishTime": "t", "attributes": []}}"#,
    ] {
        assert!(
            unpack(&HeaderMap::new(), &Bytes::copy_from_slice(body)).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // A real push whose attributes are not an envelope: unpacked, its request an error
    // (recorded as a dead letter, not retried forever).
    let data = base64::engine::general_purpose::STANDARD.encode(b"raw");
    let body = serde_json::json!({"message": {"messageId": "9", "publishTime": "t", "data": data}});
    let push = unpack(&HeaderMap::new(), &Bytes::from(body.to_string())).unwrap();
    assert!(push.request.is_err());
    assert_eq!(push.data, Bytes::from_static(b"raw"));
}

#[test]
fn config_needs_audience_and_service_account_unless_verify_is_off() {
    let errors = testing::errors(build, "queue: wal", &[]);
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.iter().any(|p| p.ends_with("audience")), "{errors:?}");
    assert!(
        paths.iter().any(|p| p.ends_with("service_account")),
        "{errors:?}"
    );
    testing::plugin(build, "queue: wal\nverify: false", &[]);
    testing::plugin(
        build,
        "queue: wal\naudience: https://gw.example/wal-playback\nservice_account: push@p.iam.gserviceaccount.com",
        &[],
    );
    let errors = testing::errors(
        build,
        "queue: wal\naudience: a\nservice_account: s\njwks_url: ftp://x",
        &[],
    );
    assert!(errors.iter().any(|(p, _)| p.ends_with("jwks_url")));
    let errors = testing::errors(build, "queue: 'bad name'\nverify: false", &[]);
    assert!(errors.iter().any(|(p, _)| p.ends_with("queue")));
    let errors = testing::errors(build, "queue: wal\nverify: false\nbogus: 1", &[]);
    assert!(!errors.is_empty());
}

#[test]
fn a_request_without_a_token_is_refused_before_anything_is_read() {
    let p = testing::plugin(
        build,
        "queue: wal\naudience: a\nservice_account: s@x\njwks_url: http://127.0.0.1:9/keys",
        &[],
    );
    let h = testing::harness();
    for auth in [None, Some("Basic abc"), Some("Bearer")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let mut ctx = testing::request(
            &h,
            "POST",
            "/wal-playback",
            &headers,
            Some(&wrapped("messageId", "publishTime")),
        );
        let (status, _) = testing::responded(testing::content(&*p, &mut ctx));
        assert_eq!(status, 401, "{auth:?}");
    }
}

#[test]
fn without_verification_a_non_push_is_400() {
    let p = testing::plugin(build, "queue: wal\nverify: false", &[]);
    let h = testing::harness();
    let mut ctx = testing::request(&h, "POST", "/wal-playback", &[], Some(b"{\"a\":1}"));
    let (status, body) = testing::responded(testing::content(&*p, &mut ctx));
    assert_eq!(status, 400, "{body}");
}
