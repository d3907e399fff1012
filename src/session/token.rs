//! Session tokens: the bearer credential a client carries (cookie or URL).
//!
//! A token is 256 random bits from the OS CSPRNG plus a 128-bit HMAC-SHA256 tag under the
//! newest session key, base64url-encoded (64 characters). The tag lets the gateway reject a
//! forged or mangled token before any store lookup, so guessing costs no store work and an
//! unknown token is never adopted. Several keys may verify (key rotation: the newest signs,
//! all verify). Stores see only [`Token::store_id`]: the other half of the same HMAC output
//! (so the one MAC computation that checks a token also names its session), from which neither
//! the token nor its tag can be recovered; a dump of the store holds no usable credential. `Debug` and `Display` print a short hash, never
//! the token, so a token cannot reach a log by accident.

use std::sync::{Mutex, PoisonError};

use aws_lc_rs::{constant_time, hkdf, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes in a token.
const RANDOM_LEN: usize = 32;
/// Bytes of the HMAC-SHA256 tag kept in a token.
const TAG_LEN: usize = 16;
/// Length of a token on the wire (base64url without padding).
pub const TOKEN_CHARS: usize = (RANDOM_LEN + TAG_LEN) * 4 / 3;
/// Shortest secret accepted as a session key (bytes).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Wrong length or not base64url.
    #[error("malformed session token")]
    Malformed,
    /// Well-formed, but no configured key signed it.
    #[error("session token with a bad signature")]
    BadSignature,
    /// A new token could not be made: the OS random source failed.
    #[error("the OS random source failed")]
    NoRandomness,
}

/// The keys that sign and verify tokens, newest first.
pub struct SessionKeys {
    keys: Vec<hmac::Key>,
    /// Tokens these keys made or verified lately (see [`Verified`]).
    verified: Verified,
}

/// How many recently verified tokens are remembered.
const VERIFIED_SLOTS: usize = 8192;

/// Tokens whose signature checked out lately, one per slot (chosen by the token's text, whose
/// characters encode its random part): a token in use is verified once, not on every request
/// (the HMAC was the largest part of a session read, about 5,000 instructions under
/// callgrind). A slot holds the whole token as the client spells it, compared in constant
/// time, so only the very text that was verified is found there, and a hit needs no base64
/// decoding either (another 640 instructions); another token for the same slot replaces it.
/// Each key set has its own: a rotation that drops a key starts empty.
struct Verified {
    slots: Box<[Mutex<Option<Known>>]>,
}

/// A token that was verified: its text, its parts and its store id.
struct Known {
    text: [u8; TOKEN_CHARS],
    token: Token,
}

impl Verified {
    fn new() -> Verified {
        Verified {
            slots: (0..VERIFIED_SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// The slot of a token's text: its first characters (random, and base64 of the random
    /// part for any token of ours) folded into an index.
    fn slot(&self, text: &[u8; TOKEN_CHARS]) -> std::sync::MutexGuard<'_, Option<Known>> {
        let head = u64::from_le_bytes([
            text[0], text[1], text[2], text[3], text[4], text[5], text[6], text[7],
        ]);
        let i = (head.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % VERIFIED_SLOTS;
        self.slots[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token spelled `text`, if that very text was verified lately.
    fn find(&self, text: &[u8; TOKEN_CHARS]) -> Option<Token> {
        let slot = self.slot(text);
        let known = slot.as_ref()?;
        constant_time::verify_slices_are_equal(&known.text, text)
            .is_ok()
            .then(|| known.token.clone())
    }

    fn remember(&self, text: &[u8; TOKEN_CHARS], token: &Token) {
        *self.slot(text) = Some(Known {
            text: *text,
            token: token.clone(),
        });
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({} keys)", self.keys.len())
    }
}

impl SessionKeys {
    /// Keys from secrets, newest first (one per line of the secret file). The MAC key is
    /// derived with HKDF, so the same secret can later key other things (sealed cookies)
    /// without reusing key material.
    ///
    /// # Errors
    /// No secret, or one shorter than [`MIN_SECRET_BYTES`] (a message for the user).
    pub fn from_secrets<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("no session secret".to_owned());
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            let secret = secret.as_ref();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "session secret {} is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                    i + 1,
                    secret.len()
                ));
            }
            keys.push(derive_mac_key(secret)?);
        }
        Ok(SessionKeys {
            keys,
            verified: Verified::new(),
        })
    }

