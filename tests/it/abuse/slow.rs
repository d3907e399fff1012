//! Clients that stop reading, and clients that trickle their request head: the connection is
//! closed after the send timeout (HTTP/1.1; HTTP/2 per connection and per stream) or the
//! header-read timeout (HTTP/2 as HTTP/1.1), and the backend's connection is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::h2raw::*;
use crate::support::*;

/// A backend whose `/big` streams 64 KiB chunks until the gateway stops taking them (at most
/// 256 MiB), then notes that its response was released; `/medium` is 2 MiB.
struct Streamer {
    backend: Backend,
    released: Arc<Notify>,
    releases: Arc<AtomicUsize>,
}

async fn streamer() -> Streamer {
    let released = Arc::new(Notify::new());
    let releases = Arc::new(AtomicUsize::new(0));
    let (r, n) = (released.clone(), releases.clone());
    let backend = Backend::start(move |req| {
        let (r, n) = (r.clone(), n.clone());
        async move {
            let chunks = if req.uri().path() == "/medium" {
                32
            } else {
                4096
            };
            let (mut tx, body) = http_body_util::channel::Channel::<
                Bytes,
                Box<dyn std::error::Error + Send + Sync>,
            >::new(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..chunks {
                    if tx.send_data(chunk.clone()).await.is_err() {
                        n.fetch_add(1, Ordering::SeqCst);
                        r.notify_one();
                        return;
                    }
                }
            });
            let mut resp = http::Response::new(body.boxed());
            resp.headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            resp
        }
    })
    .await;
    Streamer {
        backend,
        released,
        releases,
    }
}

fn yaml(s: &Streamer, timeouts: &str) -> String {
    simple_config(
        &[s.backend.addr],
        "",
        &format!(
            "timeouts: {timeouts}\nlimits: {{ max_connections: 100 }}\nadmin: {{ bind: \"127.0.0.1:0\" }}"
        ),
    )
}

/// A connection to `gw`'s `web` listener on which `request` has been sent.
async fn sent(gw: &Gateway, request: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(gw.addr("web")).await.unwrap();
    tcp.write_all(request).await.unwrap();
    tcp
}

/// A gateway with one TLS listener `tls` (gw.test) in front of `b`, with `timeouts`; and a
/// client configuration that trusts it and offers h2.
async fn tls_h2_gateway(b: &Backend, timeouts: &str) -> (Gateway, Arc<rustls::ClientConfig>) {
    tls_gateway(b, &format!("timeouts: {timeouts}"), b"h2").await
}

/// Waits (15 s at most) for the backend to see its response let go.
async fn released(s: &Streamer) {
    let released = tokio::time::timeout(Duration::from_secs(15), s.released.notified()).await;
    assert!(released.is_ok(), "the upstream response was never released");
}

/// Reads what is left on `tcp` until it ends: `true` if the gateway closed it in `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    let end = tokio::time::Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let s = streamer().await;
    let gw = Gateway::start(&yaml(&s, "{ send: 1s, header_read: 30s }")).await;
    let mut tcp = sent(&gw, b"GET /big HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
    // The client reads nothing: the backend's response must be let go.
    released(&s).await;
    assert!(
        closed_within(&mut tcp, Duration::from_secs(10)).await,
        "the gateway kept the connection of a client that reads nothing"
    );
    let m = crate::metrics::Scrape::from(gw.admin()).await;
    let cut = [("listener", "web"), ("reason", "send")];
    assert_eq!(m.get("sessiongate_connections_cut_total", &cut), 1.0);
}

#[tokio::test]
async fn a_slow_but_steady_reader_gets_its_whole_response() {
    let s = streamer().await;
    let gw = Gateway::start(&yaml(&s, "{ send: 1s, header_read: 30s }")).await;
    let mut tcp = sent(
        &gw,
        b"GET /medium HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        // Pauses shorter than the send timeout, many times over it in all.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got > 2 * 1024 * 1024, "got {got} bytes of a 2 MiB body");
    assert_eq!(s.releases.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let s = streamer().await;
    let gw = Gateway::start(&yaml(&s, "{ send: 1s, idle: 60s }")).await;
    // Windows wide open, then nothing read at all.
    let mut h2 = H2::connect_with(gw.addr("web"), &[(0x4, 0x7fff_ffff)]).await;
    let grow = frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    );
    assert!(h2.send(&grow).await);
    assert!(h2.get(1, "/big").await);
    released(&s).await;
    assert!(closed_within(&mut h2.tcp, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn an_http2_stream_the_client_keeps_shut_ends_its_connection_and_releases_the_upstream() {
    let s = streamer().await;
    let gw = Gateway::start(&yaml(&s, "{ send: 1s, idle: 60s }")).await;
    // The connection's window is wide open and every byte is read, but stream 1's window is
    // never opened past its first 64 KiB; PINGs keep the connection busy.
    let mut h2 = H2::connect(gw.addr("web")).await;
    let grow = frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    );
    assert!(h2.send(&grow).await);
    assert!(h2.get(1, "/big").await);
    let (rd, mut wr) = h2.tcp.into_split();
    let pinger = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(&frame(PING, 0, 0, &[0; 8])).await.is_err() {
                return;
            }
        }
    });
    let reader = read_until_closed(rd);
    released(&s).await;
    let goaway = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the connection was not closed")
        .unwrap();
    assert!(goaway, "closed without a GOAWAY first");
    pinger.abort();
    let m = crate::metrics::Scrape::from(gw.admin()).await;
    let cut = [("listener", "web"), ("reason", "send_stream")];
    assert_eq!(m.get("sessiongate_connections_cut_total", &cut), 1.0);
}

