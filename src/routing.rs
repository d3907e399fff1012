//! Which route a request takes: by host (exact, `*.suffix`, any) and longest path prefix.
//!
//! The most specific route wins, not the first written: an exact host beats a wildcard, a longer
//! wildcard beats a shorter one, any host comes last; among routes with equally specific hosts
//! the longest matching path prefix wins. Prefixes match on segment boundaries only.

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{
    BackendCookies, Config, DEFAULT_LINKS, HostMatch, JarSettings, RouteConfig, Tracking,
};

/// A route, ready for matching.
#[derive(Debug)]
pub struct Route {
    /// The route's name (for logs).
    pub name: Arc<str>,
    /// Its place in `Config::routes` (routes are kept in matching order).
    pub index: usize,
    /// Index of the route's upstream pool in `Config::upstreams`.
    pub upstream: usize,
    /// Remove the prefix from the path sent upstream.
    pub strip_prefix: bool,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Protocols a client may upgrade to (lower case).
    pub upgrades: Vec<String>,
    /// `Some` when the route has sessions.
    pub session: Option<RouteSessions>,
    host: HostMatch,
    prefix: String,
}

/// A route's session settings, resolved against the `sessions:` section.
#[derive(Debug, Clone)]
pub struct RouteSessions {
    /// Attributes also sent under a header of their own: (attribute, header).
    pub mapped: Vec<(String, http::HeaderName)>,
    /// How clients carry the token here.
    pub tracking: Tracking,
    /// With URL tracking, the (element, attribute) pairs whose URLs get the token.
    pub links: Arc<[(String, String)]>,
    /// Sibling hosts sharing the sessions (`host[:port]`, lower case).
    pub share_with: Arc<[String]>,
    /// `backend_cookies: jar`: which of the backend's cookies the session keeps.
    pub jar: Option<Arc<JarSettings>>,
}

impl Route {
    /// The path to send upstream: with the prefix removed when `strip_prefix` is set.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        if !self.strip_prefix || self.prefix == "/" {
            return path;
        }
        match path.get(self.prefix.len()..) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => "/",
        }
    }

    /// Whether a client may upgrade to every protocol an `Upgrade` value offers (`name` or
    /// `name/version`, comma-separated, any case).
    pub fn allows_upgrade(&self, offered: &[u8]) -> bool {
        let Ok(offered) = std::str::from_utf8(offered) else {
            return false;
        };
        let mut any = false;
        for protocol in offered.split(',').map(str::trim) {
            let name = protocol.split('/').next().unwrap_or("").trim();
            if !self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name)) {
                return false;
            }
            any = true;
        }
        any
    }

    fn specificity(&self) -> (u8, usize, usize) {
        let (rank, len) = match &self.host {
            HostMatch::Exact(h) => (2, h.len()),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Any => (0, 0),
        };
        (rank, len, self.prefix.len())
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        };
        host_ok && prefix_matches(&self.prefix, path)
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, but not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// All routes, ordered from most to least specific.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the router. Routes whose upstream is unknown are skipped (validation rejects them).
    pub fn new(config: &Config) -> Router {
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, r): (usize, &RouteConfig)| {
                let upstream = config.upstreams.iter().position(|u| u.name == r.upstream)?;
                Some(Route {
                    name: Arc::from(r.name.as_str()),
                    index,
                    upstream,
                    strip_prefix: r.strip_prefix,
                    max_body_bytes: r.max_body_bytes,
                    upgrades: r.upgrades.clone(),
                    // Header names were checked when the configuration was read.
                    session: r.session.as_ref().map(|s| RouteSessions {
                        mapped: s
                            .headers
                            .iter()
                            .filter_map(|(a, h)| {
                                let h = http::HeaderName::from_bytes(h.as_bytes()).ok()?;
                                Some((a.clone(), h))
                            })
                            .collect(),
                        tracking: s.tracking.unwrap_or_else(|| {
                            config
                                .sessions
                                .as_ref()
                                .map(|c| c.tracking)
                                .unwrap_or_default()
                        }),
                        links: match &s.links {
                            Some(l) => l.clone().into(),
                            None => DEFAULT_LINKS
                                .iter()
                                .map(|(e, a)| ((*e).to_owned(), (*a).to_owned()))
                                .collect(),
                        },
                        share_with: s.share_with.clone().into(),
                        jar: match &s.backend_cookies {
                            BackendCookies::Pass => None,
                            BackendCookies::Jar(names) => Some(Arc::new(JarSettings {
                                route: r.name.clone(),
                                names: names.clone(),
                                adopt: s.adopt.clone(),
                            })),
                        },
                    }),
                    host: r.host.clone(),
                    prefix: r.path_prefix.clone(),
                })
            })
            .collect();
        // Stable sort: equally specific routes keep file order (validation forbids true duplicates).
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Router { routes }
    }

    /// The route for a host (without port) and a normalized path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(host, path))
    }
}

