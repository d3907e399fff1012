//! The header contract with backends (ARCHITECTURE §4), as pure functions on header maps.
//!
//! Requests: every client-sent header with the prefix and every mapped header name is removed
//! first (any case, repeated, with `_` or `.` for `-`: CGI gateways and frameworks read
//! `X_Session_Key` as `X-Session-Key`), then the gateway's own are set. Responses: the
//! backend's directives are read and always removed, whatever the status, in every spelling.

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::{Arc, Mutex, RwLock};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::store::{Change, Session};

/// What the gateway tells a backend about the request's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No session (none presented, or the token was refused).
    None,
    /// A live session.
    Active,
    /// A valid token whose session is gone or past its timeouts.
    Expired,
}

impl Status {
    /// As sent in `X-Session-Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Active => "active",
            Status::Expired => "expired",
        }
    }
}

/// The header names of one configuration: the prefix (lower case, e.g. `x-session-`) and the
/// route's mapped headers (attribute → header).
#[derive(Debug, Clone)]
pub struct Names {
    /// `X-Session-Attr-<name>` by attribute name: building a header name (format, validate,
    /// allocate) for every attribute of every request showed up in profiles, and so did
    /// SipHash on the lookup. Fx is enough here: the names are few (bounded) and come from
    /// backends, not clients.
    attr_names: Arc<RwLock<FxHashMap<Box<[u8]>, HeaderName>>>,
    prefix: String,
    status: HeaderName,
    key: HeaderName,
    attr_prefix: String,
    set: HeaderName,
    unset: HeaderName,
    action: HeaderName,
}

impl Names {
    /// Names under `prefix` (any case; it should end with `-`).
    ///
    /// # Errors
    /// The prefix does not make valid header names.
    pub fn new(prefix: &str) -> Result<Names, String> {
        let prefix = prefix.to_ascii_lowercase();
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .map(lasting)
                .map_err(|_| format!("{prefix:?} does not make valid header names"))
        };
        Ok(Names {
            status: name("status")?,
            key: name("key")?,
            set: name("set")?,
            unset: name("unset")?,
            action: name("action")?,
            attr_prefix: format!("{prefix}attr-"),
            attr_names: Arc::default(),
            prefix,
        })
    }

    /// The header an attribute is sent as, when none is remembered: made from the name.
    fn new_attr_header(&self, attr: &[u8]) -> Option<HeaderName> {
        HeaderName::from_bytes(&[self.attr_prefix.as_bytes(), attr].concat()).ok()
    }

    /// Remembers the headers of `attrs`, up to a bound: backends choose the names, and a
    /// backend that makes up a new one per request must not grow memory.
    fn remember(&self, attrs: Vec<(&[u8], HeaderName)>) {
        const MAX_REMEMBERED: usize = 1024;
        // Full: checked under the read lock, so a backend that invents a name per request
        // does not take the write lock on every request.
        if self
            .attr_names
            .read()
            .map_or(true, |names| names.len() >= MAX_REMEMBERED)
        {
            return;
        }
        if let Ok(mut names) = self.attr_names.write() {
            for (attr, name) in attrs {
                if names.len() >= MAX_REMEMBERED {
                    break;
                }
                names.insert(Box::from(attr), lasting(name));
            }
        }
    }
}

/// `name` with bytes that live as long as the program, so that the clone each request makes
/// to insert it copies a pointer: a name built at run time shares a counted buffer, and each
/// clone and drop is an atomic operation on it (seven headers a session request). Names are
/// interned, so a name is kept once however often configurations are reloaded; past a bound
/// (backends choose attribute names), a name is returned as it is.
fn lasting(name: HeaderName) -> HeaderName {
    const MAX_INTERNED: usize = 4096;
    static INTERNED: Mutex<Option<FxHashSet<&'static str>>> = Mutex::new(None);
    let Ok(mut interned) = INTERNED.lock() else {
        return name;
    };
    let interned = interned.get_or_insert_with(FxHashSet::default);
    let kept = match interned.get(name.as_str()) {
        Some(kept) => *kept,
        None if interned.len() < MAX_INTERNED => {
            let kept: &'static str = Box::leak(Box::from(name.as_str()));
            interned.insert(kept);
            kept
        }
        None => return name,
    };
    // `kept` is the text of a valid name (lower case, legal bytes): `from_static` accepts it.
    HeaderName::from_static(kept)
}

