//! The response body sent to the client, and the access-log line written when it ends.
//!
//! The log line is written when the body is dropped, which hyper does when the response is
//! fully sent, when the client goes away, or right away for bodiless responses: so every
//! request gets exactly one line, with the bytes actually sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::{self, RouteMetrics};
use crate::rewrite::{Html, RewriteError};
use crate::session::Sessions;
use crate::upstream::Lease;

/// What is noted of one request as it goes: its metrics (always), and its access-log record
/// (empty when access logging is off, so that a disabled log costs nothing on the request
/// path).
#[derive(Debug, Default)]
pub(crate) struct LogSlot {
    log: Option<Box<AccessLog>>,
    tally: Tally,
}

/// The request's metrics, recorded when its response is done.
#[derive(Debug, Default)]
struct Tally {
    /// The route's metrics and when the request arrived (`None`: not counted, as in unit
    /// tests, or counted already).
    route: Option<(Arc<RouteMetrics>, Instant)>,
    method: u8,
    status: u16,
}

impl LogSlot {
    /// Starts a record, counted under `route` (the unrouted requests' metrics until a route
    /// is found); the access-log record only if `access` lines are enabled at `info`.
    pub fn begin<B>(
        req: &http::Request<B>,
        listener: &Arc<str>,
        peer: std::net::IpAddr,
        route: Arc<RouteMetrics>,
        access_log: Option<&Arc<crate::access_log::AccessLog>>,
    ) -> Self {
        let method = req.method();
        let start = Instant::now();
        let tally = Tally {
            route: Some((route, start)),
            method: metrics::method_index(method),
            status: 0,
        };
        let Some(sink) =
            access_log.filter(|_| tracing::enabled!(target: "access", tracing::Level::INFO))
        else {
            return LogSlot { log: None, tally };
        };
        // Only `combined` names the request's version, query and two of its headers.
        let request = sink.wants_request_headers().then(|| {
            let header = |name| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(capped)
            };
            Box::new(RequestLine {
                query: req.uri().query().map(capped),
                version: req.version(),
                referer: header(http::header::REFERER),
                user_agent: header(http::header::USER_AGENT),
            })
        });
        let log = Some(Box::new(AccessLog {
            sink: sink.clone(),
            request,
            start,
            method: method.clone(),
            path: capped(req.uri().path()),
            listener: listener.clone(),
            peer,
            route: None,
            upstream: None,
            status: 0,
            upstream_time: None,
            error: None,
            session_status: None,
            session: None,
        }));
        LogSlot { log, tally }
    }

    /// The request matched `name`: it is counted under that route's `metrics`.
    pub fn route(&mut self, name: &Arc<str>, metrics: &Arc<RouteMetrics>) {
        if let Some((route, _)) = &mut self.tally.route {
            *route = metrics.clone();
        }
        if let Some(log) = &mut self.log {
            log.route = Some(name.clone());
        }
    }

    /// The status the client is answered with.
    pub fn status(&mut self, status: u16) {
        self.tally.status = status;
        if let Some(log) = &mut self.log {
            log.status = status;
        }
    }

    /// Updates the record, if there is one (the closure is not run otherwise).
    pub fn note(&mut self, f: impl FnOnce(&mut AccessLog)) {
        if let Some(log) = &mut self.log {
            f(log);
        }
    }

    /// Records the request, once: its metrics (with the bytes of a rewritten body), and its
    /// access line.
    fn finish(&mut self, bytes: u64, complete: bool, rewritten: bool) {
        let t = &mut self.tally;
        if let Some((route, start)) = t.route.take() {
            route.record(
                t.method,
                t.status,
                start.elapsed(),
                rewritten.then_some(bytes),
            );
        }
        if let Some(log) = self.log.take() {
            log.write(bytes, complete);
        }
    }
}

impl Drop for LogSlot {
    /// A record no response body took: the client went away (or the drain timeout cut the
    /// request) before the response began. It is counted and logged as 499, nginx's "client
    /// closed request", rather than not at all.
    fn drop(&mut self) {
        if self.tally.route.is_none() && self.log.is_none() {
            return;
        }
        self.status(499);
        self.note(|l| l.error = Some("the client went away before the response".to_owned()));
        self.finish(0, false, false);
    }
}

