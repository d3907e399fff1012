//! URL tracking end to end: a client that never sends a cookie keeps its session through the
//! token the gateway puts into redirects, links and forms; the backend never sees the token.

use std::time::Duration;

use http::{HeaderMap, Method, Response};

use crate::support::*;

/// A shop that writes HTML with plain links and knows nothing of tokens.
async fn html_shop() -> Backend {
    Backend::start(|req| async move {
        let h = req.headers();
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let me = format!(
            "status={} user={} cart={} encoding={}",
            get("x-session-status"),
            get("x-session-attr-user"),
            get("x-session-attr-cart"),
            get("accept-encoding")
        );
        let page = |body: String| {
            let mut r = Response::new(full(format!(
                "<!doctype html><html><body><p id=me>{me}</p>{body}</body></html>"
            )));
            r.headers_mut()
                .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            r
        };
        let links = r##"<a id=cart href="/cart">cart</a>
<form id=buy method="post" action="/cart"><button>buy</button></form>
<form id=search method="get" action="search"><input name="q"></form>
<a id=out href="https://elsewhere.example/x">elsewhere</a> <a id=top href="#top">top</a>
<a id=acct href="http://account.example/me">account</a>"##;
        let path = req.uri().path().to_owned();
        let mut r = match path.as_str() {
            "/login" => {
                let mut r = page(String::new());
                *r.status_mut() = http::StatusCode::SEE_OTHER;
                r.headers_mut().insert("location", "/home".parse().unwrap());
                r.headers_mut()
                    .append("x-session-set", "user=alice".parse().unwrap());
                r.headers_mut()
                    .append("x-session-action", "regenerate".parse().unwrap());
                r
            }
            "/cart" => {
                let n: u32 = get("x-session-attr-cart").parse().unwrap_or(0);
                let mut r = page(links.to_owned());
                r.headers_mut()
                    .append("x-session-set", format!("cart={}", n + 1).parse().unwrap());
                r
            }
            "/logout" => {
                let mut r = page(links.to_owned());
                r.headers_mut()
                    .append("x-session-action", "destroy".parse().unwrap());
                r
            }
            "/gz" | "/br" => {
                let mut r = page(links.to_owned());
                let plain = http_body_util::BodyExt::collect(r.body_mut())
                    .await
                    .unwrap()
                    .to_bytes();
                let (coding, packed) = if path == "/gz" {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    std::io::Write::write_all(&mut gz, &plain).unwrap();
                    ("gzip", gz.finish().unwrap())
                } else {
                    let mut br = Vec::new();
                    {
                        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
                        std::io::Write::write_all(&mut w, &plain).unwrap();
                    }
                    ("br", br)
                };
                // Compressed although the gateway asked for identity.
                r.headers_mut()
                    .insert("content-encoding", coding.parse().unwrap());
                *r.body_mut() = full(packed);
                r
            }
            "/plain" => {
                let mut r = text(200, r#"<a href="/cart">not a page</a>"#);
                r.headers_mut()
                    .insert("content-length", "30".parse().unwrap());
                r
            }
            p if p.starts_with("/redirect/") => {
                let mut r = page(String::new());
                *r.status_mut() = http::StatusCode::from_u16(p[10..].parse().unwrap()).unwrap();
                r.headers_mut()
                    .insert("location", "/target?from=redirect".parse().unwrap());
                r
            }
            _ => page(links.to_owned()),
        };
        r.headers_mut()
            .insert("x-path", req.uri().to_string().parse().unwrap());
        r
    })
    .await
}

fn config(b: &Backend) -> String {
    simple_config(&[b.addr], "", "sessions: { tracking: url }")
}

/// The value of attribute `attr` of the element with `id` in `page`.
fn attr(page: &str, id: &str, attr: &str) -> String {
    let start = page
        .find(&format!("id={id} "))
        .unwrap_or_else(|| panic!("no #{id} in {page}"));
    let rest = &page[start..];
    let at = rest.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
    rest[at..at + rest[at..].find('"').unwrap()].to_owned()
}

/// The path (and query) of a URL the gateway wrote: tagged URLs are absolute, on the page's
/// own origin.
fn local(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or("/".to_owned(), |i| rest[i..].to_owned()),
        None => url.to_owned(),
    }
}

