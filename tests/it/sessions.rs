//! Sessions end to end over cookies: a small shop backend that keeps its state only in the
//! session headers, and a client that carries the cookie by hand (so every cookie is seen).

use std::time::Duration;

use http::HeaderMap;

use crate::support::*;

/// A backend that knows nothing of cookies: it reads X-Session-* and answers with directives.
pub async fn shop() -> Backend {
    Backend::start(|req| async move {
        let h = req.headers();
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let seen = format!(
            "status={} user={} cart={} key={}",
            get("x-session-status"),
            get("x-session-attr-user"),
            get("x-session-attr-cart"),
            get("x-session-key")
        );
        let mut r = text(200, &seen);
        let rh = r.headers_mut();
        match req.uri().path() {
            "/login" => {
                rh.append("x-session-set", "user=alice".parse().unwrap());
                rh.append("x-session-action", "regenerate".parse().unwrap());
            }
            "/cart" => {
                let n: u32 = get("x-session-attr-cart").parse().unwrap_or(0);
                rh.append("x-session-set", format!("cart={}", n + 1).parse().unwrap());
            }
            p if p.starts_with("/set/") => {
                // /set/NAME/VALUE
                let mut parts = p["/set/".len()..].splitn(2, '/');
                let (name, value) = (parts.next().unwrap(), parts.next().unwrap_or("1"));
                rh.append("x-session-set", format!("{name}={value}").parse().unwrap());
            }
            "/attrs" => {
                let n = h
                    .keys()
                    .filter(|k| k.as_str().starts_with("x-session-attr-"))
                    .count();
                *r.body_mut() = full(format!("{seen} attrs={n}"));
            }
            "/logout" => {
                rh.append("x-session-action", "destroy".parse().unwrap());
            }
            "/crash" => {
                *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                r.headers_mut()
                    .append("x-session-set", "user=mallory".parse().unwrap());
            }
            _ => {}
        }
        r
    })
    .await
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
}

impl Client {
    pub fn new(gw: &Gateway) -> Client {
        Client {
            http: client(),
            base: gw.url("web", ""),
            cookie: None,
        }
    }

    /// GET `path` with the current cookie; keeps a new one if the response sets it.
    pub async fn get(&mut self, path: &str) -> (String, HeaderMap) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("sg={c}; theme=dark"));
        }
        let resp = req.send().await.unwrap();
        let headers = resp.headers().clone();
        for sc in headers.get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let value = sc.split(';').next().unwrap().strip_prefix("sg=").unwrap();
            self.cookie =
                (!value.is_empty() && !sc.contains("Max-Age=0")).then(|| value.to_owned());
        }
        (resp.text().await.unwrap(), headers)
    }
}

fn config(b: &Backend) -> String {
    simple_config(&[b.addr], "", "sessions: { regenerate_grace: 300ms }")
}

/// As `config`, and `/u/...` on a route that tracks by URL (the prefix taken off).
fn url_route_config(b: &Backend) -> String {
    config(b).replace(
        "routes:\n",
        "routes:\n  - { name: by-url, match: { path_prefix: /u }, upstream: app, strip_prefix: true, session: { tracking: url } }\n",
    )
}

pub fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap()
}

#[tokio::test]
async fn login_regenerate_cart_logout_flow_over_cookies() {
    let b = shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let mut c = Client::new(&gw);

    // A first visit writes nothing: no session, no cookie.
    let (body, h) = c.get("/").await;
    assert_eq!(field(&body, "status"), "none");
    assert!(h.get("set-cookie").is_none());

    // Login creates the session (and regenerates: a fresh session needs nothing more).
    let (_, h) = c.get("/login").await;
    let sc = h["set-cookie"].to_str().unwrap();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax") && sc.contains("Path=/"),
        "{sc}"
    );
    assert!(h.get("x-session-set").is_none() && h.get("x-session-action").is_none());
    let first_token = c.cookie.clone().unwrap();

    let (body, _) = c.get("/whoami").await;
    assert_eq!(field(&body, "status"), "active");
    assert_eq!(field(&body, "user"), "alice");
    let key = field(&body, "key").to_owned();

    // Logging in again regenerates: a new token, same data and key.
    c.get("/login").await;
    let second_token = c.cookie.clone().unwrap();
    assert_ne!(first_token, second_token);
    for _ in 0..3 {
        c.get("/cart").await;
    }
    let (body, _) = c.get("/whoami").await;
    assert_eq!((field(&body, "user"), field(&body, "cart")), ("alice", "3"));
    assert_eq!(field(&body, "key"), key);

    // The old token stops working after the grace window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut old = Client::new(&gw);
    old.cookie = Some(first_token);
    let (body, _) = old.get("/whoami").await;
    assert_eq!(field(&body, "user"), "-");

    // Logout destroys the session and expires the cookie.
    let (_, h) = c.get("/logout").await;
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let mut after = Client::new(&gw);
    after.cookie = Some(second_token);
    let (body, _) = after.get("/whoami").await;
    assert_eq!(field(&body, "status"), "expired");
    assert_eq!(field(&body, "user"), "-");

    // The backend never saw our cookie; other cookies passed.
    for seen in b.requests() {
        let cookie = seen
            .headers
            .get("cookie")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(
            cookie.as_deref().is_none_or(|c| !c.contains("sg=")),
            "{cookie:?}"
        );
    }
    assert!(
        b.requests()
            .iter()
            .any(|s| s.headers.get("cookie").is_some_and(|c| c == "theme=dark"))
    );
}

