//! `admin:` — the admin listener (health, readiness, metrics, reloads, sessions) and its
//! token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::Problems;
use super::node::{Node, Pos};
use super::reader::{MapReader, non_empty, socket_addr};

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to bind; keep it private (loopback or an internal network).
    pub bind: SocketAddr,
    /// File holding the bearer token of the session admin API; without it the API is off.
    pub token_file: Option<PathBuf>,
    /// Where `token_file` was written, for errors found when it is read.
    pub token_pos: Pos,
}

/// Reads the `admin:` section at `node` (a relative `token_file` is taken from `base`).
pub(super) fn read(node: &Node, path: &str, base: &Path, p: &mut Problems) -> Option<AdminConfig> {
    let mut m = MapReader::new(node, path, p)?;
    let bind = m
        .require("bind", node.pos, p)
        .and_then(|n| socket_addr(n, &m.child("bind"), p));
    let token = m.get("token_file");
    let token_file = token
        .and_then(|n| non_empty(n, &m.child("token_file"), p))
        .map(|s| base.join(s));
    m.finish(p);
    Some(AdminConfig {
        bind: bind?,
        token_file,
        token_pos: token.map_or(node.pos, |n| n.pos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse_yaml;

    #[test]
    fn admin_needs_a_bind_and_takes_its_token_file_from_the_config_directory() {
        let node = parse_yaml("{ bind: \"127.0.0.1:9900\", token_file: admin.token }").unwrap();
        let mut p = Problems::default();
        let a = read(&node, "admin", Path::new("/etc/sg"), &mut p).unwrap();
        assert_eq!(a.bind, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(a.token_file, Some(PathBuf::from("/etc/sg/admin.token")));
        let node = parse_yaml("{ token_file: admin.token }").unwrap();
        let mut p = Problems::default();
        assert!(read(&node, "admin", Path::new("/etc/sg"), &mut p).is_none());
        let text = p.into_error("t.yaml").to_string();
        assert!(text.contains("admin.bind"), "{text}");
    }
}
