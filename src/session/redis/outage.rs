//! While Redis does not answer: with `serve_stale`, writes are applied to this gateway's copy
//! and queued; the probe asks Redis every [`circuit::PROBE_EVERY`], and once it answers
//! replays the queue (restoring each written session first if Redis lost its data), then
//! closes the circuit.

use std::sync::Arc;

use super::near::NearCopy;
use super::pending::PendingWrite;
use super::{RedisStore, circuit, ms};
use crate::session::StoreId;
use crate::session::store::{Applied, Change, Session, SessionKey, StoreError, unix_ms};

impl RedisStore {
    /// Starts the probe (see [`RedisStore::probe`]).
    pub(super) fn start_probe(&self) {
        let store = self.clone();
        tokio::spawn(async move { store.probe().await });
    }

    /// A write was queued: a probe must replay it.
    pub(super) fn replay_later(&self) {
        if self.0.wire.circuit.ensure_probe() {
            self.start_probe();
        }
    }

    /// Whether a request for session `id` must not ask Redis yet: Redis answers again, but
    /// writes of this session still wait in the queue, and its later ones go behind them.
    pub(super) fn queued_behind(&self, id: &StoreId) -> bool {
        self.0.wire.circuit.is_draining()
            && self.0.pending.as_ref().is_some_and(|p| p.has_queued(id))
    }

    /// With `serve_stale`, while Redis does not answer: the changes applied to this gateway's
    /// copy (which then serves), and queued for Redis; otherwise the error.
    pub(super) async fn update_stale(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
        error: StoreError,
    ) -> Result<Option<Applied>, StoreError> {
        let (Some(pending), Some(near)) = (&self.0.pending, &self.0.near) else {
            return Err(error);
        };
        // Logged out here, the logout waiting for Redis: nothing to change, nor to create
        // again under this id.
        if pending.ended(id) {
            return Ok(None);
        }
        let (mut session, created) = match (near.get(id).await, &create) {
            (Some(copy), _) => (copy.session, false),
            (None, _) if let Some(s) = pending.snapshot(id) => (s, false),
            (None, Some(key)) => (Session::new(key.clone(), now_ms), true),
            (None, None) => return Err(error),
        };
        let rejected = session.apply(changes, &self.0.wire.limits);
        session.last_seen_ms = session.last_seen_ms.max(now_ms);
        near.insert(*id, NearCopy::new(session.clone(), 0)).await;

        // A change is always queued (the oldest is dropped past the bound); the circuit's
        // probe replays it.
        pending.push(PendingWrite {
            id: *id,
            create,
            changes: changes.to_vec(),
            now_ms,
            delete: false,
        });
        // The session as this gateway has it now: what a Redis that lost its data gets back
        // (the near cache may drop its copy before the replay). Kept after the push, so that
        // it goes with the session's last queued write.
        pending.keep_snapshot(*id, session.clone());
        self.replay_later();
        tracing::warn!(error = %error, "session store down: change kept here, queued for Redis");
        Ok(Some(Applied {
            session,
            rejected,
            created,
            // While Redis is away the write stays under the id it was asked for.
            id: *id,
        }))
    }

    /// Asks Redis every [`circuit::PROBE_EVERY`] until it answers, replays the writes queued
    /// meanwhile (after a Redis that lost its data, restoring each written session from this
    /// gateway's copy first), then closes the circuit once none is left. It is the only task
    /// that replays.
    pub(super) async fn probe(self) {
        loop {
            tokio::time::sleep(circuit::PROBE_EVERY).await;
            // The store was replaced (a reload) and nothing else holds it.
            if Arc::strong_count(&self.0) == 1 {
                self.0.wire.circuit.abandon();
                return;
            }
            let Some(lost) = self.0.wire.answers_with_data().await else {
                continue;
            };
            // Sessions without queued writes ask Redis again from now on.
            self.0.wire.circuit.drain();
            loop {
                if let Some(p) = &self.0.pending
                    && !p.replay(&self, lost).await
                {
                    break;
                }
                let empty = || self.0.pending.as_ref().is_none_or(|p| p.is_empty());
                if self.0.wire.circuit.close_if(empty) {
                    tracing::info!("session store answers again");
                    return;
                }
                // Writes of sessions still queued came in meanwhile: those too.
            }
        }
    }

    /// Writes this gateway's copy of session `id` back into a Redis that lost it (nothing is
    /// written over a session that is there).
    async fn restore(&self, id: &StoreId) -> Result<(), StoreError> {
        let Some(s) = self.0.pending.as_ref().and_then(|p| p.snapshot(id)) else {
            return Ok(());
        };
        let s = &s;
        // What is left of its idle time, as it was last used: a session that idled out
        // meanwhile stays out.
        let ttl = (s.last_seen_ms + ms(self.0.wire.idle)).saturating_sub(unix_ms());
        if ttl == 0 {
            return Ok(());
        }
        self.0.wire.restore_copy(id, s, ttl).await.map(|_| ())
    }

    /// Replays a write queued while Redis did not answer; after Redis `lost` its data, the
    /// session is restored from this gateway's copy first.
    pub(super) async fn replay(&self, w: &PendingWrite, lost: bool) -> Result<(), StoreError> {
        if w.delete {
            return self.delete_in_redis(&w.id).await;
        }
        if lost {
            self.restore(&w.id).await?;
        }
        self.0
            .wire
            .update_in_redis(&w.id, w.create.as_ref(), &w.changes, w.now_ms)
            .await
            .map(|_| ())
    }
}
