//! From the node tree to a validated [`Config`], collecting every problem on the way.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, Problems};
use super::node::{Node, Pos, Value, parse_yaml};
use super::reader::{
    MapReader, boolean, duration, integer, interpolate_env, list, non_empty, one_of,
    positive_duration, size, socket_addr, string,
};
use super::sessions::{self, RouteSession};
use super::{
    ActiveHealth, AdminConfig, Balance, CertificateConfig, Config, HostMatch, Hsts, HttpsRedirect,
    Limits, ListenerConfig, PassiveHealth, RouteConfig, ServerConfig, TlsConfig, TlsVersion,
    UpstreamConfig, UpstreamTls,
};
use super::{StoreConfig, Tracking};

pub(super) fn parse(
    file: &str,
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut root =
        parse_yaml(text).map_err(|(pos, msg)| ConfigError::single(file, pos, "", msg))?;
    let mut p = Problems::default();
    interpolate_env(&mut root, "", env, &mut p);
    let config = read_config(file, &root, base_dir, &mut p);
    match config {
        Some(c) if p.is_empty() => Ok(c),
        _ => Err(p.into_error(file)),
    }
}

fn read_config(file: &str, root: &Node, base: &Path, p: &mut Problems) -> Option<Config> {
    let mut m = MapReader::new(root, "", p)?;
    let listeners = m.require("listeners", root.pos, p);
    let admin = m
        .get("admin")
        .and_then(|n| super::admin::read(n, "admin", base, p));
    let trusted_proxies = m
        .get("trusted_proxies")
        .map(|n| read_trusted(n, "trusted_proxies", p))
        .unwrap_or_default();
    let limits = m
        .get("limits")
        .and_then(|n| super::limits::read(n, "limits", p))
        .unwrap_or_default();
    let timeouts = m
        .get("timeouts")
        .and_then(|n| super::timeouts::read(n, "timeouts", p))
        .unwrap_or_default();
    let upstreams = m
        .require("upstreams", root.pos, p)
        .map(|n| read_upstreams(n, "upstreams", base, p))
        .unwrap_or_default();
    let routes_node = m.require("routes", root.pos, p);
    let sessions = m
        .get("sessions")
        .and_then(|n| sessions::read_sessions(n, "sessions", base, p));
    let logs = m
        .get("logs")
        .and_then(|n| super::logs::read(n, "logs", p))
        .unwrap_or_default();
    m.finish(p);

    let listeners = listeners
        .map(|n| read_listeners(n, "listeners", base, p))
        .unwrap_or_default();
    let routes = routes_node
        .map(|n| {
            let sealed = sessions
                .as_ref()
                .is_some_and(|s| matches!(s.store, StoreConfig::Cookie { .. }));
            read_routes(
                n,
                "routes",
                &limits,
                &upstreams,
                (sessions.is_some(), sealed),
                p,
            )
        })
        .unwrap_or_default();
    check_admin_bind(&admin, &listeners, root.pos, p);

    Some(Config {
        source: file.to_owned(),
        listeners,
        admin,
        trusted_proxies,
        limits,
        timeouts,
        upstreams,
        routes,
        sessions,
        logs,
    })
}

