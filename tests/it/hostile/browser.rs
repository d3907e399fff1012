//! Classes 1–3 in a real browser: headless Chromium loads a URL-tracked page full of hostile
//! links, subresources, a late and a hidden `<base>`, referrer overrides and a `ping`, through
//! the gateway, and follows them. A second server on another port (another origin) records
//! every request it gets: none may carry the token, in its URL or in any header. What the
//! browser itself resolves every link to is checked too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::Locator;

use super::rewriter::HOSTILE_LINKS;
use super::*;
use crate::browser::{browser, driver};

/// Every request the other origin received: its target and its headers, as text.
async fn other_origin() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    other_origin_serving("elsewhere".to_owned()).await
}

/// Another site answering `page` (as HTML) to everything, and recording every request.
async fn other_origin_serving(page: String) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let backend = Backend::start(move |req| {
        let log = log.clone();
        let page = page.clone();
        async move {
            log.lock().unwrap().push(format!(
                "{} {} {:?}",
                req.method(),
                req.uri(),
                req.headers()
            ));
            let mut r = text(200, &page);
            r.headers_mut()
                .insert("content-type", "text/html".parse().unwrap());
            r
        }
    })
    .await;
    (backend.addr, seen)
}

/// A page that hides a foreign `<base>` where the browser does not look for one (a template),
/// then links home: they must keep the session, and stay home.
fn hidden_base_page(evil: &str) -> String {
    format!(
        r#"<!doctype html><html><head><template><base href="http://{evil}/"></template>
<svg><base href="http://{evil}/"/></svg></head><body>
<a id=next href="/hostile">next</a> <a class=h href="b">b</a> <a class=h href="?c">c</a>
</body></html>"#
    )
}

/// The hostile page, pointing at `evil` (`127.0.0.1:PORT`).
fn hostile_page(evil: &str) -> String {
    let mut links = String::new();
    for (i, v) in HOSTILE_LINKS.iter().enumerate() {
        let v = v.replace("other.example", evil);
        links.push_str(&format!("<a class=h id=h{i} href=\"{v}\">{i}</a>\n"));
    }
    format!(
        r#"<!doctype html><html><head>
<meta name="referrer" content="unsafe-url">
<meta name="referr&#101;r" content="unsafe&#45;url">
<link rel=stylesheet referrerpolicy=unsafe-url href="http://{evil}/style.css">
</head><body>
<a id=home href="/hostile">home</a>
{links}
<img referrerpolicy=unsafe-url src="http://{evil}/img.gif">
<img src="/local.gif">
<iframe referrerpolicy="unsafe-url" src="http://{evil}/frame"></iframe>
<iframe srcdoc="<meta name=referrer content=unsafe-url><img src=http://{evil}/srcdoc.gif><a id=in href=http://{evil}/in>in</a>"></iframe>
<iframe src="data:text/html,<meta name=referrer content=unsafe-url><img src=http://{evil}/data.gif>"></iframe>
<object data="data:text/html,<meta name=referrer content=unsafe-url><img src=http://{evil}/object.gif>"></object>
<embed src="data:text/html,<meta name=referrer content=unsafe-url><img src=http://{evil}/embed.gif>">
<a id=ping ping="http://{evil}/ping" href="/pinged">ping</a>
<form id=f action="&sol;&sol;{evil}/form"><input name=q></form>
<form id=g action="search"><input name=q></form>
<base href="http://{evil}/">
<a class=h id=late href="late">late</a>
<a class=h id=out href="&sol;&sol;{evil}/out">out</a>
</body></html>"#
    )
}

const RESOLVED: &str = r#"
const urls = [];
for (const a of document.querySelectorAll('a[href], area[href]')) urls.push(a.href);
for (const f of document.querySelectorAll('form')) urls.push(f.action);
for (const e of document.querySelectorAll('img, iframe')) urls.push(e.src);
for (const l of document.querySelectorAll('link[href]')) urls.push(l.href);
return urls;
"#;

