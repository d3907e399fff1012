//! Whose sessions they are: the subject (the attribute `sessions.subject` names, `user` by
//! default), an index from a subject to its sessions, and what each session records of the
//! client that made it.
//!
//! The index is the store's ([`SubjectIndex`]): a map in the memory store, a sorted set per
//! subject in Redis (`redis::subjects`), each of whose entries lives as long as its session
//! may and no longer. An index is a hint, never the truth: every session it names is read and
//! its subject checked again before it is listed or ended, so a stale entry (a session that
//! ended, or changed hands, between two writes) costs a read and is dropped, never obeyed.
//! The sealed-cookie store keeps no index: its sessions are in clients' cookies.

use std::future::Future;
use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;

use super::store::{Session, StoreError};
use super::token::StoreId;
use crate::config::OnLimit;

/// The attribute that holds what a session records of its client (see [`Meta`]). Its name
/// starts with `~`, which no backend directive can write and no contract header carries.
pub const META: &str = "~meta";

/// Most sessions of one subject listed (or ended) at once: a subject that a flood of logins
/// shares must not make one call read without bound.
pub const MAX_LISTED: usize = 10_000;

/// Longest User-Agent kept, in characters: enough to tell a browser and its platform apart.
const AGENT_CHARS: usize = 96;

/// What a session records of the client that made it (or last logged in through it): its
/// address (after trusted proxies), its User-Agent (shortened) and how it carries its token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    /// `cookie`, `url`, or `auto` (both went out: the next request tells).
    pub tracking: String,
    /// The client's address.
    pub client: String,
    /// Its User-Agent, shortened to printable ASCII.
    pub agent: String,
    /// When it was written (Unix ms): the session's login, by which `max_per_subject` tells
    /// older sessions from newer ones (0: not known, older than any).
    pub login_ms: u64,
}

impl Meta {
    /// The value of [`META`]: `1`, then the tracking, the address, the login time and the
    /// agent, tab-separated (the agent is last: it is the only part that could hold anything
    /// but a word).
    pub fn encode(&self) -> String {
        format!(
            "1\t{}\t{}\t{}\t{}",
            self.tracking, self.client, self.login_ms, self.agent
        )
    }

    /// What `session` records (empty parts when it records nothing: a session made before
    /// this existed, or imported).
    pub fn of(session: &Session) -> Meta {
        let Some(v) = session.attr(META) else {
            return Meta::default();
        };
        let mut parts = v.splitn(5, '\t');
        let _version = parts.next();
        Meta {
            tracking: parts.next().unwrap_or_default().to_owned(),
            client: parts.next().unwrap_or_default().to_owned(),
            login_ms: parts.next().and_then(|t| t.parse().ok()).unwrap_or(0),
            agent: parts.next().unwrap_or_default().to_owned(),
        }
    }
}

/// A User-Agent as a session keeps it: printable ASCII only (anything else, a tab included,
/// becomes `?`), at most [`AGENT_CHARS`] characters, `…` where it was cut.
pub fn short_agent(ua: Option<&HeaderValue>) -> String {
    let mut out = String::new();
    push_agent(&mut out, ua);
    out
}

fn push_agent(out: &mut String, ua: Option<&HeaderValue>) {
    let Some(ua) = ua else { return };
    let bytes = ua.as_bytes();
    out.extend(bytes.iter().take(AGENT_CHARS).map(|&b| {
        if (0x20..0x7f).contains(&b) {
            char::from(b)
        } else {
            '?'
        }
    }));
    if bytes.len() > AGENT_CHARS {
        out.push('…');
    }
}

