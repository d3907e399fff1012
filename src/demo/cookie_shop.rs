//! A classic application with users of its own: it keeps its sessions in its own memory behind
//! its own cookie (`APPSESSID`, as PHP's `PHPSESSID` or Java's `JSESSIONID`), and knows
//! nothing of the gateway. Behind a route with `backend_cookies: jar`, the gateway keeps that
//! cookie in its session: the browser never sees it, and a browser that refuses cookies can
//! still log in (the gateway's token travels in its URLs instead).
//!
//! Each replica has a name, shown on every page, and memory of its own: a session created on
//! one replica is unknown to the others, which is why such an application needs affinity.
//! Its session ids end in `.NAME` (Tomcat's `jvmRoute`), and its links are relative, so it
//! works under any path prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::escape;

/// The application's own cookie.
pub const COOKIE: &str = "APPSESSID";

/// What the application remembers of one of its sessions.
#[derive(Debug, Clone, Default)]
struct AppSession {
    user: String,
    cart: u32,
}

/// One replica: its name and its own sessions.
struct Replica {
    name: String,
    sessions: Mutex<HashMap<String, AppSession>>,
}

/// Serves one replica named `name` on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, name: &str, stop: CancellationToken) {
    let replica = Arc::new(Replica {
        name: name.to_owned(),
        sessions: Mutex::default(),
    });
    super::serve_with(listener, stop, move |req| {
        let replica = replica.clone();
        async move { replica.answer(req).await }
    })
    .await;
}

impl Replica {
    /// The session the request's `APPSESSID` names, with its id.
    fn session_of(&self, req: &Request<Incoming>) -> Option<(String, AppSession)> {
        let id = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))?
            .to_owned();
        let s = self.sessions.lock().ok()?.get(&id).cloned()?;
        Some((id, s))
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let session = self.session_of(&req);
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/whoami") => {
                let text = match &session {
                    Some((_, s)) => {
                        format!("user={} cart={} replica={}\n", s.user, s.cart, self.name)
                    }
                    None => format!("anonymous replica={}\n", self.name),
                };
                respond(StatusCode::OK, "text/plain", text)
            }
            (Method::GET | Method::HEAD, "/") => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                self.page(session.as_ref()),
            ),
            (Method::POST, "/login") => {
                let user = super::user_name(&read_form(req).await);
                // Tomcat-style: the replica's name after a dot, which a gateway can route by.
                let id = format!("{}.{}", new_id(), self.name);
                if let Ok(mut all) = self.sessions.lock() {
                    // A new id at login: one fixed before it is worth nothing.
                    if let Some((old, _)) = &session {
                        all.remove(old);
                    }
                    all.insert(id.clone(), AppSession { user, cart: 0 });
                }
                home_with_cookie(&format!("{COOKIE}={id}; Path=/; HttpOnly"))
            }
            (Method::POST, "/cart") => {
                let Some((id, _)) = session else {
                    return respond(StatusCode::FORBIDDEN, "text/plain", "log in first\n".into());
                };
                if let Ok(mut all) = self.sessions.lock()
                    && let Some(s) = all.get_mut(&id)
                {
                    s.cart = s.cart.saturating_add(1);
                }
                home_with_cookie("")
            }
            (Method::POST, "/logout") => {
                if let (Some((id, _)), Ok(mut all)) = (&session, self.sessions.lock()) {
                    all.remove(id);
                }
                home_with_cookie(&format!("{COOKIE}=; Path=/; Max-Age=0"))
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    fn page(&self, session: Option<&(String, AppSession)>) -> String {
        let body = match session {
            Some((_, s)) => format!(
                "<p>Logged in as <b id=\"user\">{}</b>. Cart: <b id=\"cart\">{}</b> item(s).</p>\
                 <form method=\"post\" action=\"cart\"><button id=\"add\">Add to cart</button></form>\
                 <form method=\"post\" action=\"logout\"><button id=\"logout\">Log out</button></form>",
                escape(&s.user),
                s.cart
            ),
            None => "<p>Not logged in.</p><form method=\"post\" action=\"login\">\
                     <label>Name <input name=\"user\" value=\"alice\"></label> \
                     <button id=\"login\">Log in</button></form>"
                .to_owned(),
        };
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>cookie shop</title>\
             <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}</style></head>\
             <body><h1>A classic cookie shop</h1>\
             <p>Served by replica <b id=\"replica\">{}</b>. This shop keeps its sessions in its \
             own memory behind its own cookie, <code>{COOKIE}</code>; the gateway keeps that \
             cookie for the browser, which never sees it.</p>{body}\
             <p><a id=\"home\" href=\"./\">home</a></p></body></html>",
            escape(&self.name)
        )
    }
}

/// A fresh session id: 128 random bits, hex.
fn new_id() -> String {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // The demo's own ids: never the gateway's credentials.
        b = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn read_form(req: Request<Incoming>) -> String {
    let bytes = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn respond(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

/// A redirect home, setting `cookie` (unless empty).
fn home_with_cookie(cookie: &str) -> Response<Full<Bytes>> {
    let mut resp = respond(StatusCode::SEE_OTHER, "text/plain", String::new());
    // Relative: the shop works under whatever prefix a gateway puts it.
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("./"));
    if let Ok(v) = HeaderValue::from_str(cookie)
        && !cookie.is_empty()
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
