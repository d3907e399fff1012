//! The benchmark's backend: answers every request with the same 100-byte body, keep-alive.
//!
//! `cargo run --release --example bench_backend -- 127.0.0.1:9001`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BODY: &[u8; 100] = b"sessiongate benchmark backend: one hundred bytes of response body, served with keep-alive........ok\n";

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    // One thread: the benchmark pins the backend to one core shared with the proxy.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        eprintln!("bench backend on {addr}");
        let page = Bytes::from(sessiongate::demo::benchmark_page());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let page = page.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let page = page.clone();
                    async move {
                        // For the rewriting benchmark: a 50 KB page of 500 links.
                        if req.uri().path() == "/page" {
                            let mut r = Response::new(Full::new(page));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                header::HeaderValue::from_static("text/html; charset=utf-8"),
                            );
                            return Ok::<_, Infallible>(r);
                        }
                        let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
                        let h = r.headers_mut();
                        h.insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("text/plain"),
                        );
                        // For the session benchmark: a login that fills a session with five small
                        // attributes, as bench/run.sh SESSIONS=1 expects.
                        if req.uri().path() == "/login" {
                            for kv in [
                                "user=bench",
                                "cart=3",
                                "role=customer",
                                "lang=en",
                                "theme=dark",
                            ] {
                                h.append("x-session-set", header::HeaderValue::from_static(kv));
                            }
                            // Where a URL-tracked client finds its token (bench/rewrite.sh).
                            h.insert(header::LOCATION, header::HeaderValue::from_static("/page"));
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
