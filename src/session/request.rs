//! What the session phases know of one request: what the proxy tells them
//! ([`RequestInfo`]), what `resolve` and `load` found for `commit` ([`RequestSession`]),
//! and what the proxy learns back ([`Arrival`], [`Held`], [`LogoutFailed`]).

use std::net::IpAddr;
use std::sync::Arc;

use http::Method;
use http::header::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::contract::Status;
use super::jar::{Jar, JarScope};
use super::kept_in_cookies::SealedRequest;
use super::store::Session;
use super::token::Token;
use super::tracking::{self, Evidence, Source};
use super::url::UrlTokens;
use crate::config::Tracking;

/// What the proxy tells `resolve` and `load` about a request.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    /// It came over TLS.
    pub tls: bool,
    /// The origin the client's browser sees (`Url::origin().ascii_serialization()`, e.g.
    /// `https://shop.example`), when the route needs to know where requests come from: URL
    /// tracking, sibling hosts, or a token in the URL. `None`: nothing comes from here.
    pub origin: Option<&'a str>,
    /// Its method.
    pub method: &'a Method,
    /// The route's attributes also sent under a header of their own.
    pub mapped: &'a [(String, HeaderName)],
    /// How clients carry the token on the route.
    pub tracking: Tracking,
    /// The route's sibling hosts (`host[:port]`), whose links may bring handoff codes.
    pub share_with: &'a [String],
    /// The route's cookie jar (`backend_cookies: jar`).
    pub jar: Option<&'a Arc<Jar>>,
    /// The path the backend gets (a jar's cookies are matched against it).
    pub backend_path: &'a str,
    /// The TCP peer's address (after the PROXY protocol, if any).
    pub peer: IpAddr,
    /// The trusted proxies, if the peer is one (its `X-Forwarded-For` names the client).
    pub trusted: &'a [IpNet],
}

/// What `resolve` and `load` found, for `commit`.
#[derive(Debug)]
pub struct RequestSession {
    pub(super) token: Option<Token>,
    pub(super) session: Option<Session>,
    pub(super) status: Status,
    pub(super) tracking: Tracking,
    pub(super) source: Source,
    pub(super) evidence: Evidence,
    pub(super) clean_redirect: bool,
    /// The URL carried a token that does not count (see [`RequestSession::clean_redirect`]).
    pub(super) url_token_ignored: bool,
    pub(super) arrival: Option<Arrival>,
    pub(super) store_failed: bool,
    /// With the sealed-cookie store: the cookie the request presented, and what became of it.
    pub(super) sealed: Option<Box<SealedRequest>>,
    /// The URL carried a token (counted or not).
    pub(super) in_url: bool,
    /// From `resolve` to `load`: the URL's handoff code and its `Referer`'s token.
    pub(super) url: Option<Box<UrlTokens>>,
    /// On a route with a cookie jar: the request as the jar sees it, from `load` to `commit`.
    pub(super) jar: Option<Box<JarScope>>,
    /// The client's address (after trusted proxies) and User-Agent, for what a session it
    /// logs into records (see `subjects::Meta`).
    pub(super) client: Option<IpAddr>,
    pub(super) agent: Option<HeaderValue>,
}

/// A client arriving from a sibling host with a handoff code: the token it holds here now.
#[derive(Debug)]
pub struct Arrival {
    /// The token: a new one for the sibling's session, or the one the client already had
    /// here (a handoff never replaces a live session).
    pub token: Token,
    /// It carries tokens in URLs (it refuses cookies).
    pub by_url: bool,
    /// The token is new: a cookie client gets it in a cookie.
    pub fresh: bool,
}

/// A logout (`X-Session-Action: destroy`) the session store could not make: the session
/// lives on, so the response is not sent as if it had ended (the proxy answers `503`, and
/// the client keeps its token to try again).
#[derive(Debug)]
pub struct LogoutFailed;

/// The token a client holds after a response, and how it carries it.
#[derive(Debug)]
pub struct Held {
    /// The token.
    pub token: Token,
    /// It goes into the response's URLs (else it is in the cookie).
    pub by_url: bool,
    /// It reaches its session only read-only (a regenerate retired it): it may hand off
    /// nothing to sibling hosts.
    pub read_only: bool,
    /// The request came from another site: a redirect that hands it a token in the URL
    /// would arrive looking cross-site too, and the token would be refused (see
    /// `url_tracking::bounce`).
    pub from_elsewhere: bool,
}

