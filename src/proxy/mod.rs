//! The proxy: what happens to one request, phase by phase.
//!
//! A request's life: `accept → tls` (in `listener`), then here, each phase one function of
//! [`Proxy`] called in order by `forward`: `route → upstream_request → resolve → load → send
//! → upstream_response → commit → rewrite`, and `log` when the response body ends.
//! `resolve`, `load` and `commit` hand the request to the session facade; `rewrite` to
//! `url_tracking`. "Downstream" is the client side, "upstream" the backend side.
//!
//! - `phases`: the phase functions; `exchange`: the request's `Exchange`, which carries what
//!   one phase finds out to the next;
//! - `downstream`: the client's request head checked, its target for the backend, and the
//!   answers the gateway makes itself; `headers`: header operations;
//! - `send`: the upstream request's parts (the headers made safe, one attempt's request);
//!   `upgrade`: tunnels after a `101`;
//! - `url_tracking`: tokens in URLs (when the client's URL counts, tagging, guarding);
//! - `body`: the response body and its access-log line; `error`: error → status.

mod body;
mod downstream;
mod error;
mod exchange;
mod headers;
mod phases;
mod send;
mod upgrade;
mod url_tracking;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::ResponseBody;
pub use error::ProxyError;

use crate::access_log::{AccessFormat, AccessLog, AccessSettings, Destination};
use crate::config::{AccessLineFormat, Config, ConfigError};
use crate::deadline::TimerSlot;
use crate::metrics::{Metrics, RouteMetrics, UpstreamMetrics};
use crate::routing::Router;
use crate::session::Sessions;
use crate::session::url::UrlTokens;
use crate::upstream::Pools;
use body::LogSlot;
use downstream::{error_response, host_str};

/// What the proxy knows about the listener a connection arrived on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// The listener's name.
    pub name: Arc<str>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Answer every request with a 308 to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// `Strict-Transport-Security` value to add to responses.
    pub hsts: Option<HeaderValue>,
}

/// Whatever keeps a client connection counted under `limits.max_connections` (opaque here);
/// a WebSocket tunnel holds it for as long as it lives.
pub type ConnGuard = Arc<dyn std::any::Any + Send + Sync>;

/// One client connection, and what is worked out about it once rather than per request.
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// The listener it arrived on.
    pub listener: Arc<ListenerInfo>,
    /// The peer's IP (IPv4-mapped addresses unmapped).
    peer_ip: IpAddr,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    peer_header: HeaderValue,
    guard: ConnGuard,
    /// The response timeout's timer, reused by the connection's requests.
    timer: Arc<TimerSlot>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("peer", &self.peer)
            .field("listener", &self.listener.name)
            .finish_non_exhaustive()
    }
}

/// The request handler shared by all connections.
pub struct Proxy {
    router: Router,
    sessions: Option<Arc<Sessions>>,
    /// A reload keeps a pool whose settings are unchanged, with its idle connections and
    /// health.
    pools: Pools,
    /// Per route, in configuration order (`Route::index`).
    route_metrics: Vec<Arc<RouteMetrics>>,
    /// Per pool, in the order of `pools`.
    upstream_metrics: Vec<UpstreamMetrics>,
    metrics: Arc<Metrics>,
    trusted_proxies: Vec<ipnet::IpNet>,
    max_header_bytes: usize,
    body_read_timeout: Duration,
    tunnel_idle_timeout: Duration,
    tunnels: TaskTracker,
    force: CancellationToken,
    /// `logs.access`: a line per request, to its writer.
    access_log: Option<Arc<AccessLog>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds the proxy for a configuration, starting upstream health checks (stopped by
    /// `stop`). Upgraded connections are tracked by `tunnels` and cut by `force`. On a
    /// reload, `previous` lends the pools and the session store that did not change.
    ///
    /// # Errors
    /// An upstream's TLS settings (its CA file) cannot be loaded, or the sessions' files.
    pub fn new(
        config: &Config,
        metrics: &Arc<Metrics>,
        stop: &CancellationToken,
        (tunnels, force): (TaskTracker, CancellationToken),
        previous: Option<&Proxy>,
    ) -> Result<Proxy, ConfigError> {
        // Sessions first: nothing runs yet if they fail.
        // Every header any route maps an attribute to: guarded on every route.
        let mut guarded: Vec<http::HeaderName> = config
            .routes
            .iter()
            .filter_map(|r| r.session.as_ref())
            .flat_map(|s| &s.headers)
            .filter_map(|(_, h)| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        guarded.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        guarded.dedup();
        let sessions = config
            .sessions
            .as_ref()
            .map(|s| {
                let before = previous.and_then(|p| p.sessions.as_deref());
                Sessions::from_config(s, &config.source, metrics, before)
                    .map(|s| Arc::new(s.guarding(guarded)))
            })
            .transpose()?;
        let access_log = access_log_for(config, metrics, previous)?;
        let pools = Pools::start(
            &config.upstreams,
            &config.source,
            previous.map(|p| &p.pools),
            stop,
        )?;
        Ok(Proxy {
            router: Router::new(config),
            sessions,
            route_metrics: config
                .routes
                .iter()
                .map(|r| metrics.route(&r.name))
                .collect(),
            upstream_metrics: pools.iter().map(|p| metrics.upstream(&p.name)).collect(),
            metrics: metrics.clone(),
            pools,
            trusted_proxies: config.trusted_proxies.clone(),
            max_header_bytes: config.limits.max_header_bytes,
            body_read_timeout: config.timeouts.body_read,
            tunnel_idle_timeout: config.timeouts.idle,
            tunnels,
            force,
            access_log,
        })
    }

    /// Stops the health checks of the pools that `successor` did not keep (requests still in
    /// flight on them finish).
    pub fn retire(&self, successor: &Proxy) {
        self.pools.retire(&successor.pools);
        successor.in_use();
    }

    /// This proxy serves from now on: its sessions take over the open tunnels' watches.
    pub fn in_use(&self) {
        if let Some(s) = &self.sessions {
            s.in_use();
        }
    }

    /// What the gateway's parts know of themselves now, for a metrics scrape.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let mut now = crate::metrics::Snapshot {
            rewrite_errors: crate::rewrite::rewrite_errors(),
            ..Default::default()
        };
        for pool in self.pools.iter() {
            for b in pool.backends() {
                now.servers.push((
                    pool.name.to_string(),
                    b.label.to_string(),
                    b.available(),
                    b.ejections(),
                ));
            }
        }
        if let Some(s) = &self.sessions {
            s.fill_snapshot(&mut now);
        }
        now
    }

