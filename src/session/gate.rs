//! The proxy's one entry into sessions: what happens to a request on the way in (`resolve`,
//! `load`) and to its response on the way out (`commit`).
//!
//! In: the client's session cookie is taken out of `Cookie`, its token checked (a refused
//! token counts as none and is never looked up), the session loaded and judged against its
//! timeouts; forged session headers are stripped and the real ones set. Out: the backend's
//! directives are taken out of the response whatever its status, and applied unless it is a
//! 5xx: a session is created on its first `Set` (never for requests that write nothing),
//! regenerated with a new token that keeps data and key, or destroyed.

use std::sync::Arc;
use std::time::Duration;

use cookie::Cookie;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};

use super::contract::{self, Names, Status};
use super::cookie::take as take_cookies;
use super::handoff::{self, HANDOFF_PARAMETER, HANDOFF_TTL};
use super::memory::{MemoryOptions, MemoryStore};
use super::redis::{RedisOptions, RedisStore};
use super::sealed::{Jar, SealedOptions, Sealer};
use super::store::{Change, Session, SessionKey, SessionStore, StoreError, unix_ms};
use super::stores::Store;
use super::token::{SessionKeys, Token};
use super::tracking::{self, Evidence, Provenance, Source};
use super::url::{self, UrlTokens};
use crate::config::{
    ConfigError, CookieConfig, SameSite, Secure, SessionsConfig, StoreConfig, Tracking,
};
use crate::metrics::{Metrics, SessionEvent, Snapshot, StoreOpMetrics};

/// The store a configuration chose (Redis connects on first use); the sealed-cookie store
/// keys from the session `secrets`.
fn build_store(config: &SessionsConfig, secrets: Option<&Vec<Vec<u8>>>) -> Result<Store, String> {
    let store = match &config.store {
        StoreConfig::Cookie { max_bytes } => {
            let sealer = Sealer::new(&SealedOptions {
                secrets: secrets.cloned(),
                max_bytes: usize::try_from(*max_bytes).unwrap_or(usize::MAX),
                limits: config.limits,
                idle_timeout: config.idle_timeout,
                absolute_timeout: config.absolute_timeout,
            })
            .map_err(|e| e.to_string())?;
            Store::Sealed(Jar::new(Arc::new(sealer)))
        }
        StoreConfig::Memory {
            max_sessions,
            max_bytes,
        } => Store::Memory(Box::new(MemoryStore::new(MemoryOptions {
            max_sessions: *max_sessions,
            max_bytes: *max_bytes,
            idle_timeout: config.idle_timeout,
            absolute_timeout: config.absolute_timeout,
            limits: config.limits,
        }))),
        StoreConfig::Redis {
            topology,
            key_prefix,
            timeout,
            near_ttl,
            near_max,
            serve_stale,
            ca,
        } => Store::Redis(Box::new(
            RedisStore::new(RedisOptions {
                topology: topology.clone(),
                ca_pem: match ca {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        format!("cannot read the Redis CA file {}: {e}", path.display())
                    })?),
                    None => None,
                },
                key_prefix: key_prefix.clone(),
                idle_timeout: config.idle_timeout,
                absolute_timeout: config.absolute_timeout,
                limits: config.limits,
                op_timeout: *timeout,
                near_ttl: *near_ttl,
                near_max: *near_max,
                serve_stale: *serve_stale,
            })
            .map_err(|e| e.to_string())?,
        )),
    };
    Ok(store)
}

/// The session and probe cookies' names on a plain or TLS listener: `__Host-` prefixed when
/// the browser will accept that (Secure, `Path=/`, no `Domain`), which pins the cookie to this
/// exact host.
fn cookie_names(cookie: &CookieConfig, tls: bool) -> (String, String) {
    let name = if is_secure(cookie, tls) && cookie.path == "/" && cookie.domain.is_none() {
        format!("__Host-{}", cookie.name)
    } else {
        cookie.name.clone()
    };
    let probe = format!("{name}_probe");
    (name, probe)
}

/// Whether the cookies are `Secure` on a plain or TLS listener.
fn is_secure(cookie: &CookieConfig, tls: bool) -> bool {
    match cookie.secure {
        Secure::Auto => tls,
        Secure::Always => true,
        Secure::Never => false,
    }
}

/// `Sec-Fetch-Site`: where a browser says a request comes from.
const FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
/// Hyperlink auditing's headers: the page a link was on, and where it led.
const PING_FROM: HeaderName = HeaderName::from_static("ping-from");
const PING_TO: HeaderName = HeaderName::from_static("ping-to");

/// Sessions as the proxy sees them.
pub struct Sessions {
    keys: Arc<SessionKeys>,
    store: Store,
    names: Names,
    /// Every header name any route maps an attribute to: no client may send one, on any
    /// route.
    guarded: Vec<HeaderName>,
    cookie: CookieConfig,
    url_parameter: String,
    crawlers: Vec<String>,
    /// The session and probe cookies' names on plain [0] and TLS [1] listeners.
    names_by_listener: [(String, String); 2],
    idle: Duration,
    absolute: Duration,
    grace: Duration,
    metrics: Arc<Metrics>,
    ops: StoreOps,
    /// What the store was built from.
    basis: StoreBasis,
}

/// What a store is built from: a reload keeps the store while these stay the same.
#[derive(Debug, Clone, PartialEq)]
struct StoreBasis {
    store: StoreConfig,
    idle: Duration,
    absolute: Duration,
    limits: crate::config::SessionLimits,
}

