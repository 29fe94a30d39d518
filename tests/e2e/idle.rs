//! Idle HTTP/1.1 connections are parked after a second of silence (their task and buffers
//! freed, the socket watched by the worker's lot) and resumed when the client speaks again:
//! cleartext and TLS, fresh connections that never sent a byte (and may still start h2c),
//! the keep-alive timeout while parked, a client that hangs up while parked, and the drain.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Empty;

use crate::support::client::{Conn, Raw};
use crate::support::tls::SelfSigned;
use crate::support::{metric, Config, TestGateway, Upstream};

/// Longer than the gateway's park delay (1 s) plus a tick of its clock.
const PARKED: Duration = Duration::from_millis(1600);

async fn gauges(gw: &TestGateway) -> (f64, f64) {
    let text = gw.admin_get("/metrics").await.text();
    (
        metric(&text, "sluicegate_parked_connections").expect("parked gauge"),
        metric(&text, "sluicegate_active_connections").expect("active gauge"),
    )
}

/// Polls the gauges until `parked` is `want` (the lot works on its own task).
async fn wait_parked(gw: &TestGateway, want: f64) -> (f64, f64) {
    for _ in 0..50 {
        let g = gauges(gw).await;
        if g.0 == want {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gauges(gw).await
}

/// A keep-alive connection that served one request and was then parked.
async fn parked_client(gw: &TestGateway) -> Raw {
    let mut client = Raw::connect(gw.addr).await;
    client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.read_response().await.unwrap().status, 200);
    tokio::time::sleep(PARKED).await;
    assert_eq!(wait_parked(gw, 1.0).await.0, 1.0, "parked");
    client
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_request() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let mut client = Raw::connect(gw.addr).await;
    client.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.read_response().await.unwrap().status, 200);

    tokio::time::sleep(PARKED).await;
    let (parked, active) = wait_parked(&gw, 1.0).await;
    assert_eq!(parked, 1.0, "the idle connection is parked");
    // The metrics request's own connection is active too.
    assert!(active >= 1.0, "a parked connection is still open: {active}");
    let status = gw.admin_get("/status").await.json();
    assert_eq!(status["parked_connections"], 1, "{status}");

    client.write(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = client
        .read_response()
        .await
        .expect("an answer on the parked connection");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream-path").as_deref(), Some("/two"));
    assert_eq!(gauges(&gw).await.0, 0.0, "resumed");

    // Parked again, then the client hangs up: the lot notices and closes its side.
    tokio::time::sleep(PARKED).await;
    assert_eq!(wait_parked(&gw, 1.0).await.0, 1.0);
    drop(client);
    assert_eq!(
        wait_parked(&gw, 0.0).await.0,
        0.0,
        "a hung-up client is not kept"
    );
    let paths: Vec<String> = up.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(paths, ["/one", "/two"]);
}

#[tokio::test]
async fn a_parked_tls_connection_keeps_its_session() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::write_to(certs.path());
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listeners("listeners:\n  - address: 127.0.0.1:0\n    tls: {cert_file: '{{certs}}/cert.pem', key_file: '{{certs}}/key.pem'}\n")
        .var("certs", cert_dir(&certs))
        .start();
    let tls = cert.connect(gw.addr, &[b"http/1.1"]).await;
    let mut conn: Conn<Empty<Bytes>> = Conn::handshake(tls, false).await;
    let get = |path: &str| {
        Request::get(format!("https://localhost:{}{path}", gw.addr.port()))
            .body(Empty::new())
            .unwrap()
    };
    assert_eq!(conn.try_send(get("/first")).await.unwrap().status, 200);

    tokio::time::sleep(PARKED).await;
    assert_eq!(
        wait_parked(&gw, 1.0).await.0,
        1.0,
        "the TLS connection is parked"
    );
    let reply = conn
        .try_send(get("/second"))
        .await
        .expect("the same TLS session");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.header("x-upstream-path"), "/second");
    assert_eq!(up.requests().len(), 2);
}

fn cert_dir(dir: &tempfile::TempDir) -> String {
    dir.path().display().to_string()
}

#[tokio::test]
async fn a_fresh_silent_connection_is_parked_and_may_still_start_h2c() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(PARKED).await;
    assert_eq!(
        wait_parked(&gw, 1.0).await.0,
        1.0,
        "parked before its first byte"
    );

    let mut conn: Conn<Empty<Bytes>> = Conn::handshake(stream, true).await;
    let req = Request::get(format!("http://localhost:{}/h2", gw.addr.port()))
        .body(Empty::new())
        .unwrap();
    let reply = conn.try_send(req).await.expect("h2c after parking");
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_its_keep_alive_timeout() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr())
        .listener("client_header_timeout_ms: 2500")
        .start();
    let mut client = parked_client(&gw).await;

    // The timeout counts from the end of the response, parked or not: the lot closes it.
    assert!(
        client.read_to_end().await.is_empty(),
        "closed without a word"
    );
    let (parked, active) = wait_parked(&gw, 0.0).await;
    assert_eq!(parked, 0.0);
    assert!(
        active <= 1.0,
        "only the metrics request's connection is left: {active}"
    );
}

#[tokio::test]
async fn the_drain_closes_parked_connections() {
    let up = Upstream::echo();
    let gw = Config::proxy_to(up.addr()).start();
    let mut client = parked_client(&gw).await;

    tokio::task::spawn_blocking(move || drop(gw)).await.unwrap();
    assert!(client.read_to_end().await.is_empty(), "closed by the drain");
}
