//! A client socket as the connection's watchdog sees it: when a byte last moved either way,
//! and since when a write has found the socket full.
//!
//! It wraps the TCP stream itself, under TLS: a TLS layer takes writes into its own buffer
//! while the socket takes nothing, so above it a stalled client would look busy.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::Conn;

/// A socket whose traffic is noted in its [`Conn`].
#[derive(Debug)]
pub struct Wire<T> {
    io: T,
    conn: Arc<Conn>,
}

impl<T> Wire<T> {
    /// Wraps `io`, noting its traffic in `conn`.
    pub fn new(io: T, conn: Arc<Conn>) -> Self {
        Wire { io, conn }
    }

    /// The socket.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.conn.write_went();
                if self.conn.is_h2() {
                    self.conn.moved();
                    // Larger than the answers to control frames (a PING ACK is 17 bytes, 39
                    // in a TLS record): responses are flowing, the client's next PING is free.
                    if *n > 64 {
                        self.conn.data_went();
                    }
                }
            }
            Poll::Pending => self.conn.write_blocked(),
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Wire<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before && self.conn.is_h2() {
            self.conn.moved();
            self.conn.socket_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Wire<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if r.is_pending() {
            self.conn.write_blocked();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
