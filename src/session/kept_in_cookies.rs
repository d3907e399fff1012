//! Sessions kept sealed in clients' cookies (`store.kind: cookie`): `load` opens the cookie a
//! request presents, `commit` applies the backend's directives to that one session and says
//! what the response's cookie becomes. No gateway keeps anything: the [`Sealer`] seals and
//! opens, and any gateway with the secret reads the same session.
//!
//! There is no store behind this, so there are no aliases, handoff codes or admin queries:
//! the configuration refuses URL tracking and sibling hosts with this store, and the admin
//! API says sessions cannot be looked up. A regenerate re-seals the session (a new nonce: the
//! new cookie shares nothing visible with the old one), but a copy of the old cookie stays
//! valid until it expires: only retiring the secret ends sealed sessions early.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::contract::{Directives, Status};
use super::request::RequestSession;
use super::sealed::Sealer;
use super::store::{Change, Session, SessionKey, StoreError, unix_ms};
use super::store_metrics::{StoreOps, timed};
use super::token::Token;
use super::tracking::Source;
use crate::metrics::{Metrics, SessionEvent};

/// The cookie a request presented, and what became of it.
pub(super) struct SealedRequest {
    /// The cookie as the client sent it: a credential, never printed.
    pub(super) presented: Option<String>,
    /// The sealed session as it stands: the presented cookie if it opened, or that cookie
    /// sealed again by `load` (a use noted in it).
    pub(super) value: Option<String>,
}

impl std::fmt::Debug for SealedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRequest")
            .field("presented", &self.presented.is_some())
            .field("opened", &self.value.is_some())
            .finish()
    }
}

/// What a response does to the sealed cookie.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CookieChange {
    /// Left as the client holds it.
    Keep,
    /// Set to this sealed value.
    Set(String),
    /// Expired.
    Clear,
}

/// Sessions sealed in cookies.
pub(super) struct KeptInCookies {
    sealer: Arc<Sealer>,
    ops: StoreOps,
    metrics: Arc<Metrics>,
    idle: Duration,
    absolute: Duration,
}

impl KeptInCookies {
    /// Sessions sealed by `sealer`, judged against `idle` and `absolute`.
    pub(super) fn new(
        sealer: Arc<Sealer>,
        metrics: &Arc<Metrics>,
        (idle, absolute): (Duration, Duration),
    ) -> KeptInCookies {
        KeptInCookies {
            sealer,
            ops: StoreOps::new(metrics, "cookie"),
            metrics: metrics.clone(),
            idle,
            absolute,
        }
    }

    /// The `load` phase: the presented cookie opened (one that does not, tampered or sealed
    /// by a retired secret, counts as none) and judged against the timeouts; a use is noted
    /// in it now and then (see [`Sealer::touch`]), not on every request.
    pub(super) async fn load(&self, rs: &mut RequestSession) {
        let Some(sealed) = rs.sealed.as_deref_mut() else {
            return;
        };
        let now = unix_ms();
        let opened = timed!(
            self.ops.load,
            std::future::ready(self.opened(sealed.presented.as_deref(), now))
        );
        let Ok(Some((session, value))) = opened else {
            return;
        };
        sealed.value = Some(value);
        let token = Token::stand_in(session.key());
        if session.expired(now, self.idle, self.absolute) {
            self.metrics.session(SessionEvent::Expired);
            rs.status = Status::Expired;
        } else {
            (rs.status, rs.session) = (Status::Active, Some(session));
        }
        (rs.token, rs.source) = (Some(token), Source::Cookie);
    }

    /// The session in `presented`, and its sealed value (sealed again if a use was noted).
    fn opened(
        &self,
        presented: Option<&str>,
        now: u64,
    ) -> Result<Option<(Session, String)>, StoreError> {
        let Some(value) = presented else {
            return Ok(None);
        };
        let Some(mut session) = self.sealer.open(value) else {
            return Ok(None);
        };
        // An expired session is not revived by a use.
        if !session.expired(now, self.idle, self.absolute) && self.sealer.touch(&mut session, now) {
            let resealed = self.sealer.seal(&session)?;
            return Ok(Some((session, resealed)));
        }
        Ok(Some((session, value.to_owned())))
    }

