//! Several gateways sharing one set of sessions through Redis (the machine's, on
//! 127.0.0.1:6379; a key prefix per test).

use std::time::Duration;

use crate::redis_servers::{OwnRedis, SentinelSet, in_sync, wait_until};
use crate::support::*;

const EXPIRED: &str = "status=expired user=- cart=-";

/// A gateway in front of `b` whose sessions live in Redis under `prefix`, signed with the
/// shared secret.
async fn gateway(b: &Backend, prefix: &str) -> Gateway {
    gateway_with(b, prefix, "").await
}

/// As `gateway`, with `extra` in the `redis:` mapping.
async fn gateway_with(b: &Backend, prefix: &str, extra: &str) -> Gateway {
    let store = format!(
        "{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\"{extra} }} }}"
    );
    gateway_with_secret(b, "shared-secret-of-the-fleet-0123456789abcdef\n", &store).await
}

/// `name=value` of the response's session cookie.
fn session_cookie(resp: &reqwest::Response) -> String {
    cookie_pair(resp)
}

/// Logs in on `g` as soon as its Redis answers (a login that gets a cookie); the cookie.
pub(crate) async fn login_once_up(g: &Gateway, fail: &str) -> String {
    let http = client();
    let up = eventually(Duration::from_secs(10), || {
        let req = http.get(g.url("web", "/login")).send();
        async move {
            req.await
                .is_ok_and(|r| r.headers().contains_key("set-cookie"))
        }
    })
    .await;
    assert!(up, "{fail}");
    session_cookie(&http.get(g.url("web", "/login")).send().await.unwrap())
}

/// A gateway in front of `b` on the Redis that `where_` names (`url: ...`, `sentinel: ...`),
/// with a 300 ms timeout and no near cache, and the cookie of a session logged in there with
/// one item in its cart (`fail` says what it means when no login gets through).
async fn shopper_on(b: &Backend, where_: &str, fail: &str) -> (Gateway, String) {
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  store:\n    kind: redis\n    redis: {{ {where_}, timeout: 300ms, near_cache: {{ ttl: 0s }} }}\n"
        ),
    );
    let gw = Gateway::start_in(&yaml, tempfile::tempdir().unwrap()).await;
    let cookie = login_once_up(&gw, fail).await;
    let cart = client()
        .get(gw.url("web", "/cart"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cart.status(), 200);
    (gw, cookie)
}

/// Whether `/whoami` on `g` with `cookie` answers `want` within `limit`.
async fn answers_within(g: &Gateway, cookie: &str, limit: Duration, want: &str) -> bool {
    let http = client();
    eventually(limit, || {
        let req = http
            .get(g.url("web", "/whoami"))
            .header("cookie", cookie.to_owned())
            .send();
        async move {
            match req.await {
                Ok(r) => r.text().await.is_ok_and(|t| t == want),
                Err(_) => false,
            }
        }
    })
    .await
}

