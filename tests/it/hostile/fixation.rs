//! Classes 5–9: a session cannot be planted in a victim's browser, kept by an attacker after
//! the victim logs in, or taken over through a handoff code. Each chain runs on the memory
//! store and on Redis.

use std::time::Duration;

use super::redirects::{code_for_account, siblings};
use super::*;

/// The `sessions:` sections under test: the memory store and Redis (a key prefix of the
/// test's own), each with a one-second regenerate grace.
fn stores() -> Vec<(&'static str, String)> {
    let prefix = redis_test_prefix();
    vec![
        (
            "memory",
            "{ secret_file: session.keys, regenerate_grace: 1s }".to_owned(),
        ),
        (
            "redis",
            format!(
                "{{ secret_file: session.keys, regenerate_grace: 1s, store: {{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }} }} }}"
            ),
        ),
    ]
}

const COOKIE_ROUTE: &str = "{ name: app, match: { path_prefix: / }, upstream: app }";
const AUTO_ROUTE: &str =
    "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: auto } }";

async fn whoami(base: &str, headers: &[(&str, &str)]) -> String {
    get(base, "/whoami", headers).await.2
}

fn cookie(token: &str) -> String {
    format!("sg={token}")
}

#[tokio::test]
async fn a_cookie_route_takes_the_token_from_the_cookie_only() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let gw = gateway(&config(&app, &[COOKIE_ROUTE], &sessions)).await;
        let base = gw.url("web", "");
        let (_, h, _) = get(&base, "/login?user=victim", &[]).await;
        let token = session_cookie(&h).unwrap();
        for target in [
            format!("/whoami;sgsid={token}"),
            format!("/whoami?sgsid={token}"),
            format!("/whoami;sgsid={token}?sgsid={token}"),
            format!("/whoami?a=1&sgsid={token}&b=2"),
        ] {
            // A GET is sent to the same URL without the token, the backend unasked.
            let asked = app.backend.requests().len();
            let (status, h, _) = get(&base, &target, &[]).await;
            assert_eq!(status, 302, "{store} {target}");
            let location = h["location"].to_str().unwrap();
            assert!(
                location.starts_with(&base) && !location.contains("sgsid"),
                "{store} {target}: {location}"
            );
            assert!(session_cookie(&h).is_none(), "{store} {target}");
            assert_eq!(app.backend.requests().len(), asked, "{store} {target}");
            // Any other method reaches the backend without a session, or the token.
            let resp = client()
                .post(format!("{base}{target}"))
                .send()
                .await
                .unwrap();
            assert!(session_cookie(resp.headers()).is_none(), "{store} {target}");
            let body = resp.text().await.unwrap();
            assert_eq!(field(&body, "status"), "none", "{store} {target}: {body}");
            let seen = app.backend.last().uri;
            assert!(!seen.contains("sgsid"), "{store}: the backend saw {seen}");
        }
        // The cookie still works.
        let body = whoami(&base, &[("cookie", &cookie(&token))]).await;
        assert_eq!(field(&body, "user"), "victim", "{store}");
    }
}

