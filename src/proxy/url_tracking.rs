//! The `rewrite` phase for tokens in URLs: the token the client holds goes into the
//! response's redirect headers and, for an HTML page, into its same-origin links as the page
//! streams through; and a response whose URL carries a token (or whose links will) is kept
//! out of shared caches and from sending its URL to other sites.
//!
//! Why one file of this length: when the client's URL counts, how its responses are tagged
//! and guarded, and the redirects the gateway makes itself for it are one policy, read
//! together when judging what a token in a URL can leak.

use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderValue};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::body::{LogSlot, ResponseBody};
use super::downstream::{host_str, valid_host};
use crate::config::Tracking;
use crate::rewrite::{Coding, Html, Issuer, Tagger, html_charset, rewrite_headers};
use crate::routing::RouteSessions;
use crate::session::handoff::HANDOFF_PARAMETER;
use crate::session::{Arrival, Held, RequestSession, Sessions};

/// A route's (element, attribute) pairs whose URLs get the token.
type Links = Arc<[(String, String)]>;
/// A route's sibling hosts (`host[:port]`), sharing its sessions.
type Siblings = Arc<[String]>;

/// The links and sibling hosts of a route whose requests need the client's own URL: with
/// URL tracking, sibling hosts, or a token (or code) in the URL, it is what the page's links
/// (and redirects) resolve against, and its origin is where requests must come from.
/// `None`: the URL does not matter here.
pub(super) fn wants_client_url(
    sessions: bool,
    route: Option<&RouteSessions>,
    url_carried_token: bool,
) -> Option<(&Links, &Siblings)> {
    /// A route without sessions has no links to tag and no siblings.
    static NONE: std::sync::LazyLock<(Links, Siblings)> =
        std::sync::LazyLock::new(|| (Arc::from([]), Arc::from([])));
    match (sessions, route) {
        (true, Some(rs))
            if rs.tracking != Tracking::Cookie
                || !rs.share_with.is_empty()
                || url_carried_token =>
        {
            Some((&rs.links, &rs.share_with))
        }
        (true, None) if url_carried_token => Some((&NONE.0, &NONE.1)),
        _ => None,
    }
}

/// Whether the client will render the response as a document (a navigation, a frame), at a
/// URL that carried a token: one whose markup cannot be guarded is not served there.
pub(super) fn as_document(req: &Parts, url_carried_token: bool) -> bool {
    url_carried_token
        && req.method != Method::HEAD
        && req.headers.get("sec-fetch-dest").is_none_or(|d| {
            matches!(
                d.as_bytes(),
                b"document" | b"iframe" | b"frame" | b"object" | b"embed"
            )
        })
}

/// Whether a page could hand the client a token or code someone else put there (a comment,
/// an upload): for a client that would take a URL token, and on a route with siblings, such
/// parameters are scrubbed from the page's links.
pub(super) fn scrubs(route: &RouteSessions, session: &RequestSession) -> bool {
    !route.share_with.is_empty()
        || (route.tracking != Tracking::Cookie && session.takes_url_tokens())
}

/// The URL the client asked for, as its browser sees it (without the token): what the
/// page's relative links resolve against, and the origin a link must have to get the token.
#[derive(Debug)]
pub(super) struct ClientUrl {
    /// `scheme://host[:port]`, as `Url::origin` serializes it (lower case, no default port).
    pub origin: String,
    pub scheme: &'static str,
    pub host: String,
    pub target: String,
    /// The client takes gzip (its own `Accept-Encoding`: the backend is asked for identity).
    pub accepts_gzip: bool,
    /// The route's (element, attribute) pairs whose URLs get the token.
    pub links: Arc<[(String, String)]>,
    /// Sibling hosts sharing the route's sessions.
    pub share_with: Arc<[String]>,
}

impl ClientUrl {
    /// The client's URL, if `scheme://host` is one (the host was checked, so it is).
    pub fn new(
        scheme: &'static str,
        host: &str,
        target: String,
        accepts_gzip: bool,
        links: Arc<[(String, String)]>,
        share_with: Arc<[String]>,
    ) -> Option<ClientUrl> {
        let origin = url::Url::parse(&format!("{scheme}://{host}/"))
            .ok()?
            .origin()
            .ascii_serialization();
        Some(ClientUrl {
            origin,
            scheme,
            host: host.to_owned(),
            target,
            accepts_gzip,
            links,
            share_with,
        })
    }

