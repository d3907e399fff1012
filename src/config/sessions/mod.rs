//! `sessions:` — the settings every route's sessions share: secret, timeouts, tracking,
//! headers, limits. Its sub-sections each have a file: `store.rs` (`sessions.store`) and
//! `cookie.rs` (`sessions.cookie`); `route.rs` reads a route's own `session:` setting.

mod cookie;
mod route;
mod store;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Problems;
use super::node::{Node, Pos};
use super::reader::{MapReader, integer, non_empty, one_of, positive_duration, size};

pub use cookie::{CookieConfig, SameSite, Secure};
pub(super) use route::read_route_session;
pub use route::{BackendCookies, DEFAULT_LINKS, JarSettings, RouteSession, valid_attribute_name};
pub use store::{DEFAULT_MEMORY_BYTES, RedisTopology, StoreConfig};

/// Session settings shared by all routes. With no `sessions:` section, no route has sessions.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// File with one secret per line (at least 32 bytes), newest first. Without it the
    /// gateway makes a key at start: sessions then die with the process.
    pub secret_file: Option<PathBuf>,
    /// Where `secret_file` was written, for errors found when it is read.
    pub secret_pos: Pos,
    /// The store.
    pub store: StoreConfig,
    /// Where `store` was written, for errors found when the store is built.
    pub store_pos: Pos,
    /// The session cookie.
    pub cookie: CookieConfig,
    /// A session unused for this long expires.
    pub idle_timeout: Duration,
    /// A session older than this expires, used or not.
    pub absolute_timeout: Duration,
    /// After a regenerate, how long the old token still works (requests already in flight).
    pub regenerate_grace: Duration,
    /// Prefix of the headers exchanged with backends (lower case).
    pub header_prefix: String,
    /// How clients carry the token, unless a route says otherwise.
    pub tracking: Tracking,
    /// User-Agent substrings (lower case) of crawlers, which never get a token in a URL.
    pub crawlers: Vec<String>,
    /// Name of the URL parameter that carries a token (`/path;sgsid=TOKEN`, `?sgsid=TOKEN`).
    pub url_parameter: String,
    /// Size limits on what backends store.
    pub limits: SessionLimits,
    /// `store.memory.snapshot`: the memory store's sessions are loaded from this file at
    /// start and written to it at drain (apart from `store`, so that naming a file does not
    /// make a reload start a new store).
    pub memory_snapshot: Option<PathBuf>,
    /// `store.migrate_from` and `store.migrate_window`: a Redis store whose sessions move into
    /// this one, read through for the window (see `session::migration`).
    pub migrate_from: Option<(StoreConfig, Duration)>,
    /// `subject`: the attribute that names a session's owner (`user`), by which the
    /// gateway indexes sessions (see `session::subjects`).
    pub subject: String,
    /// `max_per_subject` and `on_limit`: most live sessions one subject may hold, and which
    /// goes when a login would pass it.
    pub per_subject: Option<(usize, OnLimit)>,
}

/// Which of a subject's sessions a login past `max_per_subject` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimit {
    /// The one unused longest.
    #[default]
    EvictOldestIdle,
    /// The one created first.
    EvictOldest,
}

/// User-Agent substrings of well-known crawlers: a URL token in a search index would hand a
/// session to anyone who follows the link.
pub const DEFAULT_CRAWLERS: &[&str] = &[
    "googlebot",
    "bingbot",
    "slurp",
    "duckduckbot",
    "baiduspider",
    "yandexbot",
    "applebot",
    "facebookexternalhit",
    "twitterbot",
    "linkedinbot",
    "ahrefsbot",
    "semrushbot",
    "petalbot",
    "gptbot",
    "ccbot",
    "crawler",
    "spider",
];

/// How a client carries its session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tracking {
    /// In the session cookie.
    #[default]
    Cookie,
    /// In the URL (`/path;sgsid=TOKEN`): the gateway adds it to the same-origin links,
    /// forms and redirects of every response, and never sets a cookie.
    Url,
    /// In the cookie for clients that take cookies, in the URL for those that do not (told
    /// apart by a small probe cookie; see the README).
    Auto,
}

