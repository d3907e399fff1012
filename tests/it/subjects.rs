//! Sessions by subject (issue 18): the index, the admin API's listing and ending,
//! `end-others`, `max_per_subject`, tunnels that close when their session ends, and the event
//! stream; on the memory store and on Redis (three gateways sharing it).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

const TOKEN: &str = "admin-token-for-tests-0123456789";

/// Told when the flooding backend's connection was let go of (one test floods).
static FLOOD_ENDED: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Instant>>> =
    std::sync::Mutex::new(None);
const SECRET: &str = "shared-secret-of-the-fleet-0123456789abcdef\n";

/// The application: `/login/NAME` logs NAME in (with a regenerate, as a login should),
/// `/whoami` says who the session is, `/end-others` logs the user's other devices out,
/// `/logout` ends the session, `/regen` renews the token, `/ws` is a WebSocket echo.
async fn app() -> Backend {
    Backend::start(|mut req| async move {
        let get = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let path = req.uri().path().to_owned();
        if path == "/ws" || path == "/flood" {
            let flood = path == "/flood";
            return accept_websocket(&mut req, move |mut ws| async move {
                if flood {
                    // Sends until the gateway lets go of the connection; says when.
                    let chunk = Message::binary(vec![7u8; 64 * 1024]);
                    while ws.send(chunk.clone()).await.is_ok() {}
                    if let Some(tx) = FLOOD_ENDED.lock().unwrap().take() {
                        let _ = tx.send(Instant::now());
                    }
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut r = text(
            200,
            &format!(
                "status={} user={} key={}",
                get("x-session-status"),
                get("x-session-attr-user"),
                get("x-session-key")
            ),
        );
        let h = r.headers_mut();
        if let Some(name) = path.strip_prefix("/login/") {
            h.append("x-session-set", format!("user={name}").parse().unwrap());
            h.append("x-session-action", "regenerate".parse().unwrap());
        }
        match path.as_str() {
            "/end-others" => {
                h.append("x-session-action", "end-others".parse().unwrap());
            }
            "/logout" => {
                h.append("x-session-action", "destroy".parse().unwrap());
            }
            "/regen" => {
                h.append("x-session-action", "regenerate".parse().unwrap());
            }
            _ => {}
        }
        r
    })
    .await
}

/// The `store:` value of a Redis store under `prefix`.
fn redis_store(prefix: &str) -> String {
    format!(
        "{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }} }}"
    )
}

/// A gateway in front of `b`, sessions in `store` with `extra` lines under `sessions:`, the
/// admin API on with [`TOKEN`].
async fn gateway(b: &Backend, store: &str, extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session.keys"), SECRET).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  store: {store}\n{extra}\nadmin: {{ bind: \"127.0.0.1:0\", token_file: admin.token }}\n"
        ),
    );
    Gateway::start_in(&yaml, dir).await
}

/// Logs `name` in on `g` from a browser that says `agent`; the session cookie.
async fn login(g: &Gateway, name: &str, agent: &str) -> String {
    let resp = client()
        .get(g.url("web", &format!("/login/{name}")))
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(agent.as_bytes()).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    cookie_pair(&resp)
}

/// Renews the token of the session of `cookie` through `g`; the new cookie.
async fn regenerate(g: &Gateway, cookie: &str) -> String {
    let resp = client()
        .get(g.url("web", "/regen"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("set-cookie"));
    cookie_pair(&resp)
}

/// What `/whoami` on `g` says with `cookie`.
async fn whoami(g: &Gateway, cookie: &str) -> String {
    get_with_cookie(&g.url("web", "/whoami"), cookie).await
}

/// The session key `/whoami` reports.
async fn key_of(g: &Gateway, cookie: &str) -> String {
    let who = whoami(g, cookie).await;
    who.rsplit_once("key=").unwrap().1.to_owned()
}

/// An admin API call on `g`: status and JSON body.
async fn admin(g: &Gateway, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .request(method, format!("http://{}{path}", g.admin()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// The keys `GET /sessions?subject=` lists on `g`.
async fn listed(g: &Gateway, subject: &str) -> Vec<String> {
    let (status, body) = admin(
        g,
        reqwest::Method::GET,
        &format!("/sessions?subject={subject}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut keys: Vec<String> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Lists, ends all but one, and ends all of a subject's sessions on one store.
async fn listing_and_ending(store: &str) {
    let b = app().await;
    let g = gateway(&b, store, "").await;
    let phone = login(&g, "alice", "Phone/1.0 (\u{e9}vil\ttab)").await;
    let laptop = login(&g, "alice", &format!("Laptop/{}", "x".repeat(300))).await;
    let tablet = login(&g, "alice", "Tablet/3").await;
    let bob = login(&g, "bob", "Bob/1").await;
    let keys = [
        key_of(&g, &phone).await,
        key_of(&g, &laptop).await,
        key_of(&g, &tablet).await,
    ];
    assert_eq!(listed(&g, "alice").await, sorted(keys.to_vec()));

    // What each records: the client, a shortened printable agent, how it is tracked; never
    // the token or the data.
    let (_, body) = admin(&g, reqwest::Method::GET, "/sessions?subject=alice").await;
    let text = body.to_string();
    assert!(!text.contains(phone.split('=').nth(1).unwrap()), "{text}");
    for s in body["sessions"].as_array().unwrap() {
        assert_eq!(s["subject"], "alice");
        assert_eq!(s["client"], "127.0.0.1");
        assert_eq!(s["tracking"], "cookie");
        assert!(s["created_ms"].as_u64().unwrap() > 0);
        assert!(s["last_seen_ms"].as_u64().unwrap() >= s["created_ms"].as_u64().unwrap());
        let agent = s["user_agent"].as_str().unwrap();
        assert!(agent.chars().count() <= 97, "{agent}");
        assert!(
            agent
                .chars()
                .all(|c| c.is_ascii_graphic() || c == ' ' || c == '…'),
            "{agent}"
        );
        assert!(s.get("attributes").is_none());
    }

    // All but the laptop.
    let (status, body) = admin(
        &g,
        reqwest::Method::DELETE,
        &format!("/sessions?subject=alice&except={}", keys[1]),
    )
    .await;
    assert_eq!((status, &body["deleted"]), (200, &serde_json::json!(2)));
    assert!(whoami(&g, &phone).await.starts_with("status=expired"));
    assert!(whoami(&g, &tablet).await.starts_with("status=expired"));
    assert!(
        whoami(&g, &laptop)
            .await
            .starts_with("status=active user=alice")
    );
    assert!(whoami(&g, &bob).await.starts_with("status=active user=bob"));
    assert_eq!(listed(&g, "alice").await, vec![keys[1].clone()]);

    // One by key through the index, then all.
    let (status, one) = admin(
        &g,
        reqwest::Method::GET,
        &format!("/sessions/{}?subject=alice", keys[1]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["attributes"]["user"], "alice");
    assert!(one["attributes"].get("~meta").is_none(), "{one}");
    let (status, body) = admin(&g, reqwest::Method::DELETE, "/sessions?subject=alice").await;
    assert_eq!((status, &body["deleted"]), (200, &serde_json::json!(1)));
    assert!(whoami(&g, &laptop).await.starts_with("status=expired"));
    assert!(listed(&g, "alice").await.is_empty());
    assert!(listed(&g, "nobody").await.is_empty());
    // The old form still works.
    let (_, body) = admin(&g, reqwest::Method::DELETE, "/sessions?attr=user:bob").await;
    assert_eq!(body["deleted"], 1);
}

#[tokio::test]
async fn a_subjects_sessions_are_listed_and_ended_all_or_all_but_one_in_memory() {
    listing_and_ending("{ kind: memory }").await;
}

#[tokio::test]
async fn a_subjects_sessions_are_listed_and_ended_all_or_all_but_one_in_redis() {
    listing_and_ending(&redis_store(&redis_test_prefix())).await;
}

/// `end-others` from one device ends the others, on one gateway or across three.
async fn ending_others(gateways: &[Gateway]) {
    let n = gateways.len();
    let devices = [
        login(&gateways[0], "carol", "A").await,
        login(&gateways[1 % n], "carol", "B").await,
        login(&gateways[2 % n], "carol", "C").await,
    ];
    let dave = login(&gateways[0], "dave", "D").await;
    let out = get_with_cookie(&gateways[1 % n].url("web", "/end-others"), &devices[1]).await;
    assert!(out.starts_with("status=active user=carol"), "{out}");
    for g in gateways {
        assert!(whoami(g, &devices[0]).await.starts_with("status=expired"));
        assert!(whoami(g, &devices[2]).await.starts_with("status=expired"));
        assert!(whoami(g, &devices[1]).await.starts_with("status=active"));
        assert!(
            whoami(g, &dave)
                .await
                .starts_with("status=active user=dave")
        );
    }
    assert_eq!(listed(&gateways[0], "carol").await.len(), 1);
}

#[tokio::test]
async fn end_others_logs_out_every_other_device_of_the_user_in_memory() {
    let b = app().await;
    let g = gateway(&b, "{ kind: memory }", "").await;
    ending_others(std::slice::from_ref(&g)).await;
}

#[tokio::test]
async fn end_others_logs_out_every_other_device_of_the_user_across_three_gateways() {
    let b = app().await;
    let store = redis_store(&redis_test_prefix());
    let gateways = [
        gateway(&b, &store, "").await,
        gateway(&b, &store, "").await,
        gateway(&b, &store, "").await,
    ];
    ending_others(&gateways).await;
}

/// `max_per_subject: 2` with `policy`: three logins; the third always survives; `gone` says
/// which of the first two the policy ends (the first was used again after the second).
async fn limited(store: &str, policy: &str, gone: usize) {
    let b = app().await;
    let g = gateway(
        &b,
        store,
        &format!("  max_per_subject: 2\n  on_limit: {policy}"),
    )
    .await;
    let first = login(&g, "erin", "1").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = login(&g, "erin", "2").await;
    // The first is used again (more than the store's touch interval later).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(whoami(&g, &first).await.starts_with("status=active"));
    let third = login(&g, "erin", "3").await;
    let sessions = [&first, &second, &third];
    for (i, c) in sessions.iter().enumerate() {
        let who = whoami(&g, c).await;
        if i == gone {
            assert!(who.starts_with("status=expired"), "{policy}: {i}: {who}");
        } else {
            assert!(who.starts_with("status=active"), "{policy}: {i}: {who}");
        }
    }
    assert_eq!(listed(&g, "erin").await.len(), 2);
    let metrics = get_text(&format!("http://{}/metrics", g.admin())).await;
    assert!(
        metrics.contains("sessiongate_session_events_total{event=\"evicted\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn past_max_per_subject_the_oldest_idle_session_goes_never_the_new_login() {
    limited("{ kind: memory }", "evict_oldest_idle", 1).await;
    limited(&redis_store(&redis_test_prefix()), "evict_oldest_idle", 1).await;
}

#[tokio::test]
async fn past_max_per_subject_the_oldest_session_goes_with_evict_oldest() {
    limited("{ kind: memory }", "evict_oldest", 0).await;
    limited(&redis_store(&redis_test_prefix()), "evict_oldest", 0).await;
}

/// Every key under `prefix` in the machine's Redis.
async fn redis_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_index_keys_leave_with_their_sessions_and_none_is_left_behind() {
    let b = app().await;
    let prefix = redis_test_prefix();
    let g = gateway(
        &b,
        &redis_store(&prefix),
        "  idle_timeout: 2s\n  regenerate_grace: 0s",
    )
    .await;
    let mut cookies = Vec::new();
    for name in ["fay", "fay", "gus", "hal"] {
        cookies.push(login(&g, name, "x").await);
    }
    let index_keys = |keys: &[String]| keys.iter().filter(|k| k.contains(":u:{")).count();
    let keys = redis_keys(&prefix).await;
    assert_eq!(index_keys(&keys), 3, "{keys:?}");
    // A logout takes its entry along; the last session of a subject takes its key.
    get_with_cookie(&g.url("web", "/logout"), &cookies[3]).await;
    assert_eq!(index_keys(&redis_keys(&prefix).await), 2);
    // Used for a while (past the first idle timeout): the entries live on with the sessions.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(whoami(&g, &cookies[0]).await.starts_with("status=active"));
    }
    assert_eq!(listed(&g, "fay").await.len(), 1);
    assert_eq!(index_keys(&redis_keys(&prefix).await), 1);
    // Then idle: every key goes with the sessions (sessions, index, tombstones).
    let gone = eventually(Duration::from_secs(6), || {
        let prefix = prefix.clone();
        async move {
            redis_keys(&prefix)
                .await
                .iter()
                .all(|k| !k.contains(":u:{") && !k.contains(":s:{"))
        }
    })
    .await;
    assert!(gone, "left behind: {:?}", redis_keys(&prefix).await);
}

/// Opens `/ws` on `addr` with `cookie`.
async fn open_ws(
    addr: std::net::SocketAddr,
    cookie: &str,
) -> WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, resp) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    ws
}

/// Waits (at most `limit`) for the gateway to close `ws`: a close frame with 1008, then the
/// end of the connection. How long it took.
async fn closed_by_policy<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = Instant::now();
    let msg = tokio::time::timeout(limit, ws.next())
        .await
        .expect("the tunnel stayed open");
    let took = start.elapsed();
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close frame with 1008, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("the connection stayed open after the close frame");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    took
}

#[tokio::test]
async fn a_websocket_is_closed_within_a_second_of_a_revocation_on_another_gateway() {
    let b = app().await;
    let store = redis_store(&redis_test_prefix());
    let (a, other, third) = (
        gateway(&b, &store, "").await,
        gateway(&b, &store, "").await,
        gateway(&b, &store, "").await,
    );
    let cookie = login(&a, "ivy", "x").await;
    let key = key_of(&a, &cookie).await;
    let mut ws = open_ws(a.addr("web"), &cookie).await;
    // A WebSocket of another user on the same gateway stays.
    let jon = login(&third, "jon", "x").await;
    let mut bystander = open_ws(a.addr("web"), &jon).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revoked = Instant::now();
    let (status, _) = admin(
        &other,
        reqwest::Method::DELETE,
        &format!("/sessions/{key}?subject=ivy"),
    )
    .await;
    assert_eq!(status, 200);
    let took = closed_by_policy(&mut ws, Duration::from_secs(1)).await;
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "closed {took:?} after the call"
    );
    bystander.send(Message::text("still")).await.unwrap();
    assert_eq!(
        bystander.next().await.unwrap().unwrap(),
        Message::text("still")
    );
    // A logout on the third gateway closes a tunnel on the first too.
    let mut ws = open_ws(a.addr("web"), &jon).await;
    get_with_cookie(&third.url("web", "/logout"), &jon).await;
    closed_by_policy(&mut ws, Duration::from_secs(1)).await;
    closed_by_policy(&mut bystander, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_websocket_closes_when_its_session_logs_out_expires_or_is_regenerated_away() {
    let b = app().await;
    let g = gateway(
        &b,
        "{ kind: memory }",
        "  idle_timeout: 2s\n  regenerate_grace: 1s",
    )
    .await;
    // A logout.
    let cookie = login(&g, "kim", "x").await;
    let mut ws = open_ws(g.addr("web"), &cookie).await;
    get_with_cookie(&g.url("web", "/logout"), &cookie).await;
    closed_by_policy(&mut ws, Duration::from_secs(1)).await;

    // A regenerate: the old token's tunnel lives through the grace, then closes.
    let cookie = login(&g, "kim", "x").await;
    let mut ws = open_ws(g.addr("web"), &cookie).await;
    regenerate(&g, &cookie).await;
    let took = closed_by_policy(&mut ws, Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(800),
        "closed before the grace: {took:?}"
    );

    // Expiry: nothing uses the session (the tunnel does not keep it alive).
    let cookie = login(&g, "kim", "x").await;
    let mut ws = open_ws(g.addr("web"), &cookie).await;
    let took = closed_by_policy(&mut ws, Duration::from_secs(4)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "closed before the idle timeout: {took:?}"
    );

    // Without a session, a tunnel is not watched.
    let tcp = tokio::net::TcpStream::connect(g.addr("web")).await.unwrap();
    let url = format!("ws://{}/ws", g.addr("web"));
    let (mut plain, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    plain.send(Message::text("hi")).await.unwrap();
    assert_eq!(plain.next().await.unwrap().unwrap(), Message::text("hi"));
}

/// Reads server-sent events from `resp` until `done` says enough (or `limit` passes); the
/// events' JSON objects.
async fn read_events(
    resp: &mut reqwest::Response,
    limit: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + limit;
    while !done(&events) {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            resp.chunk(),
        )
        .await
        else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(cut) = text.find("\n\n") {
            let block: String = text.drain(..cut + 2).collect();
            for line in block.lines() {
                if let Some(json) = line.strip_prefix("data: ") {
                    events.push(serde_json::from_str(json).unwrap());
                }
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_of_one_gateway_shows_events_from_all_three() {
    let b = app().await;
    let store = redis_store(&redis_test_prefix());
    let gateways = [
        gateway(&b, &store, "").await,
        gateway(&b, &store, "").await,
        gateway(&b, &store, "").await,
    ];
    let mut stream = client()
        .get(format!("http://{}/events", gateways[0].admin()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    // Subscribed before anything happens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cookies = Vec::new();
    for g in &gateways {
        cookies.push(login(g, "lea", "x").await);
    }
    get_with_cookie(&gateways[2].url("web", "/logout"), &cookies[2]).await;
    let events = read_events(&mut stream, Duration::from_secs(5), |e| e.len() >= 4).await;
    let gateways_seen: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["gateway"].as_str().unwrap())
        .collect();
    assert_eq!(gateways_seen.len(), 3, "{events:?}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "created").count(),
        3,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"destroyed"), "{kinds:?}");
    for e in &events {
        assert_eq!(e["subject"], "lea");
        assert_eq!(e["route"], "app");
        for c in &cookies {
            assert!(!e.to_string().contains(c.split('=').nth(1).unwrap()));
        }
    }
}

#[tokio::test]
async fn the_event_stream_needs_the_token_and_filters_by_subject() {
    let b = app().await;
    let g = gateway(&b, "{ kind: memory }", "").await;
    let url = format!("http://{}/events", g.admin());
    let refused = client().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused = client()
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let mut stream = client()
        .get(format!("{url}?subject=mia"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let noah = login(&g, "noah", "x").await;
    let mia = login(&g, "mia", "x").await;
    let key = key_of(&g, &mia).await;
    admin(&g, reqwest::Method::DELETE, &format!("/sessions/{key}")).await;
    get_with_cookie(&g.url("web", "/logout"), &noah).await;
    let events = read_events(&mut stream, Duration::from_secs(3), |e| e.len() >= 2).await;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("created", "mia"), ("revoked", "mia")]);
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_its_stats_need_the_token() {
    let b = app().await;
    let g = gateway(&b, "{ kind: memory }", "").await;
    let page = client()
        .get(format!("http://{}/console", g.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/console/app.js") && !html.contains("http"),
        "no outside asset"
    );
    let js = get_text(&format!("http://{}/console/app.js", g.admin())).await;
    assert!(
        !js.contains("innerHTML"),
        "the script writes text, never markup"
    );
    let (status, _) = {
        let r = client()
            .get(format!("http://{}/console/stats", g.admin()))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 401);
    login(&g, "olga", "x").await;
    let (status, stats) = admin(&g, reqwest::Method::GET, "/console/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["store"], "memory");
    assert_eq!(stats["counts"]["created"], 1);
    assert!(stats["gateway"].as_str().is_some_and(|g| !g.is_empty()));
}

#[tokio::test]
async fn the_memory_store_tells_the_stream_of_sessions_that_idle_out() {
    let b = app().await;
    let g = gateway(&b, "{ kind: memory }", "  idle_timeout: 1s").await;
    let mut stream = client()
        .get(format!("http://{}/events?subject=pat", g.admin()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    login(&g, "pat", "x").await;
    // The store's housekeeping runs as it is used: other users come and go.
    let busy = tokio::spawn({
        let url = g.url("web", "/login/quinn");
        async move {
            for _ in 0..40 {
                let _ = client().get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let events = read_events(&mut stream, Duration::from_secs(4), |e| e.len() >= 2).await;
    busy.abort();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "expired"], "{events:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_keep_a_revoked_sessions_tunnel() {
    let b = app().await;
    let g = gateway(&b, "{ kind: memory }", "").await;
    let cookie = login(&g, "rex", "x").await;
    let key = key_of(&g, &cookie).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    *FLOOD_ENDED.lock().unwrap() = Some(tx);
    let addr = g.addr("web");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/flood").into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    // The client reads nothing: every buffer on the way fills, and the gateway's write to
    // it waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revoked = Instant::now();
    let (status, _) = admin(&g, reqwest::Method::DELETE, &format!("/sessions/{key}")).await;
    assert_eq!(status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(3), rx)
        .await
        .expect("the backend's connection was kept after the revocation")
        .unwrap();
    assert!(
        ended.duration_since(revoked) < Duration::from_secs(1),
        "let go {:?} after the revocation",
        ended.duration_since(revoked)
    );
    drop(ws);
}

#[tokio::test]
async fn an_event_stream_ends_when_a_reload_changes_the_admin_token() {
    let b = app().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let yaml = simple_config(
        &[b.addr],
        "",
        "sessions: {}\nadmin: { bind: \"127.0.0.1:0\", token_file: admin.token }\n",
    );
    let g = Gateway::start_file(&yaml, dir).await;
    let mut stream = client()
        .get(format!("http://{}/events", g.admin()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    std::fs::write(
        g.dir().join("admin.token"),
        "a-new-token-after-a-leak-0123\n",
    )
    .unwrap();
    let (status, _) = admin(&g, reqwest::Method::POST, "/reload").await;
    assert_eq!(status, 200);
    // The stream ends by its next keepalive at the latest (5 s).
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
    assert!(start.elapsed() < Duration::from_secs(7));
}

#[tokio::test]
async fn on_redis_a_websocket_closes_after_a_regenerate_on_another_gateway_and_at_expiry() {
    let b = app().await;
    let store = redis_store(&redis_test_prefix());
    let extra = "  idle_timeout: 3s\n  regenerate_grace: 1s";
    let (a, other) = (
        gateway(&b, &store, extra).await,
        gateway(&b, &store, extra).await,
    );
    // A regenerate on the other gateway: the old token's tunnel lives through the grace,
    // then closes within a second of its end.
    let cookie = login(&a, "uma", "x").await;
    let mut ws = open_ws(a.addr("web"), &cookie).await;
    let renewed = regenerate(&other, &cookie).await;
    let took = closed_by_policy(&mut ws, Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2100),
        "closed {took:?} after a regenerate with a 1 s grace"
    );
    // Expiry: a tunnel opened with the renewed token closes once nothing uses the session
    // for the idle timeout (Redis expires its key; the tunnel notes no use).
    let mut ws = open_ws(a.addr("web"), &renewed).await;
    let took = closed_by_policy(&mut ws, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(2500),
        "closed before the idle timeout: {took:?}"
    );
}

#[tokio::test]
async fn a_reload_that_replaces_the_store_hands_open_websockets_over_to_the_new_one() {
    let b = app().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session.keys"), SECRET).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let yaml = |idle: &str| {
        simple_config(
            &[b.addr],
            "",
            &format!(
                "sessions:\n  secret_file: session.keys\n  idle_timeout: {idle}\nadmin: {{ bind: \"127.0.0.1:0\", token_file: admin.token }}\n"
            ),
        )
    };
    let g = Gateway::start_file(&yaml("3s"), dir).await;
    let cookie = login(&g, "vic", "x").await;
    let mut ws = open_ws(g.addr("web"), &cookie).await;
    // A new idle timeout makes a new memory store: the sessions move into it, and leave
    // the old one, where a tunnel that kept looking would find its session gone.
    std::fs::write(g.dir().join("gateway.yaml"), yaml("4s")).unwrap();
    let (status, _) = admin(&g, reqwest::Method::POST, "/reload").await;
    assert_eq!(status, 200);
    // The user goes on using the session, past the old idle timeout (when the tunnel looks
    // again): the tunnel stays, as the session does.
    for i in 0..7 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            whoami(&g, &cookie)
                .await
                .starts_with("status=active user=vic")
        );
        ws.send(Message::text(format!("still here {i}")))
            .await
            .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .expect("no answer")
            .unwrap()
            .unwrap_or_else(|e| panic!("after {i} s: {e}"));
        assert_eq!(
            echo,
            Message::text(format!("still here {i}")),
            "after {i} s"
        );
    }
    // And the new store's logout still closes it.
    get_with_cookie(&g.url("web", "/logout"), &cookie).await;
    closed_by_policy(&mut ws, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_subject_is_matched_exactly_as_the_query_decodes_it() {
    let b = app().await;
    let g = gateway(&b, "{ kind: memory }", "").await;
    let plus = login(&g, "carl+x", "x").await;
    let upper = login(&g, "Carl+x", "x").await;
    // A form reads `+` as a space: the subject with a plus is written %2B.
    assert!(listed(&g, "carl+x").await.is_empty());
    assert_eq!(listed(&g, "carl%2Bx").await, vec![key_of(&g, &plus).await]);
    // Case counts, and a prefix is not a match.
    assert_eq!(listed(&g, "Carl%2Bx").await, vec![key_of(&g, &upper).await]);
    assert!(listed(&g, "carl").await.is_empty());
    assert!(listed(&g, "carl%2Bx%00").await.is_empty());
    let (status, _) = admin(&g, reqwest::Method::GET, "/sessions?subject=").await;
    assert_eq!(status, 400);
    let (status, body) = admin(&g, reqwest::Method::DELETE, "/sessions?subject=carl%2Bx").await;
    assert_eq!((status, &body["deleted"]), (200, &serde_json::json!(1)));
    assert!(whoami(&g, &upper).await.starts_with("status=active"));
}