fn read_listeners(node: &Node, path: &str, base: &Path, p: &mut Problems) -> Vec<ListenerConfig> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    if items.is_empty() {
        p.push(node.pos, path, "at least one listener is needed");
    }
    let mut out: Vec<ListenerConfig> = Vec::new();
    // Redirects need the HTTPS port, which may come from a TLS listener written later.
    let mut pending_redirects: Vec<(usize, Pos, String, Option<u16>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let lp = format!("{path}[{i}]");
        let Some(mut m) = MapReader::new(item, &lp, p) else {
            continue;
        };
        let name = m
            .require("name", item.pos, p)
            .and_then(|n| non_empty(n, &m.child("name"), p));
        let bind = m
            .require("bind", item.pos, p)
            .and_then(|n| socket_addr(n, &m.child("bind"), p));
        let tls = m
            .get("tls")
            .and_then(|n| read_tls(n, &m.child("tls"), base, p));
        let redirect = m
            .get("redirect_to_https")
            .and_then(|n| boolean(n, &m.child("redirect_to_https"), p).map(|b| (b, n.pos)));
        let https_port = m.get("https_port").and_then(|n| {
            integer(n, &m.child("https_port"), 1, 65535, p).and_then(|v| u16::try_from(v).ok())
        });
        let proxy_protocol = m
            .get("proxy_protocol")
            .and_then(|n| boolean(n, &m.child("proxy_protocol"), p))
            .unwrap_or(false);
        m.finish(p);
        if let Some((true, pos)) = redirect {
            if tls.is_some() {
                p.push(
                    pos,
                    &format!("{lp}.redirect_to_https"),
                    "a TLS listener cannot redirect to HTTPS: it already is HTTPS",
                );
            } else {
                pending_redirects.push((out.len(), pos, lp.clone(), https_port));
            }
        }
        let (Some(name), Some(bind)) = (name, bind) else {
            continue;
        };
        if out.iter().any(|l| l.name == name) {
            p.push(
                item.pos,
                &format!("{lp}.name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        if bind.port() != 0 && out.iter().any(|l| l.bind == bind) {
            p.push(
                item.pos,
                &format!("{lp}.bind"),
                format!("another listener already binds {bind}"),
            );
        }
        out.push(ListenerConfig {
            name,
            bind,
            tls,
            redirect_to_https: None,
            proxy_protocol,
        });
    }
    let tls_port = out.iter().find(|l| l.tls.is_some()).map(|l| l.bind.port());
    for (idx, pos, lp, port) in pending_redirects {
        match port.or(tls_port) {
            Some(port) if port != 0 => {
                if let Some(l) = out.get_mut(idx) {
                    l.redirect_to_https = Some(HttpsRedirect { port });
                }
            }
            _ => p.push(
                pos,
                &format!("{lp}.redirect_to_https"),
                "no HTTPS port to redirect to: add a TLS listener with a fixed port, or set https_port",
            ),
        }
    }
    out
}

fn read_tls(node: &Node, path: &str, base: &Path, p: &mut Problems) -> Option<TlsConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let certs = m.require("certificates", node.pos, p);
    let min_version = m
        .get("min_version")
        .and_then(|n| one_of(n, &m.child("min_version"), &["1.2", "1.3"], p))
        .map(|v| {
            if v == "1.3" {
                TlsVersion::Tls13
            } else {
                TlsVersion::Tls12
            }
        })
        .unwrap_or(TlsVersion::Tls12);
    let handshake_timeout = m
        .get("handshake_timeout")
        .and_then(|n| positive_duration(n, &m.child("handshake_timeout"), p))
        .unwrap_or(Duration::from_secs(10));
    let hsts = m
        .get("hsts")
        .and_then(|n| read_hsts(n, &m.child("hsts"), p));
    let cpath = m.child("certificates");
    m.finish(p);

    let items = list(certs?, &cpath, p)?;
    if items.is_empty() {
        p.push(node.pos, &cpath, "at least one certificate is needed");
        return None;
    }
    let mut certificates = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{cpath}[{i}]");
        let Some(mut c) = MapReader::new(item, &ip, p) else {
            continue;
        };
        let cert = c
            .require("cert", item.pos, p)
            .and_then(|n| non_empty(n, &c.child("cert"), p));
        let key = c
            .require("key", item.pos, p)
            .and_then(|n| non_empty(n, &c.child("key"), p));
        c.finish(p);
        if let (Some(cert), Some(key)) = (cert, key) {
            certificates.push(CertificateConfig {
                cert: base.join(cert),
                key: base.join(key),
                pos: item.pos,
                path: ip,
            });
        }
    }
    Some(TlsConfig {
        certificates,
        min_version,
        handshake_timeout,
        hsts,
    })
}

fn read_hsts(node: &Node, path: &str, p: &mut Problems) -> Option<Hsts> {
    let mut m = MapReader::new(node, path, p)?;
    let max_age = m
        .require("max_age", node.pos, p)
        .and_then(|n| duration(n, &m.child("max_age"), p));
    let include_subdomains = m
        .get("include_subdomains")
        .and_then(|n| boolean(n, &m.child("include_subdomains"), p))
        .unwrap_or(false);
    let preload = m
        .get("preload")
        .and_then(|n| boolean(n, &m.child("preload"), p))
        .unwrap_or(false);
    m.finish(p);
    Some(Hsts {
        max_age: max_age?,
        include_subdomains,
        preload,
    })
}

fn check_admin_bind(
    admin: &Option<AdminConfig>,
    listeners: &[ListenerConfig],
    pos: Pos,
    p: &mut Problems,
) {
    if let Some(a) = admin
        && a.bind.port() != 0
        && listeners.iter().any(|l| l.bind == a.bind)
    {
        p.push(
            pos,
            "admin.bind",
            format!("a listener already binds {}", a.bind),
        );
    }
}

fn read_trusted(node: &Node, path: &str, p: &mut Problems) -> Vec<ipnet::IpNet> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(s) = string(item, &ip, p) else {
            continue;
        };
        let s = s.trim();
        // A bare address is a network of one.
        let parsed = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => out.push(net),
            Err(_) => p.push(
                item.pos,
                &ip,
                format!("bad network {s:?}: write an address or CIDR, e.g. 10.0.0.0/8"),
            ),
        }
    }
    out
}

