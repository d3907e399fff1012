//! A change of store loses no session: when a reload replaces the store (memory to Redis,
//! one Redis to another, Redis to memory, a memory store with other settings), the sessions
//! of the old one move into the new one. A mover takes them over one by one in the
//! background, and until it is done a session the new store does not hold is read through
//! from the old one (and moved at once), so no request finds its session missing meanwhile.
//! Each move is an import (never over a session there); a memory store is emptied as it goes,
//! but a Redis store is only read (other gateways may still be serving from it), and its
//! sessions leave by their idle timeout. A session ended during the move is ended in both
//! and remembered, so the mover never brings it back. Only a session's own id moves: a
//! sibling host's alias, a retired id or a code does not (the client hands over again). If
//! the old store does not answer, its sessions read as missing (the user logs in again)
//! rather than failing requests.
//!
//! The same moves sessions from the Redis store `store.migrate_from` names, when a gateway
//! starts: then the old store is read through for `store.migrate_window`, since gateways not
//! restarted yet may still write sessions there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::server_store::ServerStore;
use super::store::{AdminStore, Session, SessionStore, StoreError, unix_ms};
use super::subjects::Owners;
use super::token::StoreId;
use crate::metrics::{Metrics, SessionEvent};

/// Sessions on their way from the old store to the new one.
pub(super) struct Migration {
    from: ServerStore,
    /// The old store is this process's memory: emptied as sessions move.
    from_private: bool,
    to: ServerStore,
    /// Sessions ended since the move began: never moved again.
    ended: Mutex<HashSet<StoreId>>,
    /// Every session of the old store has been moved.
    done: AtomicBool,
    /// `store.migrate_window`: the old store is read through until then, moved or not
    /// (gateways not yet restarted may still write sessions there).
    until: Option<Instant>,
    metrics: Arc<Metrics>,
    /// How moved sessions are indexed by subject in the new store.
    owners: Owners,
}

impl Migration {
    /// A move from `from` to `to`; the mover runs on the current runtime (none in a test
    /// without one: then sessions move only as they are read).
    pub(super) fn start(
        from: ServerStore,
        to: ServerStore,
        window: Option<Duration>,
        metrics: &Arc<Metrics>,
        owners: Owners,
    ) -> Arc<Migration> {
        let m = Arc::new(Migration {
            from_private: matches!(from, ServerStore::Memory(_)),
            from,
            to,
            ended: Mutex::default(),
            done: AtomicBool::new(false),
            until: window.map(|w| Instant::now() + w),
            metrics: metrics.clone(),
            owners,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mover = m.clone();
            rt.spawn(async move { mover.move_all().await });
        }
        m
    }

    /// Whether the move is over: every session of the old store moved, or (with a window)
    /// the window ended.
    pub(super) fn done(&self) -> bool {
        match self.until {
            Some(until) => Instant::now() >= until,
            None => self.done.load(Ordering::Relaxed),
        }
    }

    /// The session under `id` from the old store, moved into the new one first; `None` if
    /// the old store holds none of its own under `id` (or it was ended during the move, or
    /// the old store does not answer).
    pub(super) async fn read_through(&self, id: &StoreId) -> Result<Option<Session>, StoreError> {
        if self.done() || self.was_ended(id) {
            return Ok(None);
        }
        let moved = async {
            if !self.from.is_own(id).await? {
                return Ok(None);
            }
            let Some(s) = self.from.load(id, unix_ms()).await? else {
                return Ok(None);
            };
            Ok::<_, StoreError>(Some(s))
        };
        let s = match moved.await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "the store sessions move from did not answer: a miss");
                return Ok(None);
            }
        };
        if !self.move_one(id, &s).await? {
            return Ok(None);
        }
        self.to.load(id, unix_ms()).await
    }

    /// The session under `id` in the old store as it is, moved nowhere (a tunnel's look
    /// during the move); `None` once the move is over or the session ended during it.
    pub(super) async fn peek(&self, id: &StoreId) -> Result<Option<Session>, StoreError> {
        if self.done() || self.was_ended(id) {
            return Ok(None);
        }
        self.from.peek(id).await
    }

    /// A session ended (a logout) during the move: gone from the old store too, and never
    /// moved again.
    pub(super) async fn ended(&self, id: &StoreId) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.insert(*id);
        }
        if let Err(e) = self.from.delete(id).await {
            tracing::warn!(error = %e, "session not deleted from the store it is moving from");
        }
    }

    /// The admin API ended every session whose attribute `name` is `value`: in the old store
    /// too.
    pub(super) async fn ended_where(&self, name: &str, value: &str) {
        if let Err(e) = self.from.delete_where(name, value).await {
            tracing::warn!(error = %e, "sessions not ended in the store they are moving from");
        }
    }

    fn was_ended(&self, id: &StoreId) -> bool {
        self.ended.lock().is_ok_and(|e| e.contains(id))
    }

    /// Moves session `s` of `id`; `true` if the new store holds it now.
    async fn move_one(&self, id: &StoreId, s: &Session) -> Result<bool, StoreError> {
        // A retired id's view is not a session of its own: its successor moves.
        if s.is_read_only() || self.was_ended(id) {
            return Ok(false);
        }
        if self.to.import(id, s).await? {
            self.owners.note(&self.to, id, s).await;
            self.metrics.session(SessionEvent::Migrated);
        }
        if self.from_private {
            self.from.delete(id).await?;
        }
        // A logout that came between the read and the write: ended after all.
        if self.was_ended(id) {
            self.to.delete(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Moves every session of the old store (as listed, so that moving touches none), in
    /// at most three passes a few seconds apart for those a store failed on; then the move
    /// is done, whatever is left (it reads as missing).
    async fn move_all(&self) {
        const PASSES: usize = 3;
        let (mut moved, mut left) = (0usize, 0usize);
        for pass in 0..PASSES {
            if pass > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
            let all = match self.from.export().await {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(error = %e, pass, "sessions of the previous store not listed");
                    continue;
                }
            };
            left = 0;
            for (id, s) in &all {
                match self.move_one(id, s).await {
                    Ok(true) => moved += 1,
                    Ok(false) => {}
                    Err(e) => {
                        left += 1;
                        tracing::debug!(error = %e, "a session not moved");
                    }
                }
            }
            if left == 0 {
                break;
            }
        }
        self.done.store(true, Ordering::Relaxed);
        tracing::info!(moved, left, "sessions moved from the previous store");
    }
}
