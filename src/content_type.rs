//! The `Content-Type` a browser reads. A response may carry several fields, or one with
//! commas (`text/plain, text/html`); a browser takes the last value that parses, and keeps an
//! earlier value's charset when that one names none (the Fetch standard's "extract a MIME
//! type"). Browsers also differ on values that do not parse (Chromium reads `text/html x` as
//! HTML, the standard as no type at all). The gateway decides what to rewrite from its
//! reading, and leaves only that reading in the response, written so that every browser reads
//! it alike: HTML as `text/html` or `text/html; charset=LABEL` (a label the gateway knows), a
//! value nothing can read as `application/octet-stream` (never rendered). A shared leaf, like
//! `cache_control`.

use http::header::{self, HeaderMap, HeaderValue};

/// Leaves one `Content-Type` field, which every browser reads alike: the type a browser
/// reads from them all (see the module's documentation). A response without one keeps none.
pub fn settle(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::CONTENT_TYPE).iter();
    let single = match (fields.next(), fields.next()) {
        (None, _) => return,
        (Some(one), None) if !one.as_bytes().contains(&b',') => Some(one.as_bytes()),
        _ => None,
    };
    let read = match single {
        // The common case: one field, one value, already as it will be written.
        Some(one) if parse(one).is_some_and(|m| canonical(&m, one).is_none()) => return,
        Some(one) => extract(std::iter::once(one)),
        None => {
            let values: Vec<Vec<u8>> = headers
                .get_all(header::CONTENT_TYPE)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect();
            extract(values.iter().map(Vec::as_slice))
        }
    };
    let written = match read {
        Some(value) => match parse(&value) {
            Some(m) => canonical(&m, &value).unwrap_or(value),
            None => value,
        },
        // Nothing parses: what Chromium would make of the last value, else a type no
        // browser renders.
        None => headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .next_back()
            .and_then(|v| lenient(v.as_bytes()))
            .map_or_else(
                || b"application/octet-stream".to_vec(),
                |m| canonical(&m, b"").unwrap_or_else(|| m.essence.clone()),
            ),
    };
    headers.remove(header::CONTENT_TYPE);
    let value = HeaderValue::from_bytes(&written)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, value);
}

/// A response's `Content-Type` as the gateway reads it (after [`settle`]): `None` if it has
/// none, or none that parses.
pub fn read(headers: &HeaderMap) -> Option<Mime> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| parse(v.as_bytes()))
}

/// The form `m` (read from `written`) is written in, if not as it is: HTML always as
/// `text/html` with the charset's encoding name if the label names one; other types as
/// written.
fn canonical(m: &Mime, written: &[u8]) -> Option<Vec<u8>> {
    if m.essence != b"text/html" {
        return None;
    }
    let mut out = b"text/html".to_vec();
    // The encoding's own name: every browser maps the label to it the same way.
    if let Some(encoding) = m
        .charset
        .as_deref()
        .and_then(encoding_rs::Encoding::for_label)
    {
        out.extend_from_slice(b"; charset=");
        out.extend_from_slice(encoding.name().as_bytes());
    }
    // Written so already (in any case): left as it is.
    (!out.eq_ignore_ascii_case(written)).then_some(out)
}

/// A value read as Chromium reads one the standard's parser refuses: the type ends at
/// whitespace, `;` or `(`, and must still be `type/subtype` of token bytes.
fn lenient(value: &[u8]) -> Option<Mime> {
    let value = trim(value);
    let end = value
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b';' | b'(' | b','))
        .unwrap_or(value.len());
    let m = parse(&value[..end])?;
    if m.essence == b"*/*" {
        return None;
    }
    let params = value[end..]
        .iter()
        .position(|&b| b == b';')
        .map_or(&[][..], |i| &value[end + i..]);
    Some(Mime {
        charset: charset(params),
        ..m
    })
}

/// The MIME type a browser extracts from the values of `Content-Type` fields (as bytes: a
/// browser reads them isomorphically, as Latin-1).
fn extract<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut found: Option<Vec<u8>> = None;
    let mut essence: Option<Vec<u8>> = None;
    let mut charset: Option<Vec<u8>> = None;
    for field in fields {
        for value in split(field) {
            let Some(parsed) = parse(value) else { continue };
            if parsed.essence == b"*/*" {
                continue;
            }
            let mut chosen = value.to_vec();
            if essence.as_deref() != Some(parsed.essence.as_slice()) {
                charset = parsed.charset;
                essence = Some(parsed.essence);
            } else if parsed.charset.is_none()
                && let Some(c) = &charset
            {
                // The same type again, without a charset: the earlier one's holds.
                chosen.extend_from_slice(b";charset=");
                chosen.extend_from_slice(c);
            }
            found = Some(chosen);
        }
    }
    found
}

