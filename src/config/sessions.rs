//! The `sessions:` section and each route's `session:` setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Problems;
use super::node::{Node, Pos, Value};
use super::reader::{
    MapReader, boolean, integer, list, non_empty, one_of, positive_duration, size, string,
};

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

/// The memory store's default byte budget: a million sessions of a few small attributes
/// count about 160 MB, so it bounds only sessions far larger than those (a million sessions
/// at `max_session_bytes` would be 16 GiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

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

/// Which store keeps sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process.
    Memory {
        /// Most sessions kept.
        max_sessions: u64,
        /// Most bytes of sessions kept.
        max_bytes: u64,
    },
    /// In the client's cookie, sealed (AEAD): no server state at all.
    Cookie {
        /// Longest sealed cookie value.
        max_bytes: u64,
    },
    /// In Redis, shared by every gateway that uses it.
    Redis {
        /// Where Redis is and how it is deployed.
        topology: RedisTopology,
        /// Prefix of every key.
        key_prefix: String,
        /// Longest wait for one operation.
        timeout: Duration,
        /// How long a gateway may serve a session from its near cache (zero: off).
        near_ttl: Duration,
        /// Most sessions in the near cache.
        near_max: u64,
        /// `on_error: serve_stale`: while Redis does not answer, serve from the near cache and
        /// queue writes (else `fail_closed`: 503 for requests with a session).
        serve_stale: bool,
        /// For `rediss://`: the CA certificates (PEM) to trust instead of the system's.
        ca: Option<PathBuf>,
    },
}

/// How Redis is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy in front of several): `redis[s]://[user:password@]host:port[/db]`.
    Standalone {
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster: URLs of some of its nodes (the rest are discovered).
    Cluster {
        /// Seed node URLs, each with the credentials.
        nodes: Vec<String>,
    },
    /// A master watched by Sentinel: the gateway asks the sentinels where the master is, and
    /// asks again when it stops answering as one (a failover).
    Sentinel {
        /// The name the sentinels monitor the master under.
        master: String,
        /// Sentinel URLs (with the sentinels' own credentials, if any).
        nodes: Vec<String>,
        /// User for the master (ACL), if any.
        username: Option<String>,
        /// Password for the master, if any.
        password: Option<String>,
        /// Database number on the master.
        db: i64,
        /// Whether the master speaks TLS.
        tls: bool,
    },
}

/// `SameSite` of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `Lax`: sent on top-level navigation from other sites.
    Lax,
    /// `Strict`: never sent from other sites.
    Strict,
    /// `None`: always sent (needs `Secure`).
    None,
}

/// When the session cookie is `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    /// On TLS listeners (then the cookie is `__Host-` prefixed too).
    Auto,
    /// Always.
    Always,
    /// Never (development over plain HTTP only).
    Never,
}

/// The session cookie's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    /// Name (`sg`); `__Host-` is prepended on TLS listeners with the default path and no domain.
    pub name: String,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `Secure`.
    pub secure: Secure,
    /// `Path`.
    pub path: String,
    /// `Domain`, if any.
    pub domain: Option<String>,
    /// `Max-Age`; without it the cookie lasts until the browser closes.
    pub max_age: Option<Duration>,
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
        }
    }
}

/// A route's session setting: `session: off`, or a mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSession {
    /// Attributes also sent under a header name of their own: (attribute, header).
    pub headers: Vec<(String, String)>,
    /// How clients carry the token on this route (`None`: as `sessions.tracking` says).
    pub tracking: Option<Tracking>,
    /// With URL tracking, the (element, attribute) pairs whose URLs get the token (`None`:
    /// [`DEFAULT_LINKS`]).
    pub links: Option<Vec<(String, String)>>,
    /// Sibling hosts (`host[:port]`, lower case) that share this route's sessions: links to
    /// them carry a one-time handoff code.
    pub share_with: Vec<String>,
}

/// The elements and attributes whose URLs get the token by default.
pub const DEFAULT_LINKS: &[(&str, &str)] = &[
    ("a", "href"),
    ("area", "href"),
    ("form", "action"),
    // A submit button's own target overrides its form's.
    ("button", "formaction"),
    ("input", "formaction"),
    ("frame", "src"),
    ("iframe", "src"),
    // Documents embedded in the page, whose own links would carry the session on.
    ("object", "data"),
    ("embed", "src"),
];

