//! gRPC through the gateway, end to end: a tonic client and a tonic server (see [`echo`]),
//! over h2c and TLS on the client side and on the upstream side; unary and the three
//! streaming shapes; statuses, messages and metadata in headers and trailers; the
//! gateway's own errors as gRPC statuses. [`trailers`] checks the HTTP-level pieces gRPC
//! relies on (request trailers, `TE: trailers`, trailers after body filters).

mod echo;
mod tls;
mod trailers;

use futures_util::StreamExt;
use tonic::Code;

use crate::support::{is_uuid, within, Config};
use echo::{msg, EchoClient, EchoServer, Msg};

/// A gateway with upstream `grpc` (HTTP/2, cleartext) at `addr`, and `plugins` (YAML list
/// items, or empty) on its only route.
pub(crate) fn gateway_to(addr: impl std::fmt::Display, plugins: &str) -> Config {
    Config::new(&format!(
        r#"
upstreams:
  - name: grpc
    targets: ["{{{{grpc}}}}"]
    protocol: http2
    read_timeout_ms: 10000
routes:
  - name: grpc
    upstream: grpc
    plugins: [{plugins}]
"#
    ))
    .var("grpc", addr)
}

#[tokio::test]
async fn unary_call_over_h2c_keeps_messages_and_metadata_and_sends_te_trailers() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;

    let reply = within("unary call", client.unary(msg("hi"))).await.unwrap();
    assert_eq!(reply.get_ref().text, "echo: hi");
    assert_eq!(reply.metadata().get("x-handler").unwrap(), "unary");
    let id = reply
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(is_uuid(id), "{id}");

    let seen = server.headers();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["te"], "trailers",
        "TE: trailers reaches the upstream"
    );
    assert_eq!(seen[0]["content-type"], "application/grpc");
    assert_eq!(seen[0]["x-request-id"], id);
    assert_eq!(seen[0]["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn an_error_status_in_a_trailers_only_response_passes_through_with_its_metadata() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;

    let status = within("failing call", client.unary(msg("fail")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "no “fail” allowed: 100% refused");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "unary-refusal");
    assert!(status.metadata().get("sluicegate-error").is_none());
    // The connection keeps serving after an error status.
    let reply = within("next call", client.unary(msg("again")))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "echo: again");
}

#[tokio::test]
async fn server_streaming_delivers_every_message_then_the_status_and_trailing_metadata() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;

    let mut ok = within(
        "stream",
        client.server_stream(Msg {
            text: "tick".into(),
            count: 5,
        }),
    )
    .await
    .unwrap();
    assert_eq!(ok.metadata().get("x-handler").unwrap(), "server-stream");
    let mut got = Vec::new();
    while let Some(m) = within("message", ok.get_mut().message()).await.unwrap() {
        got.push(m.text);
    }
    assert_eq!(
        got,
        (0..5).map(|i| format!("tick #{i}")).collect::<Vec<_>>()
    );
    let trailers = within("trailers", ok.get_mut().trailers()).await.unwrap();
    assert!(trailers.is_some(), "an OK stream still ends with trailers");

    // A stream that fails after its messages: the status and metadata are in the trailers.
    let mut late = within(
        "failing stream",
        client.server_stream(Msg {
            text: "fail-late".into(),
            count: 3,
        }),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let m = within("message", late.get_mut().message()).await.unwrap();
        assert_eq!(m.unwrap().text, format!("fail-late #{i}"));
    }
    let status = within("status", late.get_mut().message())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert_eq!(status.message(), "stream broke after the messages");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "late-failure");
    assert_eq!(status.metadata().get("x-count").unwrap(), "3");
}

#[tokio::test]
async fn client_streaming_forwards_every_message_and_the_end_of_stream() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;

    let parts = futures_util::stream::iter(["a", "b", "c", "d"].map(msg));
    let reply = within("client stream", client.client_stream(parts))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "a+b+c+d");
    assert_eq!(reply.get_ref().count, 4);
    assert_eq!(reply.metadata().get("x-handler").unwrap(), "client-stream");
}

