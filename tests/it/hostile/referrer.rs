//! Class 3: on a page whose URL carries a token, nothing the page says (a `<meta
//! name=referrer>`, a `referrerpolicy` attribute, a `ping`, the backend's own header) lets the
//! browser send that URL to another site, on any route.

use http::HeaderMap;

use super::corpus::browser_attributes;
use super::*;

/// Markup that would widen the referrer policy, or report the page's URL elsewhere.
const WIDENING: &str = r#"<!doctype html><html><head>
<meta name="referrer" content="unsafe-url">
<meta NAME="Referrer" content="UNSAFE-URL">
<meta name="referr&#101;r" content="unsafe&#45;url">
<meta name="referrer" content=" always ">
<meta name="referrer" content="no-referrer-when-downgrade">
<meta name="referrer" content="origin-when-cross-origin">
<meta name="referrer" content="no-referrer">
<meta http-equiv="Referrer-Policy" content="unsafe-url">
<link rel=stylesheet referrerpolicy=unsafe-url href="https://other.example/s.css">
</head><body>
<a referrerpolicy="unsafe-url" href="https://other.example/a">a</a>
<a REFERRERPOLICY="unsafe&#45;url" href="https://other.example/b">b</a>
<img referrerpolicy=unsafe-url src="https://other.example/i.png">
<iframe referrerpolicy="no-referrer-when-downgrade" src="https://other.example/f"></iframe>
<script referrerpolicy="unsafe-url" src="https://other.example/s.js"></script>
<a ping="https://other.example/ping" href="/x">ping</a>
<area PING="/audit" href="/y">
<a referrerpolicy="no-referrer" href="https://other.example/c">c</a>
</body></html>"#;

/// The referrer policy a browser applies from a `Referrer-Policy` header: the last value it
/// knows, across every field.
fn header_policy(h: &HeaderMap) -> Option<String> {
    const KNOWN: &[&str] = &[
        "no-referrer",
        "no-referrer-when-downgrade",
        "same-origin",
        "origin",
        "strict-origin",
        "origin-when-cross-origin",
        "strict-origin-when-cross-origin",
        "unsafe-url",
    ];
    h.get_all("referrer-policy")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .rfind(|p| KNOWN.contains(&p.as_str()))
}

fn assert_nothing_widens(h: &HeaderMap, page: &str, what: &str) {
    let safe = |p: &str| matches!(p, "same-origin" | "no-referrer");
    let policy = header_policy(h).unwrap_or_default();
    assert!(safe(&policy), "{what}: Referrer-Policy {policy:?}");
    for link in h.get_all("link") {
        let link = link.to_str().unwrap().to_ascii_lowercase();
        assert!(!link.contains("referrerpolicy"), "{what}: Link: {link}");
    }
    assert_no_markup_widens(&browser_attributes(page), what);
}

/// No attribute in `attrs` (a page's, in order) widens the referrer policy or pings: every
/// `referrerpolicy` and `<meta name=referrer>` keeps the URL on the origin.
pub fn assert_no_markup_widens(attrs: &[super::corpus::Attr], what: &str) {
    let safe = |p: &str| matches!(p, "same-origin" | "no-referrer");
    for (i, a) in attrs.iter().enumerate() {
        match a.name.as_str() {
            "referrerpolicy" => {
                let v = a.value.trim().to_ascii_lowercase();
                assert!(
                    safe(&v),
                    "{what}: <{} referrerpolicy={:?}>",
                    a.element,
                    a.value
                );
            }
            "ping" => panic!("{what}: <{} ping={:?}> kept", a.element, a.value),
            "name" if a.element == "meta" && a.value.eq_ignore_ascii_case("referrer") => {
                let content = attrs[i + 1..]
                    .iter()
                    .take_while(|c| c.element == "meta" && c.name != "name")
                    .find(|c| c.name == "content")
                    .map(|c| c.value.trim().to_ascii_lowercase())
                    .unwrap_or_default();
                assert!(
                    safe(&content),
                    "{what}: <meta name=referrer content={content:?}>"
                );
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_url_tracked_page_cannot_widen_the_referrer_policy() {
    let app = App::start().await;
    for (i, header) in [
        "unsafe-url",
        "same-origin, unsafe-url",
        "no-referrer,always",
        "",
    ]
    .iter()
    .enumerate()
    {
        let mut p = Page::html(WIDENING).with(
            "link",
            "<https://other.example/p.css>; rel=preload; as=style; ReferrerPolicy=unsafe-url",
        );
        if !header.is_empty() {
            p = p.with("referrer-policy", header);
        }
        app.page(&format!("/w/{i}"), p.clone());
        app.page(&format!("/off/{i}"), p.clone());
        app.page(&format!("/cookie/{i}"), p);
    }
    app.page(
        "/start",
        Page::html(r#"<a href="/x">x</a>"#).with("x-session-set", "user=alice"),
    );
    app.page(
        "/away",
        Page {
            status: 302,
            headers: vec![
                ("location".into(), "/w/0".into()),
                ("referrer-policy".into(), "unsafe-url".into()),
            ],
            body: String::new(),
        },
    );
    let gw = gateway(&config(
        &app,
        &[
            "{ name: sessionless, match: { path_prefix: /off }, upstream: app, session: off }",
            "{ name: cookie, match: { path_prefix: /cookie }, upstream: app, session: { tracking: cookie } }",
            "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }",
        ],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    let (_, _, start) = get(&base, "/start", &[]).await;
    let at = start.find("sgsid=").unwrap_or_else(|| panic!("{start}")) + "sgsid=".len();
    let token = start[at..at + 64].to_owned();
    for i in 0..4 {
        // The page that gets the token in its links; and pages whose own URL carries one, on
        // a route without sessions and on a cookie route.
        for path in [
            format!("/w/{i};sgsid={token}"),
            format!("/off/{i};sgsid={token}"),
            format!("/cookie/{i}?sgsid={token}"),
        ] {
            let (_, h, page) = get(&base, &path, &[]).await;
            assert_nothing_widens(&h, &page, &path);
        }
    }
    let (status, h, _) = get(&base, &format!("/away;sgsid={token}"), &[]).await;
    assert_eq!(status, 302);
    assert_nothing_widens(&h, "", "a redirect");
}
