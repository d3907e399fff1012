//! The session API (with the admin token):
//!
//! - `GET /sessions?subject=alice`: her sessions, with what each records (key, never token);
//! - `DELETE /sessions?subject=alice[&except=KEY]`: end them all (but one);
//! - `DELETE /sessions?attr=user:alice`: end every session whose attribute `user` is `alice`
//!   (a scan of the store);
//! - `GET /sessions/{key}` and `DELETE /sessions/{key}`: one session by its stable key (as
//!   backends see it in `X-Session-Key`); `?subject=` finds it through the index, not a scan;
//! - `GET /sessions/export`, `POST /sessions/import`: sessions as JSON lines.
//!
//! Ending a session here revokes it: its tunnels (WebSockets) close, on every gateway.

use std::sync::Arc;

use http::{Method, Request, StatusCode};

use super::{AdminState, json_error, session_gate};
use crate::session::subjects::Meta;
use crate::session::{Session, SessionKey, Sessions, StoreId, jar};

/// The most an import may send at once (it is read whole before it is judged): split a
/// larger export into several imports.
const MAX_IMPORT_BYTES: usize = 1 << 30;

/// `GET /sessions/export` (the live sessions as JSON lines, see `session::transfer`) and
/// `POST /sessions/import` (such lines loaded into this gateway's store).
pub(super) async fn transfer_api<B>(
    state: &AdminState,
    req: Request<B>,
) -> (StatusCode, &'static str, String)
where
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    const JSON: &str = "application/json";
    let sessions = match session_gate(state, &req) {
        Ok(s) => s,
        Err((status, body)) => return (status, JSON, body),
    };
    let failed = |e: crate::session::StoreError| {
        let (status, body) = json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        (status, JSON, body)
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/sessions/export") => match sessions.export().await {
            Ok(lines) => (StatusCode::OK, "application/x-ndjson", lines),
            Err(e) => failed(e),
        },
        (&Method::POST, "/sessions/import") => {
            let body = http_body_util::Limited::new(req.into_body(), MAX_IMPORT_BYTES);
            let bytes = match http_body_util::BodyExt::collect(body).await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let (status, body) =
                        json_error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"));
                    return (status, JSON, body);
                }
            };
            let Ok(text) = std::str::from_utf8(&bytes) else {
                let (status, body) = json_error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
                return (status, JSON, body);
            };
            match sessions.import(text).await {
                Ok(done) => (
                    StatusCode::OK,
                    JSON,
                    serde_json::to_string(&done).unwrap_or_default(),
                ),
                Err(e) => failed(e),
            }
        }
        _ => {
            let (status, body) = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /sessions/export or POST /sessions/import",
            );
            (status, JSON, body)
        }
    }
}

/// A session as the API shows it in a list: what it records, never its data or token.
fn summary(s: &Session, subject_attr: &str, idle_ms: u64) -> serde_json::Value {
    let meta = Meta::of(s);
    serde_json::json!({
        "key": s.key(),
        "subject": s.attr(subject_attr),
        "created_ms": s.created_ms,
        "last_seen_ms": s.last_seen_ms,
        "idle_expires_ms": s.last_seen_ms.saturating_add(idle_ms),
        "logged_in_ms": meta.login_ms,
        "client": meta.client,
        "user_agent": meta.agent,
        "tracking": meta.tracking,
    })
}

/// The query's value of `name`, as a form encodes it (`%20` or `+` for a space).
pub(super) fn query(req_query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req_query.unwrap_or("").as_bytes())
        .find_map(|(k, v)| (k == name).then(|| v.into_owned()))
}

/// The session with stable key `key`: through `subject`'s index entries when given (no
/// scan), else (or when the index does not have it: a revocation must not miss) a scan of
/// the store.
async fn find(
    sessions: &Sessions,
    key: &str,
    subject: Option<&str>,
) -> Result<Option<(StoreId, Session)>, crate::session::StoreError> {
    if let Some(subject) = subject
        && let Some(found) = sessions
            .of_subject(subject)
            .await?
            .into_iter()
            .find(|(_, s)| s.key() == key)
    {
        return Ok(Some(found));
    }
    sessions.find_by_key(&SessionKey::from(key)).await
}

