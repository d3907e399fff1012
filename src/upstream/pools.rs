//! The pools of one configuration: started from its upstreams, and handed on to the next
//! configuration (a reload) where an upstream's settings did not change, with their idle
//! connections and health.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Pool;
use crate::config::{
    ActiveHealth, Balance, ConfigError, PassiveHealth, ServerConfig, UpstreamConfig,
};

/// What makes a pool: an upstream's settings, without their positions in the file. Two equal
/// settings make the same pool, unless a CA file is named (it is read again: it may have
/// changed on disk).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    name: String,
    servers: Vec<ServerConfig>,
    balance: Balance,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: u32,
    passive: PassiveHealth,
    health: Option<ActiveHealth>,
    max_idle_per_server: usize,
    idle_timeout: Duration,
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

impl PoolSettings {
    /// The settings of upstream `u`.
    pub fn of(u: &UpstreamConfig) -> PoolSettings {
        PoolSettings {
            name: u.name.clone(),
            servers: u.servers.clone(),
            balance: u.balance,
            connect_timeout: u.connect_timeout,
            response_timeout: u.response_timeout,
            retries: u.retries,
            passive: u.passive.clone(),
            health: u.health.clone(),
            max_idle_per_server: u.max_idle_per_server,
            idle_timeout: u.idle_timeout,
            ca: u.tls.ca.clone(),
            server_name: u.tls.server_name.clone(),
        }
    }

    /// Whether a pool made from `self` serves `other` as it is.
    fn reusable_for(&self, other: &PoolSettings) -> bool {
        self.ca.is_none() && self == other
    }
}

/// The pools of one configuration, in the order of its upstreams (a route names its pool by
/// that index).
#[derive(Debug, Default)]
pub struct Pools {
    pools: Vec<Arc<Pool>>,
    /// Per pool: what it was made from, and what stops its health checks.
    origins: Vec<(PoolSettings, CancellationToken)>,
}

impl Pools {
    /// The pools of `upstreams`: those of `previous` whose settings did not change, and new
    /// ones (their health checks stop with `stop`).
    ///
    /// # Errors
    /// A pool that cannot be made (a CA file that cannot be read); the health checks started
    /// here stop again, so a refused reload leaves nothing running.
    pub fn start(
        upstreams: &[UpstreamConfig],
        file: &str,
        previous: Option<&Pools>,
        stop: &CancellationToken,
    ) -> Result<Pools, ConfigError> {
        let mut pools = Pools::default();
        let mut started: Vec<CancellationToken> = Vec::new();
        for u in upstreams {
            let settings = PoolSettings::of(u);
            let (pool, health) = match previous.and_then(|p| p.unchanged(&settings)) {
                Some(kept) => kept,
                None => {
                    let health = stop.child_token();
                    match Pool::start(u, file, &health) {
                        Ok(pool) => {
                            started.push(health.clone());
                            (pool, health)
                        }
                        Err(e) => {
                            started.iter().for_each(CancellationToken::cancel);
                            return Err(e);
                        }
                    }
                }
            };
            pools.pools.push(pool);
            pools.origins.push((settings, health));
        }
        Ok(pools)
    }

    /// The pool for `settings`, and its health checks' stop, if one was made from the same.
    fn unchanged(&self, settings: &PoolSettings) -> Option<(Arc<Pool>, CancellationToken)> {
        let i = self
            .origins
            .iter()
            .position(|(o, _)| o.reusable_for(settings))?;
        Some((self.pools.get(i)?.clone(), self.origins.get(i)?.1.clone()))
    }

    /// Stops the health checks of the pools that `successor` did not keep (requests still in
    /// flight on them finish).
    pub fn retire(&self, successor: &Pools) {
        for (pool, (_, health)) in self.pools.iter().zip(&self.origins) {
            if !successor.pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
                health.cancel();
            }
        }
    }

    /// The pool at `index` (a route's upstream).
    pub fn get(&self, index: usize) -> Option<&Arc<Pool>> {
        self.pools.get(index)
    }

    /// Every pool, in the order of the upstreams.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.iter()
    }
}
