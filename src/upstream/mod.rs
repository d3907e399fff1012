//! Upstream pools: backends, the pooled HTTP client, balancing, health and failure classification.
//!
//! "Upstream" is the backend side; a `Pool` holds `Backend`s. This module knows nothing about
//! routes or sessions: the proxy hands it a request and gets a response or an [`UpstreamError`].

mod balance;
mod body;
mod connect;
mod error;
mod health;
mod pools;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

pub use body::{BodyError, Replay, RequestBody, Sent};
pub use error::{UpstreamError, error_chain};
use error::{classify, closed_before_sending};
pub use pools::{PoolSettings, Pools};

use crate::config::{ConfigError, PassiveHealth, UpstreamConfig};
use crate::deadline::LazyTimer;
use crate::idle::now_ms;
pub use balance::Affinity;
use balance::{Balancer, Candidate};
use connect::{Connector, IdleConns, Sender};

/// One server of a pool, and what we know of its health and load.
#[derive(Debug)]
pub struct Backend {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
    /// `host:port` as shared text, for logs and errors.
    pub label: Arc<str>,
    /// `host:port` to connect to (the scheme's default port filled in).
    connect_addr: String,
    /// The name to verify for `https` backends.
    tls_name: Option<String>,
    idle: IdleConns,
    max_idle: usize,
    idle_timeout: Duration,
    weight: u32,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Times it was ejected (for metrics).
    ejections: AtomicU64,
    health: health::ActiveState,
}

impl Backend {
    /// Times it was ejected after consecutive failures.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Not ejected and not failing active health checks.
    pub fn available(&self) -> bool {
        // Most backends were never ejected: no clock read for them.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        self.health.is_up() && (until == 0 || now_ms() >= until)
    }

    fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    fn record_failure(&self, passive: &PassiveHealth) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if passive.max_failures > 0 && n >= passive.max_failures {
            let until = now_ms()
                .saturating_add(u64::try_from(passive.eject_for.as_millis()).unwrap_or(u64::MAX));
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.ejections.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(backend = %self.label, failures = n, eject_for = ?passive.eject_for, "backend ejected");
        }
    }
}

impl Candidate for Arc<Backend> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
    fn available(&self) -> bool {
        Backend::available(self)
    }
}

/// A request's hold on a backend: counts it as in flight (for least connections) until
/// dropped, and carries the connection, which goes back to the idle pool only if the response
/// was read to its end (`release`).
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    sender: Option<Sender>,
    /// The request body's sending; the connection is reusable only once it is complete.
    sent: Option<Arc<Sent>>,
    /// Longest wait for the next piece of the response body.
    read_timeout: Duration,
}

impl Lease {
    /// The backend's address (`host:port`), as a session pins to it.
    pub fn backend_label(&self) -> &Arc<str> {
        &self.backend.label
    }

    /// Longest wait for the next piece of the response body (the pool's response timeout).
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The response was read completely: the connection may serve another request, unless
    /// the backend answered before taking the whole request body (it is still being sent).
    pub fn release(mut self) {
        let body_sent = self.sent.as_ref().is_none_or(|s| s.is_done());
        if let Some(sender) = self.sender.take()
            && body_sent
        {
            self.backend.idle.push(sender, self.backend.max_idle);
        }
    }

