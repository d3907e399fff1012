//! Which URLs get the token, and how. A URL is judged exactly as the browser will resolve it:
//! an HTML attribute's character references decoded first (the WHATWG rules, the full named
//! table, numeric forms, legacy names without `;`), then the URL parsed by the WHATWG rules
//! (the `url` crate: leading and trailing C0 controls and spaces dropped, tabs and newlines
//! removed, `\` read as `/`) against the document's base. Only a URL that resolves to the
//! page's own origin over http(s) gets `;NAME=TOKEN` at the end of its path (a path parameter
//! survives a GET form's submission, which replaces the query); a URL to a sibling host gets
//! a handoff code instead. Everything else is left byte for byte as it was.
//!
//! A tagged URL is written back absolute (`scheme://host[:port]/path;NAME=TOKEN?query#frag`),
//! so that no `<base>` the page carries, later or hidden, and no script that adds one, can move
//! it to another origin; its query and fragment stay as the page wrote them (the browser
//! encodes them, in the page's charset, as it would have). In an attribute it is written
//! escaped, so that the browser decodes it to exactly that.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderMap, HeaderValue};
use url::Url;

/// Makes a one-time handoff code for a link to a sibling host.
pub type Issuer = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Most handoff codes one response mints: each is a store write, and a page of many sibling
/// links must not become a flood of them (links past this stay as they were).
pub const MAX_CODES_PER_RESPONSE: usize = 16;

/// Links to sibling hosts that share the session: each gets a one-time code of its own.
#[derive(Clone)]
struct Siblings {
    hosts: Arc<[String]>,
    param: String,
    issue: Issuer,
    /// Codes minted for this response so far.
    issued: Arc<AtomicUsize>,
}

/// What a rewritten URL became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Led {
    /// It leads to the page's own origin, with the token.
    Home,
    /// It leads to a sibling host, with a handoff code.
    Sibling,
    /// It leads home or to a sibling, and lost a token or code someone else had put in it.
    Cleaned,
}

/// Adds one token to the same-origin URLs of one response, and handoff codes to its links
/// to sibling hosts; and, for a page whose URL carries a token, keeps the page from sending
/// that URL elsewhere (see `html`).
#[derive(Clone)]
pub struct Tagger {
    param: String,
    /// `None`: same-origin URLs stay as they are (the client keeps its token in a cookie).
    token: Option<String>,
    siblings: Option<Siblings>,
    /// The request's own URL, as the client sees it: what relative URLs in headers resolve
    /// against, and the origin that counts.
    document: Url,
    /// What relative URLs in the document resolve against (its `<base href>`, else
    /// `document`).
    base: Url,
    /// The page's URL carries a token (or the client will hold one in its URLs): nothing in
    /// the page may send it to another site.
    guard: bool,
    /// Parameters that no URL to this origin or a sibling keeps unless the gateway put them
    /// there (the token's, the handoff code's): a page may hold someone else's, in a comment
    /// or an upload, for a victim to click and be logged into the attacker's session.
    scrubbed: Vec<String>,
}

impl Tagger {
    /// A tagger for a response to `scheme://host` + `path_and_query` (as the client's browser
    /// addressed it); `None` if those do not make a URL.
    pub fn new(
        param: &str,
        token: &str,
        scheme: &str,
        host: &str,
        path_and_query: &str,
    ) -> Option<Tagger> {
        let document = Url::parse(&format!("{scheme}://{host}{path_and_query}")).ok()?;
        if !matches!(document.scheme(), "http" | "https") {
            return None;
        }
        Some(Tagger {
            param: param.to_owned(),
            token: Some(token.to_owned()),
            siblings: None,
            base: document.clone(),
            document,
            guard: false,
            scrubbed: vec![param.to_owned()],
        })
    }

    /// URLs to this origin or a sibling lose any `name` parameter (path or query) someone
    /// else put there, as they lose the token's.
    #[must_use]
    pub fn scrubbing(mut self, name: &str) -> Tagger {
        self.scrubbed.push(name.to_owned());
        self
    }

