//! Class 2 and 3, where a browser reads a response otherwise than it looks: documents inside
//! the page (a frame's `srcdoc`, however deep; a `<noscript>` that a browser without scripts
//! reads as markup, spelled to end early for one reader and late for the other), a charset
//! the browser guesses or a byte-order mark, several `Content-Type` values, and types an HTML
//! rewriter cannot judge for. Each page is judged as a browser reads it, with scripts and
//! without.

use super::corpus::{Attr, attributes_of_every_document, browser_attributes};
use super::referrer::assert_no_markup_widens;
use super::rewriter::HOME;
use super::*;

const URL_ROUTE: &str =
    "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }";

/// A URL-tracked gateway over `app`, and a token of a session on it.
async fn url_gateway(app: &App) -> (Gateway, String) {
    app.page(
        "/start",
        Page::html(r#"<a href="/x">x</a>"#).with("x-session-set", "user=alice"),
    );
    let gw = gateway(&config(app, &[URL_ROUTE], "{ secret_file: session.keys }")).await;
    let (_, _, start) = get(&gw.url("web", ""), "/start", &[("host", "shop.example")]).await;
    let at = start.find("sgsid=").unwrap_or_else(|| panic!("{start}")) + "sgsid=".len();
    let token = start[at..at + 64].to_owned();
    (gw, token)
}

/// Every attribute that carries `token` leads to the page's origin, resolved from `page_url`.
fn assert_token_stays_home(attrs: &[Attr], page_url: &str, token: &str, what: &str) {
    let page = url::Url::parse(page_url).unwrap();
    for a in attrs {
        if !a.value.contains(token) || a.name == "srcdoc" {
            continue;
        }
        let to = page.join(a.value.trim());
        assert!(
            to.as_ref()
                .is_ok_and(|to| to.origin() == page.origin() && to.scheme() == "http"),
            "{what}: <{} {}={:?}> takes the token to {to:?}",
            a.element,
            a.name,
            a.value
        );
    }
}

/// `srcdoc` nested `depth` deep around `inner`, each level escaped as an attribute value.
fn nested_srcdoc(inner: &str, depth: usize) -> String {
    let mut doc = inner.to_owned();
    for _ in 0..depth {
        doc = format!(
            "<iframe srcdoc=\"{}\"></iframe>",
            doc.replace('&', "&amp;").replace('"', "&quot;")
        );
    }
    doc
}

/// Markup that would widen the referrer policy or take the page's URL away, to hide inside.
const WIDENS: &str = "<meta name=referrer content=unsafe-url><img referrerpolicy=unsafe-url src=//other.example/i><a ping=//other.example/p href=/p>p</a><a href=//other.example/a>a</a>";

#[tokio::test]
async fn no_document_inside_a_page_widens_the_referrer_or_takes_the_token_away() {
    let app = App::start().await;
    let pages: Vec<String> = vec![
        // A frame's srcdoc: its requests carry the page's URL as Referer.
        format!(r#"<iframe srcdoc="{WIDENS}<a id=in href=/in>in</a>"></iframe>"#),
        "<IFRAME SRCDOC=\"<meta name=referrer content=unsafe-url>\"></IFRAME>".to_owned(),
        "<iframe srcdoc=\"&lt;meta name=referrer content=unsafe&#45;url&gt;&lt;a href=&quot;/e&quot;&gt;e&lt;/a&gt;\"></iframe>".to_owned(),
        nested_srcdoc(WIDENS, 2),
        nested_srcdoc(WIDENS, 6),
        nested_srcdoc(&format!("<noscript>{WIDENS}</noscript>"), 1),
        // What a browser without scripts reads in a noscript.
        format!("<noscript>{WIDENS}<a id=ns href=/ns>ns</a></noscript>"),
        "<NoScRiPt><meta name=referrer content=unsafe-url></NOSCRIPT>".to_owned(),
        // A noscript that ends early for one reader and late for the other.
        format!(r#"<noscript><p title="</noscript>{WIDENS}"></p></noscript>"#),
        format!("<noscript><!--</noscript>{WIDENS}--></noscript>"),
        format!("<noscript><style></noscript>{WIDENS}</style></noscript>"),
        format!("<noscript><textarea></noscript>{WIDENS}</textarea></noscript>"),
        format!("<noscript><script></noscript>{WIDENS}</script></noscript>"),
        format!("<noscript><title></noscript>{WIDENS}</title></noscript>"),
        format!("<noscript><a title='</noscript>{WIDENS}'></a></noscript>"),
        format!("<noscript><xmp></noscript>{WIDENS}</xmp></noscript>"),
        format!("<noscript><noscript></noscript>{WIDENS}</noscript></noscript>"),
        format!("<noscript><iframe></noscript>{WIDENS}</iframe></noscript>"),
        format!("<noscript><plaintext></noscript>{WIDENS}"),
        format!("<noscript></noscript\t>{WIDENS}"),
        format!("<noscript><p>unclosed {WIDENS}"),
        // An end of the fragment written by the page itself.
        format!(
            r#"<noscript><sessiongate-end-of-fragment></sessiongate-end-of-fragment><a title="</noscript><p title='">{WIDENS}'></noscript>"#
        ),
    ];
    for (i, p) in pages.iter().enumerate() {
        app.page(
            &format!("/n/{i}"),
            Page::html(&format!(
                "<!doctype html><html><head></head><body>{p}</body></html>"
            )),
        );
    }
    let (gw, token) = url_gateway(&app).await;
    let base = gw.url("web", "");
    for (i, p) in pages.iter().enumerate() {
        let path = format!("/n/{i};sgsid={token}");
        let (status, _, out) = get(&base, &path, &[("host", "shop.example")]).await;
        assert_eq!(status, 200, "{p}");
        for no_scripts in [false, true] {
            let what = format!("page {i} {p} read with scripts {}", !no_scripts);
            let attrs = attributes_of_every_document(&out, no_scripts);
            assert_no_markup_widens(&attrs, &format!("{what}: {out}"));
            assert_token_stays_home(&attrs, &format!("{HOME}{path}"), &token, &what);
        }
    }
    // The nested documents are rewritten, not emptied: their links keep the session.
    for (page, no_scripts, link) in [(0, false, "/in"), (6, true, "/ns")] {
        let (_, _, out) = get(
            &base,
            &format!("/n/{page};sgsid={token}"),
            &[("host", "shop.example")],
        )
        .await;
        let tagged = format!("{HOME}{link};sgsid={token}");
        assert!(
            attributes_of_every_document(&out, no_scripts)
                .iter()
                .any(|a| a.name == "href" && a.value == tagged),
            "{out}"
        );
    }
}

/// A backend answering raw bytes: `/p/N` is page N, with the `Content-Type` given.
async fn raw_pages(pages: Vec<(&'static str, Vec<u8>)>) -> Backend {
    Backend::start(move |req| {
        let n: usize = req
            .uri()
            .path()
            .strip_prefix("/p/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let (content_type, body) = pages.get(n).cloned().unwrap_or_default();
        async move {
            let mut r = http::Response::new(full(body));
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            r.headers_mut()
                .insert("x-session-set", "user=alice".parse().unwrap());
            r
        }
    })
    .await
}

/// What a client got of a body, up to where the gateway may have cut it.
async fn body_as_far_as_it_goes(resp: reqwest::Response) -> Vec<u8> {
    let mut resp = resp;
    let mut got = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        got.extend_from_slice(&chunk);
    }
    got
}

/// UTF-16LE, with its byte-order mark.
fn utf16le(s: &str) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    for unit in s.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

#[tokio::test]
async fn a_page_a_browser_reads_in_another_charset_never_gets_the_token_where_it_leaves() {
    // A link the rewriter reads as one to the origin (and tags), which a browser reading
    // ISO-2022-JP sees inside the foreign link before it: the escape sequences switch to
    // two-byte text, where a quote is not a quote.
    let iso_2022_jp =
        b"<a href='//other.example/p?\x1b$B'>\x1b(B<a href=\"/x\">x</a>'>y</a>".to_vec();
    let mut labelled = b"<meta charset=iso-2022-jp>".to_vec();
    labelled.extend_from_slice(&iso_2022_jp);
    let pages = vec![
        // No charset: Chromium's detector guesses ISO-2022-JP from the escapes.
        ("text/html", iso_2022_jp.clone()),
        // Named in the page.
        ("text/html", labelled),
        // A byte-order mark wins over the header's charset.
        (
            "text/html; charset=utf-8",
            utf16le("<a href=\"/x\">x</a><a href=\"//other.example/\">o</a>"),
        ),
        ("text/html", utf16le("<a href=/x>x</a>")),
    ];
    let backend = raw_pages(pages.clone()).await;
    let gw = gateway(&format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{}\" }} ]\nroutes:\n  - {URL_ROUTE}\nsessions: {{ secret_file: session.keys }}\n",
        backend.addr
    ))
    .await;
    let base = gw.url("web", "");
    for (i, (content_type, original)) in pages.iter().enumerate() {
        // Cut before its first byte, the response may not even have a head.
        let got = match client()
            .get(format!("{base}/p/{i}"))
            .header("host", "shop.example")
            .send()
            .await
        {
            Ok(resp) => body_as_far_as_it_goes(resp).await,
            Err(_) => Vec::new(),
        };
        // Read as the browser would: by the mark if any, else as ISO-2022-JP (named or
        // guessed; plain ASCII reads the same either way).
        let (text, _, _) = match encoding_rs::Encoding::for_bom(&got) {
            Some((enc, _)) => enc.decode(&got),
            None => encoding_rs::ISO_2022_JP.decode(&got),
        };
        let what = format!(
            "page {i} ({content_type}) {:?}",
            String::from_utf8_lossy(original)
        );
        assert!(
            !got.windows(6).any(|w| w == b"sgsid="),
            "{what}: the token went into a page the rewriter cannot read as a browser does: {text}"
        );
        for a in browser_attributes(&text) {
            assert!(!a.value.contains("sgsid"), "{what}: {a:?}");
        }
    }
}

#[tokio::test]
async fn a_response_is_judged_by_the_content_type_a_browser_reads() {
    let app = App::start().await;
    let page = format!("<!doctype html>{WIDENS}<a href=\"/x\">x</a>");
    let variants: &[&[&str]] = &[
        &["text/plain", "text/html"],
        &["text/plain, text/html"],
        &["text/plain;x=\"a,b\", text/html"],
        &["application/json", "text/html; charset=utf-8"],
        &["text/html;charset=iso-2022-jp", "text/html"],
        &["text/html", "*/*"],
        &["text/html", "nonsense"],
        // Values the standard's parser refuses, and Chromium reads.
        &["text/html x"],
        &["text/html(comment)"],
        &["text/xml x"],
        &["image/svg+xml x"],
        // Charset parameters spelled to be read two ways.
        &["text/html; x=\"a;charset=utf-8\"; charset=iso-2022-jp"],
        &["text/html; charset =utf-8"],
        &["text/html; charset=\"utf-8\""],
        // Types whose documents the gateway cannot guard.
        &["text/xsl"],
        &["multipart/x-mixed-replace; boundary=x"],
        &[""],
    ];
    for (i, types) in variants.iter().enumerate() {
        let mut p = Page::html(&page);
        p.headers.clear();
        for t in *types {
            p = p.with("content-type", t);
        }
        app.page(&format!("/t/{i}"), p);
    }
    let (gw, token) = url_gateway(&app).await;
    let base = gw.url("web", "");
    for (i, types) in variants.iter().enumerate() {
        let path = format!("/t/{i};sgsid={token}");
        let (status, h, out) = get(&base, &path, &[("host", "shop.example")]).await;
        let fields: Vec<_> = h.get_all("content-type").iter().collect();
        let what = format!("{types:?}: {status} {fields:?}");
        // One type is left, the one a browser reads; as HTML it is guarded, as anything
        // else it is not served at the token's URL, or cannot be rendered.
        assert!(fields.len() <= 1, "{what}");
        match fields
            .first()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        {
            Some(t) if t.starts_with("text/html") => {
                assert_eq!(status, 200, "{what}");
                assert!(!t.contains("2022"), "{what}");
                for no_scripts in [false, true] {
                    let attrs = attributes_of_every_document(&out, no_scripts);
                    assert_no_markup_widens(&attrs, &what);
                    assert_token_stays_home(&attrs, &format!("{HOME}{path}"), &token, &what);
                }
                assert!(
                    out.contains(&format!("{HOME}/x;sgsid={token}")),
                    "{what}: {out}"
                );
            }
            other => {
                assert!(
                    status == 303 || h.get("x-content-type-options").is_some(),
                    "{what}: {other:?}"
                );
                assert!(!out.contains("sgsid"), "{what}: {out}");
            }
        }
    }
}

#[tokio::test]
async fn a_document_the_gateway_cannot_guard_is_never_served_at_a_token_url_for_any_method() {
    let app = App::start().await;
    let xhtml = r#"<html xmlns="http://www.w3.org/1999/xhtml"><head><meta name="referrer" content="unsafe-url"/></head><body><img src="//other.example/i"/></body></html>"#;
    for (i, t) in [
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml; charset=utf-8",
        "APPLICATION/XHTML+XML",
        "text/xsl",
        "multipart/x-mixed-replace; boundary=x",
    ]
    .iter()
    .enumerate()
    {
        let mut p = Page::html(xhtml);
        p.headers.clear();
        app.page(&format!("/x/{i}"), p.with("content-type", t));
    }
    let (gw, token) = url_gateway(&app).await;
    let base = gw.url("web", "");
    for i in 0..7 {
        for method in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            for dest in [None, Some("document"), Some("iframe")] {
                let mut req = client()
                    .request(
                        method.parse().unwrap(),
                        format!("{base}/x/{i};sgsid={token}"),
                    )
                    .header("host", "shop.example");
                if let Some(d) = dest {
                    req = req.header("sec-fetch-dest", d);
                }
                let resp = req.send().await.unwrap();
                let what = format!("{method} /x/{i} as {dest:?}");
                assert_eq!(resp.status(), 303, "{what}");
                let location = resp.headers()["location"].to_str().unwrap().to_owned();
                assert_eq!(location, format!("{HOME}/x/{i}"), "{what}");
                assert!(!resp.text().await.unwrap().contains("referrer"), "{what}");
            }
        }
    }
}

#[tokio::test]
async fn an_html_page_that_must_be_rewritten_is_never_passed_on_unread() {
    let pages: Vec<(&'static str, Vec<u8>)> = vec![
        // A charset the rewriter cannot read, named by the header.
        (
            "text/html; charset=utf-16le",
            utf16le("<a href=\"/x;sgsid=THEIRS\">x</a>")[2..].to_vec(),
        ),
        (
            "text/html; charset=iso-2022-jp",
            b"<a href=\"/x;sgsid=THEIRS\">x</a>".to_vec(),
        ),
    ];
    let backend = raw_pages(pages.clone()).await;
    // And a content coding it cannot decode (the gateway asked for none).
    // (`/z/redirect`: a redirect with such a body, which goes unread.)
    let zstd = Backend::start(|req| async move {
        let mut r = http::Response::new(full(&b"(zstd bytes)"[..]));
        r.headers_mut()
            .insert("content-type", "text/html".parse().unwrap());
        r.headers_mut()
            .insert("content-encoding", "zstd".parse().unwrap());
        if req.uri().path() == "/z/redirect" {
            *r.status_mut() = http::StatusCode::FOUND;
            r.headers_mut().insert("location", "/z".parse().unwrap());
        }
        r
    })
    .await;
    let gw = gateway(&format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{}\" }} ]\n  z:\n    servers: [ {{ url: \"http://{}\" }} ]\nroutes:\n  - {{ name: z, match: {{ path_prefix: /z }}, upstream: z, session: {{ tracking: url }} }}\n  - {URL_ROUTE}\nsessions: {{ secret_file: session.keys }}\n",
        backend.addr, zstd.addr
    ))
    .await;
    let base = gw.url("web", "");
    for path in ["/p/0", "/p/1", "/z"] {
        // A client that would take a URL token, on a page whose URL has none.
        let (status, h, body) = get(&base, path, &[("host", "shop.example")]).await;
        assert_eq!(status, 502, "{path}: {h:?} {body}");
        assert!(!body.contains("THEIRS"), "{path}: {body}");
        // HEAD has no body to read.
        let resp = client()
            .head(format!("{base}{path}"))
            .header("host", "shop.example")
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 502, "HEAD {path}");
    }
    let (status, h, body) = get(&base, "/z/redirect", &[("host", "shop.example")]).await;
    assert_eq!(status, 302, "{h:?}");
    assert!(body.is_empty(), "{body}");
    assert_eq!(h["location"], "/z", "{h:?}");
}
