//! Which URLs get the token, and how: a same-origin URL gets `;NAME=TOKEN` at the end of its
//! path (a path parameter survives a GET form's submission, which replaces the query); a URL
//! with no path of its own (`?page=2`) gets it in the query. Everything else is left as it is:
//! other hosts and schemes, `mailto:`, `javascript:`, `data:`, fragment-only links.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use url::Url;

/// Makes a one-time handoff code for a link to a sibling host.
pub type Issuer = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Links to sibling hosts that share the session: each gets a one-time code of its own.
#[derive(Clone)]
struct Siblings {
    hosts: Arc<[String]>,
    param: String,
    issue: Issuer,
}

/// Adds one token to the same-origin URLs of one response, and handoff codes to its links
/// to sibling hosts.
#[derive(Clone)]
pub struct Tagger {
    param: String,
    /// `None`: same-origin URLs stay as they are (the client keeps its token in a cookie).
    token: Option<String>,
    siblings: Option<Siblings>,
    /// The request's own URL: what relative URLs resolve against, and the origin that counts.
    origin: Url,
    /// What relative URLs in the document resolve against (`<base href>`, else `origin`).
    base: Url,
}

impl Tagger {
    /// A tagger for a response to `scheme://host` + `path_and_query`; `None` if those do not
    /// make a URL.
    pub fn new(
        param: &str,
        token: &str,
        scheme: &str,
        host: &str,
        path_and_query: &str,
    ) -> Option<Tagger> {
        let origin = Url::parse(&format!("{scheme}://{host}{path_and_query}")).ok()?;
        Some(Tagger {
            param: param.to_owned(),
            token: Some(token.to_owned()),
            siblings: None,
            base: origin.clone(),
            origin,
        })
    }

    /// Same-origin URLs keep no token (the client has it in a cookie): only sibling links
    /// are tagged.
    #[must_use]
    pub fn without_token(mut self) -> Tagger {
        self.token = None;
        self
    }

    /// Links to `hosts` (`host[:port]`, lower case) get a code from `issue` in `param`.
    #[must_use]
    pub fn with_siblings(mut self, hosts: Arc<[String]>, param: &str, issue: Issuer) -> Tagger {
        if !hosts.is_empty() {
            self.siblings = Some(Siblings {
                hosts,
                param: param.to_owned(),
                issue,
            });
        }
        self
    }

    /// The document's `<base href>`: later relative URLs resolve against it.
    pub fn set_base(&mut self, href: &str) {
        if let Ok(base) = self.origin.join(href.trim()) {
            self.base = base;
        }
    }

    /// `link` with the token (or, to a sibling host, a handoff code), or `None` when it must
    /// stay as it is.
    pub fn tag(&self, link: &str) -> Option<String> {
        let link = link.trim();
        if link.is_empty() || link.starts_with('#') {
            return None;
        }
        let target = self.base.join(link).ok()?;
        if !matches!(target.scheme(), "http" | "https") {
            return None;
        }
        if target.origin() == self.origin.origin() {
            let token = self.token.as_deref()?;
            return Some(insert(link, &self.param, token));
        }
        let siblings = self.siblings.as_ref()?;
        let host = target.host_str()?;
        let authority = match target.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        if !siblings
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&authority))
        {
            return None;
        }
        let code = (siblings.issue)()?;
        Some(insert(link, &siblings.param, &code))
    }
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tagger")
            .field("origin", &self.origin.as_str())
            .field("tags_same_origin", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// `param=value` put into `link`'s text, keeping it relative if it was: at the end of the
/// path, or in the query when the link has no path of its own.
fn insert(link: &str, param: &str, value: &str) -> String {
    let (before_fragment, fragment) = split_at_first(link, '#');
    let (path, query) = split_at_first(before_fragment, '?');
    // An older value of the parameter (a token from before a regenerate) goes.
    let (path, _, _) = crate::path_param::remove(path, param);
    // After the scheme and authority of an absolute or network-path URL, the path starts.
    let path_start = match path.find("//") {
        Some(i) if i == 0 || is_scheme(&path[..i]) => {
            path[i + 2..].find('/').map_or(path.len(), |j| i + 2 + j)
        }
        _ => 0,
    };
    if path.len() == path_start && path_start == 0 {
        // `?query` alone: no path to carry a parameter, so the query does.
        let query = match query.strip_prefix('?') {
            Some(q) if !q.is_empty() => format!("?{q}&{param}={value}"),
            _ => format!("?{param}={value}"),
        };
        return format!("{query}{fragment}");
    }
    let slash = if path.len() == path_start { "/" } else { "" };
    format!("{path}{slash};{param}={value}{query}{fragment}")
}

/// `http:`, `https:`: a scheme and its colon.
fn is_scheme(s: &str) -> bool {
    s.strip_suffix(':').is_some_and(|name| {
        name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    })
}

/// `s` split before the first `c` (the second part keeps `c`).
fn split_at_first(s: &str, c: char) -> (&str, &str) {
    s.find(c).map_or((s, ""), |i| s.split_at(i))
}

/// The URL in a refresh instruction (`5; url=/next`), with the token; `None` if there is none
/// to tag.
pub fn tag_refresh(tagger: &Tagger, value: &str) -> Option<String> {
    let (delay, rest) = value.split_once(';').or_else(|| value.split_once(','))?;
    let rest = rest.trim_start();
    let url = match rest.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("url=") => &rest[4..],
        _ => rest,
    };
    let url = url.trim().trim_matches(['\'', '"']);
    let tagged = tagger.tag(url)?;
    Some(format!("{delay}; url={tagged}"))
}

