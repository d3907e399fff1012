//! The proxy's one entry into sessions: what happens to a request on the way in (`resolve`,
//! `load`) and to its response on the way out (`commit`).
//!
//! In: the client's session cookie is taken out of `Cookie`, its token checked (a refused
//! token counts as none and is never looked up), the session loaded and judged against its
//! timeouts; forged session headers are stripped and the real ones set. Out: the backend's
//! directives are taken out of the response whatever its status, and applied unless it is a
//! 5xx: a session is created on its first `Set` (never for requests that write nothing),
//! regenerated with a new token that keeps data and key, or destroyed. Where sessions are
//! kept decides how `load` and `commit` do it: `kept_in_store` or `kept_in_cookies`.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};

use super::contract::{self, Names};
use super::events::{EventKind, Events};
use super::jar::{self, Jar, JarScope};
use super::kept_in_cookies::{CookieChange, KeptInCookies};
use super::kept_in_store::KeptInStore;
use super::migration::Migration;
use super::our_cookies::OurCookies;
use super::request::{Held, LogoutFailed, RequestInfo, RequestSession};
use super::server_store::ServerStore;
use super::setup::{Foundation, Kept};
use super::store::{AdminStore, Change, Session, SessionKey, SessionStore, StoreError, unix_ms};
use super::subjects;
use super::token::{StoreId, Token, TokenError};
use super::tracking::{self, Evidence, Provenance, Source};
use super::transfer;
use super::tunnel_watch::{SessionWatch, Target, Tunnels};
use super::url::{self, UrlTokens};
use crate::config::{ConfigError, SessionsConfig, Tracking};
use crate::metrics::{Metrics, SessionEvent, Snapshot};

/// `Sec-Fetch-Site`: where a browser says a request comes from.
const FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// `X-Forwarded-For`, as the gateway forwards it (its peer appended).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `Sec-Fetch-Mode`: `navigate` for a top-level navigation.
const FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// The session cookie as `resolve` reads it.
enum FromCookie {
    /// A token, checked.
    Token(Result<Token, TokenError>),
    /// A sealed session, as presented.
    Sealed(String),
}

/// Sessions as the proxy sees them.
pub struct Sessions {
    /// The keys, and where sessions are kept, as built (a reload builds on them).
    foundation: Foundation,
    /// How the request path loads and commits them.
    keeper: Keeper,
    names: Names,
    /// Every header name any route maps an attribute to: no client may send one, on any
    /// route.
    guarded: Vec<HeaderName>,
    cookies: OurCookies,
    url_parameter: String,
    crawlers: Vec<String>,
    metrics: Arc<Metrics>,
    /// `store.memory.snapshot`: the file the memory store is loaded from and saved to.
    snapshot: Option<std::path::PathBuf>,
    /// The limits on session data, which an import is held to.
    limits: crate::config::SessionLimits,
    /// What happens to sessions (kept across reloads, with the streams reading it).
    events: Arc<Events>,
    /// Where open tunnels look at their sessions (kept across reloads, with the tunnels).
    tunnels: Arc<Tunnels>,
    /// `sessions.subject`.
    subject: String,
}

