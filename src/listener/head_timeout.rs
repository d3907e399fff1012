//! The HTTP/1 header-read timeout, kept per connection instead of per request.
//!
//! hyper's own `header_read_timeout` registers a tokio timer for every request head, which
//! costs a timer-wheel lock and often an `eventfd` write per request (see `deadline`). Here a
//! connection notes when it started waiting for a request head (at accept, and when a response
//! has been sent) and one watchdog timer per connection checks that mark; it is re-armed only
//! when it fires. The limit covers the same time as hyper's: from the end of one response (or
//! the accept) until the next request's head has been read, so it also bounds keep-alive idle.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::service::Service;
use tokio_util::sync::CancellationToken;

use crate::idle::now_ms;

/// Marks `waiting` while a request is being served.
const BUSY: u64 = u64::MAX;

/// When a connection started waiting for a request head, or [`BUSY`].
#[derive(Debug, Clone)]
pub struct HeadWatch(Arc<Watch>);

/// What a connection's requests share with its watchdog.
#[derive(Debug)]
struct Watch {
    /// When the connection started waiting for a request head, or [`BUSY`].
    since: AtomicU64,
    /// Fires when the gateway drains: responses then carry `Connection: close`.
    closing: CancellationToken,
}

impl HeadWatch {
    /// A connection that starts waiting now.
    pub fn new() -> Self {
        Self::closing_with(CancellationToken::new())
    }

    /// A connection that starts waiting now and closes after its next response once `closing`
    /// fires.
    pub fn closing_with(closing: CancellationToken) -> Self {
        HeadWatch(Arc::new(Watch {
            since: AtomicU64::new(now_ms()),
            closing,
        }))
    }

    /// Resolves when the connection has waited for a request head for longer than `limit`.
    pub async fn expired(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let since = self.0.since.load(Ordering::Relaxed);
            let wait_ms = if since == BUSY {
                limit_ms
            } else {
                let waited = now_ms().saturating_sub(since);
                if waited >= limit_ms {
                    return;
                }
                limit_ms - waited
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }

    /// Wraps a service so that its requests mark the connection busy until their response body
    /// is done; once the watch's `closing` fires, responses carry `Connection: close`.
    pub fn service<S>(&self, inner: S) -> Watched<S> {
        Watched {
            inner,
            watch: self.clone(),
        }
    }

    fn busy(&self) {
        self.0.since.store(BUSY, Ordering::Relaxed);
    }

    fn waiting(&self) {
        self.0.since.store(now_ms(), Ordering::Relaxed);
    }
}

impl Default for HeadWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// A service whose requests are tracked by a [`HeadWatch`].
#[derive(Debug, Clone)]
pub struct Watched<S> {
    inner: S,
    watch: HeadWatch,
}

impl<S, ReqB, B> Service<Request<ReqB>> for Watched<S>
where
    S: Service<Request<ReqB>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<WatchedBody<B>>;
    type Error = Infallible;
    type Future = WatchedFuture<S::Future>;

    fn call(&self, req: Request<ReqB>) -> Self::Future {
        // The head has been read: no header timeout until this response is done.
        self.watch.busy();
        WatchedFuture {
            inner: self.inner.call(req),
            watch: Some(self.watch.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`Watched`] service.
    pub struct WatchedFuture<F> {
        #[pin]
        inner: F,
        watch: Option<HeadWatch>,
    }
}

impl<F, B> Future for WatchedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<WatchedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(Ok(mut resp)) = this.inner.poll(cx) else {
            return Poll::Pending;
        };
        let watch = this.watch.take().unwrap_or_default();
        if watch.0.closing.is_cancelled() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            // Draining: the client learns that this connection ends with this response, and
            // takes its next request elsewhere (hyper closes after sending it).
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(resp.map(|inner| WatchedBody { inner, watch })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that marks its connection as waiting for the next head when dropped
    /// (hyper drops it once the body is sent, or the connection is gone).
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        watch: HeadWatch,
    }

    impl<B> PinnedDrop for WatchedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            this.watch.waiting();
        }
    }
}

impl<B: Body> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