/// Tags `Location`, `Content-Location` and `Refresh` in a response's headers.
pub fn rewrite_headers(tagger: &Tagger, headers: &mut HeaderMap) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let tagged = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| tagger.tag(v))
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let Some(v) = tagged {
            headers.insert(name, v);
        }
    }
    let refresh = header::HeaderName::from_static("refresh");
    let tagged = headers
        .get(&refresh)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| tag_refresh(tagger, v))
        .and_then(|v| HeaderValue::from_str(&v).ok());
    if let Some(v) = tagged {
        headers.insert(refresh, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagger() -> Tagger {
        Tagger::new("sgsid", "T", "http", "shop.example", "/dir/page?x=1").unwrap()
    }

    #[test]
    fn relative_and_same_origin_links_get_the_token() {
        let t = tagger();
        for (link, want) in [
            ("cart", "cart;sgsid=T"),
            ("../a/b?q=1#top", "../a/b;sgsid=T?q=1#top"),
            ("/abs", "/abs;sgsid=T"),
            ("/", "/;sgsid=T"),
            ("http://shop.example/x", "http://shop.example/x;sgsid=T"),
            ("http://shop.example", "http://shop.example/;sgsid=T"),
            ("//shop.example/x?y", "//shop.example/x;sgsid=T?y"),
            ("?page=2", "?page=2&sgsid=T"),
            ("a;v=1", "a;v=1;sgsid=T"),
            ("a;sgsid=OLD?z", "a;sgsid=T?z"),
            ("a//b", "a//b;sgsid=T"),
            ("  spaced  ", "spaced;sgsid=T"),
        ] {
            assert_eq!(t.tag(link).as_deref(), Some(want), "{link}");
        }
    }

    #[test]
    fn other_origins_schemes_and_fragments_are_left_alone() {
        let t = tagger();
        for link in [
            "#top",
            "",
            "http://other.example/x",
            "https://shop.example/x",
            "http://shop.example:8080/x",
            "//other.example/x",
            "mailto:a@shop.example",
            "javascript:void(0)",
            "data:text/html,hi",
            "tel:123",
        ] {
            assert_eq!(t.tag(link), None, "{link}");
        }
    }

    #[test]
    fn sibling_links_get_a_fresh_code_each_and_others_none() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = n.clone();
        let issue: Issuer = Arc::new(move || {
            let k = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(format!("C{k}"))
        });
        let hosts: Arc<[String]> = vec!["account.example".to_owned()].into();
        let t = tagger().with_siblings(hosts, "sghandoff", issue);
        assert_eq!(
            t.tag("https://account.example/me").as_deref(),
            Some("https://account.example/me;sghandoff=C0")
        );
        assert_eq!(
            t.tag("//ACCOUNT.example/x?y=1").as_deref(),
            Some("//ACCOUNT.example/x;sghandoff=C1?y=1")
        );
        assert_eq!(t.tag("https://other.example/"), None);
        assert_eq!(t.tag("https://account.example:8443/"), None);
        // Same-origin links still get the token, unless the client keeps it in a cookie.
        assert_eq!(t.tag("/cart").as_deref(), Some("/cart;sgsid=T"));
        let cookie_client = t.without_token();
        assert_eq!(cookie_client.tag("/cart"), None);
        assert_eq!(
            cookie_client.tag("http://account.example/").as_deref(),
            Some("http://account.example/;sghandoff=C2")
        );
    }

    #[test]
    fn a_base_elsewhere_makes_relative_links_foreign() {
        let mut t = tagger();
        t.set_base("http://cdn.example/");
        assert_eq!(t.tag("img/a"), None);
        assert_eq!(
            t.tag("http://shop.example/x").as_deref(),
            Some("http://shop.example/x;sgsid=T")
        );
        let mut t = tagger();
        t.set_base("/other/");
        assert_eq!(t.tag("a").as_deref(), Some("a;sgsid=T"));
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
        rewrite_headers(&t, &mut h);
        assert_eq!(h[header::LOCATION], "/cart;sgsid=T?added=1");
        assert_eq!(h["refresh"], "5; url=/next;sgsid=T");
        assert_eq!(h[header::CONTENT_LOCATION], "https://elsewhere.example/");
    }
}