    /// The `commit` phase for a sealed session: the directives `d` (taken out of a response
    /// with `status`) applied to the request's session, and what its cookie becomes. A
    /// cookie that did not open, or whose session expired, is cleared; one that changed is
    /// set.
    pub(super) async fn commit(
        &self,
        rs: RequestSession,
        d: &Directives,
        status: StatusCode,
    ) -> CookieChange {
        let Some(sealed) = rs.sealed else {
            return CookieChange::Keep;
        };
        let live = rs.session.zip(rs.token.clone());
        let now = self.apply(live, rs.token, sealed.value, d, status).await;
        match (now, sealed.presented) {
            (Some(v), presented) if presented.as_deref() != Some(v.as_str()) => {
                CookieChange::Set(v)
            }
            (None, Some(_)) => CookieChange::Clear,
            _ => CookieChange::Keep,
        }
    }

    /// The sealed value after the directives (`None`: no session). `live`: the session and
    /// its token, if it was loaded and not expired; `presented`: the token of a cookie that
    /// opened, live or not; `value`: its sealed value.
    async fn apply(
        &self,
        live: Option<(Session, Token)>,
        presented: Option<Token>,
        value: Option<String>,
        d: &Directives,
        status: StatusCode,
    ) -> Option<String> {
        if d.is_empty() {
            return live.and(value);
        }
        if status.is_server_error() {
            tracing::debug!(%status, "session directives of a 5xx response not applied");
            return live.and(value);
        }
        if d.destroy {
            if presented.is_some() {
                // Nothing to fail: the cookie is cleared.
                self.count_delete().await;
                self.metrics.session(SessionEvent::Destroyed);
            }
            return None;
        }
        let Some((mut session, token)) = live else {
            return self.create(presented, &d.changes).await;
        };
        let mut value = value;
        if d.regenerate {
            // A new nonce: the new cookie shares nothing visible with the old one. (Its log
            // name, a hash of the session's key, stays: see `Token::stand_in`.)
            match timed!(
                self.ops.rename,
                std::future::ready(self.sealer.seal(&session))
            ) {
                Ok(resealed) => {
                    self.metrics.session(SessionEvent::Regenerated);
                    value = Some(resealed);
                }
                Err(e) => {
                    tracing::warn!(session = %token, error = %e, "regenerate failed: the session is ended, its changes not applied");
                    self.count_delete().await;
                    return None;
                }
            }
        }
        if !d.changes.is_empty() {
            let before = session.packed().clone();
            let rejected = self.sealer.apply(&mut session, &d.changes);
            // Sealed again only when something changed: every new seal is a new Set-Cookie.
            let resealed = if *session.packed() == before {
                Ok(None)
            } else {
                session.last_seen_ms = session.last_seen_ms.max(unix_ms());
                self.sealer.seal(&session).map(Some)
            };
            match timed!(self.ops.update, std::future::ready(resealed)) {
                Ok(resealed) => {
                    self.report(&rejected, &token);
                    if resealed.is_some() {
                        value = resealed;
                    }
                }
                Err(e) => tracing::warn!(session = %token, error = %e, "session update failed"),
            }
        }
        value
    }

    /// A new session for a request without a live one, if the directives set something
    /// (bots and health checks never create one); what was left of an expired one goes.
    async fn create(&self, expired: Option<Token>, changes: &[Change]) -> Option<String> {
        if !changes.iter().any(|c| matches!(c, Change::Set(..))) {
            return None;
        }
        if expired.is_some() {
            self.count_delete().await;
        }
        let Ok(key) = SessionKey::generate() else {
            tracing::warn!("no randomness: session not created");
            return None;
        };
        let fresh = Token::stand_in(key.as_str());
        let now = unix_ms();
        let mut session = Session::new(key, now);
        let rejected = self.sealer.apply(&mut session, changes);
        session.last_seen_ms = session.last_seen_ms.max(now);
        match timed!(
            self.ops.update,
            std::future::ready(self.sealer.seal(&session))
        ) {
            Ok(value) => {
                self.report(&rejected, &fresh);
                self.metrics.session(SessionEvent::Created);
                Some(value)
            }
            Err(e) => {
                tracing::warn!(session = %fresh, error = %e, "session update failed");
                None
            }
        }
    }

