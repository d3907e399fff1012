//! `/console`: the operator's window into the gateway, a page served by the admin listener
//! itself (no third-party asset: it works offline). The page and its script are public; what
//! they show comes from the token-guarded API, with the token the operator types in (kept in
//! the tab's `sessionStorage`, sent as a bearer header, never in a URL). `GET /console/stats`
//! (with the token) is its summary: the gateway, its store and its session counts.
//!
//! The page's policy allows only its own script and style, talks only to this origin, and
//! cannot be framed; the script writes what the API returns as text, never as markup, since
//! subjects and User-Agents are what users chose.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::{AdminBody, AdminState, json_error, reply, session_gate};

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// The page's Content-Security-Policy.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `/console`, its assets, and `/console/stats`.
pub(super) async fn serve<B>(state: &AdminState, req: &Request<B>) -> Response<AdminBody> {
    let path = req.uri().path();
    if path == "/console/stats" {
        let (status, body) = stats(state, req);
        return reply(status, "application/json", body);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let (status, body) = json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        return reply(status, "application/json", body);
    }
    let (ctype, text) = match path {
        "/console" | "/console/" => ("text/html; charset=utf-8", PAGE),
        "/console/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/console/app.css" => ("text/css; charset=utf-8", STYLE),
        _ => {
            let (status, body) = json_error(StatusCode::NOT_FOUND, "no such console file");
            return reply(status, "application/json", body);
        }
    };
    let mut resp = reply(StatusCode::OK, ctype, text.to_owned());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /console/stats`: who this gateway is, its store, and its session counts.
fn stats<B>(state: &AdminState, req: &Request<B>) -> (StatusCode, String) {
    let sessions = match session_gate(state, req) {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let counts: serde_json::Map<String, serde_json::Value> = state
        .live
        .metrics()
        .session_counts()
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n.into()))
        .collect();
    let events = sessions.events();
    (
        StatusCode::OK,
        serde_json::json!({
            "gateway": events.gateway(),
            "store": sessions.store_kind(),
            "subject_attribute": sessions.subject_attribute(),
            "sessions_live": sessions.live_count(),
            "tunnels_watched": events.watching(),
            "counts": counts,
        })
        .to_string(),
    )
}
