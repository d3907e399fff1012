//! Path parameters (`/cart;NAME=VALUE/next`) and query parameters (`?a=1&NAME=VALUE`): the
//! pieces of URL syntax both the session module (which takes tokens out of URLs) and the
//! rewriter (which puts them in, and takes others' out) must read alike, kept here so that
//! neither imports the other.

/// `path` without any `;NAME=...` parameter, the first such value, and whether there was one.
/// A parameter runs to the next `;`, `/` or the end; others (`;v=1`) are kept as they are.
pub fn remove<'a>(path: &'a str, name: &str) -> (String, Option<&'a str>, bool) {
    let mut out = String::with_capacity(path.len());
    let (mut first, mut found) = (None, false);
    let mut rest = path;
    while let Some(at) = rest.find(';') {
        out.push_str(&rest[..at]);
        let param = &rest[at + 1..];
        let end = param.find([';', '/']).unwrap_or(param.len());
        match param[..end]
            .strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
        {
            Some(value) => {
                found = true;
                first = first.or(Some(value));
            }
            None => {
                out.push(';');
                out.push_str(&param[..end]);
            }
        }
        rest = &param[end..];
    }
    out.push_str(rest);
    (out, first, found)
}

/// `query` (without its `?`) without any `NAME` or `NAME=...` pair, the first non-empty such
/// value, and whether there was one. Pairs are separated by `&`, or by `;` as some servers
/// read them; the others keep their separators and their bytes.
pub fn remove_from_query<'a>(query: &'a str, name: &str) -> (String, Option<&'a str>, bool) {
    let mut kept = String::with_capacity(query.len());
    let (mut first, mut found) = (None, false);
    let mut rest = query;
    let mut separator = "";
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            found = true;
            if first.is_none() && !value.is_empty() {
                first = Some(value);
            }
        } else {
            if !kept.is_empty() {
                kept.push_str(separator);
            }
            kept.push_str(pair);
        }
        let Some(next) = rest.get(end..end + 1) else {
            break;
        };
        separator = next;
        rest = &rest[end + 1..];
    }
    (kept, first, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_query_parameter_goes() {
        assert_eq!(
            remove_from_query("a=%2F&sgsid=T&b=c+d;sgsid=U;e", "sgsid"),
            ("a=%2F&b=c+d;e".to_owned(), Some("T"), true)
        );
        assert_eq!(
            remove_from_query("sgsidx=1&xsgsid=2", "sgsid"),
            ("sgsidx=1&xsgsid=2".to_owned(), None, false)
        );
        assert_eq!(
            remove_from_query("sgsid", "sgsid"),
            (String::new(), None, true)
        );
    }

    #[test]
    fn only_the_named_parameter_goes() {
        assert_eq!(
            remove("/a;v=1;sgsid=T;w=2/b;sgsid=U", "sgsid"),
            ("/a;v=1;w=2/b".to_owned(), Some("T"), true)
        );
        assert_eq!(
            remove("/a;sgsidx=1", "sgsid"),
            ("/a;sgsidx=1".to_owned(), None, false)
        );
    }
}