/// The session API; every answer is JSON.
pub(super) async fn session_api<B>(state: &AdminState, req: &Request<B>) -> (StatusCode, String) {
    let sessions: Arc<Sessions> = match session_gate(state, req) {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let failed =
        |e: crate::session::StoreError| json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    let path = req.uri().path();
    let q = req.uri().query();
    let subject_attr = sessions.subject_attribute().to_owned();
    let idle_ms = sessions.idle_ms();
    if let Some(key) = path.strip_prefix("/sessions/").filter(|k| !k.is_empty()) {
        let subject = query(q, "subject");
        let found = match find(&sessions, key, subject.as_deref()).await {
            Ok(f) => f,
            Err(e) => return failed(e),
        };
        let Some((id, session)) = found else {
            return json_error(StatusCode::NOT_FOUND, "no session with this key");
        };
        return match *req.method() {
            Method::GET => {
                let mut shown = summary(&session, &subject_attr, idle_ms);
                shown["attributes"] = serde_json::json!(
                    session
                        .attrs()
                        .filter(|(n, _)| !n.starts_with('~'))
                        .collect::<std::collections::BTreeMap<_, _>>()
                );
                // The backend's cookies it keeps, by name: their values are the
                // application's credentials.
                shown["backend_cookies"] = serde_json::json!(jar::kept_names(&session));
                (StatusCode::OK, shown.to_string())
            }
            Method::DELETE => match sessions.end(&id, &session).await {
                Ok(()) => (
                    StatusCode::OK,
                    serde_json::json!({ "deleted": 1 }).to_string(),
                ),
                Err(e) => failed(e),
            },
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET or DELETE"),
        };
    }
    if path != "/sessions" {
        return json_error(StatusCode::NOT_FOUND, HINT);
    }
    if let Some(subject) = query(q, "subject") {
        if subject.is_empty() {
            return json_error(StatusCode::BAD_REQUEST, "write ?subject=NAME");
        }
        return match *req.method() {
            Method::GET => match sessions.of_subject(&subject).await {
                Ok(mut list) => {
                    list.sort_by_key(|(_, s)| std::cmp::Reverse(s.last_seen_ms));
                    let shown: Vec<_> = list
                        .iter()
                        .map(|(_, s)| summary(s, &subject_attr, idle_ms))
                        .collect();
                    (
                        StatusCode::OK,
                        serde_json::json!({ "subject": subject, "sessions": shown }).to_string(),
                    )
                }
                Err(e) => failed(e),
            },
            Method::DELETE => {
                let except = query(q, "except");
                match sessions.end_subject(&subject, except.as_deref()).await {
                    Ok(n) => (
                        StatusCode::OK,
                        serde_json::json!({ "deleted": n }).to_string(),
                    ),
                    Err(e) => failed(e),
                }
            }
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET or DELETE"),
        };
    }
    if req.method() == Method::DELETE {
        let attr = query(q, "attr");
        let Some((name, value)) = attr.as_deref().and_then(|a| a.split_once(':')) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "write DELETE /sessions?subject=NAME or DELETE /sessions?attr=name:value",
            );
        };
        return match sessions.end_where(name, value).await {
            Ok(n) => (
                StatusCode::OK,
                serde_json::json!({ "deleted": n }).to_string(),
            ),
            Err(e) => failed(e),
        };
    }
    json_error(StatusCode::NOT_FOUND, HINT)
}

/// What the session API answers to a request it does not know.
const HINT: &str = "try GET or DELETE /sessions?subject=NAME, GET or DELETE /sessions/{key}, \
                    or DELETE /sessions?attr=name:value";