fn me(page: &str) -> &str {
    let start = page.find("<p id=me>").unwrap() + "<p id=me>".len();
    &page[start..start + page[start..].find('<').unwrap()]
}

/// Sends `method url` with `headers`; the response's headers and text.
async fn fetch(
    http: &reqwest::Client,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
) -> (HeaderMap, String) {
    let mut req = http.request(method, url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    page(req.send().await.unwrap()).await
}

async fn page(resp: reqwest::Response) -> (HeaderMap, String) {
    let headers = resp.headers().clone();
    (headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn cookieless_client_keeps_session_across_redirect_links_and_forms() {
    let b = html_shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let http = client();
    let base = gw.url("web", "");

    // Login: a redirect whose Location carries the new token; no cookie.
    let resp = http.post(format!("{base}/login")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let (h, _) = page(resp).await;
    assert!(h.get("set-cookie").is_none(), "{h:?}");
    let location = h["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{base}/home;sgsid=")),
        "{location}"
    );
    let token = location
        .trim_start_matches(&format!("{base}/home;sgsid="))
        .to_owned();
    assert_eq!(h["referrer-policy"], "same-origin");
    assert_eq!(h["cache-control"], "private");

    // The page: same-origin links and forms carry the token (written absolute, so that no
    // <base> can move them), others do not.
    let (h, home) = page(http.get(&location).send().await.unwrap()).await;
    assert!(me(&home).contains("status=active user=alice"), "{home}");
    assert!(me(&home).contains("encoding=identity"), "{home}");
    assert_eq!(b.last().uri, "/home");
    assert!(h.get("content-length").is_none());
    assert_eq!(h["etag"], "W/\"v1\"");
    assert_eq!(
        attr(&home, "cart", "href"),
        format!("{base}/cart;sgsid={token}")
    );
    assert_eq!(attr(&home, "out", "href"), "https://elsewhere.example/x");
    assert_eq!(attr(&home, "top", "href"), "#top");

    // A link, a POST form, then a GET form (its query replaces the link's, the token stays).
    let (_, cart) = fetch(&http, Method::GET, attr(&home, "cart", "href"), &[]).await;
    assert!(me(&cart).contains("user=alice cart=-"), "{cart}");
    let (_, bought) = fetch(&http, Method::POST, attr(&cart, "buy", "action"), &[]).await;
    assert!(me(&bought).contains("user=alice cart=1"), "{bought}");
    assert_eq!(b.last().uri, "/cart");
    let search = attr(&bought, "search", "action");
    assert_eq!(search, format!("{base}/search;sgsid={token}"));
    let (_, found) = fetch(&http, Method::GET, format!("{search}?q=shoes"), &[]).await;
    assert!(me(&found).contains("user=alice cart=2"), "{found}");
    assert_eq!(b.last().uri, "/search?q=shoes");

    // Every request the backend saw was clean.
    for seen in b.requests() {
        let all = format!("{} {:?}", seen.uri, seen.headers);
        assert!(!all.contains(&token), "{all}");
    }

    // Logout: the session ends, and the page's links are no longer tagged.
    let (_, out) = fetch(
        &http,
        Method::GET,
        format!("{base}/logout;sgsid={token}"),
        &[],
    )
    .await;
    assert_eq!(attr(&out, "cart", "href"), "/cart");
    let (_, after) = fetch(
        &http,
        Method::GET,
        format!("{base}/home;sgsid={token}"),
        &[],
    )
    .await;
    assert!(me(&after).contains("status=expired"), "{after}");
}

#[tokio::test]
async fn a_client_without_a_session_gets_clean_pages() {
    let b = html_shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let (h, home) = page(client().get(gw.url("web", "/home")).send().await.unwrap()).await;
    assert_eq!(attr(&home, "cart", "href"), "/cart");
    // Nothing was tagged. (The page went through the rewriter all the same: a client that
    // would take a URL token loses any a link of the page carries, someone else's.)
    assert!(h.get("referrer-policy").is_none());
    assert!(h.get("set-cookie").is_none());
}

fn auto_config(b: &Backend) -> String {
    simple_config(&[b.addr], "", "sessions: { tracking: auto }")
}

/// The session cookie's `name=value` among a response's `Set-Cookie`s.
fn session_cookie_in(h: &HeaderMap) -> String {
    set_cookies(h)
        .into_iter()
        .find(|c| c.starts_with("sg="))
        .expect("a session cookie")
}

/// The `name=value` of each `Set-Cookie`.
fn set_cookies(h: &HeaderMap) -> Vec<String> {
    h.get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn auto_keeps_urls_clean_for_a_client_that_returns_the_probe_cookie() {
    let b = html_shop().await;
    let gw = Gateway::start(&auto_config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    // A first page: no session, links clean, and the probe cookie offered.
    let (h, home) = page(http.get(format!("{base}/home")).send().await.unwrap()).await;
    assert_eq!(attr(&home, "cart", "href"), "/cart");
    assert_eq!(set_cookies(&h), ["sg_probe=1"]);
    // It comes back with the probe (and a cookie of the site's own): the session is in the
    // cookie alone, and the redirect is clean.
    let resp = http
        .post(format!("{base}/login"))
        .header("cookie", "sg_probe=1; theme=dark")
        .header("referer", format!("{base}/home"))
        .send()
        .await
        .unwrap();
    assert_eq!(b.last().headers["cookie"], "theme=dark");
    let (h, _) = page(resp).await;
    assert_eq!(h["location"], "/home");
    let cookie = session_cookie_in(&h);
    let (h, home) = fetch(
        &http,
        Method::GET,
        format!("{base}/home"),
        &[("cookie", cookie.as_str())],
    )
    .await;
    assert!(me(&home).contains("status=active user=alice"), "{home}");
    assert_eq!(attr(&home, "cart", "href"), "/cart");
    assert!(h.get("set-cookie").is_none(), "{h:?}");
    assert!(h.get("referrer-policy").is_none());
}

#[tokio::test]
async fn auto_offers_the_probe_again_when_a_cookie_session_ends() {
    let b = html_shop().await;
    let gw = Gateway::start(&auto_config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    let resp = http
        .post(format!("{base}/login"))
        .header("cookie", "sg_probe=1")
        .header("referer", format!("{base}/home"))
        .send()
        .await
        .unwrap();
    let (h, _) = page(resp).await;
    let cookie = session_cookie_in(&h);
    // The client shows only its session cookie (the probe was a session cookie, gone with a
    // restart); its logout clears that one: without the probe again, its next visit from one
    // of our pages would look like a client that refuses cookies, and get a token in URLs.
    let (h, _) = fetch(
        &http,
        Method::GET,
        format!("{base}/logout"),
        &[("cookie", cookie.as_str())],
    )
    .await;
    let set = set_cookies(&h);
    assert!(set.contains(&"sg=".to_owned()), "{set:?}");
    assert!(set.contains(&"sg_probe=1".to_owned()), "{set:?}");
}

#[tokio::test]
async fn auto_tracks_by_url_a_client_that_drops_cookies() {
    let b = html_shop().await;
    let gw = Gateway::start(&auto_config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    page(http.get(format!("{base}/home")).send().await.unwrap()).await;
    // No probe returned, but it comes from our page: it refuses cookies.
    let resp = http
        .post(format!("{base}/login"))
        .header("referer", format!("{base}/home"))
        .send()
        .await
        .unwrap();
    let (h, _) = page(resp).await;
    let location = h["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{base}/home;sgsid=")),
        "{location}"
    );
    assert!(
        !set_cookies(&h).iter().any(|c| c.starts_with("sg=")),
        "{h:?}"
    );
    let (_, home) = page(http.get(&location).send().await.unwrap()).await;
    assert!(me(&home).contains("user=alice"), "{home}");
    assert!(attr(&home, "cart", "href").starts_with(&format!("{base}/cart;sgsid=")));
}

#[tokio::test]
async fn auto_without_evidence_goes_both_ways_then_cleans_the_address_bar() {
    let b = html_shop().await;
    let gw = Gateway::start(&auto_config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    // A deep link that creates a session at once: cookie and URL both.
    let (h, _) = page(http.post(format!("{base}/login")).send().await.unwrap()).await;
    let location = h["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{base}/home;sgsid=")),
        "{location}"
    );
    let cookie = session_cookie_in(&h);
    // The client kept the cookie: the tagged URL is answered with a redirect to the clean
    // one (on its own origin), without asking the backend.
    let seen = b.requests().len();
    let resp = http
        .get(&location)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], format!("{base}/home").as_str());
    assert_eq!(b.requests().len(), seen);
    let (_, home) = fetch(
        &http,
        Method::GET,
        format!("{base}/home"),
        &[("cookie", cookie.as_str())],
    )
    .await;
    assert!(me(&home).contains("user=alice"), "{home}");
    assert_eq!(attr(&home, "cart", "href"), "/cart");
}

#[tokio::test]
async fn crawlers_never_get_a_token_in_a_url() {
    let b = html_shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let resp = client()
        .post(gw.url("web", "/login"))
        .header(
            "user-agent",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"], "/home");
}

/// A session for a cookieless client: its token.
async fn url_session(http: &reqwest::Client, base: &str) -> String {
    let resp = http.post(format!("{base}/login")).send().await.unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    location
        .trim_start_matches(&format!("{base}/home;sgsid="))
        .to_owned()
}

#[tokio::test]
async fn redirects_of_every_kind_carry_the_token() {
    let b = html_shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    let token = url_session(&http, &base).await;
    for status in [301, 302, 303, 307, 308] {
        let resp = http
            .get(format!("{base}/redirect/{status};sgsid={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(
            resp.headers()["location"],
            format!("{base}/target;sgsid={token}?from=redirect").as_str()
        );
    }
}

#[tokio::test]
async fn compressed_pages_are_decoded_rewritten_and_gzipped_for_clients_that_take_gzip() {
    let b = html_shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    let token = url_session(&http, &base).await;
    for path in ["gz", "br"] {
        // A client that takes gzip gets the rewritten page gzipped.
        let resp = http
            .get(format!("{base}/{path};sgsid={token}"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], "gzip", "{path}");
        let zipped = resp.bytes().await.unwrap();
        let mut html = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut html)
            .unwrap();
        assert_eq!(
            attr(&html, "cart", "href"),
            format!("{base}/cart;sgsid={token}"),
            "{path}"
        );
        // One that does not gets it plain.
        let resp = http
            .get(format!("{base}/{path};sgsid={token}"))
            .send()
            .await
            .unwrap();
        assert!(resp.headers().get("content-encoding").is_none(), "{path}");
        let html = resp.text().await.unwrap();
        assert_eq!(
            attr(&html, "cart", "href"),
            format!("{base}/cart;sgsid={token}"),
            "{path}"
        );
    }
}

/// A 20 MB page with 10 links per 4 KB, streamed by the backend in 64 KB chunks; its last chunk
/// is held back until the test has read rewritten bytes, so a gateway that buffered the page
/// would never answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_megabyte_page_streams_through_the_rewriter_with_flat_memory() {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 20 * 1024 * 1024 / CHUNK;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let b = Backend::start(move |req| {
        let gate = gate.clone();
        async move {
            if req.uri().path() == "/login" {
                let mut r = text(303, "");
                r.headers_mut().insert("location", "/big".parse().unwrap());
                r.headers_mut()
                    .insert("x-session-set", "user=alice".parse().unwrap());
                return r;
            }
            // 64 KB of markup: 16 blocks of 10 links, each padded to 4 KB.
            let block: String = (0..10)
                .map(|i| format!("<a href=\"/item/{i}\">item {i}</a>\n"))
                .collect();
            let block = format!("{block}{}\n", "x".repeat(4096 - block.len() - 1));
            let chunk = bytes::Bytes::from(block.repeat(CHUNK / 4096));
            let stream = futures_util::stream::iter(0..CHUNKS).then(move |k| {
                let (chunk, gate) = (chunk.clone(), gate.clone());
                async move {
                    if k == CHUNKS - 1 {
                        gate.notified().await;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(chunk))
                }
            });
            let mut r = http::Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("content-type", "text/html".parse().unwrap());
            r
        }
    })
    .await;
    let yaml = simple_config(&[b.addr], "", "sessions: { tracking: url }");
    let gw = tokio::task::spawn_blocking(move || GatewayProcess::start(&yaml))
        .await
        .unwrap();
    let base = format!("http://{}", gw.http);
    let http = client();
    let location = http
        .post(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let token = local(&location)
        .trim_start_matches("/big;sgsid=")
        .to_owned();
    let resp = http.get(&location).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let (mut received, mut tagged, mut released) = (0usize, 0usize, false);
    let mut tail = String::new();
    while let Some(got) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the page stalled: was it buffered?")
    {
        let got = got.unwrap();
        received += got.len();
        // Count tagged links across chunk boundaries.
        tail.push_str(std::str::from_utf8(&got).unwrap());
        let keep_from = tail.len().saturating_sub(200);
        let cut = tail[..keep_from].rfind('\n').map_or(0, |i| i + 1);
        tagged += tail[..cut].matches(&format!(";sgsid={token}\"")).count();
        tail.drain(..cut);
        if !released && received > CHUNK {
            // Rewritten bytes arrived before the backend sent its last chunk.
            release.notify_one();
            released = true;
        }
    }
    tagged += tail.matches(&format!(";sgsid={token}\"")).count();
    assert_eq!(tagged, CHUNKS * (CHUNK / 4096) * 10);
    assert!(received > CHUNKS * CHUNK);
    let peak_kib = gw.peak_rss_kib();
    eprintln!("gateway peak RSS after a 20 MB rewritten page: {peak_kib} KiB");
    assert!(
        peak_kib < 64 * 1024,
        "gateway peak RSS {peak_kib} KiB: the page was buffered"
    );
}