impl Tracking {
    fn read(node: &Node, path: &str, p: &mut Problems) -> Option<Tracking> {
        match one_of(node, path, &["cookie", "url", "auto"], p)? {
            "url" => Some(Tracking::Url),
            "auto" => Some(Tracking::Auto),
            _ => Some(Tracking::Cookie),
        }
    }
}

/// Limits on session data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most attributes per session.
    pub max_attributes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes of names and values per session.
    pub max_session_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_attributes: 64,
            max_value_bytes: 4096,
            max_session_bytes: 16384,
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            secret_file: None,
            secret_pos: Pos::default(),
            store_pos: Pos::default(),
            store: StoreConfig::Memory {
                max_sessions: 1_000_000,
                max_bytes: DEFAULT_MEMORY_BYTES,
            },
            cookie: CookieConfig {
                name: "sg".to_owned(),
                same_site: SameSite::Lax,
                http_only: true,
                secure: Secure::Auto,
                path: "/".to_owned(),
                domain: None,
                max_age: None,
            },
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            regenerate_grace: Duration::from_secs(10),
            header_prefix: "x-session-".to_owned(),
            tracking: Tracking::Cookie,
            crawlers: DEFAULT_CRAWLERS.iter().map(|s| (*s).to_owned()).collect(),
            url_parameter: "sgsid".to_owned(),
            limits: SessionLimits::default(),
            memory_snapshot: None,
            migrate_from: None,
            subject: "user".to_owned(),
            per_subject: None,
        }
    }
}

/// Reads the `sessions:` section at `node` (relative paths are taken from `base`).
pub(super) fn read_sessions(
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<SessionsConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let d = SessionsConfig::default();
    let secret = m.get("secret_file");
    let secret_file = secret
        .and_then(|n| non_empty(n, &m.child("secret_file"), p))
        .map(|s| base.join(s));
    let m_store_pos = m.get("store").map_or(node.pos, |n| n.pos);
    let read = m
        .get("store")
        .and_then(|n| store::read_store(n, &m.child("store"), base, p));
    let (store, memory_snapshot, migrate_from) = match read {
        Some(r) => (r.store, r.snapshot, r.migrate_from),
        None => (d.store.clone(), None, None),
    };
    let cookie = m
        .get("cookie")
        .and_then(|n| cookie::read_cookie(n, &m.child("cookie"), p))
        .unwrap_or(d.cookie.clone());
    let tracking_node = m.get("tracking");
    let tracking = tracking_node
        .and_then(|n| Tracking::read(n, &m.child("tracking"), p))
        .unwrap_or_default();
    if let (StoreConfig::Cookie { .. }, Some(n), false) =
        (&store, tracking_node, tracking == Tracking::Cookie)
    {
        p.push(n.pos, &m.child("tracking"), SEALED_NO_URL);
    }
    let idle_timeout = m
        .get("idle_timeout")
        .and_then(|n| positive_duration(n, &m.child("idle_timeout"), p))
        .unwrap_or(d.idle_timeout);
    let absolute_timeout = m
        .get("absolute_timeout")
        .and_then(|n| positive_duration(n, &m.child("absolute_timeout"), p))
        .unwrap_or(d.absolute_timeout);
    let regenerate_grace = m
        .get("regenerate_grace")
        .and_then(|n| super::reader::duration(n, &m.child("regenerate_grace"), p))
        .unwrap_or(d.regenerate_grace);
    let header_prefix = m
        .get("header_prefix")
        .and_then(|n| header_prefix(n, &m.child("header_prefix"), p))
        .unwrap_or(d.header_prefix.clone());
    let crawlers = m
        .get("crawlers")
        .map(|n| read_crawlers(n, &m.child("crawlers"), p))
        .unwrap_or(d.crawlers.clone());
    let url_parameter = m
        .get("url_parameter")
        .and_then(|n| url_parameter(n, &m.child("url_parameter"), p))
        .unwrap_or(d.url_parameter.clone());
    let limits = m
        .get("limits")
        .and_then(|n| read_limits(n, &m.child("limits"), &d.limits, p))
        .unwrap_or(d.limits);
    let subject = m
        .get("subject")
        .and_then(|n| attribute(n, &m.child("subject"), p))
        .unwrap_or(d.subject.clone());
    let max_per_subject = m
        .get("max_per_subject")
        .and_then(|n| integer(n, &m.child("max_per_subject"), 1, 10_000, p))
        .and_then(|v| usize::try_from(v).ok());
    let on_limit_node = m.get("on_limit");
    let on_limit = on_limit_node
        .and_then(|n| {
            one_of(
                n,
                &m.child("on_limit"),
                &["evict_oldest_idle", "evict_oldest"],
                p,
            )
        })
        .map(|s| match s {
            "evict_oldest" => OnLimit::EvictOldest,
            _ => OnLimit::EvictOldestIdle,
        })
        .unwrap_or_default();
    if let (Some(n), None) = (on_limit_node, max_per_subject) {
        p.push(
            n.pos,
            &m.child("on_limit"),
            "on_limit needs max_per_subject (the most sessions one subject may hold)",
        );
    }
    if let (StoreConfig::Cookie { .. }, Some(n)) = (&store, m.get("max_per_subject")) {
        p.push(
            n.pos,
            &m.child("max_per_subject"),
            "the cookie store keeps sessions in clients' cookies: the gateway cannot count or \
             end a subject's sessions (use the memory or redis store)",
        );
    }
    m.finish(p);
    Some(SessionsConfig {
        secret_file,
        secret_pos: secret.map_or(node.pos, |n| n.pos),
        store_pos: m_store_pos,
        store,
        cookie,
        idle_timeout,
        absolute_timeout,
        regenerate_grace,
        header_prefix,
        tracking,
        crawlers,
        url_parameter,
        limits,
        memory_snapshot,
        migrate_from,
        subject,
        per_subject: max_per_subject.map(|n| (n, on_limit)),
    })
}

