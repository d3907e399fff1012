//! Idle detection for byte streams: an I/O wrapper that notes when it last read or wrote, and
//! a watchdog that resolves once a stream has been silent for too long.
//!
//! Used for upgraded WebSocket tunnels, where no request-level timeout applies (client
//! connections have their own watchdog, `listener::conn`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Milliseconds on a monotonic clock shared by the whole process (cheap to store atomically).
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// When one or more streams last moved a byte.
#[derive(Debug, Clone)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Activity(Arc::new(AtomicU64::new(now_ms())))
    }

    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    pub async fn silent_for(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let quiet = now_ms().saturating_sub(self.0.load(Ordering::Relaxed));
            if quiet >= limit_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(limit_ms - quiet)).await;
        }
    }

    /// Wraps a stream so that its reads and writes count as activity.
    pub fn track<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            io,
            activity: self.clone(),
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A stream whose reads and writes are noted in an [`Activity`].
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn silence_is_noticed_and_traffic_postpones_it() {
        let activity = Activity::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = activity.track(a);
        let watchdog = activity.clone();
        let silent =
            tokio::spawn(async move { watchdog.silent_for(Duration::from_millis(200)).await });
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            a.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b.read_exact(&mut one).await.unwrap();
        }
        assert!(
            !silent.is_finished(),
            "traffic every 100 ms keeps a 200 ms watchdog quiet"
        );
        tokio::time::timeout(Duration::from_secs(2), silent)
            .await
            .expect("the watchdog never fired")
            .unwrap();
    }
}
