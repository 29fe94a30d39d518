//! The HTTP/1.1 server's connection rules, over raw sockets: when a connection stays open
//! and when it closes, how responses are framed for each client version, HEAD, and what
//! happens to request bodies the gateway never needed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client::Raw;
use crate::support::upstream::RawUpstream;
use crate::support::{within, Config, Upstream};

/// A gateway with a proxied route `/up`, a local answer on `/local`, and a local answer
/// that asks to close the connection.
fn gateway(up: &Upstream) -> crate::support::TestGateway {
    Config::new(
        r#"
upstreams: [{name: app, targets: ["{{up}}"]}]
routes:
  - {name: up, match: {paths: /up}, upstream: app}
  - name: local
    match: {paths: /local}
    plugins: [{name: request_termination, config: {status: 200, body: local answer}}]
  - name: bye
    match: {paths: /bye}
    plugins:
      - name: request_termination
        config: {status: 503, body: going away, headers: {connection: close}}
"#,
    )
    .var("up", up.addr())
    .start()
}

#[tokio::test]
async fn keeps_a_connection_open_after_a_short_body_it_answered_without_reading() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    // The local answer needs no body; the whole body is already here, so it is skipped
    // and the next request on the connection is read correctly.
    raw.write(b"POST /local HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")
        .await;
    let first = raw.read_response().await.expect("first response");
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "local answer");
    assert_eq!(first.header("connection"), None, "{}", first.head);

    raw.write(b"GET /up/next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let second = raw.read_response().await.expect("second response");
    assert_eq!(second.status, 200);
    assert_eq!(
        second.header("x-upstream-path").as_deref(),
        Some("/up/next")
    );
}

#[tokio::test]
async fn closes_gracefully_after_answering_before_a_large_upload_arrived() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"POST /local HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n")
        .await;
    // The answer comes before the body, says the connection closes, and the upload that
    // still follows is read and dropped: no reset destroys the answer.
    let resp = raw.read_response().await.expect("the answer");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..8 {
        if raw.stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut rest = Vec::new();
    let end = within("close", raw.stream.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "a clean close, not a reset: {end:?}");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn answers_head_with_the_length_of_the_body_it_leaves_out() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"HEAD /local HTTP/1.1\r\nHost: x\r\n\r\nGET /local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let all = String::from_utf8(raw.read_to_end().await).unwrap();
    let (head, rest) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(head.contains("\r\ncontent-length: 12\r\n"), "{all}");
    // The body the HEAD left out is not there: the next bytes are the GET's answer.
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(rest.ends_with("\r\n\r\nlocal answer"), "{all}");
}

#[tokio::test]
async fn keeps_an_http_1_0_connection_open_when_the_client_asks() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    for path in ["/up/one", "/up/two"] {
        raw.write(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await;
        let resp = raw.read_response().await.expect("a response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection").as_deref(), Some("keep-alive"));
        assert_eq!(resp.header("x-upstream-path").as_deref(), Some(path));
    }
}

#[tokio::test]
async fn closes_when_a_local_answer_says_connection_close() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET /bye HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let all = String::from_utf8(raw.read_to_end().await).unwrap();
    assert!(
        all.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{all}"
    );
    assert_eq!(all.matches("connection: close").count(), 1, "{all}");
    assert!(all.ends_with("\r\n\r\ngoing away"), "{all}");
}

#[tokio::test]
async fn every_response_carries_a_date() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = raw.read_response().await.expect("a response");
    let date = resp.header("date").expect("a Date header");
    assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
}

/// An upstream that answers without a length and closes to end the body.
fn unframed_upstream() -> RawUpstream {
    RawUpstream::start(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello ")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stream.write_all(b"world").await;
    })
}

