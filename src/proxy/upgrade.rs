//! Protocol upgrades (WebSocket): once the backend answers `101`, both connections become one
//! byte tunnel.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ConnGuard;
use crate::idle::Activity;

/// Joins the client's and the backend's upgraded connections, copying both ways until either
/// side closes, nothing moves for `idle`, or a forced shutdown. The client connection's guard
/// (its place under `max_connections`) is held for as long as the tunnel lives.
pub(crate) fn spawn_tunnel(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    guard: ConnGuard,
    tasks: &TaskTracker,
    force: CancellationToken,
) {
    tasks.spawn(async move {
        let _guard = guard;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let activity = Activity::new();
        let mut down = activity.track(TokioIo::new(down));
        let mut up = activity.track(TokioIo::new(up));
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            _ = activity.silent_for(idle) => {
                tracing::debug!(?idle, "upgraded connection idle: closed");
            }
            _ = force.cancelled() => {}
        }
    });
}
