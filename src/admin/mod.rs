//! The admin listener's endpoints: `/healthz` (the process is alive), `/readyz` (its session
//! store answers and it wants traffic: false while draining, so a load balancer stops sending
//! new connections first), `/metrics` (Prometheus), `POST /reload` (read the configuration
//! file again; with a token configured, only with it) and, with a bearer token configured,
//! the session API (`sessions`), the event stream (`events`, `GET /events`) and the console
//! (`console`, `/console`: a page that asks for the token and uses the other two).

mod console;
mod events;
mod sessions;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use crate::reload::Live;
use crate::session::Sessions;

/// An admin answer's body: whole, or a stream (`GET /events`).
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// State the admin endpoints report.
#[derive(Debug)]
pub struct AdminState {
    ready: AtomicBool,
    /// The configuration in use: its sessions (whose store must answer for the gateway to be
    /// ready), the admin token that guards the session API (off without one), the metrics.
    live: Arc<Live>,
    /// Cancelled when the gateway drains: event streams end.
    closing: CancellationToken,
}

impl AdminState {
    /// A new state: ready. The session API is on when the configuration has sessions and an
    /// admin token.
    pub fn new(live: Arc<Live>) -> Arc<Self> {
        Arc::new(AdminState {
            ready: AtomicBool::new(true),
            live,
            closing: CancellationToken::new(),
        })
    }

    fn sessions(&self) -> Option<Arc<Sessions>> {
        self.live.proxy().sessions()
    }

    /// Marks the gateway as not ready (draining).
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.closing.cancel();
    }
}

/// Answers one admin request.
pub async fn handle<B>(
    state: Arc<AdminState>,
    req: Request<B>,
) -> Result<Response<AdminBody>, Infallible>
where
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if matches!(req.uri().path(), "/sessions/export" | "/sessions/import") {
        let (status, ctype, body) = sessions::transfer_api(&state, req).await;
        return Ok(reply(status, ctype, body));
    }
    if req.uri().path() == "/sessions" || req.uri().path().starts_with("/sessions/") {
        let (status, body) = sessions::session_api(&state, &req).await;
        return Ok(reply(status, "application/json", body));
    }
    if req.uri().path() == "/events" {
        return Ok(events::stream(&state, &req));
    }
    if req.uri().path() == "/console" || req.uri().path().starts_with("/console/") {
        return Ok(console::serve(&state, &req).await);
    }
    if req.uri().path() == "/reload" {
        let (status, body) = reload(&state, &req).await;
        return Ok(reply(status, "application/json", body));
    }
    let (status, text) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let text = state.live.metrics().encode(state.live.proxy().snapshot());
            return Ok(reply(StatusCode::OK, crate::metrics::CONTENT_TYPE, text));
        }
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            let store_up = match &state.sessions() {
                Some(s) => s.ping().await.is_ok(),
                None => true,
            };
            if !state.ready.load(Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !store_up {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session store unreachable\n",
                )
            } else {
                (StatusCode::OK, "ready\n")
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics or POST /reload\n",
        ),
    };
    Ok(reply(status, "text/plain; charset=utf-8", text.to_owned()))
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_error(status: StatusCode, message: &str) -> (StatusCode, String) {
    (status, serde_json::json!({ "error": message }).to_string())
}

/// Whether the request carries the admin token: `Authorization: Bearer TOKEN` (the scheme in
/// any case, RFC 9110 §11.1). The comparison takes the same time whatever the presented value
/// and reveals nothing of the token's length: both sides are hashed, and the digests compared
/// in constant time.
fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(6)?;
            (scheme.eq_ignore_ascii_case(b"bearer") && rest.first() == Some(&b' '))
                .then(|| rest.trim_ascii_start())
        })
        .unwrap_or_default();
    let digest = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let (a, b) = (digest(presented), digest(token.as_bytes()));
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
        && !presented.is_empty()
}

/// `POST /reload`: 200 with what needs a restart, or 422 with the file's problems (the
/// configuration in use keeps serving).
async fn reload<B>(state: &AdminState, req: &Request<B>) -> (StatusCode, String) {
    if req.method() != Method::POST {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    if let Some(token) = state.live.admin_token().as_ref()
        && !authorized(req, token)
    {
        return json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    match state.live.reload().await {
        Ok(restart) => (
            StatusCode::OK,
            serde_json::json!({ "reloaded": true, "needs_restart": restart }).to_string(),
        ),
        Err(problems) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({
                "reloaded": false,
                "error": "the configuration was refused; the previous one keeps serving",
                "problems": problems.lines().collect::<Vec<_>>(),
            })
            .to_string(),
        ),
    }
}

/// The sessions, if the session API is on and `req` carries the admin token, and a server
/// store keeps them; else the answer that says why not.
fn session_gate<B>(
    state: &AdminState,
    req: &Request<B>,
) -> Result<Arc<Sessions>, (StatusCode, String)> {
    let token = state.live.admin_token();
    let Some((sessions, token)) = state.sessions().zip(token.as_ref().as_ref()) else {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            "the session API is off: configure sessions and admin.token_file",
        ));
    };
    if !authorized(req, token) {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ));
    }
    if sessions.sealed_in_cookies() {
        return Err(json_error(
            StatusCode::NOT_IMPLEMENTED,
            "sessions live sealed in clients' cookies: none can be looked up, revoked, \
             exported or imported here (retire the secret that sealed them to end them all)",
        ));
    }
    Ok(sessions)
}
