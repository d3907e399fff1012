//! Our cookies in a request: taken out of `Cookie` (the backend never sees them) and read.
//! There are two: the session cookie, and with `tracking: auto` a non-secret probe that
//! shows the client keeps cookies. Each has a name on plain listeners (`sg`) and one on TLS
//! listeners (`__Host-sg`): a request loses both, but only the listener's own is read (a token
//! sent under the other name is still a token, and never reaches a backend).

use cookie::Cookie;
use http::header::{self, HeaderMap, HeaderValue};

/// The values of our cookies in a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// The session cookie's value (the first, if a client sent several).
    pub session: Option<String>,
    /// The probe cookie was there.
    pub probe: bool,
}

/// Takes the cookies `session` and `probe` out of the request's `Cookie` headers and reads
/// them; cookies named in `also` are taken out unread.
pub fn take(headers: &mut HeaderMap, session: &str, probe: &str, also: &[&str]) -> Taken {
    let mut all = headers.get_all(header::COOKIE).iter();
    let Some(first) = all.next() else {
        return Taken::default();
    };
    // The common case: one `Cookie` header that holds the session cookie alone.
    if all.next().is_none()
        && let Ok(text) = first.to_str()
        && let Some(value) = text
            .trim()
            .strip_prefix(session)
            .and_then(|v| v.strip_prefix('='))
        && !value.contains(';')
    {
        let value = value.to_owned();
        headers.remove(header::COOKIE);
        return Taken {
            session: Some(value),
            probe: false,
        };
    }
    let mut taken = Taken::default();
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
                    if taken.session.is_none() {
                        taken.session = Some(c.value().to_owned());
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

    fn session(t: Taken) -> Option<String> {
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
        let t = take(&mut h, "sg", "sg_probe", &[]);
        assert_eq!(t.session.as_deref(), Some("TOKEN"));
        assert!(t.probe);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
        // Not ours: untouched.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sgx=1; xsg=2"));
        assert_eq!(take(&mut h, "sg", "sg_probe", &[]), Taken::default());
        assert_eq!(h[header::COOKIE], "sgx=1; xsg=2");
        // The session cookie alone: the header goes.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sg=TOKEN"));
        assert_eq!(
            session(take(&mut h, "sg", "p", &[])).as_deref(),
            Some("TOKEN")
        );
        assert!(h.is_empty());
        // The probe alone.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sg_probe=1"));
        let t = take(&mut h, "sg", "sg_probe", &[]);
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
        let t = take(&mut h, "__Host-sg", "__Host-sg_probe", &["sg", "sg_probe"]);
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
        let t = take(&mut h, "__Host-sg", "__Host-sg_probe", &["sg", "sg_probe"]);
        assert_eq!(t, Taken::default());
        assert!(h.is_empty());
    }
}
