//! The sealed-cookie store: the whole session travels in the client's cookie, sealed with an
//! AEAD (AES-256-GCM-SIV) under a key derived from the session secret, so no gateway keeps
//! any state and any gateway with the secret can read it.
//!
//! A sealed value is base64url of: version (1 byte), nonce (12), then the sealed created and
//! last-used times (Unix ms, 8 bytes each) and the packed session ([`Session::packed`]), then
//! the tag (16). Expiry is judged from the times inside, so an old cookie cannot be replayed
//! past its timeouts. The newest secret seals; every secret opens (rotation). GCM-SIV because
//! nonces are random: a repeated nonce would reveal only that two cookies are equal.
//!
//! The store works on a [`Jar`]: the cookies clients hold, by id. On the request path a jar
//! holds the one cookie a request presented, under an id made for that request, and what is
//! in it afterwards becomes the response's cookie. The trade-off: a session cannot be revoked
//! before it expires (a copy of the cookie stays valid), except all at once by retiring the
//! secret that sealed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use super::StoreId;
use super::store::{
    AdminStore, Applied, Change, HandoffStore, Limits, Rejected, Session, SessionKey, SessionStore,
    StoreError,
};

/// Format version, first byte of every sealed value.
const VERSION: u8 = 1;
/// Bound to every sealed value: a value sealed for something else does not open as a session.
const AAD: &[u8] = b"sessiongate sealed session v1";
const TAG_LEN: usize = 16;
/// Bytes around the packed session: version, nonce, two times, tag.
const OVERHEAD: usize = 1 + NONCE_LEN + 16 + TAG_LEN;

/// Seals and opens sessions.
pub struct Sealer {
    /// Newest first.
    keys: Vec<LessSafeKey>,
    /// Longest sealed value (the cookie's value), in characters.
    max_bytes: usize,
    limits: Limits,
    /// A use is sealed into the cookie again only when the last one is older than this.
    touch_after_ms: u64,
    idle: Duration,
    absolute: Duration,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Settings of the sealed-cookie store.
#[derive(Debug, Clone)]
pub struct SealedOptions {
    /// Session secrets, newest first (`None`: a key made now, good for this process only).
    pub secrets: Option<Vec<Vec<u8>>>,
    /// Longest sealed value; a change that would make it longer is refused.
    pub max_bytes: usize,
    /// Size limits on session data.
    pub limits: Limits,
    /// The idle timeout (a use is written back often enough to keep within it).
    pub idle_timeout: Duration,
    /// The absolute timeout.
    pub absolute_timeout: Duration,
}

fn derive(secret: &[u8]) -> Result<LessSafeKey, StoreError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"sessiongate").extract(secret);
    let okm = prk
        .expand(&[b"sealed-session/v1"], &AES_256_GCM_SIV)
        .map_err(|_| StoreError::Unavailable("cannot derive the sealing key".to_owned()))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

impl Sealer {
    /// A sealer for `options`.
    ///
    /// # Errors
    /// No usable key (the OS random source failed, or an empty secret list).
    pub fn new(options: &SealedOptions) -> Result<Sealer, StoreError> {
        let keys = match &options.secrets {
            Some(secrets) => secrets
                .iter()
                .map(|s| derive(s))
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                let mut secret = [0u8; 32];
                rand::fill(&mut secret).map_err(|_| StoreError::no_randomness())?;
                vec![derive(&secret)?]
            }
        };
        if keys.is_empty() {
            return Err(StoreError::Unavailable("no session secret".to_owned()));
        }
        let idle = u64::try_from(options.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(Sealer {
            keys,
            max_bytes: options.max_bytes,
            limits: options.limits,
            // Within a tenth of the idle timeout, and at least once a minute: the cookie is
            // not set again on every request, and a session idles out at most 10% early.
            touch_after_ms: (idle / 10).min(60_000),
            idle: options.idle_timeout,
            absolute: options.absolute_timeout,
        })
    }

    /// Length of the sealed value of a session whose packed form is `packed` bytes long.
    fn sealed_len(packed: usize) -> usize {
        (4 * (OVERHEAD + packed)).div_ceil(3)
    }

