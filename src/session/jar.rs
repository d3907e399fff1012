//! The server-side cookie jar (`session.backend_cookies: jar`): the cookies a backend sets are
//! kept in the client's gateway session instead of its browser, and added to the requests the
//! backend gets, as a browser would add them. The application's own session id then never
//! reaches the browser, its scripts or a client that refuses cookies (URL tracking carries our
//! token, and the jar carries the application's).
//!
//! Each kept cookie is one session attribute, so the store's limits, atomic changes and every
//! store kind (memory, Redis, the sealed cookie) apply to it unchanged. Its name starts with
//! `~`, which no attribute a backend or the configuration names can (`[a-z0-9-]`): it is never
//! sent as an `X-Session-Attr-*` header, and a backend cannot set or unset it by directive.
//!
//! What a browser honours is honoured (RFC 6265bis): `Path`, `Domain` (only the request's host
//! or a parent of it), `Max-Age` and `Expires` (a past time deletes), `Secure` (only set and
//! sent over TLS listeners), `SameSite=Strict` (not sent on requests another site made).
//! Cookies are matched against the path the backend sees (after `strip_prefix`): the backend
//! wrote `Path` for its own URLs.

use std::sync::Arc;

use cookie::Cookie;
use http::header::{self, HeaderMap, HeaderValue};

use super::store::{Change, Session};
use crate::config::JarSettings;

/// Every kept cookie's attribute name starts so: outside `[a-z0-9-]`, no backend's.
const PREFIX: &str = "~jar;";

/// The longest attribute name a store packs (a byte of length).
const MAX_NAME: usize = 255;

/// The attribute that pins a session to the server that made its kept cookies
/// (`balance: session_affinity`): that server's `host:port`.
pub const PIN: &str = "~pin";

/// Which of a route's backend cookies the jar keeps: every one, or those named. Names are
/// compared exactly when kept (a cookie's name is case-sensitive), and loosely when a client
/// sends one (see [`client_spelling`]).
pub type Jar = JarSettings;

impl Jar {
    /// Whether the jar keeps the backend's cookie `name`.
    fn keeps(&self, name: &str) -> bool {
        self.names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// Whether a `Cookie` element the client sends must not reach the backend: the jar keeps
    /// every cookie (so the client's are no application's), or the element holds a kept name
    /// anywhere, in any spelling a lenient backend reads as it (whatever it splits on: `;`,
    /// `,`, white space). A harmless cookie that merely contains such a name goes too.
    fn refuses_from_client(&self, element: &str) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        let spelled = client_spelling(element);
        names
            .iter()
            .any(|n| spelled.contains(client_spelling(n).as_str()))
    }
}