#[tokio::test]
async fn an_http2_header_block_trickled_a_byte_at_a_time_is_cut_at_header_read() {
    let b = Backend::named("ok").await;
    let yaml = simple_config(&[b.addr], "", "timeouts: { header_read: 1s, idle: 60s }");
    let gw = Gateway::start(&yaml).await;
    // One HEADERS frame, a byte every 200 ms (about 10 s for all of it).
    let mut h2 = H2::connect(gw.addr("web")).await;
    let f = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&get("gw.test", "/")),
    );
    let started = tokio::time::Instant::now();
    let mut cut = false;
    for byte in &f {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !h2.send(&[*byte]).await {
            cut = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (closed, _) = h2.until_closed(Duration::from_millis(500)).await;
    assert!(
        cut || closed,
        "a header block trickled for 4 s outlived a 1 s header_read"
    );
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn an_http2_header_block_left_open_is_cut_at_header_read() {
    let b = Backend::named("ok").await;
    let yaml = simple_config(&[b.addr], "", "timeouts: { header_read: 1s, idle: 60s }");
    let gw = Gateway::start(&yaml).await;
    let mut h2 = H2::connect(gw.addr("web")).await;
    // HEADERS without END_HEADERS, and no CONTINUATION (any other frame would be a
    // protocol error): the connection stays silent, well within its 60 s idle timeout.
    assert!(
        h2.send(&frame(HEADERS, END_STREAM, 1, &block(&get("gw.test", "/"))))
            .await
    );
    let (closed, _) = h2.until_closed(Duration::from_secs(4)).await;
    assert!(closed, "an open header block outlived header_read for 4 s");
}

#[tokio::test]
async fn a_stalled_http2_connection_over_tls_closes_at_the_idle_timeout() {
    init();
    let s = streamer().await;
    let (gw, config) = tls_h2_gateway(&s.backend, "{ idle: 2s, send: 60s }").await;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(gw.addr("tls")).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    hello.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    ));
    hello.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/big"),
            (":authority", "gw.test"),
        ]),
    ));
    tls.write_all(&hello).await.unwrap();
    // Nothing read from here on: once the socket is full no byte moves, and the idle timeout
    // (not the minute-long send timeout) ends the connection.
    let started = tokio::time::Instant::now();
    let released = tokio::time::timeout(Duration::from_secs(8), s.released.notified()).await;
    assert!(
        released.is_ok(),
        "a stalled TLS connection outlived a 2 s idle timeout by 6 s"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(tls);
}

#[tokio::test]
async fn an_http2_request_trickled_inside_one_tls_record_is_cut_at_header_read() {
    init();
    let b = Backend::named("ok").await;
    let (gw, config) = tls_h2_gateway(&b, "{ header_read: 1s, idle: 60s }").await;
    let addr = gw.addr("tls");
    // rustls by hand: the handshake, then the preface and a request sealed into TLS records
    // whose bytes go out one every 100 ms. TLS gives the gateway no plaintext until a record
    // is whole, so only a clock on the socket's own bytes sees this.
    let cut = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("gw.test").unwrap();
        let mut tls = rustls::ClientConnection::new(config, name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).unwrap();
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                (":authority", "gw.test"),
            ]),
        ));
        tls.writer().write_all(&hello).unwrap();
        let mut sealed = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut sealed).unwrap();
        }
        tcp.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let started = std::time::Instant::now();
        for byte in sealed {
            std::thread::sleep(Duration::from_millis(100));
            if tcp.write_all(&[byte]).is_err() {
                return true;
            }
            let mut buf = [0u8; 4096];
            if let Ok(0) = tcp.read(&mut buf) {
                return true;
            }
            if started.elapsed() > Duration::from_secs(5) {
                return false;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(
        cut,
        "a request trickled inside TLS outlived a 1 s header_read by 4 s"
    );
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn a_download_with_a_window_update_per_4_kib_and_a_ping_per_frame_is_not_cut() {
    // Go's HTTP/2 client opens the window every 4 KiB it reads; gRPC clients ping once a
    // round trip while data flows. Neither is a flood.
    let s = streamer().await;
    let gw = Gateway::start(&yaml(&s, "{ send: 5s, idle: 60s }")).await;
    // A 4 KiB window: the gateway sends 4 KiB, then waits for the next WINDOW_UPDATE.
    let mut h2 = H2::connect_with(gw.addr("web"), &[(0x4, 4096)]).await;
    assert!(h2.get(1, "/medium").await);
    let (mut got, mut unacked) = (0usize, 0u32);
    loop {
        let (seen, _) = h2
            .next(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("cut after {got} bytes"));
        assert_ne!(seen.kind, GOAWAY, "sent away after {got} bytes");
        if seen.kind != DATA {
            continue;
        }
        got += seen.len;
        unacked += u32::try_from(seen.len).unwrap();
        let mut out = frame(PING, 0, 0, &[0; 8]);
        if unacked >= 4096 {
            out.extend(frame(WINDOW_UPDATE, 0, 1, &unacked.to_be_bytes()));
            out.extend(frame(WINDOW_UPDATE, 0, 0, &unacked.to_be_bytes()));
            unacked = 0;
        }
        assert!(h2.send(&out).await, "cut after {got} bytes");
        if seen.flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(got, 2 * 1024 * 1024);
}
