//! Our cookies: taken out of a request's `Cookie` (the backend never sees them) and read,
//! and written into responses. There are two: the session cookie, and with `tracking: auto`
//! a non-secret probe that shows the client keeps cookies. Each has a name on plain
//! listeners (`sg`) and one on TLS listeners (`__Host-sg`): a request loses both, but only
//! the listener's own is read (a token sent under the other name is still a token, and never
//! reaches a backend).

use cookie::Cookie;
use http::header::{self, HeaderMap, HeaderValue};

use super::token::Token;
use crate::config::{CookieConfig, SameSite, Secure};

/// Where `commit` writes the cookie of a token it hands out (or ends): nowhere when the token
/// travels in URLs instead.
#[derive(Debug)]
pub struct CookieOut<'a> {
    cookies: &'a OurCookies,
    tls: bool,
    /// Cookies are set at all.
    on: bool,
}

impl CookieOut<'_> {
    /// Adds `Set-Cookie` for `token`, or one that expires the cookie when `None`, unless
    /// the token travels in URLs.
    pub fn set(&self, headers: &mut HeaderMap, token: Option<&Token>) {
        if self.on {
            self.cookies
                .set(headers, token.map(Token::expose).as_deref(), self.tls);
        }
    }
}

/// Our cookies as the configuration sets them, worked out once (their names per listener,
/// the attributes they are written with), as tower-sessions' `SessionConfig` is.
#[derive(Debug)]
pub struct OurCookies {
    config: CookieConfig,
    /// The session and probe cookies' names on plain [0] and TLS [1] listeners.
    names: [(String, String); 2],
}

impl OurCookies {
    /// The cookies `config` describes.
    pub fn new(config: &CookieConfig) -> OurCookies {
        OurCookies {
            config: config.clone(),
            names: [false, true].map(|tls| names(config, tls)),
        }
    }

