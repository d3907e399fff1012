//! Handoffs between sibling hosts that share sessions (`share_with`): a link to a sibling
//! carries a one-time, seconds-lived code, never the token. The sibling redeems the code for
//! the session and gives the client a token of its own for it (an alias in the store).
//!
//! A code is filed in the session store (`put_code`) as the link is rewritten, and taken
//! (once, `take_code`) by whichever gateway the click reaches: with Redis, several gateways
//! behind an L4 balancer honour each other's codes. This module makes and reads codes, and
//! judges whether a request may redeem one ([`from_sibling`]). The code's last byte says
//! whether the client carries tokens in URLs; it is not signed (it only chooses how the
//! sibling hands the client its new token).
//!
//! A code is a bearer credential for a few seconds: it is redeemed only by what a click on
//! the sibling's link is, a top-level navigation whose `Referer` names the sibling (the
//! rewriter gives such links `referrerpolicy="origin"`, so the `Referer` is there even from a
//! page whose policy hides it, and carries no path), never by a subresource, a frame, a
//! script's fetch or a form's POST that an attacker's page could make.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use http::header::{self, HeaderMap};

use super::StoreId;
use super::request::Arrival;
use super::server_store::ServerStore;
use super::store::HandoffStore;
use super::store_metrics::{StoreOps, timed};
use super::token::{SessionKeys, Token};
use crate::metrics::StoreOpMetrics;

/// Handoffs through the store: codes filed for links to siblings, and redeemed by clients
/// arriving from them.
pub(super) struct Handoffs {
    store: ServerStore,
    keys: Arc<SessionKeys>,
    /// How long the alias made for an arriving client lives (the sessions' absolute timeout).
    alias_ttl: Duration,
    take_code: StoreOpMetrics,
    alias: StoreOpMetrics,
    put_code: StoreOpMetrics,
}

impl Handoffs {
    /// Handoffs through `store`, new tokens signed with `keys`.
    pub(super) fn new(
        store: &ServerStore,
        keys: &Arc<SessionKeys>,
        alias_ttl: Duration,
        ops: &StoreOps,
    ) -> Handoffs {
        Handoffs {
            store: store.clone(),
            keys: keys.clone(),
            alias_ttl,
            take_code: ops.take_code.clone(),
            alias: ops.alias.clone(),
            put_code: ops.put_code.clone(),
        }
    }

    /// A sibling host's handoff code in the URL. It counts only on a top-level navigation
    /// that comes from one of the route's sibling hosts (see [`from_sibling`]), and
    /// is taken then (once, whatever follows). A client that already has a live session here
    /// keeps it (`live`: its token, and whether it came in the URL): a code never replaces a
    /// session, or an attacker's link would log the victim into the attacker's account.
    /// Otherwise the client gets a new token for the session, filed as an alias of it.
    pub(super) async fn hand_in(
        &self,
        code: &str,
        headers: &HeaderMap,
        method: &Method,
        siblings: &[String],
        live: Option<(Token, bool)>,
    ) -> Option<Arrival> {
        if !from_sibling(headers, method, siblings) {
            tracing::debug!("a handoff code not on a navigation from a sibling host: ignored");
            return None;
        }
        let (code, by_url) = read_code(code)?;
        let target = match timed!(self.take_code, self.store.take_code(&code)) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(error = %e, "session handoff failed");
                None
            }
        };
        if let Some((token, in_url)) = live {
            return Some(Arrival {
                token,
                by_url: in_url,
                fresh: false,
            });
        }
        let target = target?;
        let fresh = Token::generate(&self.keys).ok()?;
        match timed!(
            self.alias,
            self.store.alias(&fresh.store_id(), &target, self.alias_ttl)
        ) {
            Ok(true) => Some(Arrival {
                token: fresh,
                by_url,
                fresh: true,
            }),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, "session handoff failed");
                None
            }
        }
    }

    /// A one-time code that hands the session of `token` to a sibling host (see `handoff`).
    /// It is filed in the store in the background, as the link that carries it is rewritten:
    /// a click comes long after that write (a millisecond); one that beats it, or a store that
    /// fails, leaves the sibling without the session, as a code that expired does.
    pub(super) fn issue(&self, token: &Token, by_url: bool) -> Option<String> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (alias, code) = new_code(by_url)?;
        let (store, to, m) = (self.store.clone(), token.store_id(), self.put_code.clone());
        runtime.spawn(async move {
            if let Err(e) = timed!(m, store.put_code(&alias, &to, HANDOFF_TTL)) {
                tracing::warn!(error = %e, "session handoff code not filed");
            }
        });
        Some(code)
    }
}

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
    Some((StoreId::from_bytes(id), URL_SAFE_NO_PAD.encode(raw)))
}

