//! gRPC over TLS: a client speaking h2 (ALPN) to a TLS listener, and the gateway speaking
//! h2 over TLS to a gRPC upstream it verifies with a CA file.

use futures_util::StreamExt;
use tonic::Code;

use super::echo::{msg, EchoClient, EchoServer, Msg};
use crate::support::tls::{negotiated, SelfSigned};
use crate::support::{within, Config};

#[tokio::test]
async fn grpc_over_tls_on_both_sides_keeps_streams_statuses_and_trailers() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::write_to(certs.path());
    let server = EchoServer::start_tls(cert.server_config(&[b"h2"]));
    let gw = Config::new(
        r#"
upstreams:
  - name: grpc
    targets: ["{{grpc}}"]
    scheme: https
    protocol: http2
    tls: {ca_file: "{{certs}}/cert.pem"}
routes: [{name: grpc, upstream: grpc}]
"#,
    )
    .listeners("listeners:\n  - address: 127.0.0.1:0\n    tls: {cert_file: '{{certs}}/cert.pem', key_file: '{{certs}}/key.pem'}\n")
    .var("grpc", server.addr())
    .var("certs", certs.path().display())
    .start();

    let tls = cert.connect(gw.addr, &[b"h2"]).await;
    assert_eq!(negotiated(&tls).as_deref(), Some(&b"h2"[..]));
    let mut client = EchoClient::over(tls, &format!("https://localhost:{}", gw.addr.port())).await;

    let reply = within("unary over TLS", client.unary(msg("sealed")))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "echo: sealed");
    let big = "y".repeat(3 << 20);
    let reply = within("big unary over TLS", client.unary(msg(big.clone())))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text.len(), big.len() + "echo: ".len());

    let status = within("error over TLS", client.unary(msg("fail")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.metadata().get("x-detail").unwrap(), "unary-refusal");

    let mut late = within(
        "server stream over TLS",
        client.server_stream(Msg {
            text: "fail-late".into(),
            count: 3,
        }),
    )
    .await
    .unwrap();
    let mut n = 0;
    let status = loop {
        match within("message", late.get_mut().message()).await {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("the stream ended without its error status"),
            Err(status) => break status,
        }
    };
    assert_eq!(n, 3);
    assert_eq!(status.code(), Code::DataLoss);
    assert_eq!(status.metadata().get("x-count").unwrap(), "3");

    let parts = futures_util::stream::iter(["x", "y"].map(msg));
    let replies = within("bidi over TLS", client.bidi(parts)).await.unwrap();
    let texts: Vec<String> = replies
        .into_inner()
        .map(|m| m.unwrap().text)
        .collect()
        .await;
    assert_eq!(texts, ["re: x", "re: y"]);

    // Concurrent calls from several client connections share the upstream connection.
    let mut calls = Vec::new();
    for i in 0..8 {
        let tls = cert.connect(gw.addr, &[b"h2"]).await;
        let origin = format!("https://localhost:{}", gw.addr.port());
        calls.push(tokio::spawn(async move {
            let mut c = EchoClient::over(tls, &origin).await;
            c.unary(msg(format!("c{i}")))
                .await
                .unwrap()
                .into_inner()
                .text
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            within("concurrent call", call).await.unwrap(),
            format!("echo: c{i}")
        );
    }

    // One TLS connection to the upstream carried every call, agreed on h2 by ALPN, and
    // sent no SNI: the target is an IP address (verified against the certificate's IP).
    let seen = server.server.tls_seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen[0].sni, None);
    let headers = server.headers();
    assert_eq!(headers.len(), 13);
    assert!(headers.iter().all(|h| h["te"] == "trailers"));
}
