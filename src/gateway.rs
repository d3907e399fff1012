//! The gateway: wires listeners to the proxy and the admin endpoints, and owns shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::listener::{self, Capacity, Drain, Options};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::proxy::{ListenerInfo, Proxy};
use crate::reload::{Live, NeedsRestart};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate or key in the configuration could not be loaded.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener's address could not be bound.
    #[error("cannot bind listener {name:?} to {addr}: {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A listener as bound (the port is known even when the configuration said 0).
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// The listener's name.
    pub name: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// Whether it terminates TLS.
    pub tls: bool,
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    listeners: Vec<BoundListener>,
    admin: Option<SocketAddr>,
    admin_state: Arc<AdminState>,
    live: Arc<Live>,
    drain: Drain,
    /// The admin listener stops last, so `/readyz` can say "draining" while the rest drains.
    admin_drain: Drain,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
    admin_loop: Option<tokio::task::JoinHandle<()>>,
}

/// Checks what `start` would load but does not bind: certificates, keys, CA files, the
/// session secrets and the admin token.
///
/// # Errors
/// The first file that does not load.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            listener::tls::server_config(tls, &config.source)?;
        }
    }
    for u in &config.upstreams {
        crate::upstream::Pool::check(u, &config.source)?;
    }
    if let Some(s) = &config.sessions {
        crate::session::Sessions::from_config(s, &config.source, &Arc::new(Metrics::new()), None)?;
    }
    config.admin_token()?;
    Ok(())
}

/// Binds every listener and starts serving. A reload reads `config.source` again.
///
/// # Errors
/// A certificate that cannot be loaded or an address that cannot be bound; nothing is left
/// running in that case.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let drain = Drain::default();
    // Load everything that can fail before binding anything.
    let mut tls_sources = Vec::new();
    for l in &config.listeners {
        tls_sources.push(match &l.tls {
            Some(tls) => Some(Arc::new(ArcSwap::new(listener::tls::server_config(
                tls,
                &config.source,
            )?))),
            None => None,
        });
    }
    let token = config.admin_token()?;
    let mut sockets = Vec::new();
    for l in &config.listeners {
        let socket = listener::bind(l.bind).map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.bind,
            source,
        })?;
        sockets.push(socket);
    }
    let admin_socket = match &config.admin {
        Some(a) => Some(listener::bind(a.bind).map_err(|source| StartError::Bind {
            name: "admin".into(),
            addr: a.bind,
            source,
        })?),
        None => None,
    };

    let metrics = Arc::new(Metrics::new());
    let proxy = Proxy::new(
        config,
        &metrics,
        &drain.stop,
        (drain.tracker.clone(), drain.force.clone()),
        None,
    )?;
    proxy.in_use();
    // Before any listener accepts: the memory store's sessions from its snapshot file.
    if let Some(sessions) = proxy.sessions() {
        sessions.load_snapshot().await;
    }
    let named_tls = config
        .listeners
        .iter()
        .zip(&tls_sources)
        .filter_map(|(l, t)| Some((l.name.clone(), t.clone()?)))
        .collect();
    let live = Arc::new(Live::new(
        config.clone(),
        proxy,
        named_tls,
        token,
        metrics.clone(),
        drain.clone(),
    ));
    let capacity = Capacity::new(config.limits.max_connections);
    let mut listeners = Vec::new();
    let mut accept_loops = Vec::new();
    for ((l, socket), tls_source) in config.listeners.iter().zip(sockets).zip(tls_sources) {
        let addr = socket.local_addr().unwrap_or(l.bind);
        let tls = l.tls.as_ref();
        let info = Arc::new(ListenerInfo {
            name: Arc::from(l.name.as_str()),
            tls: tls.is_some(),
            redirect_https: l.redirect_to_https.map(|r| r.port),
            hsts: tls
                .and_then(|t| t.hsts.as_ref())
                .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
        });
        let options = Options {
            max_header_bytes: config.limits.max_header_bytes,
            header_read_timeout: config.timeouts.header_read,
            handshake_timeout: tls.map_or(Duration::from_secs(10), |t| t.handshake_timeout),
            idle_timeout: config.timeouts.idle,
            send_timeout: config.timeouts.send,
            body_read_timeout: config.timeouts.body_read,
            proxy_protocol: l
                .proxy_protocol
                .then(|| config.trusted_proxies.clone().into()),
        };
        let live = live.clone();
        let make_service = move |peer: SocketAddr, guard| {
            // What is known of the client comes from the configuration in use when it
            // connected; each request takes the configuration in use when it arrives.
            let conn_info = live.proxy().conn_info(peer, info.clone(), guard);
            let conn = Arc::new((live.clone(), conn_info));
            service_fn(move |req| {
                let conn = conn.clone();
                // Not boxed: hyper's HTTP/1 connection keeps its in-flight future in a slot it
                // allocated once; boxing here cost an allocation and ~1.4k instructions per
                // request (callgrind).
                async move {
                    let proxy = conn.0.proxy();
                    Ok::<_, Infallible>(proxy.handle(req, &conn.1).await)
                }
            })
        };
        accept_loops.push(listener::spawn(
            socket,
            tls_source,
            options,
            capacity.clone(),
            drain.clone(),
            metrics.listener(&l.name, l.tls.is_some()),
            make_service,
        ));
        tracing::info!(listener = %l.name, %addr, tls = tls.is_some(), "listening");
        listeners.push(BoundListener {
            name: l.name.clone(),
            addr,
            tls: tls.is_some(),
        });
    }

    let admin_state = AdminState::new(live.clone());
    let admin_drain = Drain::default();
    let mut admin_addr = None;
    let mut admin_loop = None;
    if let Some(socket) = admin_socket {
        admin_addr = socket.local_addr().ok();
        let state = admin_state.clone();
        let make_service = move |_peer: SocketAddr, _guard| {
            let state = state.clone();
            service_fn(move |req| admin::handle(state.clone(), req))
        };
        let options = Options {
            max_header_bytes: config.limits.max_header_bytes,
            header_read_timeout: config.timeouts.header_read,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: config.timeouts.idle,
            send_timeout: config.timeouts.send,
            body_read_timeout: config.timeouts.body_read,
            proxy_protocol: None,
        };
        // The admin listener has its own connection cap, so a flood on the data plane cannot
        // lock operators out of the health endpoints.
        admin_loop = Some(listener::spawn(
            socket,
            None,
            options,
            Capacity::new(64),
            admin_drain.clone(),
            ListenerMetrics::default(),
            make_service,
        ));
        tracing::info!(addr = ?admin_addr, "admin listening");
    }

    Ok(Running {
        listeners,
        admin: admin_addr,
        admin_state,
        live,
        drain,
        admin_drain,
        admin_loop,
        accept_loops,
    })
}

