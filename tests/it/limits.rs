use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn slow_header_sender_is_disconnected_after_the_header_timeout() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "timeouts: { header_read: 300ms }",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Drip: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the connection stayed open");
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert!(b.requests().is_empty());
}

/// One request on a raw keep-alive connection; returns the response head.
async fn request_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: keep.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn keep_alive_connection_idle_past_the_header_timeout_is_closed() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "timeouts: { header_read: 300ms }",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    // Requests within the limit keep the connection; the limit restarts after each response.
    for _ in 0..3 {
        assert!(request_on(&mut s).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_from = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the idle connection stayed open")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected a close, got bytes");
    assert!(idle_from.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn response_slower_than_the_header_timeout_is_not_cut() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        text(200, "worth the wait")
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[slow.addr],
        "",
        "timeouts: { header_read: 300ms }",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    assert!(request_on(&mut s).await.starts_with("HTTP/1.1 200"));
    // The same connection still serves the next request.
    assert!(request_on(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_connection_over_the_cap_waits_while_all_are_busy_then_takes_an_idle_ones_place() {
    let b = Backend::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        text(200, "b")
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "limits: { max_connections: 1 }",
    ))
    .await;
    let addr = gw.addr("web");

    // The one place is busy with a request in service.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /slow HTTP/1.1\r\nHost: cap.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The second connection is accepted by the kernel but not served while the first is busy.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: cap.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let waited = tokio::time::timeout(Duration::from_millis(400), second.read(&mut buf)).await;
    assert!(waited.is_err(), "a connection over the cap was served");

    // The first gets its answer and stays open, idle (keep-alive): the waiting connection
    // takes its place, without waiting for the header-read timeout to close it.
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(Duration::from_secs(2), first.read(&mut buf))
        .await
        .expect("the idle connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection gave its place up");
}
