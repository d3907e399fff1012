//! A route's `session:` — `off`, or which attributes it sends under headers of their own,
//! how its clients carry the token, which links get it, and the sibling hosts it shares
//! sessions with.

use super::Tracking;
use crate::config::error::Problems;
use crate::config::node::{Node, Value};
use crate::config::reader::{MapReader, list, non_empty};

/// A route's session setting: `session: off`, or a mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSession {
    /// Attributes also sent under a header name of their own: (attribute, header).
    pub headers: Vec<(String, String)>,
    /// How clients carry the token on this route (`None`: as `sessions.tracking` says).
    pub tracking: Option<Tracking>,
    /// With URL tracking, the (element, attribute) pairs whose URLs get the token (`None`:
    /// [`DEFAULT_LINKS`]).
    pub links: Option<Vec<(String, String)>>,
    /// Sibling hosts (`host[:port]`, lower case) that share this route's sessions: links to
    /// them carry a one-time handoff code.
    pub share_with: Vec<String>,
}

/// The elements and attributes whose URLs get the token by default.
pub const DEFAULT_LINKS: &[(&str, &str)] = &[
    ("a", "href"),
    ("area", "href"),
    ("form", "action"),
    // A submit button's own target overrides its form's.
    ("button", "formaction"),
    ("input", "formaction"),
    ("frame", "src"),
    ("iframe", "src"),
    // Documents embedded in the page, whose own links would carry the session on.
    ("object", "data"),
    ("embed", "src"),
];

/// `host` or `host:port`, as a client addresses the sibling.
fn read_hosts(node: &Node, path: &str, p: &mut Problems) -> Vec<String> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(s) = non_empty(n, &ipath, p) else {
            continue;
        };
        match s.parse::<http::uri::Authority>() {
            Ok(a) if !s.contains('@') => hosts.push(a.as_str().to_ascii_lowercase()),
            _ => p.push(n.pos, &ipath, format!("{s:?} is not a host or host:port")),
        }
    }
    hosts
}

/// `element[attribute]`, both `[a-z][a-z0-9-]*`.
fn read_links(node: &Node, path: &str, p: &mut Problems) -> Option<Vec<(String, String)>> {
    let items = list(node, path, p)?;
    let name = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let mut links = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(s) = non_empty(n, &ipath, p) else {
            continue;
        };
        let parsed = s
            .strip_suffix(']')
            .and_then(|s| s.split_once('['))
            .filter(|(e, a)| name(e) && name(a));
        match parsed {
            Some((e, a)) => links.push((e.to_owned(), a.to_owned())),
            None => p.push(
                n.pos,
                &ipath,
                format!("{s:?}: write element[attribute], e.g. a[href]"),
            ),
        }
    }
    Some(links)
}

/// A route's `session:`: `off`, or `{ headers: { attr: Header-Name } }`. `None` means off.
pub(in crate::config) fn read_route_session(
    node: &Node,
    path: &str,
    p: &mut Problems,
) -> Option<Option<RouteSession>> {
    if let Value::Str(s) = &node.value {
        if s == "off" {
            return Some(None);
        }
        p.push(node.pos, path, format!("{s:?}: write off, or a mapping"));
        return None;
    }
    if let Value::Bool(false) = node.value {
        return Some(None);
    }
    let mut m = MapReader::new(node, path, p)?;
    let headers_node = m.get("headers");
    let hpath = m.child("headers");
    let tracking = m
        .get("tracking")
        .and_then(|n| Tracking::read(n, &m.child("tracking"), p));
    let links = m
        .get("rewrite")
        .and_then(|n| read_links(n, &m.child("rewrite"), p));
    let share_with = m
        .get("share_with")
        .map(|n| read_hosts(n, &m.child("share_with"), p))
        .unwrap_or_default();
    m.finish(p);
    let mut headers = Vec::new();
    if let Some(h) = headers_node {
        match &h.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Value::Str(attr) = &k.value else {
                        p.push(k.pos, &hpath, "attribute names are strings");
                        continue;
                    };
                    let kpath = format!("{hpath}.{attr}");
                    let Some(header) = non_empty(v, &kpath, p) else {
                        continue;
                    };
                    if !valid_attribute_name(attr) {
                        p.push(k.pos, &kpath, "attribute names are [a-z0-9-]{1,64}");
                        continue;
                    }
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        p.push(v.pos, &kpath, format!("{header:?} is not a header name"));
                        continue;
                    }
                    headers.push((attr.clone(), header.to_ascii_lowercase()));
                }
            }
            other => p.push(
                h.pos,
                &hpath,
                format!(
                    "expected a mapping of attribute: Header-Name, found {}",
                    other.kind()
                ),
            ),
        }
    }
    Some(Some(RouteSession {
        headers,
        tracking,
        links,
        share_with,
    }))
}

/// A session attribute name: `[a-z0-9-]{1,64}`, as ARCHITECTURE §4 names attributes (no
/// `_`: many proxies drop such headers, and CGI maps `-` to `_`).
pub fn valid_attribute_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, load};

    #[test]
    fn route_session_can_be_off() {
        let text =
            BASE.replace("upstream: app }", "upstream: app, session: off }") + "sessions: {}\n";
        assert!(load(&text).unwrap().routes[0].session.is_none());
    }
}
