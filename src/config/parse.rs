//! The whole file: YAML to a node tree, `${ENV}` filled in, each section read by its own
//! reader, then the rules across sections (`rules.rs`), collecting every problem on the way.

use std::path::Path;

use super::error::{ConfigError, Problems};
use super::node::{Node, parse_yaml};
use super::reader::{MapReader, interpolate_env};
use super::{
    Config, admin, limits, listeners, logs, routes, rules, sessions, timeouts, trusted, upstreams,
};

/// Reads `text` into a [`Config`]: `file` names it in messages, `base_dir` anchors relative
/// paths, `env` fills `${NAME}`. Fails with every problem found.
pub(super) fn parse(
    file: &str,
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut root =
        parse_yaml(text).map_err(|(pos, msg)| ConfigError::single(file, pos, "", msg))?;
    let mut p = Problems::default();
    interpolate_env(&mut root, "", env, &mut p);
    let config = read_config(file, &root, base_dir, &mut p);
    match config {
        Some(c) if p.is_empty() => Ok(c),
        _ => Err(p.into_error(file)),
    }
}

fn read_config(file: &str, root: &Node, base: &Path, p: &mut Problems) -> Option<Config> {
    let mut m = MapReader::new(root, "", p)?;
    let listeners = m.require("listeners", root.pos, p);
    let admin = m
        .get("admin")
        .and_then(|n| admin::read(n, "admin", base, p));
    let trusted_proxies = m
        .get("trusted_proxies")
        .map(|n| trusted::read(n, "trusted_proxies", p))
        .unwrap_or_default();
    let limits = m
        .get("limits")
        .and_then(|n| limits::read(n, "limits", p))
        .unwrap_or_default();
    let timeouts = m
        .get("timeouts")
        .and_then(|n| timeouts::read(n, "timeouts", p))
        .unwrap_or_default();
    let upstreams = m
        .require("upstreams", root.pos, p)
        .map(|n| upstreams::read_upstreams(n, "upstreams", base, p))
        .unwrap_or_default();
    let routes_node = m.require("routes", root.pos, p);
    let sessions = m
        .get("sessions")
        .and_then(|n| sessions::read_sessions(n, "sessions", base, p));
    let logs = m
        .get("logs")
        .and_then(|n| logs::read(n, "logs", base, p))
        .unwrap_or_default();
    m.finish(p);

    let listeners = listeners
        .map(|n| listeners::read_listeners(n, "listeners", base, p))
        .unwrap_or_default();
    // Routes default their body limit and sessions from the sections read above.
    let (routes, route_refs) = routes_node
        .map(|n| routes::read_routes(n, "routes", &limits, sessions.is_some(), p))
        .unwrap_or_default();

    let config = Config {
        source: file.to_owned(),
        listeners,
        admin,
        trusted_proxies,
        limits,
        timeouts,
        upstreams,
        routes,
        sessions,
        logs,
    };
    rules::check(&config, &route_refs, root.pos, p);
    Some(config)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, load, problems};
    use crate::config::{Balance, HostMatch};

    #[test]
    fn minimal_config_has_sensible_defaults() {
        let c = load(BASE).unwrap();
        assert_eq!(c.listeners[0].bind.port(), 8080);
        assert_eq!(c.routes[0].host, HostMatch::Any);
        assert_eq!(c.routes[0].max_body_bytes, c.limits.max_body_bytes);
        let u = c.upstream("app").unwrap();
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.servers[0].weight, 1);
    }

    #[test]
    fn unknown_key_is_reported_with_position_and_suggestion() {
        let text = BASE.replace("upstream: app }", "upstream: app, strip_prefx: true }");
        let errs = problems(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("gw.yaml:7:"), "{errs:?}");
        assert!(
            errs[0].contains("routes[0].strip_prefx: unknown key (did you mean `strip_prefix`?)")
        );
    }

    #[test]
    fn bad_duration_is_reported() {
        let text = BASE.replace("servers:", "connect_timeout: 5 parsecs\n    servers:");
        let errs = problems(&text);
        assert!(
            errs[0].contains("upstreams.app.connect_timeout: bad duration"),
            "{errs:?}"
        );
        let text = BASE.replace("servers:", "connect_timeout: 5\n    servers:");
        assert!(problems(&text)[0].contains("a duration needs a unit"));
    }

    #[test]
    fn missing_required_key_is_reported() {
        let errs = problems(&BASE.replace(", upstream: app", ""));
        assert!(
            errs[0].contains("routes[0].upstream: missing required key"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = BASE
            .replace("127.0.0.1:8080", "nowhere")
            .replace("servers:", "response_timeout: soon\n    servers:")
            .replace("upstream: app }", "upstream: nope }");
        let errs = problems(&text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        // Sorted by line.
        assert!(errs[0].starts_with("gw.yaml:2:"));
        assert!(errs[1].starts_with("gw.yaml:5:"));
        assert!(errs[2].starts_with("gw.yaml:8:"));
    }

    #[test]
    fn env_variables_fill_values_and_missing_ones_are_reported() {
        let c = load(&BASE.replace("8081", "${APP_PORT}")).unwrap();
        assert_eq!(c.upstreams[0].servers[0].authority.port_u16(), Some(9001));
        let errs = problems(&BASE.replace("8081", "${MISSING_PORT}"));
        assert!(errs[0].contains("MISSING_PORT is not set"), "{errs:?}");
    }

    #[test]
    fn yaml_syntax_error_has_a_position() {
        let errs = problems("listeners: [\n");
        assert!(errs[0].starts_with("gw.yaml:"), "{errs:?}");
        assert!(!errs[0].starts_with("gw.yaml:0:0"), "{errs:?}");
    }
}