/// The backend: logs in, counts a cart, logs out, and says what session it saw.
pub(crate) async fn shop() -> Backend {
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
            "/count" => {
                let n = req
                    .headers()
                    .keys()
                    .filter(|k| k.as_str().starts_with("x-session-attr-a"))
                    .count();
                *r.body_mut() = full(n.to_string());
            }
            p if p.starts_with("/set/") => {
                h.append("x-session-set", format!("{}=1", &p[5..]).parse().unwrap());
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
    let prefix = redis_test_prefix();
    let (a, bb, c) = (
        gateway(&b, &prefix).await,
        gateway(&b, &prefix).await,
        gateway(&b, &prefix).await,
    );
    let http = client();
    let resp = http.get(a.url("web", "/login")).send().await.unwrap();
    let cookie = session_cookie(&resp);
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

#[tokio::test]
async fn the_gateway_starts_without_redis_and_fails_closed_while_it_is_unreachable() {
    let b = shop().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  store:\n    kind: redis\n    redis: {{ url: \"redis://127.0.0.1:{port}\", timeout: 300ms, near_cache: {{ ttl: 0s }} }}\nadmin: {{ bind: \"127.0.0.1:0\" }}\n"
        ),
    );
    let gw = Gateway::start_in(&yaml, dir).await;
    let admin = format!("http://{}/readyz", gw.admin());
    let http = client();
    // Redis is down: not ready, but requests that need no session are served.
    assert_eq!(http.get(&admin).send().await.unwrap().status(), 503);
    let body = http
        .get(gw.url("web", "/whoami"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "status=none user=- cart=-");

    // Redis comes up: ready, and sessions work without a restart.
    let redis = OwnRedis::start(port);
    let up = eventually(Duration::from_secs(10), || {
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            http.get(&admin)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    assert!(up, "never ready");
    let resp = http.get(gw.url("web", "/login")).send().await.unwrap();
    let cookie = session_cookie(&resp);
    let whoami = || {
        http.get(gw.url("web", "/whoami"))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(
        whoami().await.unwrap().text().await.unwrap(),
        "status=active user=alice cart=-"
    );

    // Unreachable: a request with a session gets 503 and Retry-After; one without is served.
    redis.signal("STOP");
    let resp = whoami().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let plain = http.get(gw.url("web", "/whoami")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    // Back: the session is still there.
    redis.signal("CONT");
    let back = eventually(Duration::from_secs(10), || {
        let req = whoami();
        async move {
            match req.await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t == "status=active user=alice cart=-"),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(back, "the session did not come back");
}

#[tokio::test]
async fn a_logout_on_one_gateway_clears_the_near_caches_of_the_others_within_100_ms() {
    let b = shop().await;
    let prefix = redis_test_prefix();
    // Near copies live a minute: only an invalidation can take them away in time.
    let near = ", near_cache: { ttl: 60s }";
    let a = gateway_with(&b, &prefix, near).await;
    let others = [
        gateway_with(&b, &prefix, near).await,
        gateway_with(&b, &prefix, near).await,
    ];
    let http = client();
    let cookie = session_cookie(&http.get(a.url("web", "/login")).send().await.unwrap());
    let whoami = |g: &Gateway| {
        http.get(g.url("web", "/whoami"))
            .header("cookie", cookie.clone())
            .send()
    };
    for g in &others {
        // Read once to fill its near cache (and start its invalidation listener).
        let body = whoami(g).await.unwrap().text().await.unwrap();
        assert_eq!(body, "status=active user=alice cart=-");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = whoami(&others[0]).await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=active user=alice cart=-", "served near");

    http.get(a.url("web", "/logout"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    for g in &others {
        let gone = answers_within(g, &cookie, Duration::from_millis(100), EXPIRED).await;
        assert!(gone, "a near copy outlived the logout");
    }
}

#[tokio::test]
async fn the_admin_api_of_one_gateway_logs_a_user_out_on_all() {
    let b = shop().await;
    let prefix = redis_test_prefix();
    let near = ", near_cache: { ttl: 60s }";
    let (a, other) = (
        gateway_with(&b, &prefix, near).await,
        gateway_with(&b, &prefix, near).await,
    );
    let http = client();
    let cookie = session_cookie(&http.get(a.url("web", "/login")).send().await.unwrap());
    let whoami = || {
        http.get(other.url("web", "/whoami"))
            .header("cookie", cookie.clone())
            .send()
    };
    let body = whoami().await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=active user=alice cart=-");
    let admin = a.running.as_ref().unwrap().admin_addr().unwrap();
    let resp = http
        .delete(format!("http://{admin}/sessions?attr=user:alice"))
        .bearer_auth("admin-token-for-tests-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let gone = answers_within(&other, &cookie, Duration::from_millis(100), EXPIRED).await;
    assert!(gone, "the other gateway still serves the revoked session");
}

#[tokio::test]
async fn with_serve_stale_sessions_live_on_through_a_frozen_redis_and_their_writes_land_after() {
    serve_stale_through(Outage::Freeze).await;
}

#[tokio::test]
async fn with_serve_stale_sessions_live_on_while_redis_is_killed_and_restarted() {
    serve_stale_through(Outage::KillAndRestart).await;
}

/// How Redis goes away in a fault test.
enum Outage {
    /// SIGSTOP, later SIGCONT: operations time out.
    Freeze,
    /// SIGKILL, later a new server on the same port and data: connections are refused.
    KillAndRestart,
}

/// With `on_error: serve_stale`, through `outage`: a session keeps being served and changed by
/// the gateway that holds a copy, and the change reaches Redis once it is back.
async fn serve_stale_through(outage: Outage) {
    let b = shop().await;
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut redis = Some(OwnRedis::start_durable(port, data.path()));
    let store = |extra: &str| {
        format!(
            "sessions:\n  secret_file: session.keys\n  store:\n    kind: redis\n    redis: {{ url: \"redis://127.0.0.1:{port}\", timeout: 300ms{extra} }}\n"
        )
    };
    let start = |yaml: String| async move {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("session.keys"),
            "shared-secret-of-the-fleet-0123456789abcdef\n",
        )
        .unwrap();
        Gateway::start_in(&yaml, dir).await
    };
    let gw = start(simple_config(
        &[b.addr],
        "",
        &store(", on_error: serve_stale"),
    ))
    .await;
    let http = client();
    let cookie = login_once_up(&gw, "redis-server never answered").await;
    let on = |path: &str| {
        http.get(gw.url("web", path))
            .header("cookie", cookie.clone())
            .send()
    };
    // The login's own announcement comes back by pub/sub and drops the copy, and a read
    // meanwhile keeps none (it may be of the state before): the copy that serves through the
    // outage is read once it is in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    on("/whoami").await.unwrap().text().await.unwrap();

    // Redis gone: the session is served from this gateway's copy, and a change is kept.
    match outage {
        Outage::Freeze => redis.as_ref().unwrap().signal("STOP"),
        Outage::KillAndRestart => drop(redis.take()),
    }
    let resp = on("/cart").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "status=active user=alice cart=-"
    );
    let body = on("/whoami").await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=active user=alice cart=1");

    // Back: the queued change lands in Redis, where another gateway (no near cache) reads it.
    let _redis = match outage {
        Outage::Freeze => {
            redis.as_ref().unwrap().signal("CONT");
            redis
        }
        Outage::KillAndRestart => Some(OwnRedis::start_durable(port, data.path())),
    };
    let other = start(simple_config(
        &[b.addr],
        "",
        &store(", near_cache: { ttl: 0s }"),
    ))
    .await;
    let landed = eventually(Duration::from_secs(10), || {
        let req = http
            .get(other.url("web", "/whoami"))
            .header("cookie", cookie.clone())
            .send();
        async move {
            match req.await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t == "status=active user=alice cart=1"),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(
        landed,
        "the change made during the outage never reached Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_gateways_to_different_attributes_all_survive() {
    let b = shop().await;
    let prefix = redis_test_prefix();
    let (a, bb) = (gateway(&b, &prefix).await, gateway(&b, &prefix).await);
    let http = client();
    let cookie = session_cookie(&http.get(a.url("web", "/login")).send().await.unwrap());
    let writes = (0..40).map(|i| {
        let g = if i % 2 == 0 { &a } else { &bb };
        http.get(g.url("web", &format!("/set/a{i}")))
            .header("cookie", cookie.clone())
            .send()
    });
    for r in futures_util::future::join_all(writes).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let n = http
        .get(bb.url("web", "/count"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(n, "40");
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_run_fails_closed_and_loses_no_session() {
    let b = shop().await;
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let redis = OwnRedis::start_durable(port, data.path());
    let where_ = format!("url: \"redis://127.0.0.1:{port}\"");
    let (gw, cookie) = shopper_on(&b, &where_, "redis-server never answered").await;
    let http = client();

    drop(redis); // SIGKILL
    let resp = http
        .get(gw.url("web", "/whoami"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());

    let _redis = OwnRedis::start_durable(port, data.path());
    let want = "status=active user=alice cart=1";
    let back = answers_within(&gw, &cookie, Duration::from_secs(10), want).await;
    assert!(back, "the session was lost across the restart");
}

#[tokio::test]
async fn sessions_in_redis_over_tls_with_an_acl_user() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "redis", &["127.0.0.1"]);
    let port = free_port();
    let _redis = OwnRedis(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert.cert)
            .arg("--tls-key-file")
            .arg(&cert.key)
            .args(["--user", "default", "off"])
            .args([
                "--user",
                "gateway",
                "on",
                ">gateway-password",
                "~*",
                "&*",
                "+@all",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let store = |user: &str| {
        format!(
            "sessions:\n  store:\n    kind: redis\n    redis: {{ url: \"rediss://{user}@127.0.0.1:{port}\", ca: redis.crt, timeout: 500ms, near_cache: {{ ttl: 0s }} }}\n"
        )
    };
    let gw_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&cert.cert, gw_dir.path().join("redis.crt")).unwrap();
    let gw = Gateway::start_in(
        &simple_config(&[b.addr], "", &store("gateway:gateway-password")),
        gw_dir,
    )
    .await;
    let http = client();
    let cookie = login_once_up(&gw, "no session over TLS").await;
    let want = "status=active user=alice cart=-";
    assert!(answers_within(&gw, &cookie, Duration::from_secs(2), want).await);

    // A wrong password: the store does not answer for this gateway.
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&cert.cert, bad_dir.path().join("redis.crt")).unwrap();
    let bad = Gateway::start_in(
        &simple_config(&[b.addr], "", &store("gateway:wrong")),
        bad_dir,
    )
    .await;
    let resp = http.get(bad.url("web", "/login")).send().await.unwrap();
    assert!(resp.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_without_a_gateway_restart() {
    let b = shop().await;
    let set = tokio::task::spawn_blocking(SentinelSet::start)
        .await
        .unwrap();
    let where_ = format!(
        "sentinel: {{ master: shop, nodes: [\"redis://127.0.0.1:{}\"] }}",
        set.sentinel_port
    );
    let (gw, cookie) = shopper_on(&b, &where_, "the master Sentinel names never answered").await;
    let http = client();
    // The replica has the session before its master goes.
    tokio::task::spawn_blocking({
        let (m, r) = (set.master_port, set.replica_port);
        move || wait_until(Duration::from_secs(10), "replica in sync", || in_sync(m, r))
    })
    .await
    .unwrap();

    let SentinelSet { master, .. } = &set;
    master.signal("KILL");
    let want = "status=active user=alice cart=1";
    let back = answers_within(&gw, &cookie, Duration::from_secs(30), want).await;
    assert!(back, "the session did not come back after the failover");
    assert_eq!(set.current_master_port(), Some(set.replica_port));
    // Writes go to the new master.
    let cart = http
        .get(gw.url("web", "/cart"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cart.status(), 200);
    let want = "status=active user=alice cart=2";
    assert!(answers_within(&gw, &cookie, Duration::from_secs(2), want).await);
}

#[tokio::test]
async fn a_logout_the_store_cannot_make_is_answered_503_and_the_client_keeps_its_cookie() {
    let b = shop().await;
    let port = free_port();
    let redis = OwnRedis::start(port);
    let where_ = format!("url: \"redis://127.0.0.1:{port}\"");
    let (gw, cookie) = shopper_on(&b, &where_, "redis-server never answered").await;
    let http = client();
    let on = |path: &str| {
        http.get(gw.url("web", path))
            .header("cookie", cookie.clone())
            .send()
    };
    // Redis reads, and refuses the delete (as a failure between the read and the logout
    // would): the session lives on, so the client is not told it logged out.
    let acl = |rule: &str| {
        crate::redis_servers::redis_cli(port, &["ACL", "SETUSER", "default", rule])
            .is_some_and(|r| r.trim() == "OK")
    };
    assert!(acl("-del"));
    let resp = on("/logout").await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("set-cookie").is_none(), "{resp:?}");
    let body = on("/whoami").await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=active user=alice cart=1");
    // Once it can, the logout is made.
    assert!(acl("+del"));
    let resp = on("/logout").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = on("/whoami").await.unwrap().text().await.unwrap();
    assert_eq!(body, "status=expired user=- cart=-");
    drop(redis);
}