    /// One fresh random key, for a gateway started without a secret: its sessions do not
    /// survive a restart and cannot be shared with other instances.
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn generate() -> Result<Self, String> {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret).map_err(|_| "the OS random source failed".to_owned())?;
        Self::from_secrets(&[secret])
    }

    fn newest(&self) -> &hmac::Key {
        // `from_secrets` refuses an empty list.
        &self.keys[0]
    }
}

fn derive_mac_key(secret: &[u8]) -> Result<hmac::Key, String> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"sessiongate").extract(secret);
    let okm = prk
        .expand(&[b"session-token-mac/v1"], hmac::HMAC_SHA256)
        .map_err(|_| "cannot derive the session key".to_owned())?;
    Ok(hmac::Key::from(okm))
}

/// A session token that was made here or whose signature checked out.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    random: [u8; RANDOM_LEN],
    tag: [u8; TAG_LEN],
    id: [u8; ID_LEN],
}

/// Bytes of a store id.
const ID_LEN: usize = 16;

/// What a store keys a session by: the second half of the token's HMAC, 128 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreId([u8; ID_LEN]);

impl StoreId {
    /// The id with these bytes (one read back from a store, or a handoff code's).
    pub fn from_bytes(bytes: [u8; ID_LEN]) -> StoreId {
        StoreId(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first four bytes only, as in log hashes.
        let [a, b, c, d, ..] = self.0;
        write!(f, "StoreId({a:02x}{b:02x}{c:02x}{d:02x})")
    }
}

impl Token {
    /// A new random token signed with the newest key.
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn generate(keys: &SessionKeys) -> Result<Token, TokenError> {
        let token = Self::generate_unsent(keys)?;
        // It comes back with the client's next request.
        keys.verified.remember(&token.text(), &token);
        Ok(token)
    }

    /// A new token that no client will present (the sealed-cookie store's per-request one):
    /// not remembered as verified.
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn generate_unsent(keys: &SessionKeys) -> Result<Token, TokenError> {
        let mut random = [0u8; RANDOM_LEN];
        rand::fill(&mut random).map_err(|_| TokenError::NoRandomness)?;
        let (tag, id) = mac(keys.newest(), &random);
        Ok(Token { random, tag, id })
    }

    /// Checks a presented token: its form, then its signature under any configured key.
    ///
    /// # Errors
    /// [`TokenError`]: the token must be treated as absent (never looked up, never adopted).
    pub fn parse(text: &str, keys: &SessionKeys) -> Result<Token, TokenError> {
        let Ok(spelled) = <&[u8; TOKEN_CHARS]>::try_from(text.as_bytes()) else {
            return Err(TokenError::Malformed);
        };
        if let Some(token) = keys.verified.find(spelled) {
            return Ok(token);
        }
        let mut raw = [0u8; RANDOM_LEN + TAG_LEN];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return Err(TokenError::Malformed),
        }
        let (random, presented) = raw.split_at(RANDOM_LEN);
        let mut token = Token {
            random: [0; RANDOM_LEN],
            tag: [0; TAG_LEN],
            id: [0; ID_LEN],
        };
        token.random.copy_from_slice(random);
        token.tag.copy_from_slice(presented);
        for key in &keys.keys {
            let (tag, id) = mac(key, &token.random);
            if constant_time::verify_slices_are_equal(&tag, &token.tag).is_ok() {
                token.id = id;
                keys.verified.remember(spelled, &token);
                return Ok(token);
            }
        }
        Err(TokenError::BadSignature)
    }

    /// A stand-in for a session sealed in a cookie, which has no token: it names the session
    /// in log lines (by a hash of its stable key, so the lines of one session correlate
    /// across reseals and regenerates) and is never sent anywhere, nor remembered as
    /// verified (its text fails the HMAC). Made without randomness or a MAC: the
    /// sealed store made one per request with both, 4,700 instructions of a sealed read.
    pub fn stand_in(key: &str) -> Token {
        let mut id = [0u8; ID_LEN];
        let mut h = rustc_hash::FxHasher::default();
        std::hash::Hasher::write(&mut h, key.as_bytes());
        id[..8].copy_from_slice(&std::hash::Hasher::finish(&h).to_le_bytes());
        Token {
            random: [0; RANDOM_LEN],
            tag: [0; TAG_LEN],
            id,
        }
    }