#[tokio::test]
async fn frames_a_body_of_unknown_length_chunked_for_http_1_1_and_by_closing_for_1_0() {
    let up = unframed_upstream();
    let gw = Config::proxy_to(up.addr()).start();

    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut wire = Vec::new();
    let mut buf = [0u8; 4096];
    while !wire.ends_with(b"0\r\n\r\n") {
        let n = within("chunked body", raw.stream.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&wire));
        wire.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(wire).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body, "6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
    // The connection is still usable.
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let again = raw.read_response().await.expect("a second response");
    assert_eq!(again.status, 200);

    let mut old = Raw::connect(gw.addr).await;
    old.write(b"GET / HTTP/1.0\r\n\r\n").await;
    let text = String::from_utf8(old.read_to_end().await).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert_eq!(body, "hello world");
}

#[tokio::test]
async fn does_not_invite_a_body_it_will_not_read() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(
        b"POST /local HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // No `100 Continue`: the final answer comes at once, and the connection closes since
    // the client may or may not send the body now.
    let resp = raw.read_response().await.expect("the final answer");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
}

#[tokio::test]
async fn gives_up_on_a_client_that_stops_reading_its_response() {
    const BIG: usize = 64 * 1024 * 1024;
    let up = Upstream::start(|_| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            BIG
        ])))
    });
    let gw = Config::proxy_to(up.addr())
        .listener("client_send_timeout_ms: 300")
        .start();
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Nothing is read while the gateway's writes fill the socket buffers and stall.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = raw.read_to_end().await;
    assert!(
        got.len() < BIG,
        "the whole response arrived: the stalled write was never given up"
    );
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // The gateway goes on serving.
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test]
async fn survives_mangled_requests_and_goes_on_serving() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listener("client_header_timeout_ms: 200")
        .listener("client_body_timeout_ms: 200")
        .start();
    let valid: [&[u8]; 3] = [
        b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Long: yyyyyyyyyyyy\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    // A deterministic spread of damage: flipped bytes, cuts and duplicated pieces.
    let mut state = 0x9e37_79b9_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as usize
    };
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..300 {
        let mut bytes = valid[i % valid.len()].to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = next() % bytes.len();
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes.truncate(at.max(1)),
                _ => {
                    let piece = bytes[at..].to_vec();
                    bytes.extend_from_slice(&piece);
                }
            }
        }
        let addr = gw.addr;
        clients.spawn(async move {
            let mut raw = Raw::connect(addr).await;
            raw.write(&bytes).await;
            // Either an answer (any status) or a close: never a hang past the timeouts.
            raw.read_to_end().await.starts_with(b"HTTP/1.1 ")
        });
    }
    let mut answered = 0;
    while let Some(done) = clients.join_next().await {
        answered += usize::from(done.unwrap());
    }
    assert!(answered > 100, "only {answered} of 300 got an answer");
    let reply = gw.get("/still-here").await;
    assert_eq!(reply.status, 200);
}

/// An upstream that answers every request on a connection with `head` and a 2-byte body.
fn fixed_head_upstream(head: &'static str) -> RawUpstream {
    RawUpstream::start(move |mut stream| async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || stream.write_all(head.as_bytes()).await.is_err() {
                break;
            }
        }
    })
}

