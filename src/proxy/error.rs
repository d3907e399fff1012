//! Proxy errors, and the one place where an error becomes a status code.

use std::sync::Arc;

use http::StatusCode;

use crate::upstream::UpstreamError;

/// Why the proxy answered a request itself instead of with the backend's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request's host and path; no backend was contacted.
    #[error("no route matches this request's host and path")]
    NoRoute,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request path cannot be routed safely.
    #[error(transparent)]
    BadPath(#[from] crate::routing::PathError),
    /// The request's header section is over the limit.
    #[error("request header section larger than {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request has more header fields than the limit (HTTP/1.1 and HTTP/2 alike).
    #[error("more than {limit} request header fields")]
    TooManyHeaders {
        /// The most fields allowed.
        limit: usize,
    },
    /// The declared `Content-Length` is over the route's limit.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request presents a session, and the session store does not answer: failing closed,
    /// the backend is not asked without the session it may rely on.
    #[error("the session store is unavailable; try again shortly")]
    SessionStore,
    /// The backend switched protocols (`101`) to one the client did not ask for or the route
    /// does not allow: the gateway does not open such a tunnel.
    #[error("upstream {pool:?} switched to a protocol that was not asked for")]
    UnwantedUpgrade {
        /// The pool's name.
        pool: Arc<str>,
    },
    /// The backend sent an HTML page that must be rewritten (its links tagged, or scrubbed of
    /// someone else's token) in a charset or content coding the gateway cannot read: it is
    /// not passed on unread.
    #[error(
        "upstream {pool:?} sent an HTML page in a charset or content coding the gateway cannot read"
    )]
    UnreadablePage {
        /// The pool's name.
        pool: Arc<str>,
    },
    /// Forwarding to the upstream pool failed.
    #[error("upstream {pool:?}: {source}")]
    Upstream {
        /// The pool's name.
        pool: Arc<str>,
        /// What failed.
        source: UpstreamError,
    },
}

impl ProxyError {
    /// The status code for this error. Every error → status mapping lives here.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge { .. } | ProxyError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::SessionStore => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UnwantedUpgrade { .. } | ProxyError::UnreadablePage { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Upstream { source, .. } => match source {
                UpstreamError::NoHealthyServer { .. } => StatusCode::SERVICE_UNAVAILABLE,
                UpstreamError::Connect {
                    timed_out: true, ..
                }
                | UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                UpstreamError::Connect { .. }
                | UpstreamError::Broken { .. }
                | UpstreamError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
                UpstreamError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                UpstreamError::ClientBody { .. } => StatusCode::BAD_REQUEST,
                UpstreamError::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            },
        }
    }

    /// The cause in a sentence a client may see: names the upstream pool, never a backend's
    /// address (that goes to the log).
    pub fn public_message(&self) -> String {
        match self {
            ProxyError::Upstream { pool, source } => match source {
                UpstreamError::NoHealthyServer { .. } => {
                    format!("no healthy server in upstream \"{pool}\"")
                }
                UpstreamError::Connect {
                    timed_out: true, ..
                } => format!("connecting to upstream \"{pool}\" timed out"),
                UpstreamError::Connect { .. } => {
                    format!("could not connect to upstream \"{pool}\"")
                }
                UpstreamError::Timeout { timeout, .. } => format!(
                    "upstream \"{pool}\" did not answer within {}",
                    humantime::format_duration(*timeout)
                ),
                UpstreamError::Broken { .. } => {
                    format!("upstream \"{pool}\" closed the connection without a valid response")
                }
                UpstreamError::ResponseTooLarge { .. } => {
                    format!(
                        "upstream \"{pool}\" sent a response head larger than the gateway takes"
                    )
                }
                UpstreamError::BodyTooLarge { limit } => {
                    format!("request body larger than {limit} bytes")
                }
                UpstreamError::ClientBody { .. } => "the request body could not be read".into(),
                UpstreamError::ClientBodyTimeout(after) => format!(
                    "no request body data arrived for {}",
                    humantime::format_duration(*after)
                ),
            },
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn up(source: UpstreamError) -> ProxyError {
        ProxyError::Upstream {
            pool: Arc::from("app"),
            source,
        }
    }
    fn backend() -> Arc<str> {
        Arc::from("127.0.0.1:1")
    }

    #[test]
    fn no_route_is_404() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
    }

    #[test]
    fn an_unreachable_session_store_is_503() {
        assert_eq!(ProxyError::SessionStore.status(), 503);
    }

    #[test]
    fn bad_request_is_400() {
        assert_eq!(ProxyError::BadRequest("missing Host header").status(), 400);
        let dots = ProxyError::BadPath(crate::routing::PathError::EncodedDotSegment);
        assert_eq!(dots.status(), 400);
    }

    #[test]
    fn oversized_headers_are_431() {
        assert_eq!(ProxyError::HeadersTooLarge { limit: 1 }.status(), 431);
        assert_eq!(ProxyError::TooManyHeaders { limit: 1 }.status(), 431);
    }

    #[test]
    fn oversized_body_is_413_declared_or_streamed() {
        assert_eq!(ProxyError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(up(UpstreamError::BodyTooLarge { limit: 1 }).status(), 413);
    }

    #[test]
    fn no_healthy_server_is_503() {
        let e = up(UpstreamError::NoHealthyServer {
            pool: Arc::from("app"),
        });
        assert_eq!(e.status(), 503);
        assert!(e.public_message().contains("no healthy server"));
    }

    #[test]
    fn refused_connection_is_502() {
        let e = up(UpstreamError::Connect {
            backend: backend(),
            reason: "refused".into(),
            timed_out: false,
        });
        assert_eq!(e.status(), 502);
        assert!(
            !e.public_message().contains("127.0.0.1"),
            "backend addresses stay private"
        );
    }

    #[test]
    fn connect_timeout_is_504() {
        let e = up(UpstreamError::Connect {
            backend: backend(),
            reason: "timed out".into(),
            timed_out: true,
        });
        assert_eq!(e.status(), 504);
    }

    #[test]
    fn response_timeout_is_504() {
        let e = up(UpstreamError::Timeout {
            backend: backend(),
            timeout: Duration::from_secs(3),
        });
        assert_eq!(e.status(), 504);
        assert!(e.public_message().contains("within 3s"));
    }

    #[test]
    fn an_upgrade_nobody_asked_for_is_502() {
        let e = ProxyError::UnwantedUpgrade {
            pool: Arc::from("app"),
        };
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn broken_upstream_connection_is_502() {
        let e = up(UpstreamError::Broken {
            backend: backend(),
            reason: "reset".into(),
        });
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn stalled_client_body_is_408() {
        let e = up(UpstreamError::ClientBodyTimeout(Duration::from_secs(2)));
        assert_eq!(e.status(), 408);
        assert!(e.public_message().contains("for 2s"));
    }

    #[test]
    fn failed_client_body_is_400() {
        assert_eq!(
            up(UpstreamError::ClientBody {
                reason: "eof".into()
            })
            .status(),
            400
        );
    }
}
