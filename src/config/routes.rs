//! `routes:` — which requests go to which upstream pool: the host and path-prefix match, the
//! prefix stripping, body limit, upgrades and session setting of each route.
//!
//! A route names an upstream and may have sessions, which other sections define: those
//! references are checked in `rules.rs`, after every section is read, from the [`RouteRefs`]
//! kept here.

use std::collections::HashMap;

use super::error::Problems;
use super::limits::Limits;
use super::node::{Node, Pos};
use super::reader::{MapReader, absolute_path, boolean, list, non_empty, size, string};
use super::sessions::{self, RouteSession};

/// A route: which requests go to which upstream pool.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name, used in logs.
    pub name: String,
    /// Host to match.
    pub host: HostMatch,
    /// Path prefix to match, on segment boundaries (`/api` matches `/api/x`, not `/apix`).
    pub path_prefix: String,
    /// The upstream pool's name.
    pub upstream: String,
    /// Remove `path_prefix` from the path sent upstream.
    pub strip_prefix: bool,
    /// Request body limit for this route (defaults to `limits.max_body_bytes`).
    pub max_body_bytes: u64,
    /// Protocols a client may upgrade to on this route (lower case; `websocket` by default).
    /// Any other `Upgrade` is dropped, and the request goes on as a plain one.
    pub upgrades: Vec<String>,
    /// The route's sessions: `None` when off (`session: off`, or no `sessions:` section).
    pub session: Option<RouteSession>,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host (`"*"`).
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// Any subdomain of this suffix: `*.example.com` is stored as `.example.com`.
    Suffix(String),
}

/// Where a route entry refers to other sections, for the rules in `rules.rs`. Kept for every
/// entry written as a mapping, also one that failed to read otherwise (no `match`, say): its
/// references are still checked, so that every problem is reported at once.
pub(super) struct RouteRefs {
    /// The upstream it names, if written as a non-empty string.
    pub upstream: Option<Written<String>>,
    /// Its `session:`, if written as a mapping (not `off`).
    pub session: Option<Written<RouteSession>>,
}

/// A value as read, with where it was written and its key path, for problems found later.
pub(super) struct Written<T> {
    /// The value.
    pub value: T,
    /// Where its node was written.
    pub pos: Pos,
    /// Its key path, e.g. `routes[0].upstream`.
    pub path: String,
}

/// Reads the `routes:` list at `node`, and what each entry refers to elsewhere. A route's
/// `max_body_bytes` defaults to `limits.max_body_bytes`; a route without `session:` has the
/// default sessions if `sessions_on` (the file has a `sessions:` section), else none.
pub(super) fn read_routes(
    node: &Node,
    path: &str,
    limits: &Limits,
    sessions_on: bool,
    p: &mut Problems,
) -> (Vec<RouteConfig>, Vec<RouteRefs>) {
    let Some(items) = list(node, path, p) else {
        return (Vec::new(), Vec::new());
    };
    let mut seen: HashMap<(HostMatch, String), usize> = HashMap::new();
    let mut out: Vec<RouteConfig> = Vec::new();
    let mut refs: Vec<RouteRefs> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rp = format!("{path}[{i}]");
        let Some(mut m) = MapReader::new(item, &rp, p) else {
            continue;
        };
        let name = m
            .get("name")
            .and_then(|n| non_empty(n, &m.child("name"), p))
            .unwrap_or_else(|| format!("route{i}"));
        let matcher = m
            .require("match", item.pos, p)
            .and_then(|n| read_match(n, &m.child("match"), p));
        let upstream_node = m.require("upstream", item.pos, p);
        let upstream = upstream_node.and_then(|n| non_empty(n, &m.child("upstream"), p));
        let strip_prefix = m
            .get("strip_prefix")
            .and_then(|n| boolean(n, &m.child("strip_prefix"), p))
            .unwrap_or(false);
        let max_body_bytes = m
            .get("max_body_bytes")
            .and_then(|n| size(n, &m.child("max_body_bytes"), p))
            .unwrap_or(limits.max_body_bytes);
        let upgrades = m
            .get("upgrades")
            .map(|n| read_upgrades(n, &m.child("upgrades"), p))
            .unwrap_or_else(|| vec!["websocket".to_owned()]);
        let session_node = m.get("session");
        let session = match session_node {
            None => sessions_on.then(RouteSession::default),
            Some(n) => sessions::read_route_session(n, &m.child("session"), p).flatten(),
        };
        refs.push(RouteRefs {
            upstream: upstream
                .clone()
                .zip(upstream_node)
                .map(|(value, n)| Written {
                    value,
                    pos: n.pos,
                    path: m.child("upstream"),
                }),
            session: session.clone().zip(session_node).map(|(value, n)| Written {
                value,
                pos: n.pos,
                path: m.child("session"),
            }),
        });
        m.finish(p);

        if out.iter().any(|r| r.name == name) {
            p.push(
                item.pos,
                &format!("{rp}.name"),
                format!("duplicate route name {name:?}"),
            );
        }
        let (Some((host, prefix)), Some(upstream)) = (matcher, upstream) else {
            continue;
        };
        if let Some(first) = seen.insert((host.clone(), prefix.clone()), i) {
            p.push(
                item.pos,
                &format!("{rp}.match"),
                format!("routes[{first}] already matches the same host and path prefix"),
            );
        }
        out.push(RouteConfig {
            name,
            host,
            path_prefix: prefix,
            upstream,
            strip_prefix,
            max_body_bytes,
            upgrades,
            session,
        });
    }
    if items.is_empty() {
        p.push(node.pos, path, "at least one route is needed");
    }
    (out, refs)
}

