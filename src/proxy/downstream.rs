//! The client's side of a request: its head checked before anything is routed, its target
//! for the backend, and the answers the gateway makes itself (an HTTPS redirect, an error).

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri};

use super::body::{LogSlot, ResponseBody};
use super::{ProxyError, headers};
use crate::routing::{Route, host_name};

/// Checks the request head: size and field-count limits, and a usable host (returned).
pub(super) fn check_head(req: &Parts, max_header_bytes: usize) -> Result<HeaderValue, ProxyError> {
    if headers::head_size(&req.uri, &req.headers) > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            limit: max_header_bytes,
        });
    }
    if headers::field_count(&req.headers) > headers::MAX_FIELDS {
        return Err(ProxyError::TooManyHeaders {
            limit: headers::MAX_FIELDS,
        });
    }
    request_host(req).ok_or(ProxyError::BadRequest("missing or invalid Host header"))
}

/// The host the client addressed: the request target's authority (absolute-form, or HTTP/2
/// `:authority`), else the `Host` header (RFC 9112 §3.2.2). `None` if missing or not a
/// plausible `host[:port]`. A value rather than a string: it goes upstream as the `Host`
/// and `X-Forwarded-Host` headers, and a header's value is shared, not copied.
fn request_host(req: &Parts) -> Option<HeaderValue> {
    let host = match req.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok()?,
        None => {
            // More than one Host is a bad request (RFC 9112 §3.2), not a choice to make.
            let mut all = req.headers.get_all(header::HOST).iter();
            let first = all.next()?;
            if all.next().is_some() {
                return None;
            }
            first.clone()
        }
    };
    valid_host(host.as_bytes()).then_some(host)
}

/// A host checked by `check_head` as text (its characters are ASCII, so this never falls
/// back to "").
pub(super) fn host_str(host: &HeaderValue) -> &str {
    host.to_str().unwrap_or_default()
}

/// `host[:port]`: a reg-name, IPv4 or bracketed IPv6 literal; no userinfo, path or spaces.
pub(super) fn valid_host(h: &[u8]) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']')
        })
}

/// The request target to send to `route`'s backend: the client's, unless its path was
/// normalized (`path` is then a new string) or the route strips its prefix.
pub(super) fn upstream_target(
    route: &Route,
    uri: &Uri,
    path: Cow<'_, str>,
) -> Result<PathAndQuery, ProxyError> {
    let unchanged = matches!(path, Cow::Borrowed(_)) && !route.strip_prefix;
    let pq = match uri.path_and_query() {
        // The common case: the target goes upstream as it came, without a copy.
        Some(pq) if unchanged => Ok(pq.clone()),
        _ => {
            let path = route.upstream_path(&path);
            match uri.query() {
                Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
                None => PathAndQuery::try_from(path),
            }
        }
    };
    pq.map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// The answer on a listener that redirects every request to HTTPS on `port`.
pub(super) fn https_redirect(
    host: &str,
    uri: &Uri,
    port: u16,
    mut log: LogSlot,
) -> Response<ResponseBody> {
    let name = host_name(host);
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_owned()
    };
    // Never `*` (OPTIONS *) or anything else that would run into the host.
    let pq = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let location = if port == 443 {
        format!("https://{name}{pq}")
    } else {
        format!("https://{name}:{port}{pq}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(&ProxyError::BadRequest("invalid request target"), log);
    };
    log.status(308);
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), log));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// The gateway's own answer for an error: a short plain-text body naming the cause.
pub(super) fn error_response(e: &ProxyError, mut log: LogSlot) -> Response<ResponseBody> {
    let status = e.status();
    log.status(status.as_u16());
    log.note(|l| l.error = Some(e.to_string()));
    let text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e.public_message()
    );
    let mut resp = Response::new(ResponseBody::full(Bytes::from(text), log));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_hosts_are_accepted_and_others_refused() {
        for ok in [
            "shop.example",
            "shop.example:8080",
            "127.0.0.1:80",
            "[::1]:8443",
            "a_b",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "user@shop.example",
            "shop.example/path",
            "sh op",
            "x\r\ny",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn redirect_keeps_path_and_query_and_brackets_ipv6() {
        let uri: Uri = "/cart?item=7".parse().unwrap();
        let resp = https_redirect("shop.example:8080", &uri, 8443, LogSlot::default());
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()["location"],
            "https://shop.example:8443/cart?item=7"
        );
        let resp = https_redirect("[::1]:8080", &uri, 443, LogSlot::default());
        assert_eq!(resp.headers()["location"], "https://[::1]/cart?item=7");
    }
}
