//! Protocol upgrades (WebSocket): once the backend answers `101`, both connections become one
//! byte tunnel. A tunnel opened with a session closes when the session ends (see
//! `session::SessionWatch`): a WebSocket gets a close frame first (1008, policy violation),
//! sent where the backend's frames leave a boundary, then both connections are cut.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ConnGuard;
use crate::idle::Activity;
use crate::session::SessionWatch;

/// A WebSocket close frame from the server (unmasked): code 1008, "session ended".
const CLOSE_1008: &[u8] = b"\x88\x0f\x03\xf0session ended";

/// How long a tunnel whose session ended waits for the backend to finish the frame it is in
/// the middle of, so that the close frame lands on a boundary (else the connection is cut
/// without one).
const FINISH_FRAME: Duration = Duration::from_millis(300);

/// How long the client may go on sending once the backend closed its side (a WebSocket's
/// close handshake: the client answers the backend's close frame).
const LINGER: Duration = Duration::from_millis(500);

/// The longest the close of a tunnel whose session ended may take, frame and close frame
/// included: a client that does not read is cut, not waited for.
const CLOSE_WITHIN: Duration = Duration::from_millis(600);

/// How the backend-to-client copy ended.
enum Relayed {
    /// The backend closed (or the client is done): the tunnel winds down as it would.
    Closed,
    /// The session ended; `clean` when no write to the client was cut short (a close frame
    /// may follow).
    SessionEnded { clean: bool },
}

/// What the tunnel is.
pub(crate) struct Tunnel {
    /// The client's side.
    pub downstream: OnUpgrade,
    /// The backend's side.
    pub upstream: OnUpgrade,
    /// It speaks WebSocket (a close frame can be sent).
    pub websocket: bool,
    /// The session it was opened with, if any.
    pub session: Option<SessionWatch>,
}

/// Joins the client's and the backend's upgraded connections, copying both ways until either
/// side closes, nothing moves for `idle`, the session it was opened with ends, or a forced
/// shutdown. The client connection's guard (its place under `max_connections`) is held for
/// as long as the tunnel lives.
pub(crate) fn spawn_tunnel(
    tunnel: Tunnel,
    idle: Duration,
    guard: ConnGuard,
    tasks: &TaskTracker,
    force: CancellationToken,
) {
    tasks.spawn(async move {
        let _guard = guard;
        let (down, up) = match tokio::try_join!(tunnel.downstream, tunnel.upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let activity = Activity::new();
        let down = activity.track(TokioIo::new(down));
        let up = activity.track(TokioIo::new(up));
        let (mut down_read, mut down_write) = tokio::io::split(down);
        let (mut up_read, mut up_write) = tokio::io::split(up);
        let mut frames = Frames::default();
        let ended = {
            let session_ended = async {
                match &tunnel.session {
                    Some(watch) => watch.ended().await,
                    None => std::future::pending().await,
                }
            };
            let to_client = relay(
                &mut up_read,
                &mut down_write,
                tunnel.websocket.then_some(&mut frames),
                session_ended,
            );
            let to_backend = async {
                let r = tokio::io::copy(&mut down_read, &mut up_write).await;
                let _ = up_write.shutdown().await;
                r
            };
            let (mut to_client, mut to_backend) =
                (std::pin::pin!(to_client), std::pin::pin!(to_backend));
            let mut client_done = false;
            loop {
                tokio::select! {
                    r = &mut to_client => break match r {
                        Ok(Relayed::Closed) if !client_done => {
                            // The backend is done sending: the client's last words (the
                            // answer to a WebSocket close) still go to it, for a moment.
                            tokio::select! {
                                _ = tokio::time::timeout(LINGER, &mut to_backend) => {}
                                () = force.cancelled() => {}
                            }
                            Relayed::Closed
                        }
                        Ok(ended) => ended,
                        Err(e) => {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                            Relayed::Closed
                        }
                    },
                    // The client is done sending; the backend's last words still go out.
                    r = &mut to_backend, if !client_done => {
                        client_done = true;
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                            break Relayed::Closed;
                        }
                    }
                    () = activity.silent_for(idle) => {
                        tracing::debug!(?idle, "upgraded connection idle: closed");
                        break Relayed::Closed;
                    }
                    () = force.cancelled() => break Relayed::Closed,
                }
            }
        };
        if let Relayed::SessionEnded { clean } = ended {
            tracing::info!("the session of an open tunnel ended: closed");
            let close = async {
                if tunnel.websocket && clean {
                    close_at_boundary(&mut up_read, &mut down_write, &mut frames).await;
                }
                let _ = down_write.shutdown().await;
            };
            tokio::select! {
                _ = tokio::time::timeout(CLOSE_WITHIN, close) => {}
                () = force.cancelled() => {}
            }
        }
    });
}

