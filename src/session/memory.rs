//! The embedded store: sessions in this process, in a `moka` cache.
//!
//! Each entry expires after the idle timeout since its last use; one past the absolute
//! timeout since its creation is dropped when next read; past `max_sessions` the least useful
//! entries are evicted. Updates of one session run under moka's per-key compute, so concurrent changes
//! to different attributes both survive.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A session packed into one allocation: its key and attributes as length-prefixed bytes.
/// A million sessions of a few small attributes are a million small maps of small strings
/// otherwise (measured with `examples/session_memory`: 1,376 MiB per million unpacked).
#[derive(Debug, Clone)]
struct Packed {
    created_ms: u64,
    last_seen_ms: u64,
    /// key length (u8), key, then per attribute: name length (u8), name, value length (u32
    /// little-endian), value.
    /// Shared, not boxed: the cache clones entries on every read, and an `Arc<[u8]>` keeps
    /// its counts and bytes in one allocation.
    bytes: Arc<[u8]>,
}

impl Packed {
    fn pack(s: &Session) -> Packed {
        let mut b = Vec::with_capacity(1 + s.key.0.len() + s.size() + s.attrs.len() * 5);
        push_short(&mut b, &s.key.0);
        for (name, value) in &s.attrs {
            push_short(&mut b, name);
            let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&value.as_bytes()[..len as usize]);
        }
        Packed {
            created_ms: s.created_ms,
            last_seen_ms: s.last_seen_ms,
            bytes: Arc::from(b),
        }
    }

    /// The key, then (name, value) pairs; stops at anything malformed (never written so).
    fn fields(&self) -> (&str, impl Iterator<Item = (&str, &str)>) {
        let mut rest: &[u8] = &self.bytes;
        let key = take_short(&mut rest).unwrap_or("");
        let pairs = std::iter::from_fn(move || {
            let name = take_short(&mut rest)?;
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let value = std::str::from_utf8(tail.get(..len)?).ok()?;
            rest = tail.get(len..)?;
            Some((name, value))
        });
        (key, pairs)
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.fields().1.find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn unpack(&self) -> Session {
        let (key, pairs) = self.fields();
        Session {
            key: SessionKey(key.to_owned()),
            attrs: pairs.map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
            created_ms: self.created_ms,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

/// Names and keys are short (attribute names are at most 64 bytes).
fn push_short(b: &mut Vec<u8>, s: &str) {
    let len = s.len().min(255);
    b.push(len as u8);
    b.extend_from_slice(&s.as_bytes()[..len]);
}

fn take_short<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let (&len, tail) = rest.split_first()?;
    let s = std::str::from_utf8(tail.get(..usize::from(len))?).ok()?;
    *rest = tail.get(usize::from(len)..)?;
    Some(s)
}

#[derive(Debug, Clone)]
enum Entry {
    Live(Packed),
    /// A regenerated session's old id, still answering until `until`.
    Moved {
        to: StoreId,
        until: Instant,
    },
}

/// Sessions kept in this process.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<StoreId, Entry>,
    limits: Limits,
    absolute: Duration,
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
            // Sliding idle expiry for the whole cache, rather than a per-entry policy: a
            // per-entry timer costs a node per session (about 8% of the memory of a session
            // of five small attributes). The absolute timeout is checked when a session is
            // read, and old sessions that nobody reads leave by the idle timeout.
            .time_to_idle(options.idle_timeout)
            .build();
        MemoryStore {
            cache,
            limits: options.limits,
            absolute: options.absolute_timeout,
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
        Ok(Some(session.unpack()))
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
                        let mut s = s.unpack();
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
            Entry::Live(s) => Ok(Some(Applied {
                session: s.unpack(),
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

    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        // A scan: this is the admin API's "log a user out everywhere", not a request path.
        let doomed: Vec<StoreId> = self
            .cache
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(s) if s.attr(name) == Some(value) => Some(*id),
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
            Entry::Live(s) if s.fields().0 == key.0 => Some((*id, s.unpack())),
            _ => None,
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
        let mut s = Session::new(SessionKey("k3y_-AZ".into()), 7);
        s.last_seen_ms = 9;
        s.attrs.insert("user".into(), "alice".into());
        s.attrs.insert("empty".into(), String::new());
        s.attrs.insert("utf8".into(), "grüße ✓".into());
        s.attrs.insert("long".into(), "x".repeat(70_000));
        let p = Packed::pack(&s);
        assert_eq!(p.unpack(), s);
        assert_eq!(p.attr("utf8"), Some("grüße ✓"));
        assert_eq!(p.attr("missing"), None);
        assert_eq!(
            Packed::pack(&Session::new(SessionKey("k".into()), 0))
                .unpack()
                .attrs
                .len(),
            0
        );
    }
}
