//! One request on its way through the phases: what each phase finds out for the next.

use http::header::HeaderValue;
use http::response;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::ConnInfo;
use super::body::LogSlot;
use super::headers;
use super::url_tracking::ClientUrl;
use crate::routing::Route;
use crate::session::{Held, RequestSession};
use crate::upstream::{Lease, Pool};

/// One request on its way through the phases: what each phase found out for the next.
pub(super) struct Exchange<'a> {
    pub(super) conn: &'a ConnInfo,
    /// The request's metrics and access-log record; taken by the response that ends it.
    pub(super) log: &'a mut LogSlot,
    pub(super) route: &'a Route,
    pub(super) pool: &'a Pool,
    /// The request target the backend gets.
    pub(super) target: PathAndQuery,
    /// What the client's header names include (one scan).
    pub(super) found: headers::Found,
    /// The protocol of an upgrade the route allows, and the client's side of it.
    pub(super) upgrade: Option<HeaderValue>,
    pub(super) downstream_upgrade: Option<OnUpgrade>,
    /// The client came through a trusted proxy: its `X-Forwarded-*` count.
    pub(super) trusted: bool,
    /// The client's URL as its browser sees it, when links or origins matter (see
    /// `url_tracking::wants_client_url`).
    pub(super) client: Option<Box<ClientUrl>>,
    /// The request's URL carried a token (or a handoff code).
    pub(super) url_carried_token: bool,
    /// The client will render the response as a document (see `url_tracking::as_document`).
    pub(super) as_document: bool,
    /// A `HEAD` request: its response has no body.
    pub(super) head_only: bool,
    /// The response's links must be scrubbed of tokens someone else put there.
    pub(super) scrub: bool,
    /// An HTML page in the response will be rewritten: the backend is asked for it
    /// uncompressed.
    pub(super) rewrites: bool,
    /// The route's session: boxed, as it lives across the upstream exchange, and inline it
    /// would grow (and so copy) the request future of every route, with sessions or without.
    pub(super) session: Option<Box<RequestSession>>,
    /// The token the client holds after `commit`, and how it carries it.
    pub(super) held: Option<Held>,
}

impl Exchange<'_> {
    /// The request is on a route with sessions (from `resolve` to `commit`).
    pub(super) fn has_session(&self) -> bool {
        self.session.is_some()
    }
}

/// The backend's answer, from `upstream_response` on.
pub(super) struct Answer {
    pub(super) head: response::Parts,
    pub(super) body: Incoming,
    pub(super) lease: Lease,
}
