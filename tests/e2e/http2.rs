//! HTTP/2 on both sides: prior-knowledge h2c on a cleartext listener, ALPN on a TLS
//! listener (h2 and http/1.1), and an upstream configured with `protocol: http2`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{Empty, Full};

use crate::support::client::{full, send_h2, Conn};
use crate::support::tls::{negotiated, SelfSigned};
use crate::support::{is_uuid, request, send, Config, Upstream};

#[tokio::test]
async fn serves_h2c_prior_knowledge_on_a_cleartext_listener() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let authority = format!("localhost:{}", gw.addr.port());
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{authority}/h2?x=1"))
        .body(full("hello over h2c"))
        .unwrap();
    let reply = send_h2(gw.addr, req).await;

    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello over h2c");
    let seen = up.only_request();
    assert_eq!(seen.version, Version::HTTP_11, "the upstream is HTTP/1.1");
    assert_eq!(seen.uri, "/h2?x=1");
    assert_eq!(seen.header("host"), authority);
    assert_eq!(seen.header("x-forwarded-host"), authority);
    assert_eq!(seen.header("x-request-id"), reply.header("x-request-id"));
}

#[tokio::test]
async fn multiplexes_concurrent_h2c_streams_on_one_connection() {
    let up = Upstream::slow(Duration::from_millis(100));
    let gw = Config::proxy_to(up.addr()).start();
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let conn: Conn<Empty<Bytes>> = Conn::handshake(stream, true).await;
    let Conn::H2(sender) = conn else {
        unreachable!()
    };
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut stream = Conn::H2(sender.clone());
        let req = Request::get(format!("http://localhost/stream/{i}"))
            .body(Empty::new())
            .unwrap();
        tasks.push(tokio::spawn(async move { stream.try_send(req).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let reply = t.await.unwrap().unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-upstream-path"), format!("/stream/{i}"));
        assert!(is_uuid(reply.header("x-request-id")));
        ids.insert(reply.header("x-request-id").to_string());
    }
    assert_eq!(ids.len(), 5, "every stream gets its own request id");
}

#[tokio::test]
async fn serves_h2_over_tls_when_the_client_offers_h2() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::write_to(certs.path());
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listeners("listeners:\n  - address: 127.0.0.1:0\n    tls: {cert_file: '{{certs}}/cert.pem', key_file: '{{certs}}/key.pem'}\n")
        .var("certs", certs.path().display())
        .start();

    let tls = cert.connect(gw.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(negotiated(&tls).as_deref(), Some(&b"h2"[..]));
    let mut conn = Conn::handshake(tls, true).await;
    let req = Request::get(format!("https://localhost:{}/secure", gw.addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = conn.try_send(req).await.unwrap();

    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, 200);
    let seen = up.only_request();
    assert_eq!(seen.uri, "/secure");
    assert_eq!(seen.header("x-forwarded-proto"), "https");
}

#[tokio::test]
async fn serves_http1_over_tls_when_the_client_offers_only_http1_or_no_alpn() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::write_to(certs.path());
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listeners("listeners:\n  - address: 127.0.0.1:0\n    tls: {cert_file: '{{certs}}/cert.pem', key_file: '{{certs}}/key.pem'}\n")
        .var("certs", certs.path().display())
        .start();

    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let tls = cert.connect(gw.addr, alpn).await;
        let expected = if alpn.is_empty() {
            None
        } else {
            Some(b"http/1.1".to_vec())
        };
        assert_eq!(negotiated(&tls), expected);
        let mut conn = Conn::handshake(tls, false).await;
        let reply = conn
            .try_send(
                request("GET", "/secure")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(reply.version, Version::HTTP_11);
        assert_eq!(reply.status, 200);
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.header("x-forwarded-proto") == "https"));
}

#[tokio::test]
async fn speaks_http2_to_an_upstream_configured_for_it() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{app}}"], protocol: http2}]
routes: [{name: all, upstream: app}]
"#,
    )
    .var("app", up.addr())
    .start();

    let reply = send(
        gw.addr,
        request("POST", "/over/h2?q=1")
            .body(full("payload"))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, Version::HTTP_11, "the client spoke HTTP/1.1");
    assert_eq!(reply.text(), "payload");
    for _ in 0..3 {
        assert_eq!(crate::support::get(gw.addr, "/again").await.status, 200);
    }

    let seen = up.requests();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "{seen:#?}"
    );
    assert_eq!(
        seen[0].uri.path_and_query().unwrap().as_str(),
        "/over/h2?q=1"
    );
    // The client's host travels as :authority, as it travels as Host to HTTP/1.1 upstreams.
    assert_eq!(
        seen[0].uri.authority().map(|a| a.as_str()),
        Some("localhost")
    );
    assert_eq!(seen[0].header("x-forwarded-host"), "localhost");
    assert_eq!(seen[0].header("x-request-id"), reply.header("x-request-id"));
    assert_eq!(
        up.connections(),
        1,
        "HTTP/2 requests share one upstream connection"
    );
}