#[tokio::test]
async fn forged_and_mangled_tokens_get_a_fresh_session_and_are_never_stored() {
    let b = shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let mut real = Client::new(&gw);
    real.get("/login").await;
    let token = real.cookie.clone().unwrap();
    let mut mangled = token.clone().into_bytes();
    mangled[10] = if mangled[10] == b'A' { b'B' } else { b'A' };
    for forged in [
        "attacker-chosen-session-id".to_owned(),
        String::from_utf8(mangled).unwrap(),
        "A".repeat(64),
    ] {
        let mut c = Client::new(&gw);
        c.cookie = Some(forged.clone());
        let (body, _) = c.get("/whoami").await;
        assert_eq!(field(&body, "status"), "none", "{forged}");
        // Writing with a forged token creates a new session under a new token.
        c.get("/cart").await;
        let issued = c.cookie.clone().unwrap();
        assert_ne!(issued, forged);
        let (body, _) = c.get("/whoami").await;
        assert_eq!(
            (field(&body, "status"), field(&body, "cart")),
            ("active", "1")
        );
        assert_eq!(field(&body, "user"), "-");
    }
}

#[tokio::test]
async fn spoofed_session_headers_never_reach_the_backend() {
    let b = shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let resp = client()
        .get(gw.url("web", "/whoami"))
        .header("X-Session-Attr-User", "root")
        .header("x-session-status", "active")
        .header("X_Session_Key", "forged")
        .header("X-SESSION-ATTR-ROLE", "admin")
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    assert_eq!(field(&body, "status"), "none");
    assert_eq!(field(&body, "user"), "-");
    let seen = &b.requests()[0].headers;
    let ours: Vec<_> = seen
        .keys()
        .filter(|k| k.as_str().starts_with("x-session") || k.as_str().starts_with("x_session"))
        .collect();
    assert_eq!(ours, ["x-session-status"], "{seen:?}");
}

#[tokio::test]
async fn directives_of_a_5xx_are_removed_and_not_applied() {
    let b = shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let mut c = Client::new(&gw);
    let (_, h) = c.get("/crash").await;
    assert!(h.get("x-session-set").is_none());
    assert!(h.get("set-cookie").is_none());
    c.get("/login").await;
    c.get("/crash").await;
    let (body, _) = c.get("/whoami").await;
    assert_eq!(field(&body, "user"), "alice");
}

#[tokio::test]
async fn routes_without_sessions_pass_session_headers_through_untouched() {
    let b = shop().await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let resp = client().get(gw.url("web", "/login")).send().await.unwrap();
    // No sessions configured: the gateway is a plain proxy and adds nothing.
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(b.requests()[0].headers.get("x-session-status").is_none());
}

