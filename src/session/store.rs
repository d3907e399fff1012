//! What every session store offers, and the session record they keep.
//!
//! A store files sessions under a [`StoreId`] (a hash of the token, never the token). Changes
//! to one session are applied atomically, so two concurrent requests that set different
//! attributes both survive. Expiry is judged by the gateway from the record's times
//! ([`Session::expired`]); stores also drop idle and old sessions on their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use super::StoreId;

/// A store failed (not "no such session"). Each kind says what the caller may expect of
/// trying again; the text says what happened, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store, or something it needs (its server, the OS random source, a key), cannot
    /// serve now: unreachable, refused, known to be down, or busy.
    #[error("session store: {0}")]
    Unavailable(String),
    /// The store did not answer within its operation timeout.
    #[error("session store: {0}")]
    TimedOut(String),
    /// The store answered with something it should never hold or say: a record or a reply
    /// that does not read.
    #[error("session store: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The OS random source failed.
    pub(crate) fn no_randomness() -> StoreError {
        StoreError::Unavailable("the OS random source failed".to_owned())
    }
}

/// A session's stable, non-secret identifier (sent to backends as `X-Session-Key`); it stays
/// the same when the token is regenerated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey(String);

impl SessionKey {
    /// A new random key (128 bits, base64url).
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn generate() -> Result<SessionKey, StoreError> {
        let mut b = [0u8; 16];
        rand::fill(&mut b).map_err(|_| StoreError::no_randomness())?;
        Ok(SessionKey(URL_SAFE_NO_PAD.encode(b)))
    }

    /// The key as written (`X-Session-Key`, the admin API's paths).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SessionKey {
    /// A key as a client of the admin API (or a store's record) writes it.
    fn from(key: &str) -> SessionKey {
        SessionKey(key.to_owned())
    }
}

/// Size limits on what backends may store in a session: the configuration's own type, so
/// its defaults live in one place.
pub use crate::config::SessionLimits as Limits;

/// One change a backend asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set attribute `.0` to `.1`.
    Set(String, String),
    /// Remove attribute `.0`.
    Unset(String),
}

/// A change refused because it would break a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The attribute.
    pub name: String,
    /// Which limit.
    pub reason: &'static str,
}

/// A session as stored: its key and attributes packed into one shared buffer, and its times.
///
/// Packed because sessions are read on every request and written rarely: a read hands out
/// the key and every value as header values that share this buffer (no copy, no allocation
/// per attribute), and a million sessions are a million buffers rather than a million small
/// maps of small strings. Changes unpack, apply and pack again.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// Key length (u8) and key, then per attribute, by name: name length (u8), name, value
    /// length (u32 little-endian), value. Built only by [`pack`]; checked by `from_packed`.
    packed: Bytes,
    /// When it was created (Unix ms): the absolute timeout counts from here.
    pub created_ms: u64,
    /// When it was last used (Unix ms, coalesced to [`TOUCH_EVERY_MS`]): the idle timeout
    /// counts from here.
    pub last_seen_ms: u64,
    /// Read through an id that a regenerate retired (see [`SessionStore::rename`]): the
    /// session as it was then, which nothing may change.
    read_only: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key())
            .field("attrs", &self.attrs().collect::<BTreeMap<_, _>>())
            .field("created_ms", &self.created_ms)
            .field("last_seen_ms", &self.last_seen_ms)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// A use of a session is written back at most this often: reads stay cheap, and the idle
/// timeout is judged at most this much early.
pub const TOUCH_EVERY_MS: u64 = 1000;

impl Session {
    /// An empty session created now.
    pub fn new(key: SessionKey, now_ms: u64) -> Session {
        Session {
            packed: pack(&key.0, std::iter::empty()),
            created_ms: now_ms,
            last_seen_ms: now_ms,
            read_only: false,
        }
    }

