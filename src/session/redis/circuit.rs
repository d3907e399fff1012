//! The circuit in front of Redis: once an operation finds Redis not answering (a timeout, a
//! refused or dropped connection), requests stop asking it. They are served at once from the
//! near cache (with `serve_stale`, writes queued) or refused at once (`503`), instead of each
//! waiting the operation timeout; a background probe asks Redis every
//! [`PROBE_EVERY`] until it answers, replays the queued writes, and only then lets requests
//! ask it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the probe asks a Redis that does not answer.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Whether Redis is taken as down, and whether a probe runs.
#[derive(Debug, Default)]
pub(super) struct Circuit {
    open: AtomicBool,
    probing: AtomicBool,
}

impl Circuit {
    /// Whether requests should not ask Redis now.
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens the circuit; `true` if the caller must start the probe (none runs).
    pub(super) fn trip(&self) -> bool {
        self.open.store(true, Ordering::Release);
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Redis answers and the queued writes are in: requests ask it again.
    pub(super) fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }
}

/// Whether a failure means Redis (or the way to it) is down, rather than a bad answer.
pub(super) fn is_outage(e: &redis::RedisError) -> bool {
    e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}
