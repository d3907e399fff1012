//! Handoffs between sibling hosts that share sessions (`share_with`): a link to a sibling
//! carries a one-time, seconds-lived code, never the token. The sibling redeems the code for
//! the session and gives the client a token of its own for it (an alias in the store).
//!
//! Codes live in this process: a click lands on the gateway that served the page, unless an
//! L4 balancer moves the client between two requests a few seconds apart (then the sibling
//! simply starts without the session).

use std::time::{Duration, Instant};

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

/// Codes issued and not yet redeemed.
pub struct Handoffs {
    /// Each code with when it was issued: moka hands out an entry past its TTL that it has
    /// not evicted yet, and `remove` (what makes a code single-use) does not check.
    codes: moka::sync::Cache<[u8; 16], (Handoff, Instant)>,
    ttl: Duration,
}

impl std::fmt::Debug for Handoffs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoffs")
            .field("pending", &self.codes.entry_count())
            .finish()
    }
}

impl Handoffs {
    /// Codes that work for `ttl`; at most `max` pending (the oldest go first).
    pub fn new(ttl: Duration, max: u64) -> Handoffs {
        Handoffs {
            codes: moka::sync::Cache::builder()
                .max_capacity(max)
                .time_to_live(ttl)
                .build(),
            ttl,
        }
    }

    /// A new code for `handoff` (128 random bits, base64url); `None` without randomness.
    pub fn issue(&self, handoff: Handoff) -> Option<String> {
        let mut code = [0u8; 16];
        rand::fill(&mut code).ok()?;
        self.codes.insert(code, (handoff, Instant::now()));
        Some(URL_SAFE_NO_PAD.encode(code))
    }

    /// What `code` stands for, once: a code works a single time, and not after its TTL.
    pub fn redeem(&self, code: &str) -> Option<Handoff> {
        let mut raw = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(code, &mut raw) {
            Ok(16) => self
                .codes
                .remove(&raw)
                .filter(|(_, issued)| issued.elapsed() < self.ttl)
                .map(|(h, _)| h),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        Handoff {
            id: StoreId([7; 16]),
            by_url: false,
        }
    }

    #[test]
    fn a_code_works_once() {
        let h = Handoffs::new(HANDOFF_TTL, 100);
        let code = h.issue(handoff()).unwrap();
        assert_eq!(code.len(), 22);
        assert_eq!(h.redeem(&code).map(|x| x.id), Some(StoreId([7; 16])));
        assert!(h.redeem(&code).is_none());
        assert!(h.redeem("forged-code-0123456789").is_none());
        assert!(h.redeem("").is_none());
    }

    #[test]
    fn a_code_expires() {
        let h = Handoffs::new(Duration::from_millis(100), 100);
        let code = h.issue(handoff()).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.redeem(&code).is_none());
    }
}
