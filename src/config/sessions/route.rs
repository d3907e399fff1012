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
    /// What becomes of the cookies the backend sets.
    pub backend_cookies: BackendCookies,
    /// Application cookies that a client without a gateway session hands over to a new one
    /// (`adopt`, at cut-over): they must be kept by the jar.
    pub adopt: Vec<String>,
}

/// What becomes of the cookies a route's backend sets (`session.backend_cookies`). Either
/// way, one named like the gateway's own cookies never reaches the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendCookies {
    /// `pass`: they go to the client as the backend wrote them.
    #[default]
    Pass,
    /// `jar`: they are kept in the client's gateway session and added to the backend's
    /// requests (see `session::jar`): every one (`None`), or those `names` lists.
    Jar(Option<Vec<String>>),
}

/// A route's cookie jar, as configured (`backend_cookies: jar` and `adopt`); what it does is
/// `session::jar`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JarSettings {
    /// The route's name: each route's backend cookies are its own.
    pub route: String,
    /// The backend cookies kept: every one (`None`), or those named.
    pub names: Option<Vec<String>>,
    /// Cookies a client without a session hands over to a new one (`session.adopt`).
    pub adopt: Vec<String>,
}

/// A cookie name: an RFC 9110 token.
fn cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `adopt: [NAME, ...]`: cookie names the route's jar keeps.
fn read_adopt(node: &Node, path: &str, jar: &BackendCookies, p: &mut Problems) -> Vec<String> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(name) = non_empty(item, &ipath, p) else {
            continue;
        };
        let kept = match jar {
            BackendCookies::Pass => false,
            BackendCookies::Jar(None) => true,
            BackendCookies::Jar(Some(kept)) => kept.contains(&name),
        };
        if !cookie_name(&name) {
            p.push(item.pos, &ipath, format!("{name:?} is not a cookie name"));
        } else if !kept {
            p.push(
                item.pos,
                &ipath,
                format!(
                    "{name:?}: an adopted cookie must be one the jar keeps (backend_cookies: jar)"
                ),
            );
        } else {
            names.push(name);
        }
    }
    names
}

/// `backend_cookies: pass | jar`, or `{ mode: jar, names: [NAME, ...] }`.
fn read_backend_cookies(node: &Node, path: &str, p: &mut Problems) -> Option<BackendCookies> {
    let mode = |s: &str, at: &Node, p: &mut Problems| match s {
        "pass" => Some(false),
        "jar" => Some(true),
        _ => {
            p.push(at.pos, path, format!("{s:?}: write pass or jar"));
            None
        }
    };
    if let Value::Str(s) = &node.value {
        return Some(if mode(s, node, p)? {
            BackendCookies::Jar(None)
        } else {
            BackendCookies::Pass
        });
    }
    let mut m = MapReader::new(node, path, p)?;
    let mode_node = m.get("mode");
    let names_node = m.get("names");
    let npath = m.child("names");
    m.finish(p);
    let jar = match mode_node {
        Some(n) => match &n.value {
            Value::Str(s) => mode(s, n, p)?,
            other => {
                p.push(
                    n.pos,
                    path,
                    format!("expected pass or jar, found {}", other.kind()),
                );
                return None;
            }
        },
        None => true,
    };
    let names = match names_node {
        None => None,
        Some(n) => {
            let mut names = Vec::new();
            for (i, item) in list(n, &npath, p)?.iter().enumerate() {
                let ipath = format!("{npath}[{i}]");
                let Some(name) = non_empty(item, &ipath, p) else {
                    continue;
                };
                if cookie_name(&name) {
                    names.push(name);
                } else {
                    p.push(item.pos, &ipath, format!("{name:?} is not a cookie name"));
                }
            }
            if !jar {
                p.push(n.pos, &npath, "names are for mode: jar");
            }
            Some(names)
        }
    };
    Some(if jar {
        BackendCookies::Jar(names)
    } else {
        BackendCookies::Pass
    })
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
    let backend_cookies = m
        .get("backend_cookies")
        .and_then(|n| read_backend_cookies(n, &m.child("backend_cookies"), p))
        .unwrap_or_default();
    let adopt = m
        .get("adopt")
        .map(|n| read_adopt(n, &m.child("adopt"), &backend_cookies, p))
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
        backend_cookies,
        adopt,
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
    fn backend_cookies_read_as_pass_jar_or_named_jar() {
        use super::BackendCookies;
        let with = |v: &str| {
            let text = BASE.replace(
                "upstream: app }",
                &format!("upstream: app, session: {{ backend_cookies: {v} }} }}"),
            ) + "sessions: {}\n";
            load(&text).map(|c| c.routes[0].session.clone().unwrap().backend_cookies)
        };
        assert_eq!(with("pass").unwrap(), BackendCookies::Pass);
        assert_eq!(with("jar").unwrap(), BackendCookies::Jar(None));
        assert_eq!(
            with("{ mode: jar, names: [JSESSIONID, PHPSESSID] }").unwrap(),
            BackendCookies::Jar(Some(vec!["JSESSIONID".into(), "PHPSESSID".into()]))
        );
        let errs = with("{ mode: pass, names: [\"a b\"] }")
            .unwrap_err()
            .to_string();
        assert_eq!(errs.lines().count(), 2, "{errs}");
        assert!(with("keep").is_err());
        let adopt = |v: &str| {
            let text = BASE.replace(
                "upstream: app }",
                &format!("upstream: app, session: {{ {v} }} }}"),
            ) + "sessions: {}\n";
            load(&text).map(|c| c.routes[0].session.clone().unwrap().adopt)
        };
        assert_eq!(
            adopt("backend_cookies: jar, adopt: [JSESSIONID]").unwrap(),
            ["JSESSIONID"]
        );
        let errs = adopt("backend_cookies: { names: [A] }, adopt: [B]")
            .unwrap_err()
            .to_string();
        assert!(errs.contains("must be one the jar keeps"), "{errs}");
        assert!(adopt("adopt: [JSESSIONID]").is_err());
    }

    #[test]
    fn route_session_can_be_off() {
        let text =
            BASE.replace("upstream: app }", "upstream: app, session: off }") + "sessions: {}\n";
        assert!(load(&text).unwrap().routes[0].session.is_none());
    }
}
