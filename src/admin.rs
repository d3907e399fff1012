//! The admin listener's endpoints: `/healthz` (the process is alive) and `/readyz` (it wants
//! traffic: false while draining, so a load balancer stops sending new connections first).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

/// State the admin endpoints report.
#[derive(Debug)]
pub struct AdminState {
    ready: AtomicBool,
}

impl AdminState {
    /// A new state: ready.
    pub fn new() -> Arc<Self> {
        Arc::new(AdminState {
            ready: AtomicBool::new(true),
        })
    }

    /// Marks the gateway as not ready (draining).
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }
}

/// Answers one admin request.
pub async fn handle<B>(
    state: Arc<AdminState>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, text) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if state.ready.load(Ordering::Relaxed) {
                (StatusCode::OK, "ready\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
        }
        (_, "/healthz" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /healthz or /readyz\n",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
