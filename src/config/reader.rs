//! Typed reading of configuration nodes, collecting problems instead of stopping at the first.
//!
//! Each reader takes the node, its key path (for messages) and the problem list; it returns
//! `None` after recording a problem, so callers simply skip what could not be read.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::Problems;
use super::node::{Node, Pos, Value};

/// A mapping being read: remembers which keys were asked for, so that every other key can be
/// reported as unknown (a typo in a config key must never be silently ignored).
pub(crate) struct MapReader<'a> {
    path: String,
    entries: &'a [(Node, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'a> MapReader<'a> {
    /// Starts reading `node` as a mapping; records a problem and returns `None` if it is not one.
    pub fn new(node: &'a Node, path: &str, p: &mut Problems) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(MapReader {
                path: path.to_owned(),
                entries,
                used: vec![false; entries.len()],
                known: Vec::new(),
            }),
            // An empty section (`admin:` with nothing under it) reads as an empty mapping.
            Value::Null => Some(MapReader {
                path: path.to_owned(),
                entries: &[],
                used: Vec::new(),
                known: Vec::new(),
            }),
            other => {
                p.push(
                    node.pos,
                    path,
                    format!("expected a mapping, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// The key path of a child key.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value under `key`, if present (a `null` value counts as absent).
    pub fn get(&mut self, key: &'static str) -> Option<&'a Node> {
        self.known.push(key);
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if matches!(&k.value, Value::Str(s) if s == key) {
                self.used[i] = true;
                return match v.value {
                    Value::Null => None,
                    _ => Some(v),
                };
            }
        }
        None
    }

    /// The value under a required `key`; records "missing" at `pos` (the mapping) if absent.
    pub fn require(&mut self, key: &'static str, pos: Pos, p: &mut Problems) -> Option<&'a Node> {
        let v = self.get(key);
        if v.is_none() {
            p.push(pos, &self.child(key), "missing required key");
        }
        v
    }

    /// Reports every key that was never asked for.
    pub fn finish(self, p: &mut Problems) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let name = match &k.value {
                Value::Str(s) => s.clone(),
                other => format!("<{}>", other.kind()),
            };
            let mut known = self.known.clone();
            known.sort_unstable();
            known.dedup();
            let hint = match closest(&name, &known) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None => format!(" (expected one of: {})", known.join(", ")),
            };
            p.push(k.pos, &self.child(&name), format!("unknown key{hint}"));
        }
    }
}

/// The known key closest to a misspelt one, if it is plausibly a typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reads a string. Numbers and booleans are refused: a quoted value is what the user meant.
pub(crate) fn string(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        other => {
            p.push(
                node.pos,
                path,
                format!("expected a string, found {}", other.kind()),
            );
            None
        }
    }
}

/// Reads a non-empty string.
pub(crate) fn non_empty(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let s = string(node, path, p)?;
    if s.trim().is_empty() {
        p.push(node.pos, path, "must not be empty");
        return None;
    }
    Some(s)
}

/// Reads a boolean (`true`/`false`; also as a string, since `${ENV}` yields strings).
pub(crate) fn boolean(node: &Node, path: &str, p: &mut Problems) -> Option<bool> {
    match &node.value {
        Value::Bool(b) => Some(*b),
        Value::Str(s) if s == "true" => Some(true),
        Value::Str(s) if s == "false" => Some(false),
        other => {
            p.push(
                node.pos,
                path,
                format!("expected true or false, found {}", other.kind()),
            );
            None
        }
    }
}

/// Reads an integer in `min..=max` (also from a string, since `${ENV}` yields strings).
pub(crate) fn integer(
    node: &Node,
    path: &str,
    min: u64,
    max: u64,
    p: &mut Problems,
) -> Option<u64> {
    let n = match &node.value {
        Value::Int(n) => Some(*n),
        Value::Str(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= i128::from(min) && n <= i128::from(max) => u64::try_from(n).ok(),
        Some(n) => {
            p.push(
                node.pos,
                path,
                format!("{n} is out of range ({min}..={max})"),
            );
            None
        }
        None => {
            p.push(
                node.pos,
                path,
                format!("expected an integer, found {}", node.value.kind()),
            );
            None
        }
    }
}

/// Reads a duration such as `500ms`, `30s`, `5m`, `12h`, `1d`.
pub(crate) fn duration(node: &Node, path: &str, p: &mut Problems) -> Option<Duration> {
    match &node.value {
        Value::Str(s) => match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                p.push(
                    node.pos,
                    path,
                    format!("bad duration {s:?}: {e} (write e.g. 500ms, 30s, 5m, 12h)"),
                );
                None
            }
        },
        Value::Int(0) => Some(Duration::ZERO),
        Value::Int(n) => {
            p.push(
                node.pos,
                path,
                format!("a duration needs a unit: write {n}s or {n}ms"),
            );
            None
        }
        other => {
            p.push(
                node.pos,
                path,
                format!("expected a duration such as 30s, found {}", other.kind()),
            );
            None
        }
    }
}

