//! Protocol upgrades (WebSocket): once the backend answers `101`, both connections become one
//! byte tunnel.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Joins the client's and the backend's upgraded connections, copying both ways until either
/// side closes, or until a forced shutdown.
pub(crate) fn spawn_tunnel(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    tasks: &TaskTracker,
    force: CancellationToken,
) {
    tasks.spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            _ = force.cancelled() => {}
        }
    });
}
