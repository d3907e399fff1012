//! The built-in sample backend of `sessiongate demo`: a small shop that keeps no state of its
//! own. Who is logged in and what is in the cart live in the gateway's session: the shop reads
//! them from `X-Session-*` request headers and changes them with response directives, as an
//! unmodified application behind sessiongate would.

pub mod cookie_shop;

use std::convert::Infallible;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the sample backend on `listener` until `stop` fires; its pages say they were served
/// by `replica` (the demo runs several: one session, served by any of them).
pub async fn serve_backend(listener: TcpListener, replica: &str, stop: CancellationToken) {
    let replica: std::sync::Arc<str> = std::sync::Arc::from(replica);
    serve_with(listener, stop, move |req| {
        let replica = replica.clone();
        async move {
            match page(req, &replica).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    })
    .await;
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `stop` fires (open connections then end
/// gracefully), each request answered by `answer`: the demo's backends share this.
async fn serve_with<F, Fut>(listener: TcpListener, stop: CancellationToken, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
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
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answered = answer(req);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn page(req: Request<Incoming>, replica: &str) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET | &Method::HEAD, "/" | "/about" | "/search") => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            home(&req, replica),
        ),
        (&Method::POST, "/login" | "/cart" | "/logout") => return Ok(action(req).await),
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

/// A session attribute as the gateway sent it.
fn attr<'r>(req: &'r Request<Incoming>, name: &str) -> Option<&'r str> {
    req.headers()
        .get(format!("x-session-attr-{name}"))
        .and_then(|v| v.to_str().ok())
}

/// The shop's actions: each answers with session directives and a redirect home.
async fn action(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let cart: u32 = attr(&req, "cart").and_then(|c| c.parse().ok()).unwrap_or(0);
    let form = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    let mut set = |v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append("x-session-set", v);
        }
    };
    match path.as_str() {
        "/login" => {
            let name = user_name(&String::from_utf8_lossy(&form));
            set(format!("user={name}"));
            // A new token after login: a session fixed before login is worth nothing.
            h.append("x-session-action", HeaderValue::from_static("regenerate"));
        }
        "/cart" => set(format!("cart={}", cart.saturating_add(1))),
        _ => {
            h.append("x-session-action", HeaderValue::from_static("destroy"));
        }
    }
    resp
}

fn home(req: &Request<Incoming>, replica: &str) -> String {
    let status = req
        .headers()
        .get("x-session-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no sessions on this route)");
    let shop = match attr(req, "user") {
        Some(user) => format!(
            "<p>Logged in as <b>{}</b>. Cart: <b>{}</b> item(s).</p>\
             <form method=\"post\" action=\"/cart\"><button>Add to cart</button></form>\
             <form method=\"get\" action=\"/search\"><input name=\"q\" placeholder=\"shoes\"> \
             <button id=\"search\">Search</button></form>\
             <form method=\"post\" action=\"/logout\"><button id=\"logout\">Log out</button></form>",
            escape(user),
            escape(attr(req, "cart").unwrap_or("0"))
        ),
        None => "<form method=\"post\" action=\"/login\">\
                 <label>Name <input name=\"user\" value=\"alice\"></label> <button id=\"login\">Log in</button></form>"
            .to_owned(),
    };
    // What the search form asked for (the shop has nothing to sell but sessions).
    let searched = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("q=")))
        .map(|q| {
            format!(
                "<p id=\"searched\">No results for <b>{}</b>.</p>",
                escape(q)
            )
        })
        .unwrap_or_default();
    let mut rows = String::new();
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-session-status",
        "x-session-key",
        "x-session-attr-user",
        "x-session-attr-cart",
        "cookie",
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
         </head><body><h1>sessiongate demo shop</h1>\
         <p>Served by <b id=\"replica\">{}</b>: the shop runs as several replicas, and \
         the session follows the user from one to the next.</p>\
         <p>Session: <b id=\"status\">{}</b></p>{shop}{searched}\
         <p>This shop keeps no state: the gateway holds the session and sends it in the headers \
         below (the session cookie itself never reaches the shop). Request path: <code>{}</code></p>\
         <table>{rows}</table>\
         <p><a href=\"/\">home</a> · <a id=\"about\" href=\"/about\">about</a> · \
         <a id=\"classic\" href=\"/classic/\">a classic app with its own cookie, behind the jar</a></p></body></html>",
        escape(replica),
        escape(status),
        escape(req.uri().path())
    )
}

/// The `user` a login form names (letters and digits, at most 32), or `guest`.
fn user_name(form: &str) -> String {
    let name: String = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("user="))
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    if name.is_empty() {
        "guest".to_owned()
    } else {
        name
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page of the rewriting benchmark (`bench/rewrite.sh`): about 50 KB of HTML with 500
/// same-origin links, as a catalogue page might be.
pub fn benchmark_page() -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>catalogue</title></head>\
         <body><h1>Catalogue</h1><ul>\n",
    );
    for i in 0..500 {
        let _ = writeln!(
            page,
            "<li><a href=\"/item/{i}?ref=list\">Item {i}</a> in stock, ships in two days.</li>"
        );
    }
    page.push_str("</ul><form method=\"get\" action=\"/search\"><input name=\"q\"></form>");
    while page.len() < 50_000 {
        page.push_str("<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n");
    }
    page.push_str("</body></html>\n");
    page
}
