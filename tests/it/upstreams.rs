use std::time::Duration;

use crate::support::*;

async fn bodies(gw: &Gateway, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            c.get(gw.url("web", "/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn round_robin_spreads_requests_by_weight() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let yaml = format!(
        "listeners: [ {{ name: web, bind: \"127.0.0.1:0\" }} ]
upstreams:
  app:
    servers: [ {{ url: \"{}\", weight: 3 }}, {{ url: \"{}\", weight: 1 }} ]
routes: [ {{ match: {{ path_prefix: / }}, upstream: app }} ]
",
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&yaml).await;
    let got = bodies(&gw, 40).await;
    assert_eq!(got.iter().filter(|s| *s == "a").count(), 30);
    assert_eq!(got.iter().filter(|s| *s == "b").count(), 10);
}

#[tokio::test]
async fn least_connections_avoids_the_busy_server() {
    let server = |name: &'static str| {
        Backend::start(move |req| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            text(200, name)
        })
    };
    let (a, b) = (server("a").await, server("b").await);
    let gw = Gateway::start(&simple_config(
        &[a.addr, b.addr],
        "    balance: least_connections",
        "",
    ))
    .await;
    // One long request occupies one server; every quick request meanwhile goes to the other.
    let (c, url) = (client(), gw.url("web", "/slow"));
    let long = tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() });
    let started = eventually(Duration::from_secs(2), || async {
        a.requests().len() + b.requests().len() == 1
    })
    .await;
    assert!(started);
    let busy = if a.requests().len() == 1 { "a" } else { "b" };
    let got = bodies(&gw, 6).await;
    assert!(
        got.iter().all(|s| s != busy),
        "{busy} was busy, yet got {got:?}"
    );
    assert_eq!(long.await.unwrap(), busy);
}

#[tokio::test]
async fn failing_server_is_ejected_then_readmitted() {
    // Held, not released: the test revives this very address later.
    let dead_socket = reserved_port();
    let dead = dead_socket.local_addr().unwrap();
    let live = Backend::named("live").await;
    let gw = Gateway::start(&simple_config(
        &[dead, live.addr],
        "    retries: 1\n    passive: { max_failures: 2, eject_for: 500ms }",
        "",
    ))
    .await;
    // Every request succeeds (retried on the live server); after two failures the dead server
    // is ejected and stops costing a connection attempt.
    assert!(bodies(&gw, 6).await.iter().all(|s| s == "live"));
    let attempts_before = live.requests().len();
    assert_eq!(attempts_before, 6);

    // Bring the dead address back to life after the ejection ends: it gets traffic again.
    let revived = dead_socket.listen(1024).unwrap();
    let revived_backend = Backend::start_on(revived, "revived").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = bodies(&gw, 4).await;
    assert!(got.iter().any(|s| s == "revived"), "{got:?}");
    drop(revived_backend);
}

#[tokio::test]
async fn upstream_connections_are_reused_across_requests() {
    let b = Backend::start(|req| async move {
        match req.uri().path() {
            "/empty" => text(204, ""),
            _ => text(200, "body"),
        }
    })
    .await;
    let gw = Gateway::start(&simple_config(&[b.addr], "", "")).await;
    let c = client();
    for path in ["/a", "/empty", "/b", "/c"] {
        let resp = c.get(gw.url("web", path)).send().await.unwrap();
        assert!(resp.status().is_success());
        resp.bytes().await.unwrap();
    }
    let resp = c.head(gw.url("web", "/d")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.requests().len(), 5);
    assert_eq!(
        b.connections(),
        1,
        "every request opened a new upstream connection"
    );
}

#[tokio::test]
async fn idle_upstream_connection_closed_by_the_backend_is_replaced() {
    let b = Backend::named("fresh").await;
    let gw = Gateway::start(&simple_config(&[b.addr], "    retries: 0", "")).await;
    let c = client();
    assert_eq!(bodies(&gw, 1).await, ["fresh"]);
    // The test backend closes keep-alive connections idle for a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = c.get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.connections(), 2);
}

#[tokio::test]
async fn https_backend_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "backend", &["backend.test"]);
    let b = Backend::start_tls(&cert, "over tls").await;
    let yaml = |tls: &str| {
        format!(
            "listeners: [ {{ name: web, bind: \"127.0.0.1:0\" }} ]
upstreams:
  app:
    servers: [ {{ url: \"https://{}\" }} ]
    retries: 0
{tls}
routes: [ {{ match: {{ path_prefix: / }}, upstream: app }} ]
",
            b.addr
        )
    };
    let trusted = yaml(&format!(
        "    tls: {{ ca: \"{}\", server_name: backend.test }}",
        cert.cert.display()
    ));
    let gw = Gateway::start(&trusted).await;
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "over tls");
    assert_eq!(b.last().headers["x-forwarded-proto"], "http");

    // Without the CA, the public roots do not vouch for the backend: no request reaches it.
    let seen_before = b.requests().len();
    let gw = Gateway::start(&yaml("")).await;
    let resp = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(b.requests().len(), seen_before);
}

/// A server that answers with its name, and gives a session on `/login`.
async fn named_with_login(name: &'static str) -> Backend {
    Backend::start(move |req| async move {
        let mut r = text(200, name);
        if req.uri().path() == "/login" {
            r.headers_mut()
                .insert("x-session-set", "user=u".parse().unwrap());
        }
        r
    })
    .await
}

#[tokio::test]
async fn session_affinity_keeps_each_session_on_one_server_and_skips_a_dead_one() {
    // Two live servers and one that refuses connections.
    let (a, b) = (named_with_login("a").await, named_with_login("b").await);
    let dead = dead_addr().await;
    let gw = Gateway::start(&simple_config(
        &[a.addr, b.addr, dead],
        "    balance: session_affinity\n    retries: 2",
        "sessions: {}",
    ))
    .await;
    let http = client();
    let mut used = std::collections::HashSet::new();
    for _ in 0..12 {
        let login = http.get(gw.url("web", "/login")).send().await.unwrap();
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let resp = http
                .get(gw.url("web", "/who"))
                .header("cookie", cookie.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            seen.insert(resp.text().await.unwrap());
        }
        assert_eq!(seen.len(), 1, "one session went to {seen:?}");
        used.extend(seen);
    }
    // Sessions spread over both live servers (all on one: about 1 chance in 2,000).
    assert_eq!(used.len(), 2, "{used:?}");
}

#[tokio::test]
async fn a_response_over_the_gateways_header_limit_is_a_502_not_a_mark_against_the_server() {
    let b = Backend::start(|req| async move {
        let mut r = text(200, "fine");
        if req.uri().path() == "/many" {
            for i in 0..150 {
                r.headers_mut().insert(
                    format!("x-h{i}").parse::<http::HeaderName>().unwrap(),
                    "v".parse().unwrap(),
                );
            }
        }
        r
    })
    .await;
    let gw = Gateway::start(&simple_config(
        &[b.addr],
        "    passive: { max_failures: 2, eject_for: 10s }",
        "",
    ))
    .await;
    let http = client();
    for _ in 0..4 {
        let r = http.get(gw.url("web", "/many")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert!(r.text().await.unwrap().contains("response head"));
    }
    // The only server is not ejected: its next ordinary answer goes through.
    let r = http.get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fine");
}
