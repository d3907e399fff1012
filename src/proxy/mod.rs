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
mod url_tracking;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::ResponseBody;
pub use error::ProxyError;

use crate::config::Tracking;
use crate::config::{Config, ConfigError};
use crate::deadline::{LazyTimer, TimerSlot};
use crate::metrics::{Metrics, RouteMetrics, UpstreamMetrics};
use crate::routing::{Route, Router, host_name, normalize_path};
use crate::session::url::UrlTokens;
use crate::session::{RequestInfo, Sessions};
use crate::upstream::{Lease, Pool, Pools, Replay, RequestBody, UpstreamError};
use body::LogSlot;
use url_tracking::ClientUrl;

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
    /// `logs.access`: a line per request.
    access_log: bool,
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
                Sessions::load(s, &config.source, metrics, before)
                    .map(|s| Arc::new(s.guarding(guarded)))
            })
            .transpose()?;
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
            access_log: config.logs.access,
        })
    }

    /// Stops the health checks of the pools that `successor` did not keep (requests still in
    /// flight on them finish).
    pub fn retire(&self, successor: &Proxy) {
        self.pools.retire(&successor.pools);
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
        // resolve, its first part: a session token in the URL comes out before anything logs,
        // routes or forwards the URL.
        let url_tokens = match &self.sessions {
            Some(s) => {
                let mut uri = std::mem::take(req.uri_mut());
                let taken = s.take_url_tokens(&mut uri, req.headers_mut());
                *req.uri_mut() = uri;
                taken
            }
            None => Ok(None),
        };
        let log = LogSlot::begin(
            req.method(),
            req.uri().path(),
            &conn.listener.name,
            conn.peer_ip,
            self.metrics.unrouted(),
            self.access_log,
        );
        let mut resp = match url_tokens {
            Err(_) => error_response(&ProxyError::BadRequest("invalid request target"), log),
            Ok(url_tokens) => match self.forward(req, conn, log, url_tokens).await {
                Ok(resp) => resp,
                Err((e, log)) => error_response(&e, log),
            },
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
        req: Request<Incoming>,
        conn: &ConnInfo,
        mut log: LogSlot,
        url_tokens: Option<Box<UrlTokens>>,
    ) -> Result<Response<ResponseBody>, (ProxyError, LogSlot)> {
        macro_rules! attempt {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((e, log)),
                }
            };
        }
        // route
        let host = attempt!(self.check_head(&req));
        if let Some(port) = conn.listener.redirect_https {
            return Ok(https_redirect(host_str(&host), req.uri(), port, log));
        }
        let found = headers::scan(req.headers());
        let (mut parts, body) = req.into_parts();
        let (route, path_and_query) = attempt!(self.route(&parts, host_str(&host)));
        if let Some(m) = self.route_metrics.get(route.index) {
            log.route(&route.name, m);
        }
        let pool = attempt!(self.pools.get(route.upstream).ok_or(ProxyError::NoRoute));
        log.note(|l| l.upstream = Some(pool.name.clone()));
        if headers::content_length(&parts.headers).is_some_and(|n| n > route.max_body_bytes) {
            attempt!(Err(ProxyError::BodyTooLarge {
                limit: route.max_body_bytes
            }));
        }
        // An upgrade needs `Connection: upgrade` (HTTP/1 only: Connection is hop-by-hop),
        // and goes through only to a protocol the route allows: never h2c, which would let
        // the client speak HTTP/2 to the backend past every check here.
        let upgrade = match parts.version {
            Version::HTTP_11 | Version::HTTP_10 if found.hop_by_hop => {
                headers::upgrade_request(&parts.headers)
                    .filter(|p| route.allows_upgrade(p.as_bytes()))
            }
            _ => None,
        };
        let downstream_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());

        // upstream_request (the client's headers made safe), then resolve and load: the
        // session, if the route has them, in the headers the backend gets.
        // Judged per request: a reload that stops trusting a proxy applies to its open
        // connections too.
        let trusted = self
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&conn.peer_ip));
        // With URL tracking, sibling hosts or a token (or code) in the URL, the client's own
        // URL is what its links (and redirects) resolve against, and its origin is what
        // requests must come from.
        let had_url_token = url_tokens.is_some();
        // Whether the client will render the response as a document (a navigation, a frame):
        // at a URL with a token, one whose markup cannot be guarded is not served there.
        let head = parts.method == Method::HEAD;
        let as_document = had_url_token
            && !head
            && parts.headers.get("sec-fetch-dest").is_none_or(|d| {
                matches!(
                    d.as_bytes(),
                    b"document" | b"iframe" | b"frame" | b"object" | b"embed"
                )
            });
        let client_url = match (&self.sessions, &route.session) {
            (Some(_), Some(rs))
                if rs.tracking != Tracking::Cookie
                    || !rs.share_with.is_empty()
                    || had_url_token =>
            {
                self.client_url(&parts, &host, conn, trusted, &rs.links, &rs.share_with)
            }
            (Some(_), None) if had_url_token => {
                let links: Arc<[(String, String)]> = Arc::from([]);
                let siblings: Arc<[String]> = Arc::from([]);
                self.client_url(&parts, &host, conn, trusted, &links, &siblings)
            }
            _ => None,
        };
        prepare_upstream_headers(&mut parts, found, host, conn, trusted, upgrade.clone());
        let mut session = match (&self.sessions, &route.session) {
            // Boxed: it lives across the upstream exchange, and inline it would grow (and so
            // copy) the request future of every route, with sessions or without.
            (Some(s), Some(rs)) => {
                let info = RequestInfo {
                    tls: conn.listener.tls,
                    origin: client_url.as_ref().map(|c| c.origin.as_str()),
                    method: &parts.method,
                    mapped: &rs.mapped,
                    tracking: rs.tracking,
                    share_with: &rs.share_with,
                    url: url_tokens,
                };
                let rs = s.on_request(&mut parts.headers, info).await;
                log.note(|l| {
                    l.session_status = Some(rs.status().as_str());
                    l.session = rs.token_hash();
                });
                if rs.store_failed() {
                    attempt!(Err(ProxyError::SessionStore));
                }
                Some(Box::new(rs))
            }
            // Sessions exist but not on this route: no client poses as the gateway here
            // either (the same application may sit behind routes with sessions).
            (Some(s), None) => {
                s.strip_forged(&mut parts.headers);
                None
            }
            _ => None,
        };
        if let (Some(s), Some(rs), Some(client)) = (&self.sessions, &mut session, &client_url) {
            if let Some(arrival) = rs.take_arrival() {
                return Ok(url_tracking::arrival_redirect(
                    s,
                    arrival,
                    client,
                    conn.listener.tls,
                    log,
                ));
            }
            if rs.clean_redirect() {
                return Ok(url_tracking::clean_redirect(client, log));
            }
        }
        // Pages through which a client could be handed a token or code someone else put there
        // (a comment, an upload): for a client that would take a URL token, and on a route
        // with siblings, such parameters are scrubbed from the page's links.
        let scrub = match (&route.session, &session) {
            (Some(rs), Some(s)) => {
                !rs.share_with.is_empty()
                    || (rs.tracking != Tracking::Cookie && s.takes_url_tokens())
            }
            _ => false,
        };
        let rewrites =
            session.as_ref().is_some_and(|rs| rs.may_rewrite()) || had_url_token || scrub;
        if rewrites && client_url.is_some() {
            // Pages are rewritten as they stream: ask for them uncompressed.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let body = RequestBody::new(body, route.max_body_bytes, self.body_read_timeout);

        // send
        let sent_at = Instant::now();
        let mut timer = conn.timer.take();
        // The session key, for balance: session_affinity (the upstream gets bytes).
        let affinity = session.as_ref().and_then(|rs| rs.affinity_key());
        let counted = self.upstream_metrics.get(route.upstream);
        let sent = send(
            pool,
            parts,
            path_and_query,
            body,
            &mut timer,
            affinity,
            counted,
        )
        .await;
        conn.timer.put(timer);
        let (mut resp, mut lease) = attempt!(sent.map_err(|source| ProxyError::Upstream {
            pool: pool.name.clone(),
            source,
        }));
        let upstream_time = sent_at.elapsed();
        if let Some(m) = counted {
            m.answered(upstream_time);
        }
        log.note(|l| l.upstream_time = Some(upstream_time));

        // upstream_response
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            // The connection becomes a tunnel (or, without a client upgrade, is useless).
            lease.discard_connection();
            // A backend may switch only to the protocol the client asked for and the route
            // allows: anything else would be a tunnel past the gateway.
            let agreed = match (&upgrade, resp.headers().get(header::UPGRADE)) {
                (Some(asked), Some(answered)) => {
                    asked.as_bytes().eq_ignore_ascii_case(answered.as_bytes())
                        || (route.allows_upgrade(answered.as_bytes())
                            && headers::offers(asked, answered))
                }
                _ => false,
            };
            let Some(downstream) = downstream_upgrade.filter(|_| agreed) else {
                let pool = pool.name.clone();
                return Err((ProxyError::UnwantedUpgrade { pool }, log));
            };
            let upstream = hyper::upgrade::on(&mut resp);
            upgrade::spawn_tunnel(
                downstream,
                upstream,
                self.tunnel_idle_timeout,
                conn.guard.clone(),
                &self.tunnels,
                self.force.clone(),
            );
        }
        let (mut rparts, rbody) = resp.into_parts();
        clean_response_headers(&mut rparts.headers, switching);

        // commit: the backend's session directives, always taken out of the response.
        let mut held = None;
        match (&self.sessions, session) {
            (Some(s), Some(rs)) => {
                if rs.url_token_ignored() {
                    rparts.headers.insert(
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    );
                }
                match s
                    .on_response(*rs, rparts.status, &mut rparts.headers, conn.listener.tls)
                    .await
                {
                    Ok(h) => held = h,
                    // A logout the store could not make: not answered as one.
                    Err(_) => {
                        drop((rbody, lease));
                        return Err((ProxyError::SessionStore, log));
                    }
                }
                // A new token (a login) is logged as the one the client holds now; after a
                // logout the line keeps the one it presented.
                if let Some(h) = &held {
                    log.note(|l| l.session = Some(h.token.to_string()));
                }
            }
            (Some(s), None) => {
                s.strip_directives(&mut rparts.headers);
            }
            _ => {}
        }
        if as_document
            && !matches!(rparts.status.as_u16(), 101..=199 | 204 | 300..=399)
            && url_tracking::unguardable(&mut rparts.headers)
            && let Some(client) = &client_url
        {
            // The backend's body is not read: the connection is closed, not pooled.
            drop((rbody, lease));
            return Ok(url_tracking::leave_token_behind(client, log));
        }
        // rewrite: with URL tracking, the token the client now holds goes into the response;
        // links to sibling hosts get handoff codes; a page whose URL carried a token is kept
        // from sending it elsewhere.
        let bounce = held
            .as_ref()
            .is_some_and(|h| h.by_url && h.from_elsewhere && rparts.status.is_redirection());
        let html = match (&self.sessions, held, &client_url) {
            (Some(s), Some(held), Some(client))
                if held.by_url || !client.share_with.is_empty() || had_url_token =>
            {
                url_tracking::apply(s, held, client, &mut rparts.headers, had_url_token)
            }
            (Some(s), _, Some(client)) if had_url_token || scrub => {
                url_tracking::clean(s, client, &mut rparts.headers, had_url_token)
            }
            _ => Ok(None),
        };
        let empty = head
            || matches!(rparts.status.as_u16(), 204 | 304)
            || rparts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        let html = match html {
            Ok(html) => html,
            // Nothing to read without a body.
            Err(_) if empty => None,
            // A redirect's body is not needed: it goes, unread.
            Err(url_tracking::Unreadable) if rparts.status.is_redirection() => {
                drop((rbody, lease));
                for name in [
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::TRANSFER_ENCODING,
                ] {
                    rparts.headers.remove(name);
                }
                rparts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                log.status(rparts.status.as_u16());
                return Ok(Response::from_parts(
                    rparts,
                    ResponseBody::full(Bytes::new(), log),
                ));
            }
            Err(url_tracking::Unreadable) => {
                drop((rbody, lease));
                let pool = pool.name.clone();
                // The session's changes are made: its cookies go out with the error.
                let cookies: Vec<HeaderValue> = rparts
                    .headers
                    .get_all(header::SET_COOKIE)
                    .iter()
                    .cloned()
                    .collect();
                let mut resp = error_response(&ProxyError::UnreadablePage { pool }, log);
                for c in cookies {
                    resp.headers_mut().append(header::SET_COOKIE, c);
                }
                return Ok(resp);
            }
        };
        // A redirect that hands a token in its URL to a request another site made goes on
        // as a page of ours instead (see `url_tracking::bounce`).
        if let (true, Some(s), Some(client), Some(to)) = (
            bounce,
            &self.sessions,
            &client_url,
            rparts
                .headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok()),
        ) && client.tagged_home(to, s.url_parameter())
        {
            let to = to.to_owned();
            let cookies = rparts
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            drop((rbody, lease));
            return Ok(url_tracking::bounce(&to, cookies, log));
        }

        // log: written when the body is done (see `body`).
        log.status(rparts.status.as_u16());
        // Trailers are headers too: a backend's directives, or hop-by-hop fields, must not
        // reach an HTTP/2 client in them. Only a body of unknown length (HTTP/1's chunked)
        // can end in trailers: the others do without the sessions' filter.
        let trailers_possible = rparts.version == Version::HTTP_2
            || !rparts.headers.contains_key(header::CONTENT_LENGTH);
        let filter = self.sessions.clone().filter(|_| trailers_possible);
        let body = ResponseBody::upstream(rbody, log, lease, filter);
        let body = match html {
            Some(html) => body.rewritten(html),
            None => body,
        };
        Ok(Response::from_parts(rparts, body))
    }

    /// The client's URL as its browser sees it: the scheme and host a trusted proxy in front
    /// reports (`X-Forwarded-Proto`, `X-Forwarded-Host`), else the listener's and the
    /// request's own.
    fn client_url(
        &self,
        parts: &Parts,
        host: &HeaderValue,
        conn: &ConnInfo,
        trusted: bool,
        links: &Arc<[(String, String)]>,
        share_with: &Arc<[String]>,
    ) -> Option<Box<ClientUrl>> {
        let first = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let scheme = match first("x-forwarded-proto").filter(|_| trusted) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ if conn.listener.tls => "https",
            _ => "http",
        };
        let host = first("x-forwarded-host")
            .filter(|h| trusted && valid_host(h.as_bytes()))
            .unwrap_or_else(|| host_str(host));
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        ClientUrl::new(
            scheme,
            host,
            target,
            url_tracking::accepts_gzip(&parts.headers),
            links.clone(),
            share_with.clone(),
        )
        .map(Box::new)
    }

    /// Checks the request head: size limit, and a usable host (returned).
    fn check_head(&self, req: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
        if headers::head_size(req.uri(), req.headers()) > self.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                limit: self.max_header_bytes,
            });
        }
        if headers::field_count(req.headers()) > headers::MAX_FIELDS {
            return Err(ProxyError::TooManyHeaders {
                limit: headers::MAX_FIELDS,
            });
        }
        request_host(req).ok_or(ProxyError::BadRequest("missing or invalid Host header"))
    }

    /// Finds the route, and the request target to send upstream.
    fn route(&self, parts: &Parts, host: &str) -> Result<(&Route, PathAndQuery), ProxyError> {
        let path = normalize_path(parts.uri.path())?;
        let route = self
            .router
            .find(host_name(host), &path)
            .ok_or(ProxyError::NoRoute)?;
        let unchanged = matches!(path, Cow::Borrowed(_)) && !route.strip_prefix;
        let pq = match parts.uri.path_and_query() {
            // The common case: the target goes upstream as it came, without a copy.
            Some(pq) if unchanged => Ok(pq.clone()),
            _ => upstream_path_and_query(route, &path, parts.uri.query()),
        };
        let pq = pq.map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        Ok((route, pq))
    }
}

