//! Class 4: every redirect the gateway makes itself stays on the request's own origin, however
//! the request target is spelled (auto tracking's clean-URL redirect, the handoff arrival, the
//! HTTPS redirect).

use super::*;

/// Request targets that a browser would read, in a relative `Location`, as another host.
const TARGETS: &[&str] = &[
    "//other.example/x",
    "///other.example/x",
    "//other.example",
    "//other.example:8080/x?y=1",
    "/.//other.example/x",
    "//%6fther.example/x",
    "//other.example%2F/x",
];

/// The Location of a raw response must resolve, from the URL the client asked for, to the
/// client's own origin.
fn assert_stays_home(response: &str, host: &str, target: &str) {
    let status: u16 = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(300..400).contains(&status) {
        // Refused (400) or served: no redirect to judge.
        return;
    }
    let location = raw_header(response, "location").unwrap_or_else(|| panic!("{response}"));
    let from = format!("http://{host}{target}");
    let to = resolve(&from, location);
    assert_eq!(
        to.host_str(),
        Some(host.split(':').next().unwrap()),
        "{target}: Location {location} leads to {to}"
    );
    assert_eq!(to.scheme(), "http", "{target}: {location}");
}

#[tokio::test]
async fn the_clean_url_redirect_of_auto_tracking_never_leaves_the_origin() {
    let app = App::start().await;
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: auto } }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    let (_, h, _) = get(&base, "/login", &[("cookie", "sg_probe=1")]).await;
    let token = session_cookie(&h).expect("a session cookie");
    for target in TARGETS {
        for (spelling, param) in [
            ("path", format!(";sgsid={token}")),
            ("query", format!("?sgsid={token}")),
        ] {
            let t = if spelling == "query" && target.contains('?') {
                format!("{target}&sgsid={token}")
            } else {
                format!("{target}{param}")
            };
            let resp = raw(
                gw.addr("web"),
                &format!(
                    "GET {t} HTTP/1.1\r\nHost: shop.example\r\nCookie: sg={token}\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            assert_stays_home(&resp, "shop.example", target);
        }
    }
}

/// Two hosts sharing sessions; `/home` on either has a link to the other.
pub fn siblings(app: &App, sessions: &str) -> String {
    app.page(
        "/home",
        Page::html(
            r#"<a id=acct href="http://account.example/me">account</a> <a id=shop href="http://shop.example/me">shop</a>"#,
        ),
    );
    config(
        app,
        &[
            "{ name: shop, match: { host: shop.example }, upstream: app, session: { share_with: [account.example] } }",
            "{ name: account, match: { host: account.example }, upstream: app, session: { share_with: [shop.example] } }",
        ],
        sessions,
    )
}

/// A fresh handoff code for `account.example`, from the shop's `/home` seen with `cookie`.
pub async fn code_for_account(base: &str, cookie: &str) -> String {
    let (_, _, home) = get(
        base,
        "/home",
        &[
            ("host", "shop.example"),
            ("cookie", &format!("sg={cookie}")),
        ],
    )
    .await;
    let start = home
        .find("sghandoff=")
        .unwrap_or_else(|| panic!("no code in {home}"));
    home[start + "sghandoff=".len()..]
        .split(['"', '&', '?', '#', ';'])
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_handoff_arrival_redirect_never_leaves_the_origin() {
    let app = App::start().await;
    let gw = gateway(&siblings(&app, "{ secret_file: session.keys }")).await;
    let base = gw.url("web", "");
    let (_, h, _) = get(&base, "/login", &[("host", "shop.example")]).await;
    let cookie = session_cookie(&h).unwrap();
    for target in TARGETS {
        let code = code_for_account(&base, &cookie).await;
        let resp = raw(
            gw.addr("web"),
            &format!(
                "GET {target};sghandoff={code} HTTP/1.1\r\nHost: account.example\r\nReferer: http://shop.example/home\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_stays_home(&resp, "account.example", target);
    }
}

#[tokio::test]
async fn the_https_redirect_names_the_requests_own_host_whatever_the_target() {
    let app = App::start().await;
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", redirect_to_https: true, https_port: 8443 }}\nupstreams:\n  app:\n    servers: [ {{ url: \"http://{}\" }} ]\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n",
        app.backend.addr
    );
    let gw = Gateway::start(&yaml).await;
    for (method, target) in [
        ("GET", "//other.example/x"),
        ("OPTIONS", "*"),
        ("GET", "/a?b=//other.example"),
    ] {
        let resp = raw(
            gw.addr("web"),
            &format!(
                "{method} {target} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        if let Some(location) = raw_header(&resp, "location") {
            let to = url::Url::parse(location).unwrap();
            assert_eq!(to.host_str(), Some("shop.example"), "{target}: {location}");
            assert_eq!(to.scheme(), "https");
        }
    }
}

#[tokio::test]
async fn only_a_redirect_home_with_a_token_becomes_a_page_that_goes_on() {
    let app = App::start().await;
    let locations = [
        "/home",
        "javascript:alert(document.domain)//;sgsid=",
        "JavaScript&colon;alert(1)//;sgsid=x",
        "data:text/html,<script>alert(1)</script>;sgsid=",
        "http://other.example/x;sgsid=1",
        "//other.example/x;sgsid=1",
        "http://shop.example@other.example/x;sgsid=1",
    ];
    for (i, to) in locations.iter().enumerate() {
        app.page(
            &format!("/go/{i}"),
            Page {
                status: 302,
                headers: vec![
                    ("location".into(), (*to).into()),
                    ("x-session-set".into(), "user=alice".into()),
                ],
                body: String::new(),
            },
        );
    }
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    // Each reached by a link on another site.
    let from_elsewhere = [
        ("host", "shop.example"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("referer", "http://other.example/"),
    ];
    for (i, to) in locations.iter().enumerate() {
        let (status, _, body) = get(&base, &format!("/go/{i}"), &from_elsewhere).await;
        if status != 200 {
            // The backend's redirect, as it was: never a link on our origin's page.
            assert_eq!(status, 302, "{to}: {body}");
            assert!(i != 0, "home with a token is a page of ours");
            continue;
        }
        // A page of the gateway's that goes on: to a URL of this origin, with the token.
        let at = body.find("<a href=\"").unwrap_or_else(|| panic!("{body}")) + 9;
        let next = body[at..at + body[at..].find('"').unwrap()].replace("&amp;", "&");
        let next = resolve("http://shop.example/", &next);
        assert_eq!(
            next.origin(),
            resolve("http://shop.example/", "/").origin(),
            "{to}: {body}"
        );
        assert!(next.path().contains(";sgsid="), "{to}: {body}");
        assert!(
            body.contains(&format!(
                "content=\"0; url={}",
                next.as_str().replace('&', "&amp;")
            )),
            "{to}: {body}"
        );
        assert!(
            !to.contains(':') || to.starts_with("JavaScript&colon;"),
            "{to} became a page"
        );
    }
}
