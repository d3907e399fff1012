//! The embedded store: sessions in this process, in a `moka` cache.
//!
//! Each entry expires after the idle timeout since its last use; one past the absolute
//! timeout since its creation is dropped when next read; past `max_sessions` the least useful
//! entries are evicted. Updates of one session run under moka's per-key compute, so concurrent changes
//! to different attributes both survive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use rustc_hash::FxBuildHasher;

use super::StoreId;
use super::store::{
    Applied, Change, Limits, Session, SessionKey, SessionStore, StoreError, TOUCH_EVERY_MS, unix_ms,
};
use crate::metrics::Tally;

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

/// A session as kept: [`Session::packed`]'s bytes in one allocation. A million sessions of a
/// few small attributes are a million small maps of small strings otherwise (measured with
/// `examples/session_memory`: 1,376 MiB per million unpacked).
#[derive(Debug, Clone)]
struct Packed {
    created_ms: u64,
    last_seen_ms: u64,
    /// Shared, not boxed: the cache clones entries on every read, and an `Arc<[u8]>` keeps
    /// its counts and bytes in one allocation.
    bytes: Arc<[u8]>,
}

impl Packed {
    fn pack(s: &Session) -> Packed {
        Packed {
            created_ms: s.created_ms,
            last_seen_ms: s.last_seen_ms,
            bytes: Arc::from(&s.packed()[..]),
        }
    }