impl RequestSession {
    /// What `resolve` found: a token (if any) and where it came from; nothing loaded yet.
    pub(super) fn new(
        token: Option<Token>,
        source: Source,
        tracking: Tracking,
        evidence: Evidence,
    ) -> RequestSession {
        RequestSession {
            token,
            session: None,
            status: Status::None,
            tracking,
            source,
            evidence,
            clean_redirect: false,
            url_token_ignored: false,
            arrival: None,
            store_failed: false,
            sealed: None,
            in_url: false,
            url: None,
            jar: None,
            client: None,
            agent: None,
        }
    }

    /// With the sealed-cookie store: the cookie the request `presented` is the session (and
    /// the route tracks by cookie).
    pub(super) fn sealed(mut self, presented: Option<String>) -> RequestSession {
        self.tracking = Tracking::Cookie;
        self.sealed = Some(Box::new(SealedRequest {
            presented,
            value: None,
        }));
        self
    }

    /// The session's status as sent to the backend.
    pub fn status(&self) -> Status {
        self.status
    }

    /// A short hash of the token the request presented, for logs (never the token).
    pub fn token_hash(&self) -> Option<super::LogHash> {
        self.token.as_ref().map(Token::log_hash)
    }

    /// The URL carried a token that does not count for this request (the client keeps its
    /// cookie, as on `auto` after the first response went both ways; or the token was
    /// refused): a GET or HEAD is answered with a redirect to the same URL without the token,
    /// so the address bar comes clean, and the backend is not asked.
    pub fn clean_redirect(&self) -> bool {
        self.clean_redirect
    }

    /// The URL carried a token that does not count, and the request is not redirected away
    /// from it (not a GET or HEAD): its response must send no Referer, or the next request
    /// would carry that token there, where it does not belong (and the check of a URL token
    /// against its page's would refuse the client's own).
    pub fn url_token_ignored(&self) -> bool {
        self.url_token_ignored && !self.clean_redirect
    }

    /// The live session's stable key, for `balance: session_affinity`.
    pub fn affinity_key(&self) -> Option<&[u8]> {
        self.session.as_ref().map(Session::key_raw)
    }

    /// The server (`host:port`) that made the live session's kept backend cookies (see
    /// `jar::pinned`), for `balance: session_affinity`.
    pub fn pinned_server(&self) -> Option<&[u8]> {
        self.session.as_ref().and_then(super::jar::pinned)
    }

    /// The route names the live session's kept backend cookies end in (see
    /// `jar::route_hints`), for `balance: session_affinity`.
    pub fn app_routes(&self) -> Vec<&[u8]> {
        match (&self.session, &self.jar) {
            (Some(s), Some(scope)) => super::jar::route_hints(s, &scope.jar),
            // An application cookie being adopted names its server too.
            (None, Some(scope)) => scope
                .adopted
                .as_ref()
                .and_then(|(_, v)| v.rsplit_once('.'))
                .map(|(_, r)| r.as_bytes())
                .filter(|r| !r.is_empty())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The request presented a session and the store did not answer: the proxy fails closed
    /// (503 with `Retry-After`) rather than sending it on without its session.
    pub fn store_failed(&self) -> bool {
        self.store_failed
    }

    /// The client arrived with a sibling's handoff code: the proxy answers with a redirect to
    /// the clean URL that hands it its token for this host, without asking the backend.
    pub fn take_arrival(&mut self) -> Option<Arrival> {
        self.arrival.take()
    }

    /// The response may have to carry the token in its URLs (then the proxy asks the
    /// backend for an uncompressed body it can rewrite).
    pub fn may_rewrite(&self) -> bool {
        tracking::carry(self.tracking, self.source, self.evidence).url()
    }

    /// The client would take a token from a URL here (the route tracks by URL, and it shows
    /// no cookie of ours): a page must not hand it one that someone else put in a link.
    pub fn takes_url_tokens(&self) -> bool {
        self.tracking != Tracking::Cookie && !self.evidence.takes_cookies
    }
}