/// Sessions in a server store, or sealed in clients' cookies.
enum Keeper {
    InStore(KeptInStore),
    InCookies(KeptInCookies),
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("kept", &self.foundation.kept)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions for a configuration (`source` names it in errors); on a reload, built on the
    /// `previous` sessions' store and keys where they still hold (see
    /// `setup::Foundation::build`).
    ///
    /// # Errors
    /// The secret file cannot be read or holds an unusable secret, or the store cannot be
    /// built: with its position.
    pub fn from_config(
        config: &SessionsConfig,
        source: &str,
        metrics: &Arc<Metrics>,
        previous: Option<&Sessions>,
    ) -> Result<Sessions, ConfigError> {
        let mut foundation = Foundation::build(config, source, previous.map(|p| &p.foundation))?;
        let names = Names::new(&config.header_prefix).map_err(|msg| {
            ConfigError::single(source, config.secret_pos, "sessions.secret_file", msg)
        })?;
        let keys = foundation.keys.clone();
        let events = previous.map_or_else(
            || Events::new(&Events::default_gateway_name()),
            |p| p.events.clone(),
        );
        let tunnels = previous.map_or_else(Arc::default, |p| p.tunnels.clone());
        match &foundation.kept {
            Kept::InStore(ServerStore::Memory(m)) => m.set_subject(&config.subject),
            Kept::InStore(ServerStore::Redis(r)) => r.set_subject(&config.subject),
            Kept::InCookies(_) => {}
        }
        if let Kept::InStore(ServerStore::Memory(m)) = &foundation.kept {
            // Sessions that idle out of memory are told as expired (Redis expires its keys
            // unseen: there a request or a tunnel finds the expiry).
            let events = Arc::downgrade(&events);
            m.on_expiry(Box::new(move |s, subject| {
                if let Some(events) = events.upgrade() {
                    let who = s.attr(subject).filter(|v| !v.is_empty());
                    events.emit(EventKind::Expired, s.key(), who, None, false);
                }
            }));
        }
        let keeper = match &foundation.kept {
            Kept::InStore(store) => {
                // A replaced store's sessions start moving; a move under way goes on when the
                // store is kept.
                let migration = match foundation.migrate_from.take() {
                    Some((from, window)) => Some(Migration::start(
                        from,
                        store.clone(),
                        window,
                        metrics,
                        subjects::Owners {
                            attribute: config.subject.clone(),
                            idle: config.idle_timeout,
                            absolute: config.absolute_timeout,
                        },
                    )),
                    None => previous.and_then(|p| match &p.keeper {
                        Keeper::InStore(k) => k.migration().cloned(),
                        Keeper::InCookies(_) => None,
                    }),
                };
                Keeper::InStore(
                    KeptInStore::new(
                        store.clone(),
                        keys,
                        metrics,
                        (
                            config.idle_timeout,
                            config.absolute_timeout,
                            config.regenerate_grace,
                        ),
                    )
                    .migrating(migration)
                    .owned(&config.subject, config.per_subject, &events),
                )
            }
            Kept::InCookies(sealer) => Keeper::InCookies(KeptInCookies::new(
                sealer.clone(),
                metrics,
                (config.idle_timeout, config.absolute_timeout),
            )),
        };
        Ok(Sessions {
            foundation,
            keeper,
            names,
            guarded: Vec::new(),
            cookies: OurCookies::new(&config.cookie),
            url_parameter: config.url_parameter.clone(),
            crawlers: config.crawlers.clone(),
            metrics: metrics.clone(),
            limits: config.limits,
            events,
            tunnels,
            subject: config.subject.clone(),
            snapshot: config
                .memory_snapshot
                .clone()
                .filter(|_| matches!(config.store, crate::config::StoreConfig::Memory { .. })),
        })
    }

    /// The sessions, guarding `names` too: the header names every route maps attributes to,
    /// which no client may send on any route.
    #[must_use]
    pub fn guarding(mut self, names: Vec<HeaderName>) -> Sessions {
        self.guarded = names;
        self
    }

    /// The server store, unless sessions are sealed in cookies.
    fn store(&self) -> Option<&ServerStore> {
        match &self.keeper {
            Keeper::InStore(s) => Some(s.store()),
            Keeper::InCookies(_) => None,
        }
    }