    /// A session from its parts (stores that keep attributes apart, e.g. in a hash).
    pub fn from_parts<'a>(
        key: &str,
        attrs: impl IntoIterator<Item = (&'a str, &'a str)>,
        created_ms: u64,
        last_seen_ms: u64,
    ) -> Session {
        let sorted: BTreeMap<&str, &str> = attrs.into_iter().collect();
        Session {
            packed: pack(key, sorted.into_iter()),
            created_ms,
            last_seen_ms,
            read_only: false,
        }
    }

    /// A session from bytes that [`Session::packed`] made in this process (the memory
    /// store's own copy), not checked again: every session read takes this path, and the
    /// check is a walk over every attribute. Bytes not so made read as a shorter session
    /// (each walk stops where the layout breaks), never as anything unsafe.
    pub(crate) fn from_own_packing(packed: Bytes, created_ms: u64, last_seen_ms: u64) -> Session {
        Session {
            packed,
            created_ms,
            last_seen_ms,
            read_only: false,
        }
    }

    /// A session from the bytes of [`Session::packed`]; `None` if they are not laid out so.
    /// Only the layout is checked here: text is checked where it is read as text.
    pub fn from_packed(packed: Bytes, created_ms: u64, last_seen_ms: u64) -> Option<Session> {
        let mut rest: &[u8] = &packed;
        take_short(&mut rest)?;
        while !rest.is_empty() {
            take_pair(&mut rest)?;
        }
        Some(Session {
            packed,
            created_ms,
            last_seen_ms,
            read_only: false,
        })
    }

    /// The session as read through a retired id: the same data, which nothing may change.
    #[must_use]
    pub fn retired(mut self) -> Session {
        self.read_only = true;
        self
    }

    /// Whether it was read through a retired id (see [`Session::retired`]): the request may
    /// read it, and write, regenerate, alias or hand off nothing.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The packed key and attributes, for stores that keep them as one value.
    pub fn packed(&self) -> &Bytes {
        &self.packed
    }

    /// The stable key.
    pub fn key(&self) -> &str {
        let mut rest: &[u8] = &self.packed;
        take_short(&mut rest)
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or("")
    }

    /// The stable key's bytes, unchecked (for hashing: `balance: session_affinity`).
    pub fn key_raw(&self) -> &[u8] {
        let mut rest: &[u8] = &self.packed;
        take_short(&mut rest).unwrap_or_default()
    }

    /// The stable key, owned.
    pub fn session_key(&self) -> SessionKey {
        SessionKey(self.key().to_owned())
    }

    /// The key's bytes, sharing this session's buffer (for a header value).
    pub fn key_bytes(&self) -> Bytes {
        let mut rest: &[u8] = &self.packed;
        self.share(take_short(&mut rest).unwrap_or_default())
    }

    /// Attributes `(name, value)` as bytes, by name, without a text check (the request path:
    /// names and values become header names and values, which check them anyway).
    fn raw_attrs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut rest: &[u8] = &self.packed;
        let _key = take_short(&mut rest);
        std::iter::from_fn(move || take_pair(&mut rest))
    }

    /// Attributes `(name, value)` as bytes, by name, without a text check or a copy.
    pub fn attr_bytes_raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.raw_attrs()
    }

    /// Attributes `(name, value)`, by name.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.raw_attrs()
            .map_while(|(n, v)| Some((std::str::from_utf8(n).ok()?, std::str::from_utf8(v).ok()?)))
    }

    /// Attributes `(name, value)`, by name, each value sharing this session's buffer.
    pub fn attr_bytes(&self) -> impl Iterator<Item = (&[u8], Bytes)> {
        self.raw_attrs().map(|(n, v)| (n, self.share(v)))
    }

    /// One attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// How many attributes.
    pub fn attr_count(&self) -> usize {
        self.raw_attrs().count()
    }

    /// Whether the session is past its idle or its absolute timeout at `now_ms`.
    pub fn expired(&self, now_ms: u64, idle: Duration, absolute: Duration) -> bool {
        let since = |t: u64| Duration::from_millis(now_ms.saturating_sub(t));
        since(self.last_seen_ms) > idle || since(self.created_ms) > absolute
    }

    /// Bytes of names and values.
    pub fn size(&self) -> usize {
        self.attrs().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Applies changes in order, skipping those that would break `limits`.
    pub fn apply(&mut self, changes: &[Change], limits: &Limits) -> Vec<Rejected> {
        let mut attrs: BTreeMap<&str, &str> = self.attrs().collect();
        let mut rejected = Vec::new();
        let mut size = self.size();
        for change in changes {
            match change {
                Change::Unset(name) => {
                    if let Some(old) = attrs.remove(name.as_str()) {
                        size -= name.len() + old.len();
                    }
                }
                Change::Set(name, value) => {
                    let old = attrs.get(name.as_str()).map(|v| name.len() + v.len());
                    let new_size = size - old.unwrap_or(0) + name.len() + value.len();
                    let reason = if value.len() > limits.max_value_bytes {
                        Some("max_value_bytes")
                    } else if old.is_none() && attrs.len() >= limits.max_attributes {
                        Some("max_attributes")
                    } else if new_size > limits.max_session_bytes {
                        Some("max_session_bytes")
                    } else {
                        None
                    };
                    match reason {
                        Some(reason) => rejected.push(Rejected {
                            name: name.clone(),
                            reason,
                        }),
                        None => {
                            attrs.insert(name, value);
                            size = new_size;
                        }
                    }
                }
            }
        }
        let packed = pack(self.key(), attrs.into_iter());
        self.packed = packed;
        rejected
    }

    /// `part` (a slice of this session's buffer) as bytes that share the buffer.
    fn share(&self, part: &[u8]) -> Bytes {
        let base = self.packed.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        if at >= base && at + part.len() <= base + self.packed.len() {
            self.packed.slice(at - base..at - base + part.len())
        } else {
            Bytes::copy_from_slice(part)
        }
    }
}