#[tokio::test]
async fn a_browser_that_keeps_cookies_never_takes_a_token_from_a_url() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        app.page(
            "/go",
            Page::html(r#"<a id=next href="/whoami">next</a>"#)
                .with("x-session-set", "user=mallory"),
        );
        let gw = gateway(&config(&app, &[AUTO_ROUTE], &sessions)).await;
        let base = gw.url("web", "");
        // Mallory's session, in her URL (she comes from the site's own page, without cookies).
        let (_, _, page) = get(&base, "/go", &[("referer", &format!("{base}/"))]).await;
        let at = page.find("sgsid=").unwrap_or_else(|| panic!("{page}")) + "sgsid=".len();
        let token = page[at..at + 64].to_owned();
        // The victim's browser keeps cookies (it returns the probe) and meets her token in a
        // link or an image, elsewhere or on the site itself (a comment, an upload): it must
        // start a session of its own, and never get hers in a cookie.
        let here = format!("{base}/comments");
        for evidence in [
            vec![],
            vec![("referer", "http://evil.example/post")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "none")],
            vec![
                ("sec-fetch-site", "cross-site"),
                ("referer", "http://evil.example/"),
            ],
            vec![
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-dest", "image"),
                ("referer", here.as_str()),
            ],
            vec![
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
                ("referer", here.as_str()),
            ],
            vec![("referer", here.as_str())],
        ] {
            for cookie in ["sg_probe=1", "sg=expired-or-forged; theme=dark"] {
                let mut headers = vec![("cookie", cookie)];
                headers.extend(evidence.iter().copied());
                let (_, h, body) = get(&base, &format!("/whoami;sgsid={token}"), &headers).await;
                assert!(
                    !set_cookies(&h).contains(&format!("sg={token}")),
                    "{store} {evidence:?}: planted"
                );
                assert_ne!(
                    field(&body, "user"),
                    "mallory",
                    "{store} {evidence:?}: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_old_token_in_its_grace_sees_the_session_before_the_regenerate_and_writes_nothing() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let yaml = siblings(&app, &sessions);
        let gw = gateway(&yaml).await;
        let other = gateway(&yaml).await;
        let base = gw.url("web", "");
        let shop = [("host", "shop.example")];
        // A pre-login session (the attacker's, planted somehow), then the victim logs in.
        let (_, h, _) = get(&base, "/set?cart=1", &shop).await;
        let old = session_cookie(&h).unwrap();
        let old_cookie = cookie(&old);
        let (_, h, _) = get(
            &base,
            "/login?user=victim",
            &[shop[0], ("cookie", &old_cookie)],
        )
        .await;
        let new = session_cookie(&h).expect("a new token");
        assert_ne!(new, old);
        let as_old = [shop[0], ("cookie", old_cookie.as_str())];
        // Within the grace: the session as it was, never the login.
        let body = whoami(&base, &as_old).await;
        assert_eq!(
            field(&body, "user"),
            "-",
            "{store}: the old token sees {body}"
        );
        // It writes nothing, regenerates nothing, mints no handoff code.
        get(&base, "/set?user=mallory", &as_old).await;
        let (_, h, _) = get(&base, "/regen", &as_old).await;
        assert!(
            session_cookie(&h).is_none(),
            "{store}: regenerated through the old token"
        );
        let (_, _, home) = get(&base, "/home", &as_old).await;
        assert!(!home.contains("sghandoff"), "{store}: minted {home}");
        let (_, h, _) = get(&base, "/login?user=mallory", &as_old).await;
        assert!(session_cookie(&h).is_none(), "{store}");
        let body = whoami(&base, &[shop[0], ("cookie", &cookie(&new))]).await;
        assert_eq!(field(&body, "user"), "victim", "{store}: {body}");
        // After the grace: dead, here and on every gateway.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        for g in [&gw, &other] {
            if store == "memory" && std::ptr::eq(g, &other) {
                continue;
            }
            let body = whoami(&g.url("web", ""), &as_old).await;
            assert_ne!(field(&body, "status"), "active", "{store}: {body}");
        }
    }
}

#[tokio::test]
async fn a_handoff_code_counts_only_on_a_top_level_navigation_from_the_issuing_sibling() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let gw = gateway(&siblings(&app, &sessions)).await;
        let base = gw.url("web", "");
        let (_, h, _) = get(&base, "/login?user=alice", &[("host", "shop.example")]).await;
        let token = session_cookie(&h).unwrap();
        let navigate = [
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-site", "cross-site"),
        ];
        let refused: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            navigate.to_vec(),
            vec![("referer", "http://evil.example/")],
            vec![("referer", "http://account.example/x")],
            vec![("referer", "http://shop.example.evil/")],
            vec![
                ("referer", "http://shop.example/"),
                ("sec-fetch-dest", "iframe"),
                ("sec-fetch-mode", "navigate"),
            ],
            vec![
                ("referer", "http://shop.example/"),
                ("sec-fetch-mode", "no-cors"),
                ("sec-fetch-dest", "image"),
            ],
            vec![
                ("referer", "http://shop.example/"),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
            ],
        ];
        for headers in refused {
            let code = code_for_account(&base, &token).await;
            let mut all = vec![("host", "account.example")];
            all.extend(headers.iter().copied());
            let (_, h, _) = get(&base, &format!("/me;sghandoff={code}"), &all).await;
            assert!(
                session_cookie(&h).is_none(),
                "{store} {headers:?}: redeemed"
            );
        }
        // A POST never redeems.
        let code = code_for_account(&base, &token).await;
        let resp = client()
            .post(format!("{base}/me;sghandoff={code}"))
            .header("host", "account.example")
            .header("referer", "http://shop.example/home")
            .send()
            .await
            .unwrap();
        assert!(
            session_cookie(resp.headers()).is_none(),
            "{store}: a POST redeemed"
        );
        // The real thing: a click on the shop's page.
        let code = code_for_account(&base, &token).await;
        let mut all = vec![
            ("host", "account.example"),
            ("referer", "http://shop.example/home"),
        ];
        all.extend(navigate);
        let (status, h, _) = get(&base, &format!("/me;sghandoff={code}"), &all).await;
        assert_eq!(status, 303, "{store}");
        let alias = session_cookie(&h).expect("a cookie for the sibling");
        let body = whoami(
            &base,
            &[("host", "account.example"), ("cookie", &cookie(&alias))],
        )
        .await;
        assert_eq!(field(&body, "user"), "alice", "{store}");
    }
}