    /// Same-origin URLs keep no token (the client has it in a cookie): only sibling links
    /// are tagged.
    #[must_use]
    pub fn without_token(mut self) -> Tagger {
        self.token = None;
        self
    }

    /// The page's own URL carries a token: its referrer settings are kept from sending it
    /// elsewhere (see `html`).
    #[must_use]
    pub fn guarding(mut self) -> Tagger {
        self.guard = true;
        self
    }

    /// Whether the page's referrer settings are guarded.
    pub fn guards(&self) -> bool {
        self.guard
    }

    /// Links to `hosts` (`host[:port]`, lower case) get a code from `issue` in `param`, at
    /// most [`MAX_CODES_PER_RESPONSE`] of them.
    #[must_use]
    pub fn with_siblings(mut self, hosts: Arc<[String]>, param: &str, issue: Issuer) -> Tagger {
        if !hosts.is_empty() {
            self.scrubbed.push(param.to_owned());
            self.siblings = Some(Siblings {
                hosts,
                param: param.to_owned(),
                issue,
                issued: Arc::default(),
            });
        }
        self
    }

    /// The document's `<base href>` (the raw attribute value): later relative URLs resolve
    /// against it. A base the browser ignores (unparsable, `data:` or `javascript:`) changes
    /// nothing.
    pub fn set_base(&mut self, raw: &str) {
        let href = htmlize::unescape_attribute(raw);
        if let Ok(base) = self.document.join(&href)
            && !matches!(base.scheme(), "data" | "javascript")
        {
            self.base = base;
        }
    }

    /// An HTML attribute's raw value (as the page wrote it, character references and all)
    /// with the token or a handoff code, written back escaped, and where it leads now;
    /// `None` when it must stay as it is.
    pub fn tag_attribute(&self, raw: &str) -> Option<(String, Led)> {
        let value = htmlize::unescape_attribute(raw);
        let (tagged, led) = self.tag_against(&value, &self.base)?;
        Some((escape_attribute(&tagged), led))
    }

    /// An HTML attribute's raw value that leads to this origin or a sibling, without someone
    /// else's token or code (escaped for the attribute); `None` when it has none. Nothing is
    /// added: for attributes outside the route's list.
    pub fn scrub_attribute(&self, raw: &str) -> Option<String> {
        let value = htmlize::unescape_attribute(raw);
        let cleaned = browser_cleaned(&value);
        if !self.scrubbed.iter().any(|p| cleaned.contains(p.as_str())) {
            return None;
        }
        let target = self.base.join(&cleaned).ok()?;
        let ours = target.origin() == self.document.origin() || self.sibling_of(&target).is_some();
        if !matches!(target.scheme(), "http" | "https") || !ours {
            return None;
        }
        let (written, scrubbed) = self.write(&target, &cleaned, None);
        scrubbed.then(|| escape_attribute(&written))
    }

    /// Whether `name` is a parameter the gateway scrubs (a form field so named would put
    /// one in a GET submission's query).
    pub fn is_scrubbed(&self, name: &str) -> bool {
        self.scrubbed.iter().any(|p| p == name)
    }

    /// A header's URL (`Location`, which resolves against the request's URL, not a base)
    /// with the token or a handoff code; `None` when it must stay as it is.
    pub fn tag(&self, value: &str) -> Option<String> {
        self.tag_header(value).map(|(tagged, _)| tagged)
    }

    fn tag_header(&self, value: &str) -> Option<(String, Led)> {
        self.tag_against(value, &self.document)
    }

