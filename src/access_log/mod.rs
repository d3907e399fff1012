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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(path: &str) -> Record<'_> {
        Record {
            listener: "web",
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            method: "GET",
            path,
            route: Some("app"),
            upstream: Some("app"),
            status: 200,
            bytes: 100,
            duration: Duration::from_micros(900),
            upstream_time: None,
            session_status: None,
            session: None,
            complete: true,
            error: None,
            query: None,
            version: "HTTP/1.1",
            referer: None,
            user_agent: None,
        }
    }

    #[test]
    fn lines_a_full_disk_refuses_are_counted_as_dropped() {
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        let dropped = Counter::default();
        let log = AccessLog::start(
            AccessSettings {
                to: writer::Destination::File("/dev/full".into()),
                format: AccessFormat::Combined,
            },
            dropped.clone(),
        )
        .unwrap();
        for i in 0..10 {
            log.line(&record(&format!("/item/{i}")));
        }
        flush_all(Duration::from_secs(5));
        assert_eq!(dropped.get(), 10);
    }

    #[test]
    fn lines_are_written_whole_and_in_order_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = Arc::new(
            AccessLog::start(
                AccessSettings {
                    to: writer::Destination::File(path.clone()),
                    format: AccessFormat::Combined,
                },
                Counter::default(),
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        log.line(&record(&format!("/t{t}/{i}")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        flush_all(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 8_000);
        for t in 0..4 {
            // Each thread's lines, whole and in the order it wrote them.
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|l| {
                    let (_, rest) = l.split_once(&format!("\"GET /t{t}/"))?;
                    rest.split_once(' ')?.0.parse().ok()
                })
                .collect();
            assert_eq!(seen, (0..2_000).collect::<Vec<_>>(), "thread {t}");
        }
    }
}
