//! A tunnel (a WebSocket, or any upgraded connection) opened with a session lives only as
//! long as that session: [`SessionWatch::ended`] resolves when the session is destroyed,
//! revoked, evicted, expired, or regenerated away from (once the old token's grace is over),
//! here or on another gateway sharing the store. It looks at the session (without noting a
//! use: an open tunnel does not keep a session alive) when an event may have ended it (see
//! `events`), when its idle or absolute timeout comes, and at least every
//! [`BACKSTOP`] in case an event from another gateway was lost. A store that does not
//! answer ends nothing: the tunnel stays, and the look is tried again shortly.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::events::Watch;
use super::migration::Migration;
use super::server_store::ServerStore;
use super::store::{Session, StoreError, TOUCH_EVERY_MS, unix_ms};
use super::token::StoreId;

/// Where tunnels look at their sessions: the store of the configuration in use (a reload
/// that replaces it hands the tunnels over, see `Sessions::in_use`), kept across reloads.
#[derive(Default)]
pub(super) struct Tunnels {
    target: ArcSwapOption<Target>,
}

/// The store in use, its timeouts, and the move from a replaced store while it goes on.
pub(super) struct Target {
    pub(super) store: ServerStore,
    pub(super) idle: Duration,
    pub(super) absolute: Duration,
    pub(super) migration: Option<Arc<Migration>>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels").finish_non_exhaustive()
    }
}

impl Tunnels {
    /// From now on tunnels look at sessions in `target`; `true` if it replaced another.
    pub(super) fn point_at(&self, target: Target) -> bool {
        self.target.swap(Some(Arc::new(target))).is_some()
    }

    /// The session `id` reaches, as the store in use has it (or the store it is moving
    /// from, while it does), its use not noted; and the timeouts it is judged by.
    async fn peek(
        &self,
        id: &StoreId,
    ) -> Result<(Option<Session>, Duration, Duration), StoreError> {
        let Some(t) = self.target.load_full() else {
            return Err(StoreError::Unavailable("no store in use yet".to_owned()));
        };
        let mut found = t.store.peek(id).await?;
        if found.is_none()
            && let Some(m) = &t.migration
        {
            found = m.peek(id).await?;
        }
        Ok((found, t.idle, t.absolute))
    }
}

/// The longest a tunnel goes without looking at its session.
const BACKSTOP: Duration = Duration::from_secs(30);

/// How often a tunnel whose token a regenerate retired looks again: its grace ends on the
/// store's clock, and the tunnel must close within a second of it.
const RETIRED_EVERY: Duration = Duration::from_millis(250);

/// How soon a look the store did not answer is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The session a tunnel was opened with, watched.
#[derive(Debug)]
pub struct SessionWatch {
    pub(super) watch: Watch,
    pub(super) id: StoreId,
    pub(super) tunnels: Arc<Tunnels>,
}

/// From now until the Unix time `at_ms` (at least a few ms: a deadline is judged strictly).
fn until(at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(unix_ms()).saturating_add(5))
}

impl SessionWatch {
    /// Resolves once the session has ended (see the module's comment).
    pub async fn ended(&self) {
        // The first look at once: the session may have ended between the request's load and
        // the backend's 101, when no watch was there to be told.
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = self.watch.poked() => {
                    if let Some(wait) = self.watch.spread() {
                        tokio::time::sleep(wait).await;
                    }
                }
                () = tokio::time::sleep_until(next) => {}
            }
            let looked = self.tunnels.peek(&self.id).await;
            let now = unix_ms();
            next = match looked {
                // A use is written back at most every `TOUCH_EVERY_MS`: past its idle timeout
                // by less than that, a session may still be in use (the store says so by
                // returning it), and is looked at again once that much more has passed.
                Ok((Some(s), idle, absolute))
                    if !s.expired(now, idle + Duration::from_millis(TOUCH_EVERY_MS), absolute) =>
                {
                    let lenient = idle + Duration::from_millis(TOUCH_EVERY_MS);
                    let deadline = if s.expired(now, idle, absolute) {
                        super::subjects::deadline(&s, lenient, absolute)
                    } else {
                        super::subjects::deadline(&s, idle, absolute)
                    };
                    if s.is_read_only() {
                        Instant::now() + RETIRED_EVERY
                    } else {
                        Instant::now() + until(deadline).min(BACKSTOP)
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "a tunnel could not look at its session: kept open");
                    Instant::now() + RETRY
                }
            };
        }
    }
}