#[tokio::test]
async fn passes_upstream_header_lines_through_as_sent_without_hop_by_hop_ones() {
    let up = fixed_head_upstream(
        "HTTP/1.1 200 OK\r\nServer: origin\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
         X-Request-Id: theirs\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nDate: Sat, 21 Nov 2026 10:00:00 GMT\r\n\
         Proxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    );
    let gw = Config::proxy_to(up.addr()).start();
    let mut conn = Raw::connect(gw.addr).await;
    for _ in 0..2 {
        conn.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let resp = conn.read_response().await.expect("a response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "ok");
        // The end-to-end lines in their order and spelling, one `Date` (the upstream's),
        // the gateway's request id, and no hop-by-hop line.
        assert!(
            resp.head.starts_with(
                "HTTP/1.1 200 OK\r\nServer: origin\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
                 Date: Sat, 21 Nov 2026 10:00:00 GMT\r\nContent-Length: 2\r\nx-request-id: "
            ),
            "{}",
            resp.head
        );
        assert_ne!(resp.header("x-request-id").as_deref(), Some("theirs"));
        let lower = resp.head.to_ascii_lowercase();
        assert_eq!(lower.matches("date:").count(), 1, "{}", resp.head);
        for hop in ["connection:", "keep-alive:", "proxy-connection:"] {
            assert!(!lower.contains(hop), "{hop} in {}", resp.head);
        }
    }
}

#[tokio::test]
async fn rebuilds_upstream_headers_when_a_line_does_not_just_pass() {
    // A header named in `Connection` is hop-by-hop too; a bare-LF line is written as CRLF.
    let up = fixed_head_upstream(
        "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok",
    );
    let gw = Config::proxy_to(up.addr()).start();
    let mut conn = Raw::connect(gw.addr).await;
    conn.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let resp = conn.read_response().await.expect("a response");
    assert_eq!(resp.body, "ok");
    assert_eq!(resp.header("x-private"), None, "{}", resp.head);
    assert_eq!(resp.header("x-kept").as_deref(), Some("2"));
    assert!(!resp.head.contains("\n\n") && !resp.head.replace("\r\n", "").contains('\n'));

    // Lines with a bare LF but nothing to drop by name still reach the client in CRLF.
    let up = fixed_head_upstream("HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 2\n\nok");
    let gw = Config::proxy_to(up.addr()).start();
    let mut conn = Raw::connect(gw.addr).await;
    conn.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let resp = conn.read_response().await.expect("a response");
    assert_eq!(resp.body, "ok");
    assert!(
        resp.head.contains("\r\nX-A: 1\r\nContent-Length: 2\r\n"),
        "{}",
        resp.head
    );
}

#[tokio::test]
async fn answers_400_to_requests_that_break_the_host_rules() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    for head in [
        &b"GET /up HTTP/1.1\r\nX-No-Host: 1\r\n\r\n"[..],
        &b"GET /up HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"[..],
    ] {
        let mut raw = Raw::connect(gw.addr).await;
        raw.write(head).await;
        let resp = raw.read_response().await.expect("a response");
        assert_eq!(resp.status, 400, "{}", resp.head);
        assert!(resp.body.contains("Host"), "{}", resp.body);
    }
    assert!(up.requests().is_empty(), "{:#?}", up.requests());
}

#[tokio::test]
async fn an_absolute_form_target_sets_the_host_the_upstream_sees() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(b"GET http://other.example/up/x HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await;
    let resp = raw.read_response().await.expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.header("x-upstream-path").as_deref(), Some("/up/x"));
    let seen = up.only_request();
    assert_eq!(seen.headers["host"], "other.example");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn answers_400_to_a_broken_chunked_body() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let resp = raw.read_response().await.expect("a response");
    assert_eq!(resp.status, 400, "{}", resp.head);
    assert!(resp.body.contains("chunked"), "{}", resp.body);
    assert_eq!(
        resp.header("connection").as_deref(),
        Some("close"),
        "{}",
        resp.head
    );
}

#[tokio::test]
async fn an_upstream_that_sends_more_than_its_response_still_answers_each_client() {
    // Every answer carries a second, unasked-for response behind it.
    let up = fixed_head_upstream(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
    );
    let gw = Config::proxy_to(up.addr()).start();
    for _ in 0..3 {
        let resp = gw.get("/a").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body, "ok");
    }
}

#[tokio::test]
async fn an_upstream_that_answers_twice_later_still_answers_each_client() {
    // The extra response arrives while the connection is idle in the pool.
    let up = RawUpstream::start(|mut stream| async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = stream
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
                .await;
        }
    });
    let gw = Config::proxy_to(up.addr()).start();
    for _ in 0..3 {
        let resp = gw.get("/a").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body, "ok");
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
}
