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
//! The request path's use of it is in `kept_in_cookies`. The trade-off: a session cannot be
//! revoked before it expires (a copy of the cookie stays valid), except all at once by
//! retiring the secret that sealed it.

use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use super::store::{Change, Limits, Rejected, Session, StoreError};

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

    /// Notes a use of `session` at `now` if the last one noted is old enough (a tenth of the
    /// idle timeout, at most a minute): a use goes into the cookie only now and then, not as a
    /// `Set-Cookie` per request. `true` if it did (the session must be sealed again).
    pub fn touch(&self, session: &mut Session, now_ms: u64) -> bool {
        if now_ms.saturating_sub(session.last_seen_ms) < self.touch_after_ms {
            return false;
        }
        session.last_seen_ms = now_ms;
        true
    }

    /// Applies `changes` one by one: each is checked against the limits, then against the
    /// sealed size; those that would break either are refused.
    pub fn apply(&self, session: &mut Session, changes: &[Change]) -> Vec<Rejected> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::store::SessionKey;

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