impl StoreBasis {
    fn of(config: &SessionsConfig) -> StoreBasis {
        StoreBasis {
            store: config.store.clone(),
            idle: config.idle_timeout,
            absolute: config.absolute_timeout,
            limits: config.limits,
        }
    }
}

/// The metrics of each store operation the request path makes.
struct StoreOps {
    load: StoreOpMetrics,
    update: StoreOpMetrics,
    delete: StoreOpMetrics,
    rename: StoreOpMetrics,
    alias: StoreOpMetrics,
    put_code: StoreOpMetrics,
    take_code: StoreOpMetrics,
}

impl StoreOps {
    fn new(metrics: &Metrics, store: &Store) -> StoreOps {
        let kind = match store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
            Store::Sealed(_) => "cookie",
        };
        let op = |name| metrics.store_operation(kind, name);
        StoreOps {
            load: op("load"),
            update: op("update"),
            delete: op("delete"),
            rename: op("rename"),
            alias: op("alias"),
            put_code: op("put_code"),
            take_code: op("take_code"),
        }
    }
}

/// Awaits a store operation, noting its time and whether it failed. A macro, not an async
/// fn wrapping the operation's future: such a wrapper holds the future twice (as its argument
/// and as its local), which grew every request's future by about 2 KiB, and hyper moves that
/// future into place once per request.
macro_rules! timed {
    ($metrics:expr, $op:expr) => {{
        let started = std::time::Instant::now();
        let result = $op.await;
        $metrics.record(started.elapsed(), result.is_err());
        result
    }};
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What the proxy tells `resolve` and `load` about a request.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    /// It came over TLS.
    pub tls: bool,
    /// The origin the client's browser sees (`Url::origin().ascii_serialization()`, e.g.
    /// `https://shop.example`), when the route needs to know where requests come from: URL
    /// tracking, sibling hosts, or a token in the URL. `None`: nothing comes from here.
    pub origin: Option<&'a str>,
    /// Its method.
    pub method: &'a Method,
    /// The route's attributes also sent under a header of their own.
    pub mapped: &'a [(String, HeaderName)],
    /// How clients carry the token on the route.
    pub tracking: Tracking,
    /// The route's sibling hosts (`host[:port]`), whose links may bring handoff codes.
    pub share_with: &'a [String],
}

/// What `resolve` and `load` found, for `commit`.
#[derive(Debug)]
pub struct RequestSession {
    token: Option<Token>,
    session: Option<Session>,
    status: Status,
    tracking: Tracking,
    source: Source,
    evidence: Evidence,
    clean_redirect: bool,
    /// The URL carried a token that does not count (see [`RequestSession::clean_redirect`]).
    url_token_ignored: bool,
    arrival: Option<Arrival>,
    store_failed: bool,
    /// With the sealed-cookie store: this request's jar and the cookie it presented.
    sealed: Option<Box<SealedRequest>>,
    /// The URL carried a token (counted or not).
    in_url: bool,
    /// From `resolve` to `load`: the URL's handoff code and its `Referer`'s token.
    url: Option<Box<UrlTokens>>,
}

/// A request's own sealed-cookie jar (see [`Sessions::load_sealed`]).
struct SealedRequest {
    /// Made by `load`.
    jar: Option<Store>,
    /// The cookie the request brought: a credential, never printed.
    presented: Option<String>,
}

impl std::fmt::Debug for SealedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRequest")
            .field("presented", &self.presented.is_some())
            .finish_non_exhaustive()
    }
}

/// A client arriving from a sibling host with a handoff code: the token it holds here now.
#[derive(Debug)]
pub struct Arrival {
    /// The token: a new one for the sibling's session, or the one the client already had
    /// here (a handoff never replaces a live session).
    pub token: Token,
    /// It carries tokens in URLs (it refuses cookies).
    pub by_url: bool,
    /// The token is new: a cookie client gets it in a cookie.
    pub fresh: bool,
}

/// A logout (`X-Session-Action: destroy`) the session store could not make: the session
/// lives on, so the response is not sent as if it had ended (the proxy answers `503`, and
/// the client keeps its token to try again).
#[derive(Debug)]
pub struct LogoutFailed;

/// The token a client holds after a response, and how it carries it.
#[derive(Debug)]
pub struct Held {
    /// The token.
    pub token: Token,
    /// It goes into the response's URLs (else it is in the cookie).
    pub by_url: bool,
    /// It reaches its session only read-only (a regenerate retired it): it may hand off
    /// nothing to sibling hosts.
    pub read_only: bool,
    /// The request came from another site: a redirect that hands it a token in the URL
    /// would arrive looking cross-site too, and the token would be refused (see
    /// `url_tracking::bounce`).
    pub from_elsewhere: bool,
}

impl RequestSession {
    /// What `resolve` found: a token (if any) and where it came from; nothing loaded yet.
    fn new(
        token: Option<Token>,
        source: Source,
        tracking: Tracking,
        evidence: Evidence,
    ) -> RequestSession {
        RequestSession {
            token,
            session: None,
            status: Status::None,
            tracking,
            source,
            evidence,
            clean_redirect: false,
            url_token_ignored: false,
            arrival: None,
            store_failed: false,
            sealed: None,
            in_url: false,
            url: None,
        }
    }

    /// With the sealed-cookie store: the cookie the request `presented` is the session (and
    /// the route tracks by cookie).
    fn sealed(mut self, presented: Option<String>) -> RequestSession {
        self.tracking = Tracking::Cookie;
        self.sealed = Some(Box::new(SealedRequest {
            jar: None,
            presented,
        }));
        self
    }