#[tokio::test]
async fn bidirectional_streams_answer_each_message_before_the_next_is_sent() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;

    // Each message is sent only after the reply to the previous one arrived, so nothing
    // on the way may wait for the end of either stream.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let outgoing = tokio_stream_from(rx);
    tx.send(msg("ping 0")).unwrap();
    let mut replies = within("bidi", client.bidi(outgoing)).await.unwrap();
    for i in 0..4 {
        let m = within("reply", replies.get_mut().message()).await.unwrap();
        assert_eq!(m.unwrap().text, format!("re: ping {i}"));
        if i < 3 {
            tx.send(msg(format!("ping {}", i + 1))).unwrap();
        }
    }
    drop(tx);
    assert!(within("end", replies.get_mut().message())
        .await
        .unwrap()
        .is_none());
}

/// A stream of what `rx` receives, ending when every sender is gone.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

#[tokio::test]
async fn big_messages_and_concurrent_calls_share_one_connection_each_way() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;

    // 3 MiB: several HTTP/2 flow-control windows on both connections.
    let big = "x".repeat(3 << 20);
    let reply = within("big unary", client.unary(msg(big.clone())))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text.len(), big.len() + "echo: ".len());

    let mut calls = Vec::new();
    for i in 0..16 {
        let mut c = EchoClient::h2c(gw.addr).await;
        calls.push(tokio::spawn(async move {
            let stream = c
                .server_stream(Msg {
                    text: format!("c{i}"),
                    count: 20,
                })
                .await
                .unwrap();
            let texts: Vec<String> = stream.into_inner().map(|m| m.unwrap().text).collect().await;
            (i, texts)
        }));
    }
    for call in calls {
        let (i, texts) = within("concurrent call", call).await.unwrap();
        assert_eq!(texts.len(), 20);
        assert_eq!(texts[19], format!("c{i} #19"));
    }
    assert_eq!(server.server.connections(), 1, "one upstream connection");
}

#[tokio::test]
async fn a_burst_of_first_calls_opens_one_upstream_connection() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "").start();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(EchoClient::h2c(gw.addr).await);
    }
    let calls: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| tokio::spawn(async move { c.unary(msg(format!("b{i}"))).await }))
        .collect();
    for call in calls {
        within("call", call).await.unwrap().unwrap();
    }
    assert_eq!(
        server.server.connections(),
        1,
        "the calls waited for one connection"
    );

    // Calls waiting for a connect that fails get its failure.
    let gw = gateway_to(crate::support::upstream::dead_address(), "").start();
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut c = EchoClient::h2c(gw.addr).await;
        calls.push(tokio::spawn(
            async move { c.unary(msg(format!("d{i}"))).await },
        ));
    }
    for call in calls {
        let status = within("call", call).await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}