const FETCH_ALL: &str = r#"
const urls = arguments[0];
return Promise.all(urls.map(u => fetch(u, { mode: 'no-cors' }).then(() => 1, () => 0)));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_carrying_the_token_reaches_another_origin_in_chromium() {
    let (evil_addr, seen) = other_origin().await;
    let evil = evil_addr.to_string();
    let app = App::start().await;
    app.page(
        "/hostile",
        Page::html(&hostile_page(&evil)).with(
            "link",
            &format!(
                "<http://{evil}/preload.css>; rel=preload; as=style; referrerpolicy=unsafe-url"
            ),
        ),
    );
    app.page("/hidden", Page::html(&hidden_base_page(&evil)));
    app.page(
        "/start",
        Page::html(r#"<a id=go href="/hidden">go</a>"#).with("x-session-set", "user=alice"),
    );
    app.page(
        "/refresh",
        Page::html(&format!(
            r#"<meta http-equiv="refresh" content="0; url=http://{evil}/refreshed">"#
        )),
    );
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url, rewrite: [\"a[href]\", \"area[href]\", \"form[action]\", \"iframe[src]\", \"img[src]\"] } }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    let driver = driver().await;
    let c = browser(&driver, true).await;

    // The first page creates the session, and gives its token in its link; then the page
    // with hidden bases, and the hostile page, each at a URL that carries the token.
    c.goto(&format!("{base}/start")).await.unwrap();
    let go = c.find(Locator::Id("go")).await.unwrap();
    let href = go.attr("href").await.unwrap().unwrap_or_default();
    let at = href
        .find("sgsid=")
        .unwrap_or_else(|| panic!("no token in {href}"))
        + 6;
    let token = href[at..at + 64].to_owned();
    let mut kept_home = Vec::new();
    let mut urls: Vec<String> = Vec::new();
    for (page, landmark) in ["/hidden", "/hostile"].into_iter().zip(["next", "late"]) {
        c.goto(&format!("{base}{page};sgsid={token}"))
            .await
            .unwrap();
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id(landmark))
            .await
            .unwrap();
        let here = c.current_url().await.unwrap().to_string();
        // Where the browser itself resolves every URL of the page (against the base it
        // honours, however late): any that carries the token stays on the page's origin.
        let origin = url::Url::parse(&here).unwrap().origin();
        let resolved = c.execute(RESOLVED, vec![]).await.unwrap();
        urls = resolved
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap_or("").to_owned())
            .collect();
        let mut home = 0;
        for u in &urls {
            if u.contains(&token) {
                let to = url::Url::parse(u).unwrap();
                assert_eq!(to.origin(), origin, "{u} takes the token elsewhere");
                home += 1;
            }
        }
        kept_home.push((here, home, urls.clone()));
    }

    // The browser fetches every one of them, then follows a ping link, a link elsewhere,
    // and a page that refreshes elsewhere.
    c.execute(FETCH_ALL, vec![serde_json::json!(urls)])
        .await
        .unwrap();
    c.find(Locator::Id("ping"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.back().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("out"))
        .await
        .unwrap();
    c.find(Locator::Id("out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.goto(&format!("{base}/refresh;sgsid={token}"))
        .await
        .unwrap();
    let refreshed = eventually(Duration::from_secs(5), || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .any(|r| r.contains("/refreshed"))
        }
    })
    .await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hostile.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let leaks: Vec<&String> = seen
        .iter()
        .filter(|r| r.contains(&token) || r.contains(&token[..20]))
        .collect();
    assert!(
        leaks.is_empty(),
        "the token reached another origin: {leaks:#?}"
    );
    // The pages' own links kept the session (a base the browser ignores changed nothing).
    for (page, home, urls) in &kept_home {
        assert!(
            *home >= 3,
            "{page}: only {home} URLs kept the session: {urls:?}"
        );
    }
    assert!(
        refreshed,
        "the refresh never reached the other origin: {seen:#?}"
    );
    assert!(
        seen.len() >= 5,
        "the other origin saw too little: {seen:#?}"
    );
    for request in &seen {
        assert!(!request.contains("/ping"), "a ping went out: {request}");
    }
}

/// The hosts of the cross-site test, all on the loopback: Chromium resolves them there.
const RESOLVE_HOSTS: &str = "--host-resolver-rules=MAP shop.example 127.0.0.1, MAP account.example 127.0.0.1, MAP other.example 127.0.0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookieless_browser_keeps_its_session_from_another_site_and_onto_a_sibling_in_chromium() {
    let port = free_port();
    let shop = format!("http://shop.example:{port}");
    // Another site links to the shop's sign-in; it records what it gets.
    let (evil_addr, seen) = other_origin_serving(format!(
        r#"<!doctype html><a id=go href="{shop}/signin">sign in</a>"#
    ))
    .await;
    let app = App::start().await;
    app.page("/signin", Page::sign_in("alice"));
    app.page(
        "/home",
        Page::html(&format!(
            r#"<p id=home>home</p><a id=me href="/whoami">me</a><a id=acct href="http://account.example:{port}/me">account</a><a id=away href="http://other.example:{}/away">away</a>"#,
            evil_addr.port()
        )),
    );
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:{port}\" }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{}\" }} ]\nroutes:\n  - {{ name: shop, match: {{ host: shop.example }}, upstream: app, session: {{ tracking: url, share_with: [\"account.example:{port}\"] }} }}\n  - {{ name: account, match: {{ host: account.example }}, upstream: app, session: {{ tracking: url, share_with: [\"shop.example:{port}\"] }} }}\nsessions: {{ secret_file: session.keys }}\n",
        app.backend.addr
    );
    let _gw = gateway(&yaml).await;
    let driver = driver().await;
    // Trusted as HTTPS origins would be: Chromium sends them `Sec-Fetch-Site`, by which the
    // gateway tells a request another site started.
    let trusted = format!(
        "--unsafely-treat-insecure-origin-as-secure={shop},http://account.example:{port},http://other.example:{}",
        evil_addr.port()
    );
    let c = crate::browser::browser_with(
        &driver,
        true,
        &[RESOLVE_HOSTS, "--disable-features=HttpsUpgrades", &trusted],
    )
    .await;

    // From the other site to the sign-in: its redirect carries the new token, and the
    // request that follows a cross-site redirect looks cross-site; the session must hold.
    c.goto(&format!("http://other.example:{}/", evil_addr.port()))
        .await
        .unwrap();
    click_to(&c, "go", "/home").await;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("home"))
        .await
        .unwrap();
    let here = c.current_url().await.unwrap().to_string();
    assert!(here.starts_with(&format!("{shop}/home;sgsid=")), "{here}");
    let token = here.split("sgsid=").nth(1).unwrap()[..64].to_owned();
    // The landing page took the token: its own link carries it.
    click_to(&c, "me", "/whoami").await;
    let body = body_text(&c).await;
    assert_eq!(
        field(&body, "user"),
        "alice",
        "the shop after the sign-in: {body}"
    );

    // On to the sibling, by its link: another site, reached with a code, and a token there
    // of its own, in the URL.
    c.goto(&format!("{shop}/home;sgsid={token}")).await.unwrap();
    let account = format!("http://account.example:{port}/me;sgsid=");
    let arrived = click_to(&c, "acct", &account).await;
    let there = c.current_url().await.unwrap().to_string();
    assert!(arrived, "the sibling's page: {there}");
    let body = body_text(&c).await;
    assert_eq!(field(&body, "user"), "alice", "on the sibling: {body}");
    assert!(
        !there.contains(&token),
        "the shop's token on the sibling: {there}"
    );

    // And away, to the other site: nothing of the session goes with it.
    c.goto(&format!("{shop}/home;sgsid={token}")).await.unwrap();
    c.find(Locator::Id("away"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let away = eventually(Duration::from_secs(5), || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().iter().any(|r| r.contains("/away")) }
    })
    .await;
    c.close().await.unwrap();
    assert!(away, "the other site never saw the visit");
    let seen = seen.lock().unwrap().clone();
    for request in &seen {
        assert!(
            !request.contains(&token[..20]) && !request.contains("sghandoff"),
            "the other site got a token or a code: {request}"
        );
    }
}

/// The text of the page the browser shows.
async fn body_text(c: &fantoccini::Client) -> String {
    let body = c.find(Locator::Css("body")).await.unwrap();
    body.text().await.unwrap()
}

/// Clicks `#id`, then waits (up to ten seconds) for the browser to be at a URL containing
/// `to`; whether it got there.
async fn click_to(c: &fantoccini::Client, id: &str, to: &str) -> bool {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || {
        let c = c.clone();
        let to = to.to_owned();
        async move {
            c.current_url()
                .await
                .is_ok_and(|u| u.as_str().contains(&to))
        }
    })
    .await
}