/// A cookie's text as the most lenient backend reads a name in it: `+` as a space and
/// percent-decoded (PHP decodes names so), trimmed, lower case (ASP.NET compares without
/// case), with ` `, `.` and `[` as `_` (PHP makes them so).
fn client_spelling(text: &str) -> String {
    let decoded = percent_decode(text.replace('+', " ").as_bytes());
    String::from_utf8_lossy(&decoded)
        .trim()
        .bytes()
        .map(|b| match b {
            b' ' | b'.' | b'[' => '_',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// `%XX` decoded (once; malformed escapes kept as written).
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The request a jar works for: the host its client addressed, the path its backend gets, and
/// what a browser would weigh.
#[derive(Debug, Clone)]
pub struct JarScope {
    /// The route's jar.
    pub jar: Arc<Jar>,
    /// The request's host, lower case, without port.
    pub host: String,
    /// The path the backend gets.
    pub path: String,
    /// It came over TLS.
    pub tls: bool,
    /// The browser says another site made the request (`Sec-Fetch-Site: cross-site`).
    pub cross_site: bool,
    /// A top-level navigation that changes nothing (GET or HEAD, `Sec-Fetch-Mode: navigate`
    /// or none said): `SameSite=Lax` cookies go with it even from another site.
    pub navigation: bool,
    /// A client without a session presented this application cookie (`name`, `value`) to
    /// be adopted (see [`adoptable`]).
    pub adopted: Option<(String, String)>,
}

/// `SameSite`, as a kept cookie remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SameSite {
    Strict,
    /// `Lax`, or none written (browsers' default).
    Lax,
    None,
}

/// One kept cookie, as read from its attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept<'a> {
    /// The route whose backend set it (`;` as `_`).
    route: &'a str,
    /// The host it was set for, or (`host_only: false`) the domain it covers.
    domain: &'a str,
    host_only: bool,
    path: &'a str,
    name: &'a str,
    /// Unix ms; 0: it lives as long as the session.
    expires_ms: u64,
    secure: bool,
    same_site: SameSite,
    value: &'a str,
}

/// The attribute name of a cookie: `~jar;`, the route's name (`;` as `_`), `;`, then `=host`
/// or `.domain`, `;path;name`. `;` cannot occur in a domain, a path attribute or a cookie
/// name. The route is part of it: each route's backend has its own cookies, even where
/// `strip_prefix` gives two backends the same paths.
fn attr_name(route: &str, domain: &str, host_only: bool, path: &str, name: &str) -> String {
    let mark = if host_only { '=' } else { '.' };
    let route = route.replace(';', "_");
    format!("{PREFIX}{route};{mark}{domain};{path};{name}")
}

/// The attribute value: `expires_ms;flags;value` (`s` Secure; `S` Strict, `N` None).
fn attr_value(expires_ms: u64, secure: bool, same_site: SameSite, value: &str) -> String {
    let mut flags = String::new();
    if secure {
        flags.push('s');
    }
    match same_site {
        SameSite::Strict => flags.push('S'),
        SameSite::None => flags.push('N'),
        SameSite::Lax => {}
    }
    format!("{expires_ms};{flags};{value}")
}

/// Whether a session attribute is a kept cookie (never a header for the backend).
pub fn is_jar_attribute(name: &[u8]) -> bool {
    name.first() == Some(&b'~')
}

/// A kept cookie's attribute name read: (route, domain, host only, path, cookie name);
/// `None` for any other attribute.
fn read_name(name: &str) -> Option<(&str, &str, bool, &str, &str)> {
    let (route, rest) = name.strip_prefix(PREFIX)?.split_once(';')?;
    let host_only = match rest.as_bytes().first() {
        Some(b'=') => true,
        Some(b'.') => false,
        _ => return None,
    };
    let mut parts = rest[1..].splitn(3, ';');
    Some((
        route,
        parts.next()?,
        host_only,
        parts.next()?,
        parts.next()?,
    ))
}

/// A kept cookie from its attribute; `None` for any other attribute.
fn read_kept<'a>(name: &'a str, value: &'a str) -> Option<Kept<'a>> {
    let (route, domain, host_only, path, cookie_name) = read_name(name)?;
    let mut v = value.splitn(3, ';');
    let (expires, flags, value) = (v.next()?, v.next()?, v.next()?);
    // Whatever wrote it (an import, a store), a value that could carry another cookie into
    // the `Cookie` header is no kept cookie.
    if !valid_cookie_value(value) || !valid_cookie_name(cookie_name) {
        return None;
    }
    Some(Kept {
        route,
        domain,
        host_only,
        path,
        name: cookie_name,
        expires_ms: expires.parse().ok()?,
        secure: flags.contains('s'),
        same_site: if flags.contains('S') {
            SameSite::Strict
        } else if flags.contains('N') {
            SameSite::None
        } else {
            SameSite::Lax
        },
        value,
    })
}

/// RFC 6265 §5.1.3: `host` is `domain`, or ends in `.domain` and is no IP address.
fn domain_matches(host: &str, domain: &str) -> bool {
    if host.eq_ignore_ascii_case(domain) {
        return true;
    }
    host.len() > domain.len()
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
        && host.parse::<std::net::IpAddr>().is_err()
        && !host.starts_with('[')
}

/// RFC 6265 §5.1.4: the cookie's `path` covers `request`.
fn path_matches(request: &str, path: &str) -> bool {
    request == path
        || (request.starts_with(path)
            && (path.ends_with('/') || request.as_bytes().get(path.len()) == Some(&b'/')))
}

/// RFC 6265 §5.1.4's default path: the request path up to its last `/` (`/` at least).
fn default_path(request: &str) -> &str {
    if !request.starts_with('/') {
        return "/";
    }
    match request.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &request[..i],
    }
}

