//! Keeping responses out of shared caches. A response that hands out or clears a credential
//! (the session cookie), or that carries a token in its URLs, must never be stored by a cache
//! that serves other users, whatever the backend said: the gateway, not the backend, knows
//! that a credential is in it. A shared leaf, like `path_param`: the session module and the
//! proxy both call it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Makes the response private. `Cache-Control` keeps the backend's directives, from every
/// field, except those that let a shared cache store it (`public`, `s-maxage`, and a
/// field-qualified `private="..."`, which allows storing the rest of the response), and gains
/// an unqualified `private`. The headers some caches obey instead of `Cache-Control`
/// (`CDN-Cache-Control` and its vendor forms, `Surrogate-Control`, Akamai's `Edge-Control`,
/// nginx's `X-Accel-Expires`) go.
pub fn make_private(headers: &mut HeaderMap) {
    let mut kept = String::from("private");
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in directives(text) {
            let name = directive
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !matches!(name.as_str(), "public" | "s-maxage" | "private" | "") {
                kept.push_str(", ");
                kept.push_str(directive);
            }
        }
    }
    match HeaderValue::from_str(&kept) {
        Ok(v) => headers.insert(header::CACHE_CONTROL, v),
        Err(_) => headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private")),
    };
    let steering: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            matches!(n, "surrogate-control" | "x-accel-expires" | "edge-control")
                || n.ends_with("cdn-cache-control")
        })
        .cloned()
        .collect();
    for name in steering {
        headers.remove(name);
    }
}

/// The directives of a `Cache-Control` value, trimmed: split at commas outside quoted
/// strings (`private="a, b"` is one directive).
fn directives(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut escaped = false;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    ',' if !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let directive = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("");
            if !directive.is_empty() {
                return Some(directive);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(values: &[&str], extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CACHE_CONTROL, v.parse().unwrap());
        }
        for (n, v) in extra {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        make_private(&mut h);
        h
    }

    #[test]
    fn whatever_the_backend_said_no_shared_cache_may_store_it() {
        for (values, want) in [
            (vec![], "private"),
            (vec!["public, max-age=600"], "private, max-age=600"),
            (vec!["PUBLIC"], "private"),
            (vec!["max-age=60, s-maxage=600"], "private, max-age=60"),
            (vec!["private", "public"], "private"),
            (
                vec![r#"private="set-cookie, x", max-age=5"#],
                "private, max-age=5",
            ),
            (vec!["no-store"], "private, no-store"),
            (
                vec![r#"no-cache="set-cookie", public"#],
                r#"private, no-cache="set-cookie""#,
            ),
            (vec!["x-private-ext, public"], "private, x-private-ext"),
        ] {
            let h = private(&values, &[]);
            assert_eq!(h.get_all(header::CACHE_CONTROL).iter().count(), 1);
            assert_eq!(h[header::CACHE_CONTROL], want, "{values:?}");
        }
    }

    #[test]
    fn headers_that_steer_cdns_instead_go() {
        let h = private(
            &["max-age=5"],
            &[
                ("cdn-cache-control", "public, max-age=600"),
                ("cloudflare-cdn-cache-control", "max-age=600"),
                ("surrogate-control", "max-age=600"),
                ("x-accel-expires", "600"),
                ("edge-control", "cache-maxage=600"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ],
        );
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["cache-control", "expires"]);
    }
}