/// Follows the shop's link to the account host as a browser would: the sibling's token.
async fn hand_off(base: &str, shop_token: &str) -> String {
    let code = code_for_account(base, shop_token).await;
    // The code is filed as the page streams out; a person's click comes later than this.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, h, _) = get(
        base,
        &format!("/me;sghandoff={code}"),
        &[
            ("host", "account.example"),
            ("referer", "http://shop.example/home"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ],
    )
    .await;
    session_cookie(&h).unwrap_or_else(|| panic!("the handoff gave no token: {h:?}"))
}

#[tokio::test]
async fn a_handoff_never_replaces_a_session_the_client_already_has() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let gw = gateway(&siblings(&app, &sessions)).await;
        let base = gw.url("web", "");
        // The victim, logged in on the account host.
        let (_, h, _) = get(&base, "/login?user=victim", &[("host", "account.example")]).await;
        let victim = session_cookie(&h).unwrap();
        // Mallory's code, from her own session on the shop, clicked by the victim.
        let (_, h, _) = get(&base, "/login?user=mallory", &[("host", "shop.example")]).await;
        let mallory = session_cookie(&h).unwrap();
        let code = code_for_account(&base, &mallory).await;
        let (_, h, _) = get(
            &base,
            &format!("/me;sghandoff={code}"),
            &[
                ("host", "account.example"),
                ("cookie", &cookie(&victim)),
                ("referer", "http://shop.example/home"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
            ],
        )
        .await;
        assert!(
            session_cookie(&h).is_none(),
            "{store}: the victim's session was replaced"
        );
        let body = whoami(
            &base,
            &[("host", "account.example"), ("cookie", &cookie(&victim))],
        )
        .await;
        assert_eq!(field(&body, "user"), "victim", "{store}: {body}");
    }
}

#[tokio::test]
async fn a_handoff_alias_ends_with_the_session_and_with_its_regenerate() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let gw = gateway(&siblings(&app, &sessions)).await;
        let base = gw.url("web", "");
        let acct = |t: &str| {
            vec![
                ("host", "account.example"),
                ("cookie", Box::leak(cookie(t).into_boxed_str()) as &str),
            ]
        };
        // A regenerate on the shop: the account's alias is the old id's, read-only, then dead.
        let (_, h, _) = get(&base, "/login?user=alice", &[("host", "shop.example")]).await;
        let shop = session_cookie(&h).unwrap();
        let alias = hand_off(&base, &shop).await;
        let (_, h, _) = get(
            &base,
            "/regen",
            &[("host", "shop.example"), ("cookie", &cookie(&shop))],
        )
        .await;
        let shop2 = session_cookie(&h).expect("regenerated");
        get(&base, "/set?user=mallory", &acct(&alias)).await;
        let body = whoami(
            &base,
            &[("host", "shop.example"), ("cookie", &cookie(&shop2))],
        )
        .await;
        assert_eq!(
            field(&body, "user"),
            "alice",
            "{store}: written through the old alias"
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let body = whoami(&base, &acct(&alias)).await;
        assert_ne!(
            field(&body, "status"),
            "active",
            "{store}: the alias outlived the regenerate"
        );
        // A logout on the shop ends the account's alias at once.
        let alias = hand_off(&base, &shop2).await;
        get(
            &base,
            "/logout",
            &[("host", "shop.example"), ("cookie", &cookie(&shop2))],
        )
        .await;
        let body = whoami(&base, &acct(&alias)).await;
        assert_ne!(
            field(&body, "status"),
            "active",
            "{store}: the alias outlived the logout"
        );
    }
}

