use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn hop_by_hop_and_connection_nominated_headers_are_not_forwarded() {
    let b = Backend::start(|_req| async move {
        let mut r = text(200, "ok");
        let h = r.headers_mut();
        h.insert("connection", "x-backend-hop".parse().unwrap());
        h.insert("x-backend-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-backend-kept", "yes".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let request = "GET /hop HTTP/1.1\r\nHost: shop.test\r\nConnection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\nKeep-Alive: timeout=100\r\nTE: trailers\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nX-Client-Kept: yes\r\n\r\n";
    let response = raw_exchange(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await;

    let seen = b.last().headers;
    for gone in [
        "x-client-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the backend: {seen:?}"
        );
    }
    assert_eq!(seen["x-client-kept"], "yes");
    assert!(
        seen.get("connection").is_none_or(|v| !v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-client-hop")),
        "{seen:?}"
    );

    let lower = response.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{response}");
    assert!(lower.contains("x-backend-kept: yes"), "{response}");
    assert!(!lower.contains("x-backend-hop"), "{response}");
    assert!(!lower.contains("keep-alive: timeout=5"), "{response}");
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    client()
        .get(gw.url("web", "/"))
        .header("host", "shop.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.test")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let h = b.last().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.test");
    assert!(!h.contains_key("forwarded"));
    assert!(!h.contains_key("x-real-ip"));
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_extended() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "trusted_proxies: [ 127.0.0.0/8 ]",
    ))
    .await;
    client()
        .get(gw.url("web", "/"))
        .header("host", "shop.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.shop.test")
        .send()
        .await
        .unwrap();
    let h = b.last().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "www.shop.test");
}

#[tokio::test]
async fn two_host_headers_are_a_bad_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(b.requests().is_empty());
}
