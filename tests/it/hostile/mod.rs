//! The hostile suite: every class of hole a hostile review found in the session core (issue
//! 13), tried the way an attacker would spell it, against a real gateway and real backends.
//! Each file is one class or a few close ones; the tests are tables of spellings, not one
//! example each. Any later change runs them.

mod admin;
mod browser;
mod cache;
mod corpus;
mod documents;
mod fixation;
mod forged_headers;
mod redirects;
mod referrer;
mod rewriter;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderMap;

use crate::support::*;

/// The application behind the gateway in these tests: it keeps nothing itself and answers by
/// path:
/// - `/login?user=NAME` sets `user` and regenerates (a login), `/logout` destroys,
///   `/set?NAME=VALUE` sets attributes (form-decoded), `/regen` regenerates alone;
/// - `/whoami` and anything else answer `status=.. user=.. key=..` as text;
/// - a path given a page with [`App::page`] answers that page as HTML.
#[derive(Clone)]
pub struct App {
    pub backend: Backend,
    pages: Arc<Mutex<HashMap<String, Page>>>,
}

/// A canned answer.
#[derive(Clone, Default)]
pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Page {
    /// An HTML page.
    pub fn html(body: &str) -> Page {
        Page {
            status: 200,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: body.to_owned(),
        }
    }

    /// A sign-in: `user` is set, the session regenerated (a login), and the client sent to
    /// `/home` (`303`).
    pub fn sign_in(user: &str) -> Page {
        Page {
            status: 303,
            headers: vec![
                ("location".into(), "/home".into()),
                ("x-session-set".into(), format!("user={user}")),
                ("x-session-action".into(), "regenerate".into()),
            ],
            body: String::new(),
        }
    }

    /// The page with one more response header.
    pub fn with(mut self, name: &str, value: &str) -> Page {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl App {
    pub async fn start() -> App {
        let pages: Arc<Mutex<HashMap<String, Page>>> = Arc::default();
        let served = pages.clone();
        let backend = Backend::start(move |req| {
            let canned = served.lock().unwrap().get(req.uri().path()).cloned();
            async move {
                let h = req.headers();
                let get = |n: &str| {
                    h.get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                let me = format!(
                    "status={} user={} key={}",
                    get("x-session-status"),
                    get("x-session-attr-user"),
                    get("x-session-key"),
                );
                if let Some(p) = canned {
                    let mut r = text(p.status, &p.body);
                    if p.headers
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                    {
                        r.headers_mut().remove("content-type");
                    }
                    for (n, v) in &p.headers {
                        r.headers_mut().append(
                            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                            v.parse().unwrap(),
                        );
                    }
                    return r;
                }
                let query = req.uri().query().unwrap_or("").to_owned();
                let mut r = text(200, &me);
                let rh = r.headers_mut();
                match req.uri().path() {
                    "/login" => {
                        let user = query.strip_prefix("user=").unwrap_or("alice");
                        rh.append("x-session-set", format!("user={user}").parse().unwrap());
                        rh.append("x-session-action", "regenerate".parse().unwrap());
                    }
                    "/regen" => {
                        rh.append("x-session-action", "regenerate".parse().unwrap());
                    }
                    "/set" => {
                        // `/set?name=value`, the value percent-decoded as a form's.
                        for (n, v) in url::form_urlencoded::parse(query.as_bytes()) {
                            rh.append("x-session-set", format!("{n}={v}").parse().unwrap());
                        }
                    }
                    "/logout" => {
                        rh.append("x-session-action", "destroy".parse().unwrap());
                    }
                    _ => {}
                }
                r
            }
        })
        .await;
        App { backend, pages }
    }

    /// Serves `page` at `path` from now on.
    pub fn page(&self, path: &str, page: Page) {
        self.pages.lock().unwrap().insert(path.to_owned(), page);
    }
}

/// A gateway config: one plain listener `web`, the app as upstream `app`, `routes` (YAML
/// list items, each `- { ... }` on one line, upstream `app`), and `sessions` as the
/// `sessions:` section's flow mapping. The admin API is on with token [`ADMIN_TOKEN`] when
/// `admin` is set.
pub fn config(app: &App, routes: &[&str], sessions: &str) -> String {
    let routes: String = routes.iter().map(|r| format!("  - {r}\n")).collect();
    format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{}\" }} ]\nroutes:\n{routes}sessions: {sessions}\nadmin: {{ bind: \"127.0.0.1:0\", token_file: admin.token }}\n",
        app.backend.addr
    )
}

/// The admin API's bearer token in these tests.
pub const ADMIN_TOKEN: &str = "admin-token-of-the-hostile-suite-0123456789";

/// A gateway in this process for `yaml`, with the admin token and a session secret
/// (`session.keys`) in its directory.
pub async fn gateway(yaml: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::write(
        dir.path().join("session.keys"),
        "a-secret-for-the-hostile-suite-0123456789abcdef\n",
    )
    .unwrap();
    Gateway::start_in(yaml, dir).await
}

/// The `name=value` of every `Set-Cookie`.
pub fn set_cookies(h: &HeaderMap) -> Vec<String> {
    h.get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

/// The value of the session cookie `sg` a response sets, if it sets one.
pub fn session_cookie(h: &HeaderMap) -> Option<String> {
    set_cookies(h)
        .into_iter()
        .find_map(|c| c.strip_prefix("sg=").map(str::to_owned))
        .filter(|v| !v.is_empty())
}

/// `GET base+path` with `headers`; the status, headers and body.
pub async fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    let mut req = client().get(format!("{base}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.text().await.unwrap())
}

/// A field (`name=value`, space-separated) of the app's text answer.
pub fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
}

/// Where a `Location` (or a link) resolves from the page `page_url`, as a browser resolves it.
pub fn resolve(page_url: &str, location: &str) -> url::Url {
    url::Url::parse(page_url).unwrap().join(location).unwrap()
}

/// A raw HTTP/1.1 exchange (for request targets no client library will send), one request on
/// a fresh connection; what came back within a second (the gateway answers in milliseconds,
/// and may keep the connection open).
pub async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    raw_exchange(addr, request.as_bytes(), std::time::Duration::from_secs(1)).await
}

/// A header's value in a raw response (`raw`), if present (first occurrence).
pub fn raw_header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
