//! A real browser through the demo shop: headless Chromium (Debian's `chromium`, driven
//! through `chromedriver`), once with cookies blocked and once with cookies allowed, on a
//! route with `tracking: auto`. Screenshots of each journey's last page are saved under
//! `CARGO_TARGET_TMPDIR/browser/`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// A chromedriver on a free loopback port, killed when dropped.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn driver() -> Driver {
    let port = crate::support::free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "chromedriver did not start");
    Driver { child, url }
}

pub async fn browser(driver: &Driver, block_cookies: bool) -> Client {
    browser_with(driver, block_cookies, &[]).await
}

/// A browser with more command-line switches (`--host-resolver-rules`, say, for host names
/// of other sites on the loopback).
pub async fn browser_with(driver: &Driver, block_cookies: bool, extra: &[&str]) -> Client {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,900",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut options = serde_json::json!({
        "binary": "/usr/bin/chromium",
        "args": args,
    });
    if block_cookies {
        options["prefs"] =
            serde_json::json!({ "profile.default_content_setting_values.cookies": 2 });
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".to_owned(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap()
}

/// The demo shop behind a gateway with `tracking: auto`; returns the gateway and its URL.
async fn demo_gateway(stop: &CancellationToken) -> (Gateway, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sessiongate::demo::serve_backend(
        listener,
        "replica 1",
        stop.clone(),
    ));
    let gw = Gateway::start(&simple_config(&[addr], "", "sessions: { tracking: auto }")).await;
    let base = gw.url("web", "");
    (gw, base)
}

/// Clicks the element `id` and waits for the page it leads to: the old document gone (its
/// root element stale), the new one loaded far enough to show the session status.
async fn click_and_wait(c: &Client, id: &str) {
    click_and_wait_for(c, id, "status").await;
}

