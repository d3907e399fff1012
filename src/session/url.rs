//! The token in a URL, for clients that do not return cookies: as a path parameter
//! (`/cart;sgsid=TOKEN?item=7`, which survives a GET form's submission) or as a query
//! parameter (`/cart?sgsid=TOKEN`). Both are found and taken out, so that neither the backend
//! nor the access log ever sees a token.
//!
//! The text around the token is kept byte for byte: other parameters are not decoded and
//! re-encoded (a backend may sign or compare its own URLs).

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use super::handoff::HANDOFF_PARAMETER;

/// A request target that is no longer valid once its token is taken out.
#[derive(Debug, thiserror::Error)]
#[error("invalid request target")]
pub struct BadTarget;

/// The tokens a URL carried, in the order they count: the path parameter before the query.
#[derive(Default, PartialEq, Eq)]
pub struct UrlTokens {
    /// The first `;NAME=` path parameter's value.
    pub path: Option<String>,
    /// The first `NAME=` query parameter's value.
    pub query: Option<String>,
    /// A sibling host's handoff code (see `handoff`), from the path or the query.
    pub handoff: Option<String>,
    /// The token in the request's `Referer`: the page the request came from (when a request
    /// from one of our pages carries a token other than its page's, someone else put it in
    /// the link).
    pub referer: Option<String>,
}