    /// `value` (decoded) resolved against `base`: the absolute URL with the parameter, and
    /// where it leads, if it gets one.
    fn tag_against(&self, value: &str, base: &Url) -> Option<(String, Led)> {
        let cleaned = browser_cleaned(value);
        // Nothing, or a fragment of the page: the browser reloads or scrolls the page it has
        // (whose URL carries the token already).
        if cleaned.is_empty() || cleaned.starts_with('#') {
            return None;
        }
        let target = base.join(&cleaned).ok()?;
        if !matches!(target.scheme(), "http" | "https") {
            return None;
        }
        if target.origin() == self.document.origin() {
            if let Some(token) = self.token.as_deref() {
                let written = self.write(&target, &cleaned, Some((&self.param, token)));
                return Some((written.0, Led::Home));
            }
        } else {
            let siblings = self.sibling_of(&target)?;
            if siblings.issued.fetch_add(1, Ordering::Relaxed) < MAX_CODES_PER_RESPONSE
                && let Some(code) = (siblings.issue)()
            {
                let written = self.write(&target, &cleaned, Some((&siblings.param, &code)));
                return Some((written.0, Led::Sibling));
            }
        }
        // Ours, and getting nothing: only a parameter someone else put there goes.
        if !self.scrubbed.iter().any(|p| cleaned.contains(p.as_str())) {
            return None;
        }
        let (written, scrubbed) = self.write(&target, &cleaned, None);
        scrubbed.then_some((written, Led::Cleaned))
    }

    /// The sibling host `target` is on, if it is on one.
    fn sibling_of(&self, target: &Url) -> Option<&Siblings> {
        let siblings = self.siblings.as_ref()?;
        let host = target.host_str()?;
        let authority = match target.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        siblings
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&authority))
            .then_some(siblings)
    }

    /// `target` absolute, with `param=value` (if any) at the end of its path, and the query
    /// and fragment of `cleaned` as they were written; without any parameter the gateway
    /// scrubs (an older token, someone else's code), in the path or the query. Also whether
    /// one was scrubbed.
    fn write(&self, target: &Url, cleaned: &str, param: Option<(&str, &str)>) -> (String, bool) {
        let mut path = target.path().to_owned();
        let mut scrubbed = false;
        for name in &self.scrubbed {
            let (rest, _, found) = crate::path_param::remove(&path, name);
            if found {
                (path, scrubbed) = (rest, true);
            }
        }
        let mut out = target.origin().ascii_serialization();
        out.push_str(&path);
        if let Some((name, value)) = param {
            out.push(';');
            out.push_str(name);
            out.push('=');
            out.push_str(value);
        }
        // The first `?` or `#` of the cleaned input starts the query or fragment in every
        // WHATWG state of an http(s) URL: the rest is the page's own text.
        let Some(at) = cleaned.find(['?', '#']) else {
            return (out, scrubbed);
        };
        let (query, fragment) = match cleaned[at..].strip_prefix('?') {
            Some(rest) => rest.split_at(rest.find('#').unwrap_or(rest.len())),
            None => ("", &cleaned[at..]),
        };
        if cleaned[at..].starts_with('?') {
            let mut query = query.to_owned();
            let mut emptied = false;
            for name in &self.scrubbed {
                let (rest, _, found) = crate::path_param::remove_from_query(&query, name);
                if found {
                    (query, scrubbed, emptied) = (rest, true, true);
                }
            }
            // A query that held only a scrubbed parameter goes with it; an empty one stays.
            if !(emptied && query.is_empty()) {
                out.push('?');
                out.push_str(&query);
            }
        }
        out.push_str(fragment);
        // What was inside the URL may end it now (a parameter after it went): a browser
        // would drop it there, so it is written encoded, as the browser would have sent it.
        let kept = out.trim_end_matches(|c: char| c <= ' ').len();
        if kept < out.len() {
            let tail: String = out[kept..].bytes().map(|b| format!("%{b:02X}")).collect();
            out.truncate(kept);
            out.push_str(&tail);
        }
        (out, scrubbed)
    }
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tagger")
            .field("document", &self.document.as_str())
            .field("tags_same_origin", &self.token.is_some())
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

