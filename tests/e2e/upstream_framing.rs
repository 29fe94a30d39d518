//! Upstream responses by the rules of RFC 9112 §6.3 and RFC 9110 §15.2: interim (1xx)
//! responses, framing precedence (Transfer-Encoding over Content-Length, bodiless statuses,
//! read-until-close), invalid lengths, obs-fold and bare LF in response heads, and the
//! `Connection` option list. Each upstream is a raw TCP server that writes exactly the bytes
//! a test gives it; the client reads raw bytes too, so what the gateway wrote is what is
//! checked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client::Raw;
use crate::support::{Config, RawUpstream};

/// An upstream that answers each request head with `response` (raw bytes); counts the
/// connections it accepted. With `close`, it closes after writing.
fn scripted(response: &'static [u8], close: bool) -> (RawUpstream, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let up = RawUpstream::start(move |mut stream| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                    if close {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            }
        }
    });
    (up, accepted)
}

async fn get_twice(gw_addr: std::net::SocketAddr) -> Vec<crate::support::client::RawResponse> {
    let mut client = Raw::connect(gw_addr).await;
    let mut out = Vec::new();
    for path in ["/a", "/b"] {
        client
            .write(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        out.push(client.read_response().await.expect("a response"));
    }
    out
}

#[tokio::test]
async fn interim_responses_from_the_upstream_are_not_taken_for_the_answer() {
    // RFC 9110 §15.2: any number of 1xx (but 101) may come before the final response.
    let cases: [&'static [u8]; 2] = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n\
          HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ];
    for response in cases {
        let (up, _) = scripted(response, false);
        let gw = Config::proxy_to(up.addr()).start();
        for resp in get_twice(gw.addr).await {
            assert_eq!(resp.status, 200, "{}", resp.head);
            assert_eq!(resp.body, "ok");
        }
    }
}

#[tokio::test]
async fn transfer_encoding_overrides_content_length_and_the_length_is_not_passed_on() {
    // RFC 9112 §6.3: chunked wins; an intermediary that forwards such a message must drop
    // the Content-Length first. The connection to the upstream is not used again.
    let (up, accepted) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\n\r\n",
        false,
    );
    let gw = Config::proxy_to(up.addr()).start();
    for _ in 0..2 {
        let mut client = Raw::connect(gw.addr).await;
        client
            .write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let resp = client.read_response().await.expect("a response");
        let head = resp.head.to_ascii_lowercase();
        if resp.status == 200 {
            let body = if head.contains("transfer-encoding: chunked") {
                dechunk(&resp.body)
            } else {
                resp.body.clone()
            };
            assert_eq!(body, "ok", "{head}");
            assert!(!head.contains("content-length: 100"), "{head}");
        } else {
            assert_eq!(resp.status, 502, "{head}");
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "no reuse after ambiguous framing"
    );
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_502_and_the_connection_is_dropped() {
    // RFC 9112 §6.3 item 5: an invalid length in a response is unrecoverable; a proxy
    // answers 502 and closes its connection to the server.
    let (up, accepted) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk",
        false,
    );
    let gw = Config::proxy_to(up.addr()).start();
    for resp in get_twice(gw.addr).await {
        assert_eq!(resp.status, 502, "{}", resp.head);
        assert!(resp.body.contains("request_id"), "{}", resp.body);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_non_numeric_content_length_is_a_502() {
    let (up, _) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false);
    let gw = Config::proxy_to(up.addr()).start();
    let resp = &get_twice(gw.addr).await[0];
    assert_eq!(resp.status, 502, "{}", resp.head);
}

#[tokio::test]
async fn a_204_carries_no_body_even_when_the_upstream_sends_one() {
    // §6.3 item 1: 1xx, 204 and 304 end at the head. Bytes the upstream sent after it are
    // not a body, and must not become the next client's response.
    let (up, _) = scripted(
        b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
        false,
    );
    let gw = Config::proxy_to(up.addr()).start();
    let mut client = Raw::connect(gw.addr).await;
    for _ in 0..2 {
        client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let resp = client.read_response().await.expect("a response");
        assert_eq!(resp.status, 204, "{}", resp.head);
        assert!(resp.body.is_empty());
    }
}

#[tokio::test]
async fn a_response_whose_last_coding_is_not_chunked_is_read_to_the_close() {
    // §6.3 item 4: the body of such a response ends when the server closes. The client
    // gets it whole, framed so that it can tell where it ends.
    let (up, _) = scripted(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nrest-of-the-bytes",
        true,
    );
    let gw = Config::proxy_to(up.addr()).start();
    let mut client = Raw::connect(gw.addr).await;
    // `close`: the client reads to the end, whichever framing the gateway chose.
    client
        .write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let resp = client.read_response().await.expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let head = resp.head.to_ascii_lowercase();
    // Either the whole body, re-framed, or the close-delimited bytes as sent.
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&resp.body)
    } else {
        resp.body.clone()
    };
    assert_eq!(body, "rest-of-the-bytes", "{head}");
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[tokio::test]
async fn obs_fold_in_a_response_head_never_reaches_the_client() {
    // RFC 9112 §5.2: a proxy either rejects obs-fold or replaces it with spaces; the
    // gateway rejects it.
    let (up, _) = scripted(
        b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
        false,
    );
    let gw = Config::proxy_to(up.addr()).start();
    let resp = &get_twice(gw.addr).await[0];
    assert!(
        !resp.head.contains("\r\n "),
        "no folded line: {:?}",
        resp.head
    );
    assert_eq!(resp.status, 502, "refused, not unfolded: {}", resp.head);
}

#[tokio::test]
async fn a_response_head_with_bare_line_feeds_is_passed_on_with_crlf() {
    // §2.2: a recipient may take a bare LF for a line end; what the gateway writes uses
    // CRLF only.
    let (up, _) = scripted(b"HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 2\n\nok", false);
    let gw = Config::proxy_to(up.addr()).start();
    let resp = &get_twice(gw.addr).await[1];
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.body, "ok");
    let bytes = resp.head.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF in {:?}", resp.head);
        }
    }
}

#[tokio::test]
async fn headers_named_by_the_upstreams_connection_field_are_dropped() {
    // RFC 9110 §7.6.1: the options `Connection` names are hop-by-hop.
    let (up, _) = scripted(
        b"HTTP/1.1 200 OK\r\nconnection: x-hop, keep-alive\r\nx-hop: secret\r\nx-end: kept\r\n\
          content-length: 2\r\n\r\nok",
        false,
    );
    let gw = Config::proxy_to(up.addr()).start();
    for resp in get_twice(gw.addr).await {
        let head = resp.head.to_ascii_lowercase();
        assert_eq!(resp.status, 200, "{head}");
        assert!(!head.contains("x-hop"), "{head}");
        assert!(head.contains("x-end: kept"), "{head}");
    }
}

#[tokio::test]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_not_passed_on_as_an_upgrade() {
    let (up, _) = scripted(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        false,
    );
    let gw = Config::proxy_to(up.addr()).start();
    let mut client = Raw::connect(gw.addr).await;
    client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let resp = client.read_response().await.expect("a 502, not the 101");
    assert_eq!(resp.status, 502, "{}", resp.head);
    assert!(resp.body.contains("switched protocols"), "{}", resp.body);
}
