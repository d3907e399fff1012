//! Path parameters (`/cart;NAME=VALUE/next`): the one piece of URL syntax both the session
//! module (which takes tokens out of URLs) and the rewriter (which puts them in) must read
//! alike, kept here so that neither imports the other.

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

#[cfg(test)]
mod tests {
    use super::*;

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
