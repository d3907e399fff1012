//! Classes 1 and 2 on the wire: a URL-tracked page full of links spelled to fool a rewriter
//! (character references, tabs, backslashes, other schemes, a late or hidden `<base>`),
//! judged as a browser reads the page that comes out: no URL that carries the token may
//! resolve off the page's origin.

use super::corpus::browser_attributes;
use super::*;

/// Link values as a page might write them; each must either stay as it is or get the token
/// and still lead where the browser would have gone.
pub const HOSTILE_LINKS: &[&str] = &[
    "&sol;&sol;other.example/x",
    "&#47;&#47;other.example/x",
    "&#x2F;&#X2f;other.example/x",
    "&#0047;&#47other.example/x",
    "/&sol;other.example/x",
    "http&colon;//other.example/",
    "http&#58;//other.example/",
    "https&colon;&sol;&sol;other.example/",
    "/&bsol;other.example",
    "\\/other.example",
    "/\\other.example",
    "\\\\other.example",
    "/&Tab;/other.example",
    "/&NewLine;/other.example",
    "/\t/other.example",
    "/\n/other.example",
    "&#9;//other.example",
    " //other.example",
    "&#1;//other.example",
    "&nbsp;//other.example",
    "javascript&colon;alert(1)",
    "java&Tab;script:alert(1)",
    "JaVaScRiPt:alert(1)",
    "&#106;avascript:alert(1)",
    "data&colon;text/html,x",
    "HTTP://other.example/",
    "http:other.example/x",
    "http:/other.example/x",
    "http:\\\\other.example\\x",
    "//shop.example@other.example/x",
    "http://shop.example@other.example/",
    "http://other.example\\@shop.example/",
    "http://other.example#@shop.example/",
    "http://other.example?@shop.example/",
    "//other.example%2F@shop.example/",
    "/cart",
    "cart?x=1&amp;y=2",
    "cart?x=1&y=2&copy=3",
    "cart?q=&quot;quoted&quot;",
    "?page=2",
    "#top",
    "",
    "http://shop.example/x",
    "HTTP://SHOP.EXAMPLE:80/x",
    "//shop.example/x",
    "http://shop.example./x",
    "https://shop.example/x",
    "http://shop.example:8080/x",
    "mailto:a@shop.example",
];

/// The page's origin in these tests.
pub const HOME: &str = "http://shop.example";

/// `<a>` elements, one per value, each with an id.
pub fn page_of_links(values: &[&str]) -> String {
    let mut page = String::from("<!doctype html><html><head></head><body>\n");
    for (i, v) in values.iter().enumerate() {
        page.push_str(&format!("<a id=l{i} href=\"{v}\">{i}</a>\n"));
    }
    page.push_str("</body></html>");
    page
}

/// Checks a rewritten page against the original, as a browser reads both: every attribute
/// that carries `token` resolves (from `page_url`, against the base the browser honours) to
/// `page_url`'s origin over http(s), and to the URL the original value led to, plus the token;
/// every other attribute is byte for byte what the backend wrote.
pub fn judge(original: &str, rewritten: &str, page_url: &str, token: &str) -> Result<(), String> {
    let before = browser_attributes(original);
    let after = browser_attributes(rewritten);
    if before.len() != after.len() {
        return Err(format!(
            "{} attributes became {}",
            before.len(),
            after.len()
        ));
    }
    let page = url::Url::parse(page_url).unwrap();
    for (b, a) in before.iter().zip(&after) {
        if !a.value.contains(token) {
            if b.value != a.value {
                return Err(format!(
                    "{:?} became {:?} without the token",
                    b.value, a.value
                ));
            }
            // A link that stays on the origin must keep the session (an empty one, or one to
            // a fragment of the page, needs no token: it reloads or scrolls the page).
            let stripped: String = b
                .value
                .trim_matches(|c: char| c <= ' ')
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                .collect();
            let stays = page.join(&b.value).is_ok_and(|to| {
                to.origin() == page.origin() && matches!(to.scheme(), "http" | "https")
            });
            if b.name == "href" && stays && !stripped.is_empty() && !stripped.starts_with('#') {
                return Err(format!(
                    "{:?} stays on the origin but was not tagged",
                    b.value
                ));
            }
            continue;
        }
        let to = page
            .join(&a.value)
            .map_err(|e| format!("{:?} does not parse: {e}", a.value))?;
        if to.origin() != page.origin() || !matches!(to.scheme(), "http" | "https") {
            return Err(format!(
                "{:?} (from {:?}) takes the token to {to}",
                a.value, b.value
            ));
        }
        let was = page
            .join(&b.value)
            .map_err(|e| format!("{:?} was tagged but does not parse: {e}", b.value))?;
        if was.origin() != page.origin() {
            return Err(format!("{:?} led to {was}, and was tagged", b.value));
        }
        // Where each leads with every `;sgsid=` path parameter gone (a link's older token is
        // replaced by the new one), and without userinfo (the gateway drops it).
        let without = without_param(&to);
        let mut was_clean = was.clone();
        was_clean.set_username("").ok();
        was_clean.set_password(None).ok();
        let was_clean = without_param(&was_clean);
        if without != was_clean {
            return Err(format!(
                "{:?} led to {was_clean}, its tagged form to {without}",
                b.value
            ));
        }
    }
    Ok(())
}

