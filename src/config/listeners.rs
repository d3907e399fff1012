//! `listeners:` — where clients connect: addresses, TLS termination, HSTS, the plain
//! listener's redirect to HTTPS and the PROXY protocol.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Problems;
use super::node::{Node, Pos};
use super::reader::{
    MapReader, boolean, duration, integer, list, non_empty, one_of, positive_duration, socket_addr,
};

/// A client-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Unique name, used in logs.
    pub name: String,
    /// Address to bind (port 0 picks a free port).
    pub bind: SocketAddr,
    /// TLS termination settings; `None` for plain HTTP.
    pub tls: Option<TlsConfig>,
    /// On a plain listener: answer every request with a 308 to the same URL over HTTPS.
    pub redirect_to_https: Option<HttpsRedirect>,
    /// Read a PROXY protocol header (v1 or v2) from peers in `trusted_proxies`: the client's
    /// address survives an L4 balancer. Any other peer that sends one is refused.
    pub proxy_protocol: bool,
}

/// Where a plain listener redirects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpsRedirect {
    /// The HTTPS port to put in `Location` (omitted when 443).
    pub port: u16,
}

/// TLS settings of a listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificates, chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// How long a client may take to finish the handshake.
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security` to add to every response, if any.
    pub hsts: Option<Hsts>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    /// PEM file with the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// Where the entry was written, for errors found when the files are loaded.
    pub pos: Pos,
    /// The entry's key path, for errors found when the files are loaded.
    pub path: String,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2
    Tls12,
    /// TLS 1.3
    Tls13,
}

/// HTTP Strict Transport Security settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// `max-age`.
    pub max_age: Duration,
    /// Adds `includeSubDomains`.
    pub include_subdomains: bool,
    /// Adds `preload`.
    pub preload: bool,
}

impl Hsts {
    /// The header value.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// Reads the `listeners:` list at `node` (relative certificate paths are taken from `base`).
pub(super) fn read_listeners(
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Vec<ListenerConfig> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{BASE, load, problems};

    #[test]
    fn bad_address_is_reported() {
        let errs = problems(&BASE.replace("127.0.0.1:8080", "localhost:eighty"));
        assert!(
            errs[0].contains("listeners[0].bind: bad address"),
            "{errs:?}"
        );
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
}
