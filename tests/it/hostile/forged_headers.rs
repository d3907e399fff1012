//! Classes 10–12: no client-sent session header reaches an application on any route, no
//! backend directive reaches a client (in headers or trailers), and no upgrade outside the
//! route's allow-list (h2c above all) lets a client talk to the backend past the gateway.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Client headers that pose as the gateway's: the prefix and a mapped name, in every
/// spelling a backend (or the CGI between) might read as the real one.
const FORGED: &[(&str, &str)] = &[
    ("X-Session-Status", "active"),
    ("x-session-key", "forged-key"),
    ("X-SESSION-ATTR-USER", "root"),
    ("x_session_attr_role", "admin"),
    ("X_Session_Status", "active"),
    ("x-session_attr-user", "root"),
    ("X.Session.Attr.User", "root"),
    ("X-Remote-User", "root"),
    ("x_remote_user", "root"),
    ("X-REMOTE_USER", "root"),
    ("x.remote.user", "root"),
];

/// Whether a header name a backend saw is one of the forged ones, read as a CGI would
/// (upper case, `-` and `_` and `.` alike).
fn looks_forged(name: &str) -> bool {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    n.starts_with("x-session-") || n == "x-remote-user"
}

#[tokio::test]
async fn forged_session_headers_reach_no_application_on_any_route() {
    let app = App::start().await;
    for path in ["/open/page", "/plain/page", "/mapped/page"] {
        app.page(
            path,
            Page::html("hi")
                .with("x-session-set", "user=admin")
                .with("X-Session-Key", "backend-key")
                .with("x-session-action", "destroy")
                .with("x-session-typo", "1")
                .with("x_session_set", "user=admin"),
        );
    }
    let yaml = config(
        &app,
        &[
            "{ name: open, match: { path_prefix: /open }, upstream: app, session: off }",
            "{ name: plain, match: { path_prefix: /plain }, upstream: app }",
            "{ name: mapped, match: { path_prefix: /mapped }, upstream: app, session: { headers: { user: X-Remote-User } } }",
        ],
        "{ secret_file: session.keys }",
    );
    let gw = gateway(&yaml).await;
    let base = gw.url("web", "");
    for path in ["/open/page", "/plain/page", "/mapped/page"] {
        let (_, h, _) = get(&base, path, FORGED).await;
        let seen = app.backend.last();
        assert_eq!(seen.uri, path);
        for name in seen.headers.keys() {
            if name == "x-session-status" && path != "/open/page" {
                // The gateway's own, on routes with sessions.
                assert_eq!(seen.headers[name], "none", "{path}");
                continue;
            }
            assert!(
                !looks_forged(name.as_str()),
                "{path}: the backend saw {name}"
            );
        }
        for name in h.keys() {
            assert!(
                !looks_forged(name.as_str()),
                "{path}: the client saw {name}"
            );
        }
    }
}

#[tokio::test]
async fn forged_session_headers_reach_no_application_over_http2_either() {
    let app = App::start().await;
    let yaml = config(
        &app,
        &[
            "{ name: open, match: { path_prefix: /open }, upstream: app, session: off }",
            "{ name: mapped, match: { path_prefix: / }, upstream: app, session: { headers: { user: X-Remote-User } } }",
        ],
        "{ secret_file: session.keys }",
    );
    let gw = gateway(&yaml).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for path in ["/open/x", "/x"] {
        let mut req = h2.get(gw.url("web", path));
        for (n, v) in FORGED {
            req = req.header(*n, *v);
        }
        req.send().await.unwrap();
        let seen = app.backend.last();
        for name in seen.headers.keys() {
            if name == "x-session-status" && path == "/x" {
                continue;
            }
            assert!(
                !looks_forged(name.as_str()),
                "{path}: the backend saw {name}"
            );
        }
    }
}