    /// The client's URL as its browser sees it: the scheme and host a trusted proxy in front
    /// reports (`X-Forwarded-Proto`, `X-Forwarded-Host`), else the listener's and the
    /// request's own.
    pub fn of_request(
        req: &Parts,
        host: &HeaderValue,
        tls: bool,
        trusted: bool,
        links: &Links,
        share_with: &Siblings,
    ) -> Option<Box<ClientUrl>> {
        let first = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let scheme = match first("x-forwarded-proto").filter(|_| trusted) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ if tls => "https",
            _ => "http",
        };
        let host = first("x-forwarded-host")
            .filter(|h| trusted && valid_host(h.as_bytes()))
            .unwrap_or_else(|| host_str(host));
        let target = req
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        ClientUrl::new(
            scheme,
            host,
            target,
            accepts_gzip(&req.headers),
            links.clone(),
            share_with.clone(),
        )
        .map(Box::new)
    }

    /// `target` (a request target) on the client's own origin, as an absolute URL: a redirect
    /// the gateway makes itself goes nowhere else, however the target is spelled
    /// (`//other.example/x` is a path here, not a host).
    pub fn own(&self, target: &str) -> String {
        let path = if target.starts_with('/') { target } else { "/" };
        format!("{}{path}", self.origin)
    }

    /// Whether `location` (as a response's `Location` is written, after the gateway's own
    /// rewriting) is a URL of the client's own origin over http(s) with `param` in it: one
    /// the gateway tagged, which a bounce page may go on to.
    pub fn tagged_home(&self, location: &str, param: &str) -> bool {
        url::Url::parse(location).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.origin().ascii_serialization() == self.origin
                && (u.path().contains(&format!(";{param}="))
                    || u.query_pairs().any(|(k, _)| k == param))
        })
    }

    fn tagger(&self, param: &str, token: &str) -> Option<Tagger> {
        Tagger::new(param, token, self.scheme, &self.host, &self.target)
    }
}

/// Whether an `Accept-Encoding` value takes gzip (`gzip` or `*`, without `q=0`).
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// An HTML page that must be rewritten (its links tagged, or scrubbed of someone else's
/// token) in a charset or content coding the gateway cannot read: it is not passed on unread.
#[derive(Debug)]
pub(super) struct Unreadable;

/// Tags the response's headers with the token the client holds (if it carries it in URLs)
/// and handoff codes for links to sibling hosts; for an HTML page, returns the rewriter its
/// body must go through (with `Content-Length` dropped and `ETag` weakened, as the body
/// changes). `url_carried_token`: the request's own URL had a token in it, so the page is
/// guarded whatever the client holds now.
///
/// # Errors
/// The page is HTML the gateway cannot read (see [`Unreadable`]).
pub(super) fn apply(
    sessions: &Arc<Sessions>,
    held: Held,
    client: &ClientUrl,
    headers: &mut HeaderMap,
    url_carried_token: bool,
) -> Result<Option<Html>, Unreadable> {
    let tagger = client.tagger(sessions.url_parameter(), &held.token.expose());
    let (by_url, read_only) = (held.by_url, held.read_only);
    let guarded = by_url || url_carried_token;
    let Some(mut tagger) = tagger else {
        if guarded {
            keep_home(headers, false);
        }
        return Ok(None);
    };
    if !by_url {
        tagger = tagger.without_token();
    }
    if guarded {
        tagger = tagger.guarding();
    }
    // A token a regenerate retired mints no handoff code.
    if !read_only {
        let token = held.token;
        let s = sessions.clone();
        let issue: Issuer = Arc::new(move || s.issue_handoff(&token, by_url));
        tagger = tagger.with_siblings(client.share_with.clone(), HANDOFF_PARAMETER, issue);
    }
    let to_sibling = rewrite_headers(&tagger, headers);
    if guarded {
        keep_home(headers, to_sibling);
    } else if to_sibling {
        // The sibling redeems the code only when the Referer names this host.
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("origin"));
        crate::cache_control::make_private(headers);
    } else {
        // Handoff codes in the page: one-time credentials, for this client only.
        crate::cache_control::make_private(headers);
    }
    page_rewriter(tagger, client, headers)
}

/// For a response that puts no token of its own into its URLs: tokens and handoff codes
/// someone else put in its links go (a page must not hand a client an attacker's session),
/// and, when the request's URL carried a token (or a code), nothing in it may send that URL
/// to another site or a shared cache (`guarded`).
///
/// # Errors
/// The page is HTML the gateway cannot read (see [`Unreadable`]).
pub(super) fn clean(
    sessions: &Sessions,
    client: &ClientUrl,
    headers: &mut HeaderMap,
    guarded: bool,
) -> Result<Option<Html>, Unreadable> {
    if guarded {
        keep_home(headers, false);
    }
    // Sibling links are judged too (for a code someone else put there), and get none.
    let none: Issuer = Arc::new(|| None);
    let Some(tagger) = client.tagger(sessions.url_parameter(), "") else {
        return Ok(None);
    };
    let mut tagger = tagger
        .without_token()
        .scrubbing(HANDOFF_PARAMETER)
        .with_siblings(client.share_with.clone(), HANDOFF_PARAMETER, none);
    if guarded {
        tagger = tagger.guarding();
    }
    rewrite_headers(&tagger, headers);
    page_rewriter(tagger, client, headers)
}

