//! Handoffs between sibling hosts that share sessions (`share_with`): a link to a sibling
//! carries a one-time, seconds-lived code, never the token. The sibling redeems the code for
//! the session and gives the client a token of its own for it (an alias in the store).
//!
//! A code is filed in the session store (`put_code`) as the link is rewritten, and taken
//! (once, `take_code`) by whichever gateway the click reaches: with Redis, several gateways
//! behind an L4 balancer honour each other's codes. This module only makes and reads codes.
//! The code's last byte says whether the client carries tokens in URLs; it is not signed (it
//! only chooses how the sibling hands the client its new token).

use std::time::Duration;

use aws_lc_rs::rand;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::StoreId;

/// How long a handoff code works.
pub const HANDOFF_TTL: Duration = Duration::from_secs(10);

/// The URL parameter (path or query) that carries a handoff code.
pub const HANDOFF_PARAMETER: &str = "sghandoff";

/// What a code stands for.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    /// The session.
    pub id: StoreId,
    /// The client carried its token in URLs (it refuses cookies): the sibling keeps it so.
    pub by_url: bool,
}

/// A new code: 128 random bits (the alias id it is filed under in the store) and whether the
/// client carries tokens in URLs, base64url (23 characters). `None` without randomness.
pub fn new_code(by_url: bool) -> Option<(StoreId, String)> {
    let mut raw = [0u8; 17];
    rand::fill(&mut raw[..16]).ok()?;
    raw[16] = u8::from(by_url);
    let mut id = [0u8; 16];
    id.copy_from_slice(&raw[..16]);
    Some((StoreId(id), URL_SAFE_NO_PAD.encode(raw)))
}

/// The alias id and URL flag in `code`, if it is one.
pub fn read_code(code: &str) -> Option<(StoreId, bool)> {
    let mut raw = [0u8; 18];
    match URL_SAFE_NO_PAD.decode_slice(code, &mut raw) {
        Ok(17) => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&raw[..16]);
            Some((StoreId(id), raw[16] == 1))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_and_anything_else_does_not() {
        let (id, code) = new_code(true).unwrap();
        assert_eq!(code.len(), 23);
        assert_eq!(read_code(&code).map(|(i, u)| (i.0, u)), Some((id.0, true)));
        let (_, other) = new_code(false).unwrap();
        assert_ne!(other, code);
        assert_eq!(read_code(&other).map(|(_, u)| u), Some(false));
        assert!(read_code("forged-code-0123456789").is_none());
        assert!(read_code("").is_none());
    }
}
