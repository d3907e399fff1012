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
    /// It came from one of our pages (same-origin `Referer`).
    pub from_here: bool,
    /// A known crawler: it never gets a token in a URL (a search index would hand the
    /// session to anyone).
    pub crawler: bool,
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
        (Tracking::Url, _) => Carry::Url,
        (Tracking::Auto, Source::Cookie) => Carry::Cookie,
        // A URL-tracked client that now returns a cookie of ours takes cookies after all:
        // its token moves to the cookie and its URLs come clean.
        (Tracking::Auto, Source::Url) if ev.takes_cookies => Carry::Cookie,
        (Tracking::Auto, Source::Url) => Carry::Url,
        (Tracking::Auto, Source::None) if ev.takes_cookies => Carry::Cookie,
        (Tracking::Auto, Source::None) if ev.from_here => Carry::Url,
        (Tracking::Auto, Source::None) => Carry::Both,
    }
}

/// Whether `user_agent` contains one of `patterns` (lower case), ignoring case.
pub fn is_crawler(user_agent: &[u8], patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        !p.is_empty()
            && user_agent
                .windows(p.len())
                .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
    })
}

/// Whether `referer` is a URL on `host` (`host[:port]` as the client addressed us).
pub fn from_here(referer: &str, host: &str) -> bool {
    let Some((_, rest)) = referer.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.eq_ignore_ascii_case(host)
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
        assert_eq!(carry(auto, Source::Url, cookies), Carry::Cookie);
        assert_eq!(carry(auto, Source::None, cookies), Carry::Cookie);
        assert_eq!(carry(auto, Source::None, here), Carry::Url);
        assert_eq!(carry(auto, Source::None, none), Carry::Both);
        assert_eq!(carry(auto, Source::None, bot), Carry::Cookie);
        assert_eq!(carry(Tracking::Url, Source::None, bot), Carry::Cookie);
        assert_eq!(carry(Tracking::Url, Source::Cookie, none), Carry::Url);
        assert_eq!(carry(Tracking::Cookie, Source::Url, none), Carry::Cookie);
    }

    #[test]
    fn crawlers_and_referers_are_recognised() {
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
        assert!(from_here(
            "http://shop.example:8080/cart?x",
            "shop.example:8080"
        ));
        assert!(from_here("https://SHOP.example/", "shop.example"));
        assert!(!from_here("https://shop.example.evil/", "shop.example"));
        assert!(!from_here("https://shop.example:8443/", "shop.example"));
        assert!(!from_here("/relative", "shop.example"));
    }
}