/// The rewriter for an HTML page's body (`None`: the response is no HTML page).
///
/// # Errors
/// HTML in a charset or content coding the gateway cannot read.
fn page_rewriter(
    tagger: Tagger,
    client: &ClientUrl,
    headers: &mut HeaderMap,
) -> Result<Option<Html>, Unreadable> {
    crate::content_type::settle(headers);
    if !crate::content_type::read(headers).is_some_and(|m| m.is_html()) {
        return Ok(None);
    }
    let charset = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(html_charset)
        .ok_or(Unreadable)?;
    // We asked for identity; a backend that compresses anyway is decoded, and the page
    // re-compressed with gzip for a client that takes it.
    let coding = Coding::from_header(
        headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?")),
    )
    .ok_or(Unreadable)?;
    let gzip_out = coding != Coding::Identity && client.accepts_gzip;
    if coding != Coding::Identity {
        headers.remove(header::CONTENT_ENCODING);
        if gzip_out {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    headers.remove(header::CONTENT_LENGTH);
    if let Some(etag) = headers.get(header::ETAG).cloned()
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        match HeaderValue::from_bytes(&weak) {
            Ok(v) => headers.insert(header::ETAG, v),
            Err(_) => headers.remove(header::ETAG),
        };
    }
    Ok(Some(Html::new(
        tagger,
        charset.as_deref(),
        &client.links,
        coding,
        gzip_out,
    )))
}

/// Whether a response at a URL that carried a token is a document whose markup the gateway
/// cannot guard: XML of any kind (SVG, XHTML, XSLT: an XML parser reads them, and an HTML
/// rewriter cannot judge for it), HTML in a charset or coding it cannot read, a
/// `multipart/x-mixed-replace` (whose parts are rendered by their own types), or no declared
/// type (which browsers sniff, and may render as HTML).
pub(super) fn unguardable(headers: &mut HeaderMap) -> bool {
    crate::content_type::settle(headers);
    let Some(mime) = crate::content_type::read(headers) else {
        return true;
    };
    if mime.is_html() {
        let coding = headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?"));
        let charset_readable = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(html_charset)
            .is_some();
        return !charset_readable || Coding::from_header(coding).is_none();
    }
    // Each part of a `multipart/x-mixed-replace` is rendered by its own type.
    mime.is_xml() || mime.essence == b"multipart/x-mixed-replace"
}

/// The answer instead of a document the gateway cannot guard at a URL with a token (see
/// [`unguardable`]): a redirect to the same URL without the token, on the client's own
/// origin, where the document has nothing to leak.
pub(super) fn leave_token_behind(client: &ClientUrl, log: LogSlot) -> Response<ResponseBody> {
    redirect_home(client, StatusCode::SEE_OTHER, "no-referrer", log)
}

/// A redirect the gateway makes itself, to the URL the client asked for (its token taken out
/// already) on the client's own origin, whatever the target looks like; never stored.
fn redirect_home(
    client: &ClientUrl,
    status: StatusCode,
    referrer_policy: &'static str,
    mut log: LogSlot,
) -> Response<ResponseBody> {
    log.status(status.as_u16());
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), log));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&client.own(&client.target)) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static(referrer_policy),
    );
    resp
}

/// The referrer policy a browser takes from a response's `Referrer-Policy` fields: the last
/// value it knows, across all of them.
fn effective_referrer_policy(headers: &HeaderMap) -> Option<String> {
    const KNOWN: &[&str] = &[
        "no-referrer",
        "no-referrer-when-downgrade",
        "same-origin",
        "origin",
        "strict-origin",
        "origin-when-cross-origin",
        "strict-origin-when-cross-origin",
        "unsafe-url",
    ];
    headers
        .get_all(header::REFERRER_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .rfind(|p| KNOWN.contains(&p.as_str()))
}

/// Leak guards for a response whose URL carries a token, or whose URLs will: a URL with a
/// token must not travel in a `Referer` to another site (the policy is `same-origin` unless
/// the backend's is `no-referrer` already; `origin` for a redirect to a sibling host, whose
/// handoff needs the Referer's origin and never sees a path; a `Link` preload that sets a
/// policy of its own goes), nor be kept by a shared cache.
fn keep_home(headers: &mut HeaderMap, to_sibling: bool) {
    let policy = effective_referrer_policy(headers);
    if to_sibling {
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("origin"));
    } else if !matches!(policy.as_deref(), Some("no-referrer" | "same-origin")) {
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    // A `Link` header's preload may carry a referrer policy of its own.
    let widening = |v: &HeaderValue| {
        v.as_bytes()
            .windows(14)
            .any(|w| w.eq_ignore_ascii_case(b"referrerpolicy"))
    };
    if headers.get_all(header::LINK).iter().any(widening) {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::LINK)
            .iter()
            .filter(|v| !widening(v))
            .cloned()
            .collect();
        headers.remove(header::LINK);
        for v in kept {
            headers.append(header::LINK, v);
        }
    }
    // No content sniffing: a body is only ever what its type says (text is never read as a
    // page that could be rendered unguarded).
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    crate::cache_control::make_private(headers);
}