    /// The token as the client carries it. Only for the `Set-Cookie` header or a URL: never
    /// for a log line or a backend.
    pub fn expose(&self) -> String {
        let text = self.text();
        // Base64url is ASCII.
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The token's text, as the client carries it.
    fn text(&self) -> [u8; TOKEN_CHARS] {
        let mut raw = [0u8; RANDOM_LEN + TAG_LEN];
        raw[..RANDOM_LEN].copy_from_slice(&self.random);
        raw[RANDOM_LEN..].copy_from_slice(&self.tag);
        let mut text = [0u8; TOKEN_CHARS];
        // 48 bytes are exactly 64 characters: the buffer always fits.
        let written = URL_SAFE_NO_PAD.encode_slice(raw, &mut text);
        debug_assert_eq!(written.ok(), Some(TOKEN_CHARS));
        text
    }

    /// The key a store files this token's session under.
    pub fn store_id(&self) -> StoreId {
        StoreId(self.id)
    }
}

/// HMAC-SHA256 of the random part: the first half is the token's tag, the second its store id.
fn mac(key: &hmac::Key, random: &[u8]) -> ([u8; TAG_LEN], [u8; ID_LEN]) {
    let full = hmac::sign(key, random);
    let (mut tag, mut id) = ([0u8; TAG_LEN], [0u8; ID_LEN]);
    tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
    id.copy_from_slice(&full.as_ref()[TAG_LEN..TAG_LEN + ID_LEN]);
    (tag, id)
}

/// A token's name in logs: `tok:` and eight hex digits of its store id. Enough to correlate
/// lines, useless as a credential; held inline, as an access line may carry one per request
/// (two allocations each as a `String`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LogHash([u8; 12]);

impl LogHash {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Written below from ASCII only.
        std::str::from_utf8(&self.0).unwrap_or("tok:?")
    }
}

impl std::fmt::Display for LogHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for LogHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Token {
    /// A short hash for logs (`tok:` and eight hex digits): enough to correlate lines,
    /// useless as a credential.
    pub fn log_hash(&self) -> LogHash {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"tok:00000000";
        for (i, &b) in self.id.iter().take(4).enumerate() {
            out[4 + 2 * i] = DIGITS[usize::from(b >> 4)];
            out[5 + 2 * i] = DIGITS[usize::from(b & 15)];
        }
        LogHash(out)
    }
}

