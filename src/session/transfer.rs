//! Sessions moved between stores as JSON lines: an export of one store (the admin API's
//! `GET /sessions/export`, `sessiongate sessions export`, a memory store's snapshot at drain)
//! imported into another of any kind (`POST /sessions/import`, `sessiongate sessions import`,
//! the snapshot at start), so that sessions survive a move between regions, a change of store
//! or a restart of the memory store.
//!
//! A line holds a session's store id (a hash of its token, never the token: without the same
//! secret it opens nothing), its stable key, its attributes (kept backend cookies too) and its
//! times. One line:
//! `{"v":1,"id":"<32 hex>","key":"...","attrs":{"user":"alice"},"created_ms":1,"last_seen_ms":2}`.
//! The file holds what the sessions hold: keep it as the store is kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreId;
use super::store::{AdminStore, Limits, Session, StoreError};
use super::subjects::{Owners, SubjectIndex};

/// The format's version, in every line.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Line {
    v: u32,
    id: String,
    key: String,
    attrs: BTreeMap<String, String>,
    created_ms: u64,
    last_seen_ms: u64,
}

/// One session as a line (no newline).
pub fn to_line(id: &StoreId, s: &Session) -> String {
    let line = Line {
        v: VERSION,
        id: id.as_bytes().iter().map(|b| format!("{b:02x}")).collect(),
        key: s.key().to_owned(),
        attrs: s
            .attrs()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        created_ms: s.created_ms,
        last_seen_ms: s.last_seen_ms,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// A session from a line.
///
/// # Errors
/// The line is not one of this format (what is wrong, for the operator).
pub fn from_line(text: &str) -> Result<(StoreId, Session), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not a session line: {e}"))?;
    if line.v != VERSION {
        return Err(format!(
            "format version {} (this gateway reads {VERSION})",
            line.v
        ));
    }
    let mut id = [0u8; 16];
    if line.id.len() != 32 || !line.id.is_ascii() {
        return Err("id: 32 hex digits expected".to_owned());
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&line.id[2 * i..2 * i + 2], 16)
            .map_err(|_| "id: 32 hex digits expected".to_owned())?;
    }
    if line.key.is_empty() || line.key.len() > 255 || line.attrs.keys().any(|n| n.len() > 255) {
        return Err("key or attribute name empty or longer than 255 bytes".to_owned());
    }
    // Only names the gateway itself writes: a backend's (`[a-z0-9-]`), a kept cookie's, the
    // affinity pin.
    if let Some(bad) = line.attrs.keys().find(|n| {
        !(crate::config::valid_attribute_name(n)
            || n.starts_with("~jar;")
            || *n == super::jar::PIN
            || *n == super::subjects::META)
    }) {
        return Err(format!(
            "attribute name {bad:?} is not one the gateway writes"
        ));
    }
    if line.created_ms > line.last_seen_ms
        || line.last_seen_ms > super::store::unix_ms().saturating_add(60_000)
    {
        return Err("times: created after last use, or last use in the future".to_owned());
    }
    let session = Session::from_parts(
        &line.key,
        line.attrs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        line.created_ms,
        line.last_seen_ms,
    );
    Ok((StoreId::from_bytes(id), session))
}

/// Every live session of `store`, one line each.
///
/// # Errors
/// The store did not answer.
pub async fn export(store: &impl AdminStore) -> Result<String, StoreError> {
    let mut out = String::new();
    for (id, s) in store.export().await? {
        out.push_str(&to_line(&id, &s));
        out.push('\n');
    }
    Ok(out)
}

/// `s`, if it keeps the configured limits on session data (an import is held to them as a
/// backend's changes are).
fn within(limits: &Limits, s: Session) -> Result<Session, String> {
    let values = s.attrs().map(|(_, v)| v.len()).max().unwrap_or(0);
    if s.attr_count() > limits.max_attributes
        || values > limits.max_value_bytes
        || s.size() > limits.max_session_bytes
    {
        return Err("over the configured limits on session data".to_owned());
    }
    Ok(s)
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// Sessions written.
    pub imported: usize,
    /// Sessions already there (or ended there lately): left as they are.
    pub present: usize,
    /// Sessions past their idle or absolute timeout: not written.
    pub expired: usize,
    /// Lines that are no session, with their line numbers and what is wrong (the first 10).
    pub invalid: usize,
    /// The first problems, `line N: ...`.
    pub problems: Vec<String>,
}

/// Imports the sessions of `lines` into `store`, judging expiry by `idle` and `absolute` at
/// `now_ms`.
///
/// # Errors
/// The store did not answer (what was imported before stays).
pub async fn import(
    store: &(impl AdminStore + SubjectIndex),
    lines: &str,
    owners: &Owners,
    limits: &Limits,
    now_ms: u64,
) -> Result<Imported, StoreError> {
    let (idle, absolute) = (owners.idle, owners.absolute);
    let mut done = Imported::default();
    for (n, text) in lines.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let parsed = from_line(text).and_then(|(id, s)| within(limits, s).map(|s| (id, s)));
        let (id, session) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                done.invalid += 1;
                if done.problems.len() < 10 {
                    done.problems.push(format!("line {}: {e}", n + 1));
                }
                continue;
            }
        };
        if session.expired(now_ms, idle, absolute) {
            done.expired += 1;
        } else if store.import(&id, &session).await? {
            owners.note(store, &id, &session).await;
            done.imported += 1;
        } else {
            done.present += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionKey;

    #[test]
    fn a_line_round_trips_and_bad_lines_say_why() {
        let mut s = Session::new(SessionKey::from("key-1"), 5);
        s.apply(
            &[
                crate::session::Change::Set("user".into(), "alice \"a\"".into()),
                crate::session::Change::Set("~jar;=h;/;A".into(), "0;;x".into()),
            ],
            &crate::session::Limits::default(),
        );
        let id = StoreId::from_bytes([7; 16]);
        let line = to_line(&id, &s);
        assert!(!line.contains('\n'));
        let (back_id, back) = from_line(&line).unwrap();
        assert_eq!(back_id, id);
        assert_eq!(back, s);
        for (bad, why) in [
            ("{}", "not a session line"),
            (&line.replace("\"v\":1", "\"v\":2"), "format version 2"),
            (&line.replace("07070707", "zz070707"), "hex"),
            (&line.replace("\"key-1\"", "\"\""), "empty"),
        ] {
            let e = from_line(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
