//! The circuit in front of Redis: once an operation finds Redis not answering (a timeout, a
//! refused or dropped connection), requests stop asking it. They are served at once from the
//! near cache (with `serve_stale`, writes queued) or refused at once (`503`), instead of each
//! waiting the operation timeout; a background probe asks Redis every
//! [`PROBE_EVERY`] until it answers, replays the queued writes, and only then lets requests
//! ask it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// How often the probe asks a Redis that does not answer.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Whether Redis is taken as down, and whether a probe runs: one lock, so that a trip racing
/// a close either finds the probe still running (which then sees its write) or starts one.
#[derive(Default)]
pub(super) struct Circuit {
    /// Read without the lock on the request path.
    open: AtomicBool,
    /// Redis answers again and the queued writes are being replayed: sessions without a
    /// queued write ask Redis, those with one wait behind it.
    draining: AtomicBool,
    /// Whether a probe runs (under the lock).
    probing: Mutex<bool>,
    /// Starts the probe (set by the store, which the probe works on).
    starter: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Circuit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuit")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl Circuit {
    /// Whether requests should not ask Redis now.
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// How a trip starts the probe: set once, when the store is made.
    pub(super) fn on_trip(&self, starter: Box<dyn Fn() + Send + Sync>) {
        let _ = self.starter.set(starter);
    }

    /// Opens the circuit, and starts the probe if none runs; `true` if it started one.
    pub(super) fn trip(&self) -> bool {
        let start = {
            let mut probing = self.probing.lock().unwrap_or_else(PoisonError::into_inner);
            self.open.store(true, Ordering::Release);
            !std::mem::replace(&mut *probing, true)
        };
        if start && let Some(starter) = self.starter.get() {
            starter();
        }
        start
    }

    /// Makes sure a probe will replay a write just queued: one that runs sees it (it closes
    /// only on an empty queue, checked under this lock), else the circuit opens and the
    /// caller starts one (`true`).
    pub(super) fn ensure_probe(&self) -> bool {
        let mut probing = self.probing.lock().unwrap_or_else(PoisonError::into_inner);
        if *probing {
            return false;
        }
        self.open.store(true, Ordering::Release);
        *probing = true;
        true
    }

    /// Whether the queue is being replayed to a Redis that answers.
    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Redis answers: requests ask it again (but for sessions with queued writes) while the
    /// probe replays the queue.
    pub(super) fn drain(&self) {
        let _probing = self.probing.lock().unwrap_or_else(PoisonError::into_inner);
        self.draining.store(true, Ordering::Release);
        self.open.store(false, Ordering::Release);
    }

    /// Closes the circuit if `done` (checked under the lock: no write is queued); the probe
    /// ends then, and the next trip starts another.
    pub(super) fn close_if(&self, done: impl FnOnce() -> bool) -> bool {
        let mut probing = self.probing.lock().unwrap_or_else(PoisonError::into_inner);
        if !done() {
            return false;
        }
        self.open.store(false, Ordering::Release);
        self.draining.store(false, Ordering::Release);
        *probing = false;
        true
    }

    /// The probe gives up (its store was replaced).
    pub(super) fn abandon(&self) {
        *self.probing.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.draining.store(false, Ordering::Release);
    }
}

/// Whether a failure means Redis (or the way to it) is down, rather than a bad answer.
pub(super) fn is_outage(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        // A server loading its data, a replica without its master, a Cluster without a
        // quorum or moving slots: not answering, for now.
        || matches!(
            e.code(),
            Some("LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY" | "BUSY")
        )
}