/// An attribute name (`subject`): the rule attribute names follow everywhere.
fn attribute(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = non_empty(node, path, p)?;
    if !valid_attribute_name(&s) {
        p.push(
            node.pos,
            path,
            format!("{s:?} must be an attribute name: 1 to 64 of a-z, 0-9 and '-'"),
        );
        return None;
    }
    Some(s.to_owned())
}

/// Why the sealed-cookie store and URL tracking do not go together.
pub(super) const SEALED_NO_URL: &str = "the cookie store keeps the whole session in the \
    cookie: URLs cannot carry it (use tracking: cookie, or the memory or redis store)";

fn header_prefix(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = non_empty(node, path, p)?.to_ascii_lowercase();
    if http::HeaderName::from_bytes(format!("{s}key").as_bytes()).is_err() || !s.ends_with('-') {
        p.push(
            node.pos,
            path,
            format!("{s:?} must be a header name prefix ending with '-', e.g. X-Session-"),
        );
        return None;
    }
    Some(s)
}

fn read_crawlers(node: &Node, path: &str, p: &mut Problems) -> Vec<String> {
    let Some(items) = super::reader::list(node, path, p) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, n)| non_empty(n, &format!("{path}[{i}]"), p))
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// A name that needs no escaping in a path or a query: `[A-Za-z0-9_-]{1,32}`.
fn url_parameter(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = non_empty(node, path, p)?;
    let ok = s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        p.push(
            node.pos,
            path,
            format!("{s:?} must be 1 to 32 letters, digits, '_' or '-', e.g. sgsid"),
        );
        return None;
    }
    Some(s)
}

