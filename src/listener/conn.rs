//! What one client connection's parts share: its requests (through [`Watched`]), its bytes on
//! the wire ([`super::wire`]), its HTTP/2 frames ([`super::h2_frames`]), and one watchdog
//! that ends the connection when a limit is broken.
//!
//! Every limit is a mark (when something started waiting) checked by one timer per
//! connection, re-armed only when it fires: a request that meets its limits costs a few
//! atomic stores, not a timer registration (see `deadline`). The limits:
//! - **header read**: from the end of one response (or the accept) until the next HTTP/1
//!   request head has been read, and on HTTP/2 from the first byte of a frame header until
//!   that frame (and a header block, until its last CONTINUATION) is in;
//! - **send**: a write the socket has not taken, or an HTTP/2 response body whose next chunk
//!   the client's flow control keeps out;
//! - **idle** (HTTP/2): no byte either way;
//! - **abuse** (HTTP/2): requests the client mostly cancels before their answer.
//!
//! Why one file of this length: the marks, the budgets and the watchdog that reads them are
//! one state machine; split, each part would reach into the others' fields, and a reader
//! checking that every limit ends the connection would have to hold several files at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::service::Service;
use tokio_util::sync::CancellationToken;

use crate::idle::now_ms;

/// The largest piece of an HTTP/2 response body handed to the HTTP/2 library at once (one
/// frame's worth at the default frame size).
const MAX_H2_CHUNK: usize = 16 * 1024;

/// Marks `waiting` while a request is being served.
const BUSY: u64 = u64::MAX;

/// No mark.
const NONE: u64 = 0;

/// A stamp for a mark: never [`NONE`].
fn stamp() -> u64 {
    now_ms().max(1)
}

/// Requests an HTTP/2 client may cancel at once (before their answer, or during it), and how
/// many more it earns a second. A browser cancels a page's requests when it navigates away
/// (tens at once) and a typing user's searches (a few a second); paced rapid reset cancels
/// thousands a second. A budget, not a share of the requests: cheap requests (404s) mixed in
/// must not buy backend requests to cancel.
const CANCEL_BURST: u64 = 100;
const CANCELS_PER_SEC: u64 = 10;

/// How the watchdog ended a connection, and why (one of `metrics::CUT_REASONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Cut it now.
    Close(&'static str),
    /// Tell the client to go (HTTP/2 GOAWAY; HTTP/1 closes after the response in flight),
    /// then cut it after a grace.
    GoAway(&'static str),
}

impl End {
    /// Why, for the log and `connections_cut_total`.
    pub fn reason(self) -> &'static str {
        match self {
            End::Close(why) | End::GoAway(why) => why,
        }
    }
}

/// The limits a connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See the module docs.
    pub header_read: Duration,
    /// Longest pause in a request body (here: HTTP/2 over TLS, bytes of a DATA payload that
    /// have not yet come out of TLS).
    pub body_read: Duration,
    /// See the module docs.
    pub send: Duration,
    /// See the module docs.
    pub idle: Duration,
}

/// One client connection's shared state.
#[derive(Debug)]
pub struct Conn {
    /// Set once the protocol is known (ALPN or the h2c preface).
    h2: AtomicBool,
    /// HTTP/1: when the connection started waiting for a request head, or [`BUSY`].
    /// HTTP/2: when its last request in service ended, or [`BUSY`] while any is.
    since: AtomicU64,
    /// HTTP/2: requests in service.
    in_service: AtomicU32,
    /// When a byte last moved on the socket, either way (HTTP/2 idle).
    moved: AtomicU64,
    /// When a write found the socket full, or [`NONE`] (send timeout).
    blocked: AtomicU64,
    /// HTTP/2: when the frame (or header block) being read began, or [`NONE`].
    frame_since: AtomicU64,
    /// HTTP/2: whether response bytes went out since the client's last PING.
    data_sent: AtomicBool,
    /// HTTP/2: whether a request body (a DATA payload) is being read: sealed bytes then wait
    /// by the body timeout, not the header timeout.
    in_body: AtomicBool,
    /// HTTP/2 over TLS: when bytes came in on the socket that have not yet come out of TLS
    /// as plaintext (a TLS record trickled a byte at a time), or [`NONE`].
    sealed_since: AtomicU64,
    /// Whether a request head has been read (a connection that has not is the first to
    /// give up its place when the gateway is full).
    served: AtomicBool,
    /// HTTP/2: cancels the client may still make, and when the budget was last refilled.
    cancels: Mutex<(u64, u64)>,
    /// HTTP/2: response bodies, each with the time it handed over a chunk not yet taken.
    bodies: Mutex<Vec<Weak<AtomicU64>>>,
    /// Fires when the gateway drains: responses then carry `Connection: close`.
    closing: CancellationToken,
    /// Why the connection must end now, if something outside the watchdog decided so.
    verdict: Mutex<Option<End>>,
    /// Whether a verdict has been given (no lock to look).
    ending: AtomicBool,
    /// The watchdog's task, woken when a verdict comes from outside. An `AtomicWaker`, not a
    /// `Notify`: the watchdog is polled whenever its connection's task wakes, and a
    /// registration here is one compare-and-swap (a `Notify` takes a lock each time).
    wake: AtomicWaker,
}