/// Packs a key and attributes (in the order given: callers pass them sorted by name). Names
/// and keys longer than 255 bytes and values longer than 4 GiB are cut (never accepted so).
fn pack<'a>(key: &str, attrs: impl Iterator<Item = (&'a str, &'a str)>) -> Bytes {
    let mut b = Vec::with_capacity(64);
    push_short(&mut b, key);
    for (name, value) in attrs {
        push_short(&mut b, name);
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&value.as_bytes()[..len as usize]);
    }
    Bytes::from(b)
}

fn push_short(b: &mut Vec<u8>, s: &str) {
    let mut len = s.len().min(255);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    b.push(len as u8);
    b.extend_from_slice(&s.as_bytes()[..len]);
}

fn take_short<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&len, tail) = rest.split_first()?;
    let s = tail.get(..usize::from(len))?;
    *rest = tail.get(usize::from(len)..)?;
    Some(s)
}

fn take_pair<'a>(rest: &mut &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    let name = take_short(rest)?;
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let value = tail.get(..len)?;
    *rest = tail.get(len..)?;
    Some((name, value))
}

/// The outcome of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The session after the changes.
    pub session: Session,
    /// Changes refused by the limits.
    pub rejected: Vec<Rejected>,
    /// The session was created by this update.
    pub created: bool,
    /// The session's own id (the one updated: not the alias it was reached through).
    pub id: StoreId,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A session store: what the request path needs of every store. Every store must pass the