/// A page that sends the client on to `to` (a URL of this origin that carries its token) by
/// a refresh: a navigation from this origin's own page. A redirect would not do, in answer
/// to a request another site made: the request that follows it arrives looking cross-site
/// (`Sec-Fetch-Site` counts the whole chain), and a URL token on it is refused.
/// `cookies`: the `Set-Cookie` fields the redirect carried (the session's, the application's).
pub(super) fn bounce(
    to: &str,
    cookies: Vec<HeaderValue>,
    mut log: LogSlot,
) -> Response<ResponseBody> {
    let to = to
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let page = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=\"refresh\" content=\"0; url={to}\"><title>Continue</title><a href=\"{to}\">Continue</a>\n"
    );
    log.status(200);
    let mut resp = Response::new(ResponseBody::full(Bytes::from(page), log));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    resp
}

/// The answer to a client arriving from a sibling host with a handoff code: a redirect to the
/// URL it asked for (without the code), on its own origin, with its token for this host in a
/// cookie (if new); for a client that refuses cookies, a page that goes on to that URL with
/// the token in it (see [`bounce`]: the arrival came from the sibling, another site).
pub(super) fn arrival_redirect(
    sessions: &Sessions,
    arrival: Arrival,
    client: &ClientUrl,
    tls: bool,
    log: LogSlot,
) -> Response<ResponseBody> {
    if arrival.by_url {
        let token = arrival.token.expose();
        let tagged = client
            .tagger(sessions.url_parameter(), &token)
            .and_then(|t| t.tag(&client.own(&client.target)));
        if let Some(to) = tagged {
            return bounce(&to, Vec::new(), log);
        }
    }
    let mut resp = redirect_home(client, StatusCode::SEE_OTHER, "same-origin", log);
    let headers = resp.headers_mut();
    if arrival.fresh && !arrival.by_url {
        sessions.arrival_cookie(headers, &arrival.token, tls);
    }
    resp
}

/// A redirect to the URL the client asked for, without its token (it was taken out already),
/// on its own origin: the token does not count here (the client keeps the cookie, or the
/// token was refused), so the address bar comes clean.
pub(super) fn clean_redirect(client: &ClientUrl, log: LogSlot) -> Response<ResponseBody> {
    redirect_home(client, StatusCode::FOUND, "same-origin", log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br")));
        assert!(accepts_gzip(&h("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0, br")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_gateways_own_redirects_stay_on_the_clients_origin() {
        let c = ClientUrl::new(
            "https",
            "Shop.Example:443",
            String::new(),
            false,
            Arc::from(Vec::new()),
            Arc::from(Vec::new()),
        )
        .unwrap();
        assert_eq!(
            c.own("//other.example/x"),
            "https://shop.example//other.example/x"
        );
        assert_eq!(c.own("*"), "https://shop.example/");
        assert_eq!(c.own("/a?b"), "https://shop.example/a?b");
    }

    #[test]
    fn the_referrer_policy_counts_as_a_browser_reads_it() {
        let h = |vs: &[&'static str]| {
            let mut m = HeaderMap::new();
            for v in vs {
                m.append(header::REFERRER_POLICY, HeaderValue::from_static(v));
            }
            m
        };
        for (given, kept) in [
            (vec!["same-origin"], "same-origin"),
            (vec!["no-referrer"], "no-referrer"),
            (vec!["same-origin, unsafe-url"], "same-origin"),
            (vec!["no-referrer", "always"], "no-referrer"),
            (vec!["unsafe-url, bogus"], "same-origin"),
            (vec!["origin"], "same-origin"),
        ] {
            let mut headers = h(&given);
            keep_home(&mut headers, false);
            let got: Vec<_> = headers.get_all(header::REFERRER_POLICY).iter().collect();
            if kept == "same-origin" {
                assert_eq!(got, ["same-origin"], "{given:?}");
            } else {
                assert_eq!(effective_referrer_policy(&headers).as_deref(), Some(kept));
            }
        }
    }
}
