//! `backend_cookies: jar`: a classic application that keeps its own session behind its own
//! cookie (`sessiongate::demo::cookie_shop`) works through the gateway, while its cookie is
//! kept in the gateway's session and never reaches the client, over cookies and over URL
//! tracking, on every store. Backend cookies named like ours never pass, on any route.

use std::net::SocketAddr;

use http::HeaderMap;
use sessiongate::demo::cookie_shop;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// One replica of the cookie shop on a free port, stopped with the returned token's drop.
struct Shop {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn shop(name: &str) -> Shop {
    init();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    let name = name.to_owned();
    let s = stop.clone();
    tokio::spawn(async move { cookie_shop::serve(l, &name, s).await });
    Shop { addr, stop }
}

/// A gateway in front of `servers`, its one route's `session:` being `route`, its sessions
/// kept in `store`, with the admin API on.
async fn gateway(servers: &[SocketAddr], route: &str, store: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("session.keys"),
        "a-secret-for-the-jar-tests-0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let yaml = simple_config(
        servers,
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  store: {store}\nadmin: {{ bind: \"127.0.0.1:0\", token_file: admin.token }}\n"
        ),
    )
    .replace("upstream: app }", &format!("upstream: app, session: {route} }}"));
    Gateway::start_in(&yaml, dir).await
}

/// No header of a response to the client names the application's cookie or its value.
fn assert_no_app_cookie(h: &HeaderMap, ids: &[String]) {
    for (name, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !v.contains(cookie_shop::COOKIE) && !ids.iter().any(|id| v.contains(id.as_str())),
            "{name}: {v}"
        );
    }
}

/// A browser that keeps only the cookies it is given (the gateway's `sg`), by hand.
struct CookieClient {
    http: reqwest::Client,
    base: String,
    jar: Vec<(String, String)>,
}

impl CookieClient {
    fn new(gw: &Gateway) -> CookieClient {
        CookieClient {
            http: client(),
            base: gw.url("web", ""),
            jar: Vec::new(),
        }
    }

    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        form: &str,
    ) -> (u16, HeaderMap, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
            req = req.header("cookie", cookies.join("; "));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        for sc in h.get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let (name, value) = sc.split(';').next().unwrap().split_once('=').unwrap();
            self.jar.retain(|(n, _)| n != name);
            if !value.is_empty() && !sc.contains("Max-Age=0") {
                self.jar.push((name.to_owned(), value.to_owned()));
            }
        }
        (status, h, resp.text().await.unwrap())
    }

    async fn whoami(&mut self) -> String {
        self.send(reqwest::Method::GET, "/whoami", "").await.2
    }
}

/// Login, cart, logout through the jar over cookies; the client only ever holds `sg`.
async fn journey_over_cookies(gw: &Gateway) {
    let mut c = CookieClient::new(gw);
    assert!(c.whoami().await.starts_with("anonymous"));
    let (status, h, _) = c.send(reqwest::Method::POST, "/login", "user=alice").await;
    assert_eq!(status, 303);
    assert_no_app_cookie(&h, &[]);
    assert_eq!(c.jar.len(), 1, "only the gateway's cookie: {:?}", c.jar);
    assert_eq!(c.jar[0].0, "sg");
    assert!(c.whoami().await.starts_with("user=alice cart=0"));
    for _ in 0..2 {
        let (_, h, _) = c.send(reqwest::Method::POST, "/cart", "").await;
        assert_no_app_cookie(&h, &[]);
    }
    assert!(c.whoami().await.starts_with("user=alice cart=2"));
    // The application logs out by expiring its cookie: the jar forgets it.
    let (_, h, _) = c.send(reqwest::Method::POST, "/logout", "").await;
    assert_no_app_cookie(&h, &[]);
    assert!(c.whoami().await.starts_with("anonymous"));
    // Logging in again works (a new application session in the same gateway session).
    c.send(reqwest::Method::POST, "/login", "user=bob").await;
    assert!(c.whoami().await.starts_with("user=bob cart=0"));
}

#[tokio::test]
async fn a_cookie_app_works_through_the_jar_on_the_memory_store_and_its_cookie_stays_inside() {
    let app = shop("a").await;
    let gw = gateway(&[app.addr], "{ backend_cookies: jar }", "{ kind: memory }").await;
    journey_over_cookies(&gw).await;
}

#[tokio::test]
async fn a_cookie_app_works_through_the_jar_on_redis() {
    let app = shop("a").await;
    let store = format!(
        "{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{}\" }} }}",
        redis_test_prefix()
    );
    let gw = gateway(&[app.addr], "{ backend_cookies: jar }", &store).await;
    journey_over_cookies(&gw).await;
}

