//! A tunnel (a WebSocket, or any upgraded connection) opened with a session lives only as
//! long as that session: [`SessionWatch::ended`] resolves when the session is destroyed,
//! revoked, evicted, expired, or regenerated away from (once the old token's grace is over),
//! here or on another gateway sharing the store. It looks at the session (without noting a
//! use: an open tunnel does not keep a session alive) when an event may have ended it (see
//! `events`), when its idle or absolute timeout comes, and at least every
//! [`BACKSTOP`] in case an event from another gateway was lost. A store that does not
//! answer ends nothing: the tunnel stays, and the look is tried again shortly.

use std::time::Duration;

use tokio::time::Instant;

use super::events::Watch;
use super::server_store::ServerStore;
use super::store::{TOUCH_EVERY_MS, unix_ms};
use super::token::StoreId;

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
    pub(super) store: ServerStore,
    pub(super) idle: Duration,
    pub(super) absolute: Duration,
    /// When the session, as the tunnel was opened, expires unless used (Unix ms).
    pub(super) first_deadline: u64,
}

/// From now until the Unix time `at_ms` (at least a few ms: a deadline is judged strictly).
fn until(at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(unix_ms()).saturating_add(5))
}

impl SessionWatch {
    /// Resolves once the session has ended (see the module's comment).
    pub async fn ended(&self) {
        let mut next = Instant::now() + until(self.first_deadline).min(BACKSTOP);
        loop {
            tokio::select! {
                () = self.watch.poked() => {}
                () = tokio::time::sleep_until(next) => {}
            }
            let now = unix_ms();
            // A use is written back at most every `TOUCH_EVERY_MS`: past its idle timeout by
            // less than that, a session may still be in use (the store says so by returning
            // it), and is looked at again once that much more has passed.
            let lenient = self.idle + Duration::from_millis(TOUCH_EVERY_MS);
            next = match self.store.peek(&self.id).await {
                Ok(Some(s)) if !s.expired(now, lenient, self.absolute) => {
                    let deadline = if s.expired(now, self.idle, self.absolute) {
                        super::subjects::deadline(&s, lenient, self.absolute)
                    } else {
                        super::subjects::deadline(&s, self.idle, self.absolute)
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
