use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::support::*;

/// A backend that upgrades `/ws` to a WebSocket and echoes every message.
async fn echo_backend() -> Backend {
    Backend::start(|mut req| async move {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return text(400, "not a websocket request");
        };
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = TokioIo::new(upgraded.await.unwrap());
            let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let mut r = text(101, "");
        let h = r.headers_mut();
        h.insert("connection", "upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert(
            "sec-websocket-accept",
            derive_accept_key(key.as_bytes()).parse().unwrap(),
        );
        r
    })
    .await
}

#[tokio::test]
async fn websocket_echo_passes_through_the_gateway() {
    let backend = echo_backend().await;
    let gw = Gateway::start(&simple_config(&[backend.addr], "", "")).await;
    let addr = gw.addr("web");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello through the gateway"))
        .await
        .unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo, Message::text("hello through the gateway"));
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), &blob[..]);
    ws.close(None).await.unwrap();

    let seen = backend.last().headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert!(
        seen["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
}