/// `host` or `host:port`, as a client addresses the sibling.
fn read_hosts(node: &Node, path: &str, p: &mut Problems) -> Vec<String> {
    let Some(items) = super::reader::list(node, path, p) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(s) = non_empty(n, &ipath, p) else {
            continue;
        };
        match s.parse::<http::uri::Authority>() {
            Ok(a) if !s.contains('@') => hosts.push(a.as_str().to_ascii_lowercase()),
            _ => p.push(n.pos, &ipath, format!("{s:?} is not a host or host:port")),
        }
    }
    hosts
}

/// `element[attribute]`, both `[a-z][a-z0-9-]*`.
fn read_links(node: &Node, path: &str, p: &mut Problems) -> Option<Vec<(String, String)>> {
    let items = super::reader::list(node, path, p)?;
    let name = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let mut links = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(s) = non_empty(n, &ipath, p) else {
            continue;
        };
        let parsed = s
            .strip_suffix(']')
            .and_then(|s| s.split_once('['))
            .filter(|(e, a)| name(e) && name(a));
        match parsed {
            Some((e, a)) => links.push((e.to_owned(), a.to_owned())),
            None => p.push(
                n.pos,
                &ipath,
                format!("{s:?}: write element[attribute], e.g. a[href]"),
            ),
        }
    }
    Some(links)
}

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
    let store = m
        .get("store")
        .and_then(|n| read_store(n, &m.child("store"), base, p))
        .unwrap_or(d.store.clone());
    let cookie = m
        .get("cookie")
        .and_then(|n| read_cookie(n, &m.child("cookie"), p))
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
    })
}

/// A Redis URL, if `node` holds one.
fn redis_url(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let url = non_empty(node, path, p)?;
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Some(url)
    } else {
        p.push(
            node.pos,
            path,
            "a Redis URL starts with redis:// or rediss://",
        );
        None
    }
}

/// Redis URLs, at least one.
fn redis_urls(node: &Node, path: &str, p: &mut Problems) -> Option<Vec<String>> {
    let items = list(node, path, p)?;
    if items.is_empty() {
        p.push(node.pos, path, "list at least one node");
        return None;
    }
    let urls: Vec<_> = items
        .iter()
        .enumerate()
        .filter_map(|(i, n)| redis_url(n, &format!("{path}[{i}]"), p))
        .collect();
    (urls.len() == items.len()).then_some(urls)
}

/// Where Redis is: exactly one of `url`, `cluster` and `sentinel`.
fn read_topology(
    r: &Node,
    rpath: &str,
    rm: &mut MapReader<'_>,
    p: &mut Problems,
) -> Option<RedisTopology> {
    let url = rm.get("url").map(|n| (n, rm.child("url")));
    let cluster = rm.get("cluster").map(|n| (n, rm.child("cluster")));
    let sentinel = rm.get("sentinel").map(|n| (n, rm.child("sentinel")));
    match (url, cluster, sentinel) {
        (Some((n, path)), None, None) => Some(RedisTopology::Standalone {
            url: redis_url(n, &path, p)?,
        }),
        (None, Some((n, path)), None) => Some(RedisTopology::Cluster {
            nodes: redis_urls(n, &path, p)?,
        }),
        (None, None, Some((n, path))) => {
            let mut sm = MapReader::new(n, &path, p)?;
            let master = sm
                .require("master", n.pos, p)
                .and_then(|m| non_empty(m, &sm.child("master"), p));
            let nodes = sm
                .require("nodes", n.pos, p)
                .and_then(|m| redis_urls(m, &sm.child("nodes"), p));
            let username = sm
                .get("username")
                .and_then(|m| non_empty(m, &sm.child("username"), p));
            let password = sm
                .get("password")
                .and_then(|m| string(m, &sm.child("password"), p));
            let db = sm
                .get("db")
                .and_then(|m| integer(m, &sm.child("db"), 0, 1 << 20, p))
                .unwrap_or(0);
            let tls = sm
                .get("tls")
                .and_then(|m| boolean(m, &sm.child("tls"), p))
                .unwrap_or(false);
            sm.finish(p);
            Some(RedisTopology::Sentinel {
                master: master?,
                nodes: nodes?,
                username,
                password,
                db: i64::try_from(db).unwrap_or(0),
                tls,
            })
        }
        (None, None, None) => {
            p.push(r.pos, rpath, "say where Redis is: url, cluster or sentinel");
            None
        }
        _ => {
            p.push(
                r.pos,
                rpath,
                "give one of url, cluster and sentinel, not several",
            );
            None
        }
    }
}

