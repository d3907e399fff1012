//! `logs:` — the log format, and whether requests get access lines.

use super::error::Problems;
use super::node::Node;
use super::reader::{MapReader, boolean, one_of};

/// Logging settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logs {
    /// One line of text per event, or one JSON object per line.
    pub format: LogFormat,
    /// Write an access-log line per request (target `access`).
    pub access: bool,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            format: LogFormat::Text,
            access: true,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text, for people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Reads the `logs:` section at `node`.
pub(super) fn read(node: &Node, path: &str, p: &mut Problems) -> Option<Logs> {
    let mut m = MapReader::new(node, path, p)?;
    let d = Logs::default();
    let format = m
        .get("format")
        .and_then(|n| one_of(n, &m.child("format"), &["text", "json"], p))
        .map_or(d.format, |f| match f {
            "json" => LogFormat::Json,
            _ => LogFormat::Text,
        });
    let access = m
        .get("access")
        .and_then(|n| boolean(n, &m.child("access"), p))
        .unwrap_or(d.access);
    m.finish(p);
    Some(Logs { format, access })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse_yaml;

    #[test]
    fn logs_default_to_text_with_access_lines_and_refuse_an_unknown_format() {
        let node = parse_yaml("{ format: json }").unwrap();
        let mut p = Problems::default();
        let l = read(&node, "logs", &mut p).unwrap();
        assert_eq!(
            l,
            Logs {
                format: LogFormat::Json,
                access: true
            }
        );
        assert!(p.is_empty());
        let node = parse_yaml("{ format: xml }").unwrap();
        let mut p = Problems::default();
        read(&node, "logs", &mut p);
        let text = p.into_error("t.yaml").to_string();
        assert!(text.contains("logs.format"), "{text}");
    }
}
