//! Unit tests of the `json_transform` plugin: configuration, the request side in the
//! access phase, the response side through header_filter and body_filter.

use serde_json::json;

use super::*;
use crate::testing::{self, access, request, responded, response};
use sluicegate_core::context::RequestBody;

const ZAPIER: &str = r#"
request:
  fields:
    - {to: event.type, from: name}
    - {to: event.user_id, from: variables.user_id, required: true}
    - {to: event.source, value: zapier}
"#;

fn body_json(ctx: &RequestCtx) -> Value {
    match &ctx.body {
        RequestBody::Buffered(b) => serde_json::from_slice(b).unwrap(),
        _ => panic!("body not replaced"),
    }
}

#[test]
fn reshapes_a_json_request_body_and_fixes_its_headers() {
    let p = testing::plugin(build, ZAPIER, &[]);
    let h = testing::harness();
    let body = br#"{"name":"deal_won","variables":{"user_id":"u1"}}"#;
    let mut ctx = request(
        &h,
        "POST",
        "/signals",
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "48"),
        ],
        Some(body),
    );
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    let out = body_json(&ctx);
    assert_eq!(
        out,
        json!({"event": {"type": "deal_won", "user_id": "u1", "source": "zapier"}})
    );
    assert_eq!(ctx.head.headers["content-type"], "application/json");
    assert_eq!(
        ctx.head.headers["content-length"],
        out.to_string().len().to_string().as_str()
    );
}

#[test]
fn refuses_invalid_json_and_missing_required_fields_with_400() {
    let p = testing::plugin(build, ZAPIER, &[]);
    let h = testing::harness();
    let mut ctx = request(&h, "POST", "/", &[], Some(b"{\"name\": "));
    let (status, body) = responded(access(&*p, &mut ctx));
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_json");
    assert_eq!(body["request_id"], "test-request-id");
    let mut ctx = request(&h, "POST", "/", &[], Some(br#"{"name": "x"}"#));
    let (status, body) = responded(access(&*p, &mut ctx));
    assert_eq!(status, 400);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("variables.user_id"));
}

#[test]
fn leaves_empty_and_non_json_bodies_alone_unless_told_to_reject() {
    let p = testing::plugin(build, ZAPIER, &[]);
    let h = testing::harness();
    let mut ctx = request(&h, "GET", "/", &[], None);
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    assert!(matches!(ctx.body, RequestBody::Empty));
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[("content-type", "text/plain")],
        Some(b"hi"),
    );
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    assert!(matches!(&ctx.body, RequestBody::Buffered(b) if &b[..] == b"hi"));
    let strict = testing::plugin(
        build,
        &format!("{ZAPIER}  other_content_types: reject\n"),
        &[],
    );
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[("content-type", "text/plain")],
        Some(b"hi"),
    );
    assert_eq!(responded(access(&*strict, &mut ctx)).0, 415);
    // `+json` types are JSON.
    let mut ctx = request(
        &h,
        "POST",
        "/",
        &[("content-type", "application/vnd.api+json")],
        Some(br#"{"name":"n","variables":{"user_id":1}}"#),
    );
    assert!(matches!(access(&*strict, &mut ctx), Flow::Continue));
    assert_eq!(body_json(&ctx)["event"]["user_id"], 1);
}

const RESPONSE: &str = r#"
response:
  keep: true
  remove: [internal]
  fields:
    - {to: total, from: "meta.count", default: 0}
"#;

/// Runs header_filter and then body_filter over `chunks`; returns the bytes sent.
fn filter_response(p: &dyn Plugin, status: u16, ct: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let h = testing::harness();
    let mut ctx = request(&h, "GET", "/", &[], None);
    let mut head = response(status, &[("content-type", ct), ("content-length", "10")]);
    p.header_filter(&mut ctx, &mut head).unwrap();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let mut chunk = Bytes::copy_from_slice(c);
        p.body_filter(&mut ctx, &mut chunk, false).unwrap();
        out.extend_from_slice(&chunk);
        if i == 0 && status == 200 && ct.contains("json") {
            assert!(
                head.headers.get("content-length").is_none(),
                "length removed"
            );
        }
    }
    let mut last = Bytes::new();
    p.body_filter(&mut ctx, &mut last, true).unwrap();
    out.extend_from_slice(&last);
    out
}

#[test]
fn reshapes_json_responses_across_chunks() {
    let p = testing::plugin(build, RESPONSE, &[]);
    let out = filter_response(
        &*p,
        200,
        "application/json",
        &[
            br#"{"items": [1], "inte"#,
            br#"rnal": true, "meta": {"count": 1}}"#,
        ],
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, json!({"items": [1], "meta": {"count": 1}, "total": 1}));
}

#[test]
fn leaves_errors_other_types_and_broken_json_responses_unchanged() {
    let p = testing::plugin(build, RESPONSE, &[]);
    let body: &[u8] = br#"{"internal": 1}"#;
    assert_eq!(filter_response(&*p, 500, "application/json", &[body]), body);
    assert_eq!(filter_response(&*p, 200, "text/html", &[b"<p>"]), b"<p>");
    assert_eq!(
        filter_response(&*p, 200, "application/json", &[b"{not json"]),
        b"{not json"
    );
}

#[test]
fn passes_bodies_over_the_limit_through_unchanged() {
    let p = testing::plugin(build, &format!("{RESPONSE}  max_body_bytes: 16\n"), &[]);
    let chunks: [&[u8]; 3] = [b"{\"internal\": ", b"\"0123456789\", ", b"\"x\": 1}"];
    assert_eq!(
        filter_response(&*p, 200, "application/json", &chunks),
        chunks.concat()
    );
}

#[test]
fn validates_both_sides() {
    let e = testing::errors(build, "{}", &[]);
    assert!(e[0].1.contains("`request`, `response`"));
    let e = testing::errors(
        build,
        "response: {fields: [{to: a, from: b, required: true}], other_content_types: reject}",
        &[],
    );
    assert_eq!(e.len(), 2, "{e:?}");
    let e = testing::errors(
        build,
        "request: {fields: [{to: a, from: b}], max_body_bytes: 5}",
        &[],
    );
    assert_eq!(e[0].0, "request.max_body_bytes");
    let e = testing::errors(
        build,
        "request: {fields: [{to: a, from: b, colour: 1}]}",
        &[],
    );
    assert!(e[0].1.contains("unknown field"), "{e:?}");
}