/// Copies the backend's bytes to the client (noting WebSocket frame boundaries in `frames`)
/// until the backend closes or `ended` resolves. `ended` is heeded while a write waits too (a
/// client that stops reading must not keep its tunnel past its session): then the write is
/// cut short, and no close frame can follow.
async fn relay<R, W>(
    from: &mut R,
    to: &mut W,
    mut frames: Option<&mut Frames>,
    ended: impl Future<Output = ()>,
) -> std::io::Result<Relayed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ended = std::pin::pin!(ended);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            () = &mut ended => return Ok(Relayed::SessionEnded { clean: true }),
            n = from.read(&mut buf) => n?,
        };
        if n == 0 {
            tokio::select! {
                biased;
                () = &mut ended => return Ok(Relayed::SessionEnded { clean: false }),
                r = to.shutdown() => r?,
            }
            return Ok(Relayed::Closed);
        }
        if let Some(f) = frames.as_deref_mut() {
            f.feed(&buf[..n], false);
        }
        // Flushed at once: under TLS a write can leave records in rustls's buffer, and the
        // backend may say nothing more for a long while.
        let write = async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        };
        tokio::select! {
            biased;
            () = &mut ended => return Ok(Relayed::SessionEnded { clean: false }),
            r = write => r?,
        }
    }
}

/// Finishes the frame the backend is in the middle of (for at most [`FINISH_FRAME`]), then
/// sends the close frame; without a boundary in time, nothing is sent (the connection is cut).
async fn close_at_boundary<R, W>(from: &mut R, to: &mut W, frames: &mut Frames)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let finish = async {
        let mut buf = vec![0u8; 16 * 1024];
        while !frames.at_boundary() {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            let upto = frames.feed(&buf[..n], true);
            to.write_all(&buf[..upto]).await?;
        }
        Ok::<_, std::io::Error>(true)
    };
    if let Ok(Ok(true)) = tokio::time::timeout(FINISH_FRAME, finish).await {
        let _ = to.write_all(CLOSE_1008).await;
        let _ = to.flush().await;
    }
}

/// Where a stream of WebSocket frames stands: in a frame's header (`have` bytes of it read),
/// or `payload_left` bytes into its payload; at a boundary when neither.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    have: usize,
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Notes `bytes` as sent; with `stop`, stops at the first boundary. How many it took.
    fn feed(&mut self, bytes: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if stop && self.at_boundary() {
                return i;
            }
            if self.payload_left > 0 {
                let room = usize::try_from(self.payload_left).unwrap_or(usize::MAX);
                let take = room.min(bytes.len() - i);
                self.payload_left -= take as u64;
                i += take;
                continue;
            }
            self.header[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if let Some(len) = payload_len(&self.header[..self.have]) {
                self.have = 0;
                self.payload_left = len;
            }
        }
        i
    }
}

/// The payload length a complete frame header declares; `None` while it is incomplete
/// (RFC 6455 §5.2: 2 bytes, then 2 or 8 of extended length, then 4 of mask if masked).
fn payload_len(h: &[u8]) -> Option<u64> {
    let b1 = *h.get(1)?;
    let (ext, mask) = (
        match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        },
        if b1 & 0x80 != 0 { 4 } else { 0 },
    );
    if h.len() < 2 + ext + mask {
        return None;
    }
    Some(match ext {
        2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        8 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        _ => u64::from(b1 & 0x7f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_found_through_any_split() {
        // A text frame of 5 bytes, one of 300 (16-bit length), and an empty ping.
        let mut stream = vec![0x81, 5];
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        stream.extend_from_slice(&[0x89, 0]);
        let ends = [7, 7 + 4 + 300, stream.len()];
        for chunk in [1, 2, 3, 64, 1000] {
            let mut f = Frames::default();
            let mut at = 0;
            let mut boundaries = Vec::new();
            for piece in stream.chunks(chunk) {
                for b in piece {
                    f.feed(std::slice::from_ref(b), false);
                    at += 1;
                    if f.at_boundary() {
                        boundaries.push(at);
                    }
                }
            }
            assert_eq!(boundaries, ends, "chunks of {chunk}");
        }
        // Stopping at the boundary takes exactly the rest of the frame.
        let mut f = Frames::default();
        f.feed(&stream[..3], false);
        assert_eq!(f.feed(&stream[3..], true), 4);
        assert!(f.at_boundary());
        assert_eq!(
            payload_len(&[0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(1 << 32)
        );
        assert_eq!(CLOSE_1008.len(), 2 + 0x0f);
    }
}