#[tokio::test]
async fn regenerate_and_destroy_work_through_a_sibling_alias() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let gw = gateway(&siblings(&app, &sessions)).await;
        let base = gw.url("web", "");
        let (_, h, _) = get(&base, "/login?user=alice", &[("host", "shop.example")]).await;
        let shop = session_cookie(&h).unwrap();
        let alias = hand_off(&base, &shop).await;
        // A login on the account host, through the alias: a new token, the same session.
        let (_, h, _) = get(
            &base,
            "/login?user=alice2",
            &[("host", "account.example"), ("cookie", &cookie(&alias))],
        )
        .await;
        let alias2 = session_cookie(&h).unwrap_or_else(|| panic!("{store}: no new token"));
        assert_ne!(alias2, alias);
        let body = whoami(
            &base,
            &[("host", "account.example"), ("cookie", &cookie(&alias2))],
        )
        .await;
        assert_eq!(field(&body, "user"), "alice2", "{store}: {body}");
        // The alias's holder does not follow it into the new session.
        let body = whoami(
            &base,
            &[("host", "account.example"), ("cookie", &cookie(&alias))],
        )
        .await;
        assert_ne!(field(&body, "user"), "alice2", "{store}: {body}");
        // A logout through the new alias ends the session everywhere.
        get(
            &base,
            "/logout",
            &[("host", "account.example"), ("cookie", &cookie(&alias2))],
        )
        .await;
        for (host, t) in [("account.example", &alias2), ("shop.example", &shop)] {
            let body = whoami(&base, &[("host", host), ("cookie", &cookie(t))]).await;
            assert_ne!(field(&body, "status"), "active", "{store} {host}: {body}");
        }
    }
}

#[tokio::test]
async fn a_page_mints_a_bounded_number_of_handoff_codes() {
    let app = App::start().await;
    let yaml = siblings(&app, "{ secret_file: session.keys }");
    let links = r#"<a href="http://account.example/x">x</a>"#.repeat(200);
    app.page("/many", Page::html(&links));
    let gw = gateway(&yaml).await;
    let base = gw.url("web", "");
    let (_, h, _) = get(&base, "/login", &[("host", "shop.example")]).await;
    let token = session_cookie(&h).unwrap();
    let (_, _, page) = get(
        &base,
        "/many",
        &[("host", "shop.example"), ("cookie", &cookie(&token))],
    )
    .await;
    let codes = page.matches("sghandoff=").count();
    assert!((1..=16).contains(&codes), "{codes} codes on one page");
}

#[tokio::test]
async fn a_page_hands_no_client_someone_elses_token_or_code() {
    let app = App::start().await;
    // Mallory's token and a code of hers, as a comment on the shop's page would hold them.
    let (_gw, base, mallory, code) = mallorys_token_and_code(&app).await;
    app.page(
        "/comments",
        Page::html(&format!(
            r#"<a id=t1 href="/x;sgsid={mallory}">1</a><a id=t2 href="http://shop.example/x?a=1&amp;sgsid={mallory}">2</a><a id=c1 href="http://account.example/me;sghandoff={code}">3</a><a id=c2 href="//account.example/me?sghandoff={code}&amp;b=2">4</a><form action="/f;sgsid={mallory}"><button formaction="/g;sgsid={mallory}">go</button></form>"#
        ))
        .with("location", &format!("/next;sgsid={mallory}")),
    );
    // To a visitor without a session (who would take a URL token), and to one with a cookie.
    for cookie in [None, Some(format!("sg={mallory}"))] {
        let mut headers = vec![("host", "shop.example")];
        if let Some(c) = &cookie {
            headers.push(("cookie", c.as_str()));
        }
        let (_, h, page) = get(&base, "/comments", &headers).await;
        assert!(!page.contains(&mallory[..20]), "{cookie:?}: {page}");
        assert!(!page.contains(&code), "{cookie:?}: {page}");
        let location = h
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(!location.contains(&mallory[..20]), "{location}");
    }
}

