//! WebSocket through the gateway: the `Upgrade` is forwarded, the upstream's `101` comes
//! back, and frames flow both ways over the joined connections.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{is_uuid, within, Config, RawUpstream};

#[tokio::test]
async fn tunnels_websocket_text_and_binary_messages_both_ways() {
    let echo = RawUpstream::websocket_echo();
    let gw = Config::proxy_to(echo.addr()).start();
    let url = format!("ws://{}/socket", gw.addr);
    let (mut ws, response) = within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake through the gateway");

    assert_eq!(response.status(), 101);
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(is_uuid(id), "101 carries the request id, got {id:?}");

    let big = "w".repeat(100 * 1024);
    let messages = [
        Message::text("hello through the gateway"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text(big),
    ];
    for msg in messages {
        within("send", ws.send(msg.clone())).await.unwrap();
        let echoed = within("echo", ws.next()).await.expect("a message").unwrap();
        assert_eq!(echoed, msg);
    }
    within("close", ws.close(None)).await.unwrap();
    assert_eq!(echo.accepted(), 1);
}

#[tokio::test]
async fn keeps_a_quiet_websocket_open_past_the_client_header_timeout() {
    let echo = RawUpstream::websocket_echo();
    let gw = Config::proxy_to(echo.addr())
        .listener("client_header_timeout_ms: 200")
        .start();
    let url = format!("ws://{}/socket", gw.addr);
    let (mut ws, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake through the gateway");

    for round in 0..3 {
        // Quiet for well past the header timeout, which only applies to HTTP request heads.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let msg = Message::text(format!("still here {round}"));
        within("send", ws.send(msg.clone()))
            .await
            .expect("the tunnel is still open");
        let echoed = within("echo", ws.next())
            .await
            .expect("a message")
            .expect("a frame, not an error");
        assert_eq!(echoed, msg);
    }
}
