//! Integration tests: real sockets, real backends, real TLS, one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod abuse;
mod browser;
mod check;
mod cookie_jar;
mod errors;
mod headers;
mod hostile;
mod limits;
mod logs;
mod metrics;
mod proxy_protocol;
mod redis_servers;
mod reload;
mod retry;
mod routing;
mod sealed_cookie;
mod sessions;
mod shared_store;
mod shutdown;
mod store;
mod streaming;
mod subjects;
mod support;
mod timeouts;
mod tls;
mod transfer;
mod upstreams;
mod url_tracking;
mod websocket;
