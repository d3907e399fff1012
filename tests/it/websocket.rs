use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A backend that upgrades `/ws` to a WebSocket and echoes every message.
async fn echo_backend() -> Backend {
    Backend::start(|mut req| async move {
        accept_websocket(&mut req, |mut ws| async move {
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        })
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

async fn open_ws(
    addr: std::net::SocketAddr,
) -> WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn idle_websocket_tunnel_is_closed() {
    let backend = echo_backend().await;
    let gw = Gateway::start(&simple_config(
        &[backend.addr],
        "",
        "timeouts: { idle: 300ms }",
    ))
    .await;
    let mut ws = open_ws(gw.addr("web")).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    let end = tokio::time::timeout(std::time::Duration::from_secs(3), ws.next())
        .await
        .expect("the idle tunnel stayed open");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

#[tokio::test]
async fn websocket_tunnel_counts_against_the_connection_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = echo_backend().await;
    let gw = Gateway::start(&simple_config(
        &[backend.addr],
        "",
        "limits: { max_connections: 1 }",
    ))
    .await;
    let mut ws = open_ws(gw.addr("web")).await;
    // The tunnel holds the only place: a new connection waits.
    let mut other = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: cap.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let waited =
        tokio::time::timeout(std::time::Duration::from_millis(400), other.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "a connection over the cap was served while a tunnel was open"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), other.read(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1"));
}

#[tokio::test]
async fn a_burst_over_wss_arrives_whole_though_the_backend_then_falls_silent() {
    init();
    // The backend sends 3 MB at once, then says nothing for longer than the test waits.
    let backend = Backend::start(|mut req| async move {
        accept_websocket(&mut req, |mut ws| async move {
            for i in 0..300u32 {
                let mut m = vec![(i % 251) as u8; 10_000];
                m[..4].copy_from_slice(&i.to_be_bytes());
                if ws.send(Message::binary(m)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        })
    })
    .await;
    let (gw, config) = tls_gateway(&backend, "", b"http/1.1").await;
    let addr = gw.addr("tls");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://gw.test/burst", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    // A slow reader: every buffer on the way fills before it starts.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for i in 0..300u32 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of 300 never arrived"))
            .unwrap()
            .unwrap();
        assert_eq!(&m.into_data()[..4], &i.to_be_bytes());
    }
}
