//! `upstreams:` — the pools of backend servers routes send to: their servers, balancing,
//! timeouts, retries, passive and active health, connection reuse and TLS to backends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Problems;
use super::node::{Node, Pos, Value};
use super::reader::{
    MapReader, absolute_path, integer, list, non_empty, one_of, positive_duration, string,
};

/// A pool of backend servers.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name that routes refer to.
    pub name: String,
    /// The servers.
    pub servers: Vec<ServerConfig>,
    /// How a server is chosen.
    pub balance: Balance,
    /// Time to establish a TCP (and TLS) connection to a server (504 beyond it).
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head (504 beyond it).
    pub response_timeout: Duration,
    /// How many other servers to try when one fails (only when the retry is safe).
    pub retries: u32,
    /// Passive health: ejection after consecutive failures.
    pub passive: PassiveHealth,
    /// Active health checks, if configured.
    pub health: Option<ActiveHealth>,
    /// Idle keep-alive connections kept per server.
    pub max_idle_per_server: usize,
    /// How long an idle upstream connection is kept.
    pub idle_timeout: Duration,
    /// TLS settings for `https` servers.
    pub tls: UpstreamTls,
}

/// How the gateway verifies `https` backends.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates to trust instead of the public web roots (an internal CA).
    pub ca: Option<PathBuf>,
    /// The name to send (SNI) and verify, when it differs from the host in the server URL
    /// (e.g. servers listed by IP address).
    pub server_name: Option<String>,
    /// Where the `tls` section was written, for errors found when the CA file is loaded.
    pub pos: Pos,
    /// The section's key path.
    pub path: String,
}

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
    /// Relative share of requests.
    pub weight: u32,
    /// Its route name: with `balance: session_affinity` and a cookie jar, a request whose
    /// application cookie ends in `.NAME` goes here (Tomcat's `jvmRoute`).
    pub route: Option<String>,
}

/// How a server is picked from a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// The server with the fewest requests in flight, relative to its weight.
    LeastConnections,
    /// The same server for the same session (rendezvous hashing on the session key, so that
    /// every gateway picks alike), the next one by the hash while it is unavailable; round
    /// robin for requests without a session.
    SessionAffinity,
}

/// Passive health: a server that fails `max_failures` times in a row is ejected for `eject_for`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive connection failures or timeouts before ejection (0 disables).
    pub max_failures: u32,
    /// How long an ejected server gets no traffic.
    pub eject_for: Duration,
}

/// Active health checks: a `GET` of `path` on every server every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealth {
    /// Path to request; a 2xx or 3xx answer counts as healthy.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive failed checks before a server is marked down.
    pub fails: u32,
    /// Consecutive passed checks before a down server is marked up.
    pub passes: u32,
}

/// Reads the `upstreams:` mapping at `node`: pool name to settings (relative CA paths are
/// taken from `base`).
pub(super) fn read_upstreams(
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Vec<UpstreamConfig> {
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
    let route = m.get("route").and_then(|n| {
        let rpath = m.child("route");
        let r = non_empty(n, &rpath, p)?;
        let ok = r.len() <= 64
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            p.push(
                n.pos,
                &rpath,
                format!("{r:?}: a route is [A-Za-z0-9_-]{{1,64}}"),
            );
        }
        ok.then_some(r)
    });
    let upath = m.child("url");
    m.finish(p);
    let url_node = url?;
    let raw = string(url_node, &upath, p)?;
    match parse_server_url(&raw) {
        Ok((scheme, authority)) => Some(ServerConfig {
            scheme,
            authority,
            weight,
            route,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::testing::{BASE, load, problems};

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
}
