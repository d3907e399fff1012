//! `/metrics` on the admin listener: the counters move as real requests pass, read back from
//! the real Prometheus text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::sessions::{Client, shop};
use crate::support::*;

/// The samples of a Prometheus text page: `name{labels}` → value.
pub struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    pub async fn from(admin: SocketAddr) -> Scrape {
        let resp = client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        let text = resp.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        Scrape::parse(&text)
    }

    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value.parse().unwrap()));
        }
        Scrape(samples)
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 if none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

fn config(shop: &Backend, dead: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - {{ name: web, bind: "127.0.0.1:0" }}
admin: {{ bind: "127.0.0.1:0" }}
upstreams:
  app:
    servers: [ {{ url: "http://{}" }} ]
  gone:
    servers: [ {{ url: "http://{dead}" }} ]
    passive: {{ max_failures: 1, eject_for: 1m }}
routes:
  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}
  - {{ name: gone, match: {{ path_prefix: /gone }}, upstream: gone, session: off }}
sessions: {{ regenerate_grace: 300ms }}
"#,
        shop.addr
    )
}

#[tokio::test]
async fn metrics_count_requests_sessions_store_operations_and_upstream_failures() {
    let b = shop().await;
    let gw = Gateway::start(&config(&b, dead_addr().await)).await;
    let admin = gw.admin();
    let before = Scrape::from(admin).await;
    assert_eq!(before.get("sessiongate_requests_total", &[]), 0.0);
    assert_eq!(before.get("sessiongate_build_info", &[]), 1.0);

    let mut c = Client::new(&gw);
    c.get("/").await;
    c.get("/login").await; // creates
    c.get("/login").await; // regenerates
    c.get("/cart").await;
    c.get("/logout").await; // destroys
    let http = client();
    let post = http.post(gw.url("web", "/")).send().await.unwrap();
    assert_eq!(post.status(), 200);
    // A backend that refuses connections: 502, then ejected (503).
    let gone = http.get(gw.url("web", "/gone")).send().await.unwrap();
    assert_eq!(gone.status(), 502);
    let again = http.get(gw.url("web", "/gone/x")).send().await.unwrap();
    assert_eq!(again.status(), 503, "the only server is ejected");

    let m = Scrape::from(admin).await;
    let requests = |route, method, status| {
        m.get(
            "sessiongate_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("app", "GET", "2xx"), 5.0);
    assert_eq!(requests("app", "POST", "2xx"), 1.0);
    assert_eq!(requests("gone", "GET", "5xx"), 2.0);
    assert_eq!(
        m.get(
            "sessiongate_request_duration_seconds_count",
            &[("route", "app")]
        ),
        6.0
    );
    assert!(
        m.get(
            "sessiongate_request_duration_seconds_sum",
            &[("route", "app")]
        ) > 0.0
    );
    assert_eq!(
        m.get(
            "sessiongate_upstream_duration_seconds_count",
            &[("upstream", "app")]
        ),
        6.0
    );
    let failed = |error| {
        m.get(
            "sessiongate_upstream_errors_total",
            &[("upstream", "gone"), ("error", error)],
        )
    };
    assert_eq!(failed("connect"), 1.0);
    assert_eq!(failed("no_healthy_server"), 1.0);
    let dead_server = [("upstream", "gone")];
    assert_eq!(m.get("sessiongate_upstream_server_up", &dead_server), 0.0);
    assert_eq!(
        m.get("sessiongate_upstream_ejections_total", &dead_server),
        1.0
    );
    assert_eq!(
        m.get("sessiongate_upstream_server_up", &[("upstream", "app")]),
        1.0
    );

    let event = |e| m.get("sessiongate_session_events_total", &[("event", e)]);
    assert_eq!(event("created"), 1.0);
    assert_eq!(event("regenerated"), 1.0);
    assert_eq!(event("destroyed"), 1.0);
    // The session was live on every request that presented it.
    assert_eq!(event("expired"), 0.0);
    let op = |o| {
        m.get(
            "sessiongate_store_operation_duration_seconds_count",
            &[("store", "memory"), ("operation", o)],
        )
    };
    // Loads: /login (second), /cart, /logout presented the live session.
    assert_eq!(op("load"), 3.0);
    assert_eq!(op("update"), 3.0, "login twice and the cart");
    assert_eq!(op("rename"), 1.0);
    assert_eq!(op("delete"), 1.0);
    assert_eq!(m.get("sessiongate_store_errors_total", &[]), 0.0);
    // The logout ended the only session (moka's count catches up with its pending work).
    assert!(m.get("sessiongate_sessions_live", &[]) <= 2.0);
    assert_eq!(m.get("sessiongate_sessions_evicted_total", &[]), 0.0);

    assert!(
        m.get("sessiongate_connections_total", &[("listener", "web")]) >= 2.0,
        "two clients"
    );
    assert_eq!(
        m.get("sessiongate_config_reloads_total", &[]),
        0.0,
        "no reload yet"
    );
    assert!(
        m.get(
            "sessiongate_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
}

#[tokio::test]
async fn a_session_presented_after_it_ended_counts_as_expired() {
    let b = shop().await;
    let gw = Gateway::start(&config(&b, dead_addr().await)).await;
    let admin = gw.admin();
    let mut c = Client::new(&gw);
    c.get("/login").await;
    let token = c.cookie.clone().unwrap();
    c.get("/logout").await;
    // A copy of the cookie, used after the logout.
    c.cookie = Some(token);
    let (body, _) = c.get("/").await;
    assert!(body.contains("status=expired"), "{body}");
    let m = Scrape::from(admin).await;
    assert_eq!(
        m.get("sessiongate_session_events_total", &[("event", "expired")]),
        1.0
    );
}

#[tokio::test]
async fn open_connections_and_failed_tls_handshakes_are_counted_per_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "localhost", &["localhost"]);
    let b = Backend::named("app").await;
    let yaml = format!(
        r#"
listeners:
  - {{ name: web, bind: "127.0.0.1:0" }}
  - name: secure
    bind: "127.0.0.1:0"
    tls:
      handshake_timeout: 300ms
      certificates: [ {{ cert: {}, key: {} }} ]
admin: {{ bind: "127.0.0.1:0" }}
upstreams:
  app: {{ servers: [ {{ url: "http://{}" }} ] }}
routes:
  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}
"#,
        cert.cert.display(),
        cert.key.display(),
        b.addr
    );
    let gw = Gateway::start_in(&yaml, dir).await;
    let admin = gw.admin();
    // Plain text to the TLS port: a failed handshake. Silence: a timed-out one.
    let mut garbage = tokio::net::TcpStream::connect(gw.addr("secure"))
        .await
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _silent = tokio::net::TcpStream::connect(gw.addr("secure"))
        .await
        .unwrap();
    // Two keep-alive connections held open on the plain listener.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addr("web"))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    let counted = eventually(Duration::from_secs(3), || async {
        let m = Scrape::from(admin).await;
        let failures = |reason| {
            m.get(
                "sessiongate_tls_handshake_failures_total",
                &[("listener", "secure"), ("reason", reason)],
            )
        };
        m.get("sessiongate_connections_open", &[("listener", "web")]) == 2.0
            && failures("error") == 1.0
            && failures("timeout") == 1.0
    })
    .await;
    assert!(
        counted,
        "connections and handshake failures were not counted"
    );
    drop(held);
    let closed = eventually(Duration::from_secs(3), || async {
        let m = Scrape::from(admin).await;
        m.get("sessiongate_connections_open", &[("listener", "web")]) == 0.0
    })
    .await;
    assert!(closed, "closed connections still count as open");
}