/// The host name of a `Host` header or URI authority: no port, no trailing dot, no brackets.
pub fn host_name(authority: &str) -> &str {
    let h = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080`
        rest.split(']').next().unwrap_or(rest)
    } else {
        match authority.rfind(':') {
            Some(i) => &authority[..i],
            None => authority,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// A request path that must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (and is not `*`).
    #[error("the request path must start with /")]
    NotAbsolute,
    /// A `.` or `..` segment written percent-encoded, which backends might decode after routing.
    #[error("encoded dot segments are not allowed in the path")]
    EncodedDotSegment,
}

/// Removes `.` and `..` segments (RFC 3986 §5.2.4) so that routing and the backend agree on what
/// the path is: `/public/../admin` must be routed as `/admin`, not as something under `/public`.
///
/// # Errors
/// A path that is not absolute, or that hides dot segments behind percent-encoding.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: without `%`, `/.` or `//` there is nothing to decode or collapse.
    let b = path.as_bytes();
    if !b.contains(&b'%')
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && matches!(w[1], b'.' | b'/'))
    {
        return Ok(Cow::Borrowed(path));
    }
    if path.split('/').any(|seg| {
        seg.contains('%') && is_dot_segment(&seg.to_ascii_lowercase().replace("%2e", "."))
    }) {
        return Err(PathError::EncodedDotSegment);
    }
    if !path.split('/').any(is_dot_segment) && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            // Collapse `//` inside the path, but keep a trailing slash.
            "" if i != last => {}
            s => out.push(s),
        }
        // A trailing `.` or `..` leaves a directory: keep the slash.
        if i == last && is_dot_segment(seg) {
            out.push("");
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}

fn is_dot_segment(seg: &str) -> bool {
    seg == "." || seg == ".."
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(routes: &str) -> Router {
        let text = format!(
            "listeners: [ {{ name: a, bind: \"127.0.0.1:1\" }} ]\nupstreams:\n  a: {{ servers: [ {{ url: \"http://127.0.0.1:2\" }} ] }}\n  b: {{ servers: [ {{ url: \"http://127.0.0.1:3\" }} ] }}\nroutes:\n{routes}"
        );
        let c = Config::from_str("t.yaml", &text, Path::new("."), &|_| None).unwrap();
        Router::new(&c)
    }

    fn route_name(r: &Router, host: &str, path: &str) -> Option<String> {
        r.find(host, path).map(|r| r.name.to_string())
    }

    #[test]
    fn longest_path_prefix_wins_on_segment_boundaries() {
        let r = router(
            "  - { name: root, match: { path_prefix: / }, upstream: a }\n  - { name: api, match: { path_prefix: /api }, upstream: b }\n  - { name: v2, match: { path_prefix: /api/v2/ }, upstream: b }\n",
        );
        assert_eq!(route_name(&r, "x", "/api").as_deref(), Some("api"));
        assert_eq!(route_name(&r, "x", "/api/users").as_deref(), Some("api"));
        assert_eq!(route_name(&r, "x", "/apix").as_deref(), Some("root"));
        assert_eq!(route_name(&r, "x", "/api/v2").as_deref(), Some("v2"));
        assert_eq!(route_name(&r, "x", "/api/v2/x").as_deref(), Some("v2"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let r = router(
            "  - { name: any, match: { host: \"*\" }, upstream: a }\n  - { name: wild, match: { host: \"*.example.com\" }, upstream: a }\n  - { name: deep, match: { host: \"*.eu.example.com\" }, upstream: a }\n  - { name: shop, match: { host: shop.example.com }, upstream: b }\n",
        );
        assert_eq!(
            route_name(&r, "shop.example.com", "/").as_deref(),
            Some("shop")
        );
        assert_eq!(
            route_name(&r, "SHOP.Example.com", "/").as_deref(),
            Some("shop")
        );
        assert_eq!(
            route_name(&r, "blog.example.com", "/").as_deref(),
            Some("wild")
        );
        assert_eq!(
            route_name(&r, "x.eu.example.com", "/").as_deref(),
            Some("deep")
        );
        assert_eq!(route_name(&r, "example.com", "/").as_deref(), Some("any"));
        assert_eq!(route_name(&r, "other.org", "/").as_deref(), Some("any"));
    }

    #[test]
    fn no_matching_route_gives_none() {
        let r = router("  - { name: shop, match: { host: shop.example.com }, upstream: b }\n");
        assert!(r.find("example.org", "/").is_none());
    }

    #[test]
    fn strip_prefix_removes_the_prefix() {
        let r = router(
            "  - { name: api, match: { path_prefix: /api }, upstream: b, strip_prefix: true }\n",
        );
        let route = r.find("x", "/api/users").unwrap();
        assert_eq!(route.upstream_path("/api/users"), "/users");
        assert_eq!(route.upstream_path("/api"), "/");
        assert_eq!(route.upstream, 1);
    }

    #[test]
    fn host_name_drops_port_and_brackets() {
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("example.com."), "example.com");
        assert_eq!(host_name("[::1]:8443"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        assert_eq!(normalize_path("/a/b").unwrap(), "/a/b");
        assert_eq!(normalize_path("/public/../admin").unwrap(), "/admin");
        assert_eq!(normalize_path("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/../../etc").unwrap(), "/etc");
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/a//b").unwrap(), "/a/b");
        assert_eq!(normalize_path("/").unwrap(), "/");
    }

    #[test]
    fn encoded_dot_segments_are_refused() {
        assert_eq!(
            normalize_path("/a/%2e%2e/b"),
            Err(PathError::EncodedDotSegment)
        );
        assert_eq!(
            normalize_path("/a/.%2E/b"),
            Err(PathError::EncodedDotSegment)
        );
        assert!(normalize_path("/a/%2efile").is_ok());
        assert_eq!(normalize_path("a/b"), Err(PathError::NotAbsolute));
    }
}
