//! The gateway's configuration: `gateway.yaml` read, checked and turned into typed settings.
//!
//! Only this module reads YAML. Reading happens in two steps (see `node` and `parse`) so that a
//! bad file is reported with *every* problem at once, each as `FILE:LINE:COL: key.path: message`.
//! The shipped `gateway.yaml` documents every key and its default.

mod admin;
mod error;
mod limits;
mod logs;
mod node;
mod parse;
mod reader;
mod sessions;
mod timeouts;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::AdminConfig;
pub use error::{ConfigError, Problem};
pub use limits::Limits;
pub use logs::{LogFormat, Logs};
pub use node::Pos;
pub use sessions::{
    CookieConfig, DEFAULT_LINKS, RedisTopology, RouteSession, SameSite, Secure, SessionLimits,
    SessionsConfig, StoreConfig, Tracking, valid_attribute_name,
};
pub use timeouts::Timeouts;

/// A complete, validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration came from (as given), used as the prefix of error messages.
    pub source: String,
    /// Where the client-facing listeners bind.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (health and readiness), if configured.
    pub admin: Option<AdminConfig>,
    /// Peers whose `X-Forwarded-*` headers are believed; everyone else's are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Limits that protect the gateway from oversized or too many requests.
    pub limits: Limits,
    /// Client-side timeouts.
    pub timeouts: Timeouts,
    /// Upstream pools by name, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order (matching picks the most specific, not the first).
    pub routes: Vec<RouteConfig>,
    /// Session settings; `None` when the file has no `sessions:` section (no sessions).
    pub sessions: Option<SessionsConfig>,
    /// How the gateway logs.
    pub logs: Logs,
}

impl Config {
    /// The admin API's bearer token, if `admin.token_file` is set: the file's first line, which
    /// must be too long to guess. Read at start and at every reload.
    ///
    /// # Errors
    /// The file cannot be read, or its token is shorter than 16 characters.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(admin) = &self.admin else {
            return Ok(None);
        };
        let Some(file) = &admin.token_file else {
            return Ok(None);
        };
        let fail = |msg: String| {
            ConfigError::single(&self.source, admin.token_pos, "admin.token_file", msg)
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < 16 {
            return Err(fail(format!(
                "the token in {} must be at least 16 characters",
                file.display()
            )));
        }
        Ok(Some(token))
    }

    /// Reads and validates a configuration file, expanding `${ENV}` from the process environment.
    ///
    /// Relative paths in the file (certificates, keys) are relative to the file's directory.
    ///
    /// # Errors
    /// Every problem found, with its position; an unreadable file is a single problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(&file, Pos::default(), "", format!("cannot read file: {e}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_str(&file, &text, base, &|name| std::env::var(name).ok())
    }

    /// Reads and validates configuration text. `file` names it in messages, `base_dir` anchors
    /// relative paths, and `env` supplies `${NAME}` values.
    ///
    /// # Errors
    /// Every problem found, with its position.
    pub fn from_str(
        file: &str,
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        parse::parse(file, text, base_dir, env)
    }

    /// The upstream pool with this name.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

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

/// A route: which requests go to which upstream pool.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name, used in logs.
    pub name: String,
    /// Host to match.
    pub host: HostMatch,
    /// Path prefix to match, on segment boundaries (`/api` matches `/api/x`, not `/apix`).
    pub path_prefix: String,
    /// The upstream pool's name.
    pub upstream: String,
    /// Remove `path_prefix` from the path sent upstream.
    pub strip_prefix: bool,
    /// Request body limit for this route (defaults to `limits.max_body_bytes`).
    pub max_body_bytes: u64,
    /// Protocols a client may upgrade to on this route (lower case; `websocket` by default).
    /// Any other `Upgrade` is dropped, and the request goes on as a plain one.
    pub upgrades: Vec<String>,
    /// The route's sessions: `None` when off (`session: off`, or no `sessions:` section).
    pub session: Option<RouteSession>,
}

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host (`"*"`).
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// Any subdomain of this suffix: `*.example.com` is stored as `.example.com`.
    Suffix(String),
}
