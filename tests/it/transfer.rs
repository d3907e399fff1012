//! Sessions moved between stores: `GET /sessions/export` and `POST /sessions/import` on the
//! admin API, the `sessiongate sessions export|import` commands, and the memory store's
//! snapshot (`store.memory.snapshot`), written at drain and loaded at start. A session moved
//! with the same secret goes on working with the token its client holds.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::sessions::{field, shop};
use crate::support::*;

const SECRET: &str = "a-secret-shared-by-the-old-and-the-new-0123456789\n";
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// A gateway in front of `b`, sessions in `store`, with the shared secret and the admin API.
async fn gateway(b: &Backend, store: &str) -> Gateway {
    gateway_with_secret(b, SECRET, store).await
}

fn redis_store() -> String {
    redis_store_at(&redis_test_prefix(), "")
}

/// Sessions in the machine's Redis under `prefix`, with `extra` in the `redis:` mapping.
fn redis_store_at(prefix: &str, extra: &str) -> String {
    format!(
        "{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\"{extra} }} }}"
    )
}

/// `n` logged-in clients of `gw`, with carts of 1..=n: their session cookies.
async fn logged_in(gw: &Gateway, n: usize) -> Vec<String> {
    let mut cookies = Vec::new();
    for i in 1..=n {
        let mut c = crate::sessions::Client::new(gw);
        c.get("/login").await;
        for _ in 0..i {
            c.get("/cart").await;
        }
        cookies.push(c.cookie.clone().unwrap());
    }
    cookies
}

