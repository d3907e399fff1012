//! The `rewrite` phase for URL-tracked sessions: the token the client holds goes into the
//! response's redirect headers and, for an HTML page, into its same-origin links as the page
//! streams through; and the response is kept out of shared caches and referrers.

use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderValue};

use bytes::Bytes;
use http::{Response, StatusCode};

use super::body::{LogSlot, ResponseBody};
use crate::rewrite::{Coding, Html, Issuer, Tagger, html_charset, rewrite_headers};
use crate::session::handoff::HANDOFF_PARAMETER;
use crate::session::{Arrival, Held, Sessions};

/// The URL the client asked for, as it sees it (without the token): what the page's relative
/// links resolve against, and the origin a link must have to get the token.
#[derive(Debug)]
pub(super) struct ClientUrl {
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

/// Tags the response's headers with the token the client holds (if it carries it in URLs)
/// and handoff codes for links to sibling hosts; for an HTML page it can rewrite, returns the
/// rewriter its body must go through (with `Content-Length` dropped and `ETag` weakened, as
/// the body changes).
pub(super) fn apply(
    sessions: &Arc<Sessions>,
    held: Held,
    client: &ClientUrl,
    headers: &mut HeaderMap,
) -> Option<Html> {
    let tagger = Tagger::new(
        sessions.url_parameter(),
        &held.token.expose(),
        client.scheme,
        &client.host,
        &client.target,
    )?;
    let tagger = if held.by_url {
        tagger
    } else {
        tagger.without_token()
    };
    let (by_url, token) = (held.by_url, held.token);
    let s = sessions.clone();
    let issue: Issuer = Arc::new(move || s.issue_handoff(&token, by_url));
    let tagger = tagger.with_siblings(client.share_with.clone(), HANDOFF_PARAMETER, issue);
    rewrite_headers(&tagger, headers);
    // Leak guards: a URL with a token must not travel in a Referer to another site, nor
    // be kept by a shared cache (nor a page with handoff codes).
    let referrer_ok = headers
        .get(header::REFERRER_POLICY)
        .is_some_and(|v| v == "no-referrer" || v == "same-origin");
    if by_url && !referrer_ok {
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    keep_private(headers);
    let charset = html_charset(headers.get(header::CONTENT_TYPE)?.to_str().ok()?)?;
    // We asked for identity; a backend that compresses anyway is decoded, and the page
    // re-compressed with gzip for a client that takes it. A coding we cannot decode passes.
    let coding = Coding::from_header(
        headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?")),
    );
    let Some(coding) = coding else {
        tracing::warn!("HTML in an unknown content coding passed without rewriting");
        return None;
    };
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
    Some(Html::new(
        tagger,
        charset.as_deref(),
        &client.links,
        coding,
        gzip_out,
    ))
}

/// `Cache-Control: private` added (a `public` and `s-maxage` dropped), unless the response
/// is already private or not stored at all.
fn keep_private(headers: &mut HeaderMap) {
    let cache = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match cache {
        Some(c) if c.contains("private") || c.contains("no-store") => {}
        Some(c) => {
            let kept: Vec<&str> = c
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && *d != "public" && !d.starts_with("s-maxage"))
                .collect();
            let value = std::iter::once("private")
                .chain(kept)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::CACHE_CONTROL, v);
            }
        }
        None => {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
    }
}

/// The answer to a client arriving from a sibling host with a handoff code: a redirect to the
/// URL it asked for (without the code), with its token for this host in a cookie, or in the
/// `Location` for a client that refuses cookies.
pub(super) fn arrival_redirect(
    sessions: &Sessions,
    arrival: Arrival,
    client: &ClientUrl,
    tls: bool,
    mut log: LogSlot,
) -> Response<ResponseBody> {
    log.status(303);
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), log));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let headers = resp.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&client.target) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if arrival.by_url {
        let token = arrival.token.expose();
        if let Some(tagger) = Tagger::new(
            sessions.url_parameter(),
            &token,
            client.scheme,
            &client.host,
            &client.target,
        ) {
            rewrite_headers(&tagger, headers);
        }
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    } else {
        sessions.arrival_cookie(headers, &arrival.token, tls);
    }
    resp
}

/// A redirect to the URL the client asked for, without its token (it was taken out already):
/// the client keeps the cookie, so the address bar can come clean.
pub(super) fn clean_redirect(client: &ClientUrl, mut log: LogSlot) -> Response<ResponseBody> {
    log.status(302);
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), log));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(location) = HeaderValue::from_str(&client.target) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
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
}
