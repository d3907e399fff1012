//! The request body sent upstream: streamed, size-limited, replayable until first read, and
//! telling when it has been sent completely.
//!
//! A client's trailers never go upstream: they are headers no check has seen.
//!
//! A retry on another server must resend the body, but bodies are streamed, never buffered.
//! The way out: the client's body waits in a shared slot until the upstream connection first
//! asks for it. If the attempt fails before that (connection refused, say), the body is still
//! in the slot and the next attempt takes it; once a byte has been read, there is no replay.
//!
//! Whether the body was sent completely matters twice: the backend's response timeout starts
//! only then (a slow upload is the client's pace, not the backend's fault), and a connection
//! whose request body is unfinished must not go back to the idle pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Sleep;

/// Why the request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body grew past the route's limit.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading the client's body failed (the client went away, or sent a malformed body).
    #[error("reading the request body from the client failed: {0}")]
    Downstream(#[source] hyper::Error),
    /// The client sent nothing of its body for too long.
    #[error("the client sent no request body data for {0:?}")]
    Stalled(Duration),
    /// The body had already been handed to an earlier attempt.
    #[error("the request body was already consumed")]
    Consumed,
}

/// Set once the whole body has been handed to the upstream connection.
#[derive(Debug, Default)]
pub struct Sent {
    done: AtomicBool,
    notify: Notify,
}

impl Sent {
    /// Whether the body was sent completely.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves when the body has been sent completely.
    pub async fn wait(&self) {
        // `notify_one` keeps a permit when nobody waits yet, so the order does not matter.
        if !self.is_done() {
            self.notify.notified().await;
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

type Slot = Arc<Mutex<Option<Incoming>>>;

enum State {
    Waiting(Slot),
    Streaming(Incoming),
    Done,
}

/// A request body on its way upstream.
///
/// Most requests have no body; for them this is one null pointer. The request moves through
/// several futures and hyper's dispatch channel on its way out, and every move copies it.
pub struct RequestBody(Option<Box<Streamed>>);

/// A client's non-empty body, streamed.
struct Streamed {
    state: State,
    hint: SizeHint,
    limit: u64,
    seen: u64,
    /// `None` for an empty body: sent as soon as the head is.
    sent: Option<Arc<Sent>>,
    /// Longest wait for the next piece of the client's body.
    idle: Duration,
    /// Armed only while the client keeps us waiting, so fast bodies cost no timer.
    stall: Option<Pin<Box<Sleep>>>,
}

/// The handle that can give the body again to a second attempt, as long as nobody read it.
pub struct Replay {
    slot: Option<Slot>,
    hint: SizeHint,
    limit: u64,
    sent: Option<Arc<Sent>>,
    idle: Duration,
}

impl RequestBody {
    /// A body with no bytes (a `GET`, a health check).
    pub fn empty() -> Self {
        RequestBody(None)
    }

    /// Wraps the client's body, limited to `limit` bytes, failing if the client sends nothing
    /// for `idle`.
    pub fn new(incoming: Incoming, limit: u64, idle: Duration) -> (Self, Replay) {
        if incoming.is_end_stream() {
            let replay = Replay {
                slot: None,
                hint: SizeHint::with_exact(0),
                limit,
                sent: None,
                idle,
            };
            return (Self::empty(), replay);
        }
        let hint = incoming.size_hint();
        let slot: Slot = Arc::new(Mutex::new(Some(incoming)));
        let sent = Arc::new(Sent::default());
        let replay = Replay {
            slot: Some(slot.clone()),
            hint,
            limit,
            sent: Some(sent.clone()),
            idle,
        };
        let body = Streamed {
            state: State::Waiting(slot),
            hint,
            limit,
            seen: 0,
            sent: Some(sent),
            idle,
            stall: None,
        };
        (RequestBody(Some(Box::new(body))), replay)
    }

    /// The signal of complete sending; `None` for an empty body.
    pub fn sent(&self) -> Option<Arc<Sent>> {
        self.0.as_ref().and_then(|b| b.sent.clone())
    }
}

impl Streamed {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = State::Done;
        self.stall = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Replay {
    /// The body again for another attempt, or `None` if part of it was already read.
    pub fn take(&self) -> Option<RequestBody> {
        let Some(slot) = &self.slot else {
            return Some(RequestBody::empty());
        };
        let still_there = slot.lock().map(|s| s.is_some()).unwrap_or(false);
        still_there.then(|| {
            RequestBody(Some(Box::new(Streamed {
                state: State::Waiting(slot.clone()),
                hint: self.hint,
                limit: self.limit,
                seen: 0,
                sent: self.sent.clone(),
                idle: self.idle,
                stall: None,
            })))
        })
    }
}

fn incoming_ended(state: &State) -> bool {
    matches!(state, State::Streaming(b) if b.is_end_stream())
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.0 {
            None => Poll::Ready(None),
            Some(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Streamed {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self;
        if let State::Waiting(slot) = &this.state {
            let taken = slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(incoming) => this.state = State::Streaming(incoming),
                None => return this.fail(BodyError::Consumed),
            }
        }
        let State::Streaming(incoming) = &mut this.state else {
            return Poll::Ready(None);
        };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Pending => {
                let idle = this.idle;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(BodyError::Stalled(idle)),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(None) => {
                this.state = State::Done;
                this.stall = None;
                if let Some(sent) = &this.sent {
                    sent.finish();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(BodyError::Downstream(e)),
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                // A client's trailers are headers the gateway never checked (a forged
                // session header could hide there): they end the body and go no further.
                this.state = State::Done;
                this.stall = None;
                if let Some(sent) = &this.sent {
                    sent.finish();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall = None;
                // hyper stops polling once the body says it has ended, so the last frame may
                // be the last we see of it.
                let ended = incoming_ended(&this.state);
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        let limit = this.limit;
                        return this.fail(BodyError::TooLarge { limit });
                    }
                }
                if ended && let Some(sent) = &this.sent {
                    sent.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Done => true,
            State::Waiting(_) => false,
            State::Streaming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Before the first read the wrapped body's hint is what hyper needs to choose between
        // Content-Length and chunked framing upstream.
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Waiting(_) => self.hint,
            State::Streaming(b) => b.size_hint(),
        }
    }
}
