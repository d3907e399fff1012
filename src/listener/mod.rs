//! Listeners: accept TCP connections, terminate TLS, and serve HTTP/1.1 and HTTP/2 with any
//! hyper service. They know nothing of routes or sessions.

mod capacity;
mod conn;
mod h2_frames;
mod proxy_protocol;
pub mod tls;
mod wire;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::FutureExt;

use crate::metrics::ListenerMetrics;
pub use capacity::Capacity;
use conn::{Conn, End};
use h2_frames::Frames;
use wire::Wire;

/// While draining, an HTTP/1 connection idle for this long is closed (busy ones close after
/// their next response). Clients send the next request on a keep-alive connection within
/// microseconds of a response, so a connection idle for this long is not about to be used.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

/// A full gateway holding a new connection looks this often for one to take the place of.
const RECLAIM_AGAIN: Duration = Duration::from_millis(100);

/// An HTTP/2 connection sent away (GOAWAY) for breaking a limit has this long to finish its
/// other streams before it is cut.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Header section limit; hyper's own read buffer is sized above it so that our 431 (with a
    /// body that names the cause) answers first.
    pub max_header_bytes: usize,
    /// Time to receive a request's header section (also the idle keep-alive time).
    pub header_read_timeout: Duration,
    /// Time to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// An HTTP/2 connection with no bytes either way for this long is closed (HTTP/1 has the
    /// header-read timeout between requests instead).
    pub idle_timeout: Duration,
    /// A response the client does not take for this long ends its connection.
    pub send_timeout: Duration,
    /// Longest pause in a request body.
    pub body_read_timeout: Duration,
    /// With the PROXY protocol on: the peers allowed (and required) to send its header.
    pub proxy_protocol: Option<Arc<[ipnet::IpNet]>>,
}

/// A connection's place under the connection cap; released when the last holder drops it
/// (a WebSocket tunnel outlives the HTTP connection that started it).
pub type ConnGuard = Arc<dyn std::any::Any + Send + Sync>;

/// How connections end: `stop` closes the listeners, `closing` then asks connections to
/// finish (graceful), `force` cuts them, and `tracker` lets the owner wait for all of them.
///
/// `closing` comes only after the listeners have closed: a listening socket that closes
/// resets the connections waiting in its accept queue, and clients told to close
/// (`Connection: close`) would reconnect into that queue at once.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// Stop accepting (the accept loops end, and their sockets close).
    pub stop: CancellationToken,
    /// Connections finish their in-flight requests, then close.
    pub closing: CancellationToken,
    /// Close now (the drain timeout expired).
    pub force: CancellationToken,
    /// Every connection task.
    pub tracker: TaskTracker,
}