/// The value of [`META`] for a login now, written straight into one string (this is every
/// login's work: no `format!`, an IPv4 address by its octets).
pub fn record(
    tracking: &str,
    client: Option<IpAddr>,
    agent: Option<&HeaderValue>,
    login_ms: u64,
) -> String {
    let mut out = String::with_capacity(40 + AGENT_CHARS);
    let mut num = itoa::Buffer::new();
    out.push_str("1\t");
    out.push_str(tracking);
    out.push('\t');
    match client {
        Some(IpAddr::V4(v4)) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(num.format(*octet));
            }
        }
        Some(IpAddr::V6(v6)) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
        None => {}
    }
    out.push('\t');
    out.push_str(num.format(login_ms));
    out.push('\t');
    push_agent(&mut out, agent);
    out
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` (read from the right, as proxies append) that is not itself
/// a trusted proxy. `xff` is the header as the gateway forwards it (the peer appended).
pub fn client_address(peer: IpAddr, xff: Option<&HeaderValue>, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let Some(list) = xff.and_then(|v| v.to_str().ok()) else {
        return peer;
    };
    let mut last = peer;
    for hop in list.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A hop that is not an address: nothing to its left can be trusted.
            return last;
        };
        last = ip;
        if !trusted.iter().any(|n| n.contains(&ip)) {
            return ip;
        }
    }
    last
}

/// When the index may forget `session`: when it idles out, or reaches its absolute timeout,
/// whichever comes first (Unix ms).
pub fn deadline(
    session: &Session,
    idle: std::time::Duration,
    absolute: std::time::Duration,
) -> u64 {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    session
        .last_seen_ms
        .saturating_add(ms(idle))
        .min(session.created_ms.saturating_add(ms(absolute)))
}

/// Of a subject's sessions (`own` among them), those a login past `max` ends: as many as it
/// takes to get back to `max`, chosen by `policy`, never `own`, and never one that logged in
/// after `own` (two logins at once, each counting the other, must not end each other: the
/// later one ends the earlier).
pub fn over_limit(
    sessions: &[(StoreId, Session)],
    own: &StoreId,
    max: usize,
    policy: OnLimit,
) -> Vec<usize> {
    if sessions.len() <= max {
        return Vec::new();
    }
    let login = |s: &Session| (Meta::of(s).login_ms, s.key_raw().to_vec());
    let Some(own_login) = sessions
        .iter()
        .find(|(id, _)| id == own)
        .map(|(_, s)| login(s))
    else {
        return Vec::new();
    };
    let mut others: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i].0 != *own && login(&sessions[i].1) < own_login)
        .collect();
    others.sort_by_key(|&i| {
        let s = &sessions[i].1;
        match policy {
            OnLimit::EvictOldestIdle => (s.last_seen_ms, s.created_ms),
            OnLimit::EvictOldest => (s.created_ms, s.last_seen_ms),
        }
    });
    let excess = sessions.len() - max;
    others.truncate(excess);
    others
}

/// How sessions are indexed by subject: the attribute that names it, and the timeouts an
/// index entry lives by.
#[derive(Debug, Clone)]
pub struct Owners {
    /// `sessions.subject`.
    pub attribute: String,
    /// The idle and absolute timeouts.
    pub idle: std::time::Duration,
    /// See `idle`.
    pub absolute: std::time::Duration,
}

impl Owners {
    /// Indexes session `s` under `id` by its subject, if it has one (a session that arrives
    /// whole: imported, or moved from another store). A failure is logged: the session
    /// works without its entry, and is indexed again at its next login.
    pub async fn note(&self, store: &impl SubjectIndex, id: &StoreId, s: &Session) {
        let Some(subject) = s.attr(&self.attribute).filter(|v| !v.is_empty()) else {
            return;
        };
        if let Err(e) = store
            .index(subject, id, deadline(s, self.idle, self.absolute))
            .await
        {
            tracing::warn!(error = %e, "subject index entry not written");
        }
    }
}

/// A store that finds a subject's sessions without a scan.
pub trait SubjectIndex {
    /// Notes that session `id` belongs to `subject` until `until_ms` (Unix ms; a later call
    /// extends it).
    fn index(
        &self,
        subject: &str,
        id: &StoreId,
        until_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets that session `id` belongs to `subject`.
    fn unindex(
        &self,
        subject: &str,
        id: &StoreId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many sessions the index holds for `subject` (not read again: at least as many as
    /// it has; a login under `max_per_subject` lists them only when this is over the limit).
    fn count(&self, subject: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// The live sessions (own ids: no alias, no retired id) whose subject attribute `name`
    /// is `subject`, each read again, at most [`MAX_LISTED`] of them; index entries that no
    /// longer hold are dropped.
    fn of_subject(
        &self,
        name: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<(StoreId, Session)>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(created: u64, last: u64) -> Session {
        logged_in(created, last, created)
    }

    /// A session created at `created`, last used at `last`, logged in at `login`.
    fn logged_in(created: u64, last: u64, login: u64) -> Session {
        let meta = Meta {
            login_ms: login,
            ..Meta::default()
        };
        let mut s = Session::from_parts(
            &format!("k{created}"),
            [(META, meta.encode().as_str())],
            created,
            last,
        );
        s.last_seen_ms = last;
        s
    }

    fn id(n: u8) -> StoreId {
        StoreId::from_bytes([n; 16])
    }

    #[test]
    fn the_session_that_logs_in_is_never_the_one_evicted() {
        // Own is the oldest by both measures (but logged in last), and still stays.
        let s = vec![
            (id(1), logged_in(1, 1, 100)),
            (id(2), at(5, 50)),
            (id(3), at(9, 20)),
        ];
        assert_eq!(over_limit(&s, &id(1), 2, OnLimit::EvictOldestIdle), [2]);
        assert_eq!(over_limit(&s, &id(1), 2, OnLimit::EvictOldest), [1]);
        assert_eq!(over_limit(&s, &id(1), 1, OnLimit::EvictOldest), [1, 2]);
        assert!(over_limit(&s, &id(1), 3, OnLimit::EvictOldest).is_empty());
    }

    #[test]
    fn two_logins_at_once_never_end_each_other() {
        // A logged in at 10, B at 11, each sees the other: only B's login ends A.
        let s = vec![(id(1), logged_in(1, 1, 10)), (id(2), logged_in(2, 2, 11))];
        assert!(over_limit(&s, &id(1), 1, OnLimit::EvictOldestIdle).is_empty());
        assert_eq!(over_limit(&s, &id(2), 1, OnLimit::EvictOldestIdle), [0]);
    }

    #[test]
    fn a_forwarded_address_counts_only_through_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let xff = HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.9, 10.0.0.1");
        assert_eq!(
            client_address(peer, Some(&xff), &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // Not trusted: the peer, whatever the header says.
        let stranger: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(client_address(stranger, Some(&xff), &trusted), stranger);
        // A hop that is no address stops the walk.
        let junk = HeaderValue::from_static("203.0.113.7, junk, 10.0.0.1");
        assert_eq!(client_address(peer, Some(&junk), &trusted), peer);
    }

    #[test]
    fn an_agent_is_kept_short_and_printable() {
        let ua = HeaderValue::from_bytes(b"Mozilla/5.0\t(X11)\xff").unwrap();
        assert_eq!(short_agent(Some(&ua)), "Mozilla/5.0?(X11)?");
        let long = HeaderValue::from_str(&"a".repeat(200)).unwrap();
        assert_eq!(short_agent(Some(&long)).chars().count(), AGENT_CHARS + 1);
        let meta = Meta {
            tracking: "url".into(),
            client: "::1".into(),
            agent: "x\ty".into(),
            login_ms: 17,
        };
        let s = Session::from_parts("k", [(META, meta.encode().as_str())], 0, 0);
        assert_eq!(Meta::of(&s), meta);
        // The login path's writer says the same as `encode`.
        let ua = HeaderValue::from_static("Mozilla/5.0");
        for ip in ["203.0.113.7", "::1", "2001:db8::7"] {
            let client: IpAddr = ip.parse().unwrap();
            let written = record("cookie", Some(client), Some(&ua), 99);
            let expected = Meta {
                tracking: "cookie".into(),
                client: client.to_string(),
                agent: "Mozilla/5.0".into(),
                login_ms: 99,
            };
            assert_eq!(written, expected.encode());
        }
    }
}