#[tokio::test]
async fn gateway_errors_reach_grpc_clients_as_grpc_statuses() {
    let dead = crate::support::upstream::dead_address();
    let gw = Config::new(
        r#"
upstreams:
  - name: down
    targets: ["{{down}}"]
    protocol: http2
    connect_timeout_ms: 2000
routes:
  - name: down
    match: {paths: "/test.Echo/"}
    upstream: down
"#,
    )
    .var("down", dead)
    .start();
    let mut client = EchoClient::h2c(gw.addr).await;

    let status = within("call to a dead upstream", client.unary(msg("hi")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("cannot connect to upstream `down`"),
        "{status:?}"
    );
    assert_eq!(
        status.metadata().get("sluicegate-error").unwrap(),
        "upstream_unreachable"
    );
    assert!(is_uuid(
        status
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
    ));

    // No route: UNIMPLEMENTED, as trailers-only as a gRPC server would answer it.
    let reply = crate::support::client::send_h2(
        gw.addr,
        http::Request::post("http://localhost/other.Service/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("grpc-status"), "12");
    assert_eq!(reply.header("content-type"), "application/grpc");
    assert_eq!(
        reply.header("content-length"),
        "",
        "trailers-only: no body at all"
    );
    assert!(reply.body.is_empty());

    // Plain HTTP clients still get the JSON error.
    let reply = gw.get("/test.Echo/Unary").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "upstream_unreachable");
}

#[tokio::test]
async fn streams_and_trailers_survive_body_filter_and_log_scripts() {
    let server = EchoServer::start();
    let plugins = r#"
      {name: lua, config: {name: watch, phase: body_filter, code: "ngx.ctx.n = (ngx.ctx.n or 0) + #ngx.arg[1]"}},
      {name: lua, config: {name: note, phase: log, code: "ngx.log(ngx.INFO, 'bytes ', ngx.ctx.n)"}},
      {name: lua, config: {name: tag, phase: header_filter, code: "ngx.header['x-filtered'] = 'yes'"}}
    "#;
    let gw = gateway_to(server.addr(), plugins).start();
    let mut client = EchoClient::h2c(gw.addr).await;

    let mut late = within(
        "stream through filters",
        client.server_stream(Msg {
            text: "fail-late".into(),
            count: 2,
        }),
    )
    .await
    .unwrap();
    assert_eq!(late.metadata().get("x-filtered").unwrap(), "yes");
    for _ in 0..2 {
        assert!(within("message", late.get_mut().message())
            .await
            .unwrap()
            .is_some());
    }
    let status = within("status", late.get_mut().message())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert_eq!(status.metadata().get("x-detail").unwrap(), "late-failure");

    let reply = within("unary through filters", client.unary(msg("x")))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "echo: x");
}

/// An upstream that answers a gRPC call with one message, waits `pause`, then resets the
/// stream.
fn resetting_upstream(pause: std::time::Duration) -> crate::support::h2server::H2Server {
    use bytes::Bytes;
    use http_body::Frame;
    crate::support::h2server::H2Server::start(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            let payload = prost::Message::encode_to_vec(&msg("first"));
            let mut frame = vec![0u8];
            frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            frame.extend_from_slice(&payload);
            let frames = futures_util::stream::unfold(0, move |step| {
                let frame = frame.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(Bytes::from(frame))), 1)),
                        1 => {
                            tokio::time::sleep(pause).await;
                            Some((Err(std::io::Error::other("upstream gave up")), 2))
                        }
                        _ => None,
                    }
                }
            });
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(crate::support::h2server::AnyBody::new(
                    http_body_util::StreamBody::new(frames),
                ))
                .unwrap()
        },
    )
}

#[tokio::test]
async fn a_failure_after_the_response_head_ends_the_call_with_a_grpc_status() {
    // The pause lets the message reach the gateway before the reset.
    let up = resetting_upstream(std::time::Duration::from_millis(200));
    let gw = gateway_to(up.addr(), "").start();
    let mut client = EchoClient::h2c(gw.addr).await;
    let mut stream = within("call", client.server_stream(msg("x")))
        .await
        .unwrap();
    let first = within("first message", stream.get_mut().message()).await;
    assert_eq!(first.unwrap().unwrap().text, "first");
    let status = within("status", stream.get_mut().message())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("upstream"), "{status:?}");
    assert_eq!(
        status.metadata().get("sluicegate-error").unwrap(),
        "upstream_error"
    );

    // A stream silent for longer than the read timeout.
    let up = resetting_upstream(std::time::Duration::from_secs(3));
    let gw = Config::new(
        r#"
upstreams: [{name: slow, targets: ["{{slow}}"], protocol: http2, read_timeout_ms: 300}]
routes: [{name: slow, upstream: slow}]
"#,
    )
    .var("slow", up.addr())
    .start();
    let mut client = EchoClient::h2c(gw.addr).await;
    let mut stream = within("call", client.server_stream(msg("x")))
        .await
        .unwrap();
    let first = within("first message", stream.get_mut().message()).await;
    assert_eq!(first.unwrap().unwrap().text, "first");
    let status = within("status", stream.get_mut().message())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("read timeout"), "{status:?}");

    // A body filter that fails: INTERNAL, after the messages already sent.
    let server = EchoServer::start();
    let plugins = r#"{name: lua, config: {name: boom, phase: body_filter, code: "if ngx.arg[2] then error('boom') end"}}"#;
    let gw = gateway_to(server.addr(), plugins).start();
    let mut client = EchoClient::h2c(gw.addr).await;
    let mut stream = within(
        "call through a failing filter",
        client.server_stream(Msg {
            text: "t".into(),
            count: 2,
        }),
    )
    .await
    .unwrap();
    let mut got = 0;
    let status = loop {
        match within("message", stream.get_mut().message()).await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the stream ended without the filter's failure"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, 2);
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(
        status.metadata().get("sluicegate-error").unwrap(),
        "plugin_error"
    );
}

