//! Listeners: accept TCP connections, terminate TLS, and serve HTTP/1.1 and HTTP/2 with any
//! hyper service. They know nothing of routes or sessions.

mod head_timeout;
mod proxy_protocol;
pub mod tls;

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
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::FutureExt;

use crate::idle::Activity;
use crate::metrics::ListenerMetrics;
use head_timeout::HeadWatch;

/// While draining, an HTTP/1 connection idle for this long is closed (busy ones close after
/// their next response). Clients send the next request on a keep-alive connection within
/// microseconds of a response, so a connection idle for this long is not about to be used.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

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
/// per connection with the client's address and the connection's guard. At most `limit`
/// connections are served at once (shared by all listeners); the rest wait in the kernel's
/// accept queue. Connections and failed TLS handshakes are counted in `metrics`.
pub fn spawn<F, S, B>(
    listener: TcpListener,
    tls: Option<tls::TlsSource>,
    options: Options,
    limit: Arc<Semaphore>,
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
    B: Body + Send + 'static,
    B::Data: Send,
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
            let (builders, tls, drain2, options, make_service, metrics) = (
                builders.clone(),
                tls.clone(),
                drain.clone(),
                options.clone(),
                make_service.clone(),
                metrics.clone(),
            );
            drain.tracker.spawn(async move {
                let _open = open;
                let mut stream = stream;
                // Behind an L4 balancer the client's address comes in a PROXY header.
                let peer = match &options.proxy_protocol {
                    None => peer,
                    Some(trusted) => {
                        let wait = options.header_read_timeout;
                        match proxy_protocol::client(&mut stream, peer, trusted, wait).await {
                            Some(client) => client,
                            None => return,
                        }
                    }
                };
                let service = make_service(peer, guard.clone());
                let _guard = guard;
                match tls.map(|t| TlsAcceptor::from(t.load_full())) {
                    None => {
                        let Some(h2) = starts_like_h2(&stream, options.header_read_timeout).await
                        else {
                            return;
                        };
                        serve_connection(&builders, stream, service, h2, &options, &drain2).await;
                    }
                    Some(acceptor) => {
                        let timeout = options.handshake_timeout;
                        let Some(stream) =
                            handshake(&acceptor, stream, timeout, &drain2, peer, &metrics).await
                        else {
                            return;
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_connection(&builders, stream, service, h2, &options, &drain2).await;
                    }
                }
            });
        };
        loop {
            let permit = tokio::select! {
                _ = drain.stop.cancelled() => break,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
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
            match limit.clone().try_acquire_owned() {
                Ok(permit) => serve(stream, peer, permit),
                Err(_) => break,
            }
        }
        // Dropping the listener here closes the socket: new connections are refused.
    })
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
    stream: TcpStream,
    timeout: Duration,
    drain: &Drain,
    peer: SocketAddr,
    metrics: &ListenerMetrics,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
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
    // The header-read timeout is kept per connection (see `head_timeout`), not by hyper.
    h1.header_read_timeout(None)
        .max_buf_size((options.max_header_bytes * 2).max(64 * 1024))
        .keep_alive(true)
        .writev(false);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // No server pings: they would keep idle connections alive forever; a connection with
        // no traffic is closed by the idle timeout instead (see `serve_connection`).
        .keep_alive_interval(None);
    Builders { h1, h2 }
}

async fn serve_connection<I, S, B>(
    builders: &Builders,
    io: I,
    service: S,
    h2: bool,
    options: &Options,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Runs a connection until it ends, `$silent` resolves, or a drain asks it to finish:
    // then, once `$quiet` resolves, HTTP/1 closes (at once when idle, else after the response
    // in flight) and HTTP/2 sends GOAWAY.
    macro_rules! drive {
        ($conn:expr, $silent:expr, $quiet:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = $silent => {
                    tracing::debug!("idle connection closed");
                    return;
                }
                _ = drain.closing.cancelled() => {}
            }
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = $quiet => {}
                _ = drain.force.cancelled() => return,
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = drain.force.cancelled() => {}
            }
        }};
    }
    if h2 {
        // Many requests share an HTTP/2 connection and nothing times out between them, so a
        // connection on which no byte moves for the idle timeout is closed.
        let activity = Activity::new();
        let io = TokioIo::new(activity.track(io));
        // GOAWAY tells the client which streams were served: nothing to wait for.
        drive!(
            builders.h2.serve_connection(io, service),
            activity.silent_for(options.idle_timeout),
            std::future::ready(())
        );
    } else {
        // HTTP/1: the header-read timeout bounds the wait for each request head, and so the
        // wait between requests. While draining, responses carry `Connection: close`, so a
        // busy connection ends after its next response; one is closed by the gateway only
        // once it has been idle for a moment, since a request may be on its way at any time
        // (closing then would reset it).
        let io = TokioIo::new(io);
        let watch = HeadWatch::closing_with(drain.closing.clone());
        drive!(
            builders
                .h1
                .serve_connection(io, watch.service(service))
                .with_upgrades(),
            watch.expired(options.header_read_timeout),
            watch.expired(DRAIN_IDLE_GRACE)
        );
    }
}