impl Running {
    /// The bound listeners, in configuration order.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// The bound address of the listener with this name.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The configuration in use, and how to reload it.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Reads the configuration file again and swaps it in if it is good (see `reload`).
    ///
    /// # Errors
    /// The new file's problems; the configuration in use keeps serving.
    pub async fn reload(&self) -> Result<NeedsRestart, String> {
        self.live.reload().await
    }

    /// Stops accepting, lets in-flight requests finish for up to the drain timeout, then cuts
    /// what is left. Returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.admin_state.set_draining();
        self.drain.stop.cancel();
        for task in self.accept_loops {
            let _ = task.await;
        }
        // Only once no listener accepts (see `Drain`).
        self.drain.closing.cancel();
        self.drain.tracker.close();
        let drain_timeout = self.live.config().timeouts.drain;
        let drained = tokio::time::timeout(drain_timeout, self.drain.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(timeout = ?drain_timeout, "drain timeout expired: closing remaining connections");
            self.drain.force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.drain.tracker.wait()).await;
        }
        // No request runs now: the memory store's sessions go to its snapshot file.
        if let Some(sessions) = self.live.proxy().sessions() {
            match sessions.save_snapshot().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "sessions written to the snapshot"),
                Err(e) => tracing::warn!(error = %e, "session snapshot not written"),
            }
        }
        // What the access logs hold goes to disk before the process ends.
        tokio::task::spawn_blocking(|| crate::access_log::flush_all(Duration::from_secs(2)))
            .await
            .ok();
        // Only now: load balancers polling /readyz saw "draining" all along.
        self.admin_drain.stop.cancel();
        if let Some(task) = self.admin_loop {
            let _ = task.await;
        }
        self.admin_drain.closing.cancel();
        self.admin_drain.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_drain.tracker.wait()).await;
        self.admin_drain.force.cancel();
        drained
    }
}

/// What a signal asks of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and stop.
    Stop,
    /// SIGHUP: read the configuration again.
    Reload,
}

/// The signals the gateway answers, installed once (a signal that comes while the gateway is
/// busy, say reloading, waits for the next `next`).
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// The signal handlers could not be installed.
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// The next signal that asks for a stop or a reload; SIGUSR1 (logrotate moved the access
    /// logs) is answered on the way, by reopening them.
    pub async fn next(&mut self) -> Signal {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    return Signal::Stop;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT: draining");
                    return Signal::Stop;
                }
                _ = self.hup.recv() => return Signal::Reload,
                _ = self.usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening the access logs");
                    crate::access_log::reopen_all();
                }
            }
        }
    }
}
