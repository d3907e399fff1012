//! Access logs the way operators run them: to a file (or stderr), as text, JSON or nginx's
//! `combined`, written by a thread of their own so that a request hands its line over
//! without a system call or a lock held across I/O; reopened on SIGUSR1 (logrotate);
//! dropped and counted (`sessiongate_access_log_dropped_lines_total`) rather than waited
//! for when the disk falls behind.

mod format;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

pub use format::{AccessFormat, Record};
pub use writer::{Destination, flush_all, reopen_all};

/// How many lines may wait for the writer, and how many bytes; past either, lines are
/// dropped (a client cannot fill memory with long lines while the disk is slow).
const QUEUE: usize = 16 * 1024;
const QUEUE_BYTES: usize = 32 << 20;

/// Where a configuration's access lines go, and how they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSettings {
    /// The file, or stderr.
    pub to: Destination,
    /// The line format.
    pub format: AccessFormat,
}

/// A running access log: lines are written here on the request's thread, and handed to the
/// writer thread, which stops once every clone of this is gone (writing what waits).
#[derive(Debug)]
pub struct AccessLog {
    settings: AccessSettings,
    lines: SyncSender<Vec<u8>>,
    /// Bytes waiting in the queue.
    queued: Arc<AtomicUsize>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer for `settings`; lines it cannot take count in `dropped`.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn start(settings: AccessSettings, dropped: Counter) -> std::io::Result<AccessLog> {
        let (lines, queue) = std::sync::mpsc::sync_channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        writer::start(&settings.to, queue, queued.clone(), dropped.clone())?;
        Ok(AccessLog {
            settings,
            lines,
            queued,
            dropped,
        })
    }

    /// What this log was started with.
    pub fn settings(&self) -> &AccessSettings {
        &self.settings
    }

    /// Whether lines need the request's version, `Referer` and `User-Agent` (`combined`).
    pub fn wants_request_headers(&self) -> bool {
        self.settings.format == AccessFormat::Combined
    }

    /// Writes the line for `r`, or drops it if the writer is that far behind.
    pub fn line(&self, r: &Record<'_>) {
        let mut out = Vec::with_capacity(256);
        format::write(&mut out, self.settings.format, r, SystemTime::now());
        let len = out.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        match self.lines.try_send(out) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.dropped.inc();
            }
        }
    }
}