/// Whether `name` (lower case) is one of ours in some spelling: under the prefix, or one of
/// `guarded`. Judged byte by byte, without building the name's normal form (this runs on
/// every header of every request): it says what comparing `name` and its normal form (each
/// byte not a letter or digit as `-`) would say (a unit test compares the two).
fn poses_as_ours(name: &str, names: &Names, guarded: &[HeaderName]) -> bool {
    let name = name.as_bytes();
    begins_with_spelled(name, names.prefix.as_bytes())
        || guarded.iter().any(|m| {
            m.as_str().len() == name.len() && begins_with_spelled(name, m.as_str().as_bytes())
        })
}

/// Whether `name` begins with `target` as a backend reads both: every byte that is not a
/// letter or digit standing for `-` (header names are ASCII). Both sides: a configured name
/// written with `_` (`X_Remote_User`) is one name with `X-Remote-User` to such a backend.
fn begins_with_spelled(name: &[u8], target: &[u8]) -> bool {
    let norm = |b: u8| if b.is_ascii_alphanumeric() { b } else { b'-' };
    name.get(..target.len())
        .is_some_and(|head| head.iter().zip(target).all(|(&n, &t)| norm(n) == norm(t)))
}

/// Whether `name` (lower case) is under the prefix, in any spelling.
pub fn under_prefix(name: &str, names: &Names) -> bool {
    poses_as_ours(name, names, &[])
}

/// Removes every header a client could use to pose as the gateway: those with the prefix and
/// those named in `guarded` (every header any route maps an attribute to), in any spelling.
pub fn strip_client_headers(headers: &mut HeaderMap, names: &Names, guarded: &[HeaderName]) {
    remove_where(headers, |n| poses_as_ours(n, names, guarded));
}

/// Removes every header under the prefix, in any spelling (a backend's directives on a route
/// without sessions, or a typo); `true` if there were any.
pub fn strip_prefixed(headers: &mut HeaderMap, names: &Names) -> bool {
    remove_where(headers, |n| under_prefix(n, names))
}

/// Removes the headers whose names `pick` selects; `true` if there were any. Most messages
/// carry none: one pass over the names, and no allocation.
fn remove_where(headers: &mut HeaderMap, pick: impl Fn(&str) -> bool) -> bool {
    // A plain scan first: most messages have nothing to remove, and the scan is cheaper
    // than collecting through a filter.
    if !headers.keys().any(|k| pick(k.as_str())) {
        return false;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| pick(k.as_str()))
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
    !doomed.is_empty()
}

/// Sets the session headers for the backend (after [`strip_client_headers`]). `mapped` pairs
/// an attribute with the header it is also sent as.
pub fn set_session_headers(
    headers: &mut HeaderMap,
    names: &Names,
    status: Status,
    session: Option<&Session>,
    mapped: &[(String, HeaderName)],
) {
    headers.insert(
        names.status.clone(),
        HeaderValue::from_static(status.as_str()),
    );
    let Some(session) = session else {
        return;
    };
    // Values share the session's buffer: no copy per header.
    if let Ok(v) = HeaderValue::from_maybe_shared(session.key_bytes()) {
        headers.insert(names.key.clone(), v);
    }
    headers.reserve(session.attr_count() + mapped.len());
    // One read of the remembered names for all attributes; those not known yet are made,
    // and remembered once the read is over.
    let mut unknown = Vec::new();
    {
        let known = names.attr_names.read().ok();
        for (attr, value) in session.attr_bytes() {
            // A kept backend cookie is the session's, not the backend's to read as a header.
            if super::jar::is_jar_attribute(attr) {
                continue;
            }
            let name = match known.as_ref().and_then(|k| k.get(attr)) {
                Some(name) => name.clone(),
                None => {
                    let Some(name) = names.new_attr_header(attr) else {
                        continue;
                    };
                    unknown.push((attr, name.clone()));
                    name
                }
            };
            let Ok(value) = HeaderValue::from_maybe_shared(value) else {
                continue;
            };
            // Every header with the prefix was stripped first: nothing to replace.
            headers.append(name, value);
        }
    }
    if !unknown.is_empty() {
        names.remember(unknown);
    }
    for (attr, header) in mapped {
        if let Some(v) = session
            .attr_bytes()
            .find(|(n, _)| *n == attr.as_bytes())
            .and_then(|(_, v)| HeaderValue::from_maybe_shared(v).ok())
        {
            headers.insert(header.clone(), v);
        }
    }
}