/// At most 4 KiB of a request's text for its access line (cut at a character): a line stays
/// small whatever the client sent.
fn capped(s: &str) -> String {
    const MAX: usize = 4096;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// For a `combined` line: what of the request it names besides the method and path.
#[derive(Debug)]
struct RequestLine {
    query: Option<String>,
    version: http::Version,
    referer: Option<String>,
    user_agent: Option<String>,
}

/// What one access-log line says about a request.
#[derive(Debug)]
pub(crate) struct AccessLog {
    /// Where the line goes.
    sink: Arc<crate::access_log::AccessLog>,
    request: Option<Box<RequestLine>>,
    pub start: Instant,
    pub method: Method,
    pub path: String,
    pub listener: Arc<str>,
    pub peer: std::net::IpAddr,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    /// Time until the upstream's response head arrived.
    pub upstream_time: Option<Duration>,
    pub error: Option<String>,
    /// On a route with sessions: `none`, `active` or `expired`.
    pub session_status: Option<&'static str>,
    /// A short hash of the token the client holds after the response (never the token).
    pub session: Option<crate::session::LogHash>,
}

impl AccessLog {
    fn write(&self, bytes: u64, complete: bool) {
        let request = self.request.as_deref();
        let version = match request.map(|r| r.version) {
            Some(http::Version::HTTP_2) => "HTTP/2.0",
            Some(http::Version::HTTP_10) => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        self.sink.line(&crate::access_log::Record {
            listener: &self.listener,
            client: self.peer,
            method: self.method.as_str(),
            path: &self.path,
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            status: self.status,
            bytes,
            duration: self.start.elapsed(),
            upstream_time: self.upstream_time,
            session_status: self.session_status,
            session: self.session.as_ref().map(crate::session::LogHash::as_str),
            complete,
            error: self.error.as_deref(),
            query: request.and_then(|r| r.query.as_deref()),
            version,
            referer: request.and_then(|r| r.referer.as_deref()),
            user_agent: request.and_then(|r| r.user_agent.as_deref()),
        });
    }
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// Why a response body was cut short.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    /// The backend's connection failed mid-body.
    #[error("upstream response body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The backend sent nothing more of the body for too long.
    #[error("upstream sent no response body data for {0:?}")]
    Stalled(Duration),
    /// A page being rewritten could not be (a corrupt compressed stream).
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
}

/// The body of a response on its way to the client.
pub struct ResponseBody {
    inner: Inner,
    log: LogSlot,
    /// The backend connection: back to the idle pool when the body ends, closed otherwise.
    lease: Option<Lease>,
    /// Armed only while the backend keeps us waiting, so bodies that arrive with the head
    /// cost no timer.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The page's rewriter, for URL-tracked HTML responses.
    html: Option<Box<Html>>,
    /// The backend's trailers, held while the rewriter's last output goes first.
    held_trailers: Option<Frame<Bytes>>,
    /// The sessions, when configured: their headers never leave in trailers either.
    sessions: Option<Arc<Sessions>>,
    /// The body went through a rewriter (counted when it is done).
    rewritten: bool,
    bytes: u64,
    complete: bool,
}

impl ResponseBody {
    pub(crate) fn full(bytes: Bytes, log: LogSlot) -> Self {
        ResponseBody {
            inner: Inner::Full(Some(bytes)),
            log,
            lease: None,
            stall: None,
            html: None,
            held_trailers: None,
            sessions: None,
            rewritten: false,
            bytes: 0,
            complete: false,
        }
    }

    /// A backend's body; its trailers lose hop-by-hop fields, cookies and (with `sessions`)
    /// every header of the session contract.
    pub(crate) fn upstream(
        body: Incoming,
        log: LogSlot,
        lease: Lease,
        sessions: Option<Arc<Sessions>>,
    ) -> Self {
        ResponseBody {
            inner: Inner::Upstream(body),
            log,
            lease: Some(lease),
            stall: None,
            html: None,
            held_trailers: None,
            sessions,
            rewritten: false,
            bytes: 0,
            complete: false,
        }
    }
}

impl ResponseBody {
    /// The body goes through `html` on its way to the client.
    pub(crate) fn rewritten(mut self, html: Html) -> Self {
        self.html = Some(Box::new(html));
        self.rewritten = true;
        self
    }

    /// The next frame, rewritten if the body is a page being rewritten: a chunk that yields no
    /// output yet (a tag cut in two) is not sent as an empty frame; the rewriter's last output
    /// goes before the end.
    fn poll_rewritten(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        loop {
            let polled = self.poll_inner(cx);
            let Some(html) = &mut self.html else {
                return polled;
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = match html.feed(&data) {
                            Ok(out) => out,
                            Err(e) => {
                                self.html = None;
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        };
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    // Trailers end the body: the rewriter's last output (all of a compressed
                    // page's, held by its decoder) goes first, then they do.
                    Err(trailers) => {
                        let out = html.finish();
                        self.html = None;
                        let out = match out {
                            Ok(out) => out,
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        };
                        if out.is_empty() {
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        self.held_trailers = Some(trailers);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
                Poll::Ready(None) => {
                    let out = html.finish();
                    self.html = None;
                    let out = match out {
                        Ok(out) => out,
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        let polled = if let Some(trailers) = this.held_trailers.take() {
            Poll::Ready(Some(Ok(trailers)))
        } else if this.html.is_some() {
            this.poll_rewritten(cx)
        } else {
            this.poll_inner(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self.html.is_some() || self.held_trailers.is_some() {
            return false;
        }
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            _ if self.html.is_some() => SizeHint::default(),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

impl ResponseBody {
    /// The next frame of the body as the backend sent it; releases the backend connection at
    /// the end, and cuts a backend that stalls past its read timeout.
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self;
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    let limit = this.lease.as_ref().map(Lease::read_timeout);
                    if let Some(limit) = limit {
                        let stall = this
                            .stall
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                        if stall.as_mut().poll(cx).is_ready() {
                            // Dropping the lease closes the backend connection mid-body.
                            this.lease = None;
                            this.stall = None;
                            return Poll::Ready(Some(Err(ResponseBodyError::Stalled(limit))));
                        }
                    }
                    Poll::Pending
                }
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    this.stall = None;
                    Poll::Ready(Some(Ok(clean_trailers(frame, this.sessions.as_deref()))))
                }
                ready => {
                    this.stall = None;
                    ready.map(|f| f.map(|r| r.map_err(ResponseBodyError::from)))
                }
            },
        };
        if let Poll::Ready(None) = &polled {
            // The response was read to its end: the connection can serve the next request
            // at once, rather than when the client has taken the last byte.
            if let Some(lease) = this.lease.take() {
                lease.release();
            }
        }
        polled
    }
}

/// A trailers frame without what must not reach a client: hop-by-hop fields (a trailer can
/// name none that means anything here), `Set-Cookie` (credentials go in the head, where the
/// gateway sees them) and, with sessions, every name of the session contract in any spelling
/// (a backend's directive, or its copy of the session key).
fn clean_trailers(frame: Frame<Bytes>, sessions: Option<&Sessions>) -> Frame<Bytes> {
    let mut trailers = match frame.into_trailers() {
        Ok(trailers) => trailers,
        Err(data) => return data,
    };
    super::headers::remove_hop_by_hop(&mut trailers);
    trailers.remove(http::header::SET_COOKIE);
    if let Some(s) = sessions {
        let ours: Vec<http::HeaderName> =
            trailers.keys().filter(|n| s.is_ours(n)).cloned().collect();
        for name in ours {
            trailers.remove(name);
        }
    }
    Frame::trailers(trailers)
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = self.complete || self.is_end_stream();
        if let Some(lease) = self.lease.take()
            && complete
        {
            // A body with nothing to read (HEAD, 204, 304) is never polled: still reusable.
            lease.release();
        }
        self.log.finish(self.bytes, complete, self.rewritten);
    }
}
