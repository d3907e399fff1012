//! The near cache's copies, and the listener that drops them when any gateway changes a
//! session (every change script publishes the session's id on `PREFIX changed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use moka::future::Cache;
use rustc_hash::FxBuildHasher;
use tokio_util::sync::CancellationToken;

use super::conn::Connector;
use crate::session::StoreId;
use crate::session::store::Session;

/// Recent sessions, by their own id (never an alias's: invalidations name the own id).
pub(super) type Near = Cache<StoreId, NearCopy, FxBuildHasher>;

/// A session as this gateway last read it, and when its Redis key expires unless used: a copy
/// serves only while the same rules that make Redis note a use would not (see `LOAD`).
#[derive(Clone)]
pub(super) struct NearCopy {
    pub(super) session: Session,
    pub(super) expires_ms: u64,
    /// A request is asking Redis for this session (to note a use): the others keep being
    /// served by this copy meanwhile, rather than all asking at once.
    pub(super) refreshing: Arc<AtomicBool>,
}

impl NearCopy {
    /// A copy of `session`, whose Redis key expires at `expires_ms`.
    pub(super) fn new(session: Session, expires_ms: u64) -> NearCopy {
        NearCopy {
            session,
            expires_ms,
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Counts the near cache's invalidations, in a few slots by session id. A read from Redis
/// notes its id's count before it asks, and keeps a copy only if the count is the same when
/// the answer comes: an announcement that arrived meanwhile may be about the very session
/// it read. (Slots, not one count: other sessions' changes cost a read its copy only now and
/// then.)
#[derive(Clone)]
pub(super) struct Epoch(Arc<[AtomicU64; EPOCH_SLOTS]>);

const EPOCH_SLOTS: usize = 64;

impl Default for Epoch {
    fn default() -> Self {
        Epoch(Arc::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

impl Epoch {
    fn slot(&self, id: &StoreId) -> &AtomicU64 {
        &self.0[usize::from(id.as_bytes()[0]) % EPOCH_SLOTS]
    }

    /// The count of `id`'s slot now.
    pub(super) fn now(&self, id: &StoreId) -> u64 {
        self.slot(id).load(Ordering::Acquire)
    }

    /// One more invalidation, of `id`.
    pub(super) fn bump(&self, id: &StoreId) {
        self.slot(id).fetch_add(1, Ordering::AcqRel);
    }

    /// Invalidations of every session (announcements lost while unsubscribed).
    pub(super) fn bump_all(&self) {
        for slot in self.0.iter() {
            slot.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Listens on `PREFIX changed` and drops the near-cache copies of the sessions named there.
#[derive(Default)]
pub(super) struct Listener {
    started: AtomicBool,
    stop: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listener {
    /// Whether the listening task was started.
    pub(super) fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Starts the listening task, once; it resubscribes after a lost connection (with
    /// Sentinel, to the master of the moment; with a Cluster, to the next seed node). Changes
    /// announced while it was not subscribed are lost, so every copy is dropped when it
    /// subscribes again, and, unless `serve_stale` (which serves those copies while Redis is
    /// away), as soon as the subscription is lost.
    pub(super) fn start(
        &self,
        connector: Arc<Connector>,
        channel: String,
        (near, epoch): (Near, Epoch),
        serve_stale: bool,
    ) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut again = false;
            loop {
                let listened = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listen(&connector, &channel, (&near, &epoch), again) => r,
                };
                if let Err(e) = listened {
                    tracing::warn!(error = %e, "near-cache invalidations: subscription lost");
                }
                again = true;
                epoch.bump_all();
                if !serve_stale {
                    near.invalidate_all();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

async fn listen(
    connector: &Connector,
    channel: &str,
    (near, epoch): (&Near, &Epoch),
    again: bool,
) -> redis::RedisResult<()> {
    let client = connector.pubsub_client().await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    if again {
        // Announcements made while it was away never arrived.
        epoch.bump_all();
        near.invalidate_all();
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        if let Some(id) = std::str::from_utf8(msg.get_payload_bytes())
            .ok()
            .and_then(super::parse_hex)
        {
            let id = StoreId::from_bytes(id);
            epoch.bump(&id);
            near.invalidate(&id).await;
        }
    }
    Ok(())
}