    /// `session` sealed under the newest key.
    ///
    /// # Errors
    /// The OS random source failed, or sealing did.
    pub fn seal(&self, session: &Session) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| StoreError::no_randomness())?;
        let packed = session.packed();
        let mut data = Vec::with_capacity(16 + packed.len() + TAG_LEN);
        data.extend_from_slice(&session.created_ms.to_le_bytes());
        data.extend_from_slice(&session.last_seen_ms.to_le_bytes());
        data.extend_from_slice(packed);
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .map_err(|_| StoreError::Unavailable("sealing failed".to_owned()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The session sealed in `value`, if one of the keys sealed it and it is intact.
    pub fn open(&self, value: &str) -> Option<Session> {
        if value.len() > self.max_bytes.max(4096) {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 + TAG_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        for key in &self.keys {
            let mut data = sealed.to_vec();
            let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            ) else {
                continue;
            };
            let (times, packed) = plain.split_at(16);
            let created = u64::from_le_bytes(times[..8].try_into().ok()?);
            let last = u64::from_le_bytes(times[8..].try_into().ok()?);
            return Session::from_packed(Bytes::copy_from_slice(packed), created, last);
        }
        None
    }

    /// A jar holding the cookie a request presented (if it opens) under `id`.
    pub fn jar_for_request(self: &Arc<Self>, id: StoreId, cookie: Option<&str>) -> Jar {
        let jar = Jar::new(self.clone());
        if let Some(value) = cookie
            && self.open(value).is_some()
        {
            jar.lock().insert(id, Entry::Sealed(value.to_owned()));
        }
        jar
    }

    /// Applies `changes` one by one: each is checked against the limits, then against the
    /// sealed size; those that would break either are refused.
    fn apply(&self, session: &mut Session, changes: &[Change]) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for change in changes {
            let mut next = session.clone();
            let refused = next.apply(std::slice::from_ref(change), &self.limits);
            if !refused.is_empty() {
                rejected.extend(refused);
            } else if Self::sealed_len(next.packed().len()) > self.max_bytes {
                if let Change::Set(name, _) = change {
                    rejected.push(Rejected {
                        name: name.clone(),
                        reason: "store.cookie.max_bytes",
                    });
                }
            } else {
                *session = next;
            }
        }
        rejected
    }
}

/// A cookie a client holds, or another id of one (an alias; a regenerated cookie's
/// predecessor, read-only, for the grace window).
#[derive(Debug, Clone)]
enum Entry {
    Sealed(String),
    Alias {
        to: StoreId,
        until_ms: u64,
    },
    /// The cookie as it was before a regenerate, while the one it became is there.
    Retired {
        value: String,
        successor: StoreId,
        until_ms: u64,
    },
    /// A one-time code (not an id: loads through it find nothing).
    Code {
        to: StoreId,
        until_ms: u64,
    },
}

/// Sealed sessions by id: the cookies clients hold. The store contract runs on it.
#[derive(Clone)]
pub struct Jar {
    sealer: Arc<Sealer>,
    entries: Arc<Mutex<HashMap<StoreId, Entry>>>,
}

impl std::fmt::Debug for Jar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jar")
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

impl Jar {
    /// An empty jar.
    pub fn new(sealer: Arc<Sealer>) -> Jar {
        Jar {
            sealer,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The sealer.
    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StoreId, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sealed value (the cookie) of the session under `id`, if any.
    pub fn cookie(&self, id: &StoreId) -> Option<String> {
        let entries = self.lock();
        let own = resolve(&entries, id, super::store::unix_ms())?;
        match entries.get(&own) {
            Some(Entry::Sealed(v)) => Some(v.clone()),
            _ => None,
        }
    }
}

/// The id of the cookie `id` reaches (itself, or the one its live alias names), for a read
/// or a change; a retired id reaches none.
fn resolve(entries: &HashMap<StoreId, Entry>, id: &StoreId, now: u64) -> Option<StoreId> {
    match entries.get(id)? {
        Entry::Sealed(_) => Some(*id),
        Entry::Alias { to, until_ms } if *until_ms > now => {
            matches!(entries.get(to), Some(Entry::Sealed(_))).then_some(*to)
        }
        Entry::Alias { .. } | Entry::Code { .. } | Entry::Retired { .. } => None,
    }
}

/// The retired view `id` reaches (itself, or through an alias), while its successor lives.
fn retired<'a>(entries: &'a HashMap<StoreId, Entry>, id: &StoreId, now: u64) -> Option<&'a str> {
    let entry = match entries.get(id)? {
        Entry::Alias { to, until_ms } if *until_ms > now => entries.get(to)?,
        other => other,
    };
    let Entry::Retired {
        value,
        successor,
        until_ms,
    } = entry
    else {
        return None;
    };
    let mut next = *successor;
    for _ in 0..4 {
        match entries.get(&next) {
            Some(Entry::Sealed(_)) => return (*until_ms > now).then_some(value.as_str()),
            Some(Entry::Retired { successor, .. }) => next = *successor,
            _ => return None,
        }
    }
    None
}

