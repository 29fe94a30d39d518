//! Bad and slow clients: malformed requests, oversize headers and bodies, slow headers,
//! stalled bodies and idle keep-alive connections. Each case checks the answer and that
//! the gateway goes on serving.

use bytes::Bytes;

use crate::support::client::{full, Raw};
use crate::support::{request, send, Config, Upstream};

/// A proxy to an echo upstream with small limits and short client timeouts.
fn limited(up: &Upstream) -> crate::support::TestGateway {
    Config::proxy_to(up.addr())
        .listener("max_body_bytes: 1024")
        .listener("client_header_timeout_ms: 300")
        .listener("client_body_timeout_ms: 300")
        .start()
}

#[tokio::test]
async fn answers_400_to_a_malformed_request_line_and_keeps_serving() {
    let up = Upstream::echo();
    let gw = limited(&up);
    for garbage in [
        &b"GARBAGE\x01 / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01 nonsense\r\n\r\n",
    ] {
        let mut raw = Raw::connect(gw.addr).await;
        raw.write(garbage).await;
        let resp = raw
            .read_response()
            .await
            .expect("a response to a malformed request");
        assert_eq!(
            resp.status,
            400,
            "for {:?}: {resp:?}",
            String::from_utf8_lossy(garbage)
        );
        assert!(
            raw.read_to_end().await.is_empty(),
            "the connection should be closed"
        );
    }
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(
        up.requests().len(),
        1,
        "no malformed request may reach the upstream"
    );
}

#[tokio::test]
async fn answers_431_to_a_64_kib_header() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let req = request("GET", "/")
        .header("x-big", "a".repeat(64 * 1024))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let reply = send(gw.addr, req).await;

    assert_eq!(reply.status, 431);
    let body = reply.json();
    assert_eq!(body["error"], "header_too_large");
    assert_eq!(body["request_id"], reply.header("x-request-id"));
    assert!(up.requests().is_empty());
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test]
async fn answers_413_json_to_a_declared_body_over_the_limit() {
    let up = Upstream::echo();
    let gw = limited(&up);
    // Like a client waiting for `100 Continue`: the body is never sent.
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .await;
    let resp = raw.read_response().await.expect("a response");

    assert_eq!(resp.status, 413);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = resp.json();
    assert_eq!(body["error"], "body_too_large");
    assert_eq!(
        Some(body["request_id"].as_str().unwrap().to_string()),
        resp.header("x-request-id")
    );
    assert!(up.requests().is_empty());

    // A body within the limit still goes through.
    let ok = send(
        gw.addr,
        request("POST", "/upload")
            .body(full(vec![7u8; 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body.len(), 1024);
}

#[tokio::test]
async fn answers_413_to_a_chunked_body_that_grows_over_the_limit() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    // 2 × 1000 bytes: over the 1024-byte limit; the last chunk is never sent.
    let chunk = format!("3e8\r\n{}\r\n", "z".repeat(1000));
    raw.write(chunk.as_bytes()).await;
    raw.write(chunk.as_bytes()).await;
    let resp = raw
        .read_response()
        .await
        .expect("a response before the body ends");

    // The upstream reads the whole body before answering, so no response has started
    // when the limit is crossed: the client gets the 413, not a cut connection.
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.json()["error"], "body_too_large");
    assert!(
        up.requests().is_empty(),
        "the upstream must not see a complete request"
    );
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test]
async fn answers_408_json_to_request_headers_sent_too_slowly() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET / HT").await;
    let resp = raw
        .read_response()
        .await
        .expect("a 408 after the header timeout");

    assert_eq!(resp.status, 408);
    let body = resp.json();
    assert_eq!(body["error"], "client_timeout");
    assert_eq!(
        Some(body["request_id"].as_str().unwrap().to_string()),
        resp.header("x-request-id")
    );
    assert!(
        raw.read_to_end().await.is_empty(),
        "the connection should be closed"
    );
    assert!(up.requests().is_empty());
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test]
async fn answers_408_to_a_request_body_that_stalls() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    let resp = raw
        .read_response()
        .await
        .expect("a 408 after the body timeout");

    assert_eq!(resp.status, 408, "{resp:?}");
    assert_eq!(resp.json()["error"], "client_timeout");
    assert!(
        up.requests().is_empty(),
        "the upstream must not see a complete request"
    );
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test]
async fn closes_an_idle_keep_alive_connection_quietly_after_the_header_timeout() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let first = raw.read_response().await.expect("a response");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-upstream-path").as_deref(), Some("/first"));

    // The connection stays open for a second request within the timeout...
    raw.write(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        raw.read_response().await.expect("a second response").status,
        200
    );

    // ...and is then closed without a 408 or any other byte.
    let rest = raw.read_to_end().await;
    assert!(
        rest.is_empty(),
        "expected a quiet close, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn answers_408_to_a_client_that_trickles_header_bytes_past_the_timeout() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    // One byte every 50 ms: progress does not extend the 300 ms deadline for the head.
    let head =
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for b in head.iter() {
        raw.write(&[*b]).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resp = raw.read_response().await.expect("a 408");

    assert_eq!(resp.status, 408, "{resp:?}");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn answers_408_to_a_slow_head_on_a_reused_keep_alive_connection() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(raw.read_response().await.unwrap().status, 200);
    raw.write(b"GET /sec").await;
    let resp = raw
        .read_response()
        .await
        .expect("a 408 for the second head");

    assert_eq!(resp.status, 408);
    assert_eq!(resp.json()["error"], "client_timeout");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn answers_413_to_a_declared_body_over_the_limit_that_the_client_sends_anyway() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    let mut req = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'b'; 65536]);
    raw.write(&req).await;
    let resp = raw
        .read_response()
        .await
        .expect("the 413 arrives, not a reset");

    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "body_too_large");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn sends_100_continue_and_proxies_the_body_that_follows() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = raw.read_response().await.expect("an interim response");
    assert_eq!(interim.status, 100, "{interim:?}");
    raw.write(b"hello").await;
    let resp = raw.read_response().await.expect("the final response");

    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello");
    assert_eq!(up.only_request().body, "hello");
}

