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

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

use super::contract::{self, Names, Status};
use super::handoff::Handoffs;
use super::our_cookies::OurCookies;
use super::request::{Held, LogoutFailed, RequestInfo, RequestSession, SealedRequest};
use super::setup::Foundation;
use super::store::{AdminStore, Change, Session, SessionKey, SessionStore, StoreError, unix_ms};
use super::store_metrics::{StoreOps, timed};
use super::stores::Store;
use super::token::{StoreId, Token};
use super::tracking::{self, Evidence, Provenance, Source};
use super::url::{self, UrlTokens};
use crate::config::{ConfigError, SessionsConfig, Tracking};
use crate::metrics::{Metrics, SessionEvent, Snapshot};

/// `Sec-Fetch-Site`: where a browser says a request comes from.
const FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Sessions as the proxy sees them.
pub struct Sessions {
    /// The keys and the store.
    foundation: Foundation,
    names: Names,
    /// Every header name any route maps an attribute to: no client may send one, on any
    /// route.
    guarded: Vec<HeaderName>,
    cookies: OurCookies,
    url_parameter: String,
    crawlers: Vec<String>,
    idle: Duration,
    absolute: Duration,
    grace: Duration,
    metrics: Arc<Metrics>,
    ops: StoreOps,
    handoffs: Handoffs,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.foundation.store)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions for a configuration (`source` names it in errors); on a reload, built on the
    /// `previous` sessions' store and keys where they still hold (see `setup::Foundation::build`).
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
        let Foundation { keys, store, basis } =
            Foundation::build(config, source, previous.map(|p| &p.foundation))?;
        let names = Names::new(&config.header_prefix).map_err(|msg| {
            ConfigError::single(source, config.secret_pos, "sessions.secret_file", msg)
        })?;
        let ops = StoreOps::new(metrics, &store);
        let handoffs = Handoffs::new(&store, &keys, config.absolute_timeout, &ops);
        Ok(Sessions {
            foundation: Foundation { keys, store, basis },
            ops,
            handoffs,
            metrics: metrics.clone(),
            names,
            guarded: Vec::new(),
            cookies: OurCookies::new(&config.cookie),
            url_parameter: config.url_parameter.clone(),
            crawlers: config.crawlers.clone(),
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

    /// Whether the store answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.foundation.store.ping().await
    }

    /// Whether the sessions live sealed in clients' cookies: none can be looked up or ended
    /// here (the admin API says so).
    pub fn sealed_in_cookies(&self) -> bool {
        matches!(self.foundation.store, Store::Sealed(_))
    }

    /// The session with the stable key `key`, and its id (admin API).
    pub async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        self.foundation.store.find_by_key(key).await
    }

    /// Ends the session under `id` (admin API).
    pub async fn end(&self, id: &StoreId) -> Result<(), StoreError> {
        self.foundation.store.delete(id).await
    }

    /// Ends every session whose attribute `name` equals `value` (log a user out everywhere);
    /// how many (admin API).
    pub async fn end_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        self.foundation.store.delete_where(name, value).await
    }

    /// What the store knows of itself, for a metrics scrape.
    pub fn fill_snapshot(&self, snapshot: &mut Snapshot) {
        match &self.foundation.store {
            Store::Memory(m) => {
                snapshot.sessions_live = Some(m.entry_count());
                snapshot.sessions_evicted = Some(m.evictions());
            }
            Store::Redis(r) => snapshot.near_cache = r.near_cache_stats(),
            Store::Sealed(_) => {}
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
        let taken = self.cookies.take(headers, tls);
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
        if matches!(self.foundation.store, Store::Sealed(_)) {
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
            .find_map(|(src, t)| match Token::parse(t, &self.foundation.keys) {
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
            Some(t) => match timed!(
                self.ops.load,
                self.foundation.store.load(&t.store_id(), now)
            ) {
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
                self.handoffs
                    .hand_in(&code, headers, info.method, info.share_with, live)
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
        let Ok(theirs) = Token::parse(referer, &self.foundation.keys) else {
            return true;
        };
        if Some(&theirs) == token {
            return true;
        }
        match timed!(
            self.ops.load,
            self.foundation.store.load(&theirs.store_id(), now)
        ) {
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
        let Store::Sealed(template) = &self.foundation.store else {
            return;
        };
        let now = unix_ms();
        let jar = match Token::generate(&self.foundation.keys) {
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
                        .jar_for_request(super::StoreId::from_bytes([0; 16]), None),
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
            .apply_directives(
                rs,
                status,
                headers,
                tls,
                carry.cookie(),
                &self.foundation.store,
            )
            .await?;
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
    /// `handoff::Handoffs::issue`).
    pub fn issue_handoff(&self, token: &Token, by_url: bool) -> Option<String> {
        self.handoffs.issue(token, by_url)
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
        // `load` gave every request a jar of its own; without one, the directives still go.
        let Some(store) = &sealed.jar else {
            self.strip_directives(headers);
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
                self.cookies.set(headers, Some(&v), tls);
            }
            (None, Some(_)) => self.cookies.set(headers, None, tls),
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
                let (Ok(fresh), Ok(key)) = (
                    Token::generate(&self.foundation.keys),
                    SessionKey::generate(),
                ) else {
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
        let renamed = match Token::generate(&self.foundation.keys) {
            Ok(fresh) => timed!(
                self.ops.rename,
                store.rename(&token.store_id(), &fresh.store_id(), self.grace)
            )
            .map(|moved| moved.then_some(fresh)),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
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
        self.cookies
            .set(headers, token.map(Token::expose).as_deref(), tls);
    }
}
