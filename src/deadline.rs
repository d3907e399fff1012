//! Deadlines that cost nothing when they are met.
//!
//! A tokio timer registered per request is expensive on a keep-alive connection: every
//! registration and cancellation takes the timer wheel's lock, and a registration earlier than
//! the runtime's next wake-up also wakes the I/O driver through an `eventfd` write (a system
//! call per request, measured with strace). Most deadlines are met, so a [`LazyTimer`] keeps one
//! tokio timer per connection that is re-armed only when it fires: a deadline that is met costs
//! a clock read.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One timer serving a sequence of deadlines (one at a time).
///
/// The inner timer stays armed at an earlier deadline until it fires; only then is it moved
/// to the current deadline. Since each deadline is usually later than the one before (a fixed
/// timeout from "now"), the timer fires at most about once per timeout period.
#[derive(Debug)]
pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
}

impl Default for LazyTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl LazyTimer {
    /// A timer with no deadline yet (it registers nothing until polled).
    pub fn new() -> Self {
        // Far enough to never fire before the first real deadline replaces it.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        LazyTimer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
        }
    }

    /// Ready once `deadline` has passed; until then the task is woken no later than it.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if self.sleep.deadline() > deadline {
            // A shorter deadline than the armed one (rare): re-arm earlier.
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => return Poll::Ready(()),
                // It fired for an earlier deadline: move it to this one.
                Poll::Ready(()) => self.sleep.as_mut().reset(deadline),
            }
        }
    }

    /// Runs `fut` to completion, or gives up with `Err(Elapsed)` after `limit`.
    ///
    /// # Errors
    /// [`Elapsed`] when `limit` passed first (`fut` is dropped).
    pub async fn within<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let deadline = Instant::now() + limit;
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            self.poll_expired(cx, deadline).map(|()| Err(Elapsed))
        })
        .await
    }
}

/// A deadline passed before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// A connection's reusable [`LazyTimer`], lent to one request at a time. HTTP/1 requests on a
/// connection take turns, so they share one timer; concurrent HTTP/2 streams that find it
/// lent out get a timer of their own.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Option<LazyTimer>>);

impl TimerSlot {
    /// The connection's timer if it is free, else a new one. Give it back with `put`.
    pub fn take(&self) -> LazyTimer {
        self.0
            .lock()
            .ok()
            .and_then(|mut t| t.take())
            .unwrap_or_default()
    }

    /// Returns a timer for the next request.
    pub fn put(&self, timer: LazyTimer) {
        if let Ok(mut t) = self.0.lock() {
            *t = Some(timer);
        }
    }
}

/// [`LazyTimer`]s for work that belongs to no connection (session store operations): one is
/// taken for an operation and given back after, so an operation that meets its deadline
/// registers no timer. Holds at most [`TimerPool::MAX`] idle timers.
#[derive(Debug, Default)]
pub struct TimerPool(Mutex<Vec<LazyTimer>>);

impl TimerPool {
    /// Idle timers kept at most (about the concurrent operations of a busy gateway).
    pub const MAX: usize = 256;

    /// An idle timer, or a new one. Give it back with `put`.
    pub fn take(&self) -> LazyTimer {
        self.0
            .lock()
            .ok()
            .and_then(|mut t| t.pop())
            .unwrap_or_default()
    }

    /// Returns a timer for the next operation.
    pub fn put(&self, timer: LazyTimer) {
        if let Ok(mut t) = self.0.lock()
            && t.len() < Self::MAX
        {
            t.push(timer);
        }
    }

    /// Runs `fut` within `limit` on a pooled timer.
    ///
    /// # Errors
    /// [`Elapsed`] when `limit` passed first (`fut` is dropped).
    pub async fn within<F: Future>(&self, limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
        let mut timer = self.take();
        let r = timer.within(limit, fut).await;
        self.put(timer);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn met_deadlines_leave_the_timer_armed_at_the_first() {
        let mut t = LazyTimer::new();
        let first = Instant::now();
        for _ in 0..3 {
            let answer = async {
                tokio::task::yield_now().await;
                1
            };
            assert_eq!(t.within(Duration::from_secs(10), answer).await, Ok(1));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Still armed at the first deadline: no re-registration per request.
        assert_eq!(t.sleep.deadline(), first + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn expires_at_the_current_deadline_not_an_earlier_one() {
        let mut t = LazyTimer::new();
        let answer = tokio::task::yield_now();
        assert_eq!(t.within(Duration::from_secs(10), answer).await, Ok(()));
        tokio::time::advance(Duration::from_secs(8)).await;
        // The timer fires at 10 s for the old deadline; this one runs to 8 + 10 = 18 s.
        let start = Instant::now();
        let r = t
            .within(Duration::from_secs(10), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_deadline_re_arms_earlier() {
        let mut t = LazyTimer::new();
        let answer = tokio::task::yield_now();
        assert_eq!(t.within(Duration::from_secs(60), answer).await, Ok(()));
        let start = Instant::now();
        let r = t
            .within(Duration::from_secs(1), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }
}