/// Binds a TCP listener with `SO_REUSEADDR` (a restarted gateway can bind again at once).
///
/// # Errors
/// The address is in use or not available.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves connections from `listener` until `drain.stop` fires. `make_service` is called once
/// per connection with the client's address and the connection's guard. At most `capacity`
/// connections are served at once (shared by all listeners); past it, a new connection takes
/// the place of one that waits without a request in service, or waits in the kernel's
/// accept queue. Connections and failed TLS handshakes are counted in `metrics`.
pub fn spawn<F, S, B>(
    listener: TcpListener,
    tls: Option<tls::TlsSource>,
    options: Options,
    capacity: Arc<Capacity>,
    drain: Drain,
    metrics: ListenerMetrics,
    make_service: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(SocketAddr, ConnGuard) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builders = Arc::new(http_builders(&options));
    let make_service = Arc::new(make_service);
    tokio::spawn(async move {
        // Serves one accepted connection in a task of its own.
        let serve = |stream: TcpStream, peer: SocketAddr, permit| {
            let _ = stream.set_nodelay(true);
            let guard: ConnGuard = Arc::new(permit);
            let open = metrics.accepted();
            let conn = Conn::new(drain.closing.clone());
            let registered = capacity.register(&conn);
            let (builders, tls, drain2, options, make_service, metrics) = (
                builders.clone(),
                tls.clone(),
                drain.clone(),
                options.clone(),
                make_service.clone(),
                metrics.clone(),
            );
            let counted = Counted(conn.clone(), metrics.clone());
            drain.tracker.spawn(async move {
                let (_open, _registered, _counted) = (open, registered, counted);
                let limits = options.limits();
                let mut stream = stream;
                // Until a request is in service, the header-read timeout runs from the
                // accept, and a full gateway may take the place back.
                let peer = match &options.proxy_protocol {
                    None => peer,
                    Some(trusted) => {
                        let wait = options.header_read_timeout;
                        let read = proxy_protocol::client(&mut stream, peer, trusted, wait);
                        match watched(&conn, limits, read).await.flatten() {
                            Some(client) => client,
                            None => return,
                        }
                    }
                };
                let stream = Wire::new(stream, conn.clone());
                let service = make_service(peer, guard.clone());
                let _guard = guard;
                match tls.map(|t| TlsAcceptor::from(t.load_full())) {
                    None => {
                        let peek = starts_like_h2(stream.get_ref(), options.header_read_timeout);
                        let Some(h2) = watched(&conn, limits, peek).await.flatten() else {
                            return;
                        };
                        serve_connection(&builders, stream, conn, service, h2, &options, &drain2)
                            .await;
                    }
                    Some(acceptor) => {
                        let timeout = options.handshake_timeout;
                        let shake = handshake(&acceptor, stream, timeout, &drain2, peer, &metrics);
                        let Some(stream) = watched(&conn, limits, shake).await.flatten() else {
                            return;
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_connection(&builders, stream, conn, service, h2, &options, &drain2)
                            .await;
                    }
                }
            });
        };
        loop {
            let permit = match capacity.try_place() {
                Some(p) => p,
                // Full: wait for a place, or for a client to knock and make room for it.
                None => tokio::select! {
                    _ = drain.stop.cancelled() => break,
                    p = capacity.place() => match p {
                        Some(p) => p,
                        None => break,
                    },
                    r = listener.accept() => {
                        let Ok((stream, peer)) = r else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        // A reclaimed connection ends at once and frees its place (another
                        // listener may take it first: then the next one that frees). While
                        // every connection is busy, look again now and then: one that goes
                        // idle gives its place up.
                        let permit = loop {
                            let reclaimed = capacity.reclaim();
                            tokio::select! {
                                _ = drain.stop.cancelled() => break None,
                                p = capacity.place() => break p,
                                () = tokio::time::sleep(RECLAIM_AGAIN), if !reclaimed => {}
                            }
                        };
                        let Some(permit) = permit else { break };
                        serve(stream, peer, permit);
                        continue;
                    }
                },
            };
            let (stream, peer) = tokio::select! {
                _ = drain.stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            serve(stream, peer, permit);
        }
        // Connections the kernel completed but we have not accepted would be reset when the
        // socket closes: take them (each is answered once, with `Connection: close`).
        while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
            match capacity.try_place() {
                Some(permit) => serve(stream, peer, permit),
                None => break,
            }
        }
        // Dropping the listener here closes the socket: new connections are refused.
    })
}

/// Counts in `connections_cut_total` why the gateway ended a connection, if it did, when the
/// connection is gone.
struct Counted(Arc<Conn>, ListenerMetrics);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(end) = self.0.verdict() {
            self.1.cut(end.reason());
        }
    }
}

impl Options {
    fn limits(&self) -> conn::Limits {
        conn::Limits {
            header_read: self.header_read_timeout,
            body_read: self.body_read_timeout,
            send: self.send_timeout,
            idle: self.idle_timeout,
        }
    }
}

/// `fut`, unless the connection breaks a limit (or is reclaimed) first.
async fn watched<T>(conn: &Conn, limits: conn::Limits, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        end = conn.watchdog(limits) => {
            tracing::debug!(reason = end.reason(), "connection closed before its first request");
            None
        }
    }
}