    /// The session, sharing these bytes (one small allocation, whatever its size).
    fn session(&self) -> Option<Session> {
        Session::from_packed(
            Bytes::from_owner(self.bytes.clone()),
            self.created_ms,
            self.last_seen_ms,
        )
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Live(Packed),
    /// Another id of a session: a regenerated session's old id (until the grace window
    /// ends), or a sibling host's alias (until the absolute timeout).
    Moved {
        to: StoreId,
        until: Instant,
    },
}

/// Most one-time codes held, and longest any lives (each also has its own, shorter, ttl).
const CODES_MAX: u64 = 100_000;
const CODES_LIVE: Duration = Duration::from_secs(60);

/// Sessions kept in this process.
#[derive(Clone)]
pub struct MemoryStore {
    /// Fx, not SipHash: ids are HMAC outputs, which no client can choose.
    cache: Cache<StoreId, Entry, FxBuildHasher>,
    /// One-time codes, apart from sessions: most are never redeemed, and the session cache
    /// only expires entries by the idle timeout.
    codes: Cache<StoreId, (StoreId, Instant), FxBuildHasher>,
    limits: Limits,
    absolute: Duration,
    /// Sessions evicted for room (for metrics).
    evicted: Arc<Tally>,
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
        let evicted = Arc::new(Tally::default());
        let counted = evicted.clone();
        let cache = Cache::builder()
            .max_capacity(options.max_sessions)
            // Sliding idle expiry for the whole cache, rather than a per-entry policy: a
            // per-entry timer costs a node per session (about 8% of the memory of a session
            // of five small attributes). The absolute timeout is checked when a session is
            // read, and old sessions that nobody reads leave by the idle timeout.
            .time_to_idle(options.idle_timeout)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    counted.inc();
                }
            })
            .build_with_hasher(FxBuildHasher);
        MemoryStore {
            evicted,
            cache,
            codes: Cache::builder()
                .max_capacity(CODES_MAX)
                .time_to_live(CODES_LIVE)
                .build_with_hasher(FxBuildHasher),
            limits: options.limits,
            absolute: options.absolute_timeout,
        }
    }

    /// Sessions and grace entries held (approximate until pending work runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Sessions evicted so far to stay within `max_sessions`.
    pub fn evictions(&self) -> u64 {
        self.evicted.get()
    }

    /// Runs moka's pending evictions now (tests and shutdown).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// The id whose entry holds the session: `id` itself, or where it moved (within the
    /// grace window).
    async fn live_id(&self, id: &StoreId) -> StoreId {
        match self.cache.get(id).await {
            Some(Entry::Moved { to, until }) if Instant::now() < until => to,
            _ => *id,
        }
    }

    /// The entry under `id` if it still counts: an alias past its grace window, or a session
    /// past its absolute timeout, is dropped instead.
    async fn current(&self, id: &StoreId) -> Option<Entry> {
        let entry = self.cache.get(id).await?;
        let stale = match &entry {
            Entry::Moved { until, .. } => Instant::now() >= *until,
            Entry::Live(s) => {
                Duration::from_millis(unix_ms().saturating_sub(s.created_ms)) > self.absolute
            }
        };
        if stale {
            self.cache.invalidate(id).await;
            return None;
        }
        Some(entry)
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        let (id, session) = match self.current(id).await {
            None => return Ok(None),
            Some(Entry::Live(s)) => (*id, s),
            Some(Entry::Moved { to, .. }) => match self.current(&to).await {
                Some(Entry::Live(s)) => (to, s),
                _ => return Ok(None),
            },
        };
        if now_ms.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS {
            let touched = self.update(&id, None, &[], now_ms).await?;
            return Ok(touched.map(|a| a.session));
        }
        Ok(session.session())
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
                        let Some(mut s) = s.session() else {
                            return std::future::ready(Op::Nop);
                        };
                        rejected = s.apply(changes, &limits);
                        s.last_seen_ms = s.last_seen_ms.max(now_ms);
                        Op::Put(Entry::Live(Packed::pack(&s)))
                    }
                    // Moved again since `live_id` looked: too late for this request.
                    Some(Entry::Moved { .. }) => Op::Nop,
                    None => match create {
                        Some(key) => {
                            let mut s = Session::new(key, now_ms);
                            rejected = s.apply(changes, &limits);
                            Op::Put(Entry::Live(Packed::pack(&s)))
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
            Entry::Live(s) => Ok(s.session().map(|session| Applied {
                session,
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
        let Some(Entry::Live(s)) = self.current(from).await else {
            return Ok(false);
        };
        self.cache.insert(*to, Entry::Live(s)).await;
        let until = Instant::now() + grace;
        self.cache
            .insert(*from, Entry::Moved { to: *to, until })
            .await;
        Ok(true)
    }

    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let live = self.live_id(to).await;
        let Some(Entry::Live(_)) = self.current(&live).await else {
            return Ok(false);
        };
        let until = Instant::now() + ttl;
        self.cache
            .insert(*alias, Entry::Moved { to: live, until })
            .await;
        Ok(true)
    }

    async fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let live = self.live_id(to).await;
        let Some(Entry::Live(_)) = self.current(&live).await else {
            return Ok(false);
        };
        self.codes.insert(*code, (live, Instant::now() + ttl)).await;
        Ok(true)
    }

    async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
        // `remove` is what makes it single-use: two takers cannot both get the entry.
        Ok(self
            .codes
            .remove(code)
            .await
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(to, _)| to))
    }

    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        // A scan: this is the admin API's "log a user out everywhere", not a request path.
        let doomed: Vec<StoreId> = self
            .cache
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(s) if s.session()?.attr(name) == Some(value) => Some(*id),
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
            Entry::Live(s) => s.session().filter(|s| s.key() == key.0).map(|s| (*id, s)),
            Entry::Moved { .. } => None,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_session_unpacks_to_itself() {
        let mut s = Session::from_parts(
            "k3y_-AZ",
            [
                ("user", "alice"),
                ("empty", ""),
                ("utf8", "grüße ✓"),
                ("long", &"x".repeat(70_000)),
            ],
            7,
            9,
        );
        let p = Packed::pack(&s);
        assert_eq!(p.session(), Some(s.clone()));
        let back = p.session().unwrap();
        assert_eq!(back.attr("utf8"), Some("grüße ✓"));
        assert_eq!(back.attr("missing"), None);
        assert_eq!(back.key(), "k3y_-AZ");
        s = Session::new(SessionKey("k".into()), 0);
        assert_eq!(Packed::pack(&s).session().unwrap().attr_count(), 0);
    }
}
