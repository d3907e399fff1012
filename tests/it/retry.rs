use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// Two servers: a dead one first in the round-robin order, then a live one. No ejection, so
/// every request meets the dead server first.
async fn dead_then_live() -> (Gateway, Backend) {
    let dead = dead_addr().await;
    let live = Backend::start(|req| async move {
        let method = req.method().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        text(200, &format!("{method} {}", body.len()))
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[dead, live.addr],
        "    retries: 1\n    passive: { max_failures: 0 }",
        "",
    ))
    .await;
    (gw, live)
}

#[tokio::test]
async fn idempotent_request_is_retried_on_another_server_after_a_refused_connection() {
    let (gw, live) = dead_then_live().await;
    for _ in 0..4 {
        let resp = client().get(gw.url("web", "/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "GET 0");
    }
    assert_eq!(live.requests().len(), 4);
}

#[tokio::test]
async fn post_is_retried_when_its_connection_was_refused_since_nothing_was_sent() {
    let (gw, _live) = dead_then_live().await;
    for _ in 0..4 {
        let resp = client()
            .post(gw.url("web", "/order"))
            .body(vec![7u8; 5000])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "POST 5000");
    }
}

/// A server that reads a whole request, then closes the connection without answering.
async fn swallowing_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the head, then the body by its Content-Length.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn post_is_not_retried_after_its_bytes_were_sent() {
    let (swallower, swallowed) = swallowing_server().await;
    let other = Backend::named("other").await;
    let gw = Gateway::start(&simple_config(
        &[swallower, other.addr],
        "    retries: 1\n    passive: { max_failures: 0 }",
        "",
    ))
    .await;
    let resp = client()
        .post(gw.url("web", "/pay"))
        .body("amount=100")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(swallowed.load(Ordering::SeqCst), 1);
    assert!(other.requests().is_empty(), "the POST was sent twice");

    // The same failure on a GET is retried on the other server. Round robin sends one of the
    // next two requests to the swallowing server first.
    for _ in 0..2 {
        let resp = client().get(gw.url("web", "/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "the GET was not retried");
    }
    assert_eq!(swallowed.load(Ordering::SeqCst), 2);
    assert_eq!(other.requests().len(), 2);
    assert!(
        other
            .requests()
            .iter()
            .all(|r| r.method == http::Method::GET)
    );
}