/// Whether a cleartext connection opens with the HTTP/2 preface (`PRI * HTTP/2.0`, h2c with
/// prior knowledge). `None` if the client sends nothing in time or closes.
async fn starts_like_h2(stream: &TcpStream, wait: Duration) -> Option<bool> {
    let mut first = [0u8; 3];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Some(n == 3 && &first == b"PRI"),
        _ => None,
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: Wire<TcpStream>,
    timeout: Duration,
    drain: &Drain,
    peer: SocketAddr,
    metrics: &ListenerMetrics,
) -> Option<tokio_rustls::server::TlsStream<Wire<TcpStream>>> {
    tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                metrics.handshake_failed(false);
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                metrics.handshake_failed(true);
                tracing::debug!(client = %peer, "TLS handshake timed out");
                None
            }
        },
        // Not cut when the drain begins: a client accepted just before (or taken from the
        // accept queue) is answered once; the handshake timeout bounds the wait.
        _ = drain.force.cancelled() => None,
    }
}

/// The HTTP/1 and HTTP/2 connection settings of a listener. The protocol is known before a
/// connection is served (ALPN, or the h2c preface), so each gets its own builder directly.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

fn http_builders(options: &Options) -> Builders {
    let mut h1 = http1::Builder::new();
    // The header-read timeout is kept per connection (see `conn`), not by hyper.
    h1.header_read_timeout(None)
        .max_buf_size((options.max_header_bytes * 2).max(64 * 1024))
        .keep_alive(true)
        .writev(false);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(128)
        // No server pings: they would keep idle connections alive forever; a connection with
        // no traffic is closed by the idle timeout instead (see `serve_connection`).
        .keep_alive_interval(None);
    Builders { h1, h2 }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<I, S, B>(
    builders: &Builders,
    io: I,
    conn: Arc<Conn>,
    service: S,
    h2: bool,
    options: &Options,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    conn.set_h2(h2);
    let limits = options.limits();
    // Runs a connection until it ends, breaks a limit, or a drain asks it to finish: then,
    // once `$quiet` resolves, HTTP/1 closes (at once when idle, else after the response in
    // flight) and HTTP/2 sends GOAWAY. A connection told to go for a limit (GOAWAY) has a
    // grace to finish its other streams.
    macro_rules! drive {
        ($http:expr, $quiet:expr) => {{
            let http = $http;
            tokio::pin!(http);
            tokio::select! {
                r = http.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                end = conn.watchdog(limits) => {
                    tracing::debug!(reason = end.reason(), "connection closed");
                    if let End::GoAway(_) = end {
                        http.as_mut().graceful_shutdown();
                        tokio::select! {
                            _ = http.as_mut() => {}
                            () = tokio::time::sleep(GOAWAY_GRACE) => {}
                            () = drain.force.cancelled() => {}
                        }
                    }
                    return;
                }
                () = drain.closing.cancelled() => {}
            }
            tokio::select! {
                _ = http.as_mut() => return,
                () = $quiet => {}
                _ = conn.watchdog(limits) => return,
                () = drain.force.cancelled() => return,
            }
            http.as_mut().graceful_shutdown();
            tokio::select! {
                _ = http.as_mut() => {}
                _ = conn.watchdog(limits) => {}
                () = drain.force.cancelled() => {}
            }
        }};
    }
    let service = conn.service(service);
    if h2 {
        // Many requests share an HTTP/2 connection: its frames are watched for slow headers
        // and control floods, and it closes after the idle timeout without traffic.
        let io = TokioIo::new(Frames::new(io, conn.clone()));
        // GOAWAY tells the client which streams were served: nothing to wait for.
        drive!(
            builders.h2.serve_connection(io, service),
            std::future::ready(())
        );
    } else {
        // HTTP/1: the header-read timeout bounds the wait for each request head, and so the
        // wait between requests. While draining, responses carry `Connection: close`, so a
        // busy connection ends after its next response; one is closed by the gateway only
        // once it has been idle for a moment, since a request may be on its way at any time
        // (closing then would reset it).
        let io = TokioIo::new(io);
        drive!(
            builders.h1.serve_connection(io, service).with_upgrades(),
            conn.idle_for(DRAIN_IDLE_GRACE)
        );
    }
}
