//! Configuration reloads: a good file swaps in (routes, upstreams, certificates, the admin
//! token) while requests in flight finish on the old one and sessions survive; a bad file is
//! refused and the old one keeps serving; triggers are `POST /reload`, SIGHUP and a change on
//! disk.

use std::net::SocketAddr;
use std::time::Duration;

use crate::metrics::Scrape;
use crate::sessions::{Client, shop};
use crate::support::*;

/// A gateway config with listener `web` (on `bind`), the admin listener, one route to `app`
/// and `extra` at the top level.
fn config(bind: &str, app: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: web, bind: "{bind}" }}
admin: {{ bind: "127.0.0.1:0" }}
upstreams:
  app: {{ servers: [ {{ url: "http://{app}" }} ] }}
routes:
  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}
{extra}
"#
    )
}

/// `POST /reload` on `admin`: the status and the JSON answer.
async fn reload(admin: SocketAddr) -> (u16, serde_json::Value) {
    let resp = client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

/// Writes `yaml` over the gateway's configuration file.
fn rewrite(gw: &Gateway, yaml: &str) {
    std::fs::write(gw.dir().join("gateway.yaml"), yaml).unwrap();
}

#[tokio::test]
async fn reload_switches_a_route_while_a_long_request_on_the_old_route_finishes() {
    let a = Backend::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        text(200, "A")
    })
    .await;
    let b = Backend::named("B").await;
    let gw = Gateway::start_file(
        &config("127.0.0.1:0", a.addr, ""),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let http = client();
    let web = gw.url("web", "/");
    // A keep-alive connection, open before the reload.
    assert_eq!(
        http.get(&web).send().await.unwrap().text().await.unwrap(),
        "A"
    );
    // On a connection of its own: the one above stays free for the request after the reload.
    let slow = tokio::spawn({
        let url = gw.url("web", "/slow");
        async move { get_text(&url).await }
    });
    assert!(eventually(Duration::from_secs(2), || async { a.requests().len() == 2 }).await);

    rewrite(&gw, &config("127.0.0.1:0", b.addr, ""));
    let (status, answer) = reload(gw.admin()).await;
    assert_eq!(
        (status, &answer["needs_restart"]),
        (200, &serde_json::json!([]))
    );
    let before = Scrape::from(gw.admin()).await;
    assert_eq!(
        http.get(&web).send().await.unwrap().text().await.unwrap(),
        "B"
    );
    assert_eq!(
        slow.await.unwrap(),
        "A",
        "the request in flight finished on the old route"
    );
    let after = Scrape::from(gw.admin()).await;
    let accepted = |m: &Scrape| m.get("sessiongate_connections_total", &[("listener", "web")]);
    assert_eq!(
        accepted(&after),
        accepted(&before),
        "the request after the reload came on a connection opened before it"
    );
    assert_eq!(
        after.get("sessiongate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn a_bad_reload_is_refused_with_its_problems_and_the_old_config_keeps_serving() {
    let a = Backend::named("A").await;
    let gw = Gateway::start_file(
        &config("127.0.0.1:0", a.addr, ""),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let bad = config(
        "127.0.0.1:0",
        a.addr,
        "timeouts: { drain: soon }\nlimitz: {}\n",
    );
    rewrite(&gw, &bad);
    let (status, answer) = reload(gw.admin()).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["reloaded"], false);
    let problems: Vec<&str> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("gateway.yaml:9:") && p.contains("timeouts.drain")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("limitz")),
        "{problems:?}"
    );
    let served = client().get(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(served.text().await.unwrap(), "A");
    let m = Scrape::from(gw.admin()).await;
    assert_eq!(
        m.get("sessiongate_config_reloads_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(
        m.get("sessiongate_config_reloads_total", &[("result", "ok")]),
        0.0
    );

    // A certificate that does not load is refused too, before anything changes.
    let missing = config("127.0.0.1:0", a.addr, "").replace(
        "  - { name: web, bind: \"127.0.0.1:0\" }",
        "  - { name: web, bind: \"127.0.0.1:0\" }\n  - { name: tls, bind: \"127.0.0.1:0\", tls: { certificates: [ { cert: nope.crt, key: nope.key } ] } }",
    );
    rewrite(&gw, &missing);
    let (status, answer) = reload(gw.admin()).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["problems"][0].as_str().unwrap().contains("nope.crt"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_to_new_tls_connections_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_cert(dir.path(), "old", &["localhost"]);
    let new = make_cert(dir.path(), "new", &["localhost"]);
    std::fs::copy(&old.cert, dir.path().join("site.crt")).unwrap();
    std::fs::copy(&old.key, dir.path().join("site.key")).unwrap();
    let a = Backend::named("A").await;
    let tls = "  - { name: secure, bind: \"127.0.0.1:0\", tls: { certificates: [ { cert: site.crt, key: site.key } ] } }";
    let yaml = config("127.0.0.1:0", a.addr, "").replace(
        "  - { name: web, bind: \"127.0.0.1:0\" }",
        &format!("  - {{ name: web, bind: \"127.0.0.1:0\" }}\n{tls}"),
    );
    let gw = Gateway::start_file(&yaml, dir).await;
    let addr = gw.addr("secure");
    let url = format!("https://localhost:{}/", addr.port());
    let trusts = |cert: &TestCert| tls_client(&[cert], "localhost", addr);
    assert!(trusts(&old).get(&url).send().await.is_ok());
    assert!(trusts(&new).get(&url).send().await.is_err());

    std::fs::copy(&new.cert, gw.dir().join("site.crt")).unwrap();
    std::fs::copy(&new.key, gw.dir().join("site.key")).unwrap();
    let (status, answer) = reload(gw.admin()).await;
    assert_eq!(status, 200, "{answer}");
    let resp = trusts(&new).get(&url).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "A");
    assert!(trusts(&old).get(&url).send().await.is_err());
}

#[tokio::test]
async fn sessions_survive_a_reload_and_a_moved_listener_is_reported_as_needing_a_restart() {
    let b = shop().await;
    let sessions = "sessions: { idle_timeout: 10m }";
    let gw = Gateway::start_file(
        &config("127.0.0.1:0", b.addr, sessions),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let mut c = Client::new(&gw);
    let (_, h) = c.get("/login").await;
    let (body, _) = c.get("/whoami").await;
    assert!(body.contains("status=active"), "{body} {h:?}");

    // A new route and a new address for the listener; the store's settings are the same.
    let moved = config(&format!("127.0.0.1:{}", free_port()), b.addr, sessions).replace(
        "routes:\n",
        "routes:\n  - { name: api, match: { path_prefix: /api }, upstream: app, session: off }\n",
    );
    rewrite(&gw, &moved);
    let (status, answer) = reload(gw.admin()).await;
    assert_eq!(status, 200, "{answer}");
    let restart = answer["needs_restart"].as_array().unwrap();
    assert_eq!(restart.len(), 1, "{answer}");
    assert!(
        restart[0]
            .as_str()
            .unwrap()
            .starts_with("listeners.web.bind"),
        "{answer}"
    );
    // Still on the old address, with the same session.
    let (body, _) = c.get("/whoami").await;
    assert!(body.contains("status=active user=alice"), "{body}");
    let (body, _) = c.get("/api/x").await;
    assert!(
        body.contains("status=-"),
        "the new route has no sessions: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_change_and_sighup_reload_the_real_binary() {
    let a = Backend::named("A").await;
    let b = Backend::named("B").await;
    let token_file = "admin: { bind: \"127.0.0.1:0\", token_file: admin.token }";
    let yaml =
        config("127.0.0.1:0", a.addr, "").replace("admin: { bind: \"127.0.0.1:0\" }", token_file);
    let gw = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "first-token-0123456789\n").unwrap();
        GatewayProcess::start_in(&yaml, dir)
    })
    .await
    .unwrap();
    let url = format!("http://{}/", gw.http);
    let get = || get_text(&url);
    assert_eq!(get().await, "A");

    // An editor's save: a new file renamed over the old one.
    let next =
        config("127.0.0.1:0", b.addr, "").replace("admin: { bind: \"127.0.0.1:0\" }", token_file);
    let tmp = gw.dir().join(".gateway.yaml.swp");
    std::fs::write(&tmp, next).unwrap();
    std::fs::rename(&tmp, gw.dir().join("gateway.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { get().await == "B" }).await,
        "the change on disk was not picked up"
    );
    // Once: reading the files to reload makes events too, which must not reload again.
    let admin = gw.admin.unwrap();
    let reloads = || async move {
        crate::metrics::Scrape::from(admin)
            .await
            .get("sessiongate_config_reloads_total", &[("result", "ok")])
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads().await, 1.0, "the file watch reloads in a loop");

    // The admin token file is not watched: SIGHUP makes the gateway read it again.
    std::fs::write(gw.dir().join("admin.token"), "second-token-0123456789\n").unwrap();
    let reload_with = |token: &'static str| async move {
        client()
            .post(format!("http://{admin}/reload"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(reload_with("second-token-0123456789").await, 401);
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            reload_with("second-token-0123456789").await == 200
        })
        .await,
        "SIGHUP did not reload"
    );
    assert_eq!(reload_with("first-token-0123456789").await, 401);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The file watch's reload, SIGHUP's, and the one POST /reload that got through.
    assert_eq!(reloads().await, 3.0);
}

#[tokio::test]
async fn an_unchanged_upstream_keeps_its_health_across_a_reload() {
    let a = Backend::named("A").await;
    let dead = dead_addr().await;
    let yaml = |prefix: &str| {
        config("127.0.0.1:0", a.addr, "").replace(
            "  app: { servers: [ { url: \"http://",
            &format!("  gone: {{ servers: [ {{ url: \"http://{dead}\" }} ], passive: {{ max_failures: 1, eject_for: 1m }} }}\n  app: {{ servers: [ {{ url: \"http://"),
        ).replace(
            "routes:\n",
            &format!("routes:\n  - {{ name: gone, match: {{ path_prefix: {prefix} }}, upstream: gone }}\n"),
        )
    };
    let gw = Gateway::start_file(&yaml("/gone"), tempfile::tempdir().unwrap()).await;
    let resp = client().get(gw.url("web", "/gone")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    // Only the route's prefix changes: the pool, its ejected server among it, stays.
    rewrite(&gw, &yaml("/elsewhere"));
    assert_eq!(reload(gw.admin()).await.0, 200);
    let resp = client()
        .get(gw.url("web", "/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "the server is still ejected");
    let m = Scrape::from(gw.admin()).await;
    assert_eq!(
        m.get(
            "sessiongate_upstream_ejections_total",
            &[("upstream", "gone")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_refused_reload_leaves_no_health_checks_of_its_own_running() {
    let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = checks.clone();
    let a = Backend::start(move |req| {
        let counted = counted.clone();
        async move {
            if req.uri().path() == "/healthz" {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            text(200, "A")
        }
    })
    .await;
    let gw = Gateway::start_file(
        &config("127.0.0.1:0", a.addr, ""),
        tempfile::tempdir().unwrap(),
    )
    .await;
    // One health checker runs: the pool of `app` with checks (reloaded in once).
    let with_checks = config("127.0.0.1:0", a.addr, "").replace(
        "  app: { servers: [ { url: \"http://",
        "  app: { health: { path: /healthz, interval: 100ms }, servers: [ { url: \"http://",
    );
    rewrite(&gw, &with_checks);
    assert_eq!(reload(gw.admin()).await.0, 200);
    let rate = || async {
        let before = checks.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        checks.load(std::sync::atomic::Ordering::Relaxed) - before
    };
    let one = rate().await;
    assert!(
        (5..=15).contains(&one),
        "{one} checks a second from one checker"
    );
    // A changed `app` (a new pool, with checks) and an upstream whose CA file is missing: the
    // reload is refused, and the new pool's checks must not run on.
    let refused = with_checks
        .replace("interval: 100ms }", "interval: 100ms }, retries: 1")
        .replace(
            "routes:\n",
            &format!("  broken: {{ servers: [ {{ url: \"https://{}\" }} ], tls: {{ ca: missing-ca.pem }} }}\nroutes:\n", a.addr),
        );
    rewrite(&gw, &refused);
    assert_eq!(reload(gw.admin()).await.0, 422);
    let after = rate().await;
    assert!(
        after <= one + 4,
        "{after} checks a second after the refused reload (one checker: {one})"
    );
}

#[tokio::test]
async fn a_proxy_no_longer_trusted_after_a_reload_is_not_believed_on_its_open_connection() {
    let b = Backend::named("ok").await;
    let trusted = "trusted_proxies: [ 127.0.0.1/32 ]";
    let gw = Gateway::start_file(
        &config("127.0.0.1:0", b.addr, trusted),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let http = client();
    let send = || async {
        http.get(gw.url("web", "/"))
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    send().await;
    let xff = || {
        b.last().headers["x-forwarded-for"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(xff(), "203.0.113.7, 127.0.0.1");
    rewrite(&gw, &config("127.0.0.1:0", b.addr, "trusted_proxies: []"));
    assert_eq!(reload(gw.admin()).await.0, 200);
    send().await;
    assert_eq!(
        xff(),
        "127.0.0.1",
        "the same connection's forged header was believed"
    );
}