// Never print a token, not even in a debug dump.
impl std::fmt::Debug for UrlTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlTokens")
            .field("path", &self.path.as_ref().map(|_| "…"))
            .field("query", &self.query.as_ref().map(|_| "…"))
            .field("handoff", &self.handoff.as_ref().map(|_| "…"))
            .field("referer", &self.referer.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Hyperlink auditing's headers: the page a link was on, and where it led.
const PING_FROM: HeaderName = HeaderName::from_static("ping-from");
const PING_TO: HeaderName = HeaderName::from_static("ping-to");

/// Takes the tokens under `param` (and handoff codes) out of a request: out of its target,
/// and out of a `Referer`, `Ping-From` or `Ping-To` that carries one, so that no backend and
/// no log sees them. The `Referer`'s token is kept (see [`UrlTokens::referer`]).
///
/// # Errors
/// The target without its token is no longer a valid URI (it cannot happen for a target
/// that parsed); the target is then replaced by `/` and the request must be refused.
pub fn take_from_request(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    param: &str,
) -> Result<Option<Box<UrlTokens>>, BadTarget> {
    // Headers that carry a page's URL: `Referer`, and hyperlink auditing's `Ping-From`
    // and `Ping-To` (a page the gateway rewrote has no ping, but another may).
    let mut referer_token = None;
    for name in [header::REFERER, PING_FROM, PING_TO] {
        // Most requests carry none of them: one lookup each.
        if !headers.contains_key(&name) {
            continue;
        }
        // Every value, not only the first: a client may send the header twice.
        let mut changed = false;
        let mut cleaned = Vec::new();
        for value in headers.get_all(&name) {
            let wanted = (name == header::REFERER).then_some(&mut referer_token);
            let (kept, taken) = without_tokens(value, param, wanted);
            changed |= taken;
            cleaned.extend(kept);
        }
        if changed {
            headers.remove(&name);
            for v in cleaned {
                headers.append(name.clone(), v);
            }
        }
    }
    let Some(pq) = uri.path_and_query() else {
        return Ok(None);
    };
    // The common case, a URL with neither parameter, allocates nothing.
    let first = take_tokens(pq.as_str(), param);
    let rest = first
        .as_ref()
        .map_or(pq.as_str(), |(clean, _)| clean.as_str());
    let second = take_tokens(rest, HANDOFF_PARAMETER);
    let (clean, mut tokens) = match (first, second) {
        (None, None) => return Ok(None),
        (Some((clean, tokens)), None) => (clean, tokens),
        (first, Some((clean, code))) => {
            let mut tokens = first.map(|(_, t)| t).unwrap_or_default();
            tokens.handoff = code.path.or(code.query);
            (clean, tokens)
        }
    };
    tokens.referer = referer_token;
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = PathAndQuery::try_from(clean).ok();
    match Uri::from_parts(parts) {
        Ok(clean) if clean.path_and_query().is_some() => {
            *uri = clean;
            Ok(Some(Box::new(tokens)))
        }
        _ => Err(BadTarget),
    }
}

/// One value of a header that carries a page's URL, without its tokens (`param`'s and
/// handoff codes), and whether it had any. A value that is not text cannot be parsed: it
/// is dropped if it names either parameter at all (fail closed), kept otherwise.
/// `referer_token`: where the first session token found goes, if it is still empty.
fn without_tokens(
    value: &HeaderValue,
    param: &str,
    mut referer_token: Option<&mut Option<String>>,
) -> (Option<HeaderValue>, bool) {
    let mut value = Some(value.clone());
    let mut taken = false;
    for taking in [param, HANDOFF_PARAMETER] {
        let Some(v) = &value else { break };
        let Ok(url) = v.to_str() else {
            if super::tracking::contains_ignoring_case(v.as_bytes(), taking.as_bytes()) {
                return (None, true);
            }
            continue;
        };
        let Some((clean, tokens)) = take_tokens(url, taking) else {
            continue;
        };
        if taking == param
            && let Some(slot) = referer_token.as_deref_mut()
            && slot.is_none()
        {
            *slot = tokens.path.or(tokens.query);
        }
        value = HeaderValue::from_str(&clean).ok();
        taken = true;
    }
    (value, taken)
}

/// Takes every `NAME` parameter out of `url` (a request target, or an absolute URL such as a
/// `Referer`). `None` when there is none, which is the common case and allocates nothing;
/// otherwise the URL without them, and the first value of each kind.
pub fn take_tokens(url: &str, name: &str) -> Option<(String, UrlTokens)> {
    if name.is_empty() || !url.contains(name) {
        return None;
    }
    let (before_query, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let mut tokens = UrlTokens::default();
    // Path parameters: `;NAME=VALUE` runs to the next `;`, `/` or the end of the path.
    let (mut path, first, mut found) = crate::path_param::remove(before_query, name);
    tokens.path = first.map(str::to_owned);

    // Query parameters: `&`-separated, or `;` as some servers read them; `NAME` alone or
    // `NAME=VALUE`. The others keep their separators.
    let mut kept = String::new();
    if let Some(q) = query {
        let (rest, first, in_query) = crate::path_param::remove_from_query(q, name);
        kept = rest;
        tokens.query = first.map(str::to_owned);
        found |= in_query;
    }
    if !found {
        return None;
    }
    if query.is_some() && !kept.is_empty() {
        path.push('?');
        path.push_str(&kept);
    }
    Some((path, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(url: &str) -> Option<(String, Option<String>, Option<String>)> {
        take_tokens(url, "sgsid").map(|(u, t)| (u, t.path, t.query))
    }

    #[test]
    fn a_url_without_the_parameter_is_left_alone() {
        assert_eq!(take("/cart?item=7"), None);
        assert_eq!(take("/cart;jsessionid=1?sgsidx=2&xsgsid=3"), None);
        assert_eq!(take("/sgsid/page"), None);
    }

    #[test]
    fn the_path_parameter_is_taken_out_with_the_rest_kept() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            take("/cart;sgsid=TOK?item=7"),
            Some(("/cart?item=7".into(), s("TOK"), None))
        );
        assert_eq!(take("/;sgsid=TOK"), Some(("/".into(), s("TOK"), None)));
        assert_eq!(
            take("/a;v=1;sgsid=TOK;w=2/b"),
            Some(("/a;v=1;w=2/b".into(), s("TOK"), None))
        );
        // A second one is removed too; the first counts.
        assert_eq!(
            take("/a;sgsid=ONE/b;sgsid=TWO"),
            Some(("/a/b".into(), s("ONE"), None))
        );
    }

    #[test]
    fn the_query_parameter_is_taken_out_with_the_others_kept_verbatim() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            take("/cart?a=%2F&sgsid=TOK&b=c+d"),
            Some(("/cart?a=%2F&b=c+d".into(), None, s("TOK")))
        );
        assert_eq!(
            take("/cart?sgsid=TOK"),
            Some(("/cart".into(), None, s("TOK")))
        );
        assert_eq!(take("/cart?sgsid"), Some(("/cart".into(), None, None)));
        assert_eq!(
            take("/p;sgsid=P?sgsid=Q"),
            Some(("/p".into(), s("P"), s("Q")))
        );
        // `;` as a query separator, as some servers read it: no token hides behind one.
        assert_eq!(
            take("/c?x=1;sgsid=TOK&y=2;z"),
            Some(("/c?x=1&y=2;z".into(), None, s("TOK")))
        );
        assert_eq!(
            take("/c?sgsid=TOK;y=2"),
            Some(("/c?y=2".into(), None, s("TOK")))
        );
    }

    #[test]
    fn an_absolute_url_such_as_a_referer_is_cleaned_too() {
        assert_eq!(
            take("https://shop.example/cart;sgsid=TOK?x=1"),
            Some((
                "https://shop.example/cart?x=1".into(),
                Some("TOK".into()),
                None
            ))
        );
    }

    #[test]
    fn every_referer_and_ping_value_loses_its_token_not_only_the_first() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::REFERER,
            HeaderValue::from_static("https://a.example/x"),
        );
        headers.append(
            header::REFERER,
            HeaderValue::from_static("https://a.example/cart;sgsid=SECOND"),
        );
        headers.append(PING_TO, HeaderValue::from_static("https://a.example/p"));
        let code = format!("https://a.example/q?{HANDOFF_PARAMETER}=CODE");
        headers.append(PING_TO, HeaderValue::from_str(&code).unwrap());
        // Not text: it cannot be parsed, and it names the parameter, so it goes.
        headers.append(
            PING_FROM,
            HeaderValue::from_bytes(b"https://a.example/\xff;SGSID=RAW").unwrap(),
        );
        headers.append(
            PING_FROM,
            HeaderValue::from_bytes(b"https://a.example/\xff").unwrap(),
        );
        let mut uri: Uri = "/".parse().unwrap();
        let got = take_from_request(&mut uri, &mut headers, "sgsid").unwrap();
        assert!(got.is_none(), "nothing in the target: no tokens to report");
        let all: Vec<&[u8]> = headers.values().map(HeaderValue::as_bytes).collect();
        for v in &all {
            let v = String::from_utf8_lossy(v).to_ascii_lowercase();
            assert!(!v.contains("sgsid") && !v.contains("handoff"), "{v}");
        }
        let referers: Vec<_> = headers.get_all(header::REFERER).iter().collect();
        assert_eq!(referers, ["https://a.example/x", "https://a.example/cart"]);
        assert_eq!(headers.get_all(PING_TO).iter().count(), 2);
        assert_eq!(headers.get_all(PING_FROM).iter().count(), 1);
    }

    #[test]
    fn debug_never_shows_a_token() {
        let (_, t) = take_tokens("/a;sgsid=SECRET", "sgsid").unwrap();
        assert!(!format!("{t:?}").contains("SECRET"));
    }
}
