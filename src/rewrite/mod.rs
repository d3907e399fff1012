//! URL rewriting for clients that refuse cookies: the session token is added to the
//! same-origin URLs of a response — links, forms and frames in HTML (streaming, with
//! lol_html) and the redirect headers. This module knows nothing of sessions: it is given a
//! parameter name and a token, and never logs the token.

mod html;
mod link;

pub use html::{Coding, Html, RewriteError, html_charset, rewrite_errors};
pub use link::{Issuer, Led, MAX_CODES_PER_RESPONSE, Tagger, rewrite_headers, tag_refresh};
