//! A change of store loses no session: when a reload replaces the store (memory to Redis,
//! one Redis to another, Redis to memory, a memory store with other settings), the sessions
//! of the old one move into the new one. A mover takes them over one by one in the
//! background, and until it is done a session the new store does not hold is read through
//! from the old one (and moved at once), so no request finds its session missing meanwhile.
//! Each move is an import (never over a session there) and then a delete from the old store;
//! a session ended during the move is remembered, so the mover never brings it back.
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
use super::token::StoreId;
use crate::metrics::{Metrics, SessionEvent};

/// Sessions on their way from the old store to the new one.
pub(super) struct Migration {
    from: ServerStore,
    to: ServerStore,
    /// Sessions ended since the move began: never moved again.
    ended: Mutex<HashSet<StoreId>>,
    /// Every session of the old store has been moved.
    done: AtomicBool,
    /// `store.migrate_window`: the old store is read through until then, moved or not
    /// (gateways not yet restarted may still write sessions there).
    until: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Migration {
    /// A move from `from` to `to`; the mover runs on the current runtime (none in a test
    /// without one: then sessions move only as they are read).
    pub(super) fn start(
        from: ServerStore,
        to: ServerStore,
        window: Option<Duration>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Migration> {
        let m = Arc::new(Migration {
            from,
            to,
            ended: Mutex::default(),
            done: AtomicBool::new(false),
            until: window.map(|w| Instant::now() + w),
            metrics: metrics.clone(),
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
    /// the old store holds none (or it was ended during the move).
    pub(super) async fn read_through(&self, id: &StoreId) -> Result<Option<Session>, StoreError> {
        if self.done() || self.was_ended(id) {
            return Ok(None);
        }
        if !self.move_one(id).await? {
            return Ok(None);
        }
        self.to.load(id, unix_ms()).await
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

    fn was_ended(&self, id: &StoreId) -> bool {
        self.ended.lock().is_ok_and(|e| e.contains(id))
    }

    /// Moves one session; `true` if the new store holds it now.
    async fn move_one(&self, id: &StoreId) -> Result<bool, StoreError> {
        let Some(s) = self.from.load(id, unix_ms()).await? else {
            return Ok(false);
        };
        // A retired id's view is not a session of its own: its successor moves.
        if s.is_read_only() || self.was_ended(id) {
            return Ok(false);
        }
        let written = self.to.import(id, &s).await?;
        if written {
            self.metrics.session(SessionEvent::Migrated);
        }
        self.from.delete(id).await?;
        // A logout that came between the read and the write: ended after all.
        if self.was_ended(id) {
            self.to.delete(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Moves every session of the old store, then marks the move done.
    async fn move_all(&self) {
        let all = match self.from.export().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "sessions of the previous store not listed: they move only as they are read");
                return;
            }
        };
        let (mut moved, mut failed) = (0usize, 0usize);
        for (id, _) in &all {
            match self.move_one(id).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "a session not moved");
                }
            }
        }
        self.done.store(failed == 0, Ordering::Relaxed);
        tracing::info!(moved, failed, "sessions moved from the previous store");
    }
}