impl Conn {
    /// A connection accepted now, waiting for its first request head.
    pub fn new(closing: CancellationToken) -> Arc<Conn> {
        let now = stamp();
        Arc::new(Conn {
            h2: AtomicBool::new(false),
            since: AtomicU64::new(now),
            in_service: AtomicU32::new(0),
            moved: AtomicU64::new(now),
            blocked: AtomicU64::new(NONE),
            frame_since: AtomicU64::new(NONE),
            sealed_since: AtomicU64::new(NONE),
            data_sent: AtomicBool::new(false),
            in_body: AtomicBool::new(false),
            served: AtomicBool::new(false),
            cancels: Mutex::new((CANCEL_BURST, now_ms())),
            bodies: Mutex::new(Vec::new()),
            closing,
            verdict: Mutex::new(None),
            ending: AtomicBool::new(false),
            wake: AtomicWaker::new(),
        })
    }

    /// Sets the protocol once it is known (ALPN or the h2c preface).
    pub fn set_h2(&self, h2: bool) {
        self.h2.store(h2, Ordering::Relaxed);
    }

    pub(super) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Since when the connection has waited without a request in service, if it is: the
    /// connection a full gateway may take back first (the longest waiting goes first).
    pub fn waiting_since(&self) -> Option<(bool, u64)> {
        let since = self.since.load(Ordering::Relaxed);
        // HTTP/2: `since` is stamped by a stream's task, and may land just after another
        // stream began; the count is the truth.
        // A response handed to hyper whole may still be on its way to a slow reader.
        let busy = since == BUSY
            || (self.is_h2() && self.in_service.load(Ordering::Relaxed) > 0)
            || self.blocked.load(Ordering::Relaxed) != NONE
            || self.ending.load(Ordering::Relaxed);
        (!busy).then(|| (self.served.load(Ordering::Relaxed), since))
    }

    /// Ends the connection from outside (the gateway is full and takes its place back).
    pub fn end(&self, why: End) {
        if let Ok(mut v) = self.verdict.lock() {
            v.get_or_insert(why);
        }
        self.ending.store(true, Ordering::Release);
        self.wake.wake();
    }

    pub(super) fn moved(&self) {
        self.moved.store(now_ms(), Ordering::Relaxed);
    }

    pub(super) fn write_blocked(&self) {
        if self.blocked.load(Ordering::Relaxed) == NONE {
            self.blocked.store(stamp(), Ordering::Relaxed);
        }
    }

    pub(super) fn write_went(&self) {
        if self.blocked.load(Ordering::Relaxed) != NONE {
            self.blocked.store(NONE, Ordering::Relaxed);
        }
    }

    /// HTTP/2: a frame (or a header block) began arriving at `since`, or all that began has
    /// arrived (`NONE`).
    pub(super) fn frame_pending(&self, since: u64) {
        self.frame_since.store(since, Ordering::Relaxed);
    }

    /// Response bytes went out.
    pub(super) fn data_went(&self) {
        if !self.data_sent.load(Ordering::Relaxed) {
            self.data_sent.store(true, Ordering::Relaxed);
        }
    }