    /// Whether the store answers (`/readyz`; sealed cookies always do).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.store() {
            Some(store) => store.ping().await,
            None => Ok(()),
        }
    }

    /// Whether the sessions live sealed in clients' cookies: none can be looked up or ended
    /// here (the admin API says so).
    pub fn sealed_in_cookies(&self) -> bool {
        matches!(self.keeper, Keeper::InCookies(_))
    }

    /// The session with the stable key `key`, and its id (admin API).
    pub async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        match self.store() {
            Some(store) => store.find_by_key(key).await,
            None => Ok(None),
        }
    }

    /// A move in from a replaced store, while it goes on.
    fn migration(&self) -> Option<&Arc<Migration>> {
        match &self.keeper {
            Keeper::InStore(k) => k.migration(),
            Keeper::InCookies(_) => None,
        }
    }

    /// Revokes session `s` under `id` (admin API), in the store it may still be moving from
    /// too: its tunnels close, here and on other gateways.
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn end(&self, id: &StoreId, s: &Session) -> Result<(), StoreError> {
        match &self.keeper {
            Keeper::InStore(k) => {
                if k.end_one(id, s, EventKind::Revoked, None).await {
                    self.metrics.session(SessionEvent::Revoked);
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(
                        "the session could not be ended".to_owned(),
                    ))
                }
            }
            Keeper::InCookies(_) => Ok(()),
        }
    }

    /// The live sessions of `subject` (admin API), found through the subject index.
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn of_subject(&self, subject: &str) -> Result<Vec<(StoreId, Session)>, StoreError> {
        match &self.keeper {
            Keeper::InStore(k) => k.of_subject(subject).await,
            Keeper::InCookies(_) => Ok(Vec::new()),
        }
    }

    /// Revokes every session of `subject` but the one whose key is `except` (admin API);
    /// how many ended.
    ///
    /// # Errors
    /// The store did not answer the listing (sessions it could not end are not counted).
    pub async fn end_subject(
        &self,
        subject: &str,
        except: Option<&str>,
    ) -> Result<usize, StoreError> {
        let Keeper::InStore(k) = &self.keeper else {
            return Ok(0);
        };
        // Sessions still in a store they are moving from end there too (found by a scan;
        // with `except`, the one kept may be among them, and the old store is left alone).
        if let (Some(m), None) = (self.migration(), except) {
            m.ended_where(&self.subject, subject).await;
        }
        let mut ended = 0;
        for (id, s) in k.of_subject(subject).await? {
            if Some(s.key()) == except {
                continue;
            }
            if k.end_one(&id, &s, EventKind::Revoked, None).await {
                self.metrics.session(SessionEvent::Revoked);
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The attribute that names a session's subject.
    pub fn subject_attribute(&self) -> &str {
        &self.subject
    }

    /// The session a tunnel (an upgraded connection) is being opened with, watched: the
    /// tunnel closes when it ends (see [`SessionWatch`]). `None` without a live session in a
    /// server store.
    pub fn watch(&self, rs: &RequestSession) -> Option<SessionWatch> {
        let Keeper::InStore(_) = &self.keeper else {
            return None;
        };
        let (token, session) = (rs.token.as_ref()?, rs.session.as_ref()?);
        Some(SessionWatch {
            watch: self.events().watch(session.key()),
            id: token.store_id(),
            tunnels: self.tunnels.clone(),
        })
    }

    /// These sessions serve from now on (the gateway started, or a reload swapped them in):
    /// open tunnels look at their sessions in this store, with these timeouts, and look
    /// again at once if a reload replaced another.
    pub fn in_use(&self) {
        let Keeper::InStore(k) = &self.keeper else {
            return;
        };
        // Other gateways' events are heard from the start: a tunnel opened later must not
        // miss one said while the subscription was being made.
        let _ = self.events();
        let (idle, absolute) = k.timeouts();
        let replaced = self.tunnels.point_at(Target {
            store: k.store().clone(),
            idle,
            absolute,
            migration: k.migration().cloned(),
        });
        if replaced {
            self.events.poke_all();
        }
    }

    /// What happens to sessions, here (and, with Redis, on every gateway sharing it).
    pub fn events(&self) -> &Arc<Events> {
        if let Some(ServerStore::Redis(r)) = self.store() {
            r.relay_events(&self.events);
        }
        &self.events
    }

    /// Revokes every session whose attribute `name` equals `value` (log a user out
    /// everywhere, found by a scan); how many (admin API). In the store sessions may still be
    /// moving from too. Their tunnels close, here and on other gateways.
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn end_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        if let Some(m) = self.migration() {
            m.ended_where(name, value).await;
        }
        let Keeper::InStore(k) = &self.keeper else {
            return Ok(0);
        };
        let ended = k.store().delete_where(name, value).await?;
        for (id, s) in &ended {
            k.ended_elsewhere(id, s).await;
            self.metrics.session(SessionEvent::Revoked);
        }
        Ok(ended.len())
    }

    /// Every live session as JSON lines (see [`transfer`]); `Ok("")` with sealed cookies,
    /// which no server holds.
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn export(&self) -> Result<String, StoreError> {
        match self.store() {
            Some(store) => transfer::export(store).await,
            None => Ok(String::new()),
        }
    }

    /// Loads sessions from JSON lines into the store (see [`transfer::import`]); sessions
    /// already there, or past their timeouts, are left out.
    ///
    /// # Errors
    /// The store did not answer (what was imported before stays).
    pub async fn import(&self, lines: &str) -> Result<transfer::Imported, StoreError> {
        match &self.keeper {
            Keeper::InStore(s) => {
                transfer::import(s.store(), lines, &s.owners(), &self.limits, unix_ms()).await
            }
            Keeper::InCookies(_) => Ok(transfer::Imported::default()),
        }
    }

    /// At start: the memory store's sessions loaded from its snapshot file, if there is one
    /// (`store.memory.snapshot`); how many. A file that cannot be read is reported and left
    /// alone: the gateway starts with what it could load.
    pub async fn load_snapshot(&self) -> usize {
        let Some(file) = &self.snapshot else { return 0 };
        let text = match tokio::fs::read_to_string(file).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "session snapshot not read");
                return 0;
            }
        };
        match self.import(&text).await {
            Ok(done) => {
                // Loaded once: a crash before the next drain must not bring back, from this
                // file, sessions that have ended since (the memory store keeps no trace of a
                // logout). Kept aside for the operator.
                let mut aside = file.as_os_str().to_owned();
                aside.push(".loaded");
                if let Err(e) = tokio::fs::rename(file, &aside).await {
                    tracing::warn!(file = %file.display(), error = %e, "the loaded snapshot was not set aside");
                }
                tracing::info!(
                    file = %file.display(),
                    imported = done.imported,
                    expired = done.expired,
                    invalid = done.invalid,
                    "sessions loaded from the snapshot"
                );
                done.imported
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "session snapshot not loaded");
                0
            }
        }
    }

    /// At drain: the memory store's live sessions written to its snapshot file (a new file
    /// renamed over the old, readable by its owner only); how many.
    ///
    /// # Errors
    /// The file cannot be written.
    pub async fn save_snapshot(&self) -> std::io::Result<usize> {
        let Some(file) = self.snapshot.clone() else {
            return Ok(0);
        };
        let lines = self.export().await.map_err(std::io::Error::other)?;
        let count = lines.lines().count();
        tokio::task::spawn_blocking(move || write_replacing(&file, lines.as_bytes()))
            .await
            .map_err(std::io::Error::other)??;
        Ok(count)
    }

    /// The store's kind (`memory`, `redis`, `cookie`).
    pub fn store_kind(&self) -> &'static str {
        self.store().map_or("cookie", ServerStore::kind)
    }

    /// Sessions held now, where the store can tell cheaply (memory).
    pub fn live_count(&self) -> Option<u64> {
        match self.store() {
            Some(ServerStore::Memory(m)) => Some(m.entry_count()),
            _ => None,
        }
    }

    /// The idle timeout, in ms.
    pub fn idle_ms(&self) -> u64 {
        let idle = match &self.keeper {
            Keeper::InStore(k) => k.timeouts().0,
            Keeper::InCookies(_) => std::time::Duration::ZERO,
        };
        u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)
    }

    /// What the store knows of itself, for a metrics scrape.
    pub fn fill_snapshot(&self, snapshot: &mut Snapshot) {
        match self.store() {
            Some(ServerStore::Memory(m)) => {
                snapshot.sessions_live = Some(m.entry_count());
                snapshot.sessions_evicted = Some(m.evictions());
            }
            Some(ServerStore::Redis(r)) => snapshot.near_cache = r.near_cache_stats(),
            None => {}
        }
    }

    /// The first part of `resolve`, done for every request before it is logged or routed: a
    /// token in the URL (path or query parameter) is taken out of the request target, and out
    /// of a `Referer`, `Ping-From` or `Ping-To` that carries one, so that no backend and no
    /// log sees it (see [`url::take_from_request`]).
    ///
    /// # Errors
    /// The target without its token is no longer a valid URI (see [`url::BadTarget`]).
    pub fn take_url_tokens(
        &self,
        uri: &mut Uri,
        headers: &mut HeaderMap,
    ) -> Result<Option<Box<UrlTokens>>, url::BadTarget> {
        url::take_from_request(uri, headers, &self.url_parameter)
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
        let keys = &self.foundation.keys;
        let sealed = matches!(self.keeper, Keeper::InCookies(_));
        // The cookie is read where it lies: a token is parsed from it, and only a sealed
        // session is copied out.
        let taken = self.cookies.take(headers, tls, |value| {
            if sealed {
                FromCookie::Sealed(value.to_owned())
            } else {
                FromCookie::Token(Token::parse(value, keys))
            }
        });
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
        if sealed {
            // The sealed store tracks by cookie only, and has no handoffs (`check` refuses
            // both): a URL's token or code counts for nothing here.
            let presented = match taken.session {
                Some(FromCookie::Sealed(presented)) => Some(presented),
                _ => None,
            };
            return RequestSession::new(None, Source::None, info.tracking, evidence)
                .sealed(presented);
        }
        let from_cookie = match taken.session {
            Some(FromCookie::Token(parsed)) => Some(parsed),
            _ => None,
        };
        let (from_path, from_query) = url
            .as_deref()
            .map_or((None, None), |u| (u.path.as_deref(), u.query.as_deref()));
        let in_url = from_path.is_some() || from_query.is_some();
        // A URL token counts only where the route tracks by URL, and never when the request
        // comes from another site: anyone can put a token in a link (a fixation).
        let url_counts = info.tracking != Tracking::Cookie && !evidence.from_elsewhere;
        // The URL's tokens are parsed only if the cookie's is missing or refused.
        let url_candidates = [from_path, from_query].into_iter().map(|t| {
            (
                Source::Url,
                t.filter(|_| url_counts).map(|t| Token::parse(t, keys)),
            )
        });
        let (mut source, mut token) = std::iter::once((Source::Cookie, from_cookie))
            .chain(url_candidates)
            .filter_map(|(src, parsed)| Some((src, parsed?)))
            .find_map(|(src, parsed)| match parsed {
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
        match &self.keeper {
            Keeper::InStore(s) => {
                s.load(rs, headers, info).await;
                // What a session this request logs into records of its client.
                rs.agent = headers.get(header::USER_AGENT).cloned();
                rs.client = Some(if info.trusted.is_empty() {
                    info.peer
                } else {
                    subjects::client_address(info.peer, headers.get(X_FORWARDED_FOR), info.trusted)
                });
            }
            Keeper::InCookies(c) => c.load(rs).await,
        }
        if rs.arrival.is_none() {
            contract::set_session_headers(
                headers,
                &self.names,
                rs.status,
                rs.session.as_ref(),
                info.mapped,
            );
        }
        // Whatever else happens to the request (even an arrival the proxy cannot answer
        // itself), the client's cookies are judged and the kept ones added.
        if let Some(jar) = info.jar {
            let mut scope = jar_scope(jar, headers, info);
            if rs.session.is_none() && !rs.store_failed {
                scope.adopted = jar::adoptable(headers, &scope);
            }
            jar::attach(headers, &scope, rs.session.as_ref(), unix_ms());
            rs.jar = Some(Box::new(scope));
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

    /// A client's application cookie `adopted` now lives in its new session: its copy in
    /// the browser is expired.
    fn adopted(&self, headers: &mut HeaderMap, adopted: Option<String>) {
        if let Some(name) = adopted {
            jar::expire_client_copy(headers, &name);
            self.metrics.session(SessionEvent::Adopted);
        }
    }

    /// Takes out of a backend's response every cookie named like ours (any case, either
    /// kind of listener): on any route, a backend must not plant, replace or end the
    /// gateway's session cookie or its probe. `true` if there was one.
    pub fn drop_backend_cookies_like_ours(&self, headers: &mut HeaderMap) -> bool {
        let gone = jar::drop_named_like(headers, &self.cookies.all_names());
        if gone > 0 {
            self.metrics.session(SessionEvent::DirectiveRejected);
            tracing::warn!(
                cookies = gone,
                "backend cookies named like the gateway's: removed"
            );
        }
        gone > 0
    }

    /// Whether a trailer (or any header) name is one of ours: under the prefix, in any
    /// spelling.
    pub fn is_ours(&self, name: &HeaderName) -> bool {
        contract::under_prefix(name.as_str(), &self.names)
    }

    /// The `commit` phase: directives out of the response, applied unless it is a 5xx, and
    /// the cookie set or expired when the token changes; on a route with a cookie jar, the
    /// backend's cookies are kept (`served_by`: the server that answered, which a session
    /// whose application cookie it made is pinned to). With URL tracking no cookie is set:
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
        (served_by, route): (Option<&str>, &str),
    ) -> Result<Option<Held>, LogoutFailed> {
        let mut d = contract::take_directives(headers, &self.names);
        for why in &d.ignored {
            self.metrics.session(SessionEvent::DirectiveRejected);
            tracing::warn!(reason = %why, "session directive ignored");
        }
        self.drop_backend_cookies_like_ours(headers);
        let mut adopted = None;
        if let Some(scope) = rs.jar.take() {
            adopted = scope.adopted.as_ref().map(|(name, _)| name.clone());
            let captured = jar::capture(headers, &scope, rs.session.as_ref(), unix_ms());
            if captured.refused > 0 {
                self.metrics.session(SessionEvent::DirectiveRejected);
                tracing::debug!(
                    refused = captured.refused,
                    "backend cookies a browser would refuse: not kept"
                );
            }
            // The application started or renewed a session of its own (a login): on a live
            // session of ours, ours is renewed too (see `jar::renews`), and the session is
            // pinned to the server that holds the application's.
            let fresh = match &rs.session {
                Some(live) => jar::renews(&captured.changes, live),
                None => captured
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::Set(..))),
            };
            if fresh && rs.session.is_some() {
                d.regenerate = true;
            }
            d.changes.extend(captured.changes);
            if let (true, Some(server)) = (fresh, served_by) {
                d.changes
                    .push(Change::Set(jar::PIN.to_owned(), server.to_owned()));
            }
        }
        let store = match &self.keeper {
            Keeper::InStore(store) => store,
            Keeper::InCookies(c) => {
                let made = match c.commit(rs, &d, status).await {
                    CookieChange::Set(v) => {
                        self.cookies.set(headers, Some(&v), tls);
                        true
                    }
                    CookieChange::Clear => {
                        self.cookies.set(headers, None, tls);
                        false
                    }
                    CookieChange::Keep => false,
                };
                self.adopted(headers, adopted.filter(|_| made));
                // Nothing goes into URLs: the sealed store is cookie-only.
                return Ok(None);
            }
        };
        let carry = tracking::carry(rs.tracking, rs.source, rs.evidence);
        let auto = rs.tracking == Tracking::Auto && !rs.evidence.crawler;
        let kept_cookies = rs.evidence.takes_cookies;
        let had_cookie_session = rs.session.is_some() && rs.source == Source::Cookie;
        let from_elsewhere = rs.evidence.from_elsewhere;
        let read_only = rs.session.as_ref().is_some_and(Session::is_read_only);
        let cookie = self.cookies.out(tls, carry.cookie());
        // Most responses change nothing: the commit that does is boxed, so that its future (a
        // regenerate, the subject's work, a logout) is not part of every request's.
        let held = if d.is_empty() {
            KeptInStore::unchanged(rs)
        } else {
            Box::pin(store.commit(rs, d, status, headers, (&cookie, route, carried(carry)))).await?
        };
        self.adopted(headers, adopted.filter(|_| held.is_some()));
        // No session cookie of ours goes out (a client without a session, or one whose
        // session just ended): the probe asks, or goes on showing, that the client keeps
        // cookies, and so never takes a token from a URL.
        let ended = had_cookie_session && held.is_none();
        if auto && !(held.is_some() && carry.cookie()) && (!kept_cookies || ended) {
            self.cookies.set_probe(headers, tls);
        }
        Ok(held.map(|token| Held {
            token,
            by_url: carry.url(),
            read_only,
            from_elsewhere,
        }))
    }

    /// A one-time code that hands the session of `token` to a sibling host (see
    /// `handoff::Handoffs::issue`); none with sealed cookies, which have no siblings.
    pub fn issue_handoff(&self, token: &Token, by_url: bool) -> Option<String> {
        match &self.keeper {
            Keeper::InStore(s) => s.handoffs().issue(token, by_url),
            Keeper::InCookies(_) => None,
        }
    }

    /// Sets the cookie of an arriving client (see [`RequestSession::take_arrival`]).
    pub fn arrival_cookie(&self, headers: &mut HeaderMap, token: &Token, tls: bool) {
        self.cookies
            .set(headers, Some(token.expose().as_ref()), tls);
    }

    /// The name of the URL parameter that carries tokens.
    pub fn url_parameter(&self) -> &str {
        &self.url_parameter
    }
}

