//! Several gateways sharing one set of sessions through Redis (the machine's, on
//! 127.0.0.1:6379; a key prefix per test).

use crate::support::*;

/// A gateway in front of `b` whose sessions live in Redis under `prefix`, signed with the
/// shared secret.
async fn gateway(b: &Backend, prefix: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("session.keys"),
        "shared-secret-of-the-fleet-0123456789abcdef\n",
    )
    .unwrap();
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  store:\n    kind: redis\n    redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }}\n"
        ),
    );
    Gateway::start_in(&yaml, dir).await
}

/// The backend: logs in, counts a cart, logs out, and says what session it saw.
async fn shop() -> Backend {
    Backend::start(|req| async move {
        let get = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let mut r = text(
            200,
            &format!(
                "status={} user={} cart={}",
                get("x-session-status"),
                get("x-session-attr-user"),
                get("x-session-attr-cart")
            ),
        );
        let h = r.headers_mut();
        match req.uri().path() {
            "/login" => {
                h.append("x-session-set", "user=alice".parse().unwrap());
            }
            "/cart" => {
                let n: u32 = get("x-session-attr-cart").parse().unwrap_or(0);
                h.append("x-session-set", format!("cart={}", n + 1).parse().unwrap());
            }
            "/logout" => {
                h.append("x-session-action", "destroy".parse().unwrap());
            }
            _ => {}
        }
        r
    })
    .await
}

#[tokio::test]
async fn login_on_one_gateway_cart_on_another_logout_on_a_third() {
    let b = shop().await;
    let mut tag = [0u8; 8];
    aws_lc_rs::rand::fill(&mut tag).unwrap();
    let prefix = format!(
        "sgtest:{}:",
        tag.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    let (a, bb, c) = (
        gateway(&b, &prefix).await,
        gateway(&b, &prefix).await,
        gateway(&b, &prefix).await,
    );
    let http = client();
    let resp = http.get(a.url("web", "/login")).send().await.unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let on = |g: &Gateway, path: &str| {
        http.get(g.url("web", path))
            .header("cookie", cookie.clone())
            .send()
    };
    let body = on(&bb, "/cart").await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=active user=alice cart=-");
    let body = on(&c, "/whoami").await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=active user=alice cart=1");
    on(&c, "/logout").await.unwrap();
    for g in [&a, &bb, &c] {
        let body = on(g, "/whoami").await.unwrap().text().await.unwrap();
        assert_eq!(body, "status=expired user=- cart=-");
    }
}
