//! Active health checks: a `GET` of a path on every backend, every interval.
//!
//! A backend is marked down after `fails` failed checks in a row and up again after `passes`
//! good ones. Backends start up, so traffic flows before the first round completes; the first
//! round runs at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use http::{Method, Request, Uri, header};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::{Backend, Pool, RequestBody};
use crate::config::ActiveHealth;

/// The active-check view of one backend.
#[derive(Debug)]
pub(crate) struct ActiveState {
    up: AtomicBool,
    streak: AtomicU32,
}

impl Default for ActiveState {
    fn default() -> Self {
        ActiveState {
            up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
        }
    }
}

impl ActiveState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records one check; returns the new state when it changed.
    fn record(&self, ok: bool, cfg: &ActiveHealth) -> Option<bool> {
        let up = self.is_up();
        if ok == up {
            // The result agrees with the current state: any streak towards a change is over.
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if up { cfg.fails } else { cfg.passes };
        if n >= needed {
            self.up.store(ok, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            return Some(ok);
        }
        None
    }
}

pub(crate) fn spawn(pool: Arc<Pool>, cfg: ActiveHealth, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let mut round = tokio::task::JoinSet::new();
            for backend in pool.backends() {
                let (pool, backend, cfg) = (pool.clone(), backend.clone(), cfg.clone());
                round.spawn(async move {
                    let ok = check(&pool, &backend, &cfg).await;
                    if let Some(up) = backend.health.record(ok, &cfg) {
                        if up {
                            tracing::info!(upstream = %pool.name, backend = %backend.label, "backend passed health checks: up");
                        } else {
                            tracing::warn!(upstream = %pool.name, backend = %backend.label, path = %cfg.path, "backend failed health checks: down");
                        }
                    }
                });
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = async { while round.join_next().await.is_some() {} } => {}
            }
        }
    });
}

async fn check(pool: &Pool, backend: &Backend, cfg: &ActiveHealth) -> bool {
    let Ok(path) = Uri::try_from(cfg.path.as_str()) else {
        return false;
    };
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, backend.authority.as_str())
        .header(header::USER_AGENT, "sessiongate-health-check")
        .body(RequestBody::empty());
    let Ok(req) = req else {
        return false;
    };
    let attempt = async {
        let (resp, sender) = pool.exchange(backend, &mut Some(req)).await.ok()?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        // Read the (small) body to its end so the connection can be reused.
        if resp.into_body().collect().await.is_ok() {
            backend.idle.push(sender, backend.max_idle);
        }
        Some(ok)
    };
    matches!(
        tokio::time::timeout(cfg.timeout, attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> ActiveHealth {
        ActiveHealth {
            path: "/h".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fails: 2,
            passes: 1,
        }
    }

    #[test]
    fn backend_goes_down_after_consecutive_failures_and_up_after_a_pass() {
        let s = ActiveState::default();
        assert_eq!(s.record(false, &cfg()), None);
        assert!(s.is_up());
        assert_eq!(s.record(true, &cfg()), None); // streak broken
        assert_eq!(s.record(false, &cfg()), None);
        assert_eq!(s.record(false, &cfg()), Some(false));
        assert!(!s.is_up());
        assert_eq!(s.record(true, &cfg()), Some(true));
        assert!(s.is_up());
    }
}
