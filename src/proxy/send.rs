//! The upstream request's parts: the client's headers made safe for the backend, the
//! request for one attempt, the servers already tried; and the backend's hop-by-hop headers
//! off its response. (`Proxy::send`, in `phases`, sends it.)

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use super::ConnInfo;
use super::headers;
use crate::upstream::RequestBody;

/// Hop-by-hop headers off the backend's response; a `101` keeps its upgrade headers.
pub(super) fn clean_response_headers(headers: &mut http::HeaderMap, switching: bool) {
    let protocol = switching
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    headers::remove_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// The servers already tried for one request (at most `retries + 1`, and retries <= 10).
#[derive(Default)]
pub(super) struct Tried {
    list: [usize; 11],
    len: usize,
}

impl Tried {
    pub(super) fn push(&mut self, i: usize) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = i;
            self.len += 1;
        }
    }
    pub(super) fn len(&self) -> usize {
        self.len
    }
    pub(super) fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

/// The `upstream_request` phase's header work: hop-by-hop headers (and every header
/// `Connection` names) off, `Expect` off, HTTP/2 cookie fields joined, `X-Forwarded-*` set
/// (kept and extended only from a trusted proxy), `Host` kept, and an allowed upgrade's
/// headers put back.
pub(super) fn prepare_upstream_headers(
    parts: &mut Parts,
    found: headers::Found,
    host: HeaderValue,
    conn: &ConnInfo,
    trusted: bool,
    upgrade: Option<HeaderValue>,
) {
    let h2 = parts.version == Version::HTTP_2;
    let headers = &mut parts.headers;
    // Strip before setting: a client must not be able to smuggle hop-by-hop headers or forge
    // the ones we set below.
    if found.hop_by_hop {
        headers::remove_hop_by_hop(headers);
    }
    // We do not relay 100-continue: hyper answers the client when the body is first read.
    if found.expect {
        headers.remove(header::EXPECT);
    }
    if h2 {
        headers::join_cookies(headers);
    }
    let proto = if conn.listener.tls { "https" } else { "http" };
    headers::set_forwarded(headers, found, &conn.peer_header, trusted, proto, &host);
    // Without an authority in the target, `host` is the request's one Host header already.
    if parts.uri.authority().is_some() {
        headers.insert(header::HOST, host);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Whether a failed attempt may be tried again once its body was read (RFC 9110 §9.2.2).
pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request for one attempt, in origin form over HTTP/1.1.
pub(super) fn upstream_request(
    method: &Method,
    headers: http::HeaderMap,
    path_and_query: &PathAndQuery,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    // Origin form (`/path?query`): the connection already goes to the backend.
    *req.uri_mut() = Uri::from(path_and_query.clone());
    // HTTP/2 clients are forwarded as HTTP/1.1.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}