#[tokio::test]
async fn a_cookie_app_works_through_the_jar_sealed_in_the_cookie() {
    let app = shop("a").await;
    let gw = gateway(&[app.addr], "{ backend_cookies: jar }", "{ kind: cookie }").await;
    journey_over_cookies(&gw).await;
}

#[tokio::test]
async fn a_client_without_cookies_uses_a_cookie_app_through_url_tracking() {
    let app = shop("a").await;
    let gw = gateway(
        &[app.addr],
        "{ tracking: url, backend_cookies: jar }",
        "{ kind: memory }",
    )
    .await;
    let http = client();
    let base = gw.url("web", "");
    let resp = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=carol")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_no_app_cookie(resp.headers(), &[]);
    assert!(resp.headers().get("set-cookie").is_none());
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let token = location
        .strip_prefix(&format!("{base}/;sgsid="))
        .unwrap_or_else(|| panic!("{location}"))
        .to_owned();
    let who = |path: &str| format!("{base}{path};sgsid={token}");
    let me = get_text(&who("/whoami")).await;
    assert!(me.starts_with("user=carol cart=0"), "{me}");
    // The page's form carries the token; posting it adds to the cart.
    let page = get_text(&location).await;
    assert!(
        page.contains(&format!("action=\"{base}/cart;sgsid={token}\"")),
        "{page}"
    );
    let resp = http.post(who("/cart")).send().await.unwrap();
    assert_no_app_cookie(resp.headers(), &[]);
    assert!(
        get_text(&who("/whoami"))
            .await
            .starts_with("user=carol cart=1")
    );
    // Without the token, the application knows nobody.
    assert!(
        get_text(&format!("{base}/whoami"))
            .await
            .starts_with("anonymous")
    );
    // Logging out: the application expires its cookie, the jar forgets it.
    let resp = http.post(who("/logout")).send().await.unwrap();
    assert_no_app_cookie(resp.headers(), &[]);
    assert!(get_text(&who("/whoami")).await.starts_with("anonymous"));
}

#[tokio::test]
async fn a_kept_cookie_expires_when_its_max_age_runs_out() {
    let b = echo().await;
    let gw = gateway(&[b.addr], "{ backend_cookies: jar }", "{ kind: memory }").await;
    let mut c = CookieClient::new(&gw);
    c.send(
        reqwest::Method::GET,
        &set_url(&["SHORT=1; Max-Age=1", "LONG=2"]),
        "",
    )
    .await;
    let before = c.whoami().await;
    assert!(before.contains("cookie=[LONG=2; SHORT=1]"), "{before}");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let after = c.whoami().await;
    assert!(after.contains("cookie=[LONG=2]"), "{after}");
}

/// A backend that sets what `/set?COOKIE-LINE` says and echoes the `Cookie` it got.
async fn echo() -> Backend {
    Backend::start(|req| async move {
        let cookie = req
            .headers()
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        let attrs = req
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("x-session-attr-"))
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>()
            .join(",");
        let mut r = text(200, &format!("cookie=[{cookie}] attrs=[{attrs}]"));
        if req.uri().path().ends_with("/set") {
            let line = req.uri().query().unwrap_or("");
            let line = percent_decode(line);
            for l in line.split('\n') {
                r.headers_mut()
                    .append("set-cookie", http::HeaderValue::from_str(l).unwrap());
            }
            r.headers_mut()
                .append("x-session-set", http::HeaderValue::from_static("user=u1"));
        }
        r
    })
    .await
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn set_url(lines: &[&str]) -> String {
    let joined = lines.join("\n");
    let q: String = url::form_urlencoded::byte_serialize(joined.as_bytes()).collect();
    format!("/set?{q}")
}

