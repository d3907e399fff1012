//! Access logs the way operators run them: to a file (or stderr), as text, JSON or nginx's
//! `combined`, written by a thread of their own so that a request hands its line over
//! without a system call or a lock held across I/O; reopened on SIGUSR1 (logrotate);
//! dropped and counted (`sessiongate_access_log_dropped_lines_total`) rather than waited
//! for when the disk falls behind.

mod format;
mod writer;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

pub use format::{AccessFormat, Record};
pub use writer::{Destination, flush_all, reopen_all};

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
    queue: Arc<writer::Queue>,
    dropped: Counter,
}

thread_local! {
    /// Where a line is written before it is queued: one buffer per thread, reused.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Starts the writer for `settings`; lines it cannot take count in `dropped`.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn start(settings: AccessSettings, dropped: Counter) -> std::io::Result<AccessLog> {
        let queue = writer::start(&settings.to, dropped.clone())?;
        Ok(AccessLog {
            settings,
            queue,
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
        let write = |out: &mut Vec<u8>| {
            out.clear();
            format::write(out, self.settings.format, r, SystemTime::now());
            if !self.queue.push(out) {
                self.dropped.inc();
            }
        };
        // The thread's buffer; a fresh one where there is none (a line written while the
        // thread's locals are torn down).
        let reused = LINE.try_with(|buf| {
            let Ok(mut out) = buf.try_borrow_mut() else {
                return false;
            };
            write(&mut out);
            // A long line's buffer is not kept.
            if out.capacity() > 16 * 1024 {
                *out = Vec::with_capacity(512);
            }
            true
        });
        if reused != Ok(true) {
            write(&mut Vec::new());
        }
    }
}

impl Drop for AccessLog {
    /// The last request (or reload) that could write a line is gone: the writer writes what
    /// waits, and stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}