/// A field's values, split at commas outside quoted strings, trimmed.
fn split(field: &[u8]) -> Vec<&[u8]> {
    let mut values = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in field.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                values.push(trim(&field[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    values.push(trim(&field[start..]));
    values
}

/// A parsed MIME type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mime {
    /// `type/subtype`, lowercase.
    pub essence: Vec<u8>,
    /// The first `charset` parameter's value, unquoted.
    pub charset: Option<Vec<u8>>,
}

impl Mime {
    /// `text/html`.
    pub fn is_html(&self) -> bool {
        self.essence == b"text/html"
    }

    /// A type browsers read with an XML parser (an XML MIME type, or XSLT), whose markup an
    /// HTML rewriter cannot judge for.
    pub fn is_xml(&self) -> bool {
        self.essence.ends_with(b"+xml")
            || matches!(
                self.essence.as_slice(),
                b"text/xml" | b"application/xml" | b"text/xsl"
            )
    }
}

/// Parses a MIME type as the MIME Sniffing standard does (`None`: a failure).
pub fn parse(value: &[u8]) -> Option<Mime> {
    let value = trim(value);
    let slash = value.iter().position(|&b| b == b'/')?;
    let (kind, rest) = (&value[..slash], &value[slash + 1..]);
    let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
    let subtype = trim(&rest[..end]);
    if kind.is_empty() || subtype.is_empty() || !kind.iter().chain(subtype).all(|&b| token(b)) {
        return None;
    }
    let mut essence = kind.to_ascii_lowercase();
    essence.push(b'/');
    essence.extend(subtype.to_ascii_lowercase());
    Some(Mime {
        essence,
        charset: charset(&rest[end..]),
    })
}

/// The first well-formed `charset` parameter in `params` (`;name=value;...`).
fn charset(mut params: &[u8]) -> Option<Vec<u8>> {
    while let Some(rest) = params.strip_prefix(b";") {
        let rest = trim_start(rest);
        let name_end = rest
            .iter()
            .position(|&b| b == b';' || b == b'=')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        let mut after = &rest[name_end..];
        let mut value = Vec::new();
        if let Some(v) = after.strip_prefix(b"=") {
            if let Some(q) = v.strip_prefix(b"\"") {
                // A quoted string: to its closing quote, `\` escaping the next byte; anything
                // after it, up to the next `;`, is ignored.
                let mut i = 0;
                while i < q.len() && q[i] != b'"' {
                    if q[i] == b'\\' && i + 1 < q.len() {
                        i += 1;
                    }
                    value.push(q[i]);
                    i += 1;
                }
                let tail = &q[i.min(q.len())..];
                after = &tail[tail.iter().position(|&b| b == b';').unwrap_or(tail.len())..];
            } else {
                let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
                value = trim(&v[..end]).to_vec();
                after = &v[end..];
            }
            if name == b"charset" && !value.is_empty() && name.iter().all(|&b| token(b)) {
                return Some(value);
            }
        }
        params = after;
    }
    None
}

/// An HTTP token byte.
fn token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(s: &[u8]) -> &[u8] {
    let s = trim_start(s);
    let end = s
        .iter()
        .rposition(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    &s[..end]
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(s.len());
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fields: &[&str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(header::CONTENT_TYPE, HeaderValue::from_str(f).unwrap());
        }
        settle(&mut h);
        assert!(h.get_all(header::CONTENT_TYPE).iter().count() <= 1);
        h.get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_type_left_is_the_one_a_browser_reads() {
        // One value stays as it is.
        assert_eq!(
            read(&["text/html; charset=utf-8"]).as_deref(),
            Some("text/html; charset=utf-8")
        );
        // The last that parses, across fields and commas (the Fetch standard's examples).
        assert_eq!(
            read(&["text/plain", "text/html"]).as_deref(),
            Some("text/html")
        );
        assert_eq!(
            read(&["text/plain, text/html"]).as_deref(),
            Some("text/html")
        );
        assert_eq!(
            read(&["text/html, text/plain"]).as_deref(),
            Some("text/plain")
        );
        assert_eq!(read(&["text/html", "*/*"]).as_deref(), Some("text/html"));
        assert_eq!(
            read(&["text/html", "nonsense", "x/"]).as_deref(),
            Some("text/html")
        );
        // An earlier charset holds for the same type named again without one.
        assert_eq!(
            read(&["text/html;charset=iso-2022-jp", "TEXT/HTML"]).as_deref(),
            Some("text/html; charset=ISO-2022-JP")
        );
        assert_eq!(
            read(&["text/html;charset=\"shift_jis\"", "text/html"]).as_deref(),
            Some("text/html; charset=Shift_JIS")
        );
        // ... but not for another type in between.
        assert_eq!(
            read(&["text/html;charset=gbk", "text/plain", "text/html"]).as_deref(),
            Some("text/html")
        );
        // A comma inside a quoted parameter does not split.
        assert_eq!(
            read(&["text/plain", "text/csv;x=\"a,b\""]).as_deref(),
            Some("text/csv;x=\"a,b\"")
        );
        // Nothing that parses: what Chromium would read, else a type nothing renders.
        assert_eq!(
            read(&["*/*", "nonsense"]).as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(read(&["text/html x"]).as_deref(), Some("text/html"));
        assert_eq!(
            read(&["text/html(c); charset=utf-8"]).as_deref(),
            Some("text/html; charset=UTF-8")
        );
        assert_eq!(read(&["image/svg+xml x"]).as_deref(), Some("image/svg+xml"));
        // HTML is written one way: its charset by the encoding's name, if the label names one.
        assert_eq!(
            read(&["TEXT/HTML ;CHARSET=\"utf8 \""]).as_deref(),
            Some("text/html; charset=UTF-8")
        );
        assert_eq!(
            read(&["text/html; x=\"a;charset=utf-8\"; charset=iso-2022-jp"]).as_deref(),
            Some("text/html; charset=ISO-2022-JP")
        );
        assert_eq!(
            read(&["text/html; charset =utf-8"]).as_deref(),
            Some("text/html")
        );
        assert_eq!(
            read(&["text/html; charset=no-such-label"]).as_deref(),
            Some("text/html")
        );
        // Other types keep their parameters.
        assert_eq!(
            read(&["multipart/form-data; boundary=x"]).as_deref(),
            Some("multipart/form-data; boundary=x")
        );
    }
}
