//! `logs:` — the log format, and where requests' access lines go, in which format.

use std::path::{Path, PathBuf};

use super::error::Problems;
use super::node::{Node, Pos, Value};
use super::reader::{MapReader, boolean, non_empty, one_of};

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logs {
    /// One line of text per event, or one JSON object per line.
    pub format: LogFormat,
    /// Write an access-log line per request (target `access`).
    pub access: bool,
    /// The access log's file (`None`: stderr).
    pub access_file: Option<PathBuf>,
    /// The access lines' format.
    pub access_format: AccessLineFormat,
    /// Where `access` was written (for a file that cannot be opened).
    pub access_pos: Pos,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            format: LogFormat::Text,
            access: true,
            access_file: None,
            access_format: AccessLineFormat::Text,
            access_pos: Pos::default(),
        }
    }
}

/// How access lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLineFormat {
    /// As the gateway's own text lines.
    Text,
    /// One JSON object per line.
    Json,
    /// nginx's and Apache's `combined`.
    Combined,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text, for people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Reads the `logs:` section at `node` (a relative access-log file is under `base`).
pub(super) fn read(node: &Node, path: &str, base: &Path, p: &mut Problems) -> Option<Logs> {
    let mut m = MapReader::new(node, path, p)?;
    let d = Logs::default();
    let format = m
        .get("format")
        .and_then(|n| one_of(n, &m.child("format"), &["text", "json"], p))
        .map_or(d.format, |f| match f {
            "json" => LogFormat::Json,
            _ => LogFormat::Text,
        });
    let same = match format {
        LogFormat::Text => AccessLineFormat::Text,
        LogFormat::Json => AccessLineFormat::Json,
    };
    let mut logs = Logs {
        format,
        access_format: same,
        ..d
    };
    if let Some(n) = m.get("access") {
        let apath = m.child("access");
        logs.access_pos = n.pos;
        if let Value::Map(_) = n.value {
            let mut a = MapReader::new(n, &apath, p)?;
            logs.access_file = a
                .get("file")
                .and_then(|f| non_empty(f, &a.child("file"), p))
                .map(|f| base.join(f));
            logs.access_format = a
                .get("format")
                .and_then(|f| one_of(f, &a.child("format"), &["text", "json", "combined"], p))
                .map_or(same, |f| match f {
                    "json" => AccessLineFormat::Json,
                    "combined" => AccessLineFormat::Combined,
                    _ => AccessLineFormat::Text,
                });
            a.finish(p);
        } else if let Some(on) = boolean(n, &apath, p) {
            logs.access = on;
        }
    }
    m.finish(p);
    Some(logs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse_yaml;

    #[test]
    fn logs_default_to_text_with_access_lines_and_refuse_an_unknown_format() {
        let node = parse_yaml("{ format: json }").unwrap();
        let mut p = Problems::default();
        let l = read(&node, "logs", Path::new("/etc/sg"), &mut p).unwrap();
        assert_eq!((l.format, l.access), (LogFormat::Json, true));
        // Access lines follow the log's format, on stderr, unless told otherwise.
        assert_eq!(
            (l.access_format, l.access_file),
            (AccessLineFormat::Json, None)
        );
        assert!(p.is_empty());
        let node = parse_yaml("{ format: xml }").unwrap();
        let mut p = Problems::default();
        read(&node, "logs", Path::new("/etc/sg"), &mut p);
        let text = p.into_error("t.yaml").to_string();
        assert!(text.contains("logs.format"), "{text}");
    }

    #[test]
    fn an_access_log_can_name_a_file_and_a_format() {
        let node = parse_yaml("{ access: { file: logs/access.log, format: combined } }").unwrap();
        let mut p = Problems::default();
        let l = read(&node, "logs", Path::new("/etc/sg"), &mut p).unwrap();
        assert!(p.is_empty());
        assert!(l.access);
        assert_eq!(
            l.access_file.as_deref(),
            Some(Path::new("/etc/sg/logs/access.log"))
        );
        assert_eq!(l.access_format, AccessLineFormat::Combined);
        let node = parse_yaml("{ access: { format: apache, colour: true } }").unwrap();
        let mut p = Problems::default();
        read(&node, "logs", Path::new("/etc/sg"), &mut p);
        let text = p.into_error("t.yaml").to_string();
        assert!(text.contains("logs.access.format"), "{text}");
        assert!(text.contains("logs.access.colour"), "{text}");
    }
}