#[tokio::test]
async fn serves_an_http_1_0_request_and_closes_the_connection() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET /old HTTP/1.0\r\n\r\n").await;
    let all = String::from_utf8(raw.read_to_end().await).unwrap();

    assert!(
        all.starts_with("HTTP/1.0 200") || all.starts_with("HTTP/1.1 200"),
        "{all}"
    );
    assert!(
        all.to_ascii_lowercase().contains("x-upstream-path: /old"),
        "{all}"
    );
    assert_eq!(up.only_request().uri, "/old");
}

#[tokio::test]
async fn closes_a_tls_connection_that_never_starts_its_handshake() {
    let certs = tempfile::tempdir().unwrap();
    crate::support::tls::SelfSigned::write_to(certs.path());
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listeners(
            "listeners:\n  - address: 127.0.0.1:0\n    client_header_timeout_ms: 300\n    tls: {cert_file: '{{certs}}/cert.pem', key_file: '{{certs}}/key.pem'}\n",
        )
        .var("certs", certs.path().display())
        .start();
    let mut raw = Raw::connect(gw.addr).await;
    // Nothing is sent; the gateway gives up after the header timeout.
    assert!(raw.read_to_end().await.is_empty());
}

#[tokio::test]
async fn forwards_the_chunked_body_and_never_a_stale_content_length_when_both_are_sent() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a proxy must not
    // forward the Content-Length (a request-smuggling vector otherwise).
    raw.write(b"POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    let resp = raw.read_response().await.expect("a response");

    match resp.status {
        200 => {
            let seen = up.only_request();
            assert_eq!(seen.body, "hello");
            assert_ne!(
                seen.header("content-length"),
                "3",
                "a stale Content-Length was forwarded"
            );
        }
        400 => assert!(up.requests().is_empty()),
        other => panic!("unexpected {other}: {resp:?}"),
    }
}

#[tokio::test]
async fn applies_a_lower_max_header_bytes_from_the_listener() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listener("max_header_bytes: 2048")
        .start();
    let with_header = |size: usize| {
        request("GET", "/")
            .header("x-pad", "p".repeat(size))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };

    assert_eq!(send(gw.addr, with_header(1000)).await.status, 200);
    let big = send(gw.addr, with_header(3000)).await;
    assert_eq!(big.status, 431);
    assert_eq!(big.json()["error"], "header_too_large");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn stops_an_upload_that_crosses_the_limit_after_the_upstream_already_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers as soon as the head arrives, then keeps reading (and discarding) the body.
    let eager = crate::support::RawUpstream::start(|mut stream| async move {
        let mut buf = vec![0u8; 65536];
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        let _ = stream.write_all(b"4\r\nlate\r\n0\r\n\r\n").await;
    });
    let gw = Config::proxy_to(eager.addr())
        .listener("max_body_bytes: 1024")
        .start();
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    raw.write(b"10\r\n0123456789abcdef\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Cross the limit while the upstream's 200 is already on its way to the gateway.
    raw.write(format!("400\r\n{}\r\n", "z".repeat(1024)).as_bytes())
        .await;
    let all = String::from_utf8_lossy(&raw.read_to_end().await).into_owned();

    // Either the gateway had not forwarded the answer yet and says 413, or it had and can
    // only cut the response short: never a complete 200, never a hang.
    if all.starts_with("HTTP/1.1 413") {
        assert!(all.contains("body_too_large"), "{all:?}");
    } else {
        assert!(all.starts_with("HTTP/1.1 200"), "{all:?}");
        assert!(
            !all.contains("late") && !all.ends_with("0\r\n\r\n"),
            "the body must not complete: {all:?}"
        );
    }
    assert_eq!(gw.get("/").await.status, 200, "the gateway keeps serving");
}

#[tokio::test]
async fn closes_a_connection_that_stalls_inside_the_http2_preface() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    // Half of the 24-byte HTTP/2 connection preface, then nothing.
    raw.write(b"PRI * HTTP/2.0\r\n").await;
    // The connection is closed (hyper may first answer the partial preface with a 400).
    let rest = raw.read_to_end().await;
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn answers_pipelined_requests_in_order_on_one_connection() {
    let up = Upstream::echo();
    let gw = limited(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    for (path, body) in [("/one", ""), ("/two", "abc"), ("/three", "")] {
        let resp = raw.read_response().await.expect("a pipelined response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-upstream-path").as_deref(), Some(path));
        assert_eq!(resp.body, body);
    }
    let paths: Vec<String> = up.requests().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
}
