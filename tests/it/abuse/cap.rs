//! The connection cap under a flood of slow connections: a full gateway gives the place of a
//! connection that has sent no request head to a new one, so a client that sends its request
//! at once is served within moments, however many slow ones reconnect.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

const CAP: usize = 30;

/// A slowloris client for `limit`: a request head a line at a time, reconnecting whenever
/// the gateway cuts it.
async fn slowloris(addr: std::net::SocketAddr, limit: Duration) -> usize {
    let end = tokio::time::Instant::now() + limit;
    let mut connects = 0;
    while tokio::time::Instant::now() < end {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        connects += 1;
        if tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: gw.test\r\n")
            .await
            .is_err()
        {
            continue;
        }
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    }
    connects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_served_while_three_times_the_cap_of_slowloris_reconnects() {
    let b = Backend::named("ok").await;
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!("limits: {{ max_connections: {CAP} }}\ntimeouts: {{ header_read: 10s }}"),
    );
    let gw = Gateway::start(&yaml).await;
    let addr = gw.addr("web");
    let flood: Vec<_> = (0..3 * CAP)
        .map(|_| tokio::spawn(slowloris(addr, Duration::from_secs(8))))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Five requests, each on a new connection, each within 3 s.
    for i in 0..5 {
        let got = tokio::time::timeout(
            Duration::from_secs(3),
            raw_exchange(
                addr,
                b"GET / HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
                Duration::from_secs(3),
            ),
        )
        .await;
        let answer = got.unwrap_or_default();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "request {i} under the flood got {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut connects = 0;
    for f in flood {
        connects += f.await.unwrap();
    }
    assert!(connects >= 3 * CAP, "the flood made {connects} connections");
}
