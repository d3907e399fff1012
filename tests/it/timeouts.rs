use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;

use crate::support::*;

/// A request body of `chunks` pieces of 1000 bytes, `gap` apart, then (optionally) a stall.
fn trickle(chunks: usize, gap: Duration, stall: Duration) -> reqwest::Body {
    let stream = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            tokio::time::sleep(stall).await;
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'u'; 1000])),
            i + 1,
        ))
    });
    reqwest::Body::wrap_stream(stream)
}

/// A backend that reads the whole body, then says how much it got.
async fn counting_backend() -> Backend {
    Backend::start(|req| async move {
        match req.into_body().collect().await {
            Ok(b) => text(200, &format!("got {}", b.to_bytes().len())),
            Err(_) => text(400, "body failed"),
        }
    })
    .await
}

#[tokio::test]
async fn slow_upload_longer_than_the_response_timeout_is_not_a_backend_failure() {
    let b = counting_backend().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "    response_timeout: 300ms\n    passive: { max_failures: 1, eject_for: 60s }",
        "",
    ))
    .await;
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(trickle(5, Duration::from_millis(150), Duration::ZERO))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "got 5000");
    // Had the upload counted as a timeout, the only server would now be ejected (503).
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn stalled_upload_gets_408() {
    let b = counting_backend().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "timeouts: { body_read: 300ms }",
    ))
    .await;
    let start = Instant::now();
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(trickle(1, Duration::ZERO, Duration::from_secs(5)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("no request body data arrived for 300ms")
    );
}

#[tokio::test]
async fn early_answer_to_an_unfinished_upload_does_not_hold_up_the_next_request() {
    // The backend refuses at once, before the body has arrived, as a login check might, and
    // keeps reading the body in the background so that its connection stays usable.
    let b = Backend::start(|req| async move {
        if req.method() == http::Method::POST {
            tokio::spawn(req.into_body().collect());
            text(401, "denied")
        } else {
            text(200, "next")
        }
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], "    response_timeout: 10s", "")).await;
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(trickle(1, Duration::ZERO, Duration::from_secs(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The upload is still going on the first backend connection; the next request must not
    // queue behind it.
    let start = Instant::now();
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "next");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn backend_stalling_mid_body_is_cut_after_the_response_timeout() {
    let b = Backend::start(|_req| async move {
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            Some((
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"first"))),
                i + 1,
            ))
        });
        let body = http_body_util::StreamBody::new(chunks)
            .map_err(|e| e.into())
            .boxed();
        http::Response::new(body)
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], "    response_timeout: 300ms", "")).await;
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first");
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stalled body was never cut");
    assert!(matches!(rest, Some(Err(_)) | None), "{rest:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let b = Backend::named("h2c").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "timeouts: { idle: 300ms }")).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}/", gw.addr("web")))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    drop(resp);
    // No request for a while: the gateway closes the connection.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle HTTP/2 connection stayed open")
        .unwrap()
        .ok();
}
