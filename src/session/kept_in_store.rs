//! Sessions kept in a server store (memory or Redis), found by the request's token: `load`
//! reads the session (and redeems a sibling's handoff code), `commit` applies the backend's
//! directives to it — creating it on its first `Set`, giving it a new token on `regenerate`
//! (the old one reads it as it was, read-only, for the grace), ending it on `destroy`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::{Method, StatusCode};

use super::contract::{Directives, Status};
use super::events::{EventKind, Events};
use super::handoff::Handoffs;
use super::migration::Migration;
use super::our_cookies::CookieOut;
use super::request::{LogoutFailed, RequestInfo, RequestSession};
use super::server_store::ServerStore;
use super::store::{Applied, Change, Session, SessionKey, SessionStore, StoreError, unix_ms};
use super::store_metrics::{StoreOps, timed};
use super::subjects::{self, META, SubjectIndex};
use super::token::{SessionKeys, StoreId, Token};
use super::tracking::Source;
use crate::config::OnLimit;
use crate::metrics::{Metrics, SessionEvent};

/// What a request showed of its client, for what a session records (see [`subjects::Meta`]).
struct Seen {
    client: Option<IpAddr>,
    agent: Option<http::HeaderValue>,
    /// `cookie`, `url` or `auto` (see `facade::carried`).
    tracking: &'static str,
}

/// Sessions in a server store.
pub(super) struct KeptInStore {
    store: ServerStore,
    keys: Arc<SessionKeys>,
    ops: StoreOps,
    metrics: Arc<Metrics>,
    idle: Duration,
    absolute: Duration,
    /// How long a regenerated session's old token reads it.
    grace: Duration,
    handoffs: Handoffs,
    /// Sessions still moving in from a store a reload replaced.
    migration: Option<Arc<Migration>>,
    /// The attribute that names a session's subject, and `max_per_subject`.
    subject: String,
    per_subject: Option<(usize, OnLimit)>,
    /// What happens to sessions: the admin API's stream, other gateways, open tunnels.
    events: Arc<Events>,
}

impl KeptInStore {
    /// Sessions in `store`, tokens signed with `keys`; `(idle, absolute, grace)` from the
    /// configuration.
    pub(super) fn new(
        store: ServerStore,
        keys: Arc<SessionKeys>,
        metrics: &Arc<Metrics>,
        (idle, absolute, grace): (Duration, Duration, Duration),
    ) -> KeptInStore {
        let ops = StoreOps::new(metrics, store.kind());
        let handoffs = Handoffs::new(&store, &keys, absolute, &ops);
        KeptInStore {
            store,
            keys,
            ops,
            metrics: metrics.clone(),
            idle,
            absolute,
            grace,
            handoffs,
            migration: None,
            subject: "user".to_owned(),
            per_subject: None,
            events: Events::new("gateway"),
        }
    }

    /// The same, with sessions owned by the subject attribute `subject` (at most
    /// `per_subject` each), and what happens to them told to `events`.
    pub(super) fn owned(
        mut self,
        subject: &str,
        per_subject: Option<(usize, OnLimit)>,
        events: &Arc<Events>,
    ) -> KeptInStore {
        self.subject = subject.to_owned();
        self.per_subject = per_subject;
        self.events = events.clone();
        self
    }

    /// The same, with sessions moving in from a replaced store.
    pub(super) fn migrating(mut self, migration: Option<Arc<Migration>>) -> KeptInStore {
        self.migration = migration;
        self
    }

    /// The move in progress, if any (a reload that keeps this store keeps it going).
    pub(super) fn migration(&self) -> Option<&Arc<Migration>> {
        self.migration.as_ref().filter(|m| !m.done())
    }

    /// The store.
    pub(super) fn store(&self) -> &ServerStore {
        &self.store
    }

    /// The idle and absolute timeouts sessions are judged by.
    pub(super) fn timeouts(&self) -> (Duration, Duration) {
        (self.idle, self.absolute)
    }

    /// How sessions are indexed by subject.
    pub(super) fn owners(&self) -> subjects::Owners {
        subjects::Owners {
            attribute: self.subject.clone(),
            idle: self.idle,
            absolute: self.absolute,
        }
    }

    /// Handoffs to and from sibling hosts, through the store.
    pub(super) fn handoffs(&self) -> &Handoffs {
        &self.handoffs
    }

