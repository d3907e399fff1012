//! The proxy: what happens to one request, phase by phase.
//!
//! A request's life: `accept → tls` (in `listener`), then here: `route → resolve → load →
//! upstream_request → send → upstream_response → commit → rewrite → log`. `resolve`, `load`,
//! `commit` and `rewrite` are the session and rewriting phases; the gateway core passes through
//! them unchanged. "Downstream" is the client side, "upstream" the backend side.

mod body;
mod error;
mod headers;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::ResponseBody;
pub use error::ProxyError;

use crate::config::Config;
use crate::routing::{Route, Router, host_name, normalize_path};
use crate::upstream::{Backend, Pool, RequestBody, UpstreamError};
use body::AccessLog;

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

/// One client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// The listener it arrived on.
    pub listener: Arc<ListenerInfo>,
}

/// The request handler shared by all connections.
pub struct Proxy {
    router: Router,
    pools: Vec<Arc<Pool>>,
    trusted_proxies: Vec<ipnet::IpNet>,
    max_header_bytes: usize,
    tunnels: TaskTracker,
    force: CancellationToken,
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
    /// `stop`). Upgraded connections are tracked by `tunnels` and cut by `force`.
    ///
    /// # Errors
    /// The TLS client for `https` upstreams could not be configured.
    pub fn new(
        config: &Config,
        stop: &CancellationToken,
        tunnels: TaskTracker,
        force: CancellationToken,
    ) -> Result<Proxy, rustls::Error> {
        let pools = config
            .upstreams
            .iter()
            .map(|u| Pool::start(u, stop))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Proxy {
            router: Router::new(config),
            pools,
            trusted_proxies: config.trusted_proxies.clone(),
            max_header_bytes: config.limits.max_header_bytes,
            tunnels,
            force,
        })
    }

    /// Handles one request; never fails: errors become short plain-text responses.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<ResponseBody> {
        let log = Box::new(AccessLog {
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            listener: conn.listener.name.clone(),
            peer: conn.peer.ip().to_canonical(),
            route: None,
            upstream: None,
            status: 0,
            upstream_time: None,
            error: None,
        });
        let result = self.forward(req, conn, log).await;
        let mut resp = match result {
            Ok(resp) => resp,
            Err((e, log)) => error_response(&e, log),
        };
        if let Some(hsts) = &conn.listener.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        resp
    }

    /// The phases from `route` to `log`. On failure the access log comes back with the error,
    /// so that the error response carries it.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        mut log: Box<AccessLog>,
    ) -> Result<Response<ResponseBody>, (ProxyError, Box<AccessLog>)> {
        macro_rules! fail {
            ($e:expr) => {
                return Err(($e, log))
            };
        }
        // route
        if head_too_large(&req, self.max_header_bytes) {
            fail!(ProxyError::HeadersTooLarge {
                limit: self.max_header_bytes
            });
        }
        let Some(authority) = request_authority(&req) else {
            fail!(ProxyError::BadRequest("missing or invalid Host header"));
        };
        if let Some(port) = conn.listener.redirect_https {
            return Ok(https_redirect(&authority, req.uri(), port, log));
        }
        let path = match normalize_path(req.uri().path()) {
            Ok(p) => p.into_owned(),
            Err(e) => fail!(ProxyError::BadPath(e)),
        };
        let Some(route) = self.router.find(host_name(authority.as_str()), &path) else {
            fail!(ProxyError::NoRoute);
        };
        log.route = Some(route.name.clone());
        let Some(pool) = self.pools.get(route.upstream) else {
            fail!(ProxyError::NoRoute);
        };
        log.upstream = Some(pool.name.clone());
        if headers::content_length(req.headers()).is_some_and(|n| n > route.max_body_bytes) {
            fail!(ProxyError::BodyTooLarge {
                limit: route.max_body_bytes
            });
        }

        // resolve, load: session phases (not part of the gateway core yet).

        // upstream_request
        let upgrade = match req.version() {
            Version::HTTP_11 | Version::HTTP_10 => headers::upgrade_request(req.headers()),
            _ => None,
        };
        let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let path_and_query = upstream_path_and_query(route, &path, parts.uri.query());
        let Ok(path_and_query) = path_and_query else {
            fail!(ProxyError::BadRequest("invalid request target"));
        };
        self.prepare_upstream_headers(&mut parts, &authority, conn, upgrade);
        let (body, replay) = RequestBody::new(body, route.max_body_bytes);

        // send
        let idempotent = is_idempotent(&parts.method);
        let mut tried: Vec<usize> = Vec::with_capacity(2);
        let mut next_body = Some(body);
        let mut last_error: Option<UpstreamError> = None;
        let sent_at = Instant::now();
        let (resp, in_flight) = loop {
            let Some((index, backend)) = pool.select(&tried) else {
                // Out of servers: report what went wrong with the last one, if any was tried.
                let source = last_error.unwrap_or_else(|| UpstreamError::NoHealthyServer {
                    pool: pool.name.clone(),
                });
                log.error = Some(source.to_string());
                fail!(ProxyError::Upstream {
                    pool: pool.name.clone(),
                    source,
                });
            };
            tried.push(index);
            let Some(body) = next_body.take() else {
                fail!(ProxyError::BadRequest("request body no longer available"));
            };
            let upstream_req = build_upstream_request(&parts, &backend, &path_and_query, body);
            match pool.send(&backend, upstream_req).await {
                Ok(ok) => break ok,
                Err(e) => {
                    let may_retry = tried.len() <= pool.retries as usize && e.retryable(idempotent);
                    // The body comes back only if no byte of it was read by the failed attempt.
                    next_body = if may_retry { replay.take() } else { None };
                    tracing::warn!(
                        upstream = %pool.name,
                        backend = %backend.label,
                        error = %e,
                        retry = next_body.is_some(),
                        "upstream request failed"
                    );
                    if next_body.is_none() {
                        log.error = Some(e.to_string());
                        fail!(ProxyError::Upstream {
                            pool: pool.name.clone(),
                            source: e,
                        });
                    }
                    last_error = Some(e);
                }
            }
        };
        log.upstream_time = Some(sent_at.elapsed());

        // upstream_response
        let mut resp = resp;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            upgrade::spawn_tunnel(downstream, upstream, &self.tunnels, self.force.clone());
        }
        let (mut rparts, rbody) = resp.into_parts();
        let protocol = switching
            .then(|| rparts.headers.get(header::UPGRADE).cloned())
            .flatten();
        headers::remove_hop_by_hop(&mut rparts.headers);
        if let Some(protocol) = protocol {
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rparts.headers.insert(header::UPGRADE, protocol);
        }

        // commit, rewrite: session and rewriting phases (not part of the gateway core yet).

        // log: written when the body is done (see `body`).
        log.status = rparts.status.as_u16();
        Ok(Response::from_parts(
            rparts,
            ResponseBody::upstream(rbody, Some(log), in_flight),
        ))
    }

    fn prepare_upstream_headers(
        &self,
        parts: &mut Parts,
        authority: &Authority,
        conn: &ConnInfo,
        upgrade: Option<HeaderValue>,
    ) {
        let h2 = parts.version == Version::HTTP_2;
        let headers = &mut parts.headers;
        // Strip before setting: a client must not be able to smuggle hop-by-hop headers or
        // forge the ones we set below.
        headers::remove_hop_by_hop(headers);
        // We do not relay 100-continue: hyper answers the client when the body is first read.
        headers.remove(header::EXPECT);
        if h2 {
            headers::join_cookies(headers);
        }
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let peer = conn.peer.ip().to_canonical();
        let trusted = self.trusted_proxies.iter().any(|n| n.contains(&peer));
        let proto = if conn.listener.tls { "https" } else { "http" };
        headers::set_forwarded(headers, peer, trusted, proto, &host);
        headers.insert(header::HOST, host);
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
    }
}