    /// The connection must not be reused (it was upgraded, or its response cut short).
    pub fn discard_connection(&mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool of backends behind one name, with its own connection pool and policies.
pub struct Pool {
    /// The pool's name (the key under `upstreams:`).
    pub name: Arc<str>,
    /// How many other servers may be tried after a failure.
    pub retries: u32,
    backends: Vec<Arc<Backend>>,
    balancer: Balancer,
    connector: Connector,
    response_timeout: Duration,
    passive: PassiveHealth,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Builds a pool and, if configured, starts its active health checks (stopped by `stop`).
    ///
    /// # Errors
    /// The TLS settings for `https` servers cannot be loaded (`file` names the configuration).
    pub fn start(
        config: &UpstreamConfig,
        file: &str,
        stop: &CancellationToken,
    ) -> Result<Arc<Pool>, ConfigError> {
        let connector = Self::connector(config, file)?;
        let backends: Vec<Arc<Backend>> = config
            .servers
            .iter()
            .map(|s| {
                let https = s.scheme == Scheme::HTTPS;
                let port = s
                    .authority
                    .port_u16()
                    .unwrap_or(if https { 443 } else { 80 });
                let host = s.authority.host();
                Arc::new(Backend {
                    scheme: s.scheme.clone(),
                    authority: s.authority.clone(),
                    label: Arc::from(s.authority.as_str()),
                    connect_addr: format!("{host}:{port}"),
                    tls_name: https.then(|| {
                        config.tls.server_name.clone().unwrap_or_else(|| {
                            host.trim_start_matches('[')
                                .trim_end_matches(']')
                                .to_owned()
                        })
                    }),
                    idle: IdleConns::default(),
                    max_idle: config.max_idle_per_server,
                    idle_timeout: config.idle_timeout,
                    weight: s.weight,
                    in_flight: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    ejections: AtomicU64::new(0),
                    health: health::ActiveState::default(),
                })
            })
            .collect();
        let weights: Vec<u32> = config.servers.iter().map(|s| s.weight).collect();
        let pool = Arc::new(Pool {
            name: Arc::from(config.name.as_str()),
            retries: config.retries,
            balancer: Balancer::new(
                config.balance,
                &weights,
                &config
                    .servers
                    .iter()
                    .map(|s| s.authority.as_str())
                    .collect::<Vec<_>>(),
                &config
                    .servers
                    .iter()
                    .map(|s| s.route.as_deref())
                    .collect::<Vec<_>>(),
            ),
            connector,
            response_timeout: config.response_timeout,
            passive: config.passive.clone(),
            backends,
        });
        if let Some(h) = &config.health {
            health::spawn(pool.clone(), h.clone(), stop.clone());
        }
        Ok(pool)
    }

    /// Checks that the pool's TLS settings load, without starting anything.
    ///
    /// # Errors
    /// As for `start`.
    pub fn check(config: &UpstreamConfig, file: &str) -> Result<(), ConfigError> {
        Self::connector(config, file).map(|_| ())
    }

    fn connector(config: &UpstreamConfig, file: &str) -> Result<Connector, ConfigError> {
        Connector::new(config.connect_timeout, &config.tls)
            .map_err(|msg| ConfigError::single(file, config.tls.pos, &config.tls.path, msg))
    }

    /// Whether the pool balances by session (`balance: session_affinity`).
    pub fn uses_affinity(&self) -> bool {
        self.balancer.uses_affinity()
    }

    /// Chooses a backend not in `tried` (indices), or `None` if none is available;
    /// `affinity` is where the request's session wants to go (bytes: this module knows no
    /// sessions).
    pub fn select(
        &self,
        tried: &[usize],
        affinity: Option<&Affinity<'_>>,
    ) -> Option<(usize, Arc<Backend>)> {
        let i = self.balancer.pick(&self.backends, tried, affinity)?;
        self.backends.get(i).map(|b| (i, b.clone()))
    }

    /// Sends a request (origin-form URI, Host already set) to `backend` and waits for the
    /// response head, within the response timeout. The request is taken from `req` once it is
    /// handed to a connection (it is lent, not moved in, to keep this future small). Connection failures and timeouts count
    /// against the backend's passive health; any response counts for it.
    ///
    /// # Errors
    /// What failed, classified so the caller can decide on a retry and a status code.
    pub async fn send(
        &self,
        backend: &Arc<Backend>,
        req: &mut Option<Request<RequestBody>>,
        timer: &mut LazyTimer,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = req.as_ref().and_then(|r| r.body().sent());
        let mut lease = Lease {
            backend: backend.clone(),
            sender: None,
            sent: sent.clone(),
            read_timeout: self.response_timeout,
        };
        // Pinned once and only borrowed below: moving a future copies all of it, and the
        // request path's futures are large.
        let mut exchange = std::pin::pin!(self.exchange(backend, req));
        let result = match sent {
            None => timer.within(self.response_timeout, exchange).await,
            Some(sent) => {
                // The response timeout runs from the end of the request body: an upload goes
                // at the client's pace (bounded by the body read timeout), not the backend's.
                tokio::select! {
                    biased;
                    r = exchange.as_mut() => Ok(r),
                    _ = sent.wait() => timer.within(self.response_timeout, exchange).await,
                }
            }
        };
        match result {
            Ok(Ok((resp, sender))) => {
                backend.record_success();
                lease.sender = Some(sender);
                Ok((resp, lease))
            }
            Ok(Err(err)) => {
                if matches!(
                    err,
                    UpstreamError::Connect { .. } | UpstreamError::Broken { .. }
                ) {
                    backend.record_failure(&self.passive);
                }
                Err(err)
            }
            Err(_) => {
                backend.record_failure(&self.passive);
                Err(UpstreamError::Timeout {
                    backend: backend.label.clone(),
                    timeout: self.response_timeout,
                })
            }
        }
    }

    /// One request on one connection: an idle one if there is one, else a new one.
    async fn exchange(
        &self,
        backend: &Backend,
        req: &mut Option<Request<RequestBody>>,
    ) -> Result<(Response<Incoming>, Sender), UpstreamError> {
        // An idle connection may have been closed by the backend since its last use. A request
        // that could not be written on one moves on to the next, then to a new connection:
        // nothing was sent, so this is no retry. The loop ends: each turn uses up an idle
        // connection or returns.
        loop {
            let (mut sender, fresh) = match backend.idle.pop(backend.idle_timeout) {
                Some(sender) => (sender, false),
                None => {
                    // Boxed: a connect (with its TLS handshake state) is kilobytes of future
                    // and rare; inline, it would be copied around with every request.
                    let connect = self
                        .connector
                        .connect(&backend.connect_addr, backend.tls_name.as_deref());
                    let sender = Box::pin(connect)
                        .await
                        .map_err(|e| UpstreamError::Connect {
                            backend: backend.label.clone(),
                            reason: e.reason,
                            timed_out: e.timed_out,
                        })?;
                    (sender, true)
                }
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(closed_before_sending(backend));
                }
                continue;
            }
            let Some(request) = req.take() else {
                return Err(closed_before_sending(backend));
            };
            match sender.try_send_request(request).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => *req = Some(unsent),
                    Some(_) => return Err(closed_before_sending(backend)),
                    None => return Err(classify(&backend.label, &e.into_error())),
                },
            }
        }
    }

    /// All backends, for health reporting.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }
}