/// Two hosts of one gateway that share their sessions.
fn siblings_config(b: &Backend) -> String {
    siblings_config_with(b, "{}")
}

/// As `siblings_config`, with `sessions` as the `sessions:` section.
fn siblings_config_with(b: &Backend, sessions: &str) -> String {
    format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{}\" }} ]\nroutes:\n  - {{ name: shop, match: {{ host: shop.example }}, upstream: app, session: {{ share_with: [account.example] }} }}\n  - {{ name: account, match: {{ host: account.example }}, upstream: app, session: {{ share_with: [shop.example] }} }}\nsessions: {sessions}\n",
        b.addr
    )
}

#[tokio::test]
async fn a_handoff_code_from_one_gateway_works_once_on_another_sharing_redis() {
    let b = html_shop().await;
    let prefix = crate::support::redis_test_prefix();
    let sessions = format!(
        "{{ secret_file: session.keys, store: {{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }} }} }}"
    );
    let start = || async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("session.keys"),
            "shared-secret-of-the-fleet-0123456789abcdef\n",
        )
        .unwrap();
        Gateway::start_in(&siblings_config_with(&b, &sessions), dir).await
    };
    // Two gateways behind one balancer: the page comes from one, the click lands on the other.
    let (one, other) = (start().await, start().await);
    let http = client();
    let on = |gw: &Gateway, host: &'static str, path: &str, cookie: Option<&str>| {
        let mut req = http.get(gw.url("web", path)).header("host", host);
        if let Some(c) = cookie {
            req = req.header("cookie", c.to_owned());
        }
        req
    };
    let resp = http
        .post(one.url("web", "/login"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    let shop_cookie = set_cookies(resp.headers()).pop().unwrap();
    let (_, home) = page(
        on(&one, "shop.example", "/home", Some(&shop_cookie))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let acct = attr(&home, "acct", "href");
    let code = acct
        .strip_prefix("http://account.example/me;sghandoff=")
        .unwrap_or_else(|| panic!("{acct}"))
        .to_owned();
    // A click on the shop's link: a navigation whose Referer names the shop.
    let redeem = |gw: &Gateway| {
        on(
            gw,
            "account.example",
            &format!("/me;sghandoff={code}"),
            None,
        )
        .header("referer", "http://shop.example/")
        .send()
    };
    let resp = redeem(&other).await.unwrap();
    assert_eq!(
        resp.status(),
        303,
        "the other gateway did not know the code"
    );
    let acct_cookie = set_cookies(resp.headers()).pop().unwrap();
    let (_, me_page) = page(
        on(&other, "account.example", "/me", Some(&acct_cookie))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        me(&me_page).contains("status=active user=alice"),
        "{me_page}"
    );
    // Used: neither gateway takes it again.
    for gw in [&one, &other] {
        let (_, again) = page(redeem(gw).await.unwrap()).await;
        assert!(me(&again).contains("status=none"), "{again}");
    }
}

#[tokio::test]
async fn a_sibling_host_gets_the_session_through_a_one_time_code() {
    let b = html_shop().await;
    let gw = Gateway::start(&siblings_config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    let on = |host: &'static str, path: &str, cookie: Option<&str>| {
        let mut req = http.get(format!("{base}{path}")).header("host", host);
        if let Some(c) = cookie {
            req = req.header("cookie", c.to_owned());
        }
        req
    };
    // Logged in on the shop (cookie tracking).
    let resp = http
        .post(format!("{base}/login"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    let shop_cookie = set_cookies(resp.headers()).pop().unwrap();
    let (_, home) = page(
        on("shop.example", "/home", Some(&shop_cookie))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Same-origin links stay clean for a cookie client; the sibling link carries a code,
    // never the token; other hosts get nothing.
    assert_eq!(attr(&home, "cart", "href"), "/cart");
    assert_eq!(attr(&home, "out", "href"), "https://elsewhere.example/x");
    let acct = attr(&home, "acct", "href");
    let code = acct
        .strip_prefix("http://account.example/me;sghandoff=")
        .unwrap_or_else(|| panic!("{acct}"))
        .to_owned();
    assert!(!home.contains(shop_cookie.trim_start_matches("sg=")));
    // The link sends the shop's origin (never its path) as Referer: the sibling's evidence.
    assert!(
        home.contains(&format!(r#"href="{acct}" referrerpolicy="origin""#)),
        "{home}"
    );

    // On the sibling: the code becomes a cookie of its own and a redirect to the clean URL,
    // without the backend being asked.
    let seen = b.requests().len();
    let resp = on("account.example", &format!("/me;sghandoff={code}"), None)
        .header("referer", "http://shop.example/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "http://account.example/me");
    assert_eq!(b.requests().len(), seen);
    let acct_cookie = set_cookies(resp.headers()).pop().unwrap();
    assert_ne!(acct_cookie, shop_cookie);
    let (_, me_page) = page(
        on("account.example", "/me", Some(&acct_cookie))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        me(&me_page).contains("status=active user=alice"),
        "{me_page}"
    );

    // A code works once.
    let (_, again) = page(
        on("account.example", &format!("/me;sghandoff={code}"), None)
            .header("referer", "http://shop.example/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(me(&again).contains("status=none"), "{again}");
    assert_eq!(b.last().uri, "/me");

    // One session: logging out on the sibling logs out on the shop too.
    page(
        on("account.example", "/logout", Some(&acct_cookie))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (_, after) = page(
        on("shop.example", "/home", Some(&shop_cookie))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!me(&after).contains("status=active"), "{after}");
}

#[tokio::test]
async fn a_cookieless_client_keeps_url_tracking_on_the_sibling() {
    let b = html_shop().await;
    let yaml = siblings_config(&b).replace("sessions: {}", "sessions: { tracking: url }");
    let gw = Gateway::start(&yaml).await;
    let http = client();
    let base = gw.url("web", "");
    let resp = http
        .post(format!("{base}/login"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let token = location
        .trim_start_matches("http://shop.example/home;sgsid=")
        .to_owned();
    let (_, home) = fetch(
        &http,
        Method::GET,
        format!("{base}{}", local(&location)),
        &[("host", "shop.example")],
    )
    .await;
    let acct = attr(&home, "acct", "href");
    assert!(acct.contains(";sghandoff="), "{acct}");
    assert!(!acct.contains(&token), "{acct}");
    let resp = http
        .get(format!("{base}{}", local(&acct)))
        .header("host", "account.example")
        .header("referer", "http://shop.example/")
        .send()
        .await
        .unwrap();
    // The arrival came from another site: a page on this origin goes on to the token URL, so
    // the token URL is reached from this origin, not by a redirect of the sibling's navigation.
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.headers().get("location").is_none());
    let bounce = resp.text().await.unwrap();
    let at = bounce.find("<a href=\"").expect("a link on the page") + 9;
    let location = bounce[at..at + bounce[at..].find('"').unwrap()].replace("&amp;", "&");
    assert!(
        location.starts_with("http://account.example/me;sgsid="),
        "{location}"
    );
    assert!(
        bounce.contains(&format!(
            "http-equiv=\"refresh\" content=\"0; url={location}\""
        )),
        "{bounce}"
    );
    assert!(!location.contains(&token), "a token of its own: {location}");
    let (_, me_page) = fetch(
        &http,
        Method::GET,
        format!("{base}{}", local(&location)),
        &[("host", "account.example")],
    )
    .await;
    assert!(me(&me_page).contains("user=alice"), "{me_page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_never_carry_a_token() {
    let b = html_shop().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let yaml = config(&b);
    let path = log.clone();
    let gw = tokio::task::spawn_blocking(move || GatewayProcess::start_logged(&yaml, &path))
        .await
        .unwrap();
    let base = format!("http://{}", gw.http);
    let http = client();
    let token = url_session(&http, &base).await;
    for target in [
        format!("/cart;sgsid={token}?x=1"),
        format!("/cart?sgsid={token}"),
        format!("/nowhere;sgsid={token}"),
    ] {
        http.get(format!("{base}{target}"))
            .header("referer", format!("{base}/home;sgsid={token}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let logged =
        eventually(Duration::from_secs(5), || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log).is_ok_and(|t| t.matches("path=/cart").count() >= 2)
            }
        })
        .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(logged, "no access lines: {text}");
    assert!(!text.contains(&token), "{text}");
    assert!(!text.contains(&token[..16]), "{text}");
}

#[tokio::test]
async fn a_url_tracked_client_that_starts_keeping_cookies_starts_a_session_of_its_own() {
    let b = html_shop().await;
    let gw = Gateway::start(&auto_config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    let resp = http
        .post(format!("{base}/login"))
        .header("referer", format!("{base}/home"))
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let token = local(&location)
        .trim_start_matches("/home;sgsid=")
        .to_owned();
    // Now it returns the probe: a client that keeps cookies never takes a token from a URL
    // (anyone could have put it in a link), even from our own page: it is sent to the URL
    // without it, and its pages come clean.
    let resp = http
        .get(format!("{base}/cart;sgsid={token}"))
        .header("cookie", "sg_probe=1")
        .header("referer", format!("{base}/home;sgsid={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], format!("{base}/cart"));
    let cookies = set_cookies(resp.headers());
    assert!(!cookies.contains(&format!("sg={token}")), "{cookies:?}");
    let resp = http
        .get(format!("{base}/cart"))
        .header("cookie", "sg_probe=1")
        .header("referer", format!("{base}/home;sgsid={token}"))
        .send()
        .await
        .unwrap();
    let (_, cart) = page(resp).await;
    assert!(me(&cart).contains("status=none"), "{cart}");
    assert_eq!(attr(&cart, "cart", "href"), "/cart");
}

#[tokio::test]
async fn non_html_bodies_are_untouched() {
    let b = html_shop().await;
    let gw = Gateway::start(&config(&b)).await;
    let http = client();
    let base = gw.url("web", "");
    let token = url_session(&http, &base).await;
    let resp = http
        .get(format!("{base}/plain;sgsid={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "30");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"<a href="/cart">not a page</a>"#
    );
}