#[tokio::test]
async fn answers_413_on_one_h2_stream_and_keeps_the_connection_serving() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listener("max_body_bytes: 1024")
        .start();
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut conn = Conn::handshake(stream, true).await;
    let too_big = Request::post("http://localhost/upload")
        .body(full(vec![1u8; 4096]))
        .unwrap();
    let reply = conn.try_send(too_big).await.expect("a 413 on the stream");
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"], "body_too_large");

    let fine = Request::post("http://localhost/upload")
        .body(full(vec![2u8; 512]))
        .unwrap();
    let reply = conn
        .try_send(fine)
        .await
        .expect("the same connection still serves");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 512);
}

/// An HTTPS upstream trusted through `ca_file`, over HTTP/1.1 or (by ALPN) HTTP/2.
async fn through_a_tls_upstream(
    protocol: &str,
    alpn: &[&[u8]],
) -> (
    crate::support::client::Reply,
    Vec<crate::support::upstream::Seen>,
) {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::write_to(certs.path());
    let up = Upstream::echo_tls(cert.server_config(alpn));
    let gw = Config::new(
        r#"
upstreams:
  - name: app
    targets: ["{{app}}"]
    scheme: https
    protocol: {{protocol}}
    tls: {ca_file: "{{certs}}/cert.pem", sni: localhost}
routes: [{name: all, upstream: app}]
"#,
    )
    .var("app", up.addr())
    .var("protocol", protocol)
    .var("certs", certs.path().display())
    .start();
    let reply = send(
        gw.addr,
        request("POST", "/tls/path?q=1")
            .body(full("sealed"))
            .unwrap(),
    )
    .await;
    (reply, up.requests())
}

#[tokio::test]
async fn proxies_to_an_https_upstream_over_http1_with_an_origin_form_target() {
    let (reply, seen) = through_a_tls_upstream("http1", &[b"http/1.1"]).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "sealed");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_11);
    // RFC 9112 §3.2.1: a request straight to an origin server carries origin-form.
    assert_eq!(seen[0].uri.to_string(), "/tls/path?q=1");
    assert_eq!(seen[0].header("host"), "localhost");
}

#[tokio::test]
async fn proxies_to_an_https_upstream_over_h2_negotiated_by_alpn() {
    let (reply, seen) = through_a_tls_upstream("http2", &[b"h2"]).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "sealed");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(
        seen[0].uri.path_and_query().unwrap().as_str(),
        "/tls/path?q=1"
    );
    assert_eq!(seen[0].uri.scheme_str(), Some("https"));
}

#[tokio::test]
async fn closes_an_idle_h2c_connection_after_the_header_timeout_and_keeps_a_busy_one() {
    let up = Upstream::slow(Duration::from_millis(700));
    let gw = Config::proxy_to(up.addr())
        .listener("client_header_timeout_ms: 300")
        .start();
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let closed = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let _ = conn.await;
        started.elapsed()
    });
    // A request slower than the timeout keeps the connection: it is not idle meanwhile.
    let req = Request::get("http://localhost/slow")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Then, with nothing in flight, the gateway ends the connection within two windows.
    let lifetime = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the idle HTTP/2 connection was never closed")
        .unwrap();
    assert!(
        lifetime >= Duration::from_millis(700),
        "closed while busy after {lifetime:?}"
    );
}