/// How a client carries its token after a response, as a session records it (`auto`: both
/// went out, the client's next request tells).
fn carried(carry: tracking::Carry) -> &'static str {
    match (carry.cookie(), carry.url()) {
        (true, true) => "auto",
        (false, true) => "url",
        _ => "cookie",
    }
}

/// The request as a route's jar sees it: the host the client addressed (lower case, no
/// port), the path the backend gets, and whether the browser says another site made it.
fn jar_scope(jar: &Arc<Jar>, headers: &HeaderMap, info: &RequestInfo<'_>) -> JarScope {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| crate::routing::host_name(h).to_ascii_lowercase())
        .unwrap_or_default();
    JarScope {
        jar: jar.clone(),
        host,
        path: info.backend_path.to_owned(),
        tls: info.tls,
        cross_site: headers
            .get(FETCH_SITE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")),
        navigation: matches!(*info.method, http::Method::GET | http::Method::HEAD)
            && headers
                .get(FETCH_MODE)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate")),
        adopted: None,
    }
}

/// Writes `bytes` to a new file beside `file`, readable by its owner only, and renames it over
/// `file`: a crash mid-write leaves the old snapshot whole.
fn write_replacing(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    // A name of its own, made new (never an existing file or a link someone left there).
    let mut tag = [0u8; 8];
    aws_lc_rs::rand::fill(&mut tag).map_err(|_| std::io::Error::other("no randomness"))?;
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".{}.new", u64::from_le_bytes(tag)));
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    // The rename itself made durable.
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