fn read_upstreams(node: &Node, path: &str, base: &Path, p: &mut Problems) -> Vec<UpstreamConfig> {
    // Upstreams are a mapping of name -> settings, so the names are the keys.
    let entries = match &node.value {
        Value::Map(entries) => entries.as_slice(),
        other => {
            p.push(
                node.pos,
                path,
                format!(
                    "expected a mapping of upstream names, found {}",
                    other.kind()
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let Some(name) = string(k, path, p) else {
            continue;
        };
        if let Some(u) = read_upstream(&name, v, &format!("{path}.{name}"), base, p) {
            out.push(u);
        }
    }
    out
}

fn read_upstream(
    name: &str,
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<UpstreamConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let servers = m.require("servers", node.pos, p);
    let balance = m
        .get("balance")
        .and_then(|n| {
            one_of(
                n,
                &m.child("balance"),
                &["round_robin", "least_connections", "session_affinity"],
                p,
            )
        })
        .map(|b| match b {
            "least_connections" => Balance::LeastConnections,
            "session_affinity" => Balance::SessionAffinity,
            _ => Balance::RoundRobin,
        })
        .unwrap_or(Balance::RoundRobin);
    let connect_timeout = m
        .get("connect_timeout")
        .and_then(|n| positive_duration(n, &m.child("connect_timeout"), p))
        .unwrap_or(Duration::from_secs(2));
    let response_timeout = m
        .get("response_timeout")
        .and_then(|n| positive_duration(n, &m.child("response_timeout"), p))
        .unwrap_or(Duration::from_secs(30));
    let retries = m
        .get("retries")
        .and_then(|n| integer(n, &m.child("retries"), 0, 10, p))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(2);
    let passive = m
        .get("passive")
        .and_then(|n| read_passive(n, &m.child("passive"), p))
        .unwrap_or(PassiveHealth {
            max_failures: 3,
            eject_for: Duration::from_secs(10),
        });
    let health = m
        .get("health")
        .and_then(|n| read_health(n, &m.child("health"), p));
    let max_idle_per_server = m
        .get("max_idle_per_server")
        .and_then(|n| integer(n, &m.child("max_idle_per_server"), 0, 100_000, p))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(256);
    let idle_timeout = m
        .get("idle_timeout")
        .and_then(|n| positive_duration(n, &m.child("idle_timeout"), p))
        .unwrap_or(Duration::from_secs(60));
    let tls_node = m.get("tls");
    let tls = tls_node
        .and_then(|n| read_upstream_tls(n, &m.child("tls"), base, p))
        .unwrap_or_default();
    let spath = m.child("servers");
    m.finish(p);

    let items = list(servers?, &spath, p)?;
    if items.is_empty() {
        p.push(node.pos, &spath, "an upstream needs at least one server");
    }
    let mut list_out: Vec<ServerConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{spath}[{i}]");
        if let Some(s) = read_server(item, &ip, p) {
            if list_out
                .iter()
                .any(|o| o.authority == s.authority && o.scheme == s.scheme)
            {
                p.push(item.pos, &ip, "this server is listed twice");
            }
            list_out.push(s);
        }
    }
    if let Some(n) = tls_node
        && !list_out
            .iter()
            .any(|s| s.scheme == http::uri::Scheme::HTTPS)
    {
        p.push(
            n.pos,
            &format!("{path}.tls"),
            "tls settings, but no https:// server in this upstream",
        );
    }
    Some(UpstreamConfig {
        tls,
        name: name.to_owned(),
        servers: list_out,
        balance,
        connect_timeout,
        response_timeout,
        retries,
        passive,
        health,
        max_idle_per_server,
        idle_timeout,
    })
}

fn read_server(node: &Node, path: &str, p: &mut Problems) -> Option<ServerConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let url = m.require("url", node.pos, p);
    let weight = m
        .get("weight")
        .and_then(|n| integer(n, &m.child("weight"), 1, 1000, p))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    let upath = m.child("url");
    m.finish(p);
    let url_node = url?;
    let raw = string(url_node, &upath, p)?;
    match parse_server_url(&raw) {
        Ok((scheme, authority)) => Some(ServerConfig {
            scheme,
            authority,
            weight,
        }),
        Err(msg) => {
            p.push(url_node.pos, &upath, msg);
            None
        }
    }
}

fn parse_server_url(raw: &str) -> Result<(http::uri::Scheme, http::uri::Authority), String> {
    let uri: http::Uri = raw
        .trim()
        .parse()
        .map_err(|e| format!("bad URL {raw:?}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        _ => {
            return Err(format!(
                "bad URL {raw:?}: write http://HOST:PORT or https://HOST:PORT"
            ));
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("bad URL {raw:?}: no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "bad URL {raw:?}: credentials in server URLs are not supported"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "bad URL {raw:?}: a server URL has no path (use strip_prefix on the route instead)"
        ));
    }
    Ok((scheme, authority))
}

fn read_upstream_tls(
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<UpstreamTls> {
    let mut m = MapReader::new(node, path, p)?;
    let ca = m
        .get("ca")
        .and_then(|n| non_empty(n, &m.child("ca"), p))
        .map(|f| base.join(f));
    let server_name = m.get("server_name").and_then(|n| {
        let s = non_empty(n, &m.child("server_name"), p)?;
        if rustls_pki_types::ServerName::try_from(s.as_str()).is_err() {
            p.push(
                n.pos,
                &m.child("server_name"),
                format!("{s:?} is not a DNS name or IP address"),
            );
            return None;
        }
        Some(s)
    });
    m.finish(p);
    Some(UpstreamTls {
        ca,
        server_name,
        pos: node.pos,
        path: path.to_owned(),
    })
}

fn read_passive(node: &Node, path: &str, p: &mut Problems) -> Option<PassiveHealth> {
    let mut m = MapReader::new(node, path, p)?;
    let max_failures = m
        .get("max_failures")
        .and_then(|n| integer(n, &m.child("max_failures"), 0, 1000, p))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(3);
    let eject_for = m
        .get("eject_for")
        .and_then(|n| positive_duration(n, &m.child("eject_for"), p))
        .unwrap_or(Duration::from_secs(10));
    m.finish(p);
    Some(PassiveHealth {
        max_failures,
        eject_for,
    })
}

fn read_health(node: &Node, path: &str, p: &mut Problems) -> Option<ActiveHealth> {
    let mut m = MapReader::new(node, path, p)?;
    let hpath = m
        .require("path", node.pos, p)
        .and_then(|n| absolute_path(n, &m.child("path"), p));
    let interval = m
        .get("interval")
        .and_then(|n| positive_duration(n, &m.child("interval"), p))
        .unwrap_or(Duration::from_secs(5));
    let timeout = m
        .get("timeout")
        .and_then(|n| positive_duration(n, &m.child("timeout"), p))
        .unwrap_or(Duration::from_secs(2));
    let fails = m
        .get("fails")
        .and_then(|n| integer(n, &m.child("fails"), 1, 100, p))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(2);
    let passes = m
        .get("passes")
        .and_then(|n| integer(n, &m.child("passes"), 1, 100, p))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    m.finish(p);
    Some(ActiveHealth {
        path: hpath?,
        interval,
        timeout,
        fails,
        passes,
    })
}

fn absolute_path(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = string(node, path, p)?;
    if !s.starts_with('/') || s.contains(char::is_whitespace) {
        p.push(
            node.pos,
            path,
            format!("{s:?} must be a path starting with /"),
        );
        return None;
    }
    if s.parse::<http::uri::PathAndQuery>().is_err() {
        p.push(node.pos, path, format!("{s:?} is not a valid URL path"));
        return None;
    }
    Some(s)
}

fn read_routes(
    node: &Node,
    path: &str,
    limits: &Limits,
    upstreams: &[UpstreamConfig],
    (sessions_on, sealed): (bool, bool),
    p: &mut Problems,
) -> Vec<RouteConfig> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let known: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let mut seen: HashMap<(HostMatch, String), usize> = HashMap::new();
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rp = format!("{path}[{i}]");
        let Some(mut m) = MapReader::new(item, &rp, p) else {
            continue;
        };
        let name = m
            .get("name")
            .and_then(|n| non_empty(n, &m.child("name"), p))
            .unwrap_or_else(|| format!("route{i}"));
        let matcher = m
            .require("match", item.pos, p)
            .and_then(|n| read_match(n, &m.child("match"), p));
        let upstream_node = m.require("upstream", item.pos, p);
        let upstream = upstream_node.and_then(|n| non_empty(n, &m.child("upstream"), p));
        let strip_prefix = m
            .get("strip_prefix")
            .and_then(|n| boolean(n, &m.child("strip_prefix"), p))
            .unwrap_or(false);
        let max_body_bytes = m
            .get("max_body_bytes")
            .and_then(|n| size(n, &m.child("max_body_bytes"), p))
            .unwrap_or(limits.max_body_bytes);
        let upgrades = m
            .get("upgrades")
            .map(|n| read_upgrades(n, &m.child("upgrades"), p))
            .unwrap_or_else(|| vec!["websocket".to_owned()]);
        let session_node = m.get("session");
        let session = match session_node {
            None => sessions_on.then(RouteSession::default),
            Some(n) => sessions::read_route_session(n, &m.child("session"), p).flatten(),
        };
        if let Some(n) = session_node
            && session.is_some()
            && !sessions_on
        {
            p.push(
                n.pos,
                &m.child("session"),
                "a route session needs the top-level sessions: section",
            );
        }
        if let (Some(n), Some(s), true) = (session_node, &session, sealed) {
            if matches!(s.tracking, Some(Tracking::Url | Tracking::Auto)) {
                p.push(n.pos, &m.child("session"), sessions::SEALED_NO_URL);
            }
            if !s.share_with.is_empty() {
                p.push(
                    n.pos,
                    &m.child("session"),
                    "share_with hands a session over through the store; the cookie store has none",
                );
            }
        }
        m.finish(p);

        if let (Some(u), Some(n)) = (&upstream, upstream_node)
            && !known.contains(u.as_str())
        {
            let mut names: Vec<&str> = known.iter().copied().collect();
            names.sort_unstable();
            p.push(
                n.pos,
                &format!("{rp}.upstream"),
                format!("unknown upstream {u:?} (defined: {})", names.join(", ")),
            );
        }
        if out.iter().any(|r| r.name == name) {
            p.push(
                item.pos,
                &format!("{rp}.name"),
                format!("duplicate route name {name:?}"),
            );
        }
        let (Some((host, prefix)), Some(upstream)) = (matcher, upstream) else {
            continue;
        };
        if let Some(first) = seen.insert((host.clone(), prefix.clone()), i) {
            p.push(
                item.pos,
                &format!("{rp}.match"),
                format!("routes[{first}] already matches the same host and path prefix"),
            );
        }
        out.push(RouteConfig {
            name,
            host,
            path_prefix: prefix,
            upstream,
            strip_prefix,
            max_body_bytes,
            upgrades,
            session,
        });
    }
    if items.is_empty() {
        p.push(node.pos, path, "at least one route is needed");
    }
    out
}