#[tokio::test]
async fn demo_shop_keeps_its_cart_in_the_session() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sessiongate::demo::serve_backend(
        listener,
        "replica 1",
        stop.clone(),
    ));
    let gw = Gateway::start(&simple_config(&[addr], "", "sessions: {}")).await;
    let http = client();
    let login = http
        .post(gw.url("web", "/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=carol")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..2 {
        let r = http
            .post(gw.url("web", "/cart"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    let page = http
        .get(gw.url("web", "/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Logged in as <b>carol</b>. Cart: <b>2</b>"),
        "{page}"
    );
    stop.cancel();
}

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

async fn gateway_with_admin(b: &Backend) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let yaml = simple_config(
        &[b.addr],
        "",
        "sessions: {}\nadmin: { bind: \"127.0.0.1:0\", token_file: admin.token }",
    );
    Gateway::start_in(&yaml, dir).await
}

#[tokio::test]
async fn admin_api_reads_and_revokes_sessions_with_a_bearer_token() {
    let b = shop().await;
    let gw = gateway_with_admin(&b).await;
    let admin = format!("http://{}", gw.admin());
    let http = client();

    // Two sessions of alice (two browsers), one of bob.
    let mut alice1 = Client::new(&gw);
    let mut alice2 = Client::new(&gw);
    let mut bob = Client::new(&gw);
    alice1.get("/login").await;
    alice2.get("/login").await;
    bob.get("/cart").await;
    let (body, _) = alice1.get("/whoami").await;
    let key = field(&body, "key").to_owned();

    // No token, a wrong token: refused.
    let url = format!("{admin}/sessions/{key}");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    let got = http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&got.text().await.unwrap()).unwrap();
    assert_eq!(json["attributes"]["user"], "alice");
    assert_eq!(json["key"], key.as_str());

    // Log alice out everywhere; bob keeps his session.
    let del = http
        .delete(format!("{admin}/sessions?attr=user:alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&del.text().await.unwrap()).unwrap();
    assert_eq!(json["deleted"], 2);
    for c in [&mut alice1, &mut alice2] {
        let (body, _) = c.get("/whoami").await;
        assert_eq!(field(&body, "status"), "expired");
    }
    let (body, _) = bob.get("/whoami").await;
    assert_eq!(
        (field(&body, "status"), field(&body, "cart")),
        ("active", "1")
    );

    // One session by key.
    let bob_key = field(&body, "key").to_owned();
    let del = http
        .delete(format!("{admin}/sessions/{bob_key}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let (body, _) = bob.get("/whoami").await;
    assert_eq!(field(&body, "status"), "expired");
    let gone = http
        .get(format!("{admin}/sessions/{bob_key}"))
        .bearer_auth(ADMIN_TOKEN);
    assert_eq!(gone.send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_setting_different_attributes_all_survive() {
    let b = shop().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "sessions: { limits: { max_attributes: 200 } }",
    ))
    .await;
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let cookie = format!("sg={}", c.cookie.clone().unwrap());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (http, url, cookie) = (
                client(),
                gw.url("web", &format!("/set/a{i}/x")),
                cookie.clone(),
            );
            tokio::spawn(async move {
                let r = http.get(url).header("cookie", cookie).send().await.unwrap();
                assert_eq!(r.status(), 200);
                // The token did not change: nobody got a second session.
                assert!(r.headers().get("set-cookie").is_none());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (body, _) = c.get("/attrs").await;
    // 100 set in parallel, plus `user` from the login.
    assert_eq!(field(&body, "attrs"), "101", "{body}");
}

#[tokio::test]
async fn a_directive_over_the_limits_is_ignored_and_the_request_served() {
    let b = shop().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "sessions: { limits: { max_value_bytes: 8 } }",
    ))
    .await;
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let (body, _) = c.get("/set/cart/123456789").await;
    assert_eq!(field(&body, "status"), "active");
    let (body, _) = c.get("/set/cart/12345678").await;
    assert_eq!(field(&body, "cart"), "-");
    let (body, _) = c.get("/whoami").await;
    assert_eq!(
        (field(&body, "user"), field(&body, "cart")),
        ("alice", "12345678")
    );
}

#[tokio::test]
async fn an_idle_session_is_expired_and_a_used_one_lives_on() {
    let b = shop().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "sessions: { idle_timeout: 1500ms }",
    ))
    .await;
    let (mut idle, mut used) = (Client::new(&gw), Client::new(&gw));
    idle.get("/login").await;
    used.get("/login").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (body, _) = used.get("/whoami").await;
        assert_eq!(field(&body, "status"), "active");
    }
    let (body, _) = idle.get("/whoami").await;
    assert_eq!(
        (field(&body, "status"), field(&body, "user")),
        ("expired", "-")
    );
}

#[tokio::test]
async fn a_session_ends_at_the_absolute_timeout_even_when_used() {
    let b = shop().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "sessions: { idle_timeout: 10s, absolute_timeout: 1s }",
    ))
    .await;
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let (body, _) = c.get("/whoami").await;
    assert_eq!(field(&body, "status"), "active");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (body, _) = c.get("/whoami").await;
    assert_eq!(field(&body, "status"), "expired");
}