#[tokio::test]
async fn the_shipped_grpc_example_proxies_calls_and_answers_plain_http() {
    let server = EchoServer::start();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grpc.yaml");
    let upstream = server.addr().to_string();
    let process = crate::support::bin::Process::start_with_env(
        &example,
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("WORKERS", "1"),
            ("GRPC_UPSTREAM", &upstream),
        ],
    );
    let mut client = EchoClient::h2c(process.addr).await;

    let reply = within("unary call", client.unary(msg("example")))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "echo: example");
    let parts = futures_util::stream::iter(["p", "q"].map(msg));
    let replies = within("bidi call", client.bidi(parts)).await.unwrap();
    let texts: Vec<String> = replies
        .into_inner()
        .map(|m| m.unwrap().text)
        .collect()
        .await;
    assert_eq!(texts, ["re: p", "re: q"]);
    let status = within("failing call", client.unary(msg("fail")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let hello = crate::support::get(process.addr, "/hello").await;
    assert_eq!(hello.status, 200);
    assert!(hello.json()["message"]
        .as_str()
        .unwrap()
        .contains(&upstream));
    assert_eq!(
        server.headers().len(),
        3,
        "only gRPC calls reach the upstream"
    );
}

#[tokio::test]
async fn the_access_log_records_the_grpc_status_each_call_ended_with() {
    let server = EchoServer::start();
    let gw = gateway_to(server.addr(), "")
        .access_log("access_log: {target: file, path: access.log}")
        .start();
    let mut client = EchoClient::h2c(gw.addr).await;
    let ok = within("ok", client.unary(msg("a"))).await.unwrap();
    let refused = within("refused", client.unary(msg("fail")))
        .await
        .unwrap_err();
    let mut late = within(
        "late",
        client.server_stream(Msg {
            text: "fail-late".into(),
            count: 1,
        }),
    )
    .await
    .unwrap();
    let late_id = late.metadata().get("x-request-id").unwrap().clone();
    while within("drain", late.get_mut().message()).await.is_ok() {}
    let plain = gw.get("/plain").await;

    let path = gw.dir.path().join("access.log");
    let lines = || std::fs::read_to_string(&path).unwrap_or_default();
    crate::support::eventually("four access-log lines", || async {
        lines().lines().count() >= 4
    })
    .await;
    let records: Vec<serde_json::Value> = lines()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {records:#?}"))
            .clone()
    };
    let id = |md: &tonic::metadata::MetadataMap| {
        md.get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(by_id(&id(ok.metadata()))["grpc_status"], 0);
    assert_eq!(by_id(&id(refused.metadata()))["grpc_status"], 3);
    assert_eq!(by_id(late_id.to_str().unwrap())["grpc_status"], 15);
    let plain = by_id(plain.header("x-request-id"));
    assert!(plain.get("grpc_status").is_none(), "{plain}");
    assert_eq!(by_id(&id(ok.metadata()))["status"], 200);
}
