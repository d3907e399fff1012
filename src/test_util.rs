//! Helpers shared by the unit tests.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header map from (name, value) pairs, in order, repeats kept.
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}
