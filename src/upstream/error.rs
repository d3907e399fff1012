//! Why a request to an upstream failed, sorted from what hyper reports: the client's body,
//! or the backend's side.

use std::sync::Arc;
use std::time::Duration;

use super::Backend;
use super::body::BodyError;

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No backend of the pool is available (all ejected or failing health checks).
    #[error("no healthy server in upstream {pool:?}")]
    NoHealthyServer {
        /// The pool.
        pool: Arc<str>,
    },
    /// The TCP (or TLS) connection could not be made; nothing was sent.
    #[error("connection to {backend} failed: {reason}")]
    Connect {
        /// The backend's address.
        backend: Arc<str>,
        /// What the connector said.
        reason: String,
        /// The connect timeout expired (rather than a refusal or reset).
        timed_out: bool,
    },
    /// No response head arrived within the response timeout.
    #[error("{backend} did not answer within {timeout:?}")]
    Timeout {
        /// The backend's address.
        backend: Arc<str>,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The request body grew past the route's limit while it was being forwarded.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The client stopped sending its request body; not the backend's fault.
    #[error("the client sent no request body data for {0:?}")]
    ClientBodyTimeout(Duration),
    /// Reading the request body from the client failed (the client went away, or sent a
    /// malformed body); not the backend's fault.
    #[error("reading the request body from the client failed: {reason}")]
    ClientBody {
        /// What failed.
        reason: String,
    },
    /// The backend's response head is over the gateway's own limits (header count or size):
    /// the server is up, so this is no mark against its health.
    #[error("{backend} sent a response head over the gateway's limits: {reason}")]
    ResponseTooLarge {
        /// The backend's address.
        backend: Arc<str>,
        /// What was over the limit.
        reason: String,
    },
    /// The connection failed after the request was (perhaps partly) sent.
    #[error("{backend} failed: {reason}")]
    Broken {
        /// The backend's address.
        backend: Arc<str>,
        /// What went wrong.
        reason: String,
    },
}

impl UpstreamError {
    /// A short name of the kind of failure, for metrics; `None` when it is not the backend's
    /// failure (the client's body, or a pool with no server left).
    pub fn metric_name(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Connect {
                timed_out: true, ..
            } => Some("connect_timeout"),
            UpstreamError::Connect { .. } => Some("connect"),
            UpstreamError::Timeout { .. } => Some("response_timeout"),
            UpstreamError::Broken { .. } => Some("broken"),
            UpstreamError::ResponseTooLarge { .. } => Some("response_too_large"),
            UpstreamError::NoHealthyServer { .. } => Some("no_healthy_server"),
            UpstreamError::BodyTooLarge { .. }
            | UpstreamError::ClientBodyTimeout(_)
            | UpstreamError::ClientBody { .. } => None,
        }
    }

    /// Whether another server may be tried: always when nothing was sent; when the request may
    /// have been sent, only if it is idempotent (the caller also needs a replayable body).
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            UpstreamError::Connect { .. } => true,
            UpstreamError::Broken { .. } => idempotent,
            // Retrying after a response timeout multiplies load on a struggling pool.
            UpstreamError::Timeout { .. }
            | UpstreamError::ResponseTooLarge { .. }
            | UpstreamError::BodyTooLarge { .. }
            | UpstreamError::ClientBodyTimeout(_)
            | UpstreamError::ClientBody { .. }
            | UpstreamError::NoHealthyServer { .. } => false,
        }
    }
}

pub(super) fn closed_before_sending(backend: &Backend) -> UpstreamError {
    UpstreamError::Connect {
        backend: backend.label.clone(),
        reason: "connection closed before the request was sent".into(),
        timed_out: false,
    }
}

/// Sorts a failure after the request was handed to a connection: was it our (the client's)
/// body, or the backend's side.
pub(super) fn classify(backend: &Arc<str>, err: &hyper::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        match s.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge { limit }) => {
                return UpstreamError::BodyTooLarge { limit: *limit };
            }
            Some(BodyError::Downstream(e)) => {
                return UpstreamError::ClientBody {
                    reason: error_chain(e),
                };
            }
            Some(BodyError::Stalled(after)) => return UpstreamError::ClientBodyTimeout(*after),
            Some(BodyError::Consumed) | None => {}
        }
        source = s.source();
    }
    if err.is_parse_too_large() {
        return UpstreamError::ResponseTooLarge {
            backend: backend.clone(),
            reason: error_chain(err),
        };
    }
    UpstreamError::Broken {
        backend: backend.clone(),
        reason: error_chain(err),
    }
}

/// An error and its causes on one line (hyper's top-level messages alone say little).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