    /// The session's status as sent to the backend.
    pub fn status(&self) -> Status {
        self.status
    }

    /// A short hash of the token the request presented, for logs (never the token).
    pub fn token_hash(&self) -> Option<String> {
        self.token.as_ref().map(Token::to_string)
    }

    /// The URL carried a token that does not count for this request (the client keeps its
    /// cookie, as on `auto` after the first response went both ways; or the token was
    /// refused): a GET or HEAD is answered with a redirect to the same URL without the token,
    /// so the address bar comes clean, and the backend is not asked.
    pub fn clean_redirect(&self) -> bool {
        self.clean_redirect
    }

    /// The URL carried a token that does not count, and the request is not redirected away
    /// from it (not a GET or HEAD): its response must send no Referer, or the next request
    /// would carry that token there, where it does not belong (and the check of a URL token
    /// against its page's would refuse the client's own).
    pub fn url_token_ignored(&self) -> bool {
        self.url_token_ignored && !self.clean_redirect
    }

    /// The live session's stable key, for `balance: session_affinity`.
    pub fn affinity_key(&self) -> Option<&[u8]> {
        self.session.as_ref().map(|s| s.key().as_bytes())
    }

    /// The request presented a session and the store did not answer: the proxy fails closed
    /// (503 with `Retry-After`) rather than sending it on without its session.
    pub fn store_failed(&self) -> bool {
        self.store_failed
    }

    /// The client arrived with a sibling's handoff code: the proxy answers with a redirect to
    /// the clean URL that hands it its token for this host, without asking the backend.
    pub fn take_arrival(&mut self) -> Option<Arrival> {
        self.arrival.take()
    }

    /// The response may have to carry the token in its URLs (then the proxy asks the
    /// backend for an uncompressed body it can rewrite).
    pub fn may_rewrite(&self) -> bool {
        tracking::carry(self.tracking, self.source, self.evidence).url()
    }

    /// The client would take a token from a URL here (the route tracks by URL, and it shows
    /// no cookie of ours): a page must not hand it one that someone else put in a link.
    pub fn takes_url_tokens(&self) -> bool {
        self.tracking != Tracking::Cookie && !self.evidence.takes_cookies
    }
}