/// What `gw`'s backend sees of the session of `cookie`.
async fn seen(gw: &Gateway, cookie: &str) -> String {
    get_with_cookie(&gw.url("web", "/whoami"), &format!("sg={cookie}")).await
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str, body: String) -> (u16, String) {
    let resp = client()
        .request(method, format!("http://{}{path}", gw.admin()))
        .bearer_auth(ADMIN_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn sessions_exported_from_memory_work_in_redis_and_back_in_memory() {
    let b = shop().await;
    let first = gateway(&b, "{ kind: memory }").await;
    let cookies = logged_in(&first, 12).await;
    let (status, lines) = admin(
        &first,
        reqwest::Method::GET,
        "/sessions/export",
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(lines.lines().count(), 12, "{lines}");
    // Store ids, never tokens.
    for c in &cookies {
        assert!(!lines.contains(c.as_str()));
    }

    let redis = gateway(&b, &redis_store()).await;
    let (status, done) = admin(
        &redis,
        reqwest::Method::POST,
        "/sessions/import",
        lines.clone(),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("\"imported\":12"), "{done}");
    for (i, c) in cookies.iter().enumerate() {
        let body = seen(&redis, c).await;
        assert_eq!(field(&body, "user"), "alice", "{body}");
        assert_eq!(field(&body, "cart"), (i + 1).to_string());
    }
    // Importing again writes nothing over them.
    let (_, again) = admin(&redis, reqwest::Method::POST, "/sessions/import", lines).await;
    assert!(
        again.contains("\"imported\":0") && again.contains("\"present\":12"),
        "{again}"
    );

    // And on to another memory store, from Redis's export.
    let (_, from_redis) = admin(
        &redis,
        reqwest::Method::GET,
        "/sessions/export",
        String::new(),
    )
    .await;
    assert_eq!(from_redis.lines().count(), 12);
    let last = gateway(&b, "{ kind: memory }").await;
    let (_, done) = admin(&last, reqwest::Method::POST, "/sessions/import", from_redis).await;
    assert!(done.contains("\"imported\":12"), "{done}");
    let body = seen(&last, &cookies[4]).await;
    assert_eq!(field(&body, "cart"), "5", "{body}");
}

#[tokio::test]
async fn an_import_refuses_bad_lines_and_expired_sessions_and_names_them() {
    let b = shop().await;
    let gw = gateway(&b, "{ kind: memory }").await;
    let old = r#"{"v":1,"id":"00112233445566778899aabbccddeeff","key":"k1","attrs":{"user":"x"},"created_ms":1,"last_seen_ms":1}"#;
    let now = sessiongate::session::unix_ms();
    let line = |attrs: &str, created: u64, last: u64| {
        format!(
            r#"{{"v":1,"id":"00112233445566778899aabbccddee01","key":"k2","attrs":{attrs},"created_ms":{created},"last_seen_ms":{last}}}"#
        )
    };
    let body = [
        old.to_owned(),
        "not json".to_owned(),
        "{\"v\":9}".to_owned(),
        // A name no backend writes (it would be a second X-Session-Attr-User header).
        line(r#"{"USER":"x"}"#, now, now),
        // Over the limits (4,096 bytes a value by default).
        line(&format!(r#"{{"big":"{}"}}"#, "x".repeat(5000)), now, now),
        // Used in the future.
        line(r#"{"user":"x"}"#, now, now + 3_600_000),
        // A kept cookie whose value would carry another cookie: imported, never sent.
        line(r#"{"~jar;app;=h;/;A":"0;;x; B=evil"}"#, now, now),
    ]
    .join("\n");
    let (status, done) = admin(&gw, reqwest::Method::POST, "/sessions/import", body).await;
    assert_eq!(status, 200, "{done}");
    assert!(
        done.contains("\"expired\":1") && done.contains("\"invalid\":5"),
        "{done}"
    );
    assert!(done.contains("\"imported\":1"), "{done}");
    assert!(
        done.contains("line 2:") && done.contains("line 6:"),
        "{done}"
    );
    // Without the token: refused.
    let resp = client()
        .get(format!("http://{}/sessions/export", gw.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// A configuration on disk whose admin listener has a port of its own (the commands read
/// it), its files in `dir`, sessions in `store`.
fn on_disk(dir: &Path, backend: SocketAddr, store: &str) -> (String, SocketAddr) {
    std::fs::write(dir.join("session.keys"), SECRET).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = dir.display();
    let yaml = simple_config(
        &[backend],
        "",
        &format!(
            "sessions:\n  secret_file: {d}/session.keys\n  store: {store}\nadmin: {{ bind: \"{admin}\", token_file: {d}/admin.token }}\n"
        ),
    );
    (yaml, admin)
}

fn command(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .arg("sessions")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_sessions_commands_export_and_import_through_the_running_gateways() {
    let b = shop().await;
    let files = tempfile::tempdir().unwrap();
    let (yaml, _) = on_disk(files.path(), b.addr, "{ kind: memory }");
    let from = GatewayProcess::start(&yaml);
    let base = format!("http://{}", from.http);
    let mut cookies = Vec::new();
    for _ in 0..3 {
        let resp = client().get(format!("{base}/login")).send().await.unwrap();
        let sc = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
        cookies.push(sc.split(';').next().unwrap().to_owned());
    }
    let out = files.path().join("sessions.jsonl");
    let exported = command(
        &from.dir().join("gateway.yaml"),
        &["export", "--out", out.to_str().unwrap()],
    );
    assert!(exported.status.success(), "{exported:?}");
    assert!(String::from_utf8_lossy(&exported.stderr).contains("exported 3 sessions"));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let other = tempfile::tempdir().unwrap();
    let (yaml, _) = on_disk(other.path(), b.addr, &redis_store());
    std::fs::write(other.path().join("gateway.yaml"), &yaml).unwrap();
    let to = GatewayProcess::start(&yaml);
    let imported = command(
        &to.dir().join("gateway.yaml"),
        &["import", out.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{imported:?}");
    assert!(String::from_utf8_lossy(&imported.stdout).contains("\"imported\":3"));
    for c in &cookies {
        let body = get_with_cookie(&format!("http://{}/whoami", to.http), c).await;
        assert_eq!(field(&body, "user"), "alice", "{body}");
    }
    // No gateway on the admin port: a clear error, not a hang.
    drop(to);
    let failed = command(&other.path().join("gateway.yaml"), &["export"]);
    assert!(!failed.status.success());
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(said.contains("no gateway answers"), "{said}");
}

#[tokio::test]
async fn a_memory_store_snapshot_carries_sessions_across_a_restart() {
    let b = shop().await;
    let files = tempfile::tempdir().unwrap();
    let snapshot = files.path().join("snapshot.jsonl");
    let store = format!(
        "{{ kind: memory, memory: {{ snapshot: {} }} }}",
        snapshot.display()
    );
    let (yaml, _) = on_disk(files.path(), b.addr, &store);
    let mut first = GatewayProcess::start(&yaml);
    let resp = client()
        .get(format!("http://{}/login", first.http))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(15)).is_some());
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    // The same configuration again: the session is back before the first request.
    let (yaml, _) = on_disk(files.path(), b.addr, &store);
    let second = GatewayProcess::start(&yaml);
    let body = get_with_cookie(&format!("http://{}/whoami", second.http), &cookie).await;
    assert_eq!(field(&body, "status"), "active", "{body}");
    assert_eq!(field(&body, "user"), "alice");
}

/// A configuration for `Gateway::start_file` in `dir`: sessions in `store`, the shared
/// secret, the admin API on.
fn file_config(dir: &Path, backend: SocketAddr, store: &str) -> String {
    std::fs::write(dir.join("session.keys"), SECRET).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    simple_config(
        &[backend],
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  store: {store}\nadmin: {{ bind: \"127.0.0.1:0\", token_file: admin.token }}\n"
        ),
    )
}

/// `n` clients of `gw` that logged in: their session cookies.
async fn logins(gw: &Gateway, n: usize) -> Vec<String> {
    let http = client();
    let mut cookies = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = http.get(gw.url("web", "/login")).send().await.unwrap();
        let sc = resp.headers()["set-cookie"].to_str().unwrap();
        let pair = sc.split(';').next().unwrap();
        cookies.push(pair.strip_prefix("sg=").unwrap().to_owned());
    }
    cookies
}

/// Rewrites the gateway's file for sessions in `store` and reloads it.
async fn reload_to(gw: &Gateway, backend: SocketAddr, store: &str) {
    std::fs::write(
        gw.dir().join("gateway.yaml"),
        file_config(gw.dir(), backend, store),
    )
    .unwrap();
    gw.running.as_ref().unwrap().reload().await.unwrap();
}

async fn live_sessions(gw: &Gateway) -> usize {
    let (status, lines) = admin(gw, reqwest::Method::GET, "/sessions/export", String::new()).await;
    assert_eq!(status, 200, "{lines}");
    lines.lines().count()
}

#[tokio::test]
async fn a_reload_that_changes_the_store_moves_every_session_and_loses_none() {
    let b = shop().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = file_config(dir.path(), b.addr, "{ kind: memory }");
    let gw = Gateway::start_file(&yaml, dir).await;
    let cookies = logins(&gw, 1000).await;
    assert_eq!(live_sessions(&gw).await, 1000);

    // Memory to Redis: every session answers at once (read through while the mover works),
    // and the new store ends up holding all of them.
    reload_to(&gw, b.addr, &redis_store()).await;
    let logged_out = cookies[7].clone();
    let resp = client()
        .get(gw.url("web", "/logout"))
        .header("cookie", format!("sg={logged_out}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for c in cookies.iter().filter(|c| **c != logged_out) {
        let body = seen(&gw, c).await;
        assert_eq!(field(&body, "user"), "alice", "{body}");
    }
    let all_moved = eventually(Duration::from_secs(20), || async {
        live_sessions(&gw).await == 999
    })
    .await;
    assert!(all_moved, "{} sessions in Redis", live_sessions(&gw).await);
    // The logout made during the move stays made.
    assert_eq!(field(&seen(&gw, &logged_out).await, "status"), "expired");

    // Redis to another Redis, then back to memory: still 999, none lost.
    let prefix = redis_test_prefix();
    reload_to(&gw, b.addr, &redis_store_at(&prefix, "")).await;
    let moved = eventually(Duration::from_secs(20), || async {
        live_sessions(&gw).await == 999
    })
    .await;
    assert!(moved);
    // Only its tuning changed (the same Redis and prefix): nothing moves, nothing is lost.
    reload_to(&gw, b.addr, &redis_store_at(&prefix, ", timeout: 900ms")).await;
    assert_eq!(live_sessions(&gw).await, 999);
    assert_eq!(field(&seen(&gw, &cookies[3]).await, "user"), "alice");
    reload_to(&gw, b.addr, "{ kind: memory }").await;
    let moved = eventually(Duration::from_secs(20), || async {
        live_sessions(&gw).await == 999
    })
    .await;
    assert!(moved);
    for c in cookies.iter().step_by(37) {
        let body = seen(&gw, c).await;
        let want = if *c == logged_out { "-" } else { "alice" };
        assert_eq!(field(&body, "user"), want, "{body}");
    }
    let metrics = get_text(&format!("http://{}/metrics", gw.admin())).await;
    assert!(
        metrics.contains("session_events_total{event=\"migrated\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_gateway_started_with_migrate_from_reads_the_old_redis_through_during_its_window() {
    let b = shop().await;
    let (old_prefix, new_prefix) = (redis_test_prefix(), redis_test_prefix());
    let old = gateway(
        &b,
        &format!("{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{old_prefix}\" }} }}"),
    )
    .await;
    let before = logins(&old, 5).await;
    // A gateway of the new configuration: another Redis (here, another prefix), moving the
    // old one's sessions; the old gateway still serves (a rolling restart).
    let new = gateway(
        &b,
        &format!(
            "{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{new_prefix}\" }}, \
             migrate_from: {{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{old_prefix}\" }} }}, \
             migrate_window: 1h }}"
        ),
    )
    .await;
    for c in &before {
        assert_eq!(field(&seen(&new, c).await, "user"), "alice");
    }
    let moved = eventually(Duration::from_secs(10), || async {
        live_sessions(&new).await == 5
    })
    .await;
    assert!(moved);
    // A session the old gateway makes after the move is still read through.
    let late = logins(&old, 1).await;
    assert_eq!(field(&seen(&new, &late[0]).await, "user"), "alice");
    assert_eq!(live_sessions(&new).await, 6);
}

#[tokio::test]
async fn a_token_regenerated_away_during_a_move_is_not_brought_back_from_the_old_store() {
    let b = shop().await;
    let (old_prefix, new_prefix) = (redis_test_prefix(), redis_test_prefix());
    let old = gateway(&b, &redis_store_at(&old_prefix, "")).await;
    let first = logins(&old, 1).await.remove(0);
    // A gateway moving from the old Redis, whose old tokens read only 200 ms after a login.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session.keys"), SECRET).unwrap();
    let url = "redis://127.0.0.1:6379";
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  regenerate_grace: 200ms\n  store: {{ kind: redis, redis: {{ url: \"{url}\", key_prefix: \"{new_prefix}\" }}, migrate_from: {{ kind: redis, redis: {{ url: \"{url}\", key_prefix: \"{old_prefix}\" }} }} }}\n"
        ),
    );
    let new = Gateway::start_in(&yaml, dir).await;
    // Logging in again renews the token (the shop regenerates).
    let resp = client()
        .get(new.url("web", "/login"))
        .header("cookie", format!("sg={first}"))
        .send()
        .await
        .unwrap();
    let renewed = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(!renewed.contains(&first));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Past the grace, the old token reads nothing: not from the new store, and not from
    // the old one, which still holds its copy.
    let body = seen(&new, &first).await;
    assert_eq!(field(&body, "user"), "-", "{body}");
}