/// A route's `upgrades`: protocol names (`websocket`), lower case. `h2c` is refused: an h2c
/// upgrade would let a client speak HTTP/2 to the backend past the gateway's checks.
fn read_upgrades(node: &Node, path: &str, p: &mut Problems) -> Vec<String> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(s) = non_empty(n, &ipath, p) else {
            continue;
        };
        let name = s.to_ascii_lowercase();
        if name == "h2c" || name.starts_with("h2c/") {
            p.push(
                n.pos,
                &ipath,
                "h2c is never forwarded: a client would speak HTTP/2 to the backend past the gateway",
            );
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.contains('/') {
            p.push(
                n.pos,
                &ipath,
                format!("{s:?} is not a protocol name (e.g. websocket)"),
            );
        } else {
            out.push(name);
        }
    }
    out
}

fn read_match(node: &Node, path: &str, p: &mut Problems) -> Option<(HostMatch, String)> {
    let mut m = MapReader::new(node, path, p)?;
    let host = match m.get("host") {
        Some(n) => read_host(n, &m.child("host"), p)?,
        None => HostMatch::Any,
    };
    let prefix = match m.get("path_prefix") {
        Some(n) => {
            let mut s = absolute_path(n, &m.child("path_prefix"), p)?;
            if s.contains('?') {
                p.push(n.pos, &m.child("path_prefix"), "a path prefix has no query");
                return None;
            }
            // `/api/` and `/api` match the same requests; keep one form.
            while s.len() > 1 && s.ends_with('/') {
                s.pop();
            }
            // Request paths are normalized before matching, so such a prefix could never match.
            if s.len() > 1
                && s[1..]
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                p.push(
                    n.pos,
                    &m.child("path_prefix"),
                    format!("{s:?} has an empty, . or .. segment and could never match"),
                );
                return None;
            }
            s
        }
        None => "/".to_owned(),
    };
    m.finish(p);
    Some((host, prefix))
}

