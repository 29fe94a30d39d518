//! Plain proxying: what the upstream receives (forwarded headers, request id, hop-by-hop
//! headers removed), bodies streamed intact both ways, path rewriting, round-robin.

use bytes::Bytes;
use http::header::HOST;
use http_body::Frame;
use http_body_util::{Empty, StreamBody};

use crate::support::client::full;
use crate::support::{get, is_uuid, request, send, Config, Upstream};

const MIB: usize = 1024 * 1024;

/// 1 MiB that is not a repetition of a short pattern, so a reordered or dropped chunk shows.
fn one_mib() -> Vec<u8> {
    (0..MIB)
        .map(|i| ((i * 31 + i / 4093) % 251) as u8)
        .collect()
}

#[tokio::test]
async fn proxies_a_get_with_forwarded_headers_and_a_uuid_request_id() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let req = request("GET", "/items?id=7")
        .header(HOST, "shop.example.com:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-for", "198.51.100.7")
        // What a client claims about the gateway's side is replaced, not passed on.
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = send(gw.addr, req).await;

    assert_eq!(reply.status, 200);
    let seen = up.only_request();
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        ["shop.example.com:8443"]
    );
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/items?id=7");
    assert_eq!(seen.header("host"), "shop.example.com:8443");
    // Every earlier hop is kept, in order, and the client is appended.
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        ["203.0.113.9, 198.51.100.7, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-proto"), "http");
    assert_eq!(seen.header("x-forwarded-host"), "shop.example.com:8443");
    let id = reply.header("x-request-id");
    assert!(is_uuid(id), "request id {id:?} is not a UUID");
    assert_eq!(seen.header("x-request-id"), id);
}

#[tokio::test]
async fn gives_every_request_its_own_id_and_replaces_a_client_id_by_default() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let first = gw.get("/").await;
    let req = request("GET", "/")
        .header("x-request-id", "client-chosen")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let second = send(gw.addr, req).await;

    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
    assert!(is_uuid(second.header("x-request-id")));
    let seen = up.requests();
    assert_eq!(
        seen[1].header("x-request-id"),
        second.header("x-request-id")
    );
}

#[tokio::test]
async fn keeps_the_client_request_id_on_a_trusting_listener() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listener("trust_request_id: true")
        .start();
    let req = request("GET", "/")
        .header("x-request-id", "client-abc-123")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = send(gw.addr, req).await;

    assert_eq!(reply.header("x-request-id"), "client-abc-123");
    assert_eq!(up.only_request().header("x-request-id"), "client-abc-123");
    // Without a client id, one is still generated.
    assert!(is_uuid(gw.get("/").await.header("x-request-id")));
}

#[tokio::test]
async fn streams_a_one_mib_chunked_post_body_intact_both_ways() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let payload = one_mib();
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = payload
        .chunks(16 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let reply = send(gw.addr, request("POST", "/upload").body(body).unwrap()).await;

    assert_eq!(reply.status, 200);
    let seen = up.only_request();
    assert_eq!(seen.header("transfer-encoding"), "chunked");
    assert!(
        seen.body == payload,
        "upstream got {} bytes, not the payload",
        seen.body.len()
    );
    assert!(
        reply.body == payload,
        "client got {} bytes back, not the payload",
        reply.body.len()
    );
}

#[tokio::test]
async fn streams_a_one_mib_content_length_post_body_intact_both_ways() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let payload = one_mib();
    let reply = send(
        gw.addr,
        request("POST", "/upload")
            .body(full(payload.clone()))
            .unwrap(),
    )
    .await;

    assert_eq!(reply.status, 200);
    let seen = up.only_request();
    assert_eq!(seen.header("content-length"), MIB.to_string());
    assert!(
        seen.body == payload,
        "upstream got {} bytes, not the payload",
        seen.body.len()
    );
    assert_eq!(reply.header("content-length"), MIB.to_string());
    assert!(
        reply.body == payload,
        "client got {} bytes back, not the payload",
        reply.body.len()
    );
}