/// Sends the request to a server of `pool`, trying another server when that is safe: when
/// nothing was sent, or when the method is idempotent and the body was not read yet.
async fn send(
    pool: &Pool,
    mut parts: Parts,
    path_and_query: PathAndQuery,
    (body, replay): (RequestBody, Replay),
    timer: &mut LazyTimer,
    affinity: Option<&[u8]>,
    metrics: Option<&UpstreamMetrics>,
) -> Result<(Response<Incoming>, Lease), UpstreamError> {
    let idempotent = is_idempotent(&parts.method);
    // Headers are copied per attempt only when a second attempt is possible at all.
    let may_need_headers_again = pool.retries > 0 && pool.backends().len() > 1;
    let mut tried = Tried::default();
    let mut body = body;
    let mut last_error: Option<UpstreamError> = None;
    loop {
        let Some((index, backend)) = pool.select(tried.as_slice(), affinity) else {
            // Out of servers: report what went wrong with the last one, if any was tried.
            return Err(last_error.unwrap_or_else(|| {
                if let Some(m) = metrics {
                    m.failed("no_healthy_server");
                }
                UpstreamError::NoHealthyServer {
                    pool: pool.name.clone(),
                }
            }));
        };
        tried.push(index);
        let headers = if may_need_headers_again {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        let mut upstream_req = Some(build_upstream_request(
            &parts.method,
            headers,
            &path_and_query,
            body,
        ));
        let e = match pool.send(&backend, &mut upstream_req, timer).await {
            Ok(ok) => return Ok(ok),
            Err(e) => e,
        };
        if let (Some(m), Some(kind)) = (metrics, e.metric_name()) {
            m.failed(kind);
        }
        let may_retry = tried.len() <= pool.retries as usize
            && may_need_headers_again
            && e.retryable(idempotent);
        // The body comes back only if no byte of it was read by the failed attempt.
        let again = if may_retry { replay.take() } else { None };
        tracing::warn!(
            upstream = %pool.name,
            backend = %backend.label,
            error = %e,
            retry = again.is_some(),
            "upstream request failed"
        );
        match again {
            Some(replayed) => body = replayed,
            None => return Err(e),
        }
        last_error = Some(e);
    }
}

/// Hop-by-hop headers off the backend's response; a `101` keeps its upgrade headers.
fn clean_response_headers(headers: &mut http::HeaderMap, switching: bool) {
    let protocol = switching
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    headers::remove_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// The servers already tried for one request (at most `retries + 1`, and retries <= 10).
#[derive(Default)]
struct Tried {
    list: [usize; 11],
    len: usize,
}

impl Tried {
    fn push(&mut self, i: usize) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = i;
            self.len += 1;
        }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

fn prepare_upstream_headers(
    parts: &mut Parts,
    found: headers::Found,
    host: HeaderValue,
    conn: &ConnInfo,
    trusted: bool,
    upgrade: Option<HeaderValue>,
) {
    let h2 = parts.version == Version::HTTP_2;
    let headers = &mut parts.headers;
    // Strip before setting: a client must not be able to smuggle hop-by-hop headers or forge
    // the ones we set below.
    if found.hop_by_hop {
        headers::remove_hop_by_hop(headers);
    }
    // We do not relay 100-continue: hyper answers the client when the body is first read.
    if found.expect {
        headers.remove(header::EXPECT);
    }
    if h2 {
        headers::join_cookies(headers);
    }
    let proto = if conn.listener.tls { "https" } else { "http" };
    headers::set_forwarded(headers, found, &conn.peer_header, trusted, proto, &host);
    // Without an authority in the target, `host` is the request's one Host header already.
    if parts.uri.authority().is_some() {
        headers.insert(header::HOST, host);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// The host the client addressed: the request target's authority (absolute-form, or HTTP/2
/// `:authority`), else the `Host` header (RFC 9112 §3.2.2). `None` if missing or not a
/// plausible `host[:port]`. A value rather than a string: it goes upstream as the `Host`
/// and `X-Forwarded-Host` headers, and a header's value is shared, not copied.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok()?,
        None => {
            // More than one Host is a bad request (RFC 9112 §3.2), not a choice to make.
            let mut all = req.headers().get_all(header::HOST).iter();
            let first = all.next()?;
            if all.next().is_some() {
                return None;
            }
            first.clone()
        }
    };
    valid_host(host.as_bytes()).then_some(host)
}

/// A host checked by `request_host` as text (its characters are ASCII, so this never
/// falls back to "").
fn host_str(host: &HeaderValue) -> &str {
    host.to_str().unwrap_or_default()
}

/// `host[:port]`: a reg-name, IPv4 or bracketed IPv6 literal; no userinfo, path or spaces.
fn valid_host(h: &[u8]) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']')
        })
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
    method: &Method,
    headers: http::HeaderMap,
    path_and_query: &PathAndQuery,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    // Origin form (`/path?query`): the connection already goes to the backend.
    *req.uri_mut() = Uri::from(path_and_query.clone());
    // HTTP/2 clients are forwarded as HTTP/1.1.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