#[tokio::test]
async fn a_client_cannot_plant_or_read_a_kept_cookie_in_any_spelling() {
    let b = echo().await;
    let gw = gateway(
        &[b.addr],
        "{ backend_cookies: { mode: jar, names: [APP_ID] } }",
        "{ kind: memory }",
    )
    .await;
    let mut c = CookieClient::new(&gw);
    let (_, h, _) = c
        .send(
            reqwest::Method::GET,
            &set_url(&["APP_ID=real; Path=/", "theme=dark"]),
            "",
        )
        .await;
    // The kept one stays inside; the other passes.
    let set: Vec<_> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(set.iter().any(|s| s.starts_with("theme=dark")), "{set:?}");
    assert!(
        !set.iter()
            .any(|s| s.contains("APP_ID") || s.contains("real")),
        "{set:?}"
    );
    let sg = c.jar.iter().find(|(n, _)| n == "sg").unwrap().1.clone();
    for planted in [
        "APP_ID=evil",
        "app_id=evil",
        "APP.ID=evil",
        "APP%5FID=evil",
        "+APP_ID=evil",
        "x=1 APP_ID=evil",
        "APP_ID",
        "x=1, APP_ID=evil",
    ] {
        let body =
            get_with_cookie(&gw.url("web", "/"), &format!("sg={sg}; mine=1; {planted}")).await;
        assert!(
            body.contains("cookie=[APP_ID=real; mine=1]"),
            "{planted}: {body}"
        );
    }
    // The kept cookie is no attribute header for the backend.
    let me = c.whoami().await;
    assert!(me.contains("attrs=[x-session-attr-user]"), "{me}");
}

#[tokio::test]
async fn a_jar_of_every_cookie_gives_the_backend_no_client_cookie() {
    let b = echo().await;
    let gw = gateway(&[b.addr], "{ backend_cookies: jar }", "{ kind: memory }").await;
    let mut c = CookieClient::new(&gw);
    c.send(
        reqwest::Method::GET,
        &set_url(&["A=1", "B=2; Path=/other"]),
        "",
    )
    .await;
    c.jar.push(("script-set".into(), "x".into()));
    let body = c.whoami().await;
    assert!(body.contains("cookie=[A=1]"), "{body}");
}

#[tokio::test]
async fn backend_cookies_named_like_ours_never_reach_the_client_on_any_route() {
    let b = echo().await;
    // `/` has sessions and passes backend cookies; `/plain` has none.
    let gw = gateway(&[b.addr], "{ backend_cookies: pass }", "{ kind: memory }").await;
    let evil = [
        "sg=planted; Path=/",
        "SG=planted",
        "__Host-sg=planted; Secure; Path=/",
        "sg_probe=1",
        " sg =planted",
        "=sg=planted; Path=/deep",
        "sg",
        "fine=1",
    ];
    let h = client()
        .get(gw.url("web", &set_url(&evil)))
        .send()
        .await
        .unwrap()
        .headers()
        .clone();
    let set: Vec<_> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    // `fine=1` passes, and the gateway's own cookie for the session the `X-Session-Set`
    // created; nothing the backend named like ours.
    assert!(set.contains(&"fine=1"), "{set:?}");
    assert!(
        !set.iter()
            .any(|s| s.contains("planted") || s.starts_with("sg_probe")),
        "{set:?}"
    );
    let yaml_plain = simple_config(&[b.addr], "", "sessions: {}\n").replace(
        "routes:\n",
        "routes:\n  - { name: plain, match: { path_prefix: /plain }, upstream: app, session: off }\n",
    );
    let gw2 = Gateway::start(&yaml_plain).await;
    let h = client()
        .get(gw2.url("web", &format!("/plain{}", set_url(&evil))))
        .send()
        .await
        .unwrap()
        .headers()
        .clone();
    let set: Vec<_> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, ["fine=1"]);
}