/// `u` with every `sgsid` parameter taken out of its path and its query (a link's older
/// token, or someone else's, is replaced by the client's own).
fn without_param(u: &url::Url) -> String {
    let mut u = u.clone();
    let (path, _, _) = sessiongate::path_param::remove(u.path(), "sgsid");
    u.set_path(&path);
    if let Some(query) = u.query().map(str::to_owned) {
        let (rest, _, found) = sessiongate::path_param::remove_from_query(&query, "sgsid");
        if found {
            u.set_query((!rest.is_empty()).then_some(rest.as_str()));
        }
    }
    u.to_string()
}

#[tokio::test]
async fn hostile_links_never_take_the_token_off_the_origin() {
    let app = App::start().await;
    let page = page_of_links(HOSTILE_LINKS);
    app.page(
        "/links",
        Page::html(&page).with("x-session-set", "user=alice"),
    );
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    // The first view creates the session; the second comes with its token, as a browser's.
    let (_, _, first) = get(&base, "/links", &[("host", "shop.example")]).await;
    let at = first.find("sgsid=").unwrap_or_else(|| panic!("{first}")) + "sgsid=".len();
    let token = first[at..at + 64].to_owned();
    judge(&page, &first, &format!("{HOME}/links"), &token).unwrap();
    let (_, _, again) = get(
        &base,
        &format!("/links;sgsid={token}"),
        &[("host", "shop.example")],
    )
    .await;
    judge(
        &page,
        &again,
        &format!("{HOME}/links;sgsid={token}"),
        &token,
    )
    .unwrap();
    // The plain same-origin links did get it.
    assert!(again.matches(&token).count() >= 8, "{again}");
}

#[tokio::test]
async fn a_base_the_browser_honours_later_or_ignores_moves_no_tagged_link_off_the_origin() {
    let app = App::start().await;
    let pages = [
        // A foreign base after the links: the browser resolves every link against it.
        r#"<a href="/a">a</a><a href="b">b</a><a href="?c">c</a><base href="http://other.example/"><a href="d">d</a>"#,
        r#"<a href="/a">a</a><base href="&sol;&sol;other.example/"><a href="/b">b</a>"#,
        r#"<base href="http://other.example/"><a href="/a">a</a><a href="http://shop.example/b">b</a>"#,
        // A base inside a template, or in SVG, is not the document's.
        r#"<template><base href="http://other.example/"></template><a href="/a">a</a>"#,
        r#"<svg><base href="http://other.example/"/></svg><a href="/a">a</a>"#,
        r#"<base target="_top"><base href="http://other.example/"><a href="/a">a</a>"#,
        r#"<base href=""><a href="/a">a</a><base href="http://other.example/">"#,
    ];
    for (i, p) in pages.iter().enumerate() {
        app.page(
            &format!("/b/{i}"),
            Page::html(p).with("x-session-set", "user=alice"),
        );
    }
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    for (i, p) in pages.iter().enumerate() {
        let (_, _, out) = get(&base, &format!("/b/{i}"), &[("host", "shop.example")]).await;
        let Some(at) = out.find("sgsid=") else {
            continue;
        };
        let token = &out[at + 6..at + 70];
        // Judged against the base the browser honours: the first <base href> outside
        // templates and foreign content, wherever it stands.
        let honoured = super::corpus::honoured_base(&out, &format!("{HOME}/b/{i}"));
        for a in browser_attributes(&out) {
            if a.name != "href" || a.element == "base" || !a.value.contains(token) {
                continue;
            }
            let to = honoured.join(&a.value).unwrap();
            assert_eq!(
                to.host_str(),
                Some("shop.example"),
                "page {i} {p}: {:?} leads to {to} in {out}",
                a.value
            );
        }
    }
}
