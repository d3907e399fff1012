//! The built-in sample backend of `sessiongate demo`: a small, unmodified-style web app that
//! shows what reaches it through the gateway.

use std::convert::Infallible;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the sample backend on `listener` until `stop` fires.
pub async fn serve_backend(listener: TcpListener, stop: CancellationToken) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service_fn(page));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn page(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET | &Method::HEAD, "/" | "/about") => {
            (StatusCode::OK, "text/html; charset=utf-8", home(&req))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found in the demo backend\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(resp)
}

fn home(req: &Request<Incoming>) -> String {
    let mut rows = String::new();
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "user-agent",
    ] {
        let value = req
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let _ = write!(rows, "<tr><th>{name}</th><td>{}</td></tr>", escape(value));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sessiongate demo</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}th{{text-align:left;padding-right:1em}}</style>\
         </head><body><h1>sessiongate demo backend</h1>\
         <p>This page is served by an unmodified sample app behind the gateway. \
         Request path: <code>{}</code></p>\
         <table>{rows}</table>\
         <p><a href=\"/\">home</a> · <a href=\"/about\">about</a></p></body></html>",
        escape(req.uri().path())
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