impl Sessions {
    /// Sessions for a configuration, with the keys from its secret file (`source` names the
    /// configuration in errors).
    ///
    /// # Errors
    /// The secret file cannot be read or holds an unusable secret (with its position).
    /// On a reload, the `previous` sessions' store is kept when what it was built from did
    /// not change (so sessions in the memory store survive); the secrets are read again.
    pub fn from_config(
        config: &SessionsConfig,
        source: &str,
        metrics: &Arc<Metrics>,
        previous: Option<&Sessions>,
    ) -> Result<Sessions, ConfigError> {
        let fail = |msg: String| {
            ConfigError::single(source, config.secret_pos, "sessions.secret_file", msg)
        };
        let secrets = match &config.secret_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                let lines: Vec<Vec<u8>> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.as_bytes().to_vec())
                    .collect();
                Some(lines)
            }
        };
        let basis = StoreBasis::of(config);
        // The sealed store is made from the secrets: built again when they are read again.
        let kept = previous
            .filter(|p| p.basis == basis)
            .filter(|p| secrets.is_none() || !matches!(p.store, Store::Sealed(_)))
            .map(|p| p.store.clone());
        let store = match kept {
            Some(store) => store,
            None => {
                if previous.is_some_and(|p| matches!(p.store, Store::Memory(_))) {
                    tracing::warn!(
                        "session store settings changed: a new memory store starts empty, and \
                         the sessions of the old one end"
                    );
                }
                build_store(config, secrets.as_ref()).map_err(|msg| {
                    ConfigError::single(source, config.store_pos, "sessions.store", msg)
                })?
            }
        };
        // Without a secret file the key was made at start: a reload keeps it.
        let kept_keys = previous
            .filter(|_| secrets.is_none())
            .map(|p| p.keys.clone());
        Self::new(config, secrets, kept_keys, store, metrics).map_err(fail)
    }

    /// Sessions with signing keys from `secrets` (`None`: a key made now, and a warning that
    /// sessions will not survive a restart or be shared).
    fn new(
        config: &SessionsConfig,
        secrets: Option<Vec<Vec<u8>>>,
        kept_keys: Option<Arc<SessionKeys>>,
        store: Store,
        metrics: &Arc<Metrics>,
    ) -> Result<Sessions, String> {
        let keys = match (secrets, kept_keys) {
            (Some(s), _) => Arc::new(SessionKeys::from_secrets(&s)?),
            (None, Some(kept)) => kept,
            (None, None) => {
                tracing::warn!(
                    "no sessions.secret_file: using a key made at start; sessions will not \
                     survive a restart nor be shared with other gateways"
                );
                Arc::new(SessionKeys::generate()?)
            }
        };
        Ok(Sessions {
            keys,
            basis: StoreBasis::of(config),
            ops: StoreOps::new(metrics, &store),
            metrics: metrics.clone(),
            store,
            names: Names::new(&config.header_prefix)?,
            guarded: Vec::new(),
            cookie: config.cookie.clone(),
            url_parameter: config.url_parameter.clone(),
            crawlers: config.crawlers.clone(),
            names_by_listener: [false, true].map(|tls| cookie_names(&config.cookie, tls)),
            idle: config.idle_timeout,
            absolute: config.absolute_timeout,
            grace: config.regenerate_grace,
        })
    }

    /// The sessions, guarding `names` too: the header names every route maps attributes to,
    /// which no client may send on any route.
    #[must_use]
    pub fn guarding(mut self, names: Vec<HeaderName>) -> Sessions {
        self.guarded = names;
        self
    }

    /// The store (for the admin API).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the store knows of itself, for a metrics scrape.
    pub fn fill_snapshot(&self, snapshot: &mut Snapshot) {
        match &self.store {
            Store::Memory(m) => {
                snapshot.sessions_live = Some(m.entry_count());
                snapshot.sessions_evicted = Some(m.evictions());
            }
            Store::Redis(r) => snapshot.near_cache = r.near_cache_stats(),
            Store::Sealed(_) => {}
        }
    }

    fn secure(&self, tls: bool) -> bool {
        is_secure(&self.cookie, tls)
    }

    /// The cookie's name on this listener (worked out once: it is read on every request).
    fn cookie_name(&self, tls: bool) -> &str {
        &self.names_by_listener[usize::from(tls)].0
    }

    /// The probe cookie's name on this listener (see `tracking`).
    fn probe_name(&self, tls: bool) -> &str {
        &self.names_by_listener[usize::from(tls)].1
    }

    /// The cookie names of the other kind of listener (plain or TLS): taken out of requests
    /// too, never read.
    fn other_listeners_names(&self, tls: bool) -> [&str; 2] {
        let (session, probe) = &self.names_by_listener[usize::from(!tls)];
        [session, probe]
    }

    /// Adds the probe cookie: not a credential, it only shows that the client keeps cookies.
    fn set_probe(&self, headers: &mut HeaderMap, tls: bool) {
        let probe = Cookie::build((self.probe_name(tls).to_owned(), "1"))
            .path("/")
            .http_only(true)
            .secure(self.secure(tls))
            .same_site(cookie::SameSite::Lax)
            .build();
        if let Ok(v) = HeaderValue::from_str(&probe.to_string()) {
            headers.append(header::SET_COOKIE, v);
        }
    }

    /// The first part of `resolve`, done for every request before it is logged or routed: a
    /// token in the URL (path or query parameter) is taken out of the request target, and out
    /// of a `Referer`, `Ping-From` or `Ping-To` that carries one, so that no backend and no
    /// log sees it.
    ///
    /// # Errors
    /// The target without its token is no longer a valid URI (it cannot happen for a target
    /// that parsed); the target is then replaced by `/` and the request must be refused.
    pub fn take_url_tokens(
        &self,
        uri: &mut Uri,
        headers: &mut HeaderMap,
    ) -> Result<Option<Box<UrlTokens>>, url::BadTarget> {
        // Headers that carry a page's URL: `Referer`, and hyperlink auditing's `Ping-From`
        // and `Ping-To` (a page the gateway rewrote has no ping, but another may).
        let mut referer_token = None;
        for name in [header::REFERER, PING_FROM, PING_TO] {
            for param in [self.url_parameter.as_str(), HANDOFF_PARAMETER] {
                if let Some(url) = headers.get(&name).and_then(|v| v.to_str().ok())
                    && let Some((clean, taken)) = url::take_tokens(url, param)
                {
                    if name == header::REFERER && param == self.url_parameter {
                        referer_token = taken.path.or(taken.query);
                    }
                    match HeaderValue::from_str(&clean) {
                        Ok(v) => headers.insert(name.clone(), v),
                        Err(_) => headers.remove(&name),
                    };
                }
            }
        }
        let Some(pq) = uri.path_and_query() else {
            return Ok(None);
        };
        // The common case, a URL with neither parameter, allocates nothing.
        let first = url::take_tokens(pq.as_str(), &self.url_parameter);
        let rest = first
            .as_ref()
            .map_or(pq.as_str(), |(clean, _)| clean.as_str());
        let second = url::take_tokens(rest, HANDOFF_PARAMETER);
        let (clean, mut tokens) = match (first, second) {
            (None, None) => return Ok(None),
            (Some((clean, tokens)), None) => (clean, tokens),
            (first, Some((clean, code))) => {
                let mut tokens = first.map(|(_, t)| t).unwrap_or_default();
                tokens.handoff = code.path.or(code.query);
                (clean, tokens)
            }
        };
        tokens.referer = referer_token;
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = PathAndQuery::try_from(clean).ok();
        match Uri::from_parts(parts) {
            Ok(clean) if clean.path_and_query().is_some() => {
                *uri = clean;
                Ok(Some(Box::new(tokens)))
            }
            _ => Err(url::BadTarget),
        }
    }

    /// The rest of `resolve`: the client's session headers and our cookies come out of the
    /// request, and the token it presents is chosen. A token counts from the cookie, else (on
    /// a route that tracks by URL, and for a request that does not come from another site)
    /// the path parameter, else the query: the first of them that is correctly signed. `url`:
    /// the tokens [`Sessions::take_url_tokens`] took out of the URL.
    pub fn resolve(
        &self,
        headers: &mut HeaderMap,
        info: &RequestInfo<'_>,
        url: Option<Box<UrlTokens>>,
    ) -> RequestSession {
        // Strip before anything reads or sets: a client must not pose as the gateway, under
        // any name that any route maps (a route's backend may be another route's too).
        contract::strip_client_headers(headers, &self.names, &self.guarded);
        let tls = info.tls;
        let taken = take_cookies(
            headers,
            self.cookie_name(tls),
            self.probe_name(tls),
            &self.other_listeners_names(tls),
        );
        let mut evidence = Evidence {
            takes_cookies: taken.probe || taken.session.is_some(),
            ..Evidence::default()
        };
        if let Some(origin) = info.origin {
            let came = Provenance::of(
                headers.get(FETCH_SITE).map(HeaderValue::as_bytes),
                headers.get(header::REFERER).and_then(|r| r.to_str().ok()),
                origin,
            );
            evidence.from_here = came.here;
            evidence.from_elsewhere = came.elsewhere;
        }
        if info.tracking != Tracking::Cookie {
            evidence.crawler = headers
                .get(header::USER_AGENT)
                .is_some_and(|ua| tracking::is_crawler(ua.as_bytes(), &self.crawlers));
        }
        if matches!(self.store, Store::Sealed(_)) {
            // The sealed store tracks by cookie only, and has no handoffs (`check` refuses
            // both): a URL's token or code counts for nothing here.
            return RequestSession::new(None, Source::None, info.tracking, evidence)
                .sealed(taken.session);
        }
        let (from_path, from_query) = url
            .as_deref()
            .map_or((None, None), |u| (u.path.as_deref(), u.query.as_deref()));
        let in_url = from_path.is_some() || from_query.is_some();
        // A URL token counts only where the route tracks by URL, and never when the request
        // comes from another site: anyone can put a token in a link (a fixation).
        let url_counts = info.tracking != Tracking::Cookie && !evidence.from_elsewhere;
        let candidates = [
            (Source::Cookie, taken.session.as_deref()),
            (Source::Url, from_path.filter(|_| url_counts)),
            (Source::Url, from_query.filter(|_| url_counts)),
        ];
        let (mut source, mut token) = candidates
            .into_iter()
            .filter_map(|(src, t)| Some((src, t?)))
            .find_map(|(src, t)| match Token::parse(t, &self.keys) {
                Ok(token) => Some((src, Some(token))),
                Err(e) => {
                    tracing::debug!(error = %e, "session token refused");
                    None
                }
            })
            .unwrap_or((Source::None, None));
        // A client that keeps cookies never takes a token from a URL: anyone can put one in a
        // link, or an image, on another site or on this one (a comment, an upload), and the
        // gateway would plant that session in the browser's cookie. It starts one of its own.
        if source == Source::Url && evidence.takes_cookies {
            tracing::debug!("a URL token for a client that keeps cookies: refused");
            (source, token) = (Source::None, None);
        }
        let mut rs = RequestSession::new(token, source, info.tracking, evidence);
        rs.in_url = in_url;
        rs.url = url;
        rs
    }

    /// The `load` phase: the session of the token `resolve` chose is loaded and judged
    /// against the timeouts, and the request's headers are written for the backend
    /// (`X-Session-Status`, `-Key`, `-Attr-*` and the route's mapped headers). A sibling's
    /// handoff code is redeemed here (see [`RequestSession::take_arrival`]).
    pub async fn load(
        &self,
        rs: &mut RequestSession,
        headers: &mut HeaderMap,
        info: &RequestInfo<'_>,
    ) {
        if rs.sealed.is_some() {
            return self.load_sealed(rs, headers, info.mapped).await;
        }
        let (handoff, referer) = match rs.url.take() {
            Some(u) => (u.handoff, u.referer),
            None => (None, None),
        };
        let now = unix_ms();
        let (status, session) = match &rs.token {
            None => (Status::None, None),
            Some(t) => match timed!(self.ops.load, self.store.load(&t.store_id(), now)) {
                Ok(Some(s)) if !s.expired(now, self.idle, self.absolute) => {
                    (Status::Active, Some(s))
                }
                Ok(_) => {
                    self.metrics.session(SessionEvent::Expired);
                    (Status::Expired, None)
                }
                Err(e) => {
                    tracing::warn!(session = %t, error = %e, "session store failed");
                    rs.store_failed = true;
                    (Status::None, None)
                }
            },
        };
        // A URL token from one of our pages whose own URL carried another token, of another
        // session (a login renews the token, not the session), was put in the link by
        // someone else (a comment, an upload): the client does not take it.
        let (status, session) = match (&session, rs.source, referer.as_deref()) {
            (Some(s), Source::Url, Some(referer))
                if !self
                    .same_session_as(referer, rs.token.as_ref(), s, now)
                    .await =>
            {
                tracing::debug!("a URL token unlike its Referer's: refused");
                rs.token = None;
                rs.source = Source::None;
                (Status::None, None)
            }
            _ => (status, session),
        };
        (rs.status, rs.session) = (status, session);
        // A URL whose token does not count here (the client holds its session in the
        // cookie; or the token is refused: the route does not track by URL, another site
        // wrote the link, the client keeps cookies, the token is not ours) is left for the
        // same URL without it, so that no page is shown at an address that names a token the
        // client does not hold, which a copy, a bookmark or the next link's Referer would
        // carry on. Another method cannot be redirected: its response sends no Referer.
        rs.url_token_ignored = rs.in_url && rs.source != Source::Url;
        rs.clean_redirect =
            rs.url_token_ignored && matches!(*info.method, Method::GET | Method::HEAD);
        // A sibling host's handoff: answered by the proxy, never by the backend.
        rs.arrival = match handoff {
            Some(code) if !rs.store_failed => {
                let live = rs
                    .token
                    .as_ref()
                    .filter(|_| rs.session.is_some())
                    .map(|t| (t.clone(), rs.source == Source::Url));
                self.hand_in(&code, headers, info.method, info.share_with, live)
                    .await
            }
            _ => None,
        };
        if rs.arrival.is_none() {
            contract::set_session_headers(
                headers,
                &self.names,
                rs.status,
                rs.session.as_ref(),
                info.mapped,
            );
        }
    }

    /// Whether the token in a page's URL (`referer`, as written) reaches the same session `s`
    /// as `token` (itself, or a token of it from before a regenerate); `true` when it is no
    /// token at all, or one whose session is gone (nothing to take over: a client whose
    /// session expired logs in again from its stale pages).
    async fn same_session_as(
        &self,
        referer: &str,
        token: Option<&Token>,
        s: &Session,
        now: u64,
    ) -> bool {
        let Ok(theirs) = Token::parse(referer, &self.keys) else {
            return true;
        };
        if Some(&theirs) == token {
            return true;
        }
        match timed!(self.ops.load, self.store.load(&theirs.store_id(), now)) {
            Ok(Some(other)) => other.key() == s.key(),
            Ok(None) => true,
            // Fail closed: the request goes on without the URL's token.
            Err(_) => false,
        }
    }

    /// For a route without sessions: the client's headers that pose as the gateway's go, as
    /// on routes with sessions (the same application may sit behind both).
    pub fn strip_forged(&self, headers: &mut HeaderMap) {
        contract::strip_client_headers(headers, &self.names, &self.guarded);
    }

    /// For a response on a route without sessions: the backend's directives (anything under
    /// the prefix) go, unapplied; `true` if there were any.
    pub fn strip_directives(&self, headers: &mut HeaderMap) -> bool {
        let found = contract::strip_prefixed(headers, &self.names);
        if found {
            self.metrics.session(SessionEvent::DirectiveRejected);
            tracing::debug!("session directives on a route without sessions: removed");
        }
        found
    }

    /// Whether a trailer (or any header) name is one of ours: under the prefix, in any
    /// spelling.
    pub fn is_ours(&self, name: &HeaderName) -> bool {
        contract::under_prefix(name.as_str(), &self.names)
    }

    /// `load` with the sealed-cookie store: the cookie is the session. It goes into a jar of
    /// this request's own, under an id made for the request, so that `commit` works on it as
    /// on any store; what the jar holds afterwards becomes the response's cookie.
    async fn load_sealed(
        &self,
        rs: &mut RequestSession,
        headers: &mut HeaderMap,
        mapped: &[(String, HeaderName)],
    ) {
        let Some(sealed) = rs.sealed.as_deref_mut() else {
            return;
        };
        let Store::Sealed(template) = &self.store else {
            return;
        };
        let now = unix_ms();
        let jar = match Token::generate(&self.keys) {
            Ok(t) => {
                let j = template
                    .sealer()
                    .jar_for_request(t.store_id(), sealed.presented.as_deref());
                // A cookie that does not open (tampered, or sealed by a retired secret) counts
                // as none.
                if let Ok(Some(s)) = timed!(self.ops.load, j.load(&t.store_id(), now)) {
                    if s.expired(now, self.idle, self.absolute) {
                        self.metrics.session(SessionEvent::Expired);
                        rs.status = Status::Expired;
                    } else {
                        (rs.status, rs.session) = (Status::Active, Some(s));
                    }
                    rs.token = Some(t);
                    rs.source = Source::Cookie;
                }
                Store::Sealed(j)
            }
            Err(e) => {
                // The request still gets a jar of its own (an empty one), so that nothing it
                // does can reach the configured store's.
                tracing::warn!(error = %e, "no randomness: sealed session not read");
                Store::Sealed(
                    template
                        .sealer()
                        .jar_for_request(super::StoreId([0; 16]), None),
                )
            }
        };
        sealed.jar = Some(jar);
        contract::set_session_headers(headers, &self.names, rs.status, rs.session.as_ref(), mapped);
    }

    /// The `commit` phase: directives out of the response, applied unless it is a 5xx, and
    /// the cookie set or expired when the token changes. With URL tracking no cookie is set:
    /// the token the client holds after this response is returned instead, for the proxy to
    /// put into the response's URLs.
    ///
    /// # Errors
    /// A logout the store could not make (see [`LogoutFailed`]).
    pub async fn commit(
        &self,
        mut rs: RequestSession,
        status: StatusCode,
        headers: &mut HeaderMap,
        tls: bool,
    ) -> Result<Option<Held>, LogoutFailed> {
        if let Some(sealed) = rs.sealed.take() {
            self.commit_sealed(rs, *sealed, status, headers, tls).await;
            // Nothing goes into URLs: the sealed store is cookie-only.
            return Ok(None);
        }
        let carry = tracking::carry(rs.tracking, rs.source, rs.evidence);
        let auto = rs.tracking == Tracking::Auto && !rs.evidence.crawler;
        let kept_cookies = rs.evidence.takes_cookies;
        let had_cookie_session = rs.session.is_some() && rs.source == Source::Cookie;
        let from_elsewhere = rs.evidence.from_elsewhere;
        let read_only = rs.session.as_ref().is_some_and(Session::is_read_only);
        let held = self
            .apply_directives(rs, status, headers, tls, carry.cookie(), &self.store)
            .await?;
        // No session cookie of ours goes out (a client without a session, or one whose
        // session just ended): the probe asks, or goes on showing, that the client keeps
        // cookies, and so never takes a token from a URL.
        let ended = had_cookie_session && held.is_none();
        if auto && !(held.is_some() && carry.cookie()) && (!kept_cookies || ended) {
            self.set_probe(headers, tls);
        }
        Ok(held.map(|token| Held {
            token,
            by_url: carry.url(),
            read_only,
            from_elsewhere,
        }))
    }

    /// A sibling host's handoff code in the URL. It counts only on a top-level navigation
    /// that comes from one of the route's sibling hosts (see [`handoff::from_sibling`]), and
    /// is taken then (once, whatever follows). A client that already has a live session here
    /// keeps it (`live`: its token, and whether it came in the URL): a code never replaces a
    /// session, or an attacker's link would log the victim into the attacker's account.
    /// Otherwise the client gets a new token for the session, filed as an alias of it.
    async fn hand_in(
        &self,
        code: &str,
        headers: &HeaderMap,
        method: &Method,
        siblings: &[String],
        live: Option<(Token, bool)>,
    ) -> Option<Arrival> {
        if !handoff::from_sibling(headers, method, siblings) {
            tracing::debug!("a handoff code not on a navigation from a sibling host: ignored");
            return None;
        }
        let (code, by_url) = handoff::read_code(code)?;
        let target = match timed!(self.ops.take_code, self.store.take_code(&code)) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(error = %e, "session handoff failed");
                None
            }
        };
        if let Some((token, in_url)) = live {
            return Some(Arrival {
                token,
                by_url: in_url,
                fresh: false,
            });
        }
        let target = target?;
        let fresh = Token::generate(&self.keys).ok()?;
        match timed!(
            self.ops.alias,
            self.store.alias(&fresh.store_id(), &target, self.absolute)
        ) {
            Ok(true) => Some(Arrival {
                token: fresh,
                by_url,
                fresh: true,
            }),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "session handoff failed");
                None
            }
        }
    }

    /// A one-time code that hands the session of `token` to a sibling host (see `handoff`).
    /// It is filed in the store in the background, as the link that carries it is rewritten:
    /// a click comes long after that write (a millisecond); one that beats it, or a store that
    /// fails, leaves the sibling without the session, as a code that expired does.
    pub fn issue_handoff(&self, token: &Token, by_url: bool) -> Option<String> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (alias, code) = handoff::new_code(by_url)?;
        let (store, to, m) = (
            self.store.clone(),
            token.store_id(),
            self.ops.put_code.clone(),
        );
        runtime.spawn(async move {
            if let Err(e) = timed!(m, store.put_code(&alias, &to, HANDOFF_TTL)) {
                tracing::warn!(error = %e, "session handoff code not filed");
            }
        });
        Some(code)
    }

    /// Sets the cookie of an arriving client (see [`RequestSession::take_arrival`]).
    pub fn arrival_cookie(&self, headers: &mut HeaderMap, token: &Token, tls: bool) {
        self.set_cookie(headers, Some(token), tls);
    }

    /// `commit` with the sealed-cookie store: the directives applied to the request's jar, then
    /// the cookie set when the sealed session changed, or cleared when it ended.
    async fn commit_sealed(
        &self,
        rs: RequestSession,
        sealed: SealedRequest,
        status: StatusCode,
        headers: &mut HeaderMap,
        tls: bool,
    ) {
        // `load` gave every request a jar of its own.
        let Some(store) = &sealed.jar else {
            return;
        };
        // The request's own jar: a logout there cannot fail.
        let held = self
            .apply_directives(rs, status, headers, tls, false, store)
            .await
            .ok()
            .flatten();
        let Store::Sealed(jar) = store else {
            return;
        };
        let now = held.and_then(|t| jar.cookie(&t.store_id()));
        match (now, sealed.presented) {
            (Some(v), presented) if presented.as_deref() != Some(v.as_str()) => {
                self.set_cookie_value(headers, Some(&v), tls);
            }
            (None, Some(_)) => self.set_cookie_value(headers, None, tls),
            _ => {}
        }
    }

    /// Applies the directives to the session in `store`; returns the token of the session the
    /// client holds afterwards. Cookies for new tokens are set if `set_cookies` (else the
    /// token travels in URLs, or the caller sets a cookie of its own).
    async fn apply_directives(
        &self,
        rs: RequestSession,
        status: StatusCode,
        headers: &mut HeaderMap,
        tls: bool,
        set_cookies: bool,
        store: &Store,
    ) -> Result<Option<Token>, LogoutFailed> {
        let by_url = !set_cookies;
        let d = contract::take_directives(headers, &self.names);
        for why in &d.ignored {
            self.metrics.session(SessionEvent::DirectiveRejected);
            tracing::warn!(reason = %why, "session directive ignored");
        }
        // The token of a live session, or one whose session has expired.
        let read_only = rs.session.as_ref().is_some_and(Session::is_read_only);
        let (live, expired) = match (rs.token, rs.session.is_some()) {
            (Some(t), true) => (Some(t), None),
            (t, _) => (None, t),
        };
        if d.is_empty() {
            return Ok(live);
        }
        if status.is_server_error() {
            tracing::debug!(%status, "session directives of a 5xx response not applied");
            return Ok(live);
        }
        if read_only && !d.destroy {
            // A token a regenerate retired (perhaps a fixated one, in an attacker's hands):
            // it reads the session as it was, and changes nothing. Its logout ends only its
            // own view (below).
            self.metrics.session(SessionEvent::DirectiveRejected);
            tracing::warn!(session = %live.as_ref().map_or_else(String::new, Token::to_string), "session directives through a token retired by a regenerate: ignored");
            return Ok(live);
        }
        let now = unix_ms();
        if d.destroy {
            let presented = live.as_ref().or(expired.as_ref());
            if let Some(t) = presented {
                match timed!(self.ops.delete, store.delete(&t.store_id())) {
                    Ok(()) => self.metrics.session(SessionEvent::Destroyed),
                    Err(e) => {
                        // The session lives on in the store: the client must not be told it
                        // logged out (its cookie kept, a stolen copy would go on working).
                        tracing::warn!(session = %t, error = %e, "session delete failed: the logout is refused");
                        return Err(LogoutFailed);
                    }
                }
            }
            if presented.is_some() && !by_url {
                self.set_cookie(headers, None, tls);
            }
            return Ok(None);
        }
        match live {
            Some(token) => {
                // A regenerate comes first: the old token's view (read-only, for the grace) is
                // the session as it was before this response, never the login it carries.
                let token = if d.regenerate {
                    let Some(token) = self.regenerate(store, token, headers, tls, by_url).await
                    else {
                        return Ok(None);
                    };
                    token
                } else {
                    token
                };
                if !d.changes.is_empty() {
                    self.update(store, &token.store_id(), None, &d.changes, now, &token)
                        .await;
                }
                Ok(Some(token))
            }
            None => {
                // No live session: only a write creates one (bots and health checks never do).
                if !d.changes.iter().any(|c| matches!(c, Change::Set(..))) {
                    return Ok(None);
                }
                if let Some(old) = &expired {
                    // Expired: clear what is left of it.
                    let _ = timed!(self.ops.delete, store.delete(&old.store_id()));
                }
                let (Ok(fresh), Ok(key)) = (Token::generate(&self.keys), SessionKey::generate())
                else {
                    tracing::warn!("no randomness: session not created");
                    return Ok(None);
                };
                if !self
                    .update(store, &fresh.store_id(), Some(key), &d.changes, now, &fresh)
                    .await
                {
                    return Ok(None);
                }
                self.metrics.session(SessionEvent::Created);
                if !by_url {
                    self.set_cookie(headers, Some(&fresh), tls);
                }
                Ok(Some(fresh))
            }
        }
    }

    /// Gives the session of `token` a new token (the old one is retired: read-only for the
    /// grace); the token the client holds afterwards. `None` if the session is gone, or if it
    /// could not be regenerated: then it is ended rather than kept under the old token (a
    /// login applied to a token that someone else may hold is a fixation), and the client
    /// logs in again.
    async fn regenerate(
        &self,
        store: &Store,
        token: Token,
        headers: &mut HeaderMap,
        tls: bool,
        by_url: bool,
    ) -> Option<Token> {
        let renamed = match Token::generate(&self.keys) {
            Ok(fresh) => timed!(
                self.ops.rename,
                store.rename(&token.store_id(), &fresh.store_id(), self.grace)
            )
            .map(|moved| moved.then_some(fresh)),
            Err(e) => Err(StoreError(e.to_string())),
        };
        match renamed {
            Ok(Some(fresh)) => {
                self.metrics.session(SessionEvent::Regenerated);
                if !by_url {
                    self.set_cookie(headers, Some(&fresh), tls);
                }
                Some(fresh)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(session = %token, error = %e, "regenerate failed: the session is ended, its changes not applied");
                if let Err(e) = timed!(self.ops.delete, store.delete(&token.store_id())) {
                    tracing::warn!(session = %token, error = %e, "session delete failed");
                }
                if !by_url {
                    self.set_cookie(headers, None, tls);
                }
                None
            }
        }
    }

    /// The name of the URL parameter that carries tokens.
    pub fn url_parameter(&self) -> &str {
        &self.url_parameter
    }

    /// Applies changes; `true` if the session exists afterwards.
    async fn update(
        &self,
        store: &Store,
        id: &super::StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now: u64,
        token: &Token,
    ) -> bool {
        match timed!(self.ops.update, store.update(id, create, changes, now)) {
            Ok(Some(applied)) => {
                for r in &applied.rejected {
                    self.metrics.session(SessionEvent::DirectiveRejected);
                    tracing::warn!(session = %token, attribute = %r.name, limit = r.reason, "session change over a limit ignored");
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(session = %token, error = %e, "session update failed");
                false
            }
        }
    }

    /// Adds `Set-Cookie` for `token`, or one that expires the cookie when `None`.
    fn set_cookie(&self, headers: &mut HeaderMap, token: Option<&Token>, tls: bool) {
        self.set_cookie_value(headers, token.map(Token::expose).as_deref(), tls);
    }

    /// Adds `Set-Cookie` with `value` (a token, or a sealed session), or one that expires the
    /// cookie when `None`.
    fn set_cookie_value(&self, headers: &mut HeaderMap, value: Option<&str>, tls: bool) {
        let c = &self.cookie;
        let mut b = Cookie::build((self.cookie_name(tls).to_owned(), value.unwrap_or_default()))
            .path(c.path.clone())
            .http_only(c.http_only)
            .secure(self.secure(tls))
            .same_site(match c.same_site {
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::Strict => cookie::SameSite::Strict,
                SameSite::None => cookie::SameSite::None,
            });
        if let Some(d) = &c.domain {
            b = b.domain(d.clone());
        }
        let mut cookie = b.build();
        match value {
            None => cookie.make_removal(),
            Some(_) => {
                if let Some(age) = c.max_age {
                    let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
                    cookie.set_max_age(cookie::time::Duration::seconds(secs));
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
            headers.append(header::SET_COOKIE, v);
        }
        // A response that hands out (or clears) a credential must not be stored by shared
        // caches, whatever the backend said.
        crate::cache_control::make_private(headers);
    }
}
