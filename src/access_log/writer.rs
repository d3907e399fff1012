//! The thread that owns an access log's file (or stderr): lines come in through a bounded
//! queue, and go out in large writes: when 64 KiB are waiting, at most a second after the
//! first of them came, and when asked to (drain, shutdown). A request never waits on the
//! disk: when the queue is full, its line is dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Written once this much is waiting.
const CHUNK: usize = 64 * 1024;
/// Written at most this long after the first waiting line came.
const LATEST: Duration = Duration::from_secs(1);
/// How often the thread takes the lines that came, and looks for reopen and flush requests.
const TICK: Duration = Duration::from_millis(20);

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
pub(super) fn start(
    to: &Destination,
    lines: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    dropped: Counter,
) -> std::io::Result<()> {
    let mut out = Output::open(to, dropped)?;
    let shared = Arc::new(Shared::default());
    {
        let mut all = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&shared));
    }
    std::thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || run(&mut out, &lines, &queued, &shared))?;
    Ok(())
}

/// The writer's loop. It never blocks on the queue (a sender that found it waiting would
/// have to wake it: a system call per line); it sleeps a tick, then takes all that came.
fn run(out: &mut Output, lines: &Receiver<Vec<u8>>, queued: &AtomicUsize, shared: &Shared) {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    let mut since: Option<Instant> = None;
    let mut reopens = REOPENS.load(Ordering::Acquire);
    loop {
        let asked = FLUSHES.load(Ordering::Acquire);
        let flushing = asked > shared.flushed.load(Ordering::Acquire);
        // Everything queued comes out, in writes of about a chunk.
        let open = loop {
            match lines.try_recv() {
                Ok(line) => {
                    queued.fetch_sub(line.len(), Ordering::Relaxed);
                    buf.extend_from_slice(&line);
                    since.get_or_insert_with(Instant::now);
                    if buf.len() >= CHUNK {
                        out.write(&buf);
                        buf.clear();
                        since = None;
                    }
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        let due = since.is_some_and(|s| s.elapsed() >= LATEST) || flushing || !open;
        if due && !buf.is_empty() {
            out.write(&buf);
            buf.clear();
            since = None;
        }
        // Only now: every line queued before the request was seen is written.
        shared.flushed.fetch_max(asked, Ordering::AcqRel);
        let now = REOPENS.load(Ordering::Acquire);
        if now != reopens {
            reopens = now;
            out.reopen();
        }
        if !open {
            return;
        }
        // A lone line waits no longer than a second.
        let wait = since.map_or(TICK, |s| TICK.min(LATEST.saturating_sub(s.elapsed())));
        std::thread::sleep(wait);
    }
}

/// The open destination.
struct Output {
    to: Destination,
    file: Option<File>,
    /// A write failed part way: the next one starts on a line of its own.
    broken: bool,
    /// When a failed write was last reported (one warning a minute, not one per write).
    warned: Option<Instant>,
    /// Lines lost to failed writes count with those dropped for a full queue.
    dropped: Counter,
}

impl Output {
    fn open(to: &Destination, dropped: Counter) -> std::io::Result<Output> {
        let file = match to {
            Destination::Stderr => None,
            Destination::File(path) => Some(Self::append(path)?),
        };
        Ok(Output {
            to: to.clone(),
            file,
            broken: false,
            warned: None,
            dropped,
        })
    }

    fn append(path: &PathBuf) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut send = |b: &[u8]| match &mut self.file {
            Some(f) => f.write_all(b),
            None => std::io::stderr().lock().write_all(b),
        };
        // After a write that failed part way, its cut line is ended first, so that the next
        // line is not glued to it.
        let written = if self.broken {
            send(b"\n").and_then(|()| send(bytes))
        } else {
            send(bytes)
        };
        self.broken = written.is_err();
        if let Err(e) = written {
            let lost = bytes.iter().filter(|&&b| b == b'\n').count();
            self.dropped.inc_by(lost as u64);
            if self
                .warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                self.warned = Some(Instant::now());
                tracing::warn!(error = %e, lines = lost, "access log: lines lost (the write failed)");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_writes_every_queued_line_even_past_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (tx, rx) = std::sync::mpsc::sync_channel(100_000);
        let queued = Arc::new(AtomicUsize::new(0));
        start(
            &Destination::File(path.clone()),
            rx,
            queued.clone(),
            Counter::default(),
        )
        .unwrap();
        // Ten chunks' worth, queued at once (a backlog at shutdown).
        let line = format!("{}\n", "x".repeat(99));
        let n = 10 * CHUNK / line.len();
        for _ in 0..n {
            queued.fetch_add(line.len(), Ordering::Relaxed);
            tx.send(line.clone().into_bytes()).unwrap();
        }
        flush_all(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), n);
        assert_eq!(queued.load(Ordering::Relaxed), 0);
    }
}
