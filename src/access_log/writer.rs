//! The thread that owns an access log's file (or stderr): lines come in through a bounded
//! queue, and go out in large writes: when 64 KiB are waiting, at most a second after the
//! first of them came, and when asked to (drain, shutdown). A request never waits on the
//! disk: when the queue is full, its line is dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Written once this much is waiting.
const CHUNK: usize = 64 * 1024;
/// Written at most this long after the first waiting line came.
const LATEST: Duration = Duration::from_secs(1);
/// How often the thread looks for a reopen or flush request while no line comes.
const TICK: Duration = Duration::from_millis(100);

/// Reopen requests (SIGUSR1), counted: every writer reopens its file when this moves.
static REOPENS: AtomicU64 = AtomicU64::new(0);
/// Flush requests, counted: every writer writes what waits when this moves.
static FLUSHES: AtomicU64 = AtomicU64::new(0);
/// The writers alive, for `flush_all`.
static WRITERS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// What a writer thread and the rest share.
#[derive(Default)]
pub(super) struct Shared {
    /// The last flush request this writer carried out.
    flushed: AtomicU64,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's standard error.
    Stderr,
    /// A file, opened for appending (and opened again on SIGUSR1, for logrotate).
    File(PathBuf),
}

/// Asks every writer to reopen its file (SIGUSR1, after logrotate moved it).
pub fn reopen_all() {
    REOPENS.fetch_add(1, Ordering::AcqRel);
}

/// Asks every writer to write what waits, and waits for them (at most `limit`).
pub fn flush_all(limit: Duration) {
    let wanted = FLUSHES.fetch_add(1, Ordering::AcqRel) + 1;
    let writers: Vec<Arc<Shared>> = WRITERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let until = Instant::now() + limit;
    for w in writers {
        while w.flushed.load(Ordering::Acquire) < wanted && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Starts the thread that writes the lines `lines` brings to `to`.
///
/// # Errors
/// The file cannot be opened.
pub(super) fn start(to: &Destination, lines: Receiver<Vec<u8>>) -> std::io::Result<()> {
    let mut out = Output::open(to)?;
    let shared = Arc::new(Shared::default());
    {
        let mut all = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&shared));
    }
    std::thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
            let mut since: Option<Instant> = None;
            let mut reopens = REOPENS.load(Ordering::Acquire);
            loop {
                let got = lines.recv_timeout(TICK);
                let open = match got {
                    Ok(line) => {
                        buf.extend_from_slice(&line);
                        since.get_or_insert_with(Instant::now);
                        // Whatever else is queued goes into this write too.
                        while buf.len() < CHUNK
                            && let Ok(line) = lines.try_recv()
                        {
                            buf.extend_from_slice(&line);
                        }
                        true
                    }
                    Err(RecvTimeoutError::Timeout) => true,
                    Err(RecvTimeoutError::Disconnected) => false,
                };
                let asked = FLUSHES.load(Ordering::Acquire);
                let due = buf.len() >= CHUNK
                    || since.is_some_and(|s| s.elapsed() >= LATEST)
                    || asked > shared.flushed.load(Ordering::Acquire)
                    || !open;
                if due && !buf.is_empty() {
                    out.write(&buf);
                    buf.clear();
                    since = None;
                }
                shared.flushed.fetch_max(asked, Ordering::AcqRel);
                let now = REOPENS.load(Ordering::Acquire);
                if now != reopens {
                    reopens = now;
                    out.reopen();
                }
                if !open {
                    return;
                }
            }
        })?;
    Ok(())
}

/// The open destination.
struct Output {
    to: Destination,
    file: Option<File>,
}

impl Output {
    fn open(to: &Destination) -> std::io::Result<Output> {
        let file = match to {
            Destination::Stderr => None,
            Destination::File(path) => Some(Self::append(path)?),
        };
        Ok(Output {
            to: to.clone(),
            file,
        })
    }

    fn append(path: &PathBuf) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn write(&mut self, bytes: &[u8]) {
        let written = match &mut self.file {
            Some(f) => f.write_all(bytes),
            None => std::io::stderr().lock().write_all(bytes),
        };
        if let Err(e) = written {
            // Said once per failed write, not per line.
            tracing::warn!(error = %e, "access log: lines lost (the write failed)");
        }
    }

    /// Opens the file again by its name (logrotate moved the old one away).
    fn reopen(&mut self) {
        if let Destination::File(path) = &self.to {
            match Self::append(path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "access log: cannot reopen; writing to the old file")
                }
            }
        }
    }
}