/// A short hash for logs: enough to correlate lines, useless as a credential.
impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.log_hash().as_str())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secrets: &[&str]) -> SessionKeys {
        SessionKeys::from_secrets(secrets).unwrap()
    }
    const A: &str = "key-a-0123456789abcdef0123456789abcdef";
    const B: &str = "key-b-0123456789abcdef0123456789abcdef";

    #[test]
    fn a_generated_token_parses_back_to_itself() {
        let k = keys(&[A]);
        let t = Token::generate(&k).unwrap();
        let text = t.expose();
        assert_eq!(text.len(), TOKEN_CHARS);
        assert_eq!(Token::parse(&text, &k).unwrap(), t);
    }

    #[test]
    fn a_token_has_the_same_store_id_before_and_after_a_key_rotation() {
        let t = Token::generate(&keys(&[A])).unwrap();
        let parsed = Token::parse(&t.expose(), &keys(&[B, A])).unwrap();
        assert_eq!(parsed.store_id(), t.store_id());
        // The id is not the tag: the store never holds what the client sends.
        assert!(
            !t.expose()
                .contains(&URL_SAFE_NO_PAD.encode(t.store_id().as_bytes()))
        );
    }

    #[test]
    fn tokens_are_distinct() {
        let k = keys(&[A]);
        let a = Token::generate(&k).unwrap();
        let b = Token::generate(&k).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.store_id(), b.store_id());
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let t = Token::generate(&keys(&[A])).unwrap().expose();
        assert_eq!(Token::parse(&t, &keys(&[B])), Err(TokenError::BadSignature));
    }

    #[test]
    fn rotated_keys_still_verify_old_tokens_and_sign_with_the_newest() {
        let old = Token::generate(&keys(&[A])).unwrap();
        let rotated = keys(&[B, A]);
        assert!(Token::parse(&old.expose(), &rotated).is_ok());
        let new = Token::generate(&rotated).unwrap();
        assert!(Token::parse(&new.expose(), &keys(&[B])).is_ok());
        assert!(Token::parse(&new.expose(), &keys(&[A])).is_err());
    }

    #[test]
    fn mangled_tokens_are_refused() {
        let k = keys(&[A]);
        let t = Token::generate(&k).unwrap().expose();
        // One character changed anywhere breaks the signature (or the encoding).
        for i in [0, 20, 42, TOKEN_CHARS - 1] {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let mangled = String::from_utf8(bytes).unwrap();
            assert!(Token::parse(&mangled, &k).is_err(), "position {i}");
        }
        for bad in [
            "",
            "short",
            &t[1..],
            &format!("{t}A"),
            &"=".repeat(TOKEN_CHARS),
        ] {
            assert_eq!(Token::parse(bad, &k), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn logs_see_a_short_hash_never_the_token() {
        let t = Token::generate(&keys(&[A])).unwrap();
        let exposed = t.expose();
        for shown in [
            format!("{t}"),
            format!("{t:?}"),
            format!("{:?}", t.store_id()),
        ] {
            assert!(!shown.contains(&exposed[..8]), "{shown}");
            assert!(shown.len() < 24, "{shown}");
        }
    }

    #[test]
    fn a_remembered_tokens_text_in_another_case_or_length_is_not_taken_for_it() {
        let keys =
            SessionKeys::from_secrets(&["case-spelling-secret-0123456789abcdef0123"]).unwrap();
        let t = Token::generate(&keys).unwrap();
        let text = t.expose();
        assert_eq!(Token::parse(&text, &keys).unwrap().store_id(), t.store_id());
        // Base64url is case-sensitive: another case is another (unsigned) token.
        let flipped: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        assert_ne!(flipped, text);
        assert!(Token::parse(&flipped, &keys).is_err());
        for spelled in [
            format!("{text}="),
            format!(" {text}"),
            text[..TOKEN_CHARS - 1].to_owned(),
            text.replace('-', "+").replace('_', "/"),
            format!("{text}{text}"),
        ] {
            if spelled != text {
                assert!(Token::parse(&spelled, &keys).is_err(), "{spelled}");
            }
        }
    }

    #[test]
    fn a_log_hash_is_four_bytes_of_the_store_id_in_hex_and_never_the_token() {
        let keys = SessionKeys::from_secrets(&["log-hash-secret-0123456789abcdef012345"]).unwrap();
        let t = Token::generate(&keys).unwrap();
        let hash = t.log_hash();
        let id = t.store_id();
        let want: String = id.0[..4].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash.as_str(), format!("tok:{want}"));
        assert_eq!(t.to_string(), hash.as_str());
        assert!(!t.expose().contains(&hash.as_str()[4..]));
    }

    #[test]
    fn a_sealed_sessions_stand_in_names_it_by_its_key_alone() {
        let a = Token::stand_in("key-of-session-a");
        assert_eq!(a.log_hash(), Token::stand_in("key-of-session-a").log_hash());
        assert_ne!(a.log_hash(), Token::stand_in("key-of-session-b").log_hash());
        // Nothing of the key shows in the hash.
        assert!(!a.log_hash().as_str().contains("key"));
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        assert!(SessionKeys::from_secrets::<&str>(&[]).is_err());
        assert!(SessionKeys::from_secrets(&["too short"]).is_err());
        assert!(SessionKeys::generate().is_ok());
    }

    #[test]
    fn a_remembered_token_is_found_only_whole_and_only_by_its_own_keys() {
        let keys = SessionKeys::from_secrets(&["remembered-secret-0123456789abcdef0123"]).unwrap();
        let t = Token::generate(&keys).unwrap();
        let text = t.expose();
        // Made here: remembered, and read back with its id.
        assert_eq!(Token::parse(&text, &keys).unwrap().store_id(), t.store_id());
        // The same random part with another tag is refused, from the slot as without it.
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        raw[RANDOM_LEN] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            Token::parse(&forged, &keys).unwrap_err(),
            TokenError::BadSignature
        );
        assert_eq!(Token::parse(&text, &keys).unwrap().store_id(), t.store_id());
        // Other keys (a rotation that dropped this one) remember nothing of it.
        let other =
            SessionKeys::from_secrets(&["another-secret-entirely-0123456789abcdef"]).unwrap();
        assert_eq!(
            Token::parse(&text, &other).unwrap_err(),
            TokenError::BadSignature
        );
        // A token verified by the HMAC (not made here) is remembered too, with its id.
        let twin = SessionKeys::from_secrets(&["remembered-secret-0123456789abcdef0123"]).unwrap();
        assert_eq!(Token::parse(&text, &twin).unwrap().store_id(), t.store_id());
        let spelled: &[u8; TOKEN_CHARS] = text.as_bytes().try_into().unwrap();
        assert_eq!(twin.verified.find(spelled), Some(t.clone()));
        // Only the very text: one character changed (the same slot) is not found.
        let mut near = *spelled;
        near[TOKEN_CHARS - 1] = if near[TOKEN_CHARS - 1] == b'A' {
            b'B'
        } else {
            b'A'
        };
        assert_eq!(twin.verified.find(&near), None);
    }
}