    /// The sessions, when configured (for the admin API).
    pub fn sessions(&self) -> Option<Arc<Sessions>> {
        self.sessions.clone()
    }

    /// Describes a new client connection (done once per connection, not per request).
    pub fn conn_info(
        &self,
        peer: SocketAddr,
        listener: Arc<ListenerInfo>,
        guard: ConnGuard,
    ) -> ConnInfo {
        let peer_ip = peer.ip().to_canonical();
        let peer_header = HeaderValue::from_str(&peer_ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            listener,
            peer_ip,
            peer_header,
            guard,
            timer: Arc::default(),
        }
    }

    /// Handles one request; never fails: errors become short plain-text responses.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<ResponseBody> {
        // Before anything logs, routes or forwards the URL, a session token in it comes out
        // (the first step of `resolve`; see `Sessions::take_url_tokens`).
        let url_tokens = match &self.sessions {
            Some(s) => {
                let mut uri = std::mem::take(req.uri_mut());
                let taken = s.take_url_tokens(&mut uri, req.headers_mut());
                *req.uri_mut() = uri;
                taken
            }
            None => Ok(None),
        };
        let mut log = LogSlot::begin(
            &req,
            &conn.listener.name,
            conn.peer_ip,
            self.metrics.unrouted(),
            self.access_log.as_ref(),
        );
        let mut resp = match url_tokens {
            Err(_) => error_response(&ProxyError::BadRequest("invalid request target"), log),
            Ok(url_tokens) => match self.forward(req, conn, &mut log, url_tokens).await {
                Ok(resp) => resp,
                Err(e) => error_response(&e, log),
            },
        };
        if let Some(hsts) = &conn.listener.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        resp
    }

    /// The phases from `route` to `rewrite`, in the order of the README's life of a request
    /// (`log` is written when the response body ends). The response that ends the request
    /// takes `log`; on an error, `handle` answers with it.
    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        log: &mut LogSlot,
        url_tokens: Option<Box<UrlTokens>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (mut req, body) = req.into_parts();
        let host = downstream::check_head(&req, self.max_header_bytes)?;
        if let Some(port) = conn.listener.redirect_https {
            let log = std::mem::take(log);
            return Ok(downstream::https_redirect(
                host_str(&host),
                &req.uri,
                port,
                log,
            ));
        }
        let mut x = self.route(&mut req, &host, conn, log, url_tokens.is_some())?;
        self.upstream_request(&mut x, &mut req, host);
        self.resolve(&mut x, &mut req, url_tokens);
        // `load` and `commit` wait for the store: entered only with a session, so that other
        // requests neither carry nor copy their futures.
        if x.has_session()
            && let Some(answered) = self.load(&mut x, &mut req).await?
        {
            return Ok(answered);
        }
        let sent = self.send(&mut x, req, body).await?;
        let mut answer = self.upstream_response(&mut x, sent)?;
        if x.has_session() {
            self.commit(&mut x, &mut answer).await?;
        }
        self.rewrite(x, answer)
    }
}

/// The access log a configuration asks for: the previous configuration's, if it asked for the
/// same (its file stays open), else a new writer.
fn access_log_for(
    config: &Config,
    metrics: &Metrics,
    previous: Option<&Proxy>,
) -> Result<Option<Arc<AccessLog>>, ConfigError> {
    let logs = &config.logs;
    if !logs.access {
        return Ok(None);
    }
    let settings = AccessSettings {
        to: logs
            .access_file
            .clone()
            .map_or(Destination::Stderr, Destination::File),
        format: match logs.access_format {
            AccessLineFormat::Text => AccessFormat::Text,
            AccessLineFormat::Json => AccessFormat::Json,
            AccessLineFormat::Combined => AccessFormat::Combined,
        },
    };
    if let Some(kept) = previous
        .and_then(|p| p.access_log.as_ref())
        .filter(|a| *a.settings() == settings)
    {
        return Ok(Some(kept.clone()));
    }
    AccessLog::start(settings, metrics.access_log_dropped())
        .map(|a| Some(Arc::new(a)))
        .map_err(|e| {
            ConfigError::single(
                &config.source,
                logs.access_pos,
                "logs.access.file",
                format!("cannot open the access log: {e}"),
            )
        })
}