    /// Whether data went out since the last call (and forget it).
    pub(super) fn take_data_sent(&self) -> bool {
        self.data_sent.swap(false, Ordering::Relaxed)
    }

    /// Whether a request body's DATA payload is being read.
    pub(super) fn in_body(&self, yes: bool) {
        self.in_body.store(yes, Ordering::Relaxed);
    }

    /// Bytes came in on the socket (under TLS).
    pub(super) fn socket_read(&self) {
        if self.sealed_since.load(Ordering::Relaxed) == NONE {
            self.sealed_since.store(stamp(), Ordering::Relaxed);
        }
    }

    /// Plaintext came out of TLS (or the connection is cleartext): what came in is read.
    pub(super) fn plaintext_read(&self) {
        if self.sealed_since.load(Ordering::Relaxed) != NONE {
            self.sealed_since.store(NONE, Ordering::Relaxed);
        }
    }

    /// Resolves when the connection has waited for a request head for longer than `limit`
    /// (HTTP/1: a draining connection closes once it has been idle this long).
    pub async fn idle_for(&self, limit: Duration) {
        let limit_ms = millis(limit);
        loop {
            let since = self.since.load(Ordering::Relaxed);
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

    /// Resolves when the connection breaks a limit, or is ended from outside.
    pub fn watchdog(&self, limits: Limits) -> Watchdog<'_> {
        Watchdog {
            conn: self,
            limits,
            registered: None,
            sleep: None,
        }
    }

    /// The limit broken now, or how long until one might be.
    fn judge(&self, limits: Limits) -> Result<End, u64> {
        let now = now_ms();
        // A mark's time, or now when it is not set (`NONE`, `BUSY`): nothing waits.
        let mark = |m: &AtomicU64| match m.load(Ordering::Relaxed) {
            NONE | BUSY => now,
            t => t,
        };
        let mut checks = vec![(mark(&self.blocked), limits.send, End::Close("send"))];
        if self.is_h2() {
            let sealed_limit = if self.in_body.load(Ordering::Relaxed) {
                limits.body_read
            } else {
                limits.header_read
            };
            checks.extend([
                (
                    mark(&self.frame_since),
                    limits.header_read,
                    End::Close("header_read"),
                ),
                (
                    mark(&self.sealed_since),
                    sealed_limit,
                    End::Close("header_read"),
                ),
                (mark(&self.moved), limits.idle, End::Close("idle")),
                (
                    self.oldest_stalled_body().unwrap_or(now),
                    limits.send,
                    End::GoAway("send_stream"),
                ),
            ]);
        } else {
            checks.push((
                mark(&self.since),
                limits.header_read,
                End::Close("header_read"),
            ));
        }
        // Each mark must not be older than its limit: broken, or the time left.
        let mut next = u64::MAX;
        for (since, limit, why) in checks {
            let (limit, waited) = (millis(limit), now.saturating_sub(since));
            if waited >= limit {
                return Ok(why);
            }
            next = next.min(limit - waited);
        }
        Err(next)
    }

    /// The oldest chunk an HTTP/2 response body handed over that the client has not let
    /// through; forgets bodies that are gone.
    fn oldest_stalled_body(&self) -> Option<u64> {
        let mut bodies = self.bodies.lock().ok()?;
        let mut oldest = None::<u64>;
        bodies.retain(|b| match b.upgrade() {
            Some(at) => {
                let t = at.load(Ordering::Relaxed);
                if t != NONE {
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
                true
            }
            None => false,
        });
        oldest
    }

    fn busy(&self) {
        self.served.store(true, Ordering::Relaxed);
        if self.is_h2() {
            self.in_service.fetch_add(1, Ordering::Relaxed);
        }
        self.since.store(BUSY, Ordering::Relaxed);
    }

    fn done(&self) {
        if !self.is_h2() || self.in_service.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since.store(stamp(), Ordering::Relaxed);
        }
    }

    /// A request the client gave up before its answer was done (an HTTP/2 stream reset): a
    /// client that keeps doing so (rapid reset, paced to dodge the HTTP/2 library's own
    /// limit) makes the backend work for nothing, and is sent away once past its budget.
    fn cancelled(&self) {
        if !self.is_h2() {
            return;
        }
        let now = now_ms();
        let Ok(mut b) = self.cancels.lock() else {
            return;
        };
        let (left, refilled) = &mut *b;
        let earned = now.saturating_sub(*refilled) * CANCELS_PER_SEC / 1000;
        if earned > 0 {
            *left = (*left + earned).min(CANCEL_BURST);
            *refilled += earned * 1000 / CANCELS_PER_SEC;
        }
        match left.checked_sub(1) {
            Some(l) => *left = l,
            None => {
                drop(b);
                self.end(End::GoAway("cancelled_requests"));
            }
        }
    }

    /// Why the connection was ended from outside, if it was.
    pub fn verdict(&self) -> Option<End> {
        if !self.ending.load(Ordering::Acquire) {
            return None;
        }
        self.verdict.lock().ok().and_then(|v| *v)
    }

    /// Whether the connection has been told to go: its new requests are refused unserved.
    fn sent_away(&self) -> bool {
        self.ending.load(Ordering::Relaxed)
    }

    /// Wraps a service so that its requests are tracked by this connection; once the
    /// gateway drains, HTTP/1 responses carry `Connection: close`.
    pub fn service<S>(self: &Arc<Self>, inner: S) -> Watched<S> {
        Watched {
            inner,
            conn: self.clone(),
        }
    }

    #[inline]
    fn watch_body(&self) -> Option<Arc<AtomicU64>> {
        if !self.is_h2() {
            return None;
        }
        self.watch_h2_body()
    }

    fn watch_h2_body(&self) -> Option<Arc<AtomicU64>> {
        let at = Arc::new(AtomicU64::new(NONE));
        if let Ok(mut bodies) = self.bodies.lock() {
            // Gone bodies are swept by the watchdog; sweep here too when many pile up
            // between its runs (a busy connection makes thousands of requests a second).
            if bodies.len() >= 64 && bodies.len().is_power_of_two() {
                bodies.retain(|b| b.strong_count() > 0);
            }
            bodies.push(Arc::downgrade(&at));
        }
        Some(at)
    }
}

/// See [`Conn::watchdog`]: one timer, re-armed only when it fires.
pub struct Watchdog<'a> {
    conn: &'a Conn,
    /// The waker last registered: a task's waker stays the same, and registering it again
    /// on every poll (the connection's task polls this at each wake) is a needless swap.
    registered: Option<std::task::Waker>,
    limits: Limits,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Watchdog<'_> {
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.conn.wake.register(cx.waker());
            self.registered = Some(cx.waker().clone());
        }
        loop {
            if self.conn.ending.load(Ordering::Acquire)
                && let Ok(v) = self.conn.verdict.lock()
                && let Some(end) = *v
            {
                return Poll::Ready(end);
            }
            if let Some(sleep) = self.sleep.as_mut()
                && sleep.as_mut().poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            match self.conn.judge(self.limits) {
                Ok(end) => {
                    self.conn.end(end);
                    return Poll::Ready(end);
                }
                Err(next_ms) => {
                    let at = tokio::time::Instant::now() + Duration::from_millis(next_ms.max(1));
                    match self.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(at),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A service whose requests are tracked by a [`Conn`].
#[derive(Debug, Clone)]
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S, ReqB, B> Service<Request<ReqB>> for Watched<S>
where
    S: Service<Request<ReqB>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
{
    type Response = Response<WatchedBody<B>>;
    type Error = Infallible;
    type Future = WatchedFuture<S::Future>;

    fn call(&self, req: Request<ReqB>) -> Self::Future {
        // The head has been read: no header timeout until this response is done.
        self.conn.busy();
        // Told to go (GOAWAY): streams the client opened meanwhile reach no backend. The
        // inner future is made either way (a service's future does nothing until polled) and
        // in place: wrapping it in an `Option` cost a copy of the whole request future (about
        // 230 instructions per request, callgrind).
        WatchedFuture {
            refused: self.conn.sent_away(),
            inner: self.inner.call(req),
            conn: Some(self.conn.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`Watched`] service.
    pub struct WatchedFuture<F> {
        #[pin]
        inner: F,
        refused: bool,
        conn: Option<Arc<Conn>>,
    }

    impl<F> PinnedDrop for WatchedFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its answer: the client reset the stream (or the connection
            // went).
            if let Some(conn) = this.project().conn.take() {
                conn.cancelled();
                conn.done();
            }
        }
    }
}

impl<F, B> Future for WatchedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<WatchedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = if *this.refused {
            None
        } else {
            match this.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(resp)) => Some(resp),
            }
        };
        let Some(conn) = this.conn.take() else {
            return Poll::Pending;
        };
        let Some(mut resp) = resp else {
            let mut refused = Response::new(WatchedBody {
                inner: None,
                at: None,
                conn,
                rest: Bytes::new(),
                ended: true,
            });
            *refused.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Poll::Ready(Ok(refused));
        };
        if !conn.is_h2()
            && conn.closing.is_cancelled()
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            // Draining: the client learns that this connection ends with this response, and
            // takes its next request elsewhere (hyper closes after sending it).
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let at = conn.watch_body();
        Poll::Ready(Ok(resp.map(|inner| WatchedBody {
            // An empty body is never polled: hyper sends the head with END_STREAM.
            ended: inner.is_end_stream(),
            inner: Some(inner),
            at,
            conn,
            rest: Bytes::new(),
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's time in service when dropped (hyper drops it
    /// once the body is sent, or the connection is gone), and on HTTP/2 notes when it hands
    /// over a chunk the client has yet to let through.
    pub struct WatchedBody<B> {
        #[pin]
        inner: Option<B>,
        at: Option<Arc<AtomicU64>>,
        conn: Arc<Conn>,
        // HTTP/2: what is left of a chunk larger than `MAX_H2_CHUNK`.
        rest: Bytes,
        // Whether the body was sent to its end.
        ended: bool,
    }

    impl<B> PinnedDrop for WatchedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // An HTTP/2 response dropped before its end: the client reset the stream.
            if !this.ended && this.at.is_some() {
                this.conn.cancelled();
            }
            this.conn.done();
        }
    }
}

impl<B: Body<Data = Bytes>> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.at.is_none() {
            // HTTP/1: nothing to cut or watch.
            return match this.inner.as_pin_mut() {
                Some(inner) => inner.poll_frame(cx),
                None => Poll::Ready(None),
            };
        }
        if !this.rest.is_empty() {
            let n = this.rest.len().min(MAX_H2_CHUNK);
            let piece = this.rest.split_to(n);
            if let Some(at) = this.at {
                at.store(stamp(), Ordering::Relaxed);
            }
            *this.ended = this.rest.is_empty()
                && this
                    .inner
                    .as_ref()
                    .get_ref()
                    .as_ref()
                    .is_none_or(Body::is_end_stream);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let Some(mut inner) = this.inner.as_mut().as_pin_mut() else {
            *this.ended = true;
            return Poll::Ready(None);
        };
        let mut r = inner.as_mut().poll_frame(cx);
        match &r {
            // An error ends the body too (the backend failed): not the client's cancel.
            Poll::Ready(None | Some(Err(_))) => *this.ended = true,
            // HTTP/2 hands a chunk to the library whole once the stream may send one byte,
            // and it waits there, unwatched, once the body is done: chunks are cut to bound
            // what a stream the client keeps shut can hold.
            Poll::Ready(Some(Ok(f))) if this.at.is_some() => {
                if let Some(d) = f.data_ref()
                    && d.len() > MAX_H2_CHUNK
                {
                    let mut d = d.clone();
                    *this.rest = d.split_off(MAX_H2_CHUNK);
                    r = Poll::Ready(Some(Ok(Frame::data(d))));
                }
            }
            _ => {}
        }
        if let Poll::Ready(Some(Ok(f))) = &r
            && this.rest.is_empty()
            && (f.is_trailers() || inner.is_end_stream())
        {
            // hyper asks no more once a body says it is at its end, or after trailers.
            *this.ended = true;
        }
        if let Some(at) = this.at {
            // hyper asks for the next chunk only once the client's flow control has let the
            // last one through: a chunk handed over and not followed by another ask within
            // the send timeout is a stream the client keeps shut.
            let t = match &r {
                Poll::Ready(Some(Ok(f))) if f.is_data() => stamp(),
                _ => NONE,
            };
            at.store(t, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
