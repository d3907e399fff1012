//! The embedded store: sessions in this process, in a `moka` cache.
//!
//! Each entry expires after the idle timeout since its last use; one past the absolute
//! timeout since its creation is dropped when next read; past `max_sessions` or `max_bytes`
//! the least recently used entries are evicted (never a new one). Updates of one session run
//! under moka's per-key compute, so concurrent changes to different attributes both survive.
//!
//! moka's `sync` flavour, not `future`: nothing here waits on I/O, and each compute is a
//! repack of one small session, so a worker that meets another's per-key lock waits for
//! microseconds. The `future` flavour's asynchronous bookkeeping cost about 340 more
//! instructions per read (callgrind, 200,000 reads of a 1,000-entry cache), on every request
//! that carries a session. The price: a write that finds moka's write log full (384 writes
//! waiting while another worker runs its housekeeping) sleeps its worker 50 µs at a time
//! instead of yielding it. Writes come one per request at most, so the log fills only in a
//! burst far beyond what a worker's requests make while one housekeeping pass runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use rustc_hash::FxBuildHasher;

use super::StoreId;
use super::store::{
    AdminStore, Applied, Change, HandoffStore, Limits, Session, SessionKey, SessionStore,
    StoreError, TOUCH_EVERY_MS, unix_ms,
};
use super::subjects::SubjectIndex;
use crate::metrics::Tally;

/// Settings of the memory store.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Most sessions kept; beyond this, entries are evicted.
    pub max_sessions: u64,
    /// Most bytes of sessions kept (their data, and a fixed cost per entry); beyond this,
    /// entries are evicted, so that large sessions cannot take the memory of many small ones.
    pub max_bytes: u64,
    /// A session unused for this long is dropped.
    pub idle_timeout: Duration,
    /// A session older than this is dropped, used or not.
    pub absolute_timeout: Duration,
    /// Size limits on session data.
    pub limits: Limits,
    /// The attribute that names a session's subject (see `subjects`): a session that leaves
    /// the store takes its index entry along.
    pub subject: String,
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
    fn session(&self) -> Session {
        // Packed by `pack` from a session: its layout holds.
        Session::from_own_packing(
            Bytes::from_owner(self.bytes.clone()),
            self.created_ms,
            self.last_seen_ms,
        )
    }
}

/// What an id holds. A live session is most of what the store keeps, so it is the small
/// case: the rarer grace entries are boxed, which keeps an `Entry` at 32 bytes (64 with
/// them inline; measured with `examples/session_memory`: 32 bytes less per session).
#[derive(Debug, Clone)]
enum Entry {
    Live(Packed),
    Grace(Box<Grace>),
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() == 32);

/// An id that is no session of its own, for a while.
#[derive(Debug, Clone)]
enum Grace {
    /// A sibling host's alias of a session, by the session's own id (until the absolute
    /// timeout; it reaches nothing once that id holds no session).
    Alias { to: StoreId, until: Instant },
    /// A regenerated session's old id, during the grace: the session as it was, read-only,
    /// while the one it became (`successor`) lives.
    Retired {
        snapshot: Packed,
        successor: StoreId,
        until: Instant,
    },
}

impl Entry {
    fn alias(to: StoreId, until: Instant) -> Entry {
        Entry::Grace(Box::new(Grace::Alias { to, until }))
    }

    fn retired(snapshot: Packed, successor: StoreId, until: Instant) -> Entry {
        Entry::Grace(Box::new(Grace::Retired {
            snapshot,
            successor,
            until,
        }))
    }

    /// The session this entry holds a copy of (live, or a retired snapshot).
    fn packed(&self) -> Option<&Packed> {
        match self {
            Entry::Live(p) => Some(p),
            Entry::Grace(g) => match &**g {
                Grace::Retired { snapshot, .. } => Some(snapshot),
                Grace::Alias { .. } => None,
            },
        }
    }
}

/// How far a retired id follows its successors (a session regenerated again within the
/// grace) before it counts as gone.
const MAX_RETIRED_HOPS: usize = 4;

/// Most one-time codes held, and longest any lives (each also has its own ttl, 10 s for a
/// handoff): a code past its time is dead weight, and must leave room for new ones.
const CODES_MAX: u64 = 100_000;
const CODES_LIVE: Duration = Duration::from_secs(15);

