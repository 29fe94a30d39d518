//! Behaviour and configuration tests of the `cors` plugin.

use super::*;
use crate::testing::{self, access, request, responded, response};

fn preflight_headers(flow: Flow) -> (StatusCode, HeaderMap) {
    match flow {
        Flow::Respond(r) => (r.status, r.headers),
        Flow::Continue => panic!("the preflight was not answered"),
    }
}

#[test]
fn answers_preflights_from_allowed_origins_locally() {
    let p = testing::plugin(
        build,
        "{origins: ['https://app.example.com'], methods: [GET, POST], headers: [Content-Type, X-Api-Key], max_age_secs: 600, credentials: true}",
        &[],
    );
    let h = testing::harness();
    let mut ctx = request(
        &h,
        "OPTIONS",
        "/api",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        None,
    );
    let (status, headers) = preflight_headers(access(&*p, &mut ctx));
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        headers["access-control-allow-headers"],
        "Content-Type, X-Api-Key"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(headers["vary"], "Origin");
}

#[test]
fn refuses_preflights_from_other_origins() {
    let p = testing::plugin(build, "{origins: ['https://*.example.com']}", &[]);
    let h = testing::harness();
    for origin in [
        "https://evil.com",
        "https://example.com",
        "http://a.example.com",
        "https://a.example.com.evil.com",
    ] {
        let mut ctx = request(
            &h,
            "OPTIONS",
            "/",
            &[("origin", origin), ("access-control-request-method", "GET")],
            None,
        );
        let (status, body) = responded(access(&*p, &mut ctx));
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (403, "forbidden"),
            "{origin}"
        );
    }
    let mut ctx = request(
        &h,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://a.b.example.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-one, x-two"),
        ],
        None,
    );
    let (status, headers) = preflight_headers(access(&*p, &mut ctx));
    assert_eq!(status, 204);
    // Without a `headers` list, what the preflight asks for is allowed.
    assert_eq!(headers["access-control-allow-headers"], "x-one, x-two");
}

#[test]
fn adds_headers_to_actual_responses_from_allowed_origins_only() {
    let p = testing::plugin(
        build,
        "{origins: ['https://app.example.com'], exposed_headers: [X-Request-Id, X-Total]}",
        &[],
    );
    let h = testing::harness();
    let mut ctx = request(
        &h,
        "GET",
        "/",
        &[("origin", "https://app.example.com")],
        None,
    );
    assert!(matches!(access(&*p, &mut ctx), Flow::Continue));
    let mut head = response(200, &[("vary", "Accept-Encoding")]);
    p.header_filter(&mut ctx, &mut head).unwrap();
    assert_eq!(
        head.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        head.headers["access-control-expose-headers"],
        "X-Request-Id, X-Total"
    );
    let vary: Vec<_> = head.headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);

    let mut ctx = request(
        &h,
        "GET",
        "/",
        &[("origin", "https://other.example.com")],
        None,
    );
    let mut head = response(200, &[]);
    p.header_filter(&mut ctx, &mut head).unwrap();
    assert!(head.headers.get("access-control-allow-origin").is_none());

    let mut ctx = request(&h, "GET", "/", &[], None);
    let mut head = response(200, &[]);
    p.header_filter(&mut ctx, &mut head).unwrap();
    // No CORS headers, but caches learn that the answer depends on the origin.
    assert_eq!(head.headers.len(), 1);
    assert_eq!(head.headers["vary"], "Origin");
}

#[test]
fn any_origin_is_a_star_unless_credentials_are_allowed() {
    let h = testing::harness();
    let p = testing::plugin(build, "{origins: ['*']}", &[]);
    let mut ctx = request(&h, "GET", "/", &[("origin", "https://x.test")], None);
    let mut head = response(200, &[]);
    p.header_filter(&mut ctx, &mut head).unwrap();
    assert_eq!(head.headers["access-control-allow-origin"], "*");
    assert!(head.headers.get("vary").is_none());
    let p = testing::plugin(build, "{origins: ['*'], credentials: true}", &[]);
    let mut head = response(200, &[]);
    p.header_filter(&mut ctx, &mut head).unwrap();
    assert_eq!(
        head.headers["access-control-allow-origin"],
        "https://x.test"
    );
    assert_eq!(head.headers["access-control-allow-credentials"], "true");
}

#[test]
fn rejects_bad_configs_with_their_paths() {
    let paths = |text: &str| -> Vec<String> {
        testing::errors(build, text, &[])
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(paths("{origins: []}"), ["origins"]);
    assert_eq!(
        paths("{origins: [example.com, 'https://a.com/path', 'https://a.*.com']}"),
        ["origins[0]", "origins[1]", "origins[2]"]
    );
    assert_eq!(
        paths("{origins: ['*'], methods: ['GE T'], headers: ['bad header']}"),
        ["methods[0]", "headers[0]"]
    );
    assert_eq!(
        paths("{origins: ['*'], credentials: true, exposed_headers: ['*']}"),
        ["exposed_headers"]
    );
    let errs = testing::errors(build, "{}", &[]);
    assert!(errs[0].1.contains("missing field `origins`"), "{errs:?}");
}