#[tokio::test]
async fn near_cache_hits_and_misses_are_counted_with_the_redis_store() {
    let b = shop().await;
    let prefix = redis_test_prefix();
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "admin: {{ bind: \"127.0.0.1:0\" }}\nsessions:\n  store: {{ kind: redis, redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\", near_cache: {{ ttl: 30s }} }} }}\n"
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin();
    let mut c = Client::new(&gw);
    c.get("/login").await;
    for _ in 0..5 {
        let (body, _) = c.get("/").await;
        assert!(body.contains("user=alice"), "{body}");
    }
    let m = Scrape::from(admin).await;
    let hits = m.get("sessiongate_near_cache_hits_total", &[]);
    let misses = m.get("sessiongate_near_cache_misses_total", &[]);
    assert!(misses >= 1.0, "the first read goes to Redis");
    assert!(hits >= 4.0, "{hits} hits");
    assert_eq!(hits + misses, 5.0);
    assert_eq!(
        m.get(
            "sessiongate_store_operation_duration_seconds_count",
            &[("store", "redis"), ("operation", "load")]
        ),
        5.0
    );
}

#[tokio::test]
async fn rewritten_pages_and_their_bytes_are_counted() {
    let b = Backend::start(|req| async move {
        let mut r = text(200, "<html><body><a href=\"/next\">next</a></body></html>");
        r.headers_mut()
            .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        if req.uri().path() == "/login" {
            r.headers_mut()
                .insert("x-session-set", "user=alice".parse().unwrap());
        }
        r
    })
    .await;
    let yaml = simple_config(
        &[b.addr],
        "",
        "admin: { bind: \"127.0.0.1:0\" }\nsessions: { tracking: url }\n",
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin();
    let page = get_text(&gw.url("web", "/login")).await;
    assert!(page.contains(";sgsid="), "{page}");
    let m = Scrape::from(admin).await;
    assert_eq!(m.get("sessiongate_rewrites_total", &[]), 1.0);
    assert_eq!(
        m.get("sessiongate_rewritten_bytes_total", &[]),
        page.len() as f64
    );
}

#[tokio::test]
async fn a_request_whose_client_went_away_is_counted_as_499() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        text(200, "late")
    })
    .await;
    let yaml = simple_config(&[slow.addr], "", "admin: { bind: \"127.0.0.1:0\" }\n");
    let gw = Gateway::start(&yaml).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(impatient.get(gw.url("web", "/")).send().await.is_err());
    let counted = eventually(Duration::from_secs(3), || async {
        let m = Scrape::from(gw.admin()).await;
        m.get(
            "sessiongate_requests_total",
            &[("route", "app"), ("method", "GET"), ("status", "4xx")],
        ) == 1.0
    })
    .await;
    assert!(counted, "the abandoned request was not counted");
}