/// conformance suite (`tests/it/store.rs`). What only some stores can do is in the narrower
/// traits [`HandoffStore`] (sibling hosts) and [`AdminStore`] (the admin API).
pub trait SessionStore: Send + Sync {
    /// The session under `id`, if any; notes the use (see [`TOUCH_EVERY_MS`]). Through an id
    /// that [`SessionStore::rename`] retired, during its grace: the session as it was before
    /// the rename, [read-only](Session::is_read_only), and only while the session it was
    /// renamed to lives. Expired sessions may be returned: the caller judges expiry.
    fn load(
        &self,
        id: &StoreId,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// Applies `changes` to the session under `id` (or the one its alias names) atomically
    /// with other updates of it, and notes the use. Without a session there, one is created
    /// with key `create` if given; otherwise nothing happens (`None`). A retired id changes
    /// nothing (`None`).
    fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<Applied>, StoreError>> + Send;

    /// Deletes the session `id` reaches: its own, or the one its alias names (a logout through
    /// any id ends the session for every id). Through a retired id, only that id's read-only
    /// view goes. No error if there is nothing.
    fn delete(&self, id: &StoreId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves the session `from` reaches (its own, or the one its alias names) to `to` (a
    /// regenerated token), keeping its data and key. Its old id is retired: for `grace` it
    /// reads as the session was before (requests already in flight), read-only, then it is
    /// gone; every other id of the session (aliases) reads through it, and ends with it.
    /// `false` if `from` reaches no session, or only a retired one.
    fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A store that can hand a session to a sibling host: a second id for one session (an alias)
/// and one-time codes that lead to it (see `handoff`).
pub trait HandoffStore: SessionStore {
    /// Files the session `to` reaches under `alias` too, for at most `ttl`: a second token for
    /// one session (a sibling host's, after a handoff). Loads, updates, renames and deletes
    /// through `alias` reach the same session, which it names by its own id: when that id is
    /// retired or deleted, the alias is too. `false` if `to` reaches no live session.
    fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Files a one-time code for the session `to` reaches (a handoff to a sibling host), for
    /// at most `ttl`. A code is not an id: loads through it find nothing. `false` if `to`
    /// reaches no live session (a retired id mints nothing).
    fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The id of the session `code` stands for, once: a second call, or one after its
    /// `ttl`, finds nothing.
    fn take_code(
        &self,
        code: &StoreId,
    ) -> impl Future<Output = Result<Option<StoreId>, StoreError>> + Send;
}

/// A store whose sessions the admin API can find and end by what they hold.
pub trait AdminStore: SessionStore {
    /// Deletes every session whose attribute `name` equals `value` (log a user out
    /// everywhere); returns the live sessions it ended, with their ids (retired views of them
    /// go too, uncounted).
    fn delete_where(
        &self,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<(StoreId, Session)>, StoreError>> + Send;

    /// The session with stable key `key`, if any (admin API).
    fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> impl Future<Output = Result<Option<(StoreId, Session)>, StoreError>> + Send;

    /// Every live session and its id (no alias, retired id or code), for an export: sessions
    /// that move to another store, region or process with the same secret.
    fn export(&self) -> impl Future<Output = Result<Vec<(StoreId, Session)>, StoreError>> + Send;

    /// Whether `id` is a live session's own id (not an alias, a retired id or nothing): only
    /// such an id moves to another store.
    fn is_own(&self, id: &StoreId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Puts `session` under `id` as it is (its times kept, so its timeouts run on), unless a
    /// session is there already, or a logout ended one there lately; `true` if written. The
    /// caller judges expiry first.
    fn import(
        &self,
        id: &StoreId,
        session: &Session,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str, v: &str) -> Change {
        Change::Set(n.to_owned(), v.to_owned())
    }

    #[test]
    fn changes_over_the_limits_are_refused_one_by_one() {
        let limits = Limits {
            max_attributes: 2,
            max_value_bytes: 5,
            max_session_bytes: 11,
        };
        let mut s = Session::new(SessionKey::from("k"), 0);
        let rejected = s.apply(
            &[
                set("a", "12345"),
                set("b", "123456"),
                set("c", "1"),
                set("d", "1"),
            ],
            &limits,
        );
        let reasons: Vec<_> = rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason))
            .collect();
        assert_eq!(reasons, [("b", "max_value_bytes"), ("d", "max_attributes")]);
        // Replacing a value within the total is fine; growing past it is not.
        assert!(s.apply(&[set("a", "x")], &limits).is_empty());
        assert_eq!(
            s.apply(&[set("c", "12345"), set("a", "12345")], &limits)
                .len(),
            1
        );
        assert_eq!(s.size(), 8);
    }

    #[test]
    fn unset_removes_and_frees_room() {
        let limits = Limits {
            max_attributes: 1,
            ..Limits::default()
        };
        let mut s = Session::new(SessionKey::from("k"), 0);
        assert!(s.apply(&[set("a", "1")], &limits).is_empty());
        assert!(
            s.apply(&[Change::Unset("a".into()), set("b", "2")], &limits)
                .is_empty()
        );
        assert_eq!(s.attrs().collect::<Vec<_>>(), [("b", "2")]);
    }

    #[test]
    fn expiry_counts_idle_from_last_use_and_absolute_from_creation() {
        let mut s = Session::new(SessionKey::from("k"), 1_000);
        let (idle, abs) = (Duration::from_secs(10), Duration::from_secs(60));
        assert!(!s.expired(10_000, idle, abs));
        assert!(s.expired(11_001, idle, abs));
        s.last_seen_ms = 55_000;
        assert!(!s.expired(61_000, idle, abs));
        assert!(s.expired(61_001, idle, abs));
    }
}