/// What an entry costs beyond its session's packed bytes (moka's node, the id, the `Arc`):
/// counted against `max_bytes`, so that a million aliases are not free.
const ENTRY_OVERHEAD: u64 = 128;

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
    idle: Duration,
    /// Sessions evicted for room (for metrics).
    evicted: Arc<Tally>,
    /// Which sessions each subject holds (see `subjects`).
    subjects: Arc<Mutex<Subjects>>,
    /// Told of each session that expires here (see [`MemoryStore::on_expiry`]).
    expiry: Arc<std::sync::OnceLock<ExpiryHook>>,
    /// The attribute that names a session's subject (a reload may change it).
    subject: Arc<arc_swap::ArcSwap<String>>,
}

/// What the store calls with a session that expired (idle) in the cache, and the attribute
/// that names its subject.
pub type ExpiryHook = Box<dyn Fn(&Session, &str) + Send + Sync>;

/// The subject index: each subject's session ids, by a keyed hash of the subject. A
/// collision only puts two subjects' sessions in one list, which every listing sorts out (it
/// reads each session's subject again), and nobody can aim for one without the random key.
/// A session that leaves the cache (expired, evicted, ended) takes its id along: the removal
/// listener reads the subject from the entry that left. About 50 bytes per subject with one
/// session (no allocation of its own), rather than maps both ways of owned strings.
struct Subjects {
    /// SipHash under a random key: subjects are chosen by backends, and through them by users.
    hasher: std::hash::RandomState,
    /// By the subject's hash (already random: Fx does not hash it again).
    lists: HashMap<u64, Ids, FxBuildHasher>,
    /// Ids indexed (for tests and metrics).
    count: usize,
}

/// One subject's sessions: most subjects have one; a set for the others (a subject many
/// sessions share, a "guest" or a flood of logins as one user, must not make each login
/// a walk over all of them).
enum Ids {
    One(StoreId),
    /// Boxed: an entry stays 24 bytes, since a million subjects with one session each are a
    /// million entries, and the rare set pays one more allocation (the index measured 81.7
    /// MiB per million such subjects unboxed, 65.6 boxed: `examples/session_memory -- 1000000
    /// indexed`).
    #[allow(clippy::box_collection)]
    Many(Box<std::collections::HashSet<StoreId, FxBuildHasher>>),
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            hasher: std::hash::RandomState::new(),
            lists: HashMap::default(),
            count: 0,
        }
    }
}