/// The alias id and URL flag in `code`, if it is one.
pub fn read_code(code: &str) -> Option<(StoreId, bool)> {
    let mut raw = [0u8; 18];
    match URL_SAFE_NO_PAD.decode_slice(code, &mut raw) {
        Ok(17) => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&raw[..16]);
            Some((StoreId::from_bytes(id), raw[16] == 1))
        }
        _ => None,
    }
}

/// Whether a request may redeem a handoff code: a `GET` or `HEAD` that is a top-level
/// navigation (`Sec-Fetch-Mode: navigate` and `Sec-Fetch-Dest: document`, when the browser
/// sends them) from one of `siblings` (`host[:port]`), as its `Referer` says.
pub fn from_sibling(headers: &HeaderMap, method: &Method, siblings: &[String]) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return false;
    }
    let fetch = |name: &str, want: &str| {
        headers
            .get(name)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(want.as_bytes()))
    };
    if !fetch("sec-fetch-mode", "navigate") || !fetch("sec-fetch-dest", "document") {
        return false;
    }
    let Some(referer) = headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
    else {
        return false;
    };
    let (true, Some(host)) = (
        matches!(referer.scheme(), "http" | "https"),
        referer.host_str(),
    ) else {
        return false;
    };
    let authority = match referer.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    siblings.iter().any(|s| s.eq_ignore_ascii_case(&authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_navigation_from_a_sibling_redeems() {
        let siblings = ["shop.example".to_owned(), "www.example:8443".to_owned()];
        let req = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let nav = [
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ];
        for ok in [
            req(&[("referer", "http://shop.example/home")]),
            req(&[("referer", "https://SHOP.example/"), nav[0], nav[1]]),
            req(&[("referer", "https://www.example:8443/x?y")]),
        ] {
            assert!(from_sibling(&ok, &Method::GET, &siblings), "{ok:?}");
        }
        for bad in [
            req(&[]),
            req(&nav),
            req(&[("referer", "http://evil.example/")]),
            req(&[("referer", "http://shop.example.evil/")]),
            req(&[("referer", "http://www.example/")]),
            req(&[("referer", "http://evil.example/?shop.example")]),
            req(&[("referer", "http://shop.example@evil.example/")]),
            req(&[("referer", "/relative")]),
            req(&[
                ("referer", "http://shop.example/"),
                ("sec-fetch-dest", "iframe"),
            ]),
            req(&[
                ("referer", "http://shop.example/"),
                ("sec-fetch-mode", "no-cors"),
            ]),
        ] {
            assert!(!from_sibling(&bad, &Method::GET, &siblings), "{bad:?}");
        }
        let ok = req(&[("referer", "http://shop.example/")]);
        assert!(!from_sibling(&ok, &Method::POST, &siblings));
    }

    #[test]
    fn a_code_reads_back_and_anything_else_does_not() {
        let (id, code) = new_code(true).unwrap();
        assert_eq!(code.len(), 23);
        assert_eq!(
            read_code(&code).map(|(i, u)| (*i.as_bytes(), u)),
            Some((*id.as_bytes(), true))
        );
        let (_, other) = new_code(false).unwrap();
        assert_ne!(other, code);
        assert_eq!(read_code(&other).map(|(_, u)| u), Some(false));
        assert!(read_code("forged-code-0123456789").is_none());
        assert!(read_code("").is_none());
    }
}