    /// A delete, counted as the store operation it stands for: the cookie is cleared, and
    /// nothing can fail.
    async fn count_delete(&self) {
        let _ = timed!(
            self.ops.delete,
            std::future::ready(Ok::<(), StoreError>(()))
        );
    }

    /// Changes refused for a limit: counted and logged.
    fn report(&self, rejected: &[super::store::Rejected], token: &Token) {
        for r in rejected {
            self.metrics.session(SessionEvent::DirectiveRejected);
            tracing::warn!(session = %token, attribute = %r.name, limit = r.reason, "session change over a limit ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tracking;
    use crate::session::sealed::SealedOptions;
    use crate::session::store::Limits;
    use crate::session::tracking::Evidence;

    const SECRET: &str = "kept-in-cookies-secret-0123456789abcdef";
    const IDLE: Duration = Duration::from_secs(1800);
    const ABSOLUTE: Duration = Duration::from_secs(3600);

    fn kept(max_bytes: usize) -> KeptInCookies {
        let sealer = Sealer::new(&SealedOptions {
            secrets: Some(vec![SECRET.as_bytes().to_vec()]),
            max_bytes,
            limits: Limits {
                max_attributes: 4,
                ..Limits::default()
            },
            idle_timeout: IDLE,
            absolute_timeout: ABSOLUTE,
        })
        .unwrap();
        KeptInCookies::new(
            Arc::new(sealer),
            &Arc::new(Metrics::new()),
            (IDLE, ABSOLUTE),
        )
    }

    fn set(n: &str, v: &str) -> Change {
        Change::Set(n.to_owned(), v.to_owned())
    }

    fn changes(c: Vec<Change>) -> Directives {
        Directives {
            changes: c,
            ..Directives::default()
        }
    }

    /// One request that presents `cookie`, answered with `d`: what it loaded, and what its
    /// response does to the cookie.
    async fn exchange(
        k: &KeptInCookies,
        cookie: Option<&str>,
        d: &Directives,
    ) -> (Status, Option<Session>, CookieChange) {
        let mut rs = RequestSession::new(None, Source::None, Tracking::Cookie, Evidence::default())
            .sealed(cookie.map(str::to_owned));
        k.load(&mut rs).await;
        let (status, session) = (rs.status, rs.session.clone());
        (status, session, k.commit(rs, d, StatusCode::OK).await)
    }

    /// A new session for alice, and its cookie.
    async fn alice(k: &KeptInCookies) -> String {
        value(
            exchange(k, None, &changes(vec![set("user", "alice")]))
                .await
                .2,
        )
    }

    fn value(c: CookieChange) -> String {
        match c {
            CookieChange::Set(v) => v,
            other => panic!("expected a new cookie, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_session_is_created_by_its_first_set_and_read_back_from_its_cookie() {
        let k = kept(4000);
        let (status, _, change) = exchange(&k, None, &Directives::default()).await;
        assert_eq!((status, change), (Status::None, CookieChange::Keep));
        // Nothing but a Set creates one.
        let unset = changes(vec![Change::Unset("a".into())]);
        assert_eq!(exchange(&k, None, &unset).await.2, CookieChange::Keep);
        let cookie = alice(&k).await;
        let (status, session, change) = exchange(&k, Some(&cookie), &Directives::default()).await;
        assert_eq!(status, Status::Active);
        assert_eq!(session.unwrap().attr("user"), Some("alice"));
        // A read that changes nothing seals nothing: no Set-Cookie.
        assert_eq!(change, CookieChange::Keep);
    }

    #[tokio::test]
    async fn changes_reseal_the_cookie_and_those_over_a_limit_are_refused() {
        let k = kept(4000);
        let cookie = alice(&k).await;
        let d = changes(vec![
            set("cart", "3"),
            Change::Unset("user".into()),
            set("a", "1"),
            set("b", "1"),
            set("c", "1"),
            set("d", "1"),
        ]);
        let cookie = value(exchange(&k, Some(&cookie), &d).await.2);
        let session = exchange(&k, Some(&cookie), &Directives::default())
            .await
            .1
            .unwrap();
        assert_eq!(session.attr("cart"), Some("3"));
        assert_eq!(session.attr("user"), None);
        // max_attributes: 4, so the last Set was refused and the rest kept.
        assert_eq!(session.attr_count(), 4);
        assert_eq!(session.attr("d"), None);
        // A change that leaves the session as it was seals nothing.
        let same = changes(vec![set("cart", "3")]);
        assert_eq!(
            exchange(&k, Some(&cookie), &same).await.2,
            CookieChange::Keep
        );
    }

    #[tokio::test]
    async fn a_change_that_would_outgrow_the_cookie_is_refused() {
        let k = kept(300);
        let cookie = alice(&k).await;
        let big = changes(vec![set("big", &"x".repeat(400))]);
        assert_eq!(
            exchange(&k, Some(&cookie), &big).await.2,
            CookieChange::Keep
        );
    }

    #[tokio::test]
    async fn destroy_clears_the_cookie_and_regenerate_reseals_the_same_session() {
        let k = kept(4000);
        let cookie = alice(&k).await;
        let regenerate = Directives {
            regenerate: true,
            ..Directives::default()
        };
        let again = value(exchange(&k, Some(&cookie), &regenerate).await.2);
        assert_ne!(again, cookie);
        let (_, before, _) = exchange(&k, Some(&cookie), &Directives::default()).await;
        let (_, after, _) = exchange(&k, Some(&again), &Directives::default()).await;
        let (before, after) = (before.unwrap(), after.unwrap());
        assert_eq!(after.key(), before.key());
        assert_eq!(after.attr("user"), Some("alice"));
        let destroy = Directives {
            destroy: true,
            ..Directives::default()
        };
        assert_eq!(
            exchange(&k, Some(&again), &destroy).await.2,
            CookieChange::Clear
        );
        // A 5xx's directives are not applied.
        let mut rs = RequestSession::new(None, Source::None, Tracking::Cookie, Evidence::default())
            .sealed(Some(again.clone()));
        k.load(&mut rs).await;
        let change = k.commit(rs, &destroy, StatusCode::BAD_GATEWAY).await;
        assert_eq!(change, CookieChange::Keep);
    }

    #[tokio::test]
    async fn a_tampered_or_expired_cookie_counts_as_none_and_is_cleared() {
        let k = kept(4000);
        let (status, session, change) =
            exchange(&k, Some("not-a-sealed-session"), &Directives::default()).await;
        assert_eq!(
            (status, session, change),
            (Status::None, None, CookieChange::Clear)
        );
        let mut old = Session::new(SessionKey::generate().unwrap(), 1_000);
        old.apply(&[set("user", "alice")], &Limits::default());
        let expired = k.sealer.seal(&old).unwrap();
        let (status, session, change) = exchange(&k, Some(&expired), &Directives::default()).await;
        assert_eq!(
            (status, session, change),
            (Status::Expired, None, CookieChange::Clear)
        );
        // A write on an expired session starts a new one.
        let fresh = value(
            exchange(&k, Some(&expired), &changes(vec![set("user", "bob")]))
                .await
                .2,
        );
        let session = exchange(&k, Some(&fresh), &Directives::default())
            .await
            .1
            .unwrap();
        assert_ne!(session.key(), old.key());
    }

    #[tokio::test]
    async fn a_use_is_sealed_into_the_cookie_now_and_then_not_on_every_request() {
        let k = kept(4000);
        let now = unix_ms();
        let mut recent = Session::new(SessionKey::generate().unwrap(), now);
        recent.apply(&[set("user", "alice")], &Limits::default());
        let cookie = k.sealer.seal(&recent).unwrap();
        assert_eq!(
            exchange(&k, Some(&cookie), &Directives::default()).await.2,
            CookieChange::Keep
        );
        // Last used three minutes ago (a tenth of the idle timeout, at most a minute).
        let mut used = recent.clone();
        used.last_seen_ms = now - 180_000;
        let cookie = k.sealer.seal(&used).unwrap();
        let touched = value(exchange(&k, Some(&cookie), &Directives::default()).await.2);
        let opened = k.sealer.open(&touched).unwrap();
        assert!(opened.last_seen_ms >= now);
        assert_eq!(opened.created_ms, recent.created_ms);
    }
}
