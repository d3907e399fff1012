//! HTTP/2 abuse: paced rapid reset, control-frame floods, and header limits equal to HTTP/1.1's.

use std::time::Duration;

use super::h2raw::*;
use crate::support::*;

/// A backend that takes 200 ms per answer, so that streams are reset while in flight.
async fn slow_backend() -> Backend {
    Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text(200, "slow")
    })
    .await
}

#[tokio::test]
async fn paced_rapid_reset_is_sent_away_within_a_bounded_number_of_backend_requests() {
    let b = slow_backend().await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let h2 = H2::connect(gw.addr("web")).await;
    let (rd, mut wr) = h2.tcp.into_split();
    let reader = read_until_closed(rd);
    // Batches of 100 streams, a 30 ms pause, 100 resets; for at most 5 s.
    use tokio::io::AsyncWriteExt;
    let started = tokio::time::Instant::now();
    let mut next = 1u32;
    let mut opened = 0;
    'attack: while started.elapsed() < Duration::from_secs(5) {
        let first = next;
        let at_start = b.requests().len();
        let batch;
        (batch, next) = gets(first, 100);
        if wr.write_all(&batch).await.is_err() {
            break 'attack;
        }
        opened += 100;
        // The pause lets the gateway accept every stream (the HTTP/2 library's own limit
        // counts only resets of streams not yet accepted): the release build takes well under
        // 30 ms, a debug build longer, so wait until the batch reaches the backend (or 1 s).
        tokio::time::sleep(Duration::from_millis(30)).await;
        for _ in 0..100 {
            if b.requests().len() >= at_start + 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut resets = Vec::new();
        for id in (first..next).step_by(2) {
            resets.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if wr.write_all(&resets).await.is_err() {
            break 'attack;
        }
    }
    let goaway = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the connection was never closed")
        .unwrap();
    let reached = b.requests().len();
    assert!(goaway, "no GOAWAY for a client that reset {opened} streams");
    assert!(
        reached <= 300,
        "{reached} of {opened} reset streams reached the backend"
    );
}

#[tokio::test]
async fn a_client_that_cancels_now_and_then_is_served() {
    let b = slow_backend().await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let mut h2 = H2::connect(gw.addr("web")).await;
    // 300 requests, one in five cancelled: a browser navigating away, not an attack.
    let mut id = 1u32;
    for round in 0..60 {
        let mut batch;
        (batch, id) = gets(id, 5);
        batch.extend(frame(RST_STREAM, 0, id - 2, &8u32.to_be_bytes()));
        assert!(h2.send(&batch).await, "cut in round {round}");
        // Read the four answers.
        let mut ends = 0;
        while ends < 4 {
            let (seen, _) = h2
                .next(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("no answer in round {round}"));
            assert_ne!(seen.kind, GOAWAY, "sent away in round {round}");
            if seen.flags & END_STREAM != 0 && (seen.kind == DATA || seen.kind == HEADERS) {
                ends += 1;
            }
        }
    }
}

/// Sends `kind` frames (each answered with an ACK, which a reader takes) until the gateway
/// closes the connection: how many went.
async fn flood(kind: u8, payload: &[u8]) -> usize {
    let b = Backend::named("ok").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let h2 = H2::connect(gw.addr("web")).await;
    let (mut rd, mut wr) = h2.tcp.into_split();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    use tokio::io::AsyncWriteExt;
    let f = frame(kind, 0, 0, payload);
    for sent in 0..20_000 {
        if wr.write_all(&f).await.is_err() {
            return sent;
        }
        if sent % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Give a cut a moment to show.
    for sent in 20_000..20_100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if wr.write_all(&f).await.is_err() {
            return sent;
        }
    }
    usize::MAX
}

#[tokio::test]
async fn a_settings_flood_from_a_client_that_reads_is_cut() {
    let sent = flood(SETTINGS, &[]).await;
    assert!(sent < 20_100, "20,100 SETTINGS frames were taken");
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_reads_is_cut() {
    let sent = flood(PING, &[0; 8]).await;
    assert!(sent < 20_100, "20,100 PING frames were taken");
}

/// `n` extra header fields on a GET, over HTTP/1.1 or HTTP/2 (prior knowledge).
async fn many_fields(gw: &Gateway, n: usize, h2: bool) -> u16 {
    let builder = reqwest::Client::builder().no_proxy();
    let http = if h2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    }
    .build()
    .unwrap();
    let mut req = http.get(gw.url("web", "/"));
    for i in 0..n {
        req = req.header(format!("x-f{i}"), "v");
    }
    match req.send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn header_field_limits_are_the_same_on_http2_as_on_http1() {
    let b = Backend::named("ok").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    for h2 in [false, true] {
        assert_eq!(many_fields(&gw, 10, h2).await, 200, "h2 {h2}");
        assert_eq!(many_fields(&gw, 1000, h2).await, 431, "h2 {h2}");
        assert_eq!(many_fields(&gw, 150, h2).await, 431, "h2 {h2}");
    }
    assert_eq!(
        b.requests().len(),
        2,
        "only the small requests reach the backend"
    );
}

#[tokio::test]
async fn resets_during_the_response_body_are_counted_too() {
    // Each answer's head comes at once, its body only after 2 s: the client resets every
    // stream once the head has come.
    let b = Backend::start(|_req| async {
        let (mut tx, body) = http_body_util::channel::Channel::<
            bytes::Bytes,
            Box<dyn std::error::Error + Send + Sync>,
        >::new(1);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = tx.send_data(bytes::Bytes::from_static(b"late")).await;
        });
        use http_body_util::BodyExt;
        http::Response::new(body.boxed())
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let mut h2 = H2::connect(gw.addr("web")).await;
    let mut id = 1u32;
    let mut sent_away = false;
    'attack: for _ in 0..20 {
        let batch;
        (batch, id) = gets(id, 25);
        if !h2.send(&batch).await {
            sent_away = true;
            break;
        }
        // Wait for the heads, then reset those streams.
        let mut heads = Vec::new();
        while heads.len() < 25 {
            match h2.next(Duration::from_secs(5)).await {
                None => {
                    sent_away = true;
                    break 'attack;
                }
                Some((seen, _)) if seen.kind == GOAWAY => {
                    sent_away = true;
                    break 'attack;
                }
                Some((seen, _)) if seen.kind == HEADERS => heads.push(seen.stream),
                Some(_) => {}
            }
        }
        let mut resets = Vec::new();
        for s in heads {
            resets.extend(frame(RST_STREAM, 0, s, &8u32.to_be_bytes()));
        }
        if !h2.send(&resets).await {
            sent_away = true;
            break;
        }
    }
    let reached = b.requests().len();
    assert!(
        sent_away,
        "{reached} requests reset mid-body, and no GOAWAY"
    );
    assert!(
        reached <= 300,
        "{reached} reset streams reached the backend"
    );
}

#[tokio::test]
async fn many_http2_requests_with_empty_bodies_and_trailers_are_not_taken_for_cancels() {
    let b = Backend::start(|req| async move {
        match req.uri().path() {
            "/empty" => text(204, ""),
            "/trailers" => {
                use http_body_util::BodyExt;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-check", "1".parse().unwrap());
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                        bytes::Bytes::from_static(b"data"),
                    )),
                    Ok(http_body::Frame::trailers(trailers)),
                ]));
                http::Response::new(body.boxed())
            }
            _ => text(200, &"x".repeat(40_000)),
        }
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // One connection, 450 answers: empty, with trailers, and larger than one 16 KiB piece.
    for i in 0..150 {
        for path in ["/empty", "/trailers", "/big"] {
            let r = http.get(gw.url("web", path)).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            assert!(
                matches!(status, 200 | 204),
                "request {i} to {path}: {status}"
            );
            if path == "/big" {
                assert_eq!(body.len(), 40_000);
            }
        }
    }
}
