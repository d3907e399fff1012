//! Class 14 and the rest of the list: the admin API reads its query as a form does and
//! compares its token in constant time; a malformed PROXY header from a trusted peer closes
//! the connection; the memory store keeps within a byte budget.

use std::time::Duration;

use super::*;

#[tokio::test]
async fn revocation_by_attribute_decodes_the_query_as_a_form_does() {
    let app = App::start().await;
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let base = gw.url("web", "");
    let admin = format!("http://{}", gw.admin());
    for (user, query) in [
        ("alice%20smith", "attr=user:alice%20smith"),
        ("alice%20smith", "attr=user:alice+smith"),
        ("a%26b%3Dc", "attr=user%3Aa%26b%3Dc"),
        ("bob", "x=1&attr=user:bob"),
        ("o%3Aneill", "attr=user:o%3Aneill"),
    ] {
        let (_, h, _) = get(&base, &format!("/set?user={user}"), &[]).await;
        let token = session_cookie(&h).unwrap();
        let resp = client()
            .delete(format!("{admin}/sessions?{query}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(json["deleted"], 1, "{query}: {json}");
        let (_, _, body) = get(&base, "/whoami", &[("cookie", &format!("sg={token}"))]).await;
        assert_ne!(field(&body, "status"), "active", "{query}");
    }
}

#[tokio::test]
async fn the_admin_token_is_checked_whole_and_the_scheme_in_any_case() {
    let app = App::start().await;
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app }"],
        "{ secret_file: session.keys }",
    ))
    .await;
    let url = format!("http://{}/sessions/nokey", gw.admin());
    let status = |auth: String| {
        let url = url.clone();
        async move {
            client()
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for wrong in [
        String::new(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        format!("Bearer {ADMIN_TOKEN}x"),
        format!("Bearer x{ADMIN_TOKEN}"),
        format!("Basic {ADMIN_TOKEN}"),
        format!("Bearer {}", ADMIN_TOKEN.to_uppercase()),
    ] {
        assert_eq!(status(wrong.clone()).await, 401, "{wrong:?}");
    }
    // Authorization schemes are case-insensitive (RFC 9110 §11.1): the key is checked, 404.
    for right in [
        format!("Bearer {ADMIN_TOKEN}"),
        format!("bearer {ADMIN_TOKEN}"),
        format!("BEARER  {ADMIN_TOKEN}"),
    ] {
        assert_eq!(status(right.clone()).await, 404, "{right:?}");
    }
}

#[tokio::test]
async fn a_malformed_proxy_header_from_a_trusted_peer_closes_the_connection() {
    let app = App::start().await;
    let yaml = simple_config(&[app.backend.addr], "", "trusted_proxies: [127.0.0.1/32]").replace(
        "bind: \"127.0.0.1:0\" }",
        "bind: \"127.0.0.1:0\", proxy_protocol: true }",
    );
    let gw = Gateway::start(&yaml).await;
    let request = "GET /whoami HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    for header in [
        "PROXY TCP4 garbage here 1 2\r\n",
        "PROXY TCP4 203.0.113.7 10.0.0.1 99999 80\r\n",
        "PROXY TCP6 203.0.113.7 10.0.0.1 1 80\r\n",
        "PROXY SMTP 203.0.113.7 10.0.0.1 1 80\r\n",
        "PROXY \r\n",
    ] {
        let resp = raw_exchange(
            gw.addr("web"),
            format!("{header}{request}").as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(resp, "", "{header:?} was served: {resp}");
    }
    // UNKNOWN is the proxy's own health check: it is served as the proxy's own connection.
    let resp = raw_exchange(
        gw.addr("web"),
        format!("PROXY UNKNOWN\r\n{request}").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn the_memory_store_keeps_within_its_byte_budget() {
    let app = App::start().await;
    let gw = gateway(&config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app }"],
        "{ secret_file: session.keys, store: { kind: memory, memory: { max_sessions: 1000000, max_bytes: 256KiB } } }",
    ))
    .await;
    let base = gw.url("web", "");
    let big = "v".repeat(4000);
    let mut tokens = Vec::new();
    for _ in 0..300 {
        let (_, h, _) = get(&base, &format!("/set?big={big}"), &[]).await;
        tokens.push(session_cookie(&h).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut live = 0;
    for t in &tokens {
        let (_, _, body) = get(&base, "/whoami", &[("cookie", &format!("sg={t}"))]).await;
        if field(&body, "status") == "active" {
            live += 1;
        }
    }
    // 300 sessions of 4 KB are 1.2 MB: a quarter of a MiB holds about 60 of them.
    assert!(
        live <= 80,
        "{live} sessions of 4 KB kept in a 256 KiB budget"
    );
    assert!(live >= 1, "the store kept nothing at all");
}