/// A cookie name a `Cookie` header can carry back: an RFC 9110 token.
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A cookie value a `Cookie` header can carry back: visible ASCII but `;`, `,` and `\`, as a
/// browser keeps it (quotes included).
fn valid_cookie_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && !b";,\\".contains(&b))
}

/// The first cookie the client sends under a name the route adopts (exactly so: it is the
/// application's own, as its server set it), if its value is one a `Cookie` header can carry
/// back. For a client without a gateway session, on a request its browser does not say
/// another site made (a link elsewhere must not move a cookie into a session).
pub fn adoptable(headers: &HeaderMap, scope: &JarScope) -> Option<(String, String)> {
    if scope.jar.adopt.is_empty() || scope.cross_site {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|e| e.trim().split_once('='))
        .find(|(n, v)| scope.jar.adopt.iter().any(|a| a == n) && valid_cookie_value(v))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
}

/// The header that expires the client's copy of an adopted cookie (`Path=/`, where
/// applications set their session cookies).
pub fn expire_client_copy(headers: &mut HeaderMap, name: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0")) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// `request`: the client's cookies that the jar refuses come out of its `Cookie` headers, and
/// the session's kept cookies for this host and path go in, longest path first (the order a
/// browser sends them), before the client's. A client's `Cookie` element that holds a kept
/// name in any spelling goes whole (see [`Jar::refuses_from_client`]).
pub fn attach(headers: &mut HeaderMap, scope: &JarScope, session: Option<&Session>, now_ms: u64) {
    let mut pairs: Vec<String> = Vec::new();
    let mut touched = false;
    for v in headers.get_all(header::COOKIE) {
        touched = true;
        // Not text: no backend could read a kept cookie's name in it safely; it goes.
        let Ok(text) = v.to_str() else { continue };
        for element in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            if !scope.jar.refuses_from_client(element) {
                pairs.push(element.to_owned());
            }
        }
    }
    let route = scope.jar.route.replace(';', "_");
    let mut kept: Vec<Kept<'_>> = session
        .into_iter()
        .flat_map(Session::attrs)
        .filter_map(|(n, v)| read_kept(n, v))
        .filter(|k| sendable(k, scope, &route, now_ms))
        .collect();
    kept.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.name.cmp(b.name)));
    if !touched && kept.is_empty() {
        return;
    }
    // Kept cookies first: a backend that reads the first of two same-named cookies reads
    // the gateway's.
    let mut ours: Vec<String> = kept
        .iter()
        .map(|k| format!("{}={}", k.name, k.value))
        .collect();
    if let (None, Some((name, value))) = (session, &scope.adopted) {
        ours.push(format!("{name}={value}"));
    }
    ours.append(&mut pairs);
    let pairs = ours;
    headers.remove(header::COOKIE);
    if pairs.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&pairs.join("; ")) {
        headers.insert(header::COOKIE, v);
    }
}

/// Whether a browser would send `k` with this request (`route`: the route's name as kept
/// cookies spell it).
fn sendable(k: &Kept<'_>, scope: &JarScope, route: &str, now_ms: u64) -> bool {
    let host_ok = if k.host_only {
        scope.host.eq_ignore_ascii_case(k.domain)
    } else {
        domain_matches(&scope.host, k.domain)
    };
    let same_site_ok = match k.same_site {
        SameSite::Strict => !scope.cross_site,
        // Lax: from another site only on a top-level navigation that changes nothing.
        SameSite::Lax => !scope.cross_site || scope.navigation,
        SameSite::None => true,
    };
    k.route == route
        && host_ok
        && path_matches(&scope.path, k.path)
        && (k.expires_ms == 0 || k.expires_ms > now_ms)
        && (!k.secure || scope.tls)
        && same_site_ok
}

/// What [`capture`] did with a response's cookies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Captured {
    /// The session changes that keep, replace or delete cookies (and drop expired ones).
    pub changes: Vec<Change>,
    /// Cookies the jar would keep but a browser would refuse (a `Domain` that is not this
    /// host's, `Secure` over plain HTTP, a name or value a `Cookie` header cannot carry, too
    /// long to store): gone, counted.
    pub refused: usize,
}

/// `response`: the backend's `Set-Cookie` lines that the jar keeps come out, as session
/// changes. A line the jar keeps never reaches the client, even when it is refused. Expired
/// cookies still in `session` are dropped with the first change.
pub fn capture(
    headers: &mut HeaderMap,
    scope: &JarScope,
    session: Option<&Session>,
    now_ms: u64,
) -> Captured {
    let mut out = Captured::default();
    if scope.adopted.is_none() && !headers.contains_key(header::SET_COOKIE) {
        return out;
    }
    let mut passed: Vec<HeaderValue> = Vec::new();
    let mut any_kept = false;
    for v in headers.get_all(header::SET_COOKIE) {
        let parsed = v.to_str().ok().map(Cookie::parse);
        let cookie = match parsed {
            Some(Ok(c)) if scope.jar.keeps(c.name()) => c,
            // Not one the jar keeps: it goes on to the client.
            Some(Ok(_)) => {
                passed.push(v.clone());
                continue;
            }
            // Unreadable (not text, no name): kept from the client when the jar keeps every
            // cookie, or when what a browser would read as its name is a kept one; else it
            // goes on, as a browser would judge it.
            _ => {
                let text = String::from_utf8_lossy(v.as_bytes());
                let first = text.split(';').next().unwrap_or("");
                let name = first.split_once('=').map_or("", |(n, _)| n).trim();
                if scope.jar.names.is_some() && !name.is_empty() && !scope.jar.keeps(name) {
                    passed.push(v.clone());
                } else {
                    out.refused += 1;
                }
                continue;
            }
        };
        any_kept = true;
        match keep(&cookie, scope, now_ms) {
            Some(change) => out.changes.push(change),
            None => out.refused += 1,
        }
    }
    headers.remove(header::SET_COOKIE);
    for v in passed {
        headers.append(header::SET_COOKIE, v);
    }
    // An adopted cookie the response did not set or delete itself is kept as the client
    // had it: for this host, `Path=/`, for the session's life.
    if let Some((name, value)) = &scope.adopted {
        let attr = attr_name(&scope.jar.route, &scope.host, true, "/", name);
        let answered = out.changes.iter().any(|c| match c {
            Change::Set(n, _) | Change::Unset(n) => {
                read_name(n).is_some_and(|(_, _, _, _, kept)| kept == name.as_str())
            }
        });
        if !answered && attr.len() <= MAX_NAME && !scope.host.contains(';') {
            out.changes.push(Change::Set(
                attr,
                attr_value(0, false, SameSite::Lax, value),
            ));
            any_kept = true;
        }
    }
    if any_kept && !out.changes.is_empty() {
        let expired = session
            .into_iter()
            .flat_map(Session::attrs)
            .filter_map(|(n, v)| Some((n, read_kept(n, v)?)))
            .filter(|(_, k)| k.expires_ms != 0 && k.expires_ms <= now_ms)
            .map(|(n, _)| Change::Unset(n.to_owned()));
        let expired: Vec<Change> = expired
            .filter(|c| !out.changes.iter().any(|o| o == c))
            .collect();
        out.changes.extend(expired);
    }
    out
}

/// Whether `changes` give `session` a kept cookie it did not hold, or a new value for one: the
/// application started or renewed a session of its own (a login, as a rule). The gateway's
/// token is then renewed too, as `X-Session-Action: regenerate` would: a token planted in
/// the browser before the login must not come to hold the application's logged-in cookie.
pub fn renews(changes: &[Change], session: &Session) -> bool {
    let value_of = |v: &str| v.splitn(3, ';').nth(2).map(str::to_owned);
    changes.iter().any(|c| match c {
        Change::Set(name, value) if name.starts_with(PREFIX) => {
            session.attr(name).and_then(value_of) != value_of(value)
        }
        _ => false,
    })
}

/// The change that keeps (or deletes) one cookie the jar keeps; `None` if a browser would
/// refuse it.
fn keep(c: &Cookie<'_>, scope: &JarScope, now_ms: u64) -> Option<Change> {
    let (name, value) = (c.name(), c.value());
    if !valid_cookie_name(name) || !valid_cookie_value(value) {
        return None;
    }
    // A Secure cookie set over plain HTTP is refused, as browsers refuse it.
    let secure = c.secure().unwrap_or(false);
    if secure && !scope.tls {
        return None;
    }
    let (domain, host_only) = match c.domain().filter(|d| !d.is_empty()) {
        None => (scope.host.clone(), true),
        Some(d) => {
            let d = d.to_ascii_lowercase();
            // Only the request's host or a parent domain of it, never a bare top-level name.
            if !domain_matches(&scope.host, &d) || (d != scope.host && !d.contains('.')) {
                return None;
            }
            (d, false)
        }
    };
    let path = match c.path() {
        Some(p) if p.starts_with('/') => p,
        _ => default_path(&scope.path),
    };
    if path.contains(';') || domain.contains(';') {
        return None;
    }
    let attr = attr_name(&scope.jar.route, &domain, host_only, path, name);
    if attr.len() > MAX_NAME {
        return None;
    }
    // Browsers keep a cookie at most 400 days (RFC 6265bis), however far its date.
    const MAX_LIFE_MS: u64 = 400 * 24 * 3600 * 1000;
    let expires_ms = match (c.max_age(), c.expires_datetime()) {
        // Max-Age wins over Expires; zero or less deletes; a huge one is capped, not read as
        // zero.
        (Some(age), _) => {
            let ms = age.whole_milliseconds();
            if ms <= 0 {
                return Some(Change::Unset(attr));
            }
            now_ms.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX).min(MAX_LIFE_MS))
        }
        (None, Some(at)) => {
            let ms = u64::try_from(at.unix_timestamp())
                .unwrap_or(0)
                .saturating_mul(1000);
            if ms <= now_ms {
                return Some(Change::Unset(attr));
            }
            ms.min(now_ms.saturating_add(MAX_LIFE_MS))
        }
        (None, None) => 0,
    };
    let same_site = match c.same_site() {
        Some(cookie::SameSite::Strict) => SameSite::Strict,
        Some(cookie::SameSite::None) => SameSite::None,
        _ => SameSite::Lax,
    };
    Some(Change::Set(
        attr,
        attr_value(expires_ms, secure, same_site, value),
    ))
}

/// The server (`host:port`) that made the session's kept cookies, if it says.
pub fn pinned(session: &Session) -> Option<&[u8]> {
    session
        .attr_bytes_raw()
        .find(|(n, _)| *n == PIN.as_bytes())
        .map(|(_, v)| v)
}

/// What follows the last `.` of each kept cookie's value: a Tomcat-style route name
/// (`JSESSIONID=ABC.node1`), which a server's `route` may match.
pub fn route_hints<'s>(session: &'s Session, jar: &Jar) -> Vec<&'s [u8]> {
    let route = jar.route.replace(';', "_");
    session
        .attrs()
        .filter_map(|(n, v)| read_kept(n, v))
        .filter(|k| k.route == route)
        .filter_map(|k| k.value.rsplit_once('.').map(|(_, r)| r.as_bytes()))
        .filter(|r| !r.is_empty())
        .collect()
}

/// The names of the cookies kept in `session`, for the admin API (never their values).
pub fn kept_names(session: &Session) -> Vec<String> {
    session
        .attrs()
        .filter_map(|(n, v)| read_kept(n, v))
        .map(|k| k.name.to_owned())
        .collect()
}

/// Takes out of a response every `Set-Cookie` whose name is one of `ours` in any case, and
/// every nameless one (no `=`, or nothing before it): a browser stores `=sg=T` as a cookie
/// without a name whose value it sends back as `sg=T`, which reads as ours. A backend must
/// not set, replace or delete the gateway's cookies, on any route. How many went.
pub fn drop_named_like(headers: &mut HeaderMap, ours: &[&str]) -> usize {
    let is_ours = |v: &HeaderValue| {
        let text = String::from_utf8_lossy(v.as_bytes());
        let first = text.split(';').next().unwrap_or("");
        let Some((name, _)) = first.split_once('=') else {
            return true;
        };
        let name = name.trim();
        name.is_empty() || ours.iter().any(|o| o.eq_ignore_ascii_case(name))
    };
    let header::Entry::Occupied(entry) = headers.entry(header::SET_COOKIE) else {
        return 0;
    };
    if !entry.iter().any(is_ours) {
        return 0;
    }
    let (_, all) = entry.remove_entry_mult();
    let all: Vec<HeaderValue> = all.collect();
    let before = all.len();
    let kept: Vec<HeaderValue> = all.into_iter().filter(|v| !is_ours(v)).collect();
    let gone = before - kept.len();
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::store::{Limits, SessionKey};

    fn scope(jar: Option<Vec<&str>>, host: &str, path: &str, tls: bool) -> JarScope {
        JarScope {
            jar: Arc::new(Jar {
                route: "app".to_owned(),
                names: jar.map(|n| n.into_iter().map(str::to_owned).collect()),
                adopt: vec!["APPSESSID".to_owned()],
            }),
            host: host.to_owned(),
            path: path.to_owned(),
            tls,
            cross_site: false,
            navigation: true,
            adopted: None,
        }
    }

    fn response(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::SET_COOKIE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn session_with(changes: &[Change]) -> Session {
        let mut s = Session::new(SessionKey::from("k"), 0);
        let rejected = s.apply(changes, &Limits::default());
        assert!(rejected.is_empty(), "{rejected:?}");
        s
    }

    fn cookie_sent(scope: &JarScope, s: &Session, client: Option<&str>, now: u64) -> String {
        let mut h = HeaderMap::new();
        if let Some(c) = client {
            h.insert(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        attach(&mut h, scope, Some(s), now);
        h.get(header::COOKIE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn a_kept_cookie_goes_back_to_its_path_and_host_only() {
        let sc = scope(None, "shop.example", "/cart/add", false);
        let mut h = response(&["APP=abc; Path=/cart; HttpOnly", "T=1"]);
        let c = capture(&mut h, &sc, None, 1000);
        assert!(
            h.get(header::SET_COOKIE).is_none(),
            "nothing reaches the client"
        );
        assert_eq!(c.refused, 0);
        let s = session_with(&c.changes);
        assert_eq!(cookie_sent(&sc, &s, None, 2000), "APP=abc; T=1");
        // Another path: only the one whose default path (`/cart`) is not covered... neither.
        let other = scope(None, "shop.example", "/about", false);
        assert_eq!(cookie_sent(&other, &s, None, 2000), "");
        // Another host: none (host-only cookies).
        let host = scope(None, "other.example", "/cart/x", false);
        assert_eq!(cookie_sent(&host, &s, None, 2000), "");
        // `/cartx` is not under `/cart`.
        let near = scope(None, "shop.example", "/cartx", false);
        assert_eq!(cookie_sent(&near, &s, None, 2000), "");
    }

    #[test]
    fn expiry_and_deletion_are_honoured() {
        let sc = scope(None, "h", "/", false);
        let c = capture(
            &mut response(&[
                "A=1; Max-Age=10",
                "B=2; Expires=Wed, 01 Jan 2100 00:00:00 GMT",
            ]),
            &sc,
            None,
            1_000,
        );
        let s = session_with(&c.changes);
        assert_eq!(cookie_sent(&sc, &s, None, 5_000), "A=1; B=2");
        // A's ten seconds are over.
        assert_eq!(cookie_sent(&sc, &s, None, 11_001), "B=2");
        // Max-Age=0 and a past Expires delete.
        let del = capture(
            &mut response(&[
                "B=; Max-Age=0",
                "A=x; Expires=Thu, 01 Jan 1970 00:00:01 GMT",
            ]),
            &sc,
            Some(&s),
            12_000,
        );
        assert!(
            del.changes.iter().all(|c| matches!(c, Change::Unset(_))),
            "{del:?}"
        );
        let mut s = s;
        s.apply(&del.changes, &Limits::default());
        assert_eq!(cookie_sent(&sc, &s, None, 12_000), "");
        assert!(kept_names(&s).is_empty());
    }

    #[test]
    fn secure_cookies_need_tls_both_ways_and_strict_ones_stay_home() {
        let plain = scope(None, "h", "/", false);
        let c = capture(&mut response(&["S=1; Secure"]), &plain, None, 0);
        assert_eq!(c.refused, 1, "a Secure cookie over plain HTTP is refused");
        assert!(c.changes.is_empty());
        let tls = scope(None, "h", "/", true);
        let c = capture(
            &mut response(&["S=1; Secure", "X=2; SameSite=Strict"]),
            &tls,
            None,
            0,
        );
        let s = session_with(&c.changes);
        assert_eq!(cookie_sent(&tls, &s, None, 1), "S=1; X=2");
        assert_eq!(cookie_sent(&plain, &s, None, 1), "X=2");
        let mut cross = tls.clone();
        cross.cross_site = true;
        assert_eq!(cookie_sent(&cross, &s, None, 1), "S=1");
    }

    #[test]
    fn a_domain_must_be_the_host_or_a_parent_of_it() {
        let sc = scope(None, "a.shop.example", "/", false);
        let c = capture(
            &mut response(&[
                "P=1; Domain=.shop.example",
                "Q=1; Domain=evil.example",
                "R=1; Domain=example",
                "S=1; Domain=b.a.shop.example",
            ]),
            &sc,
            None,
            0,
        );
        assert_eq!(c.refused, 3);
        let s = session_with(&c.changes);
        assert_eq!(cookie_sent(&sc, &s, None, 1), "P=1");
        let sibling = scope(None, "b.shop.example", "/", false);
        assert_eq!(cookie_sent(&sibling, &s, None, 1), "P=1");
        let ip = scope(None, "127.0.0.1", "/", false);
        let c = capture(&mut response(&["I=1; Domain=0.0.1"]), &ip, None, 0);
        assert_eq!(c.refused, 1);
    }

    #[test]
    fn named_jar_keeps_only_its_names_and_passes_the_rest() {
        let sc = scope(Some(vec!["JSESSIONID"]), "h", "/", false);
        let mut h = response(&["JSESSIONID=s1; Path=/", "theme=dark", "nameless"]);
        let c = capture(&mut h, &sc, None, 0);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        // A nameless cookie could be anything to a browser: not passed.
        assert_eq!(left, ["theme=dark"]);
        assert_eq!((c.changes.len(), c.refused), (1, 1));
    }

    #[test]
    fn a_client_cannot_plant_a_kept_cookie_in_any_spelling() {
        let sc = scope(Some(vec!["PHP_SESSID"]), "h", "/", false);
        let s = session_with(&capture(&mut response(&["PHP_SESSID=real"]), &sc, None, 0).changes);
        for planted in [
            "PHP_SESSID=evil",
            "php_sessid=evil",
            "PHP.SESSID=evil",
            "PHP SESSID=evil",
            "PHP[SESSID=evil",
            "PHP%5FSESSID=evil",
            " PHP_SESSID =evil",
            "a=1, PHP_SESSID=evil",
            "a=1 PHP_SESSID=evil",
            "+PHP_SESSID=evil",
            "%20PHP_SESSID=evil",
            "PHP+SESSID=evil",
            "PHP_SESSID",
        ] {
            let sent = cookie_sent(&sc, &s, Some(&format!("theme=dark; {planted}")), 1);
            assert_eq!(sent, "PHP_SESSID=real; theme=dark", "{planted}");
        }
        // Without names, the jar owns every cookie: the client's go.
        let all = scope(None, "h", "/", false);
        assert_eq!(
            cookie_sent(&all, &s, Some("theme=dark"), 1),
            "PHP_SESSID=real"
        );
    }

    #[test]
    fn every_cookie_header_is_judged_as_http2_sends_them_one_per_cookie() {
        let sc = scope(Some(vec!["SID"]), "h", "/", false);
        let s = session_with(&capture(&mut response(&["SID=real"]), &sc, None, 0).changes);
        let mut h = HeaderMap::new();
        for c in ["theme=dark", "sid=evil", "a=1", "S%49D=evil"] {
            h.append(header::COOKIE, HeaderValue::from_static(c));
        }
        attach(&mut h, &sc, Some(&s), 1);
        let sent: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(sent, ["SID=real; theme=dark; a=1"]);
    }

    #[test]
    fn cookies_a_header_cannot_carry_back_are_refused() {
        let sc = scope(None, "h", "/", false);
        let long = format!("{}=1", "n".repeat(300));
        let c = capture(
            &mut response(&["a b=1", "c=x\\y", long.as_str(), "ok=1"]),
            &sc,
            None,
            0,
        );
        assert_eq!(c.refused, 3, "{c:?}");
        assert_eq!(c.changes.len(), 1);
    }

    #[test]
    fn kept_cookies_are_no_backend_attribute() {
        let sc = scope(None, "h", "/", false);
        let c = capture(&mut response(&["A=1"]), &sc, None, 0);
        let Change::Set(name, _) = &c.changes[0] else {
            panic!("{c:?}")
        };
        assert!(is_jar_attribute(name.as_bytes()));
        assert!(!crate::session::contract::valid_name(name));
    }

    #[test]
    fn backend_cookies_named_like_ours_go_in_any_case() {
        let mut h = response(&[
            "SG=x; Path=/",
            "sg_probe=1",
            "__host-sg=y",
            "sg",
            "=sg=T; Path=/deep",
            " = sg=T",
            "app=1",
        ]);
        let gone = drop_named_like(&mut h, &["sg", "sg_probe", "__Host-sg", "__Host-sg_probe"]);
        assert_eq!(gone, 6);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["app=1"]);
    }

    #[test]
    fn a_new_or_changed_kept_value_renews_but_a_new_expiry_does_not() {
        let sc = scope(None, "h", "/", false);
        let first = capture(&mut response(&["ID=1; Max-Age=60"]), &sc, None, 0).changes;
        let s = session_with(&first);
        let empty = Session::new(SessionKey::from("k"), 0);
        assert!(renews(&first, &empty));
        let same = capture(&mut response(&["ID=1; Max-Age=90"]), &sc, Some(&s), 10).changes;
        assert!(!renews(&same, &s));
        let other = capture(&mut response(&["ID=2"]), &sc, Some(&s), 10).changes;
        assert!(renews(&other, &s));
        let gone = capture(&mut response(&["ID=; Max-Age=0"]), &sc, Some(&s), 10).changes;
        assert!(!renews(&gone, &s));
    }

    #[test]
    fn an_adopted_cookie_reaches_the_backend_and_is_kept_unless_the_backend_answers_it() {
        let mut sc = scope(None, "h", "/x", false);
        let mut req = HeaderMap::new();
        req.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; APPSESSID=abc.n1"),
        );
        sc.adopted = adoptable(&req, &sc);
        assert_eq!(sc.adopted, Some(("APPSESSID".into(), "abc.n1".into())));
        attach(&mut req, &sc, None, 0);
        assert_eq!(req[header::COOKIE], "APPSESSID=abc.n1");
        let c = capture(&mut HeaderMap::new(), &sc, None, 0);
        let s = session_with(&c.changes);
        let back = scope(None, "h", "/y", false);
        assert_eq!(cookie_sent(&back, &s, None, 1), "APPSESSID=abc.n1");
        assert_eq!(route_hints(&s, &sc.jar), [b"n1".as_slice()]);
        // The backend deleted it: not kept.
        let c = capture(&mut response(&["APPSESSID=; Max-Age=0"]), &sc, None, 0);
        assert!(matches!(c.changes.as_slice(), [Change::Unset(_)]), "{c:?}");
        // Another site's request adopts nothing; nor a name in another case.
        let mut cross = sc.clone();
        cross.cross_site = true;
        assert_eq!(adoptable(&req_with("APPSESSID=abc"), &cross), None);
        assert_eq!(adoptable(&req_with("appsessid=abc"), &sc), None);
    }

    fn req_with(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn each_routes_backend_has_its_own_cookies() {
        let a = scope(None, "h", "/admin", false);
        let mut b = scope(None, "h", "/admin", false);
        b.jar = Arc::new(Jar {
            route: "other".to_owned(),
            ..(*a.jar).clone()
        });
        let from_a = capture(&mut response(&["SID=a; Path=/admin"]), &a, None, 0).changes;
        let from_b = capture(&mut response(&["SID=b; Path=/admin"]), &b, None, 0).changes;
        let mut s = session_with(&from_a);
        s.apply(&from_b, &Limits::default());
        assert_eq!(cookie_sent(&a, &s, None, 1), "SID=a");
        assert_eq!(cookie_sent(&b, &s, None, 1), "SID=b");
    }

    #[test]
    fn a_huge_max_age_is_capped_not_read_as_zero_and_lax_stays_home_unless_navigating() {
        let mut sc = scope(None, "h", "/", false);
        let c = capture(
            &mut response(&["A=1; Max-Age=99999999999999999999"]),
            &sc,
            None,
            0,
        );
        let s = session_with(&c.changes);
        assert_eq!(cookie_sent(&sc, &s, None, 1), "A=1");
        sc.cross_site = true;
        sc.navigation = false;
        assert_eq!(cookie_sent(&sc, &s, None, 1), "", "Lax: no cross-site POST");
        sc.navigation = true;
        assert_eq!(cookie_sent(&sc, &s, None, 1), "A=1");
    }

    #[test]
    fn an_unreadable_line_naming_a_kept_cookie_is_refused_not_passed() {
        let sc = scope(Some(vec!["JSESSIONID"]), "h", "/", false);
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_bytes(b"JSESSIONID=SECRET; Path=/caf\xc3\xa9").unwrap(),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_bytes(b"other=1; Path=/caf\xc3\xa9").unwrap(),
        );
        let c = capture(&mut h, &sc, None, 0);
        assert_eq!(c.refused, 1);
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 1);
        assert!(h[header::SET_COOKIE].as_bytes().starts_with(b"other="));
    }

    #[test]
    fn client_spelling_decodes_once() {
        assert_eq!(client_spelling("A%2542"), "a%42");
        assert_eq!(client_spelling("x%zz"), "x%zz");
    }
}
