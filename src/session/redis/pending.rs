//! With `on_error: serve_stale`: the writes made while Redis did not answer, replayed in
//! order once it does.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::RedisStore;
use crate::session::StoreId;
use crate::session::store::{Change, SessionKey};

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
/// never a logout), and the task that replays them in order once it answers. Sessions whose
/// logout waits are dead meanwhile, here, even once Redis answers before the replay.
#[derive(Default)]
pub(super) struct Pending {
    writes: Mutex<VecDeque<PendingWrite>>,
    running: AtomicBool,
    /// Logouts not yet replayed.
    ended: Mutex<HashSet<StoreId>>,
    /// How many (checked first: most reads find none, and take no lock).
    ended_count: AtomicUsize,
}

impl Pending {
    const MAX: usize = 10_000;

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingWrite>> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a write, dropping the oldest change past the bound (a logout is never dropped).
    pub(super) fn push(&self, w: PendingWrite) {
        if w.delete {
            let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
            ended.insert(w.id);
            self.ended_count.store(ended.len(), Ordering::Release);
        }
        let mut q = self.queue();
        if q.len() >= Self::MAX
            && let Some(oldest) = q.iter().position(|w| !w.delete)
        {
            q.remove(oldest);
            tracing::warn!("session store down: queued writes over the bound, oldest dropped");
        }
        q.push_back(w);
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

    /// Starts the replaying task unless it runs; it ends when the queue is empty.
    pub(super) fn start(self: &Arc<Self>, store: RedisStore) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                loop {
                    // Taken out first: the queue's lock must not be held across the replay.
                    let next = me.queue().pop_front();
                    let Some(w) = next else { break };
                    if store.replay(&w).await.is_err() {
                        me.queue().push_front(w);
                        break;
                    }
                    me.replayed(&w);
                }
                if me.queue().is_empty() {
                    me.running.store(false, Ordering::Release);
                    // A write queued between the check and the flag would wait for the next
                    // one: take the task back if so.
                    if me.queue().is_empty() || me.running.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }
}
