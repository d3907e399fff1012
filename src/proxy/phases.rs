//! The phases of one request, from `route` to `rewrite`, each a function named as in the
//! README's life of a request and called in that order by [`Proxy::forward`]. What a phase
//! finds out for the next is kept in the request's [`Exchange`]; the access log goes with it,
//! so that an error (`?`) is answered with the record of everything noted so far.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::body::{LogSlot, ResponseBody};
use super::downstream::{error_response, host_str, upstream_target};
use super::exchange::{Answer, Exchange};
use super::url_tracking::{self, ClientUrl};
use super::{ConnInfo, Proxy, ProxyError, headers, send, upgrade};
use crate::routing::{host_name, normalize_path};
use crate::session::RequestInfo;
use crate::session::url::UrlTokens;
use crate::upstream::{Affinity, Lease, RequestBody, UpstreamError};

impl Proxy {
    /// `route`: the route for the host and normalized path (404), its pool, the target the
    /// backend gets (`strip_prefix`), the declared body size (413), whether an upgrade may go
    /// through, and the client's URL when the route's sessions need it.
    pub(super) fn route<'a>(
        &'a self,
        req: &mut Parts,
        host: &HeaderValue,
        conn: &'a ConnInfo,
        log: &'a mut LogSlot,
        url_carried_token: bool,
    ) -> Result<Exchange<'a>, ProxyError> {
        let found = headers::scan(&req.headers);
        let path = normalize_path(req.uri.path())?;
        let route = self
            .router
            .find(host_name(host_str(host)), &path)
            .ok_or(ProxyError::NoRoute)?;
        let target = upstream_target(route, &req.uri, path)?;
        if let Some(m) = self.route_metrics.get(route.index) {
            log.route(&route.name, m);
        }
        let pool = self.pools.get(route.upstream).ok_or(ProxyError::NoRoute)?;
        log.note(|l| l.upstream = Some(pool.name.clone()));
        if headers::content_length(&req.headers).is_some_and(|n| n > route.max_body_bytes) {
            return Err(ProxyError::BodyTooLarge {
                limit: route.max_body_bytes,
            });
        }
        // An upgrade needs `Connection: upgrade` (HTTP/1 only: Connection is hop-by-hop),
        // and goes through only to a protocol the route allows: never h2c, which would let
        // the client speak HTTP/2 to the backend past every check here.
        let upgrade = match req.version {
            Version::HTTP_11 | Version::HTTP_10 if found.hop_by_hop => {
                headers::upgrade_request(&req.headers)
                    .filter(|p| route.allows_upgrade(p.as_bytes()))
            }
            _ => None,
        };
        let downstream_upgrade = upgrade
            .as_ref()
            .and_then(|_| req.extensions.remove::<OnUpgrade>());
        // Judged per request: a reload that stops trusting a proxy applies to its open
        // connections too.
        let trusted = self
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&conn.peer_ip));
        // Read before `upstream_request` sets `X-Forwarded-*` for the backend.
        let client = url_tracking::wants_client_url(
            self.sessions.is_some(),
            route.session.as_ref(),
            url_carried_token,
        )
        .and_then(|(links, siblings)| {
            ClientUrl::of_request(req, host, conn.listener.tls, trusted, links, siblings)
        });
        Ok(Exchange {
            conn,
            log,
            route,
            pool,
            target,
            found,
            upgrade,
            downstream_upgrade,
            trusted,
            client,
            url_carried_token,
            as_document: url_tracking::as_document(req, url_carried_token),
            head_only: req.method == Method::HEAD,
            scrub: false,
            rewrites: url_carried_token,
            session: None,
            held: None,
        })
    }

    /// `upstream_request`: the client's headers made safe for the backend, `host` its `Host`
    /// (see
    /// [`send::prepare_upstream_headers`]). Done before the session's phases, so that
    /// nothing the client names in `Connection` can take away a header the gateway sets.
    pub(super) fn upstream_request(
        &self,
        x: &mut Exchange<'_>,
        req: &mut Parts,
        host: HeaderValue,
    ) {
        send::prepare_upstream_headers(req, x.found, host, x.conn, x.trusted, x.upgrade.clone());
    }

    /// `resolve`: with sessions configured, the client's session headers go on every route;
    /// on a route with sessions, our cookies come out too and the token the request presents
    /// is chosen (`url`: what `take_url_tokens` took out of the URL first).
    pub(super) fn resolve(
        &self,
        x: &mut Exchange<'_>,
        req: &mut Parts,
        url: Option<Box<UrlTokens>>,
    ) {
        let Some(sessions) = &self.sessions else {
            return;
        };
        match &x.route.session {
            Some(_) => {
                let info = request_info(x, &req.method, &self.trusted_proxies);
                let resolved = sessions.resolve(&mut req.headers, &info, url);
                x.session = Some(Box::new(resolved));
            }
            // Sessions exist but not on this route: no client poses as the gateway here
            // either (the same application may sit behind routes with sessions).
            None => sessions.strip_forged(&mut req.headers),
        }
    }

    /// `load`: the session loaded and judged, and written into the backend's headers; a
    /// store that does not answer fails the request (503). Some requests are answered here,
    /// without the backend: a sibling host's handoff, and a URL token that does not count
    /// (a redirect to the clean URL).
    pub(super) async fn load(
        &self,
        x: &mut Exchange<'_>,
        req: &mut Parts,
    ) -> Result<Option<Response<ResponseBody>>, ProxyError> {
        if let (Some(sessions), Some(rs), Some(mut session)) =
            (&self.sessions, &x.route.session, x.session.take())
        {
            let info = request_info(x, &req.method, &self.trusted_proxies);
            sessions.load(&mut session, &mut req.headers, &info).await;
            x.log.note(|l| {
                l.session_status = Some(session.status().as_str());
                l.session = session.token_hash();
            });
            if session.store_failed() {
                return Err(ProxyError::SessionStore);
            }
            if let Some(client) = &x.client {
                if let Some(arrival) = session.take_arrival() {
                    let tls = x.conn.listener.tls;
                    let log = std::mem::take(x.log);
                    return Ok(Some(url_tracking::arrival_redirect(
                        sessions, arrival, client, tls, log,
                    )));
                }
                if session.clean_redirect() {
                    let log = std::mem::take(x.log);
                    return Ok(Some(url_tracking::clean_redirect(client, log)));
                }
            }
            x.scrub = url_tracking::scrubs(rs, &session);
            x.rewrites |= session.may_rewrite() || x.scrub;
            x.session = Some(session);
        }
        Ok(None)
    }

    /// `send`: the request to a server of the route's pool, its body streamed under the
    /// route's limit, the response head awaited; another server is tried when that is safe:
    /// when nothing was sent, or when the method is idempotent and the body was not read yet.
    /// (The retry loop is written out here rather than called: an async call nested once
    /// more would copy the pool's large exchange future once more per request.)
    pub(super) async fn send(
        &self,
        x: &mut Exchange<'_>,
        mut req: Parts,
        body: Incoming,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        if x.rewrites && x.client.is_some() {
            // Pages are rewritten as they stream: ask for them uncompressed.
            req.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let (mut body, replay) =
            RequestBody::new(body, x.route.max_body_bytes, self.body_read_timeout);
        let sent_at = Instant::now();
        let pool = x.pool;
        let counted = self.upstream_metrics.get(x.route.upstream);
        let failed = |source| ProxyError::Upstream {
            pool: pool.name.clone(),
            source,
        };
        // Where the session wants to go, for balance: session_affinity (the upstream gets
        // bytes): worked out only for a pool that balances so.
        let affinity = x
            .session
            .as_ref()
            .filter(|_| pool.uses_affinity())
            .and_then(|rs| {
                let (key, routes) = (rs.affinity_key(), rs.app_routes());
                (key.is_some() || !routes.is_empty()).then(|| Affinity {
                    key,
                    pinned: rs.pinned_server(),
                    routes,
                })
            });
        let idempotent = send::is_idempotent(&req.method);
        // Headers are copied per attempt only when a second attempt is possible at all.
        let may_need_headers_again = pool.retries > 0 && pool.backends().len() > 1;
        let mut tried = send::Tried::default();
        let mut last_error: Option<UpstreamError> = None;
        let mut timer = x.conn.timer.take();
        let answered = loop {
            let Some((index, backend)) = pool.select(tried.as_slice(), affinity.as_ref()) else {
                // Out of servers: report what went wrong with the last one, if any was tried.
                break Err(last_error.unwrap_or_else(|| {
                    if let Some(m) = counted {
                        m.failed("no_healthy_server");
                    }
                    UpstreamError::NoHealthyServer {
                        pool: pool.name.clone(),
                    }
                }));
            };
            tried.push(index);
            let headers = if may_need_headers_again {
                req.headers.clone()
            } else {
                std::mem::take(&mut req.headers)
            };
            let mut upstream_req = Some(send::upstream_request(
                &req.method,
                headers,
                &x.target,
                body,
            ));
            let e = match pool.send(&backend, &mut upstream_req, &mut timer).await {
                Ok(ok) => break Ok(ok),
                Err(e) => e,
            };
            if let (Some(m), Some(kind)) = (counted, e.metric_name()) {
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
                None => break Err(e),
            }
            last_error = Some(e);
        };
        x.conn.timer.put(timer);
        let answered = answered.map_err(failed)?;
        let upstream_time = sent_at.elapsed();
        if let Some(m) = counted {
            m.answered(upstream_time);
        }
        x.log.note(|l| l.upstream_time = Some(upstream_time));
        Ok(answered)
    }

    /// `upstream_response`: hop-by-hop headers off the backend's response; a `101` to the
    /// protocol the client asked for becomes a tunnel (to anything else: 502). On a route
    /// without sessions, the backend's session directives go, unapplied.
    pub(super) fn upstream_response(
        &self,
        x: &mut Exchange<'_>,
        (mut resp, mut lease): (Response<Incoming>, Lease),
    ) -> Result<Answer, ProxyError> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            // The connection becomes a tunnel (or, without a client upgrade, is useless).
            lease.discard_connection();
            // A backend may switch only to the protocol the client asked for and the route
            // allows: anything else would be a tunnel past the gateway.
            let agreed = match (&x.upgrade, resp.headers().get(header::UPGRADE)) {
                (Some(asked), Some(answered)) => {
                    asked.as_bytes().eq_ignore_ascii_case(answered.as_bytes())
                        || (x.route.allows_upgrade(answered.as_bytes())
                            && headers::offers(asked, answered))
                }
                _ => false,
            };
            let Some(downstream) = x.downstream_upgrade.take().filter(|_| agreed) else {
                let pool = x.pool.name.clone();
                return Err(ProxyError::UnwantedUpgrade { pool });
            };
            let upstream = hyper::upgrade::on(&mut resp);
            // A tunnel opened with a session closes when the session ends.
            let session = match (&self.sessions, &x.session) {
                (Some(s), Some(rs)) => s.watch(rs),
                _ => None,
            };
            let websocket = x
                .upgrade
                .as_ref()
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
            let tunnel = upgrade::Tunnel {
                downstream,
                upstream,
                websocket,
                session,
            };
            upgrade::spawn_tunnel(
                tunnel,
                self.tunnel_idle_timeout,
                x.conn.guard.clone(),
                &self.tunnels,
                self.force.clone(),
            );
        }
        let (mut head, body) = resp.into_parts();
        send::clean_response_headers(&mut head.headers, switching);
        // A route without sessions applies no session directive, and lets none through.
        if let (Some(sessions), None) = (&self.sessions, &x.session) {
            sessions.strip_directives(&mut head.headers);
            sessions.drop_backend_cookies_like_ours(&mut head.headers);
        }
        Ok(Answer { head, body, lease })
    }

    /// `commit`, on a route with sessions: the backend's session directives taken out of
    /// the response and applied (see `Sessions::commit`). A logout the store could not make
    /// is not answered as one (503). (On a route without sessions, `upstream_response` takes
    /// them out, unapplied.)
    pub(super) async fn commit(
        &self,
        x: &mut Exchange<'_>,
        answer: &mut Answer,
    ) -> Result<(), ProxyError> {
        let (Some(sessions), Some(session)) = (&self.sessions, x.session.take()) else {
            return Ok(());
        };
        let head = &mut answer.head;
        if session.url_token_ignored() {
            head.headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        let tls = x.conn.listener.tls;
        let served_by = Some(&**answer.lease.backend_label());
        x.held = sessions
            .commit(
                *session,
                head.status,
                &mut head.headers,
                tls,
                (served_by, &x.route.name),
            )
            .await
            .map_err(|_| ProxyError::SessionStore)?;
        // A new token (a login) is logged as the one the client holds now; after a logout
        // the line keeps the one it presented.
        if let Some(h) = &x.held {
            x.log.note(|l| l.session = Some(h.token.log_hash()));
        }
        Ok(())
    }

    /// `rewrite`: with URL tracking, the token the client now holds goes into the response;
    /// links to sibling hosts get handoff codes; a page whose URL carried a token is kept
    /// from sending it elsewhere (see `url_tracking`). The response then streams to the
    /// client, and its body's end writes the `log`.
    pub(super) fn rewrite(
        &self,
        mut x: Exchange<'_>,
        answer: Answer,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let Answer {
            mut head,
            body,
            lease,
        } = answer;
        if x.as_document
            && !matches!(head.status.as_u16(), 101..=199 | 204 | 300..=399)
            && url_tracking::unguardable(&mut head.headers)
            && let Some(client) = &x.client
        {
            // The backend's body is not read: the connection is closed, not pooled.
            drop((body, lease));
            let log = std::mem::take(x.log);
            return Ok(url_tracking::leave_token_behind(client, log));
        }
        let bounce = x
            .held
            .as_ref()
            .is_some_and(|h| h.by_url && h.from_elsewhere && head.status.is_redirection());
        let carried = x.url_carried_token;
        let html = match (&self.sessions, x.held.take(), &x.client) {
            (Some(s), Some(held), Some(client))
                if held.by_url || !client.share_with.is_empty() || carried =>
            {
                url_tracking::apply(s, held, client, &mut head.headers, carried)
            }
            (Some(s), _, Some(client)) if carried || x.scrub => {
                url_tracking::clean(s, client, &mut head.headers, carried)
            }
            _ => Ok(None),
        };
        let empty = x.head_only
            || matches!(head.status.as_u16(), 204 | 304)
            || head
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        let html = match html {
            Ok(html) => html,
            // Nothing to read without a body.
            Err(_) if empty => None,
            // A redirect's body is not needed: it goes, unread.
            Err(url_tracking::Unreadable) if head.status.is_redirection() => {
                drop((body, lease));
                for name in [
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::TRANSFER_ENCODING,
                ] {
                    head.headers.remove(name);
                }
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                let mut log = std::mem::take(x.log);
                log.status(head.status.as_u16());
                return Ok(Response::from_parts(
                    head,
                    ResponseBody::full(Bytes::new(), log),
                ));
            }
            Err(url_tracking::Unreadable) => {
                drop((body, lease));
                let pool = x.pool.name.clone();
                // The session's changes are made: its cookies go out with the error.
                let cookies: Vec<HeaderValue> = head
                    .headers
                    .get_all(header::SET_COOKIE)
                    .iter()
                    .cloned()
                    .collect();
                let log = std::mem::take(x.log);
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
            &x.client,
            head.headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok()),
        ) && client.tagged_home(to, s.url_parameter())
        {
            let to = to.to_owned();
            let cookies = head
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
            drop((body, lease));
            return Ok(url_tracking::bounce(&to, cookies, std::mem::take(x.log)));
        }

        let mut log = std::mem::take(x.log);
        log.status(head.status.as_u16());
        // Trailers are headers too: a backend's directives, or hop-by-hop fields, must not
        // reach an HTTP/2 client in them. Only a body of unknown length (HTTP/1's chunked)
        // can end in trailers: the others do without the sessions' filter.
        let trailers_possible =
            head.version == Version::HTTP_2 || !head.headers.contains_key(header::CONTENT_LENGTH);
        let filter = self.sessions.clone().filter(|_| trailers_possible);
        let body = ResponseBody::upstream(body, log, lease, filter);
        let body = match html {
            Some(html) => body.rewritten(html),
            None => body,
        };
        Ok(Response::from_parts(head, body))
    }
}

/// What the session's phases are told about the request.
fn request_info<'a>(
    x: &'a Exchange<'_>,
    method: &'a Method,
    trusted: &'a [ipnet::IpNet],
) -> RequestInfo<'a> {
    let rs = x.route.session.as_ref();
    RequestInfo {
        peer: x.conn.peer_ip,
        trusted: if x.trusted { trusted } else { &[] },
        tls: x.conn.listener.tls,
        origin: x.client.as_ref().map(|c| c.origin.as_str()),
        method,
        mapped: rs.map_or(&[], |rs| &rs.mapped),
        tracking: rs.map_or(crate::config::Tracking::Cookie, |rs| rs.tracking),
        share_with: rs.map_or(&[], |rs| &rs.share_with),
        jar: rs.and_then(|rs| rs.jar.as_ref()),
        backend_path: x.target.path(),
    }
}
