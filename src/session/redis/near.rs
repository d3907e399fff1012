//! The near cache: this gateway's copies of recent sessions, and the listener that drops
//! them when any gateway changes a session (every change script publishes the session's id
//! on `PREFIX changed`). The store reads a copy before it asks Redis, and forgets one after
//! each write it makes; this module keeps the copies honest in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use moka::future::Cache;
use rustc_hash::FxBuildHasher;
use tokio_util::sync::CancellationToken;

use super::conn::Connector;
use crate::metrics::Tally;
use crate::session::StoreId;
use crate::session::store::Session;

/// Recent sessions, by their own id (never an alias's: invalidations name the own id).
type Near = Cache<StoreId, NearCopy, FxBuildHasher>;

/// The near cache: its copies, the count of invalidations a read checks before it keeps one
/// (see [`Epoch`]), the listener, and how often a copy served.
#[derive(Clone)]
pub(super) struct NearCache {
    copies: Near,
    epoch: Epoch,
    /// Started with the store's first connection, stopped when the last clone of the cache
    /// goes.
    listener: Arc<Listener>,
    /// Reads a copy served, and those it could not (for metrics).
    hits: Arc<Tally>,
    misses: Arc<Tally>,
}

impl NearCache {
    /// A cache of at most `max` copies, each kept at most `keep`.
    pub(super) fn new(max: u64, keep: Duration) -> NearCache {
        NearCache {
            copies: Cache::builder()
                .max_capacity(max)
                // Least recently used goes first, and a new copy is always kept (see the
                // memory store: moka's default admission refuses newcomers to a full cache).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(keep)
                .build_with_hasher(FxBuildHasher),
            epoch: Epoch::default(),
            listener: Arc::new(Listener::default()),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// The copy of session `id`, if any.
    pub(super) async fn get(&self, id: &StoreId) -> Option<NearCopy> {
        self.copies.get(id).await
    }

    /// Keeps `copy` of session `id`.
    pub(super) async fn insert(&self, id: StoreId, copy: NearCopy) {
        self.copies.insert(id, copy).await;
    }

    /// Drops the copy of `id` (other gateways hear of the change by pub/sub); a read in
    /// flight meanwhile keeps no copy either (see [`Epoch`]).
    pub(super) async fn forget(&self, id: &StoreId) {
        self.epoch.bump(id);
        self.copies.invalidate(id).await;
    }

    /// Drops the copy of `id`, without counting an invalidation (a copy Redis did not
    /// replace on a refresh).
    pub(super) async fn drop_copy(&self, id: &StoreId) {
        self.copies.invalidate(id).await;
    }

    /// The invalidation count a read of `id` notes before it asks Redis (see [`Epoch`]).
    pub(super) fn epoch(&self, id: &StoreId) -> u64 {
        self.epoch.now(id)
    }

    /// A copy served a read.
    pub(super) fn hit(&self) {
        self.hits.inc();
    }

    /// A read went to Redis.
    pub(super) fn miss(&self) {
        self.misses.inc();
    }

    /// Reads copies served, and reads sent to Redis.
    pub(super) fn stats(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    /// Starts the listener, once (see [`Listener::start`]).
    pub(super) fn listen(&self, connector: &Arc<Connector>, channel: &str, serve_stale: bool) {
        // Checked first: the arguments are clones, and this runs on every operation.
        if !self.listener.is_started() {
            self.listener.start(
                connector.clone(),
                channel.to_owned(),
                (self.copies.clone(), self.epoch.clone()),
                serve_stale,
            );
        }
    }
}

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
struct Epoch(Arc<[AtomicU64; EPOCH_SLOTS]>);

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
    fn now(&self, id: &StoreId) -> u64 {
        self.slot(id).load(Ordering::Acquire)
    }

    /// One more invalidation, of `id`.
    fn bump(&self, id: &StoreId) {
        self.slot(id).fetch_add(1, Ordering::AcqRel);
    }

    /// Invalidations of every session (announcements lost while unsubscribed).
    fn bump_all(&self) {
        for slot in self.0.iter() {
            slot.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Listens on `PREFIX changed` and drops the near-cache copies of the sessions named there.
#[derive(Default)]
struct Listener {
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
    fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Starts the listening task, once; it resubscribes after a lost connection (with
    /// Sentinel, to the master of the moment; with a Cluster, to the next seed node). Changes
    /// announced while it was not subscribed are lost, so every copy is dropped when it
    /// subscribes again, and, unless `serve_stale` (which serves those copies while Redis is
    /// away), as soon as the subscription is lost.
    fn start(
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
