use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;

use crate::support::*;

const TOTAL: usize = 100 * 1000 * 1000;
const CHUNK: usize = 64 * 1024;

/// Chunk `k` of the test stream: a fixed pattern stamped with its index, so that a dropped,
/// repeated or reordered chunk is caught. Built with slice copies (fast even unoptimized).
fn chunk(k: usize) -> Bytes {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| (0..CHUNK).map(|i| (i * 7 + i / 251) as u8).collect());
    let len = CHUNK.min(TOTAL - k * CHUNK);
    let mut v = pattern[..len].to_vec();
    let stamp = (k as u64).to_le_bytes();
    let n = stamp.len().min(len);
    v[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(v)
}

fn chunk_count() -> usize {
    TOTAL.div_ceil(CHUNK)
}

/// 100 MB up and 100 MB down through the real gateway binary, whose peak memory must stay far
/// below the body size: the body is streamed, never buffered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_body_streams_both_ways_with_flat_memory() {
    // The backend echoes the request body back as it arrives.
    let echo = Backend::start(|req| async move {
        let body = req.into_body().map_err(|e| e.into()).boxed();
        http::Response::new(body)
    })
    .await;
    let yaml = simple_config(
        &[echo.addr],
        "    response_timeout: 60s",
        "limits: { max_body_bytes: 200MB }",
    );
    let gw = tokio::task::spawn_blocking(move || GatewayProcess::start(&yaml))
        .await
        .unwrap();
    let baseline_kib = gw.peak_rss_kib();

    let upload =
        futures_util::stream::iter(0..chunk_count()).map(|k| Ok::<_, std::io::Error>(chunk(k)));
    let resp = client()
        .post(format!("http://{}/echo", gw.http))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0usize;
    let mut expected = (0..chunk_count()).map(chunk);
    let mut pending = Bytes::new();
    let mut stream = resp.bytes_stream();
    while let Some(got) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the echo stalled")
    {
        let mut got = got.unwrap();
        while !got.is_empty() {
            if pending.is_empty() {
                pending = expected
                    .next()
                    .expect("more bytes came back than were sent");
            }
            let n = got.len().min(pending.len());
            assert!(got[..n] == pending[..n], "corrupted near byte {received}");
            got = got.slice(n..);
            pending = pending.slice(n..);
            received += n;
        }
    }
    assert_eq!(received, TOTAL);

    let peak_kib = gw.peak_rss_kib();
    eprintln!(
        "gateway peak RSS: {baseline_kib} KiB at start, {peak_kib} KiB after 100 MB each way"
    );
    assert!(
        peak_kib < 64 * 1024,
        "gateway peak RSS {peak_kib} KiB: the body was buffered"
    );
}
