//! Header operations on the way through, as small pure functions.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the RFC 2616 ones still seen in the wild). They
/// describe one connection, so they never cross the proxy.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            // Only an h2c upgrade uses it, and h2c never goes through.
            | "http2-settings"
    )
}

/// Client-address and original-request headers that only a trusted proxy may send. (From a
/// trusted proxy they pass unchanged; `Forwarded` is not extended with this hop.)
fn is_untrusted_only(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-server"
    )
}

/// Which headers the proxy must act on are present, found in one pass over the names.
#[derive(Debug, Default, Clone, Copy)]
pub struct Found {
    /// A hop-by-hop header (so perhaps `Connection`, naming more).
    pub hop_by_hop: bool,
    /// A client-address header that only a trusted proxy may send.
    pub untrusted_only: bool,
    /// `Expect`.
    pub expect: bool,
}

/// Looks at each header name once.
pub fn scan(headers: &HeaderMap) -> Found {
    let mut found = Found::default();
    for name in headers.keys() {
        let n = name.as_str();
        if is_hop_by_hop(n) {
            found.hop_by_hop = true;
        } else if is_untrusted_only(n) {
            found.untrusted_only = true;
        } else if n == "expect" {
            found.expect = true;
        }
    }
    found
}

/// Removes every header whose name `pick` selects. Most messages carry none, so the common
/// case is one pass over the names, matched as strings (no hashing).
fn remove_where(headers: &mut HeaderMap, pick: fn(&str) -> bool) {
    let mut present = headers.keys().filter(|k| pick(k.as_str()));
    let Some(first) = present.next().cloned() else {
        return;
    };
    let rest: Vec<HeaderName> = present.cloned().collect();
    headers.remove(first);
    for name in rest {
        headers.remove(name);
    }
}

/// The comma-separated tokens of every `Connection` header, trimmed.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers and every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Without any hop-by-hop header there is no `Connection` either, so nothing is nominated.
    if !headers.keys().any(|k| is_hop_by_hop(k.as_str())) {
        return;
    }
    // Collect first: the nominated names live in the Connection header we are about to remove.
    let nominated: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        // Host is re-set by the proxy anyway; never let a client make us drop it.
        .filter(|n| *n != header::HOST)
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    remove_where(headers, is_hop_by_hop);
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: x`), if any.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Whether an `Upgrade` request value (`a, b/2`) offers the protocol a response names.
pub fn offers(asked: &HeaderValue, answered: &HeaderValue) -> bool {
    let name = |p: &str| {
        p.split('/')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let (Ok(asked), Ok(answered)) = (asked.to_str(), answered.to_str()) else {
        return false;
    };
    let answered = name(answered);
    !answered.is_empty() && asked.split(',').any(|p| name(p) == answered)
}

/// Sets `X-Forwarded-For/-Proto/-Host`. A trusted peer's values are kept (its client address
/// extended with the peer); anyone else's are replaced, since a client can write anything there.
/// `found` is the request's [`scan`].
pub fn set_forwarded(
    headers: &mut HeaderMap,
    found: Found,
    peer: &HeaderValue,
    trusted: bool,
    proto: &'static str,
    host: &HeaderValue,
) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    // Room for what we add (and Host), so the map grows at most once.
    headers.reserve(4);
    if !trusted {
        // Other headers that applications take as "what the proxy saw" are as forgeable as
        // X-Forwarded-For when they come from a client.
        if found.untrusted_only {
            remove_where(headers, is_untrusted_only);
        }
        headers.insert(XFF, peer.clone());
        headers.insert(XFP, HeaderValue::from_static(proto));
        headers.insert(XFH, host.clone());
        return;
    }
    let xff = if headers.contains_key(&XFF) {
        let mut joined: Vec<u8> = Vec::new();
        for v in headers.get_all(&XFF) {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.clone())
    } else {
        peer.clone()
    };
    headers.insert(XFF, xff);
    if !headers.contains_key(&XFP) {
        headers.insert(XFP, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&XFH) {
        headers.insert(XFH, host.clone());
    }
}

/// HTTP/2 allows the `cookie` header split into several fields; HTTP/1.1 needs one
/// (RFC 9113 §8.2.3), joined with "; ".
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// The size of a request's head as a client sent it (roughly: target plus header lines).
pub fn head_size(uri: &http::Uri, headers: &HeaderMap) -> usize {
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    target
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Most header fields a request may have: hyper's HTTP/1.1 parser refuses more (431), and
/// HTTP/2 requests are held to the same.
pub const MAX_FIELDS: usize = 100;

/// A request's header fields as [`MAX_FIELDS`] counts them: an HTTP/2 client's `cookie`
/// crumbs (one field per cookie, which RFC 9113 allows) count as the one line HTTP/1.1
/// would send.
pub fn field_count(headers: &HeaderMap) -> usize {
    let fields = headers.len();
    if fields <= MAX_FIELDS {
        return fields;
    }
    let crumbs = headers.get_all(header::COOKIE).iter().count();
    fields - crumbs.saturating_sub(1)
}

/// The declared `Content-Length`, if present and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map as map;

    #[test]
    fn hop_by_hop_and_connection_nominated_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic Zm9v"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("host", "example.com"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-kept", "host"]);
    }

    #[test]
    fn the_name_lists_match_header_names_as_http_spells_them() {
        // HeaderName::as_str is lower case: the lists must be too.
        for n in [header::CONNECTION, header::TE, header::PROXY_AUTHORIZATION] {
            assert!(is_hop_by_hop(n.as_str()));
        }
        assert!(is_untrusted_only(header::FORWARDED.as_str()));
        let h = map(&[("Keep-Alive", "1"), ("X-Real-IP", "1")]);
        assert!(h.keys().any(|k| is_hop_by_hop(k.as_str())));
        assert!(h.keys().any(|k| is_untrusted_only(k.as_str())));
    }

    #[test]
    fn connection_cannot_nominate_host() {
        let mut h = map(&[("connection", "host"), ("host", "a")]);
        remove_hop_by_hop(&mut h);
        assert!(h.contains_key("host"));
    }

    #[test]
    fn upgrade_is_detected_only_with_connection_upgrade() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_request(&h).unwrap(), "websocket");
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn untrusted_peer_forwarded_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        let peer = HeaderValue::from_static("10.1.2.3");
        let found = scan(&h);
        set_forwarded(&mut h, found, &peer, false, "http", &host);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip"));
        assert!(!h.contains_key("x-forwarded-port"));
    }

    #[test]
    fn trusted_peer_forwarded_headers_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.example");
        let peer = HeaderValue::from_static("10.0.0.1");
        let found = scan(&h);
        set_forwarded(&mut h, found, &peer, true, "http", &host);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}
