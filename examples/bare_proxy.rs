//! The floor of the stack, for `bench/run.sh` only: a hyper server and a hyper client with
//! nothing in between (one upstream connection per client connection, no routing, no header
//! work, no timeouts). What the gateway costs above this row is its own work.
//!
//! `bare_proxy LISTEN_ADDR UPSTREAM_ADDR`; `FLAVOR=current` for tokio's single-thread runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::sync::Mutex;

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap();
    let upstream = args.next().unwrap();
    let flavor = std::env::var("FLAVOR").unwrap_or_default();
    let rt = if flavor == "current" {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let _ = up.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let sender = Arc::new(Mutex::new(sender));
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sender = sender.clone();
                    async move {
                        let mut s = sender.lock().await;
                        s.ready().await?;
                        s.send_request(req).await
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
