//! Upstreams that fail: refused connections, silence, resets in the middle of a body; and
//! the error counters on `/metrics`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::try_send;
use crate::support::upstream::dead_address;
use crate::support::{metric, request, Config, RawUpstream, TestGateway, Upstream};

/// Reads an HTTP/1.1 request head off `stream` (the body, if any, is ignored).
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    true
}

fn gateway_with(upstreams: &str, extra_routes: &str) -> TestGateway {
    Config::new(&format!("upstreams:\n{upstreams}\nroutes:\n{extra_routes}")).start()
}

#[tokio::test]
async fn answers_502_json_when_the_upstream_refuses_connections() {
    let gw = Config::proxy_to(dead_address()).start();
    let reply = gw.get("/").await;

    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("content-type"), "application/json");
    let body = reply.json();
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["request_id"], reply.header("x-request-id"));
}

#[tokio::test]
async fn retries_a_refused_connection_on_the_next_target() {
    let up = Upstream::echo();
    let gw = Config::new(
        r#"
upstreams: [{name: app, targets: ["{{dead}}", "{{live}}"]}]
routes: [{name: all, upstream: app}]
"#,
    )
    .var("dead", dead_address())
    .var("live", up.addr())
    .start();

    for _ in 0..4 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(up.requests().len(), 4);
    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"sluicegate_upstream_errors_total{upstream="app",kind="connect"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn answers_504_when_the_upstream_never_answers() {
    let silent = RawUpstream::silent();
    let gw = gateway_with(
        &format!(
            "  - {{name: silent, targets: [\"{}\"], read_timeout_ms: 300}}",
            silent.addr()
        ),
        "  - {name: all, upstream: silent}",
    );
    let started = Instant::now();
    let reply = gw.get("/").await;

    assert_eq!(reply.status, 504);
    let body = reply.json();
    assert_eq!(body["error"], "upstream_timeout");
    assert_eq!(body["request_id"], reply.header("x-request-id"));
    // Not before the read timeout (the upper bound is the harness's step timeout).
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(silent.accepted(), 1);
}

/// An upstream whose first connection sends a head and 100 of 1000 promised bytes, then
/// resets; later connections answer `ok` properly.
fn resets_first_then_answers() -> RawUpstream {
    let calls = Arc::new(AtomicUsize::new(0));
    RawUpstream::start(move |mut stream| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if !read_head(&mut stream).await {
                return;
            }
            if call == 0 {
                let mut partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
                partial.extend_from_slice(&[b'x'; 100]);
                let _ = stream.write_all(&partial).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // SO_LINGER 0: close with RST instead of FIN.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
            } else {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    })
}

#[tokio::test]
async fn cuts_the_client_off_when_the_upstream_resets_mid_body_and_serves_the_next_request() {
    let flaky = resets_first_then_answers();
    let gw = Config::proxy_to(flaky.addr()).start();
    let req = request("GET", "/big")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let first = try_send(gw.addr, req).await;

    match first {
        Err(e) => assert!(!e.is_empty()),
        Ok(r) => panic!(
            "expected a cut-off body, got a complete {} with {} bytes",
            r.status,
            r.body.len()
        ),
    }
    let second = gw.get("/next").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "ok");
    assert_eq!(
        flaky.accepted(),
        2,
        "the broken connection must not be reused"
    );
    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"sluicegate_upstream_errors_total{upstream="app",kind="body"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn counts_upstream_errors_by_kind_in_metrics() {
    let silent = RawUpstream::silent();
    let gw = gateway_with(
        &format!(
            "  - {{name: dead, targets: [\"{}\"]}}\n  - {{name: silent, targets: [\"{}\"], read_timeout_ms: 200}}",
            dead_address(),
            silent.addr()
        ),
        "  - {name: dead, match: {paths: /dead}, upstream: dead}\n  - {name: silent, match: {paths: /silent}, upstream: silent}",
    );
    for _ in 0..2 {
        assert_eq!(gw.get("/dead").await.status, 502);
    }
    assert_eq!(gw.get("/silent").await.status, 504);

    let metrics = gw.admin_get("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"sluicegate_upstream_errors_total{upstream="dead",kind="connect"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"sluicegate_upstream_errors_total{upstream="silent",kind="timeout"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"sluicegate_requests_total{route="dead",status="502"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"sluicegate_requests_total{route="silent",status="504"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn answers_502_when_the_upstream_resets_before_answering() {
    let rude = RawUpstream::start(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    });
    let gw = Config::proxy_to(rude.addr()).start();
    let reply = gw.get("/").await;

    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_error");
}

#[tokio::test]
async fn cuts_off_a_response_body_that_stalls_past_the_read_timeout() {
    let stalls = RawUpstream::start(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst bytes")
                .await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    let gw = gateway_with(
        &format!(
            "  - {{name: app, targets: [\"{}\"], read_timeout_ms: 300}}",
            stalls.addr()
        ),
        "  - {name: all, upstream: app}",
    );
    let req = request("GET", "/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();

    let result = try_send(gw.addr, req).await;
    assert!(result.is_err(), "expected a cut-off body, got {result:?}");
    crate::support::eventually("the body failure is counted", || async {
        let text = gw.admin_get("/metrics").await.text();
        metric(
            &text,
            r#"sluicegate_upstream_errors_total{upstream="app",kind="body"}"#,
        ) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn survives_an_upstream_that_closes_idle_keep_alive_connections() {
    // Answers one request per connection, then closes without saying `Connection: close`.
    let closes = RawUpstream::start(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let gw = Config::proxy_to(closes.addr()).start();
    for i in 0..5 {
        let reply = gw.get("/").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.text(), "ok");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(closes.accepted(), 5);
}

#[tokio::test]
async fn answers_502_to_an_upstream_that_does_not_speak_http() {
    let garbage = RawUpstream::start(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        }
    });
    let gw = Config::proxy_to(garbage.addr()).start();
    let reply = gw.get("/").await;

    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_error");
}

#[tokio::test]
async fn answers_504_when_the_upstream_never_answers_a_request_with_a_body() {
    let silent = RawUpstream::silent();
    let gw = gateway_with(
        &format!(
            "  - {{name: silent, targets: [\"{}\"], read_timeout_ms: 300}}",
            silent.addr()
        ),
        "  - {name: all, upstream: silent}",
    );
    let sized = request("POST", "/sized")
        .body(crate::support::client::full("0123456789"))
        .unwrap();
    let reply = crate::support::send(gw.addr, sized).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"], "upstream_timeout");

    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
        vec![Ok(http_body::Frame::data(Bytes::from_static(b"chunk")))];
    let streamed = request("POST", "/chunked")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )))
        .unwrap();
    let reply = crate::support::send(gw.addr, streamed).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
}

#[tokio::test]
async fn forwards_an_upstream_answer_sent_before_it_read_the_upload() {
    // Rejects every upload as soon as it sees the head, then closes without reading on.
    let rejects = RawUpstream::start(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let gw = Config::proxy_to(rejects.addr()).start();
    let size = 8 * 1024 * 1024;
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    let answer = crate::support::client::upload_while_reading(gw.addr, head.as_bytes(), size).await;
    let answer = String::from_utf8_lossy(&answer);

    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected the upstream's 413, got {answer:?}"
    );
    assert!(answer.ends_with("too big!"), "{answer:?}");
}
