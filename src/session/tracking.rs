//! How a client carries its token: in the cookie, in the URL, or — with `tracking: auto` —
//! whichever the client shows it can keep.
//!
//! `auto` decides from what a request shows. A token that came in the cookie means cookies
//! work; one that came in the URL means they do not. For a client with no session yet, a
//! small non-secret probe cookie, set on every response to such clients, tells: a client that
//! returns it keeps cookies, so its new session lives in the cookie alone. A client that does
//! not return it although it comes from one of our pages (a same-origin `Referer`: it was
//! sent the probe) refuses cookies, and its session lives in the URL. Without either sign (a
//! first visit that creates a session at once), the token goes both ways, and the next request
//! tells which one the client kept.
//!
//! A token in a URL is a credential anyone can put in a link, so where the request came from
//! counts too ([`Provenance`]): a URL token that arrives from another site is refused on every
//! route, and a client that keeps cookies never takes one (it would plant someone else's
//! session in the browser's cookie): a URL-tracked client that starts keeping cookies starts
//! a session of its own.

use crate::config::Tracking;

/// Where the request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No (valid) token.
    None,
    /// The session cookie.
    Cookie,
    /// The URL.
    Url,
}

/// What a request shows of its client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    /// It returned one of our cookies (the probe, or a session cookie even if refused).
    pub takes_cookies: bool,
    /// It came from one of our pages (see [`Provenance`]).
    pub from_here: bool,
    /// It came from another site (see [`Provenance`]).
    pub from_elsewhere: bool,
    /// A known crawler: it never gets a token in a URL (a search index would hand the
    /// session to anyone).
    pub crawler: bool,
}

/// Where a request came from, as a browser tells it: `Sec-Fetch-Site` (sent by every current
/// browser, and not settable by a page's scripts), else the `Referer`'s origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Provenance {
    /// From a page of our own origin.
    pub here: bool,
    /// From a page of another origin (another site, or a sibling host).
    pub elsewhere: bool,
}

impl Provenance {
    /// Judges `Sec-Fetch-Site` and `Referer` against `origin` (ours, as
    /// `Url::origin().ascii_serialization()` writes it). A request with neither (typed in,
    /// a bookmark, a client that is no browser) is from neither.
    pub fn of(fetch_site: Option<&[u8]>, referer: Option<&str>, origin: &str) -> Provenance {
        let referer_origin = referer
            .and_then(|r| url::Url::parse(r).ok())
            .map(|u| u.origin().ascii_serialization());
        let same_referer = referer_origin.as_deref().map(|o| o == origin);
        match fetch_site.map(<[u8]>::to_ascii_lowercase).as_deref() {
            Some(b"same-origin") => Provenance {
                here: same_referer != Some(false),
                elsewhere: same_referer == Some(false),
            },
            Some(b"cross-site" | b"same-site") => Provenance {
                here: false,
                elsewhere: true,
            },
            // `none`: the user typed it, or opened a bookmark.
            Some(_) => Provenance {
                here: false,
                elsewhere: same_referer == Some(false),
            },
            None => Provenance {
                here: same_referer == Some(true),
                elsewhere: same_referer == Some(false),
            },
        }
    }
}

/// How the client gets its token in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// In the cookie only.
    Cookie,
    /// In the response's URLs only.
    Url,
    /// Both, until the client shows which it keeps.
    Both,
}

impl Carry {
    /// The cookie is set.
    pub fn cookie(self) -> bool {
        matches!(self, Carry::Cookie | Carry::Both)
    }

    /// The URLs get the token.
    pub fn url(self) -> bool {
        matches!(self, Carry::Url | Carry::Both)
    }
}

/// How a client carries its token on a route with `tracking`.
pub fn carry(tracking: Tracking, source: Source, ev: Evidence) -> Carry {
    if ev.crawler {
        return Carry::Cookie;
    }
    match (tracking, source) {
        (Tracking::Cookie, _) => Carry::Cookie,
        // A client that holds its session in our cookie (from a cookie route of the same
        // host) keeps it: a token in its URLs would never count (see `resolve`).
        (Tracking::Url | Tracking::Auto, Source::Cookie) => Carry::Cookie,
        (Tracking::Url, _) => Carry::Url,
        // (A URL token never comes from a client that keeps cookies: `resolve` refuses it,
        // and the client starts a session of its own.)
        (Tracking::Auto, Source::Url) => Carry::Url,
        (Tracking::Auto, Source::None) if ev.takes_cookies => Carry::Cookie,
        (Tracking::Auto, Source::None) if ev.from_here => Carry::Url,
        (Tracking::Auto, Source::None) => Carry::Both,
    }
}