#[tokio::test]
async fn a_page_hides_no_one_elses_token_in_a_frame_an_object_svg_or_a_form() {
    let app = App::start().await;
    let (_gw, base, mallory, code) = mallorys_token_and_code(&app).await;
    let m = &mallory;
    app.page(
        "/corners",
        Page::html(&format!(
            r#"<object data="/o;sgsid={m}"></object><embed src="/e?sgsid={m}">
<svg><a xlink:href="/s;sgsid={m}"><text>s</text></a><a XLINK:HREF="http://account.example/me;sghandoff={code}"><text>t</text></a></svg>
<iframe srcdoc="<a href=/f;sgsid={m}>f</a><a href=&quot;/g;&amp;#115;gsid={m}&quot;>g</a><iframe srcdoc='<a href=/h?sgsid={m}>h</a>'></iframe>"></iframe>
<noscript><a href="/n;sgsid={m}">n</a><a href="//account.example/me?sghandoff={code}">c</a><meta http-equiv=refresh content="0;url=/r?sgsid={m}"></noscript>
<iframe srcdoc="<meta name=referrer content=no-referrer><meta http-equiv=refresh content='0;url=/account;sgsid={m}'>"></iframe>
<form action="/search"><input type=hidden name=sgsid value="{m}"><input name="&#115;gsid" value="{m}"><button name=sghandoff value="{code}">go</button><select name=sgsid><option>{m}</option></select></form>"#
        )),
    );
    // To a visitor without a session (who would take a URL token), and to one with a cookie.
    for cookie in [None, Some(format!("sg={mallory}"))] {
        let mut headers = vec![("host", "shop.example")];
        if let Some(c) = &cookie {
            headers.push(("cookie", c.as_str()));
        }
        let (_, _, page) = get(&base, "/corners", &headers).await;
        for no_scripts in [false, true] {
            for a in super::corpus::attributes_of_every_document(&page, no_scripts) {
                let what = format!("{cookie:?}, scripts {}: {a:?} in {page}", !no_scripts);
                if a.name == "srcdoc" || a.name == "value" {
                    continue;
                }
                assert!(!a.value.contains(&mallory[..20]), "{what}");
                assert!(!a.value.contains(&code), "{what}");
                // A GET form's field named like the parameter would put it in the query.
                if a.name == "name" {
                    assert!(!matches!(a.value.as_str(), "sgsid" | "sghandoff"), "{what}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_link_on_a_url_session_page_cannot_move_its_reader_into_another_session() {
    for (store, sessions) in stores() {
        let app = App::start().await;
        let url_route =
            "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }";
        for user in ["mallory", "victim", "victim2", "again"] {
            app.page(&format!("/signin/{user}"), Page::sign_in(user));
        }
        let gw = gateway(&config(&app, &[url_route], &sessions)).await;
        let base = gw.url("web", "");
        let shop = |target: String, referer: Option<String>| {
            let base = base.clone();
            async move {
                let mut headers = vec![("host", "shop.example".to_owned())];
                headers.extend(referer.map(|r| ("referer", r)));
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                get(&base, &target, &headers).await
            }
        };
        // The token a sign-in's redirect carries.
        let signed_in = |h: http::HeaderMap| {
            let location = h["location"].to_str().unwrap().to_owned();
            location.split("sgsid=").nth(1).unwrap()[..64].to_owned()
        };
        let user = |body: String| field(&body, "user").to_owned();
        // Mallory's token, and the victim's own session, both by URL.
        let mallory = signed_in(shop("/signin/mallory".into(), None).await.1);
        let victim = signed_in(shop("/signin/victim".into(), None).await.1);
        // A script on the victim's page built a link with Mallory's token; the browser sends
        // the page's URL (the same origin: all of it) as Referer. Or spelled in the query.
        let page = format!("http://shop.example/page;sgsid={victim}");
        for (target, referer) in [
            (format!("/whoami;sgsid={mallory}"), page.clone()),
            (
                format!("/whoami?sgsid={mallory}"),
                format!("http://shop.example/page?a=1&sgsid={victim}"),
            ),
        ] {
            let body = shop(target, Some(referer)).await.2;
            assert_ne!(user(body.clone()), "mallory", "{store}: {body}");
        }
        // The victim's own links work; so does a login's redirect, whose Referer still names
        // the token from before the regenerate (within its grace); and one whose Referer
        // names a session that is gone (a client logging in again after it expired).
        let body = shop(format!("/whoami;sgsid={victim}"), Some(page.clone()))
            .await
            .2;
        assert_eq!(user(body.clone()), "victim", "{store}: {body}");
        let renewed = signed_in(
            shop(
                format!("/signin/victim2;sgsid={victim}"),
                Some(page.clone()),
            )
            .await
            .1,
        );
        assert_ne!(renewed, victim, "{store}");
        let body = shop(format!("/whoami;sgsid={renewed}"), Some(page)).await.2;
        assert_eq!(user(body.clone()), "victim2", "{store}: {body}");
        shop(format!("/logout;sgsid={renewed}"), None).await;
        let gone = format!("http://shop.example/page;sgsid={renewed}");
        let again = signed_in(shop("/signin/again".into(), Some(gone.clone())).await.1);
        let body = shop(format!("/whoami;sgsid={again}"), Some(gone)).await.2;
        assert_eq!(user(body.clone()), "again", "{store}: {body}");
    }
}

#[tokio::test]
async fn a_page_is_never_shown_at_a_url_whose_token_does_not_count() {
    let app = App::start().await;
    app.page("/signin", Page::sign_in("victim"));
    let gw = gateway(&config(
        &app,
        &[
            "{ name: c, match: { path_prefix: /c }, upstream: app }",
            "{ name: app, match: { path_prefix: / }, upstream: app, session: { tracking: url } }",
        ],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    let host = ("host", "shop.example");
    let (_, h, _) = get(&base, "/signin", &[host]).await;
    let mallory = h["location"]
        .to_str()
        .unwrap()
        .split("sgsid=")
        .nth(1)
        .unwrap()[..64]
        .to_owned();
    // Each way a URL token does not count: another site's link, a client that keeps
    // cookies, a route that tracks by cookie, a token that is not ours.
    for (target, extra, clean) in [
        (
            format!("/page;sgsid={mallory}"),
            ("sec-fetch-site", "cross-site"),
            "/page",
        ),
        (
            format!("/page?sgsid={mallory}"),
            ("referer", "http://other.example/"),
            "/page",
        ),
        (
            format!("/page;sgsid={mallory}"),
            ("cookie", "sg_probe=1"),
            "/page",
        ),
        (
            format!("/c/page;sgsid={mallory}"),
            ("x-nothing", "1"),
            "/c/page",
        ),
        (
            "/page;sgsid=not-a-token-of-ours".to_owned(),
            ("x-nothing", "1"),
            "/page",
        ),
    ] {
        let (status, h, _) = get(&base, &target, &[host, extra]).await;
        assert_eq!(status, 302, "{target} {extra:?}");
        assert_eq!(
            h["location"].to_str().unwrap(),
            format!("http://shop.example{clean}"),
            "{target} {extra:?}"
        );
    }
    // Another method is not redirected: its response sends no Referer at all, so the next
    // request cannot carry the token in it.
    let resp = client()
        .post(format!("{base}/page;sgsid={mallory}"))
        .header("host", "shop.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    // A client that holds its session in our cookie (from the cookie route) keeps it here:
    // its links get no token, and a token in its URL sends it to the URL without it.
    app.page(
        "/c/signin",
        Page::html("signed in").with("x-session-set", "user=carol"),
    );
    app.page("/links", Page::html(r#"<a id=x href="/x">x</a>"#));
    let (_, h, _) = get(&base, "/c/signin", &[host]).await;
    let carol = session_cookie(&h).unwrap();
    let carols = cookie(&carol);
    let (_, _, page) = get(&base, "/links", &[host, ("cookie", &carols)]).await;
    assert!(!page.contains("sgsid"), "{page}");
    let body = whoami(&base, &[host, ("cookie", &carols)]).await;
    assert_eq!(field(&body, "user"), "carol", "{body}");
    let (status, h, _) = get(
        &base,
        &format!("/links;sgsid={carol}"),
        &[host, ("cookie", &carols)],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(h["location"], "http://shop.example/links");
    // So the victim's own session, started on the page it was sent to, is never refused
    // for a Referer that names Mallory's token: no page of the victim's had it.
    let (_, h, _) = get(
        &base,
        "/signin",
        &[host, ("referer", "http://shop.example/page")],
    )
    .await;
    let victim = h["location"]
        .to_str()
        .unwrap()
        .split("sgsid=")
        .nth(1)
        .unwrap()[..64]
        .to_owned();
    let referer = format!("http://shop.example/home;sgsid={victim}");
    let (_, _, body) = get(
        &base,
        &format!("/whoami;sgsid={victim}"),
        &[host, ("referer", &referer)],
    )
    .await;
    assert_eq!(field(&body, "user"), "victim", "{body}");
}

/// The siblings of `redirects_siblings_with_url` over `app`, and a token of Mallory's with a
/// handoff code of hers: the gateway, its URL, the token, the code.
async fn mallorys_token_and_code(app: &App) -> (Gateway, String, String, String) {
    let gw = gateway(&redirects_siblings_with_url(app)).await;
    let base = gw.url("web", "");
    let (_, h, _) = get(&base, "/login?user=mallory", &[("host", "shop.example")]).await;
    let mallory = session_cookie(&h).unwrap();
    let code = code_for_account(&base, &mallory).await;
    (gw, base, mallory, code)
}

/// The siblings of `redirects::siblings`, the shop tracking by URL.
fn redirects_siblings_with_url(app: &App) -> String {
    siblings(app, "{ secret_file: session.keys }").replace(
        "session: { share_with: [account.example] }",
        "session: { share_with: [account.example], tracking: auto }",
    )
}

/// A gateway on a Redis of the test's own (which the test freezes), serving stale copies.
async fn gateway_on_own_redis(app: &App) -> (Gateway, crate::redis_servers::OwnRedis) {
    let port = crate::support::free_port();
    let redis = crate::redis_servers::OwnRedis::start(port);
    crate::redis_servers::wait_until(Duration::from_secs(5), "redis up", || {
        crate::redis_servers::redis_cli(port, &["PING"]).is_some_and(|r| r.trim() == "PONG")
    });
    let sessions = format!(
        "{{ secret_file: session.keys, regenerate_grace: 1s, store: {{ kind: redis, redis: {{ url: \"redis://127.0.0.1:{port}\", timeout: 300ms, on_error: serve_stale }} }} }}"
    );
    (
        gateway(&config(app, &[COOKIE_ROUTE], &sessions)).await,
        redis,
    )
}

#[tokio::test]
async fn a_login_or_a_logout_while_redis_does_not_answer_never_keeps_the_old_token_logged_in() {
    let app = App::start().await;
    let (gw, redis) = gateway_on_own_redis(&app).await;
    let base = gw.url("web", "");
    let as_ = |t: &str| cookie(t);
    // A pre-login session (planted, say), read once so the gateway keeps a copy.
    let (_, h, _) = get(&base, "/set?cart=1", &[]).await;
    let planted = session_cookie(&h).unwrap();
    whoami(&base, &[("cookie", &as_(&planted))]).await;
    // A session that will log out.
    let (_, h, _) = get(&base, "/login?user=leaving", &[]).await;
    let leaving = session_cookie(&h).unwrap();
    whoami(&base, &[("cookie", &as_(&leaving))]).await;

    redis.signal("STOP");
    // The login cannot regenerate: the session ends rather than become the victim's under a
    // token someone else holds.
    let (_, h, _) = get(&base, "/login?user=victim", &[("cookie", &as_(&planted))]).await;
    assert!(set_cookies(&h).contains(&"sg=".to_owned()), "{h:?}");
    // The logout is not lost.
    get(&base, "/logout", &[("cookie", &as_(&leaving))]).await;
    for t in [&planted, &leaving] {
        let body = whoami(&base, &[("cookie", &as_(t))]).await;
        assert_ne!(
            field(&body, "status"),
            "active",
            "during the outage: {body}"
        );
    }
    redis.signal("CONT");
    // Redis answers again, and still has the session: until the queued logout is replayed,
    // the logout holds all the same.
    let body = whoami(&base, &[("cookie", &as_(&leaving))]).await;
    assert_ne!(
        field(&body, "status"),
        "active",
        "before the logout's replay: {body}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for t in [&planted, &leaving] {
        let body = whoami(&base, &[("cookie", &as_(t))]).await;
        assert_ne!(field(&body, "status"), "active", "after the outage: {body}");
        assert_ne!(field(&body, "user"), "victim", "{body}");
    }
}