/// Clicks the element `id` and waits for the next page's element `shown`: its text.
async fn click_and_wait_for(c: &Client, id: &str, shown: &str) -> String {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(10), || {
        let old = old.clone();
        async move { old.text().await.is_err() }
    })
    .await;
    assert!(gone, "clicking #{id} led nowhere");
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(shown))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Log in, follow a link, search with the GET form, log out. Returns every URL the address
/// bar showed after logging in, and every page's source, in order.
async fn journey(c: &Client, base: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let (mut urls, mut pages) = (Vec::new(), Vec::new());
    let status = |c: &Client| {
        let c = c.clone();
        async move {
            c.find(Locator::Id("status"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(status(c).await, "none");
    click_and_wait(c, "login").await;
    let mut step = async |what: &str| {
        let page = c.source().await.unwrap();
        assert!(page.contains("Logged in as <b>alice</b>"), "{what}: {page}");
        assert_eq!(status(c).await, "active", "{what}");
        urls.push(c.current_url().await.unwrap().to_string());
        pages.push(page);
    };
    step("after login").await;
    click_and_wait(c, "about").await;
    step("after a link").await;
    let q = c.find(Locator::Css("input[name=q]")).await.unwrap();
    q.send_keys("shoes").await.unwrap();
    click_and_wait(c, "search").await;
    step("after the GET form").await;
    let searched = c
        .find(Locator::Id("searched"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(searched.contains("shoes"), "{searched}");
    click_and_wait(c, "logout").await;
    urls.push(c.current_url().await.unwrap().to_string());
    let page = c.source().await.unwrap();
    assert!(page.contains("id=\"login\""), "after logout: {page}");
    pages.push(page);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    (urls, pages)
}

#[tokio::test]
async fn browser_with_cookies_blocked_keeps_its_session_through_urls() {
    let stop = CancellationToken::new();
    let (_gw, base) = demo_gateway(&stop).await;
    let driver = driver().await;
    let c = browser(&driver, true).await;
    let (urls, _) = journey(&c, &base, "cookies-blocked").await;
    c.close().await.unwrap();
    stop.cancel();
    // Logged in, through a link and a GET form: the address bar carried the token.
    for url in &urls[..3] {
        assert!(url.contains(";sgsid="), "{urls:?}");
    }
}

#[tokio::test]
async fn browser_with_cookies_never_sees_a_token_in_a_url() {
    let stop = CancellationToken::new();
    let (_gw, base) = demo_gateway(&stop).await;
    let driver = driver().await;
    let c = browser(&driver, false).await;
    let (urls, pages) = journey(&c, &base, "cookies-allowed").await;
    c.close().await.unwrap();
    stop.cancel();
    for url in &urls {
        assert!(!url.contains("sgsid"), "{urls:?}");
    }
    for page in &pages {
        assert!(!page.contains("sgsid"), "{page}");
    }
}

/// Clicks `id` and waits for the cookie shop's next page: the replica that served it.
async fn click_for_replica(c: &Client, id: &str) -> String {
    click_and_wait_for(c, id, "replica").await
}

#[tokio::test]
async fn browser_with_cookies_blocked_uses_a_cookie_app_through_the_jar() {
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push((name, l.local_addr().unwrap()));
        let stop = stop.clone();
        tokio::spawn(async move { sessiongate::demo::cookie_shop::serve(l, name, stop).await });
    }
    let list: Vec<String> = servers
        .iter()
        .map(|(n, a)| format!("{{ url: \"http://{a}\", route: {n} }}"))
        .collect();
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  classic:\n    balance: session_affinity\n    servers: [ {} ]\nroutes:\n  - {{ name: classic, match: {{ path_prefix: /classic }}, upstream: classic, strip_prefix: true, session: {{ backend_cookies: jar }} }}\nsessions: {{ tracking: auto }}\n",
        list.join(", ")
    );
    let gw = Gateway::start(&yaml).await;
    let base = gw.url("web", "/classic/");
    let driver = driver().await;
    let c = browser(&driver, true).await;
    c.goto(&base).await.unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("Not logged in"), "{page}");
    let replica = click_for_replica(&c, "login").await;
    let text = |id: &'static str| {
        let c = c.clone();
        async move { c.find(Locator::Id(id)).await.unwrap().text().await.unwrap() }
    };
    assert_eq!(text("user").await, "alice");
    for n in 1..=2 {
        assert_eq!(
            click_for_replica(&c, "add").await,
            replica,
            "the session stayed put"
        );
        assert_eq!(text("cart").await, n.to_string());
    }
    let url = c.current_url().await.unwrap().to_string();
    assert!(url.contains(";sgsid="), "{url}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cookie-app-jar.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    click_for_replica(&c, "logout").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("Not logged in"), "{page}");
    c.close().await.unwrap();
    stop.cancel();
}

/// Types `text` into the input `id` and clicks `button` (a CSS selector).
async fn type_and_submit(c: &Client, id: &str, text: &str, button: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
    c.find(Locator::Css(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Logs `user` in to the demo shop behind `base` (a POST of its form, as a browser would);
/// the session cookie and the session's key.
async fn shop_login(base: &str, user: &str) -> (String, String) {
    let resp = client()
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user={user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = cookie_pair(&resp);
    let page = get_with_cookie(&format!("{base}/"), &cookie).await;
    let key = page
        .split("<th>x-session-key</th><td>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_owned();
    (cookie, key)
}

#[tokio::test]
async fn an_operator_revokes_a_session_in_the_console_and_its_next_request_finds_it_expired() {
    const TOKEN: &str = "console-token-for-the-browser-test";
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sessiongate::demo::serve_backend(
        listener,
        "replica 1",
        stop.clone(),
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let gw = Gateway::start_in(
        &simple_config(
            &[addr],
            "",
            "sessions: {}\nadmin: { bind: \"127.0.0.1:0\", token_file: admin.token }",
        ),
        dir,
    )
    .await;
    let base = gw.url("web", "");
    let (phone, phone_key) = shop_login(&base, "alice").await;
    let (laptop, laptop_key) = shop_login(&base, "alice").await;

    let driver = driver().await;
    let c = browser(&driver, false).await;
    c.goto(&format!("http://{}/console", gw.admin()))
        .await
        .unwrap();
    // Nothing shows before the token is given.
    assert!(
        !c.find(Locator::Id("app"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    type_and_submit(&c, "token", TOKEN, "#signin button").await;
    let live = eventually(Duration::from_secs(10), || async {
        let status = c.find(Locator::Id("live")).await.unwrap();
        status.text().await.is_ok_and(|t| t == "live")
    })
    .await;
    assert!(live, "the event stream did not connect");

    type_and_submit(&c, "subject", "alice", "#search button").await;
    let row = |key: &str| {
        Locator::Css(Box::leak(
            format!("tr[data-key=\"{key}\"]").into_boxed_str(),
        ))
    };
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(row(&phone_key))
        .await
        .unwrap();
    c.find(row(&laptop_key)).await.unwrap();
    let listed = c
        .find(Locator::Id("result-note"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("2 live sessions of alice"), "{listed}");

    c.find(row(&phone_key))
        .await
        .unwrap()
        .find(Locator::Css("button.revoke"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let revoked = eventually(Duration::from_secs(10), || async {
        let note = c.find(Locator::Id("result-note")).await.unwrap();
        note.text().await.is_ok_and(|t| t.contains("revoked"))
    })
    .await;
    assert!(revoked, "the console did not say the session was revoked");
    // The live stream shows it.
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#events li.revoked"))
        .await
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("console.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();

    // The revoked session's next request finds it expired; the other lives on.
    let page = get_with_cookie(&format!("{base}/"), &phone).await;
    assert!(page.contains("id=\"status\">expired"), "{page}");
    let page = get_with_cookie(&format!("{base}/"), &laptop).await;
    assert!(page.contains("id=\"status\">active"), "{page}");
    stop.cancel();
}

#[tokio::test]
async fn the_demo_shop_on_three_replicas_keeps_one_session_from_server_to_server() {
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    for n in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(listener.local_addr().unwrap());
        let stop = stop.clone();
        tokio::spawn(async move {
            sessiongate::demo::serve_backend(listener, &format!("replica {n} of 3"), stop).await;
        });
    }
    let gw = Gateway::start(&simple_config(&servers, "", "sessions: {}")).await;
    let base = gw.url("web", "");
    let driver = driver().await;
    let c = browser(&driver, false).await;
    c.goto(&format!("{base}/")).await.unwrap();
    click_and_wait(&c, "login").await;
    let mut replicas = std::collections::BTreeSet::new();
    let mut cart = 0;
    for _ in 0..6 {
        let page = c.source().await.unwrap();
        assert!(page.contains("Logged in as <b>alice</b>"), "{page}");
        let text = |id: &'static str| {
            let c = c.clone();
            async move { c.find(Locator::Id(id)).await.unwrap().text().await.unwrap() }
        };
        assert_eq!(text("status").await, "active");
        replicas.insert(text("replica").await);
        // Each replica adds to the same cart: the session is the gateway's, not theirs.
        c.find(Locator::Css("form[action=\"/cart\"] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        cart += 1;
        let shown = eventually(Duration::from_secs(10), || async {
            c.source()
                .await
                .is_ok_and(|p| p.contains(&format!("Cart: <b>{cart}</b>")))
        })
        .await;
        assert!(shown, "the cart did not show {cart}");
    }
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("three-replicas.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    c.close().await.unwrap();
    stop.cancel();
}