/// What a backend asked for in its response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// Attribute changes, in order.
    pub changes: Vec<Change>,
    /// `X-Session-Action: regenerate`.
    pub regenerate: bool,
    /// `X-Session-Action: destroy` (wins over everything else).
    pub destroy: bool,
    /// `X-Session-Action: end-others`: every other session of this session's subject ends
    /// ("log out my other devices").
    pub end_others: bool,
    /// Directives ignored, with why (for a warning; they never fail the request).
    pub ignored: Vec<String>,
}

impl Directives {
    /// Whether the backend asked for nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.regenerate && !self.destroy && !self.end_others
    }
}

/// A valid attribute name: `[a-z0-9-]{1,64}` (the rule the configuration checks too).
pub use crate::config::valid_attribute_name as valid_name;

/// Takes the directives out of a backend's response headers. They are removed whatever
/// happens next, so a client never sees them.
pub fn take_directives(headers: &mut HeaderMap, names: &Names) -> Directives {
    let mut d = Directives::default();
    // Most responses carry none: one pass over the names, rather than three lookups that
    // each hash a long name, and a second pass to strip.
    if !headers.keys().any(|n| under_prefix(n.as_str(), names)) {
        return d;
    }
    let sets: Vec<HeaderValue> = headers.get_all(&names.set).iter().cloned().collect();
    for v in sets {
        let Some((name, value)) = v.to_str().ok().and_then(|s| s.split_once('=')) else {
            d.ignored
                .push("a Set without name=value, or not text".to_owned());
            continue;
        };
        let name = name.trim();
        if !valid_name(name) {
            d.ignored.push(format!("bad attribute name {name:?}"));
            continue;
        }
        d.changes
            .push(Change::Set(name.to_owned(), value.trim().to_owned()));
    }
    for v in headers.get_all(&names.unset) {
        let Ok(list) = v.to_str() else {
            d.ignored.push("an Unset that is not text".to_owned());
            continue;
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if valid_name(name) {
                d.changes.push(Change::Unset(name.to_owned()));
            } else {
                d.ignored.push(format!("bad attribute name {name:?}"));
            }
        }
    }
    // Several actions may share a field, comma-separated (`regenerate, end-others`).
    for v in headers.get_all(&names.action) {
        let Ok(list) = v.to_str() else {
            d.ignored.push(format!("unknown action {v:?}"));
            continue;
        };
        for action in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match action.to_ascii_lowercase().as_str() {
                "regenerate" => d.regenerate = true,
                "destroy" => d.destroy = true,
                "end-others" => d.end_others = true,
                _ => d.ignored.push(format!("unknown action {action:?}")),
            }
        }
    }
    // Anything else under the prefix is ours too (a typo, another spelling, a future
    // directive): never let it reach the client.
    strip_prefixed(headers, names);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map as map;

    fn names() -> Names {
        Names::new("X-Session-").unwrap()
    }

    #[test]
    fn no_backend_directive_can_write_or_unset_what_the_gateway_keeps_for_itself() {
        // `~meta` (what a session records of its client) and `~jar;...` (kept cookies) are
        // the gateway's: no spelling of a Set or Unset reaches them.
        let mut h = map(&[
            ("x-session-set", "~meta=1\tcookie\t6.6.6.6\t0\tforged"),
            ("x-session-set", "%7Emeta=x"),
            ("x-session-set", " ~meta = x"),
            ("x-session-unset", "~meta, ~jar;app;=h;/;SID"),
            ("x-session-action", "End-Others , REGENERATE"),
        ]);
        let d = take_directives(&mut h, &names());
        assert!(d.changes.is_empty(), "{d:?}");
        assert_eq!(d.ignored.len(), 5, "{d:?}");
        // Actions are read in any case, several to a field.
        assert!(d.end_others && d.regenerate && !d.destroy);
    }

    #[test]
    fn forged_session_headers_are_stripped_in_any_spelling() {
        let mut h = map(&[
            ("X-Session-Key", "forged"),
            ("x-session-attr-user", "root"),
            ("X-SESSION-STATUS", "active"),
            ("x_session_attr_role", "admin"),
            ("x-session-attr-user", "again"),
            ("X-Remote-User", "root"),
            ("x_remote_user", "root"),
            ("x.session.key", "forged"),
            ("X-Remote_User", "root"),
            ("x-kept", "1"),
            ("x_kept_too", "1"),
        ]);
        let guarded = [HeaderName::from_static("x-remote-user")];
        strip_client_headers(&mut h, &names(), &guarded);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-kept", "x_kept_too"]);
    }

    #[test]
    fn attribute_headers_are_the_same_once_their_names_are_remembered_and_past_the_bound() {
        let names = names();
        // The first request makes the names, the second finds them remembered.
        let s = Session::from_parts("k1", [("role", "admin"), ("user", "alice")], 0, 0);
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            set_session_headers(&mut h, &names, Status::Active, Some(&s), &[]);
            assert_eq!(h["x-session-attr-role"], "admin");
            assert_eq!(h["x-session-attr-user"], "alice");
            assert_eq!(h.len(), 4);
        }
        // A backend that makes up names without end: memory stops growing at the bound, and
        // every name still makes its header.
        for i in 0..1100 {
            let name = format!("a{i}");
            let s = Session::from_parts("k1", [(name.as_str(), "v")], 0, 0);
            let mut h = HeaderMap::new();
            set_session_headers(&mut h, &names, Status::Active, Some(&s), &[]);
            assert_eq!(h[format!("x-session-attr-{name}").as_str()], "v");
        }
        assert_eq!(names.attr_names.read().unwrap().len(), 1024);
    }

    #[test]
    fn session_headers_carry_status_key_attributes_and_mapped_names() {
        let s = Session::from_parts("k1", [("user", "alice"), ("cart", "3")], 0, 0);
        let mut h = HeaderMap::new();
        let mapped = [("user".to_owned(), HeaderName::from_static("x-remote-user"))];
        set_session_headers(&mut h, &names(), Status::Active, Some(&s), &mapped);
        assert_eq!(h["x-session-status"], "active");
        assert_eq!(h["x-session-key"], "k1");
        assert_eq!(h["x-session-attr-user"], "alice");
        assert_eq!(h["x-session-attr-cart"], "3");
        assert_eq!(h["x-remote-user"], "alice");

        let mut h = HeaderMap::new();
        set_session_headers(&mut h, &names(), Status::Expired, None, &mapped);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-session-status"], "expired");
    }

    #[test]
    fn a_response_whose_only_directives_are_misspelled_applies_none_and_keeps_none() {
        // Nothing spelled exactly as ours: the one-pass check must still see these as ours.
        let mut h = map(&[
            ("x_session_set", "user=admin"),
            ("x.session.action", "destroy"),
            ("x-session_attr-role", "admin"),
            ("content-type", "text/html"),
        ]);
        let d = take_directives(&mut h, &names());
        assert!(d.changes.is_empty() && !d.destroy && !d.regenerate, "{d:?}");
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["content-type"]
        );
    }

    #[test]
    fn directives_are_read_and_removed() {
        let mut h = map(&[
            ("X-Session-Set", "user=alice"),
            ("x-session-set", "cart = 3 "),
            ("X-Session-Unset", "a, b"),
            ("X-Session-Action", "Regenerate"),
            ("X-Session-Typo", "x"),
            ("x_session_set", "user=other"),
            ("content-type", "text/html"),
        ]);
        let d = take_directives(&mut h, &names());
        assert_eq!(
            d.changes,
            [
                Change::Set("user".into(), "alice".into()),
                Change::Set("cart".into(), "3".into()),
                Change::Unset("a".into()),
                Change::Unset("b".into()),
            ]
        );
        assert!(d.regenerate && !d.destroy);
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["content-type"]
        );
    }

    #[test]
    fn bad_directives_are_ignored_not_fatal() {
        let mut h = map(&[
            ("X-Session-Set", "User=upper"),
            ("X-Session-Set", "no_underscores=1"),
            ("X-Session-Set", "novalue"),
            ("X-Session-Set", &format!("{}=long", "a".repeat(65))),
            ("X-Session-Set", "ok=1"),
            ("X-Session-Action", "explode"),
        ]);
        let d = take_directives(&mut h, &names());
        assert_eq!(d.changes, [Change::Set("ok".into(), "1".into())]);
        assert_eq!(d.ignored.len(), 5, "{:?}", d.ignored);
        assert!(!d.regenerate && !d.destroy);
        assert!(h.is_empty());
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let mut h = map(&[("X-Session-Set", "token=a=b==")]);
        let d = take_directives(&mut h, &names());
        assert_eq!(d.changes, [Change::Set("token".into(), "a=b==".into())]);
    }

    /// A header name as a backend may read it: `x_session_key`, `X.Session.Key` and
    /// `X-Session-Key` are one name to CGI gateways and many frameworks (every character that is
    /// not a letter or digit stands for `-`). `None` when the name has no such character (it is
    /// its own normal form: names come lower case).
    fn normalized(name: &str) -> Option<String> {
        name.bytes()
            .any(|b| !b.is_ascii_alphanumeric() && b != b'-')
            .then(|| {
                name.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect()
            })
    }

    #[test]
    fn a_guarded_name_written_with_underscores_is_guarded_in_every_spelling() {
        let names = Names::new("X-Session-").unwrap();
        let guarded = [HeaderName::from_static("x_remote_user")];
        for n in ["x-remote-user", "x_remote_user", "x.remote-user"] {
            assert!(poses_as_ours(n, &names, &guarded), "{n}");
        }
        assert!(!poses_as_ours("x-remote-users", &names, &guarded));
    }

    #[test]
    fn the_byte_wise_judgement_says_what_the_normal_form_would() {
        // The judgement as it was written before, on the name and on its normal form, with
        // the configured names taken in their normal form too.
        fn by_normal_form(name: &str, names: &Names, guarded: &[HeaderName]) -> bool {
            let norm = |n: &str| normalized(n).unwrap_or_else(|| n.to_owned());
            let prefix = norm(&names.prefix);
            let guarded: Vec<String> = guarded.iter().map(|g| norm(g.as_str())).collect();
            let looks = |n: &str| n.starts_with(&prefix) || guarded.iter().any(|m| m == n);
            looks(name) || normalized(name).is_some_and(|n| looks(&n))
        }
        let names = Names::new("X-Session-").unwrap();
        let guarded = [
            HeaderName::from_static("x-remote-user"),
            HeaderName::from_static("x_odd.name"),
        ];
        // Every name of up to six characters over an alphabet that spells the edges.
        let alphabet = ['x', '-', '_', '.', 's', 'e', 'r'];
        let mut checked = 0;
        let mut names_to_try: Vec<String> = vec![String::new()];
        for _ in 0..6 {
            let mut next = Vec::new();
            for n in &names_to_try {
                for c in alphabet {
                    next.push(format!("{n}{c}"));
                }
            }
            names_to_try.extend(next.iter().cloned());
            names_to_try = next;
            for n in &names_to_try {
                for full in [
                    n.clone(),
                    format!("x{n}session-key"),
                    format!("x-session{n}"),
                    format!("x{n}remote{n}user"),
                    format!("x{n}odd{n}name"),
                ] {
                    assert_eq!(
                        poses_as_ours(&full, &names, &guarded),
                        by_normal_form(&full, &names, &guarded),
                        "{full:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }
}