fn https_redirect(host: &str, uri: &Uri, port: u16, mut log: LogSlot) -> Response<ResponseBody> {
    let name = host_name(host);
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_owned()
    };
    // Never `*` (OPTIONS *) or anything else that would run into the host.
    let pq = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let location = if port == 443 {
        format!("https://{name}{pq}")
    } else {
        format!("https://{name}:{port}{pq}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(&ProxyError::BadRequest("invalid request target"), log);
    };
    log.status(308);
    let mut resp = Response::new(ResponseBody::full(Bytes::new(), log));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

fn error_response(e: &ProxyError, mut log: LogSlot) -> Response<ResponseBody> {
    let status = e.status();
    log.status(status.as_u16());
    log.note(|l| l.error = Some(e.to_string()));
    let text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e.public_message()
    );
    let mut resp = Response::new(ResponseBody::full(Bytes::from(text), log));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_hosts_are_accepted_and_others_refused() {
        for ok in [
            "shop.example",
            "shop.example:8080",
            "127.0.0.1:80",
            "[::1]:8443",
            "a_b",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "user@shop.example",
            "shop.example/path",
            "sh op",
            "x\r\ny",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn redirect_keeps_path_and_query_and_brackets_ipv6() {
        let uri: Uri = "/cart?item=7".parse().unwrap();
        let resp = https_redirect("shop.example:8080", &uri, 8443, LogSlot::default());
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()["location"],
            "https://shop.example:8443/cart?item=7"
        );
        let resp = https_redirect("[::1]:8080", &uri, 443, LogSlot::default());
        assert_eq!(resp.headers()["location"], "https://[::1]/cart?item=7");
    }
}