/// Whether `user_agent` contains one of `patterns` (lower case), ignoring case.
pub fn is_crawler(user_agent: &[u8], patterns: &[String]) -> bool {
    patterns
        .iter()
        .any(|p| contains_ignoring_case(user_agent, p.as_bytes()))
}

/// Whether `needle` (not empty) occurs in `hay`, ignoring ASCII case.
pub(super) fn contains_ignoring_case(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_what_the_client_shows() {
        let none = Evidence::default();
        let cookies = Evidence {
            takes_cookies: true,
            ..none
        };
        let here = Evidence {
            from_here: true,
            ..none
        };
        let bot = Evidence {
            crawler: true,
            from_here: true,
            ..none
        };
        let auto = Tracking::Auto;
        assert_eq!(carry(auto, Source::Cookie, here), Carry::Cookie);
        assert_eq!(carry(auto, Source::Url, none), Carry::Url);
        assert_eq!(carry(auto, Source::None, cookies), Carry::Cookie);
        assert_eq!(carry(auto, Source::None, here), Carry::Url);
        assert_eq!(carry(auto, Source::None, none), Carry::Both);
        assert_eq!(carry(auto, Source::None, bot), Carry::Cookie);
        assert_eq!(carry(Tracking::Url, Source::None, bot), Carry::Cookie);
        // A client whose session is in our cookie keeps it, even on a route that tracks by
        // URL: a token in its URLs would never count.
        assert_eq!(carry(Tracking::Url, Source::Cookie, none), Carry::Cookie);
        assert_eq!(carry(Tracking::Url, Source::None, none), Carry::Url);
        assert_eq!(carry(Tracking::Cookie, Source::Url, none), Carry::Cookie);
    }

    #[test]
    fn crawlers_are_recognised() {
        let patterns = vec!["googlebot".to_owned(), "spider".to_owned()];
        assert!(is_crawler(
            b"Mozilla/5.0 (compatible; Googlebot/2.1)",
            &patterns
        ));
        assert!(is_crawler(b"Baiduspider", &patterns));
        assert!(!is_crawler(
            b"Mozilla/5.0 (X11; Linux) Chrome/130",
            &patterns
        ));
    }

    #[test]
    fn provenance_reads_sec_fetch_site_then_the_referers_origin() {
        let here = "http://shop.example:8080";
        let of = |site: Option<&str>, referer: Option<&str>| {
            let p = Provenance::of(site.map(str::as_bytes), referer, here);
            (p.here, p.elsewhere)
        };
        assert_eq!(
            of(None, Some("http://shop.example:8080/cart?x")),
            (true, false)
        );
        assert_eq!(of(None, Some("http://SHOP.example:8080/")), (true, false));
        for foreign in [
            "http://shop.example.evil:8080/",
            "https://shop.example:8080/",
            "http://shop.example/",
            "http://shop.example:8080@evil.example/",
        ] {
            assert_eq!(of(None, Some(foreign)), (false, true), "{foreign}");
        }
        assert_eq!(of(None, Some("/relative")), (false, false));
        assert_eq!(of(None, None), (false, false));
        assert_eq!(of(Some("same-origin"), None), (true, false));
        assert_eq!(
            of(Some("Same-Origin"), Some("http://shop.example:8080/")),
            (true, false)
        );
        // A Referer that contradicts the browser's own header is not believed either way.
        assert_eq!(
            of(Some("same-origin"), Some("http://evil.example/")),
            (false, true)
        );
        assert_eq!(
            of(Some("cross-site"), Some("http://shop.example:8080/")),
            (false, true)
        );
        assert_eq!(of(Some("same-site"), None), (false, true));
        assert_eq!(of(Some("none"), None), (false, false));
    }
}
