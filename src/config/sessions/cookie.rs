//! `sessions.cookie:` — the session cookie's name and attributes.

use std::time::Duration;

use super::SessionsConfig;
use crate::config::error::Problems;
use crate::config::node::{Node, Value};
use crate::config::reader::{MapReader, boolean, non_empty, one_of, positive_duration};

/// `SameSite` of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `Lax`: sent on top-level navigation from other sites.
    Lax,
    /// `Strict`: never sent from other sites.
    Strict,
    /// `None`: always sent (needs `Secure`).
    None,
}

/// When the session cookie is `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    /// On TLS listeners (then the cookie is `__Host-` prefixed too).
    Auto,
    /// Always.
    Always,
    /// Never (development over plain HTTP only).
    Never,
}

/// The session cookie's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    /// Name (`sg`); `__Host-` is prepended on TLS listeners with the default path and no domain.
    pub name: String,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `Secure`.
    pub secure: Secure,
    /// `Path`.
    pub path: String,
    /// `Domain`, if any.
    pub domain: Option<String>,
    /// `Max-Age`; without it the cookie lasts until the browser closes.
    pub max_age: Option<Duration>,
}

/// Reads `sessions.cookie:` at `node`; what it leaves out keeps its default.
pub(super) fn read_cookie(node: &Node, path: &str, p: &mut Problems) -> Option<CookieConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let d = SessionsConfig::default().cookie;
    let name = m
        .get("name")
        .and_then(|n| cookie_name(n, &m.child("name"), p))
        .unwrap_or(d.name);
    let same_site = m
        .get("same_site")
        .and_then(|n| one_of(n, &m.child("same_site"), &["lax", "strict", "none"], p))
        .map_or(d.same_site, |v| match v {
            "strict" => SameSite::Strict,
            "none" => SameSite::None,
            _ => SameSite::Lax,
        });
    let http_only = m
        .get("http_only")
        .and_then(|n| boolean(n, &m.child("http_only"), p))
        .unwrap_or(d.http_only);
    let secure = match m.get("secure").map(|n| (n, &n.value)) {
        None => d.secure,
        Some((_, Value::Bool(true))) => Secure::Always,
        Some((_, Value::Bool(false))) => Secure::Never,
        Some((n, _)) => match one_of(n, &m.child("secure"), &["auto"], p) {
            Some(_) => Secure::Auto,
            None => d.secure,
        },
    };
    let path_value = m
        .get("path")
        .and_then(|n| non_empty(n, &m.child("path"), p))
        .unwrap_or(d.path);
    let domain = m
        .get("domain")
        .and_then(|n| non_empty(n, &m.child("domain"), p));
    let max_age = m
        .get("max_age")
        .and_then(|n| positive_duration(n, &m.child("max_age"), p));
    m.finish(p);
    if same_site == SameSite::None && secure == Secure::Never {
        p.push(
            node.pos,
            path,
            "same_site: none needs a Secure cookie (browsers drop it otherwise)",
        );
    }
    Some(CookieConfig {
        name,
        same_site,
        http_only,
        secure,
        path: path_value,
        domain,
        max_age,
    })
}

fn cookie_name(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = non_empty(node, path, p)?;
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok || s.starts_with("__") {
        p.push(
            node.pos,
            path,
            format!(
                "{s:?}: use letters, digits, '-', '_' or '.' (the __Host- prefix is added on TLS)"
            ),
        );
        return None;
    }
    Some(s)
}