#[tokio::test]
async fn the_memory_store_evicts_past_max_sessions() {
    let b = shop().await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "",
        "sessions: { store: { memory: { max_sessions: 20 } } }",
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut c = Client::new(&gw);
        c.get("/login").await;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut active = 0;
    for c in &mut clients {
        let (body, _) = c.get("/whoami").await;
        if field(&body, "status") == "active" {
            active += 1;
        }
    }
    // moka bounds the count (approximately, as it admits by frequency); far below 200.
    assert!(active <= 40, "{active} sessions still active");
}

/// A client that refuses cookies: it sends the token in the URL, and the backend must see the
/// session with a clean URL, and never the token.
#[tokio::test]
async fn a_token_in_the_path_or_query_resumes_the_session_and_never_reaches_the_backend() {
    let b = shop().await;
    let gw = Gateway::start(&url_route_config(&b)).await;
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let token = c.cookie.clone().unwrap();
    for (target, seen_target) in [
        (format!("/u/cart;sgsid={token}?item=7"), "/cart?item=7"),
        (
            format!("/u/cart?a=%2F&sgsid={token}&b=2"),
            "/cart?a=%2F&b=2",
        ),
        (format!("/u/cart?sgsid={token}"), "/cart"),
    ] {
        let resp = client()
            .get(gw.url("web", &target))
            .header("referer", gw.url("web", &format!("/list;sgsid={token}")))
            .send()
            .await
            .unwrap();
        let body = resp.text().await.unwrap();
        assert_eq!(
            (field(&body, "status"), field(&body, "user")),
            ("active", "alice"),
            "{target}"
        );
        let seen = b.last();
        assert_eq!(seen.uri, seen_target);
        assert_eq!(seen.headers["referer"], gw.url("web", "/list"));
        let everything = format!("{} {:?}", seen.uri, seen.headers);
        assert!(!everything.contains(&token), "{everything}");
    }
    // A forged token in the URL is refused (and still taken out): a GET is sent to the URL
    // without it, and any other request goes on without a session.
    let resp = client()
        .get(gw.url("web", "/u/whoami;sgsid=forged-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], gw.url("web", "/u/whoami"));
    let resp = client()
        .post(gw.url("web", "/u/whoami;sgsid=forged-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(field(&resp.text().await.unwrap(), "status"), "none");
    assert_eq!(b.last().uri, "/whoami");
}

#[tokio::test]
async fn the_cookie_counts_before_the_path_parameter_and_that_before_the_query() {
    let b = shop().await;
    let gw = Gateway::start(&url_route_config(&b)).await;
    // Three sessions, told apart by their cart.
    let mut tokens = Vec::new();
    for n in 1..=3 {
        let mut c = Client::new(&gw);
        c.get(&format!("/set/cart/{n}")).await;
        tokens.push(c.cookie.clone().unwrap());
    }
    let cart = |cookie: Option<&str>, target: String| {
        let mut req = client().get(gw.url("web", &target));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("sg={c}"));
        }
        async move { field(&req.send().await.unwrap().text().await.unwrap(), "cart").to_owned() }
    };
    let (one, two, three) = (&tokens[0], &tokens[1], &tokens[2]);
    // (A POST: a GET with a token that does not count is sent to the URL without it.)
    let cart_post = |cookie: &str, target: String| {
        let req = client()
            .post(gw.url("web", &target))
            .header("cookie", format!("sg={cookie}"));
        async move { field(&req.send().await.unwrap().text().await.unwrap(), "cart").to_owned() }
    };
    assert_eq!(
        cart_post(one, format!("/u/w;sgsid={two}?sgsid={three}")).await,
        "1"
    );
    assert_eq!(
        cart(None, format!("/u/w;sgsid={two}?sgsid={three}")).await,
        "2"
    );
    assert_eq!(cart(None, format!("/u/w?sgsid={three}")).await, "3");
    // A client that sends a cookie of ours, even a forged one, keeps cookies: it never takes
    // a token from a URL (someone else could have put it in the link); nor does a route that
    // tracks by cookie. The URL without the token is where it goes.
    for (cookie, target, clean) in [
        (Some("sg=forged"), format!("/u/w;sgsid={two}"), "/u/w"),
        (None, format!("/w;sgsid={two}"), "/w"),
    ] {
        let mut req = client().get(gw.url("web", &target));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 302, "{target}");
        assert_eq!(resp.headers()["location"], gw.url("web", clean));
    }
}
