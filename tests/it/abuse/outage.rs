//! Redis outages with `on_error: serve_stale`: while Redis does not answer, every session the
//! near cache holds is served at once (no request waits the operation timeout once it is
//! known to be down), and every write made meanwhile reaches Redis afterwards, also when
//! Redis was killed and came back empty. And a gateway idle through a Redis restart serves
//! its next session request.

use std::time::{Duration, Instant};

use crate::redis_servers::OwnRedis;
use crate::shared_store::{login_once_up, shop};
use crate::support::*;

/// A gateway in front of `b` with sessions in the Redis on `port` (500 ms operation timeout,
/// `extra` in the `redis:` mapping).
async fn gateway_on(b: &Backend, port: u16, extra: &str) -> Gateway {
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  store:\n    kind: redis\n    redis: {{ url: \"redis://127.0.0.1:{port}\", timeout: 500ms{extra} }}\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("session.keys"),
        "shared-secret-of-the-fleet-0123456789abcdef\n",
    )
    .unwrap();
    Gateway::start_in(&yaml, dir).await
}

/// `GET path` on `g` with `cookie`: the status, the body, and how long it took.
async fn ask(g: &Gateway, cookie: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let r = client()
        .get(g.url("web", path))
        .header("cookie", cookie.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap(), started.elapsed())
}

/// Sessions logged in on `gw`, each with one item in its cart, and read since: sessions
/// the near cache holds.
async fn shoppers(gw: &Gateway, n: usize) -> Vec<String> {
    let mut cookies = Vec::new();
    for _ in 0..n {
        let c = login_once_up(gw, "redis-server never answered").await;
        assert_eq!(ask(gw, &c, "/cart").await.0, 200);
        // The write's own announcement comes back by pub/sub and drops the copy; a read
        // meanwhile keeps none (it may be of the state before): read once it is in.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ask(gw, &c, "/whoami").await.0, 200);
        cookies.push(c);
    }
    cookies
}

/// Whether every session reads `cart=N` as expected on `g` (which has no near cache).
async fn carts_landed(g: &Gateway, cookies: &[String], carts: &[u32]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (c, n) in cookies.iter().zip(carts) {
        let want = format!("status=active user=alice cart={n}");
        let ok = eventually(Duration::from_secs(10), || async {
            ask(g, c, "/whoami").await.1 == want
        })
        .await;
        if !ok {
            wrong.push(format!("{want}: got {:?}", ask(g, c, "/whoami").await.1));
        }
    }
    wrong
}

/// Through the outage: requests on every session (a read, then a write) for `limit`.
/// Returns the non-2xx count, the requests that took longer than 400 ms, and the carts.
async fn shop_through(
    gw: &Gateway,
    cookies: &[String],
    limit: Duration,
) -> (usize, usize, Vec<u32>) {
    let mut carts = vec![1u32; cookies.len()];
    let (mut failed, mut slow) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < limit {
        for (i, c) in cookies.iter().enumerate() {
            for path in ["/whoami", "/cart"] {
                let (status, _, took) = ask(gw, c, path).await;
                if status != 200 {
                    failed += 1;
                } else if path == "/cart" {
                    carts[i] += 1;
                }
                if took > Duration::from_millis(400) {
                    slow += 1;
                }
            }
        }
    }
    (failed, slow, carts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_paused_every_session_is_served_without_waiting_and_every_write_lands() {
    let b = shop().await;
    let port = free_port();
    let redis = OwnRedis::start(port);
    let gw = gateway_on(&b, port, ", on_error: serve_stale").await;
    let cookies = shoppers(&gw, 8).await;
    // One more user, who shops and logs out during the pause.
    let leaver = shoppers(&gw, 1).await.remove(0);
    // Every copy is due a refresh from Redis (last use over a second ago): the first request
    // of each asks Redis, and must not drop the copy when Redis does not answer.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    redis.signal("STOP");
    let (failed, slow, carts) = shop_through(&gw, &cookies, Duration::from_secs(3)).await;
    // A write, then the logout: the session's latest state is kept for the replay, and
    // must not bring it back once the logout is in.
    assert_eq!(ask(&gw, &leaver, "/cart").await.0, 200);
    assert_eq!(ask(&gw, &leaver, "/logout").await.0, 200);
    redis.signal("CONT");
    assert_eq!(failed, 0, "requests refused while Redis was paused");
    // One request finds Redis silent and waits the operation timeout; the rest do not ask.
    assert!(slow <= 2, "{slow} requests waited for a paused Redis");
    // Shopping goes on while the queue is replayed: every write lands, in order.
    let (failed, _, more) = shop_through(&gw, &cookies, Duration::from_millis(1500)).await;
    assert_eq!(failed, 0, "requests refused once Redis was back");
    let carts: Vec<u32> = carts.iter().zip(&more).map(|(a, b)| a + b - 1).collect();
    let other = gateway_on(&b, port, ", near_cache: { ttl: 0s }").await;
    let wrong = carts_landed(&other, &cookies, &carts).await;
    assert!(
        wrong.is_empty(),
        "writes made during or after the pause lost: {wrong:?}"
    );
    for g in [&gw, &other] {
        let (_, body, _) = ask(g, &leaver, "/whoami").await;
        assert!(
            body.starts_with("status=expired"),
            "the logout did not hold: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_and_restarted_empty_the_writes_made_meanwhile_restore_their_sessions() {
    let b = shop().await;
    let port = free_port();
    let redis = OwnRedis::start(port);
    let gw = gateway_on(&b, port, ", on_error: serve_stale").await;
    let cookies = shoppers(&gw, 5).await;
    drop(redis);
    let (failed, slow, carts) = shop_through(&gw, &cookies, Duration::from_secs(2)).await;
    assert_eq!(failed, 0, "requests refused while Redis was down");
    assert!(slow <= 2, "{slow} requests waited for a dead Redis");
    // Back, with nothing: the sessions written during the outage come back from this
    // gateway's copies, with those writes.
    let _redis = OwnRedis::start(port);
    let other = gateway_on(&b, port, ", near_cache: { ttl: 0s }").await;
    let wrong = carts_landed(&other, &cookies, &carts).await;
    assert!(wrong.is_empty(), "sessions or writes lost: {wrong:?}");
}

#[tokio::test]
async fn a_gateway_idle_through_a_redis_restart_serves_its_next_session_request() {
    let b = shop().await;
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let redis = OwnRedis::start_durable(port, data.path());
    // Fail closed (the default), no near cache: every request asks Redis.
    let gw = gateway_on(&b, port, ", near_cache: { ttl: 0s }").await;
    let cookies = shoppers(&gw, 1).await;
    drop(redis);
    let _redis = OwnRedis::start_durable(port, data.path());
    // Let it come up; the gateway asks nothing meanwhile, so its connection is the dead one.
    let up = eventually(Duration::from_secs(5), || async {
        crate::redis_servers::redis_cli(port, &["PING"]).is_some_and(|p| p.contains("PONG"))
    })
    .await;
    assert!(up);
    let (status, body, _) = ask(&gw, &cookies[0], "/whoami").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "status=active user=alice cart=1"),
        "the first session request after the restart"
    );
}