/// Reads a positive duration.
pub(crate) fn positive_duration(node: &Node, path: &str, p: &mut Problems) -> Option<Duration> {
    let d = duration(node, path, p)?;
    if d.is_zero() {
        p.push(node.pos, path, "must be longer than zero");
        return None;
    }
    Some(d)
}

/// Reads a size in bytes: an integer, or a string with a unit (`512KiB`, `10MB`, `1GiB`).
pub(crate) fn size(node: &Node, path: &str, p: &mut Problems) -> Option<u64> {
    match &node.value {
        Value::Int(n) if *n >= 0 => u64::try_from(*n).ok(),
        Value::Str(s) => match parse_size(s) {
            Some(n) => Some(n),
            None => {
                p.push(
                    node.pos,
                    path,
                    format!("bad size {s:?} (write bytes, or e.g. 64KiB, 10MiB, 1GB)"),
                );
                None
            }
        },
        other => {
            p.push(
                node.pos,
                path,
                format!("expected a size such as 10MiB, found {}", other.kind()),
            );
            None
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Reads a socket address such as `127.0.0.1:8080` or `[::1]:8443`.
pub(crate) fn socket_addr(node: &Node, path: &str, p: &mut Problems) -> Option<SocketAddr> {
    let s = string(node, path, p)?;
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                node.pos,
                path,
                format!("bad address {s:?}: write IP:PORT, e.g. 0.0.0.0:8080 or [::]:8443"),
            );
            None
        }
    }
}

/// Reads one of a fixed set of words.
pub(crate) fn one_of<'c>(
    node: &Node,
    path: &str,
    choices: &[&'c str],
    p: &mut Problems,
) -> Option<&'c str> {
    let s = string(node, path, p)?;
    match choices.iter().find(|c| **c == s) {
        Some(c) => Some(c),
        None => {
            p.push(
                node.pos,
                path,
                format!(
                    "unknown value {s:?} (expected one of: {})",
                    choices.join(", ")
                ),
            );
            None
        }
    }
}

/// Reads a list; a single value is not accepted as a list of one (say what you mean).
pub(crate) fn list<'a>(node: &'a Node, path: &str, p: &mut Problems) -> Option<&'a [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        other => {
            p.push(
                node.pos,
                path,
                format!("expected a list, found {}", other.kind()),
            );
            None
        }
    }
}

/// Reads a URL path starting with `/` (a health check's path, a route's path prefix).
pub(crate) fn absolute_path(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
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

/// Replaces `${NAME}` and `${NAME:-default}` in every string of the tree; `$$` is a literal `$`.
/// Runs on the tree (not the raw text) so that positions in error messages stay exact.
pub(crate) fn interpolate_env(
    node: &mut Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) {
    match &mut node.value {
        Value::Str(s) if s.contains('$') => match expand(s, env) {
            Ok(v) => *s = v,
            Err(msg) => p.push(node.pos, path, msg),
        },
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_env(item, &format!("{path}[{i}]"), env, p);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let child = match &k.value {
                    Value::Str(name) if path.is_empty() => name.clone(),
                    Value::Str(name) => format!("{path}.{name}"),
                    _ => path.to_owned(),
                };
                interpolate_env(v, &child, env, p);
            }
        }
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated ${...} (write $$ for a literal $)".to_owned())?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "bad environment variable name {name:?} in ${{...}}"
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "9000".to_owned())
    }

    #[test]
    fn env_variables_are_substituted() {
        assert_eq!(expand("0.0.0.0:${PORT}", &env).unwrap(), "0.0.0.0:9000");
        assert_eq!(expand("${NOPE:-x}-${PORT}", &env).unwrap(), "x-9000");
        assert_eq!(expand("cost $$5 $x", &env).unwrap(), "cost $5 $x");
    }

    #[test]
    fn unset_env_variable_without_default_is_an_error() {
        assert!(
            expand("${NOPE}", &env)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(expand("${PORT", &env).is_err());
    }

    #[test]
    fn sizes_accept_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(closest("upstrem", &["upstream", "match"]), Some("upstream"));
        assert_eq!(closest("zzz", &["upstream", "match"]), None);
    }
}
