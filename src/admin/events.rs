//! `GET /events[?subject=NAME]` (with the admin token): session events as server-sent events,
//! as they happen on this gateway and, with Redis, on every gateway sharing it. Each is one
//! `data:` line of JSON (`event`, `key`, `subject`, `gateway`, `route`, `at_ms`; never a
//! token). A reader that falls too far behind gets `event: lagged` with how many it missed,
//! never holds anything up; a comment every few seconds keeps idle connections open. The
//! streams end when the gateway drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{AdminBody, AdminState, json_error, reply, session_gate};
use crate::session::events::Event;

/// Most event streams open at once: each holds a connection and a place in the broadcast.
const MAX_STREAMS: usize = 64;

/// How often an idle stream says something (a comment), so proxies and the admin listener's
/// idle timeout keep it open.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Streams open now.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A stream's place under [`MAX_STREAMS`], given back when it ends.
struct Place;

impl Place {
    fn take() -> Option<Place> {
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one stream holds between frames.
struct Reader {
    events: tokio::sync::broadcast::Receiver<Arc<Event>>,
    subject: Option<String>,
    closing: CancellationToken,
    hello: Option<String>,
    /// The admin state, and the token the stream was opened with: a reload that changes or
    /// removes the token ends the stream.
    state: Arc<AdminState>,
    token: Arc<Option<String>>,
    _place: Place,
}

impl Reader {
    /// The next frame, or `None` when the stream ends.
    async fn next(&mut self) -> Option<String> {
        if let Some(hello) = self.hello.take() {
            return Some(hello);
        }
        loop {
            if self.state.live.admin_token() != self.token {
                return None;
            }
            tokio::select! {
                () = self.closing.cancelled() => return None,
                () = tokio::time::sleep(KEEPALIVE) => return Some(": keepalive\n\n".to_owned()),
                got = self.events.recv() => match got {
                    Ok(e) => {
                        if self.subject.as_deref().is_some_and(|s| e.subject.as_deref() != Some(s)) {
                            continue;
                        }
                        let json = serde_json::to_string(&*e).unwrap_or_default();
                        return Some(format!("data: {json}\n\n"));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        return Some(format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n"));
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// `GET /events`.
pub(super) fn stream<B>(state: &Arc<AdminState>, req: &Request<B>) -> Response<AdminBody> {
    let sessions = match session_gate(state, req) {
        Ok(s) => s,
        Err((status, body)) => return reply(status, "application/json", body),
    };
    if req.method() != Method::GET {
        let (status, body) = json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        return reply(status, "application/json", body);
    }
    let Some(place) = Place::take() else {
        let (status, body) = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams are open",
        );
        return reply(status, "application/json", body);
    };
    let subject = super::sessions::query(req.uri().query(), "subject").filter(|s| !s.is_empty());
    let events = sessions.events();
    let reader = Reader {
        events: events.subscribe(),
        subject,
        closing: state.closing.clone(),
        state: state.clone(),
        token: state.live.admin_token(),
        hello: Some(format!(
            "retry: 2000\n: session events from {}\n\n",
            events.gateway()
        )),
        _place: place,
    };
    let frames = futures_util::stream::unfold(reader, |mut r| async move {
        let text = r.next().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(text))),
            r,
        ))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A buffering proxy in front of the admin listener would hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