/// Why the sealed-cookie store and URL tracking do not go together.
pub(super) const SEALED_NO_URL: &str = "the cookie store keeps the whole session in the \
    cookie: URLs cannot carry it (use tracking: cookie, or the memory or redis store)";

fn read_store(node: &Node, path: &str, base: &Path, p: &mut Problems) -> Option<StoreConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let kind = match m.get("kind") {
        Some(n) => one_of(n, &m.child("kind"), &["memory", "redis", "cookie"], p)?,
        None => "memory",
    };
    let memory = m.get("memory");
    let mpath = m.child("memory");
    let redis = m.get("redis");
    let rpath = m.child("redis");
    let cookie = m.get("cookie");
    let cpath = m.child("cookie");
    m.finish(p);
    if kind == "cookie" {
        let mut max_bytes = 3800;
        if let Some(n) = cookie
            && let Some(mut cm) = MapReader::new(n, &cpath, p)
        {
            // Browsers keep cookies of about 4096 bytes, name and attributes included.
            if let Some(v) = cm
                .get("max_bytes")
                .and_then(|v| integer(v, &cm.child("max_bytes"), 256, 4000, p))
            {
                max_bytes = v;
            }
            cm.finish(p);
        }
        return Some(StoreConfig::Cookie { max_bytes });
    }
    if kind == "redis" {
        let Some(r) = redis else {
            p.push(
                node.pos,
                path,
                "kind: redis needs a redis: { url: ... } section",
            );
            return None;
        };
        let mut rm = MapReader::new(r, &rpath, p)?;
        let topology = read_topology(r, &rpath, &mut rm, p);
        let key_prefix = rm
            .get("key_prefix")
            .and_then(|n| non_empty(n, &rm.child("key_prefix"), p))
            .unwrap_or_else(|| "sg:".to_owned());
        let timeout = rm
            .get("timeout")
            .and_then(|n| positive_duration(n, &rm.child("timeout"), p))
            .unwrap_or(Duration::from_secs(1));
        let (mut near_ttl, mut near_max) = (Duration::from_secs(2), 100_000);
        if let Some(n) = rm.get("near_cache")
            && let Some(mut nm) = MapReader::new(n, &rm.child("near_cache"), p)
        {
            if let Some(t) = nm
                .get("ttl")
                .and_then(|v| super::reader::duration(v, &nm.child("ttl"), p))
            {
                near_ttl = t;
            }
            if let Some(m) = nm
                .get("max_sessions")
                .and_then(|v| integer(v, &nm.child("max_sessions"), 1, 1 << 40, p))
            {
                near_max = m;
            }
            nm.finish(p);
        }
        let ca = rm
            .get("ca")
            .and_then(|n| non_empty(n, &rm.child("ca"), p))
            .map(|c| base.join(c));
        let on_error = rm.get("on_error");
        let serve_stale = on_error
            .and_then(|n| one_of(n, &rm.child("on_error"), &["fail_closed", "serve_stale"], p))
            .is_some_and(|v| v == "serve_stale");
        if let (true, Some(n)) = (serve_stale && near_ttl.is_zero(), on_error) {
            p.push(
                n.pos,
                &rm.child("on_error"),
                "serve_stale serves from the near cache: give near_cache a ttl above 0s",
            );
        }
        rm.finish(p);
        return Some(StoreConfig::Redis {
            topology: topology?,
            key_prefix,
            timeout,
            near_ttl,
            near_max,
            serve_stale,
            ca,
        });
    }
    let (mut max_sessions, mut max_bytes) = (1_000_000, DEFAULT_MEMORY_BYTES);
    if let Some(n) = memory
        && let Some(mut mm) = MapReader::new(n, &mpath, p)
    {
        if let Some(v) = mm
            .get("max_sessions")
            .and_then(|v| integer(v, &mm.child("max_sessions"), 1, 1 << 40, p))
        {
            max_sessions = v;
        }
        if let Some(n) = mm.get("max_bytes") {
            match size(n, &mm.child("max_bytes"), p) {
                Some(v) if v >= 64 * 1024 => max_bytes = v,
                Some(_) => p.push(n.pos, &mm.child("max_bytes"), "at least 64KiB"),
                None => {}
            }
        }
        mm.finish(p);
    }
    Some(StoreConfig::Memory {
        max_sessions,
        max_bytes,
    })
}