#[tokio::test]
async fn removes_hop_by_hop_headers_in_both_directions() {
    let up = Upstream::start(|_| async {
        http::Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("keep-alive", "timeout=9")
            .header("x-upstream-kept", "1")
            .body(full("ok"))
            .unwrap()
    });
    let gw = Config::proxy_to(up.addr()).start();
    let req = request("GET", "/")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("proxy-connection", "keep-alive")
        .header("x-end-to-end", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = send(gw.addr, req).await;

    assert_eq!(reply.status, 200);
    let seen = up.only_request();
    for hop in [
        "x-client-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "connection",
    ] {
        assert!(
            !seen.headers.contains_key(hop),
            "upstream saw `{hop}`: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-end-to-end"), "1");
    for hop in ["x-upstream-hop", "keep-alive", "connection"] {
        assert!(
            !reply.headers.contains_key(hop),
            "client saw `{hop}`: {:?}",
            reply.headers
        );
    }
    assert_eq!(reply.header("x-upstream-kept"), "1");
}

#[tokio::test]
async fn strips_and_adds_path_prefixes_before_forwarding() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams:
  - {name: app, targets: ["{{app}}"]}
routes:
  - name: both
    match: {paths: /api/}
    upstream: app
    rewrite: {strip_prefix: /api, add_prefix: /v2}
  - name: strip
    match: {paths: /legacy/}
    upstream: app
    rewrite: {strip_prefix: /legacy}
"#,
    )
    .var("app", up.addr())
    .start();

    assert_eq!(
        gw.get("/api/users?page=2").await.header("x-upstream-path"),
        "/v2/users?page=2"
    );
    assert_eq!(
        gw.get("/legacy/thing").await.header("x-upstream-path"),
        "/thing"
    );
    let paths: Vec<String> = up.requests().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(paths, ["/v2/users?page=2", "/thing"]);
}

#[tokio::test]
async fn spreads_requests_over_two_targets_by_weight() {
    let a = Upstream::echo();
    let b = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams:
  - name: even
    targets: ["{{a}}", "{{b}}"]
  - name: weighted
    targets: [{address: "{{a}}", weight: 3}, {address: "{{b}}", weight: 1}]
routes:
  - {name: even, match: {paths: /even}, upstream: even}
  - {name: weighted, match: {paths: /weighted}, upstream: weighted}
"#,
    )
    .var("a", a.addr())
    .var("b", b.addr())
    .start();

    for _ in 0..40 {
        assert_eq!(gw.get("/even").await.status, 200);
    }
    for _ in 0..40 {
        assert_eq!(gw.get("/weighted").await.status, 200);
    }
    let count = |up: &Upstream, path: &str| {
        up.requests()
            .iter()
            .filter(|s| s.uri.path() == path)
            .count()
    };
    // One worker, so the smooth weighted schedule (a a b a for 3:1) is followed exactly.
    assert_eq!((count(&a, "/even"), count(&b, "/even")), (20, 20));
    assert_eq!((count(&a, "/weighted"), count(&b, "/weighted")), (30, 10));
}

#[tokio::test]
async fn reuses_one_upstream_connection_across_client_connections() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    for _ in 0..5 {
        assert_eq!(get(gw.addr, "/").await.status, 200);
    }
    assert_eq!(up.requests().len(), 5);
    assert_eq!(
        up.connections(),
        1,
        "the keep-alive pool should have reused the connection"
    );
}

#[tokio::test]
async fn passes_head_and_no_content_responses_through_without_a_body() {
    let up = Upstream::start(|seen| async move {
        let status = if seen.uri.path() == "/empty" {
            204
        } else {
            200
        };
        http::Response::builder()
            .status(status)
            .header("content-length", if status == 204 { "0" } else { "42" })
            .body(full(Bytes::new()))
            .unwrap()
    });
    let gw = Config::proxy_to(up.addr()).start();

    let head = send(
        gw.addr,
        request("HEAD", "/doc").body(Empty::<Bytes>::new()).unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), "42");
    assert!(head.body.is_empty());
    assert_eq!(up.requests()[0].method, "HEAD");

    let empty = gw.get("/empty").await;
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());
}

#[tokio::test]
async fn keeps_percent_encoding_and_the_query_string_as_sent() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let reply = gw.get("/a%20b/%2F?q=x%26y&empty=&flag").await;

    assert_eq!(reply.status, 200);
    assert_eq!(up.only_request().uri, "/a%20b/%2F?q=x%26y&empty=&flag");
}