    /// Where `commit` writes a token's cookie on a TLS listener or not; `on`: cookies are
    /// set at all (not when the token travels in URLs).
    pub fn out(&self, tls: bool, on: bool) -> CookieOut<'_> {
        CookieOut {
            cookies: self,
            tls,
            on,
        }
    }

    /// Takes our cookies out of a request that came over a TLS listener or not (see
    /// [`take`]): this listener's are read, the other kind's only taken out.
    pub fn take<T>(
        &self,
        headers: &mut HeaderMap,
        tls: bool,
        read: impl FnOnce(&str) -> T,
    ) -> Taken<T> {
        let (session, probe) = &self.names[usize::from(tls)];
        let (other_session, other_probe) = &self.names[usize::from(!tls)];
        take(
            headers,
            (session, probe),
            &[other_session, other_probe],
            read,
        )
    }

    /// Every name of ours: the session and probe cookies, on plain and TLS listeners.
    pub fn all_names(&self) -> [&str; 4] {
        let [(s, p), (ts, tp)] = &self.names;
        [s, p, ts, tp]
    }

    /// Adds `Set-Cookie` with `value` (a token, or a sealed session), or one that expires the
    /// cookie when `None`; the response is made private.
    pub fn set(&self, headers: &mut HeaderMap, value: Option<&str>, tls: bool) {
        let c = &self.config;
        let name = self.names[usize::from(tls)].0.clone();
        let mut b = Cookie::build((name, value.unwrap_or_default()))
            .path(c.path.clone())
            .http_only(c.http_only)
            .secure(is_secure(c, tls))
            .same_site(match c.same_site {
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::Strict => cookie::SameSite::Strict,
                SameSite::None => cookie::SameSite::None,
            });
        if let Some(d) = &c.domain {
            b = b.domain(d.clone());
        }
        let mut cookie = b.build();
        match value {
            None => cookie.make_removal(),
            Some(_) => {
                if let Some(age) = c.max_age {
                    let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
                    cookie.set_max_age(cookie::time::Duration::seconds(secs));
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
            headers.append(header::SET_COOKIE, v);
        }
        // A response that hands out (or clears) a credential must not be stored by shared
        // caches, whatever the backend said.
        crate::cache_control::make_private(headers);
    }

    /// Adds the probe cookie: not a credential, it only shows that the client keeps cookies.
    pub fn set_probe(&self, headers: &mut HeaderMap, tls: bool) {
        let probe = Cookie::build((self.names[usize::from(tls)].1.clone(), "1"))
            .path("/")
            .http_only(true)
            .secure(is_secure(&self.config, tls))
            .same_site(cookie::SameSite::Lax)
            .build();
        if let Ok(v) = HeaderValue::from_str(&probe.to_string()) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

/// The session and probe cookies' names on a plain or TLS listener: `__Host-` prefixed when
/// the browser will accept that (Secure, `Path=/`, no `Domain`), which pins the cookie to this
/// exact host.
fn names(cookie: &CookieConfig, tls: bool) -> (String, String) {
    let name = if is_secure(cookie, tls) && cookie.path == "/" && cookie.domain.is_none() {
        format!("__Host-{}", cookie.name)
    } else {
        cookie.name.clone()
    };
    let probe = format!("{name}_probe");
    (name, probe)
}

/// Whether the cookies are `Secure` on a plain or TLS listener.
fn is_secure(cookie: &CookieConfig, tls: bool) -> bool {
    match cookie.secure {
        Secure::Auto => tls,
        Secure::Always => true,
        Secure::Never => false,
    }
}

/// Whether `value` holds a `;` (another cookie follows). Every byte is looked at, without
/// stopping at the first `;`: the compiler then compares many bytes per instruction, where
/// `str::contains` went byte by byte (160 instructions for a token, callgrind).
fn holds_semicolon(value: &str) -> bool {
    value.bytes().fold(false, |seen, b| seen | (b == b';'))
}

/// Our cookies in a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken<T> {
    /// The session cookie's value (the first, if a client sent several), as read.
    pub session: Option<T>,
    /// The probe cookie was there.
    pub probe: bool,
}

impl<T> Default for Taken<T> {
    fn default() -> Self {
        Taken {
            session: None,
            probe: false,
        }
    }
}

/// Takes the cookies `session` and `probe` out of the request's `Cookie` headers and reads
/// them; cookies named in `also` are taken out unread. The session cookie's value is handed
/// to `read` while the header still holds it: a request path that only parses a token from
/// it copies nothing (an owned copy cost an allocation per request).
pub fn take<T>(
    headers: &mut HeaderMap,
    (session, probe): (&str, &str),
    also: &[&str],
    read: impl FnOnce(&str) -> T,
) -> Taken<T> {
    // One lookup of `Cookie`, whose entry also removes it in the common case.
    let header::Entry::Occupied(entry) = headers.entry(header::COOKIE) else {
        return Taken::default();
    };
    // The common case: one `Cookie` header that holds the session cookie alone.
    let mut all = entry.iter();
    if let (Some(first), None) = (all.next(), all.next())
        && let Ok(text) = first.to_str()
        && let Some(value) = text
            .trim()
            .strip_prefix(session)
            .and_then(|v| v.strip_prefix('='))
        && !holds_semicolon(value)
    {
        let value = read(value);
        entry.remove();
        return Taken {
            session: Some(value),
            probe: false,
        };
    }
    let mut taken = Taken::default();
    let mut read = Some(read);
    let mut ours = false;
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(text) = v.to_str() else {
            kept.push(v.clone());
            continue;
        };
        let mut others: Vec<&str> = Vec::new();
        for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match Cookie::parse(pair) {
                Ok(c) if c.name() == session => {
                    ours = true;
                    if let Some(read) = read.take() {
                        taken.session = Some(read(c.value()));
                    }
                }
                Ok(c) if c.name() == probe => {
                    ours = true;
                    taken.probe = true;
                }
                Ok(c) if also.contains(&c.name()) => ours = true,
                _ => others.push(pair),
            }
        }
        if !others.is_empty()
            && let Ok(v) = HeaderValue::from_str(&others.join("; "))
        {
            kept.push(v);
        }
    }
    if ours {
        headers.remove(header::COOKIE);
        for v in kept {
            headers.append(header::COOKIE, v);
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(t: Taken<String>) -> Option<String> {
        t.session
    }

    #[test]
    fn our_cookies_are_taken_out_and_the_rest_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sg=TOKEN; sg_probe=1; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("sg=second"));
        let t = take(&mut h, ("sg", "sg_probe"), &[], str::to_owned);
        assert_eq!(t.session.as_deref(), Some("TOKEN"));
        assert!(t.probe);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
        // Not ours: untouched.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sgx=1; xsg=2"));
        assert_eq!(
            take(&mut h, ("sg", "sg_probe"), &[], str::to_owned),
            Taken::<String>::default()
        );
        assert_eq!(h[header::COOKIE], "sgx=1; xsg=2");
        // The session cookie alone: the header goes.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sg=TOKEN"));
        assert_eq!(
            session(take(&mut h, ("sg", "p"), &[], str::to_owned)).as_deref(),
            Some("TOKEN")
        );
        assert!(h.is_empty());
        // The probe alone.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sg_probe=1"));
        let t = take(&mut h, ("sg", "sg_probe"), &[], str::to_owned);
        assert!(t.probe && t.session.is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn the_other_listeners_names_are_taken_out_unread() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sg=PLAIN; a=1; __Host-sg_probe=1"),
        );
        let t = take(
            &mut h,
            ("__Host-sg", "__Host-sg_probe"),
            &["sg", "sg_probe"],
            str::to_owned,
        );
        assert_eq!(
            t,
            Taken {
                session: None,
                probe: true
            }
        );
        assert_eq!(h[header::COOKIE], "a=1");
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sg=PLAIN"));
        let t = take(
            &mut h,
            ("__Host-sg", "__Host-sg_probe"),
            &["sg", "sg_probe"],
            str::to_owned,
        );
        assert_eq!(t, Taken::<String>::default());
        assert!(h.is_empty());
    }
}
