use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::support::*;

async fn body_of(resp: reqwest::Response) -> String {
    resp.text().await.unwrap()
}

#[tokio::test]
async fn declared_oversized_body_gets_413_and_the_backend_is_not_contacted() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "limits: { max_body_bytes: 1KiB }",
    ))
    .await;
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(
        body_of(resp)
            .await
            .contains("request body larger than 1024 bytes")
    );
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn streamed_oversized_body_gets_413() {
    // The backend reads the whole body before answering, as most applications do.
    let b = Backend::start(|req| async move {
        match req.into_body().collect().await {
            Ok(body) => text(200, &format!("got {}", body.to_bytes().len())),
            Err(_) => text(400, "body failed"),
        }
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "limits: { max_body_bytes: 100KiB }",
    ))
    .await;
    let chunks = (0..40).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 8192])));
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(body_of(resp).await.contains("larger than 102400 bytes"));
    // Under the limit, the same route works.
    let small = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 8192])));
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            small,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(body_of(resp).await, "got 32768");
}

#[tokio::test]
async fn oversized_header_section_gets_431_naming_the_cause() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "limits: { max_header_bytes: 8KiB }",
    ))
    .await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("x-big", "z".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert!(
        body_of(resp)
            .await
            .contains("request header section larger than 8192 bytes")
    );
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn refused_upstream_connection_gets_502() {
    let dead = dead_addr().await;
    let gw = Gateway::start(&simple_config(&[dead], "    retries: 0", "")).await;
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = body_of(resp).await;
    assert!(
        body.contains("could not connect to upstream \"app\""),
        "{body}"
    );
    assert!(
        !body.contains(&dead.to_string()),
        "backend addresses are not shown to clients"
    );
}

#[tokio::test]
async fn upstream_with_no_healthy_server_gets_503() {
    let sick = Backend::start(|req| async move {
        if req.uri().path() == "/healthz" {
            text(500, "sick")
        } else {
            text(200, "still answering")
        }
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[sick.addr],
        "    health: { path: /healthz, interval: 50ms, fails: 1 }",
        "",
    ))
    .await;
    let c = client();
    let url = gw.url("web", "/");
    let got_503 = eventually(Duration::from_secs(5), || {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(url).send().await.unwrap().status() == 503 }
    })
    .await;
    assert!(got_503, "the failing server kept getting traffic");
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(
        body_of(resp)
            .await
            .contains("no healthy server in upstream \"app\"")
    );
}

#[tokio::test]
async fn slow_upstream_gets_504_after_the_response_timeout() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text(200, "too late")
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[slow.addr],
        "    response_timeout: 300ms",
        "",
    ))
    .await;
    let start = Instant::now();
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(start.elapsed() < Duration::from_secs(2));
    let body = body_of(resp).await;
    assert!(body.contains("did not answer within 300ms"), "{body}");
    assert_eq!(
        slow.requests().len(),
        1,
        "a timed-out request is not retried"
    );
}

#[tokio::test]
async fn unreachable_upstream_gets_504_after_the_connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let gw = Gateway::start(&simple_config(
        &[addr],
        "    connect_timeout: 300ms\n    retries: 0",
        "",
    ))
    .await;
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    let status = resp.status();
    let body = body_of(resp).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("connecting to upstream \"app\" timed out"),
        "{body}"
    );
    drop(full);
}

#[tokio::test]
async fn request_without_host_gets_400() {
    let b = Backend::named("b").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let resp = raw_exchange(
        gw.addr("web"),
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(resp.contains("missing or invalid Host header"), "{resp}");
    assert!(b.requests().is_empty());
}