impl Subjects {
    fn hash(&self, subject: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, subject)
    }

    fn add(&mut self, subject: &str, id: StoreId) {
        let h = self.hash(subject);
        let added = match self.lists.get_mut(&h) {
            None => {
                self.lists.insert(h, Ids::One(id));
                true
            }
            Some(Ids::One(one)) if *one == id => false,
            Some(ids @ Ids::One(_)) => {
                if let Ids::One(one) = *ids {
                    *ids = Ids::Many(Box::new([one, id].into_iter().collect()));
                }
                true
            }
            Some(Ids::Many(set)) => set.insert(id),
        };
        self.count += usize::from(added);
    }

    fn remove(&mut self, subject: &str, id: &StoreId) {
        let h = self.hash(subject);
        let (removed, empty) = match self.lists.get_mut(&h) {
            Some(Ids::One(one)) if one == id => (true, true),
            Some(Ids::Many(set)) => {
                let removed = set.remove(id);
                if set.len() == 1
                    && let Some(last) = set.iter().next().copied()
                {
                    self.lists.insert(h, Ids::One(last));
                    (removed, false)
                } else {
                    (removed, set.is_empty())
                }
            }
            _ => (false, false),
        };
        if empty {
            self.lists.remove(&h);
        }
        self.count -= usize::from(removed);
    }

    fn ids(&self, subject: &str) -> Vec<StoreId> {
        match self.lists.get(&self.hash(subject)) {
            None => Vec::new(),
            Some(Ids::One(one)) => vec![*one],
            Some(Ids::Many(set)) => set
                .iter()
                .take(super::subjects::MAX_LISTED)
                .copied()
                .collect(),
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// An entry's weight in the cache, whose capacity is `max_sessions`: one for an entry of up
/// to `max_bytes / max_sessions` bytes, more for a larger one, so that the cache holds at
/// most `max_sessions` entries and at most about `max_bytes` bytes.
fn weight(entry: &Entry, max_sessions: u64, max_bytes: u64) -> u32 {
    let bytes = ENTRY_OVERHEAD + entry.packed().map_or(0, |p| p.bytes.len() as u64);
    let units =
        (u128::from(bytes) * u128::from(max_sessions)).div_ceil(u128::from(max_bytes.max(1)));
    u32::try_from(units.max(1)).unwrap_or(u32::MAX)
}

impl MemoryStore {
    /// An empty store.
    pub fn new(options: MemoryOptions) -> MemoryStore {
        let evicted = Arc::new(Tally::default());
        let counted = evicted.clone();
        let subjects: Arc<Mutex<Subjects>> = Arc::default();
        let indexed = subjects.clone();
        let subject = Arc::new(arc_swap::ArcSwap::from_pointee(options.subject.clone()));
        let subject_attr = subject.clone();
        let expiry: Arc<std::sync::OnceLock<ExpiryHook>> = Arc::default();
        let expired = expiry.clone();
        let (max_sessions, max_bytes) = (options.max_sessions, options.max_bytes);
        let cache = Cache::builder()
            .max_capacity(max_sessions)
            .weigher(move |_, e: &Entry| weight(e, max_sessions, max_bytes))
            // Sliding idle expiry for the whole cache, rather than a per-entry policy: a
            // per-entry timer costs a node per session (about 8% of the memory of a session
            // of five small attributes). The absolute timeout is checked when a session is
            // read, and old sessions that nobody reads leave by the idle timeout.
            .time_to_idle(options.idle_timeout)
            // Least recently used goes first, and a newcomer is always admitted. moka's
            // default (TinyLFU) admits a new entry only if it is asked for more often than
            // the one it would evict: a flood of sessions nobody uses again (bots on a login
            // page) then keeps every real user's new session out of a full store.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |id, entry, cause| {
                if cause == RemovalCause::Size {
                    counted.inc();
                }
                if cause == RemovalCause::Expired
                    && let (Entry::Live(p), Some(hook)) = (&entry, expired.get())
                {
                    hook(&p.session(), &subject_attr.load());
                }
                // Replaced: an update, or a regenerate retiring the id (whose index entry
                // the regenerate moves itself).
                if cause != RemovalCause::Replaced
                    && let Entry::Live(p) = &entry
                    && let Some(who) = p.session().attr(&subject_attr.load())
                {
                    indexed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(who, &id);
                }
            })
            .build_with_hasher(FxBuildHasher);
        MemoryStore {
            evicted,
            subjects,
            expiry,
            subject,
            cache,
            // Least recently used goes first: a full cache always takes a new code (moka's
            // default admission would refuse newcomers to codes nobody redeems).
            codes: Cache::builder()
                .max_capacity(CODES_MAX)
                .time_to_live(CODES_LIVE)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build_with_hasher(FxBuildHasher),
            limits: options.limits,
            absolute: options.absolute_timeout,
            idle: options.idle_timeout,
        }
    }

    /// Sessions and grace entries held (approximate until pending work runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Sessions evicted so far to stay within `max_sessions` and `max_bytes`.
    pub fn evictions(&self) -> u64 {
        self.evicted.get()
    }

    /// The attribute that names a session's subject from now on (a reload that changes
    /// `sessions.subject` keeps the store).
    pub fn set_subject(&self, attribute: &str) {
        if **self.subject.load() == attribute {
            return;
        }
        self.subject.store(Arc::new(attribute.to_owned()));
        // The index was of the old attribute's values: made again from the sessions held (a
        // reload's pass over the cache, not a request's).
        let mut fresh = Subjects::default();
        for (id, entry) in &self.cache {
            if let Entry::Live(p) = entry
                && let Some(who) = p.session().attr(attribute).filter(|v| !v.is_empty())
            {
                fresh.add(who, *id);
            }
        }
        *self.subjects.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Calls `hook` with each session that expires here from now on (set once: the first
    /// caller's stays). Expiry is found by moka's housekeeping, which runs as the cache is
    /// used, so an expiry is told a while after its time when the store is quiet.
    pub fn on_expiry(&self, hook: ExpiryHook) {
        let _ = self.expiry.set(hook);
    }

    /// Sessions in the subject index (approximate until pending work runs).
    pub fn indexed(&self) -> usize {
        self.subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count
    }

    /// Runs moka's pending evictions now (tests and shutdown).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The entry under `id` if it still counts: an alias or retired id past its time, or a
    /// session past its absolute timeout, is dropped instead.
    fn current(&self, id: &StoreId) -> Option<Entry> {
        self.current_at(id, unix_ms())
    }

    /// [`MemoryStore::current`] at `now_ms` (a caller that has the time saves reading the
    /// clock again: this is every session read).
    fn current_at(&self, id: &StoreId, now_ms: u64) -> Option<Entry> {
        let entry = self.cache.get(id)?;
        let since = |t: u64| Duration::from_millis(now_ms.saturating_sub(t));
        let stale = match &entry {
            Entry::Grace(g) => match &**g {
                Grace::Alias { until, .. } | Grace::Retired { until, .. } => {
                    Instant::now() >= *until
                }
            },
            // Idle too, by the session's own last use: a read that notes no use (a tunnel's
            // look, a listing) still restarts moka's idle clock (moka has no read that does
            // not), and must not keep a session alive past its time. The last use is written
            // back at most every `TOUCH_EVERY_MS`, so it may be that much older than the real
            // one: a session is stale only past that too (an idle session that something
            // looked at lives at most that much longer).
            Entry::Live(s) => {
                since(s.created_ms) > self.absolute
                    || since(s.last_seen_ms) > self.idle + Duration::from_millis(TOUCH_EVERY_MS)
            }
        };
        if stale {
            self.cache.invalidate(id);
            if let (Entry::Live(p), Some(hook)) = (&entry, self.expiry.get()) {
                hook(&p.session(), &self.subject.load());
            }
            return None;
        }
        Some(entry)
    }

    /// The id of the live session `id` reaches (itself, or the one its alias names), for a
    /// change; `None` for nothing, or a retired session (read-only).
    fn writable_id(&self, id: &StoreId) -> Option<StoreId> {
        match self.current(id)? {
            Entry::Live(_) => Some(*id),
            Entry::Grace(g) => match *g {
                Grace::Alias { to, .. } => match self.current(&to)? {
                    Entry::Live(_) => Some(to),
                    Entry::Grace(_) => None,
                },
                Grace::Retired { .. } => None,
            },
        }
    }

    /// Whether `successor` (the session a retired id became) still lives, following further
    /// regenerates.
    fn lives(&self, mut successor: StoreId) -> bool {
        for _ in 0..MAX_RETIRED_HOPS {
            match self.current(&successor) {
                Some(Entry::Live(_)) => return true,
                Some(Entry::Grace(g)) => match *g {
                    Grace::Retired {
                        successor: next, ..
                    } => successor = next,
                    Grace::Alias { .. } => return false,
                },
                None => return false,
            }
        }
        false
    }

    /// A retired id's snapshot, read-only, while its successor lives.
    fn retired_view(&self, snapshot: &Packed, successor: StoreId) -> Option<Session> {
        if !self.lives(successor) {
            return None;
        }
        Some(snapshot.session().retired())
    }
}

impl MemoryStore {
    /// What `id` reaches at `now_ms`: a live session and its own id, or (`Err`) what a read
    /// gets instead (a retired view, or nothing).
    fn reach(&self, id: &StoreId, now_ms: u64) -> Result<(StoreId, Packed), Option<Session>> {
        match self.current_at(id, now_ms) {
            None => Err(None),
            Some(Entry::Live(s)) => Ok((*id, s)),
            Some(Entry::Grace(g)) => match *g {
                Grace::Retired {
                    snapshot,
                    successor,
                    ..
                } => Err(self.retired_view(&snapshot, successor)),
                Grace::Alias { to, .. } => match self.current_at(&to, now_ms) {
                    Some(Entry::Live(s)) => Ok((to, s)),
                    Some(Entry::Grace(g)) => match *g {
                        Grace::Retired {
                            snapshot,
                            successor,
                            ..
                        } => Err(self.retired_view(&snapshot, successor)),
                        Grace::Alias { .. } => Err(None),
                    },
                    None => Err(None),
                },
            },
        }
    }

    /// The session `id` reaches as it is, its use not noted (see `RedisStore::peek`).
    pub fn peek(&self, id: &StoreId) -> Option<Session> {
        match self.reach(id, unix_ms()) {
            Ok((_, s)) => Some(s.session()),
            Err(view) => view,
        }
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        let (own, session) = match self.reach(id, now_ms) {
            Ok(found) => found,
            Err(view) => return Ok(view),
        };
        if now_ms.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS {
            let touched = self.update(&own, None, &[], now_ms).await?;
            return Ok(touched.map(|a| a.session));
        }
        Ok(Some(session.session()))
    }

    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<Applied>, StoreError> {
        // A live session (through an alias too); or, for a creation, the id itself, which
        // must hold nothing (a retired id never becomes a session again).
        let target = match self.writable_id(id) {
            Some(own) => own,
            None if create.is_some() && self.cache.get(id).is_none() => *id,
            None => return Ok(None),
        };
        let limits = self.limits;
        let mut rejected = Vec::new();
        let result = self.cache.entry(target).and_compute_with(|current| {
            match current.map(moka::Entry::into_value) {
                Some(Entry::Live(s)) => {
                    let mut s = s.session();
                    rejected = s.apply(changes, &limits);
                    s.last_seen_ms = s.last_seen_ms.max(now_ms);
                    Op::Put(Entry::Live(Packed::pack(&s)))
                }
                // Retired or moved since `writable_id` looked: too late for this request.
                Some(Entry::Grace(_)) => Op::Nop,
                None => match create {
                    Some(key) => {
                        let mut s = Session::new(key, now_ms);
                        rejected = s.apply(changes, &limits);
                        Op::Put(Entry::Live(Packed::pack(&s)))
                    }
                    None => Op::Nop,
                },
            }
        });
        let (entry, created) = match result {
            CompResult::Inserted(e) => (e, true),
            CompResult::ReplacedWith(e) => (e, false),
            _ => return Ok(None),
        };
        match entry.into_value() {
            Entry::Live(s) => Ok(Some(Applied {
                session: s.session(),
                rejected,
                created,
                id: target,
            })),
            Entry::Grace(_) => Ok(None),
        }
    }

    async fn delete(&self, id: &StoreId) -> Result<(), StoreError> {
        // Through an alias, the session it names goes (unless that one is a retired view,
        // which is all the alias can reach then).
        if let Some(Entry::Grace(g)) = self.current(id)
            && let Grace::Alias { to, .. } = *g
            && let Some(Entry::Live(_)) = self.current(&to)
        {
            self.cache.invalidate(&to);
        }
        self.cache.invalidate(id);
        Ok(())
    }

    async fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        let Some(own) = self.writable_id(from) else {
            return Ok(false);
        };
        let until = Instant::now() + grace;
        // The copy goes in first, then the old id is retired only if nothing changed it
        // meanwhile (else copy again): a reader of either id never finds neither.
        for _attempt in 0..5 {
            let Some(Entry::Live(snapshot)) = self.current(&own) else {
                self.cache.invalidate(to);
                return Ok(false);
            };
            self.cache.insert(*to, Entry::Live(snapshot.clone()));
            let result = self.cache.entry(own).and_compute_with(|current| {
                match current.map(moka::Entry::into_value) {
                    Some(Entry::Live(now)) if Arc::ptr_eq(&now.bytes, &snapshot.bytes) => {
                        if grace.is_zero() {
                            Op::Remove
                        } else {
                            Op::Put(Entry::retired(now, *to, until))
                        }
                    }
                    _ => Op::Nop,
                }
            });
            if matches!(result, CompResult::ReplacedWith(_) | CompResult::Removed(_)) {
                return Ok(true);
            }
        }
        self.cache.invalidate(to);
        Err(StoreError::Unavailable(
            "the session kept changing while it was renamed".to_owned(),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl HandoffStore for MemoryStore {
    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Some(own) = self.writable_id(to) else {
            return Ok(false);
        };
        let until = Instant::now() + ttl;
        self.cache.insert(*alias, Entry::alias(own, until));
        Ok(true)
    }
    async fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Some(own) = self.writable_id(to) else {
            return Ok(false);
        };
        self.codes.insert(*code, (own, Instant::now() + ttl));
        Ok(true)
    }
    async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
        // `remove` is what makes it single-use: two takers cannot both get the entry.
        Ok(self
            .codes
            .remove(code)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(to, _)| to))
    }
}

impl AdminStore for MemoryStore {
    async fn delete_where(
        &self,
        name: &str,
        value: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        // A scan: this is the admin API's "log a user out everywhere", not a request path.
        // Retired views of such a session go too; only live sessions are counted.
        let doomed: Vec<(StoreId, Session, bool)> = self
            .cache
            .iter()
            .filter_map(|(id, e)| {
                let live = matches!(e, Entry::Live(_));
                let s = e.packed()?.session();
                (s.attr(name) == Some(value)).then_some((*id, s, live))
            })
            .collect();
        let mut ended = Vec::new();
        for (id, s, live) in doomed {
            self.cache.invalidate(&id);
            if live {
                ended.push((id, s));
            }
        }
        Ok(ended)
    }
    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        Ok(self.cache.iter().find_map(|(id, e)| match e {
            Entry::Live(s) => {
                let s = s.session();
                (s.key() == key.as_str()).then(|| (*id, s))
            }
            Entry::Grace(_) => None,
        }))
    }

    async fn export(&self) -> Result<Vec<(StoreId, Session)>, StoreError> {
        let now = unix_ms();
        Ok(self
            .cache
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Live(s)
                    if Duration::from_millis(now.saturating_sub(s.created_ms)) <= self.absolute =>
                {
                    Some((*id, s.session()))
                }
                _ => None,
            })
            .collect())
    }

    async fn is_own(&self, id: &StoreId) -> Result<bool, StoreError> {
        Ok(matches!(self.current(id), Some(Entry::Live(_))))
    }

    async fn import(&self, id: &StoreId, session: &Session) -> Result<bool, StoreError> {
        let entry = self
            .cache
            .entry(*id)
            .or_insert_with(|| Entry::Live(Packed::pack(session)));
        Ok(entry.is_fresh())
    }
}

