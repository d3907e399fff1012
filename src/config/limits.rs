//! `limits:` — what clients may send, and how many may connect at once.

use super::error::Problems;
use super::node::Node;
use super::reader::{MapReader, integer, size};

/// Limits on what clients may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections served at once; past it a new connection takes the place of one
    /// with no request in service, or waits in the accept queue.
    pub max_connections: usize,
    /// Total size of a request's header section (431 beyond it).
    pub max_header_bytes: usize,
    /// Request body size (413 beyond it); routes may override.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Reads the `limits:` section at `node`.
pub(super) fn read(node: &Node, path: &str, p: &mut Problems) -> Option<Limits> {
    let mut m = MapReader::new(node, path, p)?;
    let d = Limits::default();
    let max_connections = m
        .get("max_connections")
        .and_then(|n| integer(n, &m.child("max_connections"), 1, 10_000_000, p))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(d.max_connections);
    let max_header_bytes = m
        .get("max_header_bytes")
        .and_then(|n| bounded_size(n, &m.child("max_header_bytes"), 1024, 1 << 20, p))
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(d.max_header_bytes);
    let max_body_bytes = m
        .get("max_body_bytes")
        .and_then(|n| size(n, &m.child("max_body_bytes"), p))
        .unwrap_or(d.max_body_bytes);
    m.finish(p);
    Some(Limits {
        max_connections,
        max_header_bytes,
        max_body_bytes,
    })
}

fn bounded_size(node: &Node, path: &str, min: u64, max: u64, p: &mut Problems) -> Option<u64> {
    let v = size(node, path, p)?;
    if v < min || v > max {
        p.push(
            node.pos,
            path,
            format!("must be between {min} and {max} bytes"),
        );
        return None;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse_yaml;

    fn read_text(text: &str) -> (Option<Limits>, Vec<String>) {
        let node = parse_yaml(text).unwrap();
        let mut p = Problems::default();
        let l = read(&node, "limits", &mut p);
        let problems = if p.is_empty() {
            Vec::new()
        } else {
            let text = p.into_error("t.yaml").to_string();
            text.lines().map(str::to_owned).collect()
        };
        (l, problems)
    }

    #[test]
    fn limits_default_and_refuse_a_header_budget_out_of_bounds() {
        let (l, problems) = read_text("{ max_connections: 5 }");
        let l = l.unwrap();
        assert_eq!(l.max_connections, 5);
        assert_eq!(l.max_header_bytes, Limits::default().max_header_bytes);
        assert!(problems.is_empty());
        let (_, problems) = read_text("{ max_header_bytes: 10 }");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("between 1024"), "{problems:?}");
    }
}
