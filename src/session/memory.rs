//! The embedded store: sessions in this process, in a `moka` cache.
//!
//! Each entry expires after the idle timeout since its last use, and never later than the
//! absolute timeout since its creation; past `max_sessions` the least useful entries are
//! evicted. Updates of one session run under moka's per-key compute, so concurrent changes
//! to different attributes both survive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use super::StoreId;
use super::store::{
    Applied, Change, Limits, Session, SessionKey, SessionStore, StoreError, TOUCH_EVERY_MS, unix_ms,
};

/// Settings of the memory store.
#[derive(Debug, Clone, Copy)]
pub struct MemoryOptions {
    /// Most sessions kept; beyond this, entries are evicted.
    pub max_sessions: u64,
    /// A session unused for this long is dropped.
    pub idle_timeout: Duration,
    /// A session older than this is dropped, used or not.
    pub absolute_timeout: Duration,
    /// Size limits on session data.
    pub limits: Limits,
}

#[derive(Debug, Clone)]
enum Entry {
    Live(Arc<Session>),
    /// A regenerated session's old id, still answering until `until`.
    Moved {
        to: StoreId,
        until: Instant,
    },
}

struct SessionExpiry {
    idle: Duration,
    absolute: Duration,
}

impl SessionExpiry {
    fn ttl(&self, entry: &Entry) -> Option<Duration> {
        Some(match entry {
            Entry::Live(s) => {
                let age = Duration::from_millis(unix_ms().saturating_sub(s.created_ms));
                self.idle.min(self.absolute.saturating_sub(age))
            }
            Entry::Moved { until, .. } => until.saturating_duration_since(Instant::now()),
        })
    }
}

impl Expiry<StoreId, Entry> for SessionExpiry {
    fn expire_after_create(&self, _: &StoreId, value: &Entry, _: Instant) -> Option<Duration> {
        self.ttl(value)
    }

    fn expire_after_read(
        &self,
        _: &StoreId,
        value: &Entry,
        _: Instant,
        remaining: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        match value {
            // Sliding: a read restarts the idle timeout.
            Entry::Live(_) => self.ttl(value),
            Entry::Moved { .. } => remaining,
        }
    }

    fn expire_after_update(
        &self,
        _: &StoreId,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.ttl(value)
    }
}

/// Sessions kept in this process.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<StoreId, Entry>,
    limits: Limits,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new(options: MemoryOptions) -> MemoryStore {
        let cache = Cache::builder()
            .max_capacity(options.max_sessions)
            .expire_after(SessionExpiry {
                idle: options.idle_timeout,
                absolute: options.absolute_timeout,
            })
            .build();
        MemoryStore {
            cache,
            limits: options.limits,
        }
    }

    /// Sessions and grace entries held (approximate until pending work runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending evictions now (tests and shutdown).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// The id whose entry holds the session: `id` itself, or where it moved.
    async fn live_id(&self, id: &StoreId) -> StoreId {
        match self.cache.get(id).await {
            Some(Entry::Moved { to, .. }) => to,
            _ => *id,
        }
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        let (id, session) = match self.cache.get(id).await {
            None => return Ok(None),
            Some(Entry::Live(s)) => (*id, s),
            Some(Entry::Moved { to, .. }) => match self.cache.get(&to).await {
                Some(Entry::Live(s)) => (to, s),
                _ => return Ok(None),
            },
        };
        if now_ms.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS {
            let touched = self.update(&id, None, &[], now_ms).await?;
            return Ok(touched.map(|a| a.session));
        }
        Ok(Some(Session::clone(&session)))
    }

    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<Applied>, StoreError> {
        let id = self.live_id(id).await;
        let limits = self.limits;
        let mut rejected = Vec::new();
        let result = self
            .cache
            .entry(id)
            .and_compute_with(|current| {
                let op = match current.map(moka::Entry::into_value) {
                    Some(Entry::Live(s)) => {
                        let mut s = Session::clone(&s);
                        rejected = s.apply(changes, &limits);
                        s.last_seen_ms = s.last_seen_ms.max(now_ms);
                        Op::Put(Entry::Live(Arc::new(s)))
                    }
                    // Moved again since `live_id` looked: too late for this request.
                    Some(Entry::Moved { .. }) => Op::Nop,
                    None => match create {
                        Some(key) => {
                            let mut s = Session::new(key, now_ms);
                            rejected = s.apply(changes, &limits);
                            Op::Put(Entry::Live(Arc::new(s)))
                        }
                        None => Op::Nop,
                    },
                };
                std::future::ready(op)
            })
            .await;
        let (entry, created) = match result {
            CompResult::Inserted(e) => (e, true),
            CompResult::ReplacedWith(e) => (e, false),
            _ => return Ok(None),
        };
        match entry.into_value() {
            Entry::Live(s) => Ok(Some(Applied {
                session: Session::clone(&s),
                rejected,
                created,
            })),
            Entry::Moved { .. } => Ok(None),
        }
    }

    async fn delete(&self, id: &StoreId) -> Result<(), StoreError> {
        let live = self.live_id(id).await;
        self.cache.invalidate(&live).await;
        self.cache.invalidate(id).await;
        Ok(())
    }

    async fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        let Some(Entry::Live(s)) = self.cache.get(from).await else {
            return Ok(false);
        };
        self.cache.insert(*to, Entry::Live(s)).await;
        let until = Instant::now() + grace;
        self.cache
            .insert(*from, Entry::Moved { to: *to, until })
            .await;
        Ok(true)
    }

    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        // A scan: this is the admin API's "log a user out everywhere", not a request path.
        let doomed: Vec<StoreId> = self
            .cache
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(s) if s.attrs.get(name).is_some_and(|v| v == value) => Some(*id),
                _ => None,
            })
            .collect();
        for id in &doomed {
            self.cache.invalidate(id).await;
        }
        Ok(doomed.len())
    }

    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        Ok(self.cache.iter().find_map(|(id, e)| match e {
            Entry::Live(s) if s.key == *key => Some((*id, Session::clone(&s))),
            _ => None,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