/// What a browser parses of a URL string: leading and trailing C0 controls and spaces
/// dropped, every tab, CR and LF removed (the URL standard's first steps).
fn browser_cleaned(value: &str) -> Cow<'_, str> {
    let trimmed = value.trim_matches(|c: char| c <= ' ');
    if trimmed.contains(['\t', '\n', '\r']) {
        Cow::Owned(
            trimmed
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                .collect(),
        )
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Text for an attribute value that the browser decodes back to `s` (lol_html quotes it and
/// escapes `"`, but leaves `&` as it is; `<` is escaped too, which XML-parsed pages need).
fn escape_attribute(s: &str) -> String {
    if !s.contains(['&', '"', '<']) {
        return s.to_owned();
    }
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// Where the URL of a refresh instruction (`5; url=/next`) starts and ends in `value`, read
/// as the HTML standard's "shared declarative refresh steps" read it; `None` if it has none.
fn refresh_url(value: &str) -> Option<(usize, usize)> {
    let bytes = value.as_bytes();
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r');
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < bytes.len() && ws(bytes[*i]) {
            *i += 1;
        }
    };
    skip(&mut i);
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 && bytes.get(i) != Some(&b'.') {
        return None;
    }
    i += digits;
    i += bytes[i..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    if i < bytes.len() {
        if !(bytes[i] == b';' || bytes[i] == b',' || ws(bytes[i])) {
            return None;
        }
        skip(&mut i);
        if i < bytes.len() && (bytes[i] == b';' || bytes[i] == b',') {
            i += 1;
        }
        skip(&mut i);
    }
    if i >= bytes.len() {
        return None;
    }
    let whole = i;
    let mut at = i;
    'url: {
        if !bytes[at].eq_ignore_ascii_case(&b'u') {
            break 'url;
        }
        at += 1;
        if !bytes.get(at).is_some_and(|b| b.eq_ignore_ascii_case(&b'r')) {
            return Some((whole, value.len()));
        }
        at += 1;
        if !bytes.get(at).is_some_and(|b| b.eq_ignore_ascii_case(&b'l')) {
            return Some((whole, value.len()));
        }
        at += 1;
        skip(&mut at);
        if bytes.get(at) != Some(&b'=') {
            return Some((whole, value.len()));
        }
        at += 1;
        skip(&mut at);
    }
    match bytes.get(at) {
        Some(&q @ (b'\'' | b'"')) => {
            let start = at + 1;
            let end = bytes[start..]
                .iter()
                .position(|b| *b == q)
                .map_or(value.len(), |p| start + p);
            Some((start, end))
        }
        _ => Some((at, value.len())),
    }
}

/// A refresh instruction (`5; url=/next`, decoded) with its URL tagged; `None` if there is
/// none to tag.
fn tag_refresh_with(
    value: &str,
    tag: impl FnOnce(&str) -> Option<(String, Led)>,
) -> Option<(String, Led)> {
    let (start, end) = refresh_url(value)?;
    let (tagged, led) = tag(&value[start..end])?;
    // The delay as written; then the URL alone (absolute, so no quotes are needed).
    let delay = value[..start]
        .split([';', ','])
        .next()
        .unwrap_or("0")
        .trim();
    let delay = if delay.is_empty() { "0" } else { delay };
    Some((format!("{delay}; url={tagged}"), led))
}

/// The raw `content` of a `<meta http-equiv=refresh>` with its URL tagged, escaped for the
/// attribute; `None` if there is none to tag.
pub fn tag_refresh(tagger: &Tagger, raw: &str) -> Option<String> {
    let value = htmlize::unescape_attribute(raw);
    tag_refresh_with(&value, |url| tagger.tag_against(url, &tagger.base))
        .map(|(v, _)| escape_attribute(&v))
}

/// Tags `Location`, `Content-Location` and `Refresh` in a response's headers. Returns whether
/// one of them now leads to a sibling host with a handoff code.
pub fn rewrite_headers(tagger: &Tagger, headers: &mut HeaderMap) -> bool {
    let mut to_sibling = false;
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let tagged = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| tagger.tag_header(v))
            .and_then(|(v, led)| Some((HeaderValue::from_str(&v).ok()?, led)));
        if let Some((v, led)) = tagged {
            to_sibling |= led == Led::Sibling && name == header::LOCATION;
            headers.insert(name, v);
        }
    }
    let refresh = header::HeaderName::from_static("refresh");
    let tagged = headers
        .get(&refresh)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| tag_refresh_with(v, |url| tagger.tag_header(url)))
        .and_then(|(v, led)| Some((HeaderValue::from_str(&v).ok()?, led)));
    if let Some((v, led)) = tagged {
        to_sibling |= led == Led::Sibling;
        headers.insert(refresh, v);
    }
    to_sibling
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagger() -> Tagger {
        Tagger::new("sgsid", "T", "http", "shop.example", "/dir/page?x=1").unwrap()
    }

    #[test]
    fn relative_and_same_origin_links_get_the_token_and_become_absolute() {
        let t = tagger();
        for (link, want) in [
            ("cart", "http://shop.example/dir/cart;sgsid=T"),
            ("../a/b?q=1#top", "http://shop.example/a/b;sgsid=T?q=1#top"),
            ("/abs", "http://shop.example/abs;sgsid=T"),
            ("/", "http://shop.example/;sgsid=T"),
            ("http://shop.example/x", "http://shop.example/x;sgsid=T"),
            ("http://shop.example", "http://shop.example/;sgsid=T"),
            ("HTTP://SHOP.example:80/x", "http://shop.example/x;sgsid=T"),
            ("//shop.example/x?y", "http://shop.example/x;sgsid=T?y"),
            ("?page=2", "http://shop.example/dir/page;sgsid=T?page=2"),
            ("a;v=1", "http://shop.example/dir/a;v=1;sgsid=T"),
            ("a;sgsid=OLD?z", "http://shop.example/dir/a;sgsid=T?z"),
            ("a//b", "http://shop.example/dir/a//b;sgsid=T"),
            ("  spaced  ", "http://shop.example/dir/spaced;sgsid=T"),
            ("/a\\b", "http://shop.example/a/b;sgsid=T"),
            ("./user:pw@x", "http://shop.example/dir/user:pw@x;sgsid=T"),
            (
                "http://user:pw@shop.example/x",
                "http://shop.example/x;sgsid=T",
            ),
            ("/q?a=\"é\"&b", "http://shop.example/q;sgsid=T?a=\"é\"&b"),
        ] {
            assert_eq!(t.tag(link).as_deref(), Some(want), "{link}");
        }
    }

    #[test]
    fn other_origins_schemes_and_fragments_are_left_alone() {
        let t = tagger();
        for link in [
            "#top",
            " #top",
            "",
            "  ",
            "http://other.example/x",
            "https://shop.example/x",
            "http://shop.example:8080/x",
            "//other.example/x",
            "/\\other.example/x",
            "\\\\other.example",
            "/\t/other.example",
            "https:other.example",
            "http://shop.example@other.example/",
            "mailto:a@shop.example",
            "javascript:void(0)",
            "java\tscript:x",
            "data:text/html,hi",
            "tel:123",
        ] {
            assert_eq!(t.tag(link), None, "{link:?}");
        }
    }

    #[test]
    fn attributes_are_judged_after_their_character_references_are_decoded() {
        let t = tagger();
        for raw in [
            "&sol;&sol;other.example/x",
            "&#47;&#x2F;other.example",
            "http&colon;//other.example/",
            "/&bsol;other.example",
            "/&Tab;/other.example",
            "&NewLine;//other.example",
            "javascript&colon;alert(1)",
            "&#106;avascript:alert(1)",
        ] {
            assert_eq!(t.tag_attribute(raw), None, "{raw}");
        }
        // Written back so that the browser decodes it to what was judged.
        assert_eq!(
            t.tag_attribute("/cart?a=1&amp;b=2")
                .map(|(v, _)| v)
                .as_deref(),
            Some("http://shop.example/cart;sgsid=T?a=1&amp;b=2")
        );
        assert_eq!(
            t.tag_attribute("/cart?a=1&copy=2&amp;lt;")
                .map(|(v, _)| v)
                .as_deref(),
            Some("http://shop.example/cart;sgsid=T?a=1&amp;copy=2&amp;lt;")
        );
        assert_eq!(
            t.tag_attribute("/q?&quot;x&quot;")
                .map(|(v, _)| v)
                .as_deref(),
            Some("http://shop.example/q;sgsid=T?&quot;x&quot;")
        );
        assert_eq!(
            t.tag_attribute("&sol;cart").map(|(v, _)| v).as_deref(),
            Some("http://shop.example/cart;sgsid=T")
        );
    }

    #[test]
    fn sibling_links_get_a_fresh_code_each_up_to_a_bound_and_others_none() {
        let n = Arc::new(AtomicUsize::new(0));
        let counter = n.clone();
        let issue: Issuer = Arc::new(move || {
            let k = counter.fetch_add(1, Ordering::Relaxed);
            Some(format!("C{k}"))
        });
        let hosts: Arc<[String]> = vec!["account.example".to_owned()].into();
        let t = tagger().with_siblings(hosts, "sghandoff", issue);
        assert_eq!(
            t.tag("https://account.example/me").as_deref(),
            Some("https://account.example/me;sghandoff=C0")
        );
        assert_eq!(
            t.tag("//ACCOUNT.example/x;sgsid=LEAK?y=1").as_deref(),
            Some("http://account.example/x;sghandoff=C1?y=1")
        );
        assert_eq!(t.tag("https://other.example/"), None);
        assert_eq!(t.tag("https://account.example:8443/"), None);
        // Same-origin links still get the token, unless the client keeps it in a cookie.
        assert_eq!(
            t.tag("/cart").as_deref(),
            Some("http://shop.example/cart;sgsid=T")
        );
        let cookie_client = t.without_token();
        assert_eq!(cookie_client.tag("/cart"), None);
        for _ in 2..MAX_CODES_PER_RESPONSE {
            assert!(cookie_client.tag("http://account.example/").is_some());
        }
        assert_eq!(cookie_client.tag("http://account.example/"), None);
        assert_eq!(n.load(Ordering::Relaxed), MAX_CODES_PER_RESPONSE);
    }

    #[test]
    fn a_base_elsewhere_makes_relative_links_foreign_and_bases_the_browser_ignores_do_not() {
        let mut t = tagger();
        t.set_base("http://cdn.example/");
        assert_eq!(t.tag_attribute("img/a"), None);
        assert_eq!(
            t.tag_attribute("http://shop.example/x")
                .map(|(v, _)| v)
                .as_deref(),
            Some("http://shop.example/x;sgsid=T")
        );
        let mut t = tagger();
        t.set_base("&sol;other/");
        assert_eq!(
            t.tag_attribute("a").map(|(v, _)| v).as_deref(),
            Some("http://shop.example/other/a;sgsid=T")
        );
        let mut t = tagger();
        t.set_base("javascript:alert(1)//");
        assert_eq!(
            t.tag_attribute("a").map(|(v, _)| v).as_deref(),
            Some("http://shop.example/dir/a;sgsid=T")
        );
    }

    #[test]
    fn refresh_urls_are_found_as_the_html_standard_reads_them() {
        fn url(v: &str) -> Option<&str> {
            refresh_url(v).map(|(s, e)| &v[s..e])
        }
        assert_eq!(url("5; url=/next"), Some("/next"));
        assert_eq!(url("5;URL='/next'x"), Some("/next"));
        assert_eq!(url("0, url = \"/a b\""), Some("/a b"));
        assert_eq!(url("3 /plain"), Some("/plain"));
        assert_eq!(url("3;ur/x"), Some("ur/x"));
        assert_eq!(url(".5; u"), Some("u"));
        assert_eq!(url("5"), None);
        assert_eq!(url("x; url=/a"), None);
        assert_eq!(url("5x; url=/a"), None);
    }

    #[test]
    fn redirect_and_refresh_headers_are_tagged() {
        let t = tagger();
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_static("/cart?added=1"));
        h.insert("refresh", HeaderValue::from_static("5; URL='/next'"));
        h.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("https://elsewhere.example/"),
        );
        assert!(!rewrite_headers(&t, &mut h));
        assert_eq!(
            h[header::LOCATION],
            "http://shop.example/cart;sgsid=T?added=1"
        );
        assert_eq!(h["refresh"], "5; url=http://shop.example/next;sgsid=T");
        assert_eq!(h[header::CONTENT_LOCATION], "https://elsewhere.example/");
    }
}
