//! With `on_error: serve_stale`: the writes made while Redis did not answer, replayed in
//! order once it does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::RedisStore;
use crate::session::StoreId;
use crate::session::store::{Change, Session, SessionKey};

/// A write made while Redis did not answer.
pub(super) struct PendingWrite {
    pub(super) id: StoreId,
    pub(super) create: Option<SessionKey>,
    pub(super) changes: Vec<Change>,
    pub(super) now_ms: u64,
    /// A logout: the session is deleted (the rest is unused).
    pub(super) delete: bool,
}

/// Writes queued while Redis did not answer (at most `MAX`; past it the oldest change goes,
/// never a logout; logouts past `MAX_LOGOUTS` are refused, not queued), replayed in order by
/// the circuit's probe once it answers. Sessions whose logout waits are dead meanwhile,
/// here, even once Redis answers before the replay.
pub(super) struct Pending {
    writes: Mutex<VecDeque<PendingWrite>>,
    /// Logouts not yet replayed.
    ended: Mutex<HashSet<StoreId>>,
    /// How many (checked first: most reads find none, and take no lock).
    ended_count: AtomicUsize,
    /// The session's own id for an alias (a sibling's token) this gateway followed in Redis:
    /// a logout through the alias while Redis does not answer ends the copy kept under the
    /// session's own id too.
    aliases: moka::sync::Cache<StoreId, StoreId>,
    /// Each session written during the outage, as this gateway has it after the last write
    /// (kept until the circuit closes): what a Redis that lost its data gets back, and what
    /// serves the session if the near cache drops its copy meanwhile.
    snapshots: Mutex<HashMap<StoreId, Session>>,
    /// How many writes wait per session (a session with none asks Redis again as soon as
    /// Redis answers, while the queue is replayed).
    queued: Mutex<HashMap<StoreId, u32>>,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            writes: Mutex::default(),
            ended: Mutex::default(),
            ended_count: AtomicUsize::default(),
            aliases: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            snapshots: Mutex::default(),
            queued: Mutex::default(),
        }
    }
}

impl Pending {
    const MAX: usize = 10_000;
    /// Logouts are never dropped, so the queue may pass `MAX` with them; not this.
    const MAX_LOGOUTS: usize = 100_000;

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingWrite>> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a write, dropping the oldest change past the bound (a logout is never dropped);
    /// `false` if it is a logout past [`Pending::MAX_LOGOUTS`], which is not queued.
    pub(super) fn push(&self, w: PendingWrite) -> bool {
        if w.delete {
            let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
            if ended.len() >= Self::MAX_LOGOUTS && !ended.contains(&w.id) {
                return false;
            }
            ended.insert(w.id);
            self.ended_count.store(ended.len(), Ordering::Release);
        }
        let mut q = self.queue();
        if q.len() >= Self::MAX
            && let Some(oldest) = q.iter().position(|w| !w.delete)
            && let Some(dropped) = q.remove(oldest)
        {
            self.unqueued(&dropped.id);
            tracing::warn!("session store down: queued writes over the bound, oldest dropped");
        }
        *self
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(w.id)
            .or_default() += 1;
        q.push_back(w);
        true
    }

    /// Whether writes of the session under `id` wait (its later ones must wait behind them).
    pub(super) fn has_queued(&self, id: &StoreId) -> bool {
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }

    /// One write of `id` left the queue; its snapshot goes with the last.
    fn unqueued(&self, id: &StoreId) {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = queued.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                queued.remove(id);
                self.snapshots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
            }
        }
    }

    /// Whether no write waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Keeps `session` as this gateway has it after a write made during the outage (called
    /// after the write is queued; it goes with the session's last queued write, so there are
    /// never more than queued writes).
    pub(super) fn keep_snapshot(&self, id: StoreId, session: Session) {
        if self.has_queued(&id) {
            self.snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, session);
        }
    }

    /// A logout is queued: the session's snapshot must not serve it, nor restore it.
    pub(super) fn drop_snapshot(&self, id: &StoreId) {
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The session under `id` as written during the outage, if it was.
    pub(super) fn snapshot(&self, id: &StoreId) -> Option<Session> {
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Notes that the alias `alias` leads to the session under `own`.
    pub(super) fn followed(&self, alias: StoreId, own: StoreId) {
        self.aliases.insert(alias, own);
    }

    /// The session's own id for `alias`, if this gateway followed it.
    pub(super) fn own_id(&self, alias: &StoreId) -> Option<StoreId> {
        self.aliases.get(alias)
    }

    /// Whether the session under `id` was logged out and the logout is not replayed yet.
    pub(super) fn ended(&self, id: &StoreId) -> bool {
        self.ended_count.load(Ordering::Acquire) > 0
            && self
                .ended
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(id)
    }

    /// A logout reached Redis.
    fn replayed(&self, w: &PendingWrite) {
        if w.delete {
            let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
            ended.remove(&w.id);
            self.ended_count.store(ended.len(), Ordering::Release);
        }
    }

    /// Replays the queued writes in order (see [`RedisStore::replay`]); `false` if Redis
    /// failed one (it stays first in the queue). Only the store's circuit probe calls this, so
    /// writes are never replayed by two tasks at once.
    pub(super) async fn replay(&self, store: &RedisStore, lost: bool) -> bool {
        loop {
            // Taken out first: the queue's lock must not be held across the replay.
            let next = self.queue().pop_front();
            let Some(w) = next else { return true };
            let outages = store.outages();
            if let Err(e) = store.replay(&w, lost).await {
                // Redis answers, but refuses this very write (out of memory, an ACL): it
                // would block every later one for ever. It is dropped, visibly; a logout's
                // session stays ended on this gateway. Not when the failure was an outage
                // (a timeout, READONLY after a failover, LOADING...): that waits.
                if store.outages() == outages && store.answers().await {
                    tracing::error!(error = %e, "session store refused a queued write: dropped");
                    self.unqueued(&w.id);
                    continue;
                }
                self.queue().push_front(w);
                return false;
            }
            self.replayed(&w);
            self.unqueued(&w.id);
        }
    }
}