fn read_host(node: &Node, path: &str, p: &mut Problems) -> Option<HostMatch> {
    let raw = string(node, path, p)?;
    let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if h == "*" {
        return Some(HostMatch::Any);
    }
    let (suffix, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let is_ip = name.parse::<std::net::IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    if (!is_ip || suffix) && !name.split('.').all(valid_label) {
        p.push(
            node.pos,
            path,
            format!("bad host {raw:?}: write a name (shop.example.com), a wildcard (*.example.com) or \"*\""),
        );
        return None;
    }
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisTopology, SameSite, Secure, StoreConfig, Tracking};

    const BASE: &str = "listeners:\n  - { name: http, bind: \"127.0.0.1:8080\" }\nupstreams:\n  app:\n    servers: [ { url: \"http://127.0.0.1:8081\" } ]\nroutes:\n  - { name: app, match: { path_prefix: / }, upstream: app }\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        parse("gw.yaml", text, Path::new("/etc/sg"), &|n| {
            (n == "APP_PORT").then(|| "9001".to_owned())
        })
    }

    fn problems(text: &str) -> Vec<String> {
        load(text)
            .unwrap_err()
            .to_string()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn minimal_config_has_sensible_defaults() {
        let c = load(BASE).unwrap();
        assert_eq!(c.listeners[0].bind.port(), 8080);
        assert_eq!(c.routes[0].host, HostMatch::Any);
        assert_eq!(c.routes[0].max_body_bytes, c.limits.max_body_bytes);
        let u = c.upstream("app").unwrap();
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.servers[0].weight, 1);
    }

    #[test]
    fn without_a_sessions_section_no_route_has_sessions() {
        let c = load(BASE).unwrap();
        assert!(c.sessions.is_none());
        assert!(c.routes[0].session.is_none());
    }

    #[test]
    fn sessions_section_turns_sessions_on_for_routes_with_defaults() {
        let c = load(&format!("{BASE}sessions: {{}}\n")).unwrap();
        let s = c.sessions.unwrap();
        assert_eq!(s.cookie.name, "sg");
        assert_eq!(s.cookie.secure, Secure::Auto);
        assert_eq!(s.header_prefix, "x-session-");
        assert_eq!(s.idle_timeout, Duration::from_secs(1800));
        assert_eq!(
            s.store,
            StoreConfig::Memory {
                max_sessions: 1_000_000,
                max_bytes: super::sessions::DEFAULT_MEMORY_BYTES,
            }
        );
        assert_eq!(c.routes[0].session, Some(RouteSession::default()));
    }

    #[test]
    fn session_settings_are_read() {
        let text = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { headers: { user: X-Remote-User }, tracking: url, rewrite: [\"a[href]\", \"img[src]\"], share_with: [Account.example, \"b.example:8443\"] } }",
        ) + "sessions:\n  secret_file: secrets/key\n  store: { kind: memory, memory: { max_sessions: 500 } }\n  cookie: { name: shop, same_site: strict, secure: true, max_age: 1h }\n  idle_timeout: 10m\n  header_prefix: X-Sess-\n  url_parameter: sid\n  limits: { max_attributes: 8 }\n";
        let c = load(&text).unwrap();
        let s = c.sessions.unwrap();
        assert_eq!(s.secret_file.unwrap(), Path::new("/etc/sg/secrets/key"));
        assert_eq!(
            s.store,
            StoreConfig::Memory {
                max_sessions: 500,
                max_bytes: super::sessions::DEFAULT_MEMORY_BYTES
            }
        );
        assert_eq!(s.cookie.same_site, SameSite::Strict);
        assert_eq!(s.cookie.secure, Secure::Always);
        assert_eq!(s.cookie.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(s.header_prefix, "x-sess-");
        assert_eq!(s.url_parameter, "sid");
        assert_eq!(s.limits.max_attributes, 8);
        let route = c.routes[0].session.as_ref().unwrap();
        assert_eq!(
            route.headers,
            [("user".to_owned(), "x-remote-user".to_owned())]
        );
        assert_eq!(route.tracking, Some(Tracking::Url));
        let links = route.links.clone().unwrap();
        assert_eq!(links[1], ("img".to_owned(), "src".to_owned()));
        assert_eq!(route.share_with, ["account.example", "b.example:8443"]);
        assert_eq!(s.tracking, Tracking::Cookie);
    }

    #[test]
    fn a_redis_store_is_read_and_its_mistakes_reported() {
        let text = BASE.to_owned()
            + "sessions:\n  store:\n    kind: redis\n    redis: { url: \"redis://10.0.0.5:6379/2\", key_prefix: \"shop:\", timeout: 250ms, near_cache: { ttl: 0s } }\n";
        let s = load(&text).unwrap().sessions.unwrap();
        assert_eq!(
            s.store,
            StoreConfig::Redis {
                topology: RedisTopology::Standalone {
                    url: "redis://10.0.0.5:6379/2".to_owned()
                },
                key_prefix: "shop:".to_owned(),
                timeout: Duration::from_millis(250),
                near_ttl: Duration::ZERO,
                near_max: 100_000,
                serve_stale: false,
                ca: None,
            }
        );
        let errs =
            problems(&(BASE.to_owned() + "sessions:\n  store: { kind: redis }\n")).join("\n");
        assert!(errs.contains("needs a redis:"), "{errs}");
        let errs = problems(
            &(BASE.to_owned()
                + "sessions:\n  store: { kind: redis, redis: { url: \"http://x\" } }\n"),
        )
        .join("\n");
        assert!(errs.contains("sessions.store.redis.url"), "{errs}");
        let errs = problems(&(BASE.to_owned() + "sessions:\n  store: { kind: redis, redis: { url: \"redis://x\", on_error: serve_stale, near_cache: { ttl: 0s } } }\n")).join("\n");
        assert!(errs.contains("sessions.store.redis.on_error"), "{errs}");
    }

    #[test]
    fn a_redis_cluster_or_sentinel_is_read_and_exactly_one_place_is_asked_for() {
        let store = |redis: &str| {
            let text = BASE.to_owned()
                + &format!("sessions:\n  store:\n    kind: redis\n    redis: {redis}\n");
            match load(&text).map(|c| c.sessions.map(|s| s.store)) {
                Ok(Some(StoreConfig::Redis { topology, .. })) => Ok(topology),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(
            store("{ cluster: [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }"),
            Ok(RedisTopology::Cluster {
                nodes: vec![
                    "redis://10.0.0.1:7000".to_owned(),
                    "redis://10.0.0.2:7000".to_owned()
                ]
            })
        );
        assert_eq!(
            store(
                "{ sentinel: { master: shop, nodes: [\"redis://10.0.0.1:26379\"], username: gw, password: pw, db: 2, tls: true } }"
            ),
            Ok(RedisTopology::Sentinel {
                master: "shop".to_owned(),
                nodes: vec!["redis://10.0.0.1:26379".to_owned()],
                username: Some("gw".to_owned()),
                password: Some("pw".to_owned()),
                db: 2,
                tls: true,
            })
        );
        let err = store("{ url: \"redis://a\", cluster: [\"redis://b\"] }").unwrap_err();
        assert!(err.contains("not several"), "{err}");
        let err = store("{ key_prefix: x }").unwrap_err();
        assert!(err.contains("url, cluster or sentinel"), "{err}");
        let err = store("{ cluster: [] }").unwrap_err();
        assert!(err.contains("sessions.store.redis.cluster"), "{err}");
        let err = store("{ cluster: [\"http://b\"] }").unwrap_err();
        assert!(err.contains("sessions.store.redis.cluster[0]"), "{err}");
        let err = store("{ sentinel: { nodes: [\"redis://b\"] } }").unwrap_err();
        assert!(
            err.contains("sessions.store.redis.sentinel.master"),
            "{err}"
        );
    }

    #[test]
    fn the_cookie_store_is_read_and_url_tracking_or_share_with_is_rejected_with_it() {
        let sealed = "sessions:\n  store: { kind: cookie, cookie: { max_bytes: 2000 } }\n";
        let s = load(&(BASE.to_owned() + sealed)).unwrap().sessions.unwrap();
        assert_eq!(s.store, StoreConfig::Cookie { max_bytes: 2000 });
        let errs = problems(&(BASE.to_owned() + sealed + "  tracking: auto\n")).join("\n");
        assert!(
            errs.contains("sessions.tracking: the cookie store keeps the whole session"),
            "{errs}"
        );
        let route = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { tracking: url, share_with: [b.example] } }",
        );
        let errs = problems(&(route + sealed)).join("\n");
        assert!(
            errs.contains("routes[0].session: the cookie store"),
            "{errs}"
        );
        assert!(errs.contains("routes[0].session: share_with"), "{errs}");
        let errs = problems(
            &(BASE.to_owned()
                + "sessions:\n  store: { kind: cookie, cookie: { max_bytes: 9000 } }\n"),
        )
        .join("\n");
        assert!(errs.contains("sessions.store.cookie.max_bytes"), "{errs}");
    }

    #[test]
    fn route_session_can_be_off() {
        let text =
            BASE.replace("upstream: app }", "upstream: app, session: off }") + "sessions: {}\n";
        assert!(load(&text).unwrap().routes[0].session.is_none());
    }

    #[test]
    fn bad_session_settings_are_all_reported() {
        let text = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { headers: { User_Name: X-User }, rewrite: [\"a.href\"], share_with: [\"a b\"] } }",
        ) + "sessions:\n  cookie: { name: \"__Host-x\", same_site: none, secure: false }\n  tracking: sometimes\n  header_prefix: \"X Session\"\n  url_parameter: \"s id\"\n  store: { kind: etcd }\n";
        let errs = problems(&text);
        let joined = errs.join("\n");
        for needle in [
            "routes[0].session.headers.User_Name",
            "routes[0].session.rewrite[0]",
            "routes[0].session.share_with[0]",
            "sessions.cookie.name",
            "sessions.cookie: same_site: none needs a Secure cookie",
            "sessions.tracking",
            "sessions.header_prefix",
            "sessions.url_parameter",
            "sessions.store.kind",
        ] {
            assert!(joined.contains(needle), "{needle} missing from {joined}");
        }
    }

    #[test]
    fn a_route_session_without_the_sessions_section_is_an_error() {
        let text = BASE.replace(
            "upstream: app }",
            "upstream: app, session: { headers: {} } }",
        );
        let errs = problems(&text);
        assert!(
            errs[0].contains("routes[0].session: a route session needs"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_position_and_suggestion() {
        let text = BASE.replace("upstream: app }", "upstream: app, strip_prefx: true }");
        let errs = problems(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("gw.yaml:7:"), "{errs:?}");
        assert!(
            errs[0].contains("routes[0].strip_prefx: unknown key (did you mean `strip_prefix`?)")
        );
    }

    #[test]
    fn dangling_upstream_reference_is_reported() {
        let errs = problems(&BASE.replace("upstream: app }", "upstream: ap }"));
        assert!(
            errs[0].contains("routes[0].upstream: unknown upstream \"ap\" (defined: app)"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_duration_is_reported() {
        let text = BASE.replace("servers:", "connect_timeout: 5 parsecs\n    servers:");
        let errs = problems(&text);
        assert!(
            errs[0].contains("upstreams.app.connect_timeout: bad duration"),
            "{errs:?}"
        );
        let text = BASE.replace("servers:", "connect_timeout: 5\n    servers:");
        assert!(problems(&text)[0].contains("a duration needs a unit"));
    }

    #[test]
    fn bad_address_is_reported() {
        let errs = problems(&BASE.replace("127.0.0.1:8080", "localhost:eighty"));
        assert!(
            errs[0].contains("listeners[0].bind: bad address"),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_required_key_is_reported() {
        let errs = problems(&BASE.replace(", upstream: app", ""));
        assert!(
            errs[0].contains("routes[0].upstream: missing required key"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = BASE
            .replace("127.0.0.1:8080", "nowhere")
            .replace("servers:", "response_timeout: soon\n    servers:")
            .replace("upstream: app }", "upstream: nope }");
        let errs = problems(&text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        // Sorted by line.
        assert!(errs[0].starts_with("gw.yaml:2:"));
        assert!(errs[1].starts_with("gw.yaml:5:"));
        assert!(errs[2].starts_with("gw.yaml:8:"));
    }

    #[test]
    fn duplicate_listener_names_and_binds_are_reported() {
        let text = BASE.replace(
            "  - { name: http, bind: \"127.0.0.1:8080\" }\n",
            "  - { name: http, bind: \"127.0.0.1:8080\" }\n  - { name: http, bind: \"127.0.0.1:8080\" }\n",
        );
        let errs = problems(&text);
        assert!(
            errs.iter().any(|e| e.contains("duplicate listener name")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("already binds")), "{errs:?}");
    }

    #[test]
    fn server_url_must_be_http_without_path() {
        for bad in [
            "ftp://x:1",
            "http://x:1/app",
            "127.0.0.1:8081",
            "http://u:p@x:1",
        ] {
            let errs = problems(&BASE.replace("http://127.0.0.1:8081", bad));
            assert!(
                errs[0].contains("servers[0].url: bad URL"),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn upstream_needs_servers() {
        let errs = problems(&BASE.replace("[ { url: \"http://127.0.0.1:8081\" } ]", "[]"));
        assert!(errs[0].contains("at least one server"), "{errs:?}");
    }

    #[test]
    fn weight_must_be_positive() {
        let errs = problems(&BASE.replace("8081\" }", "8081\", weight: 0 }"));
        assert!(errs[0].contains("weight: 0 is out of range"), "{errs:?}");
    }

    #[test]
    fn path_prefix_must_start_with_slash() {
        let errs = problems(&BASE.replace("path_prefix: /", "path_prefix: api"));
        assert!(
            errs[0].contains("must be a path starting with /"),
            "{errs:?}"
        );
    }

    #[test]
    fn path_prefix_must_be_normalized() {
        for bad in ["/a//b", "/a/./b", "/a/../b"] {
            let errs = problems(&BASE.replace("path_prefix: /", &format!("path_prefix: {bad}")));
            assert!(errs[0].contains("could never match"), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn host_patterns_are_checked() {
        let errs = problems(&BASE.replace("{ path_prefix: / }", "{ host: \"shop.*\" }"));
        assert!(errs[0].contains("bad host"), "{errs:?}");
        let c = load(&BASE.replace("{ path_prefix: / }", "{ host: \"*.Example.com\" }")).unwrap();
        assert_eq!(c.routes[0].host, HostMatch::Suffix(".example.com".into()));
    }

    #[test]
    fn duplicate_routes_are_reported() {
        let text =
            format!("{BASE}  - {{ name: two, match: {{ path_prefix: / }}, upstream: app }}\n");
        let errs = problems(&text);
        assert!(
            errs[0].contains("already matches the same host and path prefix"),
            "{errs:?}"
        );
    }

    #[test]
    fn tls_listener_needs_certificates() {
        let text = BASE.replace(
            "bind: \"127.0.0.1:8080\" }",
            "bind: \"127.0.0.1:8443\", tls: { certificates: [] } }",
        );
        assert!(problems(&text)[0].contains("at least one certificate"));
    }

    #[test]
    fn certificate_paths_are_relative_to_the_config_file() {
        let text = BASE.replace(
            "bind: \"127.0.0.1:8080\" }",
            "bind: \"127.0.0.1:8443\", tls: { certificates: [ { cert: c.pem, key: k.pem } ] } }",
        );
        let c = load(&text).unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].cert, Path::new("/etc/sg/c.pem"));
    }

    #[test]
    fn trusted_proxies_must_be_networks() {
        let errs = problems(&format!(
            "{BASE}trusted_proxies: [ 10.0.0.0/8, 192.168.1.7, bogus ]\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("trusted_proxies[2]: bad network"),
            "{errs:?}"
        );
    }

    #[test]
    fn https_redirect_needs_a_port() {
        let errs = problems(&BASE.replace(
            "bind: \"127.0.0.1:8080\" }",
            "bind: \"127.0.0.1:8080\", redirect_to_https: true }",
        ));
        assert!(errs[0].contains("no HTTPS port"), "{errs:?}");
        let c = load(&BASE.replace(
            "bind: \"127.0.0.1:8080\" }",
            "bind: \"127.0.0.1:8080\", redirect_to_https: true, https_port: 443 }",
        ))
        .unwrap();
        assert_eq!(
            c.listeners[0].redirect_to_https,
            Some(HttpsRedirect { port: 443 })
        );
    }

    #[test]
    fn env_variables_fill_values_and_missing_ones_are_reported() {
        let c = load(&BASE.replace("8081", "${APP_PORT}")).unwrap();
        assert_eq!(c.upstreams[0].servers[0].authority.port_u16(), Some(9001));
        let errs = problems(&BASE.replace("8081", "${MISSING_PORT}"));
        assert!(errs[0].contains("MISSING_PORT is not set"), "{errs:?}");
    }

    #[test]
    fn upstream_tls_needs_an_https_server() {
        let text = BASE.replace("servers:", "tls: { ca: ca.pem }\n    servers:");
        assert!(problems(&text)[0].contains("no https:// server"));
        let c = load(&text.replace("http://127", "https://127")).unwrap();
        assert_eq!(
            c.upstreams[0].tls.ca.as_deref(),
            Some(Path::new("/etc/sg/ca.pem"))
        );
    }

    #[test]
    fn health_check_path_must_be_absolute() {
        let text = BASE.replace("servers:", "health: { path: healthz }\n    servers:");
        assert!(problems(&text)[0].contains("health.path"));
    }

    #[test]
    fn yaml_syntax_error_has_a_position() {
        let errs = problems("listeners: [\n");
        assert!(errs[0].starts_with("gw.yaml:"), "{errs:?}");
        assert!(!errs[0].starts_with("gw.yaml:0:0"), "{errs:?}");
    }
}