impl Jar {
    /// Files `entry(own id of to, expiry)` under `id` for `ttl`; `false` if `to` reaches no
    /// session.
    fn point(
        &self,
        id: &StoreId,
        to: &StoreId,
        ttl: Duration,
        entry: impl FnOnce(StoreId, u64) -> Entry,
    ) -> bool {
        let now = super::store::unix_ms();
        let mut entries = self.lock();
        let Some(own) = resolve(&entries, to, now) else {
            return false;
        };
        let until_ms = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(0));
        entries.insert(*id, entry(own, until_ms));
        true
    }

    fn open_at(&self, entries: &HashMap<StoreId, Entry>, own: &StoreId) -> Option<Session> {
        match entries.get(own) {
            Some(Entry::Sealed(v)) => self.sealer.open(v),
            _ => None,
        }
    }
}

impl SessionStore for Jar {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        let mut entries = self.lock();
        let Some(own) = resolve(&entries, id, now_ms) else {
            return Ok(retired(&entries, id, now_ms)
                .and_then(|v| self.sealer.open(v))
                .map(Session::retired));
        };
        let Some(mut session) = self.open_at(&entries, &own) else {
            return Ok(None);
        };
        // A use goes into the cookie only now and then: not a Set-Cookie per request. An
        // expired session is not revived by a use.
        if now_ms.saturating_sub(session.last_seen_ms) >= self.sealer.touch_after_ms
            && !session.expired(now_ms, self.sealer.idle, self.sealer.absolute)
        {
            session.last_seen_ms = now_ms;
            entries.insert(own, Entry::Sealed(self.sealer.seal(&session)?));
        }
        Ok(Some(session))
    }

    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<Applied>, StoreError> {
        let mut entries = self.lock();
        let (own, mut session, created) = match resolve(&entries, id, now_ms) {
            Some(own) => match self.open_at(&entries, &own) {
                Some(s) => (own, s, false),
                None => return Ok(None),
            },
            None => match create {
                Some(key) if !entries.contains_key(id) => (*id, Session::new(key, now_ms), true),
                _ => return Ok(None),
            },
        };
        let before = session.packed().clone();
        let rejected = self.sealer.apply(&mut session, changes);
        // Sealed again only when something changed: every new seal is a new Set-Cookie.
        if created || *session.packed() != before {
            session.last_seen_ms = session.last_seen_ms.max(now_ms);
            entries.insert(own, Entry::Sealed(self.sealer.seal(&session)?));
        }
        Ok(Some(Applied {
            session,
            rejected,
            created,
        }))
    }

    async fn delete(&self, id: &StoreId) -> Result<(), StoreError> {
        let mut entries = self.lock();
        if let Some(own) = resolve(&entries, id, super::store::unix_ms()) {
            entries.remove(&own);
        }
        entries.remove(id);
        Ok(())
    }

    async fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        let now = super::store::unix_ms();
        let mut entries = self.lock();
        let Some(own) = resolve(&entries, from, now) else {
            return Ok(false);
        };
        let Some(Entry::Sealed(value)) = entries.remove(&own) else {
            return Ok(false);
        };
        // A new nonce: the new cookie shares nothing visible with the old one.
        let resealed = match self.sealer.open(&value) {
            Some(s) => self.sealer.seal(&s)?,
            None => return Ok(false),
        };
        entries.insert(*to, Entry::Sealed(resealed));
        if !grace.is_zero() {
            let until_ms = now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(0));
            entries.insert(
                own,
                Entry::Retired {
                    value,
                    successor: *to,
                    until_ms,
                },
            );
        }
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl HandoffStore for Jar {
    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.point(alias, to, ttl, |to, until_ms| Entry::Alias { to, until_ms }))
    }
    async fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.point(code, to, ttl, |to, until_ms| Entry::Code { to, until_ms }))
    }
    async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
        let now = super::store::unix_ms();
        let mut entries = self.lock();
        match entries.get(code) {
            Some(Entry::Code { to, until_ms }) => {
                let to = (*until_ms > now).then_some(*to);
                entries.remove(code);
                Ok(to)
            }
            _ => Ok(None),
        }
    }
}

