//! The sealed-cookie store end to end: the whole session in the client's cookie, any gateway
//! with the secret serves it, none keeps state.

use crate::sessions::{Client, field, shop};
use crate::support::*;

const SECRET: &str = "sealed-secret-of-the-fleet-0123456789abcdef\n";

/// A gateway in front of `b` with the sealed-cookie store keyed by `secrets` (newest first).
async fn sealed_gateway(b: &Backend, secrets: &str) -> Gateway {
    gateway_with_secret(b, secrets, "{ kind: cookie, cookie: { max_bytes: 600 } }").await
}

#[tokio::test]
async fn two_gateways_that_share_only_the_secret_serve_one_sealed_session() {
    let b = shop().await;
    let (a, bb) = (
        sealed_gateway(&b, SECRET).await,
        sealed_gateway(&b, SECRET).await,
    );
    let mut on_a = Client::new(&a);
    on_a.get("/login").await;
    let sealed = on_a.cookie.clone().expect("a sealed cookie");
    assert!(
        !sealed.contains("alice"),
        "the cookie is sealed, not encoded"
    );
    // The backend never sees the cookie.
    assert!(
        b.last()
            .headers
            .get("cookie")
            .is_none_or(|c| !c.to_str().unwrap().contains("sg="))
    );

    // Carried to the other gateway, which has no state of it.
    let mut on_b = Client {
        base: bb.url("web", ""),
        ..on_a
    };
    let (body, _) = on_b.get("/cart").await;
    assert_eq!(field(&body, "user"), "alice");
    let (body, h) = on_b.get("/whoami").await;
    assert_eq!(
        (field(&body, "status"), field(&body, "cart")),
        ("active", "1")
    );
    // A read that changes nothing sets no cookie.
    assert!(h.get("set-cookie").is_none());

    // Logout clears the cookie on the client.
    let copied = on_b.cookie.clone().unwrap();
    let (_, h) = on_b.get("/logout").await;
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (body, _) = on_b.get("/whoami").await;
    assert_eq!(field(&body, "status"), "none");
    // The trade-off of keeping no state: a copy of the cookie still opens until it expires.
    let mut thief = Client::new(&a);
    thief.cookie = Some(copied);
    let (body, _) = thief.get("/whoami").await;
    assert_eq!(field(&body, "user"), "alice");
}

#[tokio::test]
async fn a_tampered_sealed_cookie_counts_as_none_and_is_cleared() {
    let b = shop().await;
    let gw = sealed_gateway(&b, SECRET).await;
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let mut sealed = c.cookie.clone().unwrap().into_bytes();
    let i = sealed.len() / 2;
    sealed[i] = if sealed[i] == b'A' { b'B' } else { b'A' };
    c.cookie = Some(String::from_utf8(sealed).unwrap());
    let (body, h) = c.get("/whoami").await;
    assert_eq!(field(&body, "status"), "none");
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn after_a_secret_rotation_old_cookies_still_open_and_are_resealed_with_the_new_secret() {
    let b = shop().await;
    let before = sealed_gateway(&b, SECRET).await;
    let new = "a-newer-sealed-secret-0123456789abcdef0123\n";
    let after = sealed_gateway(&b, &format!("{new}{SECRET}")).await;
    let only_new = sealed_gateway(&b, new).await;
    let mut c = Client::new(&before);
    c.get("/login").await;
    c.base = after.url("web", "");
    let (body, _) = c.get("/cart").await;
    assert_eq!(field(&body, "user"), "alice");
    // The cart changed the session: it went out sealed with the newest secret, which a
    // gateway that knows only that secret opens.
    c.base = only_new.url("web", "");
    let (body, _) = c.get("/whoami").await;
    assert_eq!((field(&body, "user"), field(&body, "cart")), ("alice", "1"));
}

#[tokio::test]
async fn a_directive_that_would_outgrow_max_bytes_is_refused_and_the_cookie_stays_small() {
    let b = shop().await;
    let gw = sealed_gateway(&b, SECRET).await;
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let big = "x".repeat(700);
    let (_, h) = c.get(&format!("/set/note/{big}")).await;
    assert!(h.get("set-cookie").is_none(), "nothing changed");
    let (body, h) = c.get("/set/cart/7").await;
    assert_eq!(field(&body, "user"), "alice");
    let cookie = h["set-cookie"].to_str().unwrap();
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("sg=")
        .unwrap();
    assert!(value.len() <= 600, "{} bytes", value.len());
    let (body, _) = c.get("/attrs").await;
    assert_eq!(field(&body, "attrs"), "2", "{body}");
}

#[tokio::test]
async fn the_admin_api_says_sealed_sessions_cannot_be_revoked() {
    let b = shop().await;
    let gw = sealed_gateway(&b, SECRET).await;
    let admin = gw.admin();
    let resp = client()
        .delete(format!("http://{admin}/sessions?attr=user:alice"))
        .bearer_auth("admin-token-for-tests-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 501);
    assert!(resp.text().await.unwrap().contains("retire the secret"));
}
