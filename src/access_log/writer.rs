//! The thread that owns an access log's file (or stderr): lines are appended to shared
//! chunks (a lock held for a copy, never across I/O), and go out in large writes: when 64 KiB
//! are waiting, at most about a second after the first of them came, and when asked to
//! (drain, shutdown). A request never waits on the disk: when too much is waiting, its line
//! is dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Written once this much is waiting.
const CHUNK: usize = 64 * 1024;
/// Written at most this long after the first waiting line came.
const LATEST: Duration = Duration::from_secs(1);
/// How often the thread looks for lines, and for reopen and flush requests.
const TICK: Duration = Duration::from_millis(20);
/// How many bytes may wait for the writer; past that, lines are dropped (a client cannot fill
/// memory with long lines while the disk is slow).
const QUEUE_BYTES: usize = 32 << 20;

/// Reopen requests (SIGUSR1), counted: every writer reopens its file when this moves.
static REOPENS: AtomicU64 = AtomicU64::new(0);
/// Flush requests, counted: every writer writes what waits when this moves.
static FLUSHES: AtomicU64 = AtomicU64::new(0);
/// The writers alive, for `flush_all`.
static WRITERS: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

/// The lines waiting for a writer, shared by the requests that add them and the writer
/// thread that takes them. Buffers rather than a channel of lines: a line costs a copy under
/// a short lock, not an allocation, a channel slot and a free on another thread (about 900
/// instructions a line under callgrind). The buffers are chunks of about 64 KiB, so that a
/// line never waits for a large buffer to be copied into a larger one under the lock (a
/// backlog of 32 MiB in one buffer would), and the chunks the writer has written come back
/// to be filled again.
#[derive(Default)]
pub(super) struct Queue {
    waiting: Mutex<Waiting>,
    /// No line will come any more: the writer writes what waits, and stops.
    closed: AtomicBool,
    /// The last flush request this writer carried out.
    flushed: AtomicU64,
}

/// Whole lines, each ending in a newline, in chunks; and emptied chunks to fill again.
#[derive(Default)]
struct Waiting {
    chunks: Vec<Vec<u8>>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

/// How many emptied chunks are kept for reuse.
const SPARE_CHUNKS: usize = 4;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the lines themselves.
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    /// Adds a line (ending in a newline); `false` if it was dropped, too much waiting.
    pub(super) fn push(&self, line: &[u8]) -> bool {
        let mut guard = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = &mut *guard;
        if waiting.bytes + line.len() > QUEUE_BYTES {
            return false;
        }
        match waiting.chunks.last_mut() {
            Some(chunk) if chunk.len() + line.len() <= CHUNK => chunk.extend_from_slice(line),
            // A new chunk (a line longer than a chunk has one of its own).
            _ => {
                let mut chunk = waiting
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                chunk.extend_from_slice(line);
                waiting.chunks.push(chunk);
            }
        }
        waiting.bytes += line.len();
        true
    }

    /// No more lines: the writer writes what waits, and its thread ends.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
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
    let writers: Vec<Arc<Queue>> = WRITERS
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

/// Starts the thread that writes to `to` the lines pushed into the queue it returns.
///
/// # Errors
/// The file cannot be opened.
pub(super) fn start(to: &Destination, dropped: Counter) -> std::io::Result<Arc<Queue>> {
    let mut out = Output::open(to, dropped)?;
    let queue = Arc::new(Queue::default());
    {
        let mut all = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&queue));
    }
    let q = queue.clone();
    std::thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || run(&mut out, &q))?;
    Ok(queue)
}

/// The writer's loop. It never waits on the requests (one that found it waiting would have
/// to wake it: a system call per line); it sleeps a tick, then takes what came once enough
/// waits or the oldest line is due.
fn run(out: &mut Output, queue: &Queue) {
    let mut taken: Vec<Vec<u8>> = Vec::new();
    let mut since: Option<Instant> = None;
    let mut reopens = REOPENS.load(Ordering::Acquire);
    loop {
        let asked = FLUSHES.load(Ordering::Acquire);
        let flushing = asked > queue.flushed.load(Ordering::Acquire);
        // Read before the lock: every line added before the close is in the buffer then.
        let closed = queue.closed.load(Ordering::Acquire);
        {
            let mut waiting = queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            // The chunks written last time, emptied, to be filled again.
            while waiting.spare.len() < SPARE_CHUNKS
                && let Some(mut chunk) = taken.pop()
            {
                // Only chunks of the usual size: a long line's is not kept.
                if chunk.capacity() <= CHUNK {
                    chunk.clear();
                    waiting.spare.push(chunk);
                }
            }
            taken.clear();
            if waiting.bytes > 0 {
                let first = *since.get_or_insert_with(Instant::now);
                if waiting.bytes >= CHUNK || first.elapsed() >= LATEST || flushing || closed {
                    taken = std::mem::take(&mut waiting.chunks);
                    waiting.bytes = 0;
                }
            }
        }
        if !taken.is_empty() {
            for chunk in &taken {
                out.write(chunk);
            }
            since = None;
        }
        // Only now: every line added before the request was seen is written.
        queue.flushed.fetch_max(asked, Ordering::AcqRel);
        let now = REOPENS.load(Ordering::Acquire);
        if now != reopens {
            reopens = now;
            out.reopen();
        }
        if closed {
            // Nothing more will come: no flush need wait for this writer.
            queue.flushed.store(u64::MAX, Ordering::Release);
            return;
        }
        // A lone line waits no longer than about a second.
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
        let queue = start(&Destination::File(path.clone()), Counter::default()).unwrap();
        // Ten chunks' worth, queued at once (a backlog at shutdown).
        let line = format!("{}\n", "x".repeat(99));
        let n = 10 * CHUNK / line.len();
        for _ in 0..n {
            assert!(queue.push(line.as_bytes()));
        }
        flush_all(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), n);
        assert_eq!(queue.waiting.lock().unwrap().bytes, 0);
    }

    #[test]
    fn lines_past_the_bound_are_refused_and_a_closed_queue_is_written_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let queue = start(&Destination::File(path.clone()), Counter::default()).unwrap();
        let line = vec![b'y'; QUEUE_BYTES / 2 + 1];
        assert!(queue.push(&line));
        // Two such lines are past the bound. The writer may take one between two pushes (it
        // looks once a tick): of 32 pushes, some two follow each other with no take between.
        let refused = (0..32).any(|_| !queue.push(&line));
        assert!(refused, "the bound never refused a line");
        queue.close();
        for _ in 0..500 {
            if Arc::strong_count(&queue) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            Arc::strong_count(&queue),
            1,
            "the writer did not stop once closed"
        );
        assert_eq!(queue.waiting.lock().unwrap().bytes, 0);
    }
}