fn read_cookie(node: &Node, path: &str, p: &mut Problems) -> Option<CookieConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let d = SessionsConfig::default().cookie;
    let name = m
        .get("name")
        .and_then(|n| cookie_name(n, &m.child("name"), p))
        .unwrap_or(d.name);
    let same_site = m
        .get("same_site")
        .and_then(|n| one_of(n, &m.child("same_site"), &["lax", "strict", "none"], p))
        .map_or(d.same_site, |v| match v {
            "strict" => SameSite::Strict,
            "none" => SameSite::None,
            _ => SameSite::Lax,
        });
    let http_only = m
        .get("http_only")
        .and_then(|n| boolean(n, &m.child("http_only"), p))
        .unwrap_or(d.http_only);
    let secure = match m.get("secure").map(|n| (n, &n.value)) {
        None => d.secure,
        Some((_, Value::Bool(true))) => Secure::Always,
        Some((_, Value::Bool(false))) => Secure::Never,
        Some((n, _)) => match one_of(n, &m.child("secure"), &["auto"], p) {
            Some(_) => Secure::Auto,
            None => d.secure,
        },
    };
    let path_value = m
        .get("path")
        .and_then(|n| non_empty(n, &m.child("path"), p))
        .unwrap_or(d.path);
    let domain = m
        .get("domain")
        .and_then(|n| non_empty(n, &m.child("domain"), p));
    let max_age = m
        .get("max_age")
        .and_then(|n| positive_duration(n, &m.child("max_age"), p));
    m.finish(p);
    if same_site == SameSite::None && secure == Secure::Never {
        p.push(
            node.pos,
            path,
            "same_site: none needs a Secure cookie (browsers drop it otherwise)",
        );
    }
    Some(CookieConfig {
        name,
        same_site,
        http_only,
        secure,
        path: path_value,
        domain,
        max_age,
    })
}

fn cookie_name(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = non_empty(node, path, p)?;
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok || s.starts_with("__") {
        p.push(
            node.pos,
            path,
            format!(
                "{s:?}: use letters, digits, '-', '_' or '.' (the __Host- prefix is added on TLS)"
            ),
        );
        return None;
    }
    Some(s)
}

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

/// A route's `session:`: `off`, or `{ headers: { attr: Header-Name } }`. `None` means off.
pub(super) fn read_route_session(
    node: &Node,
    path: &str,
    p: &mut Problems,
) -> Option<Option<RouteSession>> {
    if let Value::Str(s) = &node.value {
        if s == "off" {
            return Some(None);
        }
        p.push(node.pos, path, format!("{s:?}: write off, or a mapping"));
        return None;
    }
    if let Value::Bool(false) = node.value {
        return Some(None);
    }
    let mut m = MapReader::new(node, path, p)?;
    let headers_node = m.get("headers");
    let hpath = m.child("headers");
    let tracking = m
        .get("tracking")
        .and_then(|n| Tracking::read(n, &m.child("tracking"), p));
    let links = m
        .get("rewrite")
        .and_then(|n| read_links(n, &m.child("rewrite"), p));
    let share_with = m
        .get("share_with")
        .map(|n| read_hosts(n, &m.child("share_with"), p))
        .unwrap_or_default();
    m.finish(p);
    let mut headers = Vec::new();
    if let Some(h) = headers_node {
        match &h.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Value::Str(attr) = &k.value else {
                        p.push(k.pos, &hpath, "attribute names are strings");
                        continue;
                    };
                    let kpath = format!("{hpath}.{attr}");
                    let Some(header) = non_empty(v, &kpath, p) else {
                        continue;
                    };
                    if !valid_attribute_name(attr) {
                        p.push(k.pos, &kpath, "attribute names are [a-z0-9-]{1,64}");
                        continue;
                    }
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        p.push(v.pos, &kpath, format!("{header:?} is not a header name"));
                        continue;
                    }
                    headers.push((attr.clone(), header.to_ascii_lowercase()));
                }
            }
            other => p.push(
                h.pos,
                &hpath,
                format!(
                    "expected a mapping of attribute: Header-Name, found {}",
                    other.kind()
                ),
            ),
        }
    }
    Some(Some(RouteSession {
        headers,
        tracking,
        links,
        share_with,
    }))
}

/// A session attribute name: `[a-z0-9-]{1,64}`, as ARCHITECTURE §4 names attributes (no
/// `_`: many proxies drop such headers, and CGI maps `-` to `_`).
pub fn valid_attribute_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