#[tokio::test]
async fn the_admin_api_names_kept_cookies_without_their_values() {
    let b = echo().await;
    let gw = gateway(&[b.addr], "{ backend_cookies: jar }", "{ kind: memory }").await;
    let mut c = CookieClient::new(&gw);
    c.send(
        reqwest::Method::GET,
        &set_url(&["APPSESSID=secret-value"]),
        "",
    )
    .await;
    // Find the session's key through the backend's view.
    let body = c.whoami().await;
    assert!(body.contains("APPSESSID=secret-value"), "{body}");
    let admin = format!("http://{}", gw.admin());
    let all_keys = b
        .requests()
        .iter()
        .filter_map(|s| {
            s.headers
                .get("x-session-key")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .next_back()
        .unwrap();
    let view = client()
        .get(format!("{admin}/sessions/{all_keys}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        view.contains("\"backend_cookies\":[\"APPSESSID\"]"),
        "{view}"
    );
    assert!(
        !view.contains("secret-value") && !view.contains("~jar"),
        "{view}"
    );
}

#[tokio::test]
async fn a_token_planted_before_the_apps_login_does_not_come_to_hold_its_cookie() {
    let b = echo().await;
    let gw = gateway(&[b.addr], "{ backend_cookies: jar }", "{ kind: memory }").await;
    // The attacker's session, with a cookie of the application's from before any login.
    let mut attacker = CookieClient::new(&gw);
    attacker
        .send(reqwest::Method::GET, &set_url(&["pre=1"]), "")
        .await;
    let planted = attacker.jar.clone();
    // The victim's browser holds that token, and logs in: the application sets its id.
    let mut victim = CookieClient::new(&gw);
    victim.jar = planted.clone();
    let (_, h, _) = victim
        .send(reqwest::Method::GET, &set_url(&["APPSESSID=victims"]), "")
        .await;
    assert!(h.get("set-cookie").is_some(), "a new token for the victim");
    assert_ne!(victim.jar, planted);
    assert!(victim.whoami().await.contains("APPSESSID=victims"));
    // The planted token never sees the application's new cookie.
    let seen = attacker.whoami().await;
    assert!(!seen.contains("victims"), "{seen}");
}

/// A gateway in front of the cookie shop's `replicas` (name, address), balanced by session,
/// each server with `route: NAME` when `routes`.
async fn affinity_gateway(replicas: &[(&str, SocketAddr)], routes: bool, route: &str) -> Gateway {
    let servers: Vec<String> = replicas
        .iter()
        .map(|(name, a)| {
            if routes {
                format!("{{ url: \"http://{a}\", route: {name} }}")
            } else {
                format!("{{ url: \"http://{a}\" }}")
            }
        })
        .collect();
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    balance: session_affinity\n    servers: [ {} ]\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, session: {route} }}\nsessions: {{}}\n",
        servers.join(", ")
    );
    Gateway::start(&yaml).await
}

#[tokio::test]
async fn a_jarred_application_session_stays_on_the_replica_that_made_it() {
    let (a, b) = (shop("a").await, shop("b").await);
    let gw = affinity_gateway(
        &[("a", a.addr), ("b", b.addr)],
        false,
        "{ backend_cookies: jar }",
    )
    .await;
    // Several users: each login lands where round robin puts it, and each stays there
    // (without the pin, about half would be hashed to the other replica and logged out).
    for user in ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"] {
        let mut c = CookieClient::new(&gw);
        c.send(reqwest::Method::POST, "/login", &format!("user={user}"))
            .await;
        let first = c.whoami().await;
        assert!(first.starts_with(&format!("user={user} ")), "{first}");
        for _ in 0..5 {
            c.send(reqwest::Method::POST, "/cart", "").await;
            assert_eq!(
                c.whoami().await.split(' ').next_back(),
                first.split(' ').next_back()
            );
        }
        assert!(c.whoami().await.contains("cart=5"));
    }
}

#[tokio::test]
async fn a_user_logged_in_before_the_cut_over_stays_logged_in_on_the_replica_named_by_the_cookie() {
    let (a, b) = (shop("a").await, shop("b").await);
    // Before the gateway: alice logs in on replica b directly.
    let direct = client()
        .post(format!("http://{}/login", b.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=alice")
        .send()
        .await
        .unwrap();
    let line = direct.headers()["set-cookie"].to_str().unwrap().to_owned();
    let (name, id) = line.split(';').next().unwrap().split_once('=').unwrap();
    assert_eq!(name, cookie_shop::COOKIE);
    assert!(id.ends_with(".b"), "{id}");
    let gw = affinity_gateway(
        &[("a", a.addr), ("b", b.addr)],
        true,
        "{ backend_cookies: jar, adopt: [APPSESSID] }",
    )
    .await;
    // Her browser still holds the application's cookie: it is adopted, and expired in the
    // browser; she is still logged in, on b, with the gateway's cookie alone.
    let mut c = CookieClient::new(&gw);
    c.jar.push((name.to_owned(), id.to_owned()));
    let (_, h, body) = c.send(reqwest::Method::GET, "/whoami", "").await;
    assert_eq!(body, "user=alice cart=0 replica=b\n");
    let set: Vec<_> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(set.contains(&"APPSESSID=; Path=/; Max-Age=0"), "{set:?}");
    assert_eq!(c.jar.len(), 1, "{:?}", c.jar);
    assert_eq!(c.jar[0].0, "sg");
    for _ in 0..4 {
        c.send(reqwest::Method::POST, "/cart", "").await;
    }
    assert_eq!(c.whoami().await, "user=alice cart=4 replica=b\n");
    // A client without the cookie adopts nothing and makes no session.
    let mut anon = CookieClient::new(&gw);
    assert!(anon.whoami().await.starts_with("anonymous"));
    assert!(anon.jar.is_empty());
}
