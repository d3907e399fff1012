//! With `on_error: serve_stale`: the writes made while Redis did not answer, replayed in
//! order once it does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Writes queued while Redis did not answer (at most `MAX`; the oldest go first), and the task
/// that replays them in order once it answers.
#[derive(Default)]
pub(super) struct Pending {
    writes: Mutex<VecDeque<PendingWrite>>,
    running: AtomicBool,
}

impl Pending {
    const MAX: usize = 10_000;

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingWrite>> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a write, dropping the oldest past the bound.
    pub(super) fn push(&self, w: PendingWrite) {
        let mut q = self.queue();
        if q.len() >= Self::MAX {
            q.pop_front();
            tracing::warn!("session store down: queued writes over the bound, oldest dropped");
        }
        q.push_back(w);
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
