//! Sessions built from their configuration: the signing keys from the secret file, and the
//! store; on a reload, the previous store is kept while what it was built from is unchanged.

use std::sync::Arc;
use std::time::Duration;

use super::memory::{MemoryOptions, MemoryStore};
use super::redis::{RedisOptions, RedisStore};
use super::sealed::{SealedOptions, Sealer};
use super::server_store::ServerStore;
use super::token::SessionKeys;
use crate::config::{ConfigError, SessionLimits, SessionsConfig, StoreConfig};

/// Where sessions are kept: in a server store, or sealed in clients' cookies.
#[derive(Debug, Clone)]
pub(super) enum Kept {
    InStore(ServerStore),
    InCookies(Arc<Sealer>),
}

/// What sessions stand on: the keys that sign tokens, and where sessions are kept.
pub(super) struct Foundation {
    pub(super) keys: Arc<SessionKeys>,
    pub(super) kept: Kept,
    /// What the store was built from.
    pub(super) basis: StoreBasis,
    /// The keys (and a sealer) were made at start, not read from a secret file: only such
    /// keys are kept by a reload without a secret file.
    pub(super) made_at_start: bool,
    /// The previous server store, when a reload replaced it with another, or the one
    /// `store.migrate_from` names at start (with its window): its sessions move into the new
    /// one (see `migration`). Taken by the sessions built on this foundation.
    pub(super) migrate_from: Option<(ServerStore, Option<Duration>)>,
}

/// What a store is built from: a reload keeps the store while these stay the same.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoreBasis {
    store: StoreConfig,
    idle: Duration,
    absolute: Duration,
    limits: SessionLimits,
}

impl StoreBasis {
    fn of(config: &SessionsConfig) -> StoreBasis {
        StoreBasis {
            store: config.store.clone(),
            idle: config.idle_timeout,
            absolute: config.absolute_timeout,
            limits: config.limits,
        }
    }
}

impl Foundation {
    /// The keys (from the secret file, read again on every build) and the store for
    /// `config` (`source` names the configuration in errors). On a reload, the `previous`
    /// store is kept when what it was built from did not change (so sessions in the memory
    /// store survive), and so is a key made at start when there is no secret file.
    ///
    /// # Errors
    /// The secret file cannot be read or holds an unusable secret, or the store cannot be
    /// built (a Redis CA file): with its position.
    pub(super) fn build(
        config: &SessionsConfig,
        source: &str,
        previous: Option<&Foundation>,
    ) -> Result<Foundation, ConfigError> {
        let fail = |msg: String| {
            ConfigError::single(source, config.secret_pos, "sessions.secret_file", msg)
        };
        let secrets = match &config.secret_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                let lines: Vec<Vec<u8>> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.as_bytes().to_vec())
                    .collect();
                Some(lines)
            }
        };
        let basis = StoreBasis::of(config);
        // Keys kept across a reload are only ever ones made at start: a reload that drops the
        // secret file must not go on trusting the secrets that were in it.
        let keep_keys = secrets.is_none() && previous.is_some_and(|p| p.made_at_start);
        // The sealed store is made from the secrets: built again when they are read again,
        // or dropped.
        let kept = previous
            .filter(|p| p.basis == basis)
            .filter(|_| keep_keys || !matches!(config.store, StoreConfig::Cookie { .. }))
            .map(|p| p.kept.clone());
        let mut migrate_from = None;
        let kept = match kept {
            Some(kept) => kept,
            None => {
                let built = build_store(config, secrets.as_ref()).map_err(|msg| {
                    ConfigError::single(source, config.store_pos, "sessions.store", msg)
                })?;
                // A server store replaced by another: its sessions move (the sealed cookie
                // has none to move, and none can move into it).
                // Not when only its tuning changed (timeouts, limits, the near cache): the
                // new store reads the same data.
                if let (Some(prev), Some(Kept::InStore(old)), Kept::InStore(_)) =
                    (previous, previous.map(|p| &p.kept), &built)
                    && !prev.basis.store.same_data(&config.store)
                {
                    tracing::info!(
                        from = old.kind(),
                        "session store settings changed: the sessions move to the new store"
                    );
                    migrate_from = Some((old.clone(), None));
                }
                built
            }
        };
        // At start: sessions move from the Redis store `migrate_from` names.
        if let (None, Some((from, window)), Kept::InStore(_)) =
            (previous, &config.migrate_from, &kept)
        {
            let old = SessionsConfig {
                store: from.clone(),
                ..config.clone()
            };
            if let Kept::InStore(store) = build_store(&old, secrets.as_ref()).map_err(|msg| {
                ConfigError::single(source, config.store_pos, "sessions.store.migrate_from", msg)
            })? {
                tracing::info!(window = ?window, "sessions move from store.migrate_from");
                migrate_from = Some((store, Some(*window)));
            }
        }
        let made_at_start = secrets.is_none();
        let keys = match (secrets, previous) {
            (Some(s), _) => Arc::new(SessionKeys::from_secrets(&s).map_err(fail)?),
            // Without a secret file the key was made at start: a reload keeps it.
            (None, Some(p)) if keep_keys => p.keys.clone(),
            (None, _) => {
                tracing::warn!(
                    "no sessions.secret_file: using a key made at start; sessions will not \
                     survive a restart nor be shared with other gateways"
                );
                Arc::new(SessionKeys::generate().map_err(fail)?)
            }
        };
        Ok(Foundation {
            keys,
            kept,
            basis,
            made_at_start,
            migrate_from,
        })
    }
}