    /// The `load` phase for a stored session: the session of the token `resolve` chose,
    /// loaded and judged against the timeouts; a URL token whose page's URL carried another
    /// session's is refused; a URL token that does not count is marked for a clean redirect;
    /// a sibling's handoff code is redeemed.
    pub(super) async fn load(
        &self,
        rs: &mut RequestSession,
        headers: &HeaderMap,
        info: &RequestInfo<'_>,
    ) {
        let (handoff, referer) = match rs.url.take() {
            Some(u) => (u.handoff, u.referer),
            None => (None, None),
        };
        let now = unix_ms();
        let (status, session) = match &rs.token {
            None => (Status::None, None),
            Some(t) => match self.load_moving(t, now).await {
                Ok(Some(s)) if !s.expired(now, self.idle, self.absolute) => {
                    (Status::Active, Some(s))
                }
                Ok(found) => {
                    self.metrics.session(SessionEvent::Expired);
                    if let Some(s) = found {
                        self.tell(EventKind::Expired, &s, None);
                    }
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
    }

    /// The session of `t`, read through from a replaced store while its sessions move.
    async fn load_moving(&self, t: &Token, now: u64) -> Result<Option<Session>, StoreError> {
        let id = t.store_id();
        match timed!(self.ops.load, self.store.load(&id, now)) {
            // Boxed: rare, and it must not grow every request's future.
            Ok(None) => match self.migration() {
                Some(m) => Box::pin(m.read_through(&id)).await,
                None => Ok(None),
            },
            other => other,
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

    /// What `commit` comes to for a response without directives (most of them): the token of
    /// the live session, if any. Apart, so that the request path does not carry the future
    /// of a commit that changes something (see `Sessions::commit`).
    pub(super) fn unchanged(rs: RequestSession) -> Option<Token> {
        rs.token.filter(|_| rs.session.is_some())
    }

    /// The `commit` phase for a stored session: the directives `d` (taken out of a response
    /// with `status`) applied to the session in the store; returns the token of the session
    /// the client holds afterwards. Cookies for new tokens go out through `cookie` (unless
    /// the token travels in URLs).
    ///
    /// # Errors
    /// A logout the store could not make (see [`LogoutFailed`]).
    pub(super) async fn commit(
        &self,
        rs: RequestSession,
        mut d: Directives,
        status: StatusCode,
        headers: &mut HeaderMap,
        (cookie, route, tracking): (&CookieOut<'_>, &str, &'static str),
    ) -> Result<Option<Token>, LogoutFailed> {
        let store = &self.store;
        // The token of a live session, or one whose session has expired.
        let read_only = rs.session.as_ref().is_some_and(Session::is_read_only);
        let (live, expired) = match (rs.token, rs.session.is_some()) {
            (Some(t), true) => (Some(t), None),
            (t, _) => (None, t),
        };
        let session = rs.session;
        let seen = Seen {
            client: rs.client,
            agent: rs.agent,
            tracking,
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
            // "Log out everywhere" (`destroy, end-others`): the others first, while this
            // session still says whose it is.
            if let (true, Some(s), Some(t)) = (
                d.end_others,
                session.as_ref().filter(|s| !s.is_read_only()),
                live.as_ref(),
            ) {
                Box::pin(self.end_others(s, &t.store_id(), route)).await;
            }
            if let Some(t) = presented {
                match timed!(self.ops.delete, store.delete(&t.store_id())) {
                    Ok(()) => {
                        if let Some(m) = self.migration() {
                            Box::pin(m.ended(&t.store_id())).await;
                        }
                        self.metrics.session(SessionEvent::Destroyed);
                        if let Some(s) = session.as_ref().filter(|s| !s.is_read_only()) {
                            Box::pin(self.forget(s, &t.store_id())).await;
                            self.tell(EventKind::Destroyed, s, Some(route));
                        }
                    }
                    Err(e) => {
                        // The session lives on in the store: the client must not be told it
                        // logged out (its cookie kept, a stolen copy would go on working).
                        tracing::warn!(session = %t, error = %e, "session delete failed: the logout is refused");
                        return Err(LogoutFailed);
                    }
                }
            }
            if presented.is_some() {
                cookie.set(headers, None);
            }
            return Ok(None);
        }
        match live {
            Some(token) => {
                // A regenerate comes first: the old token's view (read-only, for the grace) is
                // the session as it was before this response, never the login it carries.
                let token = if d.regenerate {
                    let old = token.store_id();
                    let Some(token) = self
                        .regenerate(token, session.as_ref(), headers, cookie)
                        .await
                    else {
                        return Ok(None);
                    };
                    if let Some(s) = &session {
                        Box::pin(self.moved(s, &old, &token.store_id())).await;
                    }
                    token
                } else {
                    token
                };
                // The session's own id: an alias's (a sibling host's token) is learnt from
                // the update.
                let mut id = token.store_id();
                let mut now_is = session;
                if !d.changes.is_empty() {
                    self.with_meta(&mut d.changes, &seen, false);
                    let applied = self.update(&id, None, &d.changes, now, &token).await;
                    if let Some(a) = applied {
                        id = a.id;
                        if let Some(before) = &now_is {
                            Box::pin(self.reindex(Some(before), &a.session, &id, route)).await;
                        }
                        now_is = Some(a.session);
                    }
                }
                // Told once the response's changes are in: a login's event names its subject.
                if d.regenerate
                    && let Some(s) = &now_is
                {
                    self.tell(EventKind::Regenerated, s, Some(route));
                }
                if d.end_others
                    && let Some(s) = &now_is
                {
                    Box::pin(self.end_others(s, &id, route)).await;
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
                self.with_meta(&mut d.changes, &seen, true);
                let Some(applied) = self
                    .update(&fresh.store_id(), Some(key), &d.changes, now, &fresh)
                    .await
                else {
                    return Ok(None);
                };
                let (id, made) = (applied.id, applied.session);
                self.metrics.session(SessionEvent::Created);
                self.tell(EventKind::Created, &made, Some(route));
                Box::pin(self.reindex(None, &made, &id, route)).await;
                if d.end_others {
                    Box::pin(self.end_others(&made, &id, route)).await;
                }
                cookie.set(headers, Some(&fresh));
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
        token: Token,
        session: Option<&Session>,
        headers: &mut HeaderMap,
        cookie: &CookieOut<'_>,
    ) -> Option<Token> {
        let store = &self.store;
        let renamed = match Token::generate(&self.keys) {
            Ok(fresh) => timed!(
                self.ops.rename,
                store.rename(&token.store_id(), &fresh.store_id(), self.grace)
            )
            .map(|moved| moved.then_some(fresh)),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        };
        match renamed {
            Ok(Some(fresh)) => {
                // The old token must die here too: a store the session is moving from (and
                // which keeps its copy) must not bring it back once its grace is over.
                if let Some(m) = self.migration() {
                    Box::pin(m.ended(&token.store_id())).await;
                }
                self.metrics.session(SessionEvent::Regenerated);
                cookie.set(headers, Some(&fresh));
                Some(fresh)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(session = %token, error = %e, "regenerate failed: the session is ended, its changes not applied");
                match session {
                    Some(s) => {
                        Box::pin(self.end_one(&token.store_id(), s, EventKind::Revoked, None))
                            .await;
                    }
                    None => {
                        if let Err(e) = timed!(self.ops.delete, store.delete(&token.store_id())) {
                            tracing::warn!(session = %token, error = %e, "session delete failed");
                        }
                    }
                }
                cookie.set(headers, None);
                None
            }
        }
    }

    /// Applies changes; the session afterwards (and its own id), if it exists.
    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now: u64,
        token: &Token,
    ) -> Option<Applied> {
        match timed!(self.ops.update, self.store.update(id, create, changes, now)) {
            Ok(Some(applied)) => {
                // What the session records of its client goes last, and quietly: only if
                // there is room left once the backend's changes are in.
                for r in applied.rejected.iter().filter(|r| r.name != META) {
                    self.metrics.session(SessionEvent::DirectiveRejected);
                    tracing::warn!(session = %token, attribute = %r.name, limit = r.reason, "session change over a limit ignored");
                }
                Some(applied)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(session = %token, error = %e, "session update failed");
                None
            }
        }
    }

    /// `changes`, and, when they create the session or name its subject (a login), what it
    /// records of the client (see [`subjects::Meta`]): the client that logged in is the one an
    /// operator sees.
    fn with_meta(&self, changes: &mut Vec<Change>, seen: &Seen, creating: bool) {
        let names_subject = changes.iter().any(|c| match c {
            Change::Set(n, _) | Change::Unset(n) => *n == self.subject,
        });
        if !names_subject && !creating {
            return;
        }
        let meta = subjects::record(seen.tracking, seen.client, seen.agent.as_ref(), unix_ms());
        // Last: the backend's own changes are held to the limits first.
        changes.push(Change::Set(META.to_owned(), meta));
    }

    /// The subject of `s`, if it has one.
    fn subject_of<'s>(&self, s: &'s Session) -> Option<&'s str> {
        s.attr(&self.subject).filter(|v| !v.is_empty())
    }

    // The subject work below runs on logins and logouts only, and its futures (a Redis
    // listing, deletes) are large: the commit phase awaits them boxed, so that they do not
    // grow the future of every request that only reads its session.

    /// Tells the stream, other gateways and open tunnels what happened to `s`.
    fn tell(&self, kind: EventKind, s: &Session, route: Option<&str>) {
        let redis = match &self.store {
            ServerStore::Redis(r) => Some(r),
            ServerStore::Memory(_) => None,
        };
        // Nobody to tell (no stream reader, no tunnel to look, no other gateway): a login
        // on the memory store makes no event.
        if redis.is_none() && kind == EventKind::Created && !self.events.has_readers() {
            return;
        }
        let event = self
            .events
            .emit(kind, s.key(), self.subject_of(s), route, redis.is_some());
        if let (Some(r), Some(event)) = (redis, event) {
            r.publish_event(&event);
        }
    }

    /// The subject index after a write that took `before` to `after` (session `id`): the
    /// entry moves with the subject; a login past `max_per_subject` ends other sessions.
    async fn reindex(&self, before: Option<&Session>, after: &Session, id: &StoreId, route: &str) {
        let (was, is) = (
            before.and_then(|b| self.subject_of(b)),
            self.subject_of(after),
        );
        if was == is {
            return;
        }
        if let Some(was) = was
            && let Err(e) = self.store.unindex(was, id).await
        {
            tracing::warn!(error = %e, "subject index entry not removed");
        }
        let Some(is) = is else { return };
        let until = subjects::deadline(after, self.idle, self.absolute);
        if let Err(e) = self.store.index(is, id, until).await {
            tracing::warn!(error = %e, "subject index entry not written");
        }
        if let Some((max, policy)) = self.per_subject {
            self.evict_past(is, after, id, (max, policy), route).await;
        }
    }

    /// A regenerate moved session `s` from `old` to `new`: so does its index entry.
    async fn moved(&self, s: &Session, old: &StoreId, new: &StoreId) {
        let Some(subject) = self.subject_of(s) else {
            return;
        };
        let until = subjects::deadline(s, self.idle, self.absolute);
        if let Err(e) = self.store.index(subject, new, until).await {
            tracing::warn!(error = %e, "subject index entry not written");
        }
        let _ = self.store.unindex(subject, old).await;
    }

    /// Session `s` (under `id`) ended: its index entry goes.
    async fn forget(&self, s: &Session, id: &StoreId) {
        if let Some(subject) = self.subject_of(s) {
            let _ = self.store.unindex(subject, id).await;
        }
    }

    /// `subject` logged in on session `own` (`s`) and holds more than `max` sessions: the
    /// policy's choice of the others end, never `own`.
    async fn evict_past(
        &self,
        subject: &str,
        s: &Session,
        own: &StoreId,
        (max, policy): (usize, OnLimit),
        route: &str,
    ) {
        // Counted first: most logins are within the limit, and need no listing.
        match self.store.count(subject).await {
            Ok(n) if n <= max => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the subject's sessions could not be counted");
                return;
            }
        }
        let mut sessions = match self.store.of_subject(&self.subject, subject).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "the subject's sessions could not be counted");
                return;
            }
        };
        if !sessions.iter().any(|(id, _)| id == own) {
            sessions.push((*own, s.clone()));
        }
        for i in subjects::over_limit(&sessions, own, max, policy) {
            let (id, victim) = &sessions[i];
            if self
                .end_one(id, victim, EventKind::Evicted, Some(route))
                .await
            {
                self.metrics.session(SessionEvent::Evicted);
            }
        }
    }

    /// `X-Session-Action: end-others`: every other session of `s`'s subject ends.
    async fn end_others(&self, s: &Session, own: &StoreId, route: &str) {
        let Some(subject) = self.subject_of(s) else {
            tracing::debug!("end-others on a session without a subject: nothing to end");
            return;
        };
        let sessions = match self.store.of_subject(&self.subject, subject).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "the subject's other sessions could not be ended");
                return;
            }
        };
        for (id, other) in sessions.iter().filter(|(id, _)| id != own) {
            // The same session under another id (never listed: the index holds own ids).
            if other.key() == s.key() {
                continue;
            }
            if self
                .end_one(id, other, EventKind::Revoked, Some(route))
                .await
            {
                self.metrics.session(SessionEvent::Revoked);
            }
        }
    }

    /// Ends session `s` under `id` for `why` (in a store it may be moving from too);
    /// `true` if it ended.
    pub(super) async fn end_one(
        &self,
        id: &StoreId,
        s: &Session,
        why: EventKind,
        route: Option<&str>,
    ) -> bool {
        if let Some(m) = self.migration() {
            Box::pin(m.ended(id)).await;
        }
        if let Err(e) = timed!(self.ops.delete, self.store.delete(id)) {
            tracing::warn!(error = %e, "session delete failed");
            return false;
        }
        // Told first: other gateways' tunnels must not wait for the index's round trip.
        self.tell(why, s, route);
        self.forget(s, id).await;
        true
    }

    /// Session `s` under `id` was ended by a scan of the store (the admin API's `attr=`): its
    /// index entry goes, and it is told as revoked.
    pub(super) async fn ended_elsewhere(&self, id: &StoreId, s: &Session) {
        self.tell(EventKind::Revoked, s, None);
        self.forget(s, id).await;
    }

    /// The live sessions of `subject`.
    pub(super) async fn of_subject(
        &self,
        subject: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        self.store.of_subject(&self.subject, subject).await
    }
}
