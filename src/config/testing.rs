//! For tests that read a whole file: the smallest valid configuration, to vary, and its
//! reading.

use std::path::Path;

use super::{Config, ConfigError};

/// One listener, one upstream and one route: the smallest valid file. Tests replace a piece
/// of it, so its text is part of their meaning (line 7 is the route).
pub(super) const BASE: &str = "listeners:\n  - { name: http, bind: \"127.0.0.1:8080\" }\nupstreams:\n  app:\n    servers: [ { url: \"http://127.0.0.1:8081\" } ]\nroutes:\n  - { name: app, match: { path_prefix: / }, upstream: app }\n";

/// Reads `text` as `gw.yaml` in `/etc/sg`, with only `APP_PORT` (9001) in the environment.
pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str("gw.yaml", text, Path::new("/etc/sg"), &|n| {
        (n == "APP_PORT").then(|| "9001".to_owned())
    })
}

/// The problems `text` is reported with, one line each; panics if it reads.
pub(super) fn problems(text: &str) -> Vec<String> {
    load(text)
        .unwrap_err()
        .to_string()
        .lines()
        .map(str::to_owned)
        .collect()
}