/// Where a configuration keeps sessions (Redis connects on first use); the sealed-cookie
/// store keys from the session `secrets`.
fn build_store(config: &SessionsConfig, secrets: Option<&Vec<Vec<u8>>>) -> Result<Kept, String> {
    let store = match &config.store {
        StoreConfig::Cookie { max_bytes } => {
            let sealer = Sealer::new(&SealedOptions {
                secrets: secrets.cloned(),
                max_bytes: usize::try_from(*max_bytes).unwrap_or(usize::MAX),
                limits: config.limits,
                idle_timeout: config.idle_timeout,
                absolute_timeout: config.absolute_timeout,
            })
            .map_err(|e| e.to_string())?;
            Kept::InCookies(Arc::new(sealer))
        }
        StoreConfig::Memory {
            max_sessions,
            max_bytes,
        } => Kept::InStore(ServerStore::Memory(Box::new(MemoryStore::new(
            MemoryOptions {
                max_sessions: *max_sessions,
                max_bytes: *max_bytes,
                idle_timeout: config.idle_timeout,
                absolute_timeout: config.absolute_timeout,
                limits: config.limits,
                subject: config.subject.clone(),
            },
        )))),
        StoreConfig::Redis {
            topology,
            key_prefix,
            timeout,
            near_ttl,
            near_max,
            serve_stale,
            ca,
        } => Kept::InStore(ServerStore::Redis(Box::new(
            RedisStore::new(RedisOptions {
                topology: topology.clone(),
                ca_pem: match ca {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        format!("cannot read the Redis CA file {}: {e}", path.display())
                    })?),
                    None => None,
                },
                key_prefix: key_prefix.clone(),
                idle_timeout: config.idle_timeout,
                absolute_timeout: config.absolute_timeout,
                limits: config.limits,
                op_timeout: *timeout,
                near_ttl: *near_ttl,
                near_max: *near_max,
                serve_stale: *serve_stale,
                subject: config.subject.clone(),
            })
            .map_err(|e| e.to_string())?,
        ))),
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::token::Token;

    #[test]
    fn a_reload_that_drops_the_secret_file_stops_trusting_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("session.keys");
        std::fs::write(&file, "a-secret-that-leaked-0123456789abcdef0123\n").unwrap();
        let with_file = SessionsConfig {
            secret_file: Some(file),
            ..SessionsConfig::default()
        };
        let first = Foundation::build(&with_file, "gw.yaml", None).unwrap();
        assert!(!first.made_at_start);
        let token = Token::generate(&first.keys).unwrap().expose();
        // Reloaded without the file: a key made now, not the file's.
        let without = SessionsConfig::default();
        let second = Foundation::build(&without, "gw.yaml", Some(&first)).unwrap();
        assert!(second.made_at_start);
        assert!(Token::parse(&token, &second.keys).is_err());
        // Reloaded again without a file: the key made at start is kept (its sessions live).
        let token = Token::generate(&second.keys).unwrap().expose();
        let third = Foundation::build(&without, "gw.yaml", Some(&second)).unwrap();
        assert!(Token::parse(&token, &third.keys).is_ok());
    }
}