impl AdminStore for Jar {
    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        let mut entries = self.lock();
        let doomed: Vec<StoreId> = entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Sealed(v) => self
                    .sealer
                    .open(v)
                    .filter(|s| s.attr(name) == Some(value))
                    .map(|_| *id),
                Entry::Alias { .. } | Entry::Code { .. } | Entry::Retired { .. } => None,
            })
            .collect();
        for id in &doomed {
            entries.remove(id);
        }
        Ok(doomed.len())
    }
    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        let entries = self.lock();
        Ok(entries.iter().find_map(|(id, e)| match e {
            Entry::Sealed(v) => self
                .sealer
                .open(v)
                .filter(|s| s.key() == key.as_str())
                .map(|s| (*id, s)),
            Entry::Alias { .. } | Entry::Code { .. } | Entry::Retired { .. } => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secrets: &[&str], max_bytes: usize) -> Sealer {
        Sealer::new(&SealedOptions {
            secrets: Some(secrets.iter().map(|s| s.as_bytes().to_vec()).collect()),
            max_bytes,
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(1800),
            absolute_timeout: Duration::from_secs(3600),
        })
        .unwrap()
    }

    const OLD: &str = "an-old-secret-of-at-least-32-bytes-0123456789";
    const NEW: &str = "a-new-secret-of-at-least-32-bytes-0123456789";

    fn alice() -> Session {
        let mut s = Session::new(SessionKey::from("k1"), 1_000);
        s.apply(
            &[Change::Set("user".into(), "alice".into())],
            &Limits::default(),
        );
        s
    }

    #[test]
    fn a_sealed_session_opens_with_its_times_and_its_length_is_predicted() {
        let s = sealer(&[NEW], 3800);
        let value = s.seal(&alice()).unwrap();
        assert_eq!(value.len(), Sealer::sealed_len(alice().packed().len()));
        let back = s.open(&value).unwrap();
        assert_eq!(back, alice());
        assert!(!value.contains("alice"), "sealed, not encoded");
        // Two seals of one session differ (fresh nonce).
        assert_ne!(s.seal(&alice()).unwrap(), value);
    }

    #[test]
    fn a_tampered_or_foreign_value_does_not_open() {
        let s = sealer(&[NEW], 3800);
        let value = s.seal(&alice()).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        assert!(s.open(&URL_SAFE_NO_PAD.encode(&bytes)).is_none());
        assert!(s.open("not-a-session").is_none());
        let other = sealer(&["someone-elses-secret-0123456789abcdef0123"], 3800);
        assert!(other.open(&value).is_none());
    }

    #[test]
    fn after_rotation_old_cookies_open_and_new_ones_are_sealed_with_the_newest_key() {
        let before = sealer(&[OLD], 3800);
        let after = sealer(&[NEW, OLD], 3800);
        let old_cookie = before.seal(&alice()).unwrap();
        assert_eq!(after.open(&old_cookie), Some(alice()));
        let new_cookie = after.seal(&alice()).unwrap();
        assert!(before.open(&new_cookie).is_none());
        // Retiring the old secret ends every cookie it sealed.
        assert!(sealer(&[NEW], 3800).open(&old_cookie).is_none());
    }

    #[test]
    fn a_change_that_would_outgrow_max_bytes_is_refused_and_the_others_kept() {
        let s = sealer(&[NEW], 200);
        let mut session = alice();
        let rejected = s.apply(
            &mut session,
            &[
                Change::Set("big".into(), "x".repeat(300)),
                Change::Set("cart".into(), "3".into()),
            ],
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].name, "big");
        assert_eq!(session.attr("cart"), Some("3"));
        assert!(s.seal(&session).unwrap().len() <= 200);
    }
}
