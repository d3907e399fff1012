//! The request body sent upstream: streamed, size-limited, and replayable until first read.
//!
//! A retry on another server must resend the body, but bodies are streamed, never buffered.
//! The way out: the client's body waits in a shared slot until the upstream connection first
//! asks for it. If the attempt fails before that (connection refused, say), the body is still
//! in the slot and the next attempt takes it; once a byte has been read, there is no replay.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
    /// The body had already been handed to an earlier attempt.
    #[error("the request body was already consumed")]
    Consumed,
}

type Slot = Arc<Mutex<Option<Incoming>>>;

enum State {
    Empty,
    Waiting(Slot),
    Streaming(Incoming),
    Done,
}

/// A request body on its way upstream.
pub struct RequestBody {
    state: State,
    hint: SizeHint,
    limit: u64,
    seen: u64,
}

/// The handle that can give the body again to a second attempt, as long as nobody read it.
pub struct Replay {
    slot: Option<Slot>,
    hint: SizeHint,
    limit: u64,
}

impl RequestBody {
    /// A body with no bytes (a `GET`, a health check).
    pub fn empty() -> Self {
        RequestBody {
            state: State::Empty,
            hint: SizeHint::with_exact(0),
            limit: u64::MAX,
            seen: 0,
        }
    }

    /// Wraps the client's body, limited to `limit` bytes.
    pub fn new(incoming: Incoming, limit: u64) -> (Self, Replay) {
        if incoming.is_end_stream() {
            let replay = Replay {
                slot: None,
                hint: SizeHint::with_exact(0),
                limit,
            };
            return (Self::empty(), replay);
        }
        let hint = incoming.size_hint();
        let slot: Slot = Arc::new(Mutex::new(Some(incoming)));
        let replay = Replay {
            slot: Some(slot.clone()),
            hint,
            limit,
        };
        let body = RequestBody {
            state: State::Waiting(slot),
            hint,
            limit,
            seen: 0,
        };
        (body, replay)
    }
}

impl Replay {
    /// The body again for another attempt, or `None` if part of it was already read.
    pub fn take(&self) -> Option<RequestBody> {
        let Some(slot) = &self.slot else {
            return Some(RequestBody::empty());
        };
        let still_there = slot.lock().map(|s| s.is_some()).unwrap_or(false);
        still_there.then(|| RequestBody {
            state: State::Waiting(slot.clone()),
            hint: self.hint,
            limit: self.limit,
            seen: 0,
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let State::Waiting(slot) = &this.state {
            let taken = slot.lock().ok().and_then(|mut s| s.take());
            this.state = match taken {
                Some(incoming) => State::Streaming(incoming),
                None => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(BodyError::Consumed)));
                }
            };
        }
        let State::Streaming(incoming) = &mut this.state else {
            return Poll::Ready(None);
        };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.state = State::Done;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.state = State::Done;
                Poll::Ready(Some(Err(BodyError::Downstream(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Empty | State::Done => true,
            State::Waiting(_) => false,
            State::Streaming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Before the first read the wrapped body's hint is what hyper needs to choose between
        // Content-Length and chunked framing upstream.
        match &self.state {
            State::Empty | State::Done => SizeHint::with_exact(0),
            State::Waiting(_) => self.hint,
            State::Streaming(b) => b.size_hint(),
        }
    }
}
