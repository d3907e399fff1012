//! Rules across sections: what one section says that another must agree with.
//!
//! Each section's reader checks its own settings; these run once every section is read, so
//! that a reader never needs another section. Routes that failed to read are checked too
//! (from their [`RouteRefs`]), so that every problem is still reported at once.

use std::collections::BTreeSet;

use super::error::Problems;
use super::node::Pos;
use super::routes::RouteRefs;
use super::sessions::{self, SessionsConfig, StoreConfig, Tracking};
use super::{AdminConfig, Config, ListenerConfig, UpstreamConfig};

/// Checks every cross-section rule of `config`; `routes` are the references of each route
/// entry, `root` where the document starts.
pub(super) fn check(config: &Config, routes: &[RouteRefs], root: Pos, p: &mut Problems) {
    check_admin_bind(config.admin.as_ref(), &config.listeners, root, p);
    check_route_upstreams(routes, &config.upstreams, p);
    check_route_sessions_have_a_section(routes, config.sessions.as_ref(), p);
    check_sealed_route_sessions(routes, config.sessions.as_ref(), p);
    check_jar_names(routes, config.sessions.as_ref(), p);
}

/// A jar's `names` cannot name the gateway's own cookies (the session cookie, its probe, on
/// either kind of listener, in any case): a backend cookie so named is dropped, never kept.
fn check_jar_names(routes: &[RouteRefs], sessions: Option<&SessionsConfig>, p: &mut Problems) {
    let Some(s) = sessions else { return };
    let base = &s.cookie.name;
    let ours = [
        base.clone(),
        format!("{base}_probe"),
        format!("__Host-{base}"),
        format!("__Host-{base}_probe"),
    ];
    for r in routes.iter().filter_map(|r| r.session.as_ref()) {
        if let sessions::BackendCookies::Jar(Some(names)) = &r.value.backend_cookies {
            for n in names {
                if ours.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                    p.push(
                        r.pos,
                        &format!("{}.backend_cookies.names", r.path),
                        format!("{n:?} is the gateway's own cookie: it is never kept or passed"),
                    );
                }
            }
        }
    }
}

/// The admin listener cannot bind a client listener's address (port 0 picks a free port, so
/// it never clashes). Reported at the document's start, as it always was.
fn check_admin_bind(
    admin: Option<&AdminConfig>,
    listeners: &[ListenerConfig],
    root: Pos,
    p: &mut Problems,
) {
    if let Some(a) = admin
        && a.bind.port() != 0
        && listeners.iter().any(|l| l.bind == a.bind)
    {
        p.push(
            root,
            "admin.bind",
            format!("a listener already binds {}", a.bind),
        );
    }
}

/// A route's upstream must be one of `upstreams:` (those that were read).
fn check_route_upstreams(routes: &[RouteRefs], upstreams: &[UpstreamConfig], p: &mut Problems) {
    // Sorted, for a stable message.
    let known: BTreeSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    for u in routes.iter().filter_map(|r| r.upstream.as_ref()) {
        if !known.contains(u.value.as_str()) {
            let names: Vec<&str> = known.iter().copied().collect();
            p.push(
                u.pos,
                &u.path,
                format!(
                    "unknown upstream {:?} (defined: {})",
                    u.value,
                    names.join(", ")
                ),
            );
        }
    }
}

/// A route's `session:` mapping needs the top-level `sessions:` section, which holds the
/// secret, store and cookie every route's sessions use.
fn check_route_sessions_have_a_section(
    routes: &[RouteRefs],
    sessions: Option<&SessionsConfig>,
    p: &mut Problems,
) {
    if sessions.is_some() {
        return;
    }
    for s in routes.iter().filter_map(|r| r.session.as_ref()) {
        p.push(
            s.pos,
            &s.path,
            "a route session needs the top-level sessions: section",
        );
    }
}

/// With the sealed cookie store, the whole session travels in the cookie: a route can carry
/// its token neither in URLs (`tracking: url` or `auto`) nor to siblings (`share_with`, whose
/// handoff goes through a server store).
fn check_sealed_route_sessions(
    routes: &[RouteRefs],
    sessions: Option<&SessionsConfig>,
    p: &mut Problems,
) {
    if !sessions.is_some_and(|s| matches!(s.store, StoreConfig::Cookie { .. })) {
        return;
    }
    for s in routes.iter().filter_map(|r| r.session.as_ref()) {
        // Both at the same place: pushed in this order, kept in it by the stable sort.
        if matches!(s.value.tracking, Some(Tracking::Url | Tracking::Auto)) {
            p.push(s.pos, &s.path, sessions::SEALED_NO_URL);
        }
        if !s.value.share_with.is_empty() {
            p.push(
                s.pos,
                &s.path,
                "share_with hands a session over through the store; the cookie store has none",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{BASE, load, problems};

    #[test]
    fn the_admin_listener_cannot_bind_a_listeners_address() {
        let errs = problems(&format!("{BASE}admin: {{ bind: \"127.0.0.1:8080\" }}\n"));
        assert_eq!(
            errs,
            ["gw.yaml:1:1: admin.bind: a listener already binds 127.0.0.1:8080"]
        );
        assert!(load(&format!("{BASE}admin: {{ bind: \"127.0.0.1:9900\" }}\n")).is_ok());
    }

    #[test]
    fn dangling_upstream_reference_is_reported() {
        let errs = problems(&BASE.replace("upstream: app }", "upstream: ap }"));
        assert!(
            errs[0].contains("routes[0].upstream: unknown upstream \"ap\" (defined: app)"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_route_that_fails_to_read_still_has_its_references_checked() {
        let errs = problems(&BASE.replace(
            "match: { path_prefix: / }, upstream: app }",
            "upstream: ap, session: { headers: {} } }",
        ));
        assert_eq!(
            errs,
            [
                "gw.yaml:7:5: routes[0].match: missing required key",
                "gw.yaml:7:28: routes[0].upstream: unknown upstream \"ap\" (defined: app)",
                "gw.yaml:7:41: routes[0].session: a route session needs the top-level sessions: section",
            ]
        );
    }

    #[test]
    fn a_route_session_without_the_sessions_section_is_an_error() {
        let text = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { headers: {} } }",
        );
        let errs = problems(&text);
        assert!(
            errs[0].contains("routes[0].session: a route session needs"),
            "{errs:?}"
        );
    }

    #[test]
    fn the_cookie_store_is_read_and_url_tracking_or_share_with_is_rejected_with_it() {
        let sealed = "sessions:\n  store: { kind: cookie, cookie: { max_bytes: 2000 } }\n";
        let s = load(&(BASE.to_owned() + sealed)).unwrap().sessions.unwrap();
        assert_eq!(s.store, StoreConfig::Cookie { max_bytes: 2000 });
        let errs = problems(&(BASE.to_owned() + sealed + "  tracking: auto\n")).join("\n");
        assert!(
            errs.contains("sessions.tracking: the cookie store keeps the whole session"),
            "{errs}"
        );
        let route = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { tracking: url, share_with: [b.example] } }",
        );
        let errs = problems(&(route + sealed)).join("\n");
        assert!(
            errs.contains("routes[0].session: the cookie store"),
            "{errs}"
        );
        assert!(errs.contains("routes[0].session: share_with"), "{errs}");
        let errs = problems(
            &(BASE.to_owned()
                + "sessions:\n  store: { kind: cookie, cookie: { max_bytes: 9000 } }\n"),
        )
        .join("\n");
        assert!(errs.contains("sessions.store.cookie.max_bytes"), "{errs}");
    }
}