/// A route's `upgrades`: protocol names (`websocket`), lower case. `h2c` is refused: an h2c
/// upgrade would let a client speak HTTP/2 to the backend past the gateway's checks.
fn read_upgrades(node: &Node, path: &str, p: &mut Problems) -> Vec<String> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(s) = non_empty(n, &ipath, p) else {
            continue;
        };
        let name = s.to_ascii_lowercase();
        if name == "h2c" || name.starts_with("h2c/") {
            p.push(
                n.pos,
                &ipath,
                "h2c is never forwarded: a client would speak HTTP/2 to the backend past the gateway",
            );
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.contains('/') {
            p.push(
                n.pos,
                &ipath,
                format!("{s:?} is not a protocol name (e.g. websocket)"),
            );
        } else {
            out.push(name);
        }
    }
    out
}

fn read_match(node: &Node, path: &str, p: &mut Problems) -> Option<(HostMatch, String)> {
    let mut m = MapReader::new(node, path, p)?;
    let host = match m.get("host") {
        Some(n) => read_host(n, &m.child("host"), p)?,
        None => HostMatch::Any,
    };
    let prefix = match m.get("path_prefix") {
        Some(n) => {
            let mut s = absolute_path(n, &m.child("path_prefix"), p)?;
            if s.contains('?') {
                p.push(n.pos, &m.child("path_prefix"), "a path prefix has no query");
                return None;
            }
            // `/api/` and `/api` match the same requests; keep one form.
            while s.len() > 1 && s.ends_with('/') {
                s.pop();
            }
            // Request paths are normalized before matching, so such a prefix could never match.
            if s.len() > 1
                && s[1..]
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                p.push(
                    n.pos,
                    &m.child("path_prefix"),
                    format!("{s:?} has an empty, . or .. segment and could never match"),
                );
                return None;
            }
            s
        }
        None => "/".to_owned(),
    };
    m.finish(p);
    Some((host, prefix))
}

fn read_host(node: &Node, path: &str, p: &mut Problems) -> Option<HostMatch> {
    let raw = string(node, path, p)?;
    let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if h == "*" {
        return Some(HostMatch::Any);
    }
    let (suffix, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let is_ip = name.parse::<std::net::IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    if (!is_ip || suffix) && !name.split('.').all(valid_label) {
        p.push(
            node.pos,
            path,
            format!("bad host {raw:?}: write a name (shop.example.com), a wildcard (*.example.com) or \"*\""),
        );
        return None;
    }
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{BASE, load, problems};

    #[test]
    fn path_prefix_must_start_with_slash() {
        let errs = problems(&BASE.replace("path_prefix: /", "path_prefix: api"));
        assert!(
            errs[0].contains("must be a path starting with /"),
            "{errs:?}"
        );
    }

    #[test]
    fn path_prefix_must_be_normalized() {
        for bad in ["/a//b", "/a/./b", "/a/../b"] {
            let errs = problems(&BASE.replace("path_prefix: /", &format!("path_prefix: {bad}")));
            assert!(errs[0].contains("could never match"), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn host_patterns_are_checked() {
        let errs = problems(&BASE.replace("{ path_prefix: / }", "{ host: \"shop.*\" }"));
        assert!(errs[0].contains("bad host"), "{errs:?}");
        let c = load(&BASE.replace("{ path_prefix: / }", "{ host: \"*.Example.com\" }")).unwrap();
        assert_eq!(c.routes[0].host, HostMatch::Suffix(".example.com".into()));
    }

    #[test]
    fn duplicate_routes_are_reported() {
        let text =
            format!("{BASE}  - {{ name: two, match: {{ path_prefix: / }}, upstream: app }}\n");
        let errs = problems(&text);
        assert!(
            errs[0].contains("already matches the same host and path prefix"),
            "{errs:?}"
        );
    }
}
