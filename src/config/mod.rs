//! The gateway's configuration: `gateway.yaml` read, checked and turned into typed settings.
//!
//! Only this module reads YAML. Reading happens in two steps (see `node` and `parse`) so that a
//! bad file is reported with *every* problem at once, each as `FILE:LINE:COL: key.path: message`.
//! The shipped `gateway.yaml` documents every key and its default.

mod admin;
mod error;
mod limits;
mod listeners;
mod logs;
mod node;
mod parse;
mod reader;
mod routes;
mod rules;
mod sessions;
#[cfg(test)]
mod testing;
mod timeouts;
mod trusted;
mod upstreams;

use std::path::Path;

pub use admin::AdminConfig;
pub use error::{ConfigError, Problem};
pub use limits::Limits;
pub use listeners::{
    CertificateConfig, Hsts, HttpsRedirect, ListenerConfig, TlsConfig, TlsVersion,
};
pub use logs::{AccessLineFormat, LogFormat, Logs};
pub use node::Pos;
pub use routes::{HostMatch, RouteConfig};
pub use sessions::{
    BackendCookies, CookieConfig, DEFAULT_LINKS, JarSettings, OnLimit, RedisTopology, RouteSession,
    SameSite, Secure, SessionLimits, SessionsConfig, StoreConfig, Tracking, valid_attribute_name,
};
pub use timeouts::Timeouts;
pub use upstreams::{
    ActiveHealth, Balance, PassiveHealth, ServerConfig, UpstreamConfig, UpstreamTls,
};

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