fn head_too_large(req: &Request<Incoming>, limit: usize) -> bool {
    headers::head_size(req.uri(), req.headers()) > limit
}

/// The authority the client addressed: the request target's (absolute-form or HTTP/2
/// `:authority`), else the `Host` header (RFC 9112 §3.2.2).
fn request_authority(req: &Request<Incoming>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let a: Authority = host.parse().ok()?;
    // A Host header with userinfo is not a host.
    (!a.as_str().contains('@')).then_some(a)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn upstream_path_and_query(
    route: &Route,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, http::uri::InvalidUri> {
    let path = route.upstream_path(path);
    match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
}

fn build_upstream_request(
    parts: &Parts,
    backend: &Backend,
    path_and_query: &PathAndQuery,
    body: RequestBody,
) -> Request<RequestBody> {
    let uri = Uri::builder()
        .scheme(backend.scheme.clone())
        .authority(backend.authority.clone())
        .path_and_query(path_and_query.clone())
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    // HTTP/2 clients are forwarded as HTTP/1.1.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = parts.headers.clone();
    req
}

fn https_redirect(
    authority: &Authority,
    uri: &Uri,
    port: u16,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let host = authority.host();
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), None));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    log.status = 308;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            *resp.body_mut() = ResponseBody::full(Bytes::new(), Some(log));
            resp
        }
        Err(_) => error_response(&ProxyError::BadRequest("invalid request target"), log),
    }
}

fn error_response(e: &ProxyError, mut log: Box<AccessLog>) -> Response<ResponseBody> {
    let status = e.status();
    log.status = status.as_u16();
    if log.error.is_none() {
        log.error = Some(e.to_string());
    }
    let text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e.public_message()
    );
    let mut resp = Response::new(ResponseBody::full(Bytes::from(text), Some(log)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}