#[tokio::test]
async fn no_token_reaches_an_application_in_any_header_or_url_spelling() {
    let app = App::start().await;
    let gw = gateway(&config(
        &app,
        &[
            "{ name: open, match: { path_prefix: /open }, upstream: app, session: off }",
            "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }",
        ],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    app.page(
        "/start",
        Page::html("<a href=/x>x</a>").with("x-session-set", "user=alice"),
    );
    let (_, _, start) = get(&base, "/start", &[]).await;
    let at = start.find("sgsid=").unwrap() + 6;
    let token = start[at..at + 64].to_owned();
    let page = format!("{base}/page;sgsid={token}");
    for path in ["/whoami", "/open/x"] {
        for target in [
            format!("{path};sgsid={token}"),
            format!("{path}?sgsid={token}"),
            format!("{path}?x=1;sgsid={token}"),
            format!("{path}?x=1&sgsid={token};y=2"),
            format!("{path};a=1;sgsid={token}/?b=2"),
        ] {
            get(
                &base,
                &target,
                &[
                    ("referer", page.as_str()),
                    ("ping-from", page.as_str()),
                    ("ping-to", page.as_str()),
                ],
            )
            .await;
            let seen = app.backend.last();
            let everything = format!("{} {:?}", seen.uri, seen.headers);
            assert!(!everything.contains(&token), "{target}: {everything}");
        }
    }
}

/// A backend that records the trailers of the requests it receives.
async fn trailer_recorder(seen_trailers: Arc<Mutex<Vec<HeaderMap>>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen_trailers.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let mut body = req.into_body();
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Ok(t) = frame.into_trailers() {
                                seen.lock().unwrap().push(t);
                            }
                        }
                        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A chunked response whose trailers pose as directives (sent whatever the request's `TE`
/// says, as some servers do; hyper's own server sends trailers only to a client that asked).
const TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-session-set, x-session-key, x_session_action, set-cookie, x-kept\r\n\r\n4\r\nbody\r\n0\r\nx-session-set: user=admin\r\nx-session-key: backend-key\r\nx_session_action: destroy\r\nset-cookie: sg=planted\r\nx-kept: 1\r\n\r\n";

#[tokio::test]
async fn trailers_carry_no_directive_to_the_client_and_no_forged_header_to_the_backend() {
    init();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let recorder = trailer_recorder(seen.clone()).await;
    let (answerer, _) = raw_backend(TRAILERS).await;
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  rec:\n    servers: [ {{ url: \"http://{recorder}\" }} ]\n  ans:\n    servers: [ {{ url: \"http://{answerer}\" }} ]\nroutes:\n  - {{ name: open-up, match: {{ path_prefix: /open/up }}, upstream: rec, session: off }}\n  - {{ name: open-down, match: {{ path_prefix: /open/down }}, upstream: ans, session: off }}\n  - {{ name: up, match: {{ path_prefix: /up }}, upstream: rec, session: {{ headers: {{ user: X-Remote-User }} }} }}\n  - {{ name: down, match: {{ path_prefix: /down }}, upstream: ans }}\nsessions: {{}}\n"
    );
    let gw = Gateway::start(&yaml).await;
    let stream = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for path in ["/up", "/open/up", "/down", "/open/down"] {
        let mut forged = HeaderMap::new();
        forged.insert("x-session-attr-user", HeaderValue::from_static("root"));
        forged.insert("x-remote-user", HeaderValue::from_static("root"));
        forged.insert("x_session_status", HeaderValue::from_static("active"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"upload"))),
            Ok(Frame::trailers(forged)),
        ];
        let req = Request::post(format!("http://shop.example{path}"))
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let mut body = resp.into_body();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            if let Ok(t) = frame.unwrap().into_trailers() {
                trailers.extend(t);
            }
        }
        for name in trailers.keys() {
            assert!(
                !looks_forged(name.as_str()) && name != "set-cookie" && name != "connection",
                "{path}: the client got the trailer {name}"
            );
        }
        for t in seen.lock().unwrap().iter() {
            for name in t.keys() {
                assert!(
                    !looks_forged(name.as_str()),
                    "{path}: the backend got the trailer {name}"
                );
            }
        }
    }
}

/// The request head a raw backend received, and what it answered.
async fn raw_backend(answer: &'static [u8]) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&got).into_owned());
                let _ = s.write_all(answer).await;
                // Whatever the client sends now would be "HTTP/2" to a backend that upgraded.
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn h2c_is_never_forwarded_nor_tunnelled() {
    init();
    let (addr, heads) = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    let yaml = simple_config(&[addr], "", "sessions: {}");
    let gw = Gateway::start(&yaml).await;
    for upgrade in ["h2c", "H2C", "websocket, h2c", "h2c, websocket", "h2c/1"] {
        let resp = raw(
            gw.addr("web"),
            &format!("GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
        )
        .await;
        assert!(
            !resp.starts_with("HTTP/1.1 101"),
            "{upgrade}: tunnelled: {resp}"
        );
        let head = heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            !head.contains("upgrade:"),
            "{upgrade}: the backend saw {head}"
        );
        assert!(
            !head.contains("http2-settings"),
            "{upgrade}: the backend saw {head}"
        );
    }
    // HTTP2-Settings alone, not named in Connection: it never reaches the backend either.
    raw(
        gw.addr("web"),
        "GET / HTTP/1.1\r\nHost: shop.example\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = heads
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(!head.contains("http2-settings"), "{head}");
}

#[tokio::test]
async fn upgrades_follow_the_routes_allow_list() {
    init();
    let (addr, heads) = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{addr}\" }} ]\nroutes:\n  - {{ name: none, match: {{ path_prefix: /none }}, upstream: app, upgrades: [] }}\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n"
    );
    let gw = Gateway::start(&yaml).await;
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let resp = raw(
        gw.addr("web"),
        &format!("GET /ws HTTP/1.1\r\nHost: a\r\n{ws}\r\n"),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 101"),
        "websocket is allowed by default: {resp}"
    );
    let resp = raw(
        gw.addr("web"),
        &format!("GET /none/ws HTTP/1.1\r\nHost: a\r\n{ws}\r\n"),
    )
    .await;
    assert!(
        !resp.starts_with("HTTP/1.1 101"),
        "upgrades: [] refuses: {resp}"
    );
    let head = heads
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap()
        .to_ascii_lowercase();
    assert!(!head.contains("upgrade: websocket"), "{head}");
}