fn read_limits(
    node: &Node,
    path: &str,
    d: &SessionLimits,
    p: &mut Problems,
) -> Option<SessionLimits> {
    let mut m = MapReader::new(node, path, p)?;
    let max_attributes = m
        .get("max_attributes")
        .and_then(|n| integer(n, &m.child("max_attributes"), 1, 10_000, p))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(d.max_attributes);
    let max_value_bytes = m
        .get("max_value_bytes")
        .and_then(|n| size(n, &m.child("max_value_bytes"), p))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(d.max_value_bytes);
    let max_session_bytes = m
        .get("max_session_bytes")
        .and_then(|n| size(n, &m.child("max_session_bytes"), p))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(d.max_session_bytes);
    m.finish(p);
    Some(SessionLimits {
        max_attributes,
        max_value_bytes,
        max_session_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{BASE, load, problems};

    #[test]
    fn sessions_move_only_from_a_redis_store_for_a_window() {
        let errs = problems(&format!(
            "{BASE}sessions: {{ store: {{ kind: memory, migrate_from: {{ kind: memory }} }} }}\n"
        ));
        assert!(
            errs[0].contains("sessions move from a Redis store"),
            "{errs:?}"
        );
        let c = load(&format!(
            "{BASE}sessions: {{ store: {{ migrate_from: {{ kind: redis, redis: {{ url: \"redis://10.0.0.1:6379\" }} }}, migrate_window: 2h }} }}\n"
        ))
        .unwrap();
        let (from, window) = c.sessions.unwrap().migrate_from.unwrap();
        assert!(matches!(from, StoreConfig::Redis { .. }));
        assert_eq!(window, Duration::from_secs(7200));
    }

    #[test]
    fn without_a_sessions_section_no_route_has_sessions() {
        let c = load(BASE).unwrap();
        assert!(c.sessions.is_none());
        assert!(c.routes[0].session.is_none());
    }

    #[test]
    fn sessions_section_turns_sessions_on_for_routes_with_defaults() {
        let c = load(&format!("{BASE}sessions: {{}}\n")).unwrap();
        let s = c.sessions.unwrap();
        assert_eq!(s.cookie.name, "sg");
        assert_eq!(s.cookie.secure, Secure::Auto);
        assert_eq!(s.header_prefix, "x-session-");
        assert_eq!(s.idle_timeout, Duration::from_secs(1800));
        assert_eq!(
            s.store,
            StoreConfig::Memory {
                max_sessions: 1_000_000,
                max_bytes: super::DEFAULT_MEMORY_BYTES,
            }
        );
        assert_eq!(c.routes[0].session, Some(RouteSession::default()));
    }

    #[test]
    fn session_settings_are_read() {
        let text = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { headers: { user: X-Remote-User }, tracking: url, rewrite: [\"a[href]\", \"img[src]\"], share_with: [Account.example, \"b.example:8443\"] } }",
        ) + "sessions:\n  secret_file: secrets/key\n  store: { kind: memory, memory: { max_sessions: 500 } }\n  cookie: { name: shop, same_site: strict, secure: true, max_age: 1h }\n  idle_timeout: 10m\n  header_prefix: X-Sess-\n  url_parameter: sid\n  limits: { max_attributes: 8 }\n";
        let c = load(&text).unwrap();
        let s = c.sessions.unwrap();
        assert_eq!(s.secret_file.unwrap(), Path::new("/etc/sg/secrets/key"));
        assert_eq!(
            s.store,
            StoreConfig::Memory {
                max_sessions: 500,
                max_bytes: super::DEFAULT_MEMORY_BYTES
            }
        );
        assert_eq!(s.cookie.same_site, SameSite::Strict);
        assert_eq!(s.cookie.secure, Secure::Always);
        assert_eq!(s.cookie.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(s.header_prefix, "x-sess-");
        assert_eq!(s.url_parameter, "sid");
        assert_eq!(s.limits.max_attributes, 8);
        let route = c.routes[0].session.as_ref().unwrap();
        assert_eq!(
            route.headers,
            [("user".to_owned(), "x-remote-user".to_owned())]
        );
        assert_eq!(route.tracking, Some(Tracking::Url));
        let links = route.links.clone().unwrap();
        assert_eq!(links[1], ("img".to_owned(), "src".to_owned()));
        assert_eq!(route.share_with, ["account.example", "b.example:8443"]);
        assert_eq!(s.tracking, Tracking::Cookie);
    }

    #[test]
    fn bad_session_settings_are_all_reported() {
        let text = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { headers: { User_Name: X-User }, rewrite: [\"a.href\"], share_with: [\"a b\"] } }",
        ) + "sessions:\n  cookie: { name: \"__Host-x\", same_site: none, secure: false }\n  tracking: sometimes\n  header_prefix: \"X Session\"\n  url_parameter: \"s id\"\n  store: { kind: etcd }\n";
        let errs = problems(&text);
        let joined = errs.join("\n");
        for needle in [
            "routes[0].session.headers.User_Name",
            "routes[0].session.rewrite[0]",
            "routes[0].session.share_with[0]",
            "sessions.cookie.name",
            "sessions.cookie: same_site: none needs a Secure cookie",
            "sessions.tracking",
            "sessions.header_prefix",
            "sessions.url_parameter",
            "sessions.store.kind",
        ] {
            assert!(joined.contains(needle), "{needle} missing from {joined}");
        }
    }
}
