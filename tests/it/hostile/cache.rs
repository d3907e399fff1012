//! Class 13: a response that hands out or clears a credential (the session cookie), or that
//! carries a token in its URLs, is never stored by a shared cache, whatever the backend says.

use http::HeaderMap;

use super::*;

/// What backends write that would let a shared cache keep a response.
const CACHEABLE: &[&[(&str, &str)]] = &[
    &[("cache-control", "public, max-age=600")],
    &[("cache-control", "max-age=600, s-maxage=600")],
    &[("cache-control", "PUBLIC")],
    &[
        ("cache-control", "private"),
        ("cache-control", "public, max-age=60"),
    ],
    &[("cache-control", "private=\"set-cookie\", max-age=600")],
    &[("cache-control", "no-cache=\"set-cookie\", public")],
    &[("cache-control", "x-private-ext, public")],
    &[("cdn-cache-control", "public, max-age=600")],
    &[("surrogate-control", "max-age=600")],
    &[("cloudflare-cdn-cache-control", "max-age=600")],
    &[("x-accel-expires", "600")],
    &[("edge-control", "cache-maxage=600")],
    &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
];

/// Whether `h` forbids shared caches to store the response (RFC 9111: an unqualified
/// `private` or `no-store`), and carries nothing that a CDN would read instead.
fn kept_from_shared_caches(h: &HeaderMap) -> Result<(), String> {
    let directives: Vec<String> = h
        .get_all("cache-control")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let private = directives.iter().any(|d| d == "private" || d == "no-store");
    let public = directives
        .iter()
        .any(|d| d == "public" || d.starts_with("s-maxage"));
    if !private || public {
        return Err(format!("cache-control: {directives:?}"));
    }
    for name in h.keys() {
        let n = name.as_str();
        if n.ends_with("cdn-cache-control")
            || matches!(n, "surrogate-control" | "x-accel-expires" | "edge-control")
        {
            return Err(format!("{n} kept"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn responses_that_set_or_clear_the_session_cookie_stay_out_of_shared_caches() {
    let app = App::start().await;
    for (i, headers) in CACHEABLE.iter().enumerate() {
        let mut login = Page::html("in").with("x-session-set", "user=alice");
        let mut logout = Page::html("out").with("x-session-action", "destroy");
        for (n, v) in headers.iter() {
            login = login.with(n, v);
            logout = logout.with(n, v);
        }
        app.page(&format!("/in/{i}"), login);
        app.page(&format!("/out/{i}"), logout);
    }
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    for (i, headers) in CACHEABLE.iter().enumerate() {
        let (_, h, _) = get(&base, &format!("/in/{i}"), &[]).await;
        let token = session_cookie(&h).expect("a cookie");
        kept_from_shared_caches(&h).unwrap_or_else(|e| panic!("login with {headers:?}: {e}"));
        let (_, h, _) = get(
            &base,
            &format!("/out/{i}"),
            &[("cookie", &format!("sg={token}"))],
        )
        .await;
        assert!(set_cookies(&h).contains(&"sg=".to_owned()), "{h:?}");
        kept_from_shared_caches(&h).unwrap_or_else(|e| panic!("logout with {headers:?}: {e}"));
    }
}

#[tokio::test]
async fn pages_at_or_with_token_urls_stay_out_of_shared_caches() {
    let app = App::start().await;
    for (i, headers) in CACHEABLE.iter().enumerate() {
        let mut page = Page::html(r#"<a href="/next">next</a>"#);
        for (n, v) in headers.iter() {
            page = page.with(n, v);
        }
        app.page(&format!("/p/{i}"), page.clone());
        app.page(&format!("/off/{i}"), page);
    }
    let gw = gateway(&config(
        &app,
        &[
            "{ name: sessionless, match: { path_prefix: /off }, upstream: app, session: off }",
            "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }",
        ],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    // The token from a page the login leads to.
    app.page(
        "/start",
        Page::html(r#"<a href="/x">x</a>"#).with("x-session-set", "user=alice"),
    );
    let (_, _, start) = get(&base, "/start", &[]).await;
    let at = start.find("sgsid=").unwrap_or_else(|| panic!("{start}")) + "sgsid=".len();
    let token = &start[at..at + 64];
    for (i, headers) in CACHEABLE.iter().enumerate() {
        for path in [
            format!("/p/{i};sgsid={token}"),
            format!("/off/{i};sgsid={token}"),
        ] {
            let (_, h, _) = get(&base, &path, &[]).await;
            kept_from_shared_caches(&h).unwrap_or_else(|e| panic!("{path} with {headers:?}: {e}"));
        }
    }
}