impl SubjectIndex for MemoryStore {
    async fn index(&self, subject: &str, id: &StoreId, _until_ms: u64) -> Result<(), StoreError> {
        // The cache expires entries itself, and its listener takes their ids out.
        self.subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(subject, *id);
        // Ended while it was being indexed: the listener ran before the id went in. (Not a
        // `get`: that would restart the session's idle clock.)
        if !self.cache.contains_key(id) {
            self.subjects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(subject, id);
        }
        Ok(())
    }

    async fn count(&self, subject: &str) -> Result<usize, StoreError> {
        let map = self.subjects.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(match map.lists.get(&map.hash(subject)) {
            None => 0,
            Some(Ids::One(_)) => 1,
            Some(Ids::Many(set)) => set.len(),
        })
    }

    async fn unindex(&self, subject: &str, id: &StoreId) -> Result<(), StoreError> {
        self.subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(subject, id);
        Ok(())
    }

    async fn of_subject(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        let ids = self
            .subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids(subject);
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(Entry::Live(p)) = self.current(&id) {
                let s = p.session();
                if s.attr(name) == Some(subject) {
                    found.push((id, s));
                    continue;
                }
            }
            // Gone, retired (its successor is indexed under its own id), or another
            // subject's now (or, once in 2^64, a colliding subject's, listed again at its
            // next login): out of this list.
            self.subjects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(subject, &id);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> StoreId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_le_bytes());
        StoreId::from_bytes(b)
    }

    /// A store of at most `max_sessions` (and a GiB), with hour-long timeouts.
    fn store_of(max_sessions: u64) -> MemoryStore {
        MemoryStore::new(MemoryOptions {
            max_sessions,
            max_bytes: 1 << 30,
            idle_timeout: Duration::from_secs(3600),
            absolute_timeout: Duration::from_secs(3600),
            limits: Limits::default(),
            subject: "user".to_owned(),
        })
    }

    /// A session created now under `id`, as a login makes it.
    async fn create(store: &MemoryStore, id: &StoreId, now: u64) {
        let set = [Change::Set("user".into(), "u".into())];
        let made = store
            .update(id, Some(SessionKey::from("k")), &set, now)
            .await
            .unwrap();
        assert!(made.is_some_and(|a| a.created));
    }

    /// 20 times the store's capacity in sessions nobody uses again (bots on a login page):
    /// every session a real user creates meanwhile is admitted and still there on their next
    /// request, and sessions in use all along are the last to go.
    #[tokio::test]
    async fn a_flood_of_new_sessions_evicts_the_least_recently_used_never_a_newcomer() {
        const CAP: u64 = 10_000;
        let store = store_of(CAP);
        let now = unix_ms();
        let regulars: Vec<StoreId> = (0..50).map(|i| id(1 << 40 | i)).collect();
        for r in &regulars {
            create(&store, r, now).await;
        }
        let (mut fresh, mut held) = (0, 0);
        let mut waiting = None;
        for n in 0..20 * CAP {
            create(&store, &id(n), now).await;
            if n % 1000 == 999 {
                // A real user comes back after a few hundred more bot logins...
                if let Some(user) = waiting.take() {
                    store.run_pending_tasks();
                    if store.load(&user, now).await.unwrap().is_some() {
                        held += 1;
                    }
                }
                // ...having logged in now.
                let user = id(1 << 41 | n);
                create(&store, &user, now).await;
                waiting = Some(user);
                fresh += 1;
                // The regulars keep using the site.
                for r in &regulars {
                    let _ = store.load(r, now).await.unwrap();
                }
            }
            if n % 1000 == 299
                && let Some(user) = waiting.take()
            {
                store.run_pending_tasks();
                if store.load(&user, now).await.unwrap().is_some() {
                    held += 1;
                }
            }
        }
        if let Some(user) = waiting.take()
            && store.load(&user, now).await.unwrap().is_some()
        {
            held += 1;
        }
        // After the flood: 50 logins, all kept.
        let after: Vec<StoreId> = (0..50).map(|i| id(1 << 42 | i)).collect();
        for user in &after {
            create(&store, user, now).await;
        }
        store.run_pending_tasks();
        for user in &after {
            fresh += 1;
            if store.load(user, now).await.unwrap().is_some() {
                held += 1;
            }
        }
        store.run_pending_tasks();
        assert_eq!(
            held, fresh,
            "every new session is admitted and kept for its next use"
        );
        let mut kept = 0;
        for r in &regulars {
            if store.load(r, now).await.unwrap().is_some() {
                kept += 1;
            }
        }
        assert_eq!(
            kept,
            regulars.len(),
            "sessions in use are the last to be evicted"
        );
        assert!(store.entry_count() <= CAP, "the store keeps its bound");
        assert!(store.evictions() >= 19 * CAP, "the flood's sessions went");
    }

    #[test]
    fn the_subject_index_keeps_each_id_once_and_lets_go_of_empty_subjects() {
        let mut s = Subjects::default();
        s.add("alice", id(1));
        s.add("alice", id(1));
        s.add("alice", id(2));
        s.add("bob", id(3));
        assert_eq!(s.count, 3);
        let mut ids = s.ids("alice");
        ids.sort_by_key(|i| *i.as_bytes());
        assert_eq!(ids, [id(1), id(2)]);
        s.remove("alice", &id(1));
        assert_eq!(s.ids("alice"), [id(2)]);
        assert!(matches!(s.lists.get(&s.hash("alice")), Some(Ids::One(_))));
        s.remove("alice", &id(9));
        s.remove("bob", &id(2));
        assert_eq!(s.count, 2);
        s.remove("alice", &id(2));
        s.remove("bob", &id(3));
        assert_eq!((s.count, s.lists.len()), (0, 0));
        assert!(s.ids("alice").is_empty());
    }

    #[tokio::test]
    async fn a_session_that_leaves_the_store_takes_its_index_entry_along() {
        let store = store_of(100);
        let now = unix_ms();
        for n in 0..3 {
            create(&store, &id(n), now).await;
            store.index("u", &id(n), u64::MAX).await.unwrap();
        }
        assert_eq!(store.indexed(), 3);
        store.delete(&id(0)).await.unwrap();
        assert!(store.rename(&id(1), &id(7), Duration::ZERO).await.unwrap());
        store.run_pending_tasks();
        assert_eq!(
            store.indexed(),
            1,
            "a delete and a rename's removal take theirs"
        );
        let listed = store.of_subject("user", "u").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, id(2));
    }

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
        assert_eq!(p.session(), s.clone());
        let back = p.session();
        assert_eq!(back.attr("utf8"), Some("grüße ✓"));
        assert_eq!(back.attr("missing"), None);
        assert_eq!(back.key(), "k3y_-AZ");
        s = Session::new(SessionKey::from("k"), 0);
        assert_eq!(Packed::pack(&s).session().attr_count(), 0);
    }
}
