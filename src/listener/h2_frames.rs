//! The HTTP/2 frames a client sends, as far as limits need them: only each frame's 9-byte
//! header is read, payloads are skipped (hyper's `h2` decodes them).
//!
//! Two things `h2` does not bound are bounded here:
//! - **slow headers**: a frame must be in within the header-read timeout of its first
//!   byte, and a header block (HEADERS and its CONTINUATIONs) within that of its first
//!   frame's first byte; a DATA frame's payload is the request body's, with its own timeout;
//! - **control floods**: SETTINGS, PING, PRIORITY, empty DATA and unknown frames cost the
//!   gateway work (an ACK each for the first two) and carry no request. A client that reads
//!   the ACKs is never cut by `h2`; here each connection has a budget of them that refills
//!   with time, and a connection past it is closed. A PING while responses flow is free.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::{Conn, End};
use crate::idle::now_ms;

/// The client connection preface (`PRI * HTTP/2.0...`), passed over.
const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
/// Frame types this side knows (the rest are extensions, ignored by `h2`).
const LAST_KNOWN: u8 = CONTINUATION;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// Control frames a connection may send at once, and how many more it earns a second. A
/// browser sends a handful per connection; a flood is thousands a second.
const CONTROL_BURST: u32 = 200;
const CONTROL_PER_SEC: u64 = 20;

/// A stream of HTTP/2 frames from a client, watched for the limits above.
#[derive(Debug)]
pub struct Frames<T> {
    io: T,
    conn: Arc<Conn>,
    preface_left: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    payload_left: u32,
    kind: u8,
    flags: u8,
    /// When the frame being read began (0: between frames, or in a DATA payload).
    frame_since: u64,
    /// When the open header block began (0: none open).
    block_since: u64,
    /// What the connection's watchdog was last told.
    published: u64,
    /// Whether a DATA payload is being read (last told).
    in_data: bool,
    control_left: u32,
    refilled_ms: u64,
}

impl<T> Frames<T> {
    /// Watches the frames read from `io` (which starts with the client preface).
    pub fn new(io: T, conn: Arc<Conn>) -> Self {
        // Bytes read before (the TLS handshake) are not frames.
        conn.plaintext_read();
        let mut frames = Frames {
            io,
            conn,
            preface_left: PREFACE_LEN,
            header: [0; HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            kind: 0,
            flags: 0,
            // The preface is timed as a frame is, from the start.
            frame_since: now_ms().max(1),
            block_since: 0,
            published: 0,
            in_data: false,
            control_left: CONTROL_BURST,
            refilled_ms: now_ms(),
        };
        frames.publish();
        frames
    }

    /// Takes in bytes the client sent; an error if they break a limit.
    fn saw(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if !bytes.is_empty() {
            self.conn.plaintext_read();
        }
        let mut now = None;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let k = self.preface_left.min(bytes.len());
                self.preface_left -= k;
                bytes = &bytes[k..];
                if self.preface_left == 0 {
                    self.frame_since = 0;
                }
                continue;
            }
            if self.payload_left > 0 {
                let k = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= u32::try_from(k).unwrap_or(u32::MAX);
                bytes = &bytes[k..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            if self.header_len == 0 {
                self.frame_since = *now.get_or_insert_with(|| now_ms().max(1));
            }
            let k = (HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + k].copy_from_slice(&bytes[..k]);
            self.header_len += k;
            bytes = &bytes[k..];
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                self.frame_header(*now.get_or_insert_with(now_ms))?;
            }
        }
        self.publish();
        Ok(())
    }

    fn frame_header(&mut self, now: u64) -> io::Result<()> {
        let h = self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        (self.kind, self.flags) = (h[3], h[4]);
        // A PING ACK nobody asked for costs a log line. A PING while responses flow is free
        // (gRPC's ping-strike rule: its clients ping once a round trip to size windows).
        // WINDOW_UPDATE and RST_STREAM are not counted: a download sends a WINDOW_UPDATE
        // per few KiB it reads (Go's client), and resets have their own budget.
        let control = match self.kind {
            SETTINGS => self.flags & ACK == 0,
            PING => !self.conn.take_data_sent(),
            PRIORITY => true,
            // Empty, or little but padding.
            DATA => {
                self.flags & END_STREAM == 0
                    && (len == 0 || (self.flags & PADDED != 0 && len <= 256))
            }
            k => k > LAST_KNOWN,
        };
        if control {
            self.spend(now)?;
        }
        if self.kind == HEADERS && self.block_since == 0 {
            self.block_since = self.frame_since;
        }
        self.payload_left = len;
        if len == 0 {
            self.frame_done();
        } else if self.kind == DATA {
            // A request body's pace is the body timeout's business.
            self.frame_since = 0;
        }
        Ok(())
    }

    fn frame_done(&mut self) {
        if matches!(self.kind, HEADERS | CONTINUATION) && self.flags & END_HEADERS != 0 {
            self.block_since = 0;
        }
        self.frame_since = 0;
    }

    /// Spends one control frame of the budget, refilled by the time since the last.
    fn spend(&mut self, now: u64) -> io::Result<()> {
        let earned = now.saturating_sub(self.refilled_ms) * CONTROL_PER_SEC / 1000;
        if earned > 0 {
            let left = u64::from(self.control_left) + earned;
            self.control_left = u32::try_from(left.min(u64::from(CONTROL_BURST))).unwrap_or(0);
            // Only the time the tokens took: the remainder counts toward the next.
            self.refilled_ms += earned * 1000 / CONTROL_PER_SEC;
        }
        match self.control_left.checked_sub(1) {
            Some(left) => {
                self.control_left = left;
                Ok(())
            }
            None => {
                self.conn.end(End::Close("control_frames"));
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 control frame flood",
                ))
            }
        }
    }

    /// Tells the watchdog when what is being read began (the earlier of the frame and the
    /// header block), or that nothing is.
    fn publish(&mut self) {
        let mark = match (self.frame_since, self.block_since) {
            (0, b) => b,
            (f, 0) => f,
            (f, b) => f.min(b),
        };
        if mark != self.published {
            self.published = mark;
            self.conn.frame_pending(mark);
        }
        let in_data = self.kind == DATA && self.payload_left > 0;
        if in_data != self.in_data {
            self.in_data = in_data;
            self.conn.in_body(in_data);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Frames<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            let this = &mut *self;
            this.saw(&buf.filled()[before..])?;
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Frames<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn frame(kind: u8, flags: u8, len: u32) -> Vec<u8> {
        let l = len.to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, flags, 0, 0, 0, 1];
        f.resize(HEADER_LEN + len as usize, 0);
        f
    }

    fn frames() -> (Frames<()>, Arc<Conn>) {
        let conn = Conn::new(CancellationToken::new());
        let mut f = Frames::new((), conn.clone());
        f.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        (f, conn)
    }

    #[test]
    fn a_header_block_is_pending_from_its_first_byte_until_end_headers() {
        let (mut f, _) = frames();
        let headers = frame(HEADERS, 0, 10);
        f.saw(&headers[..1]).unwrap();
        assert_ne!(f.published, 0, "a frame's first byte starts the clock");
        f.saw(&headers[1..]).unwrap();
        assert_ne!(
            f.published, 0,
            "HEADERS without END_HEADERS leaves the block open"
        );
        let mut cont = frame(CONTINUATION, END_HEADERS, 5);
        f.saw(&cont[..12]).unwrap();
        assert_ne!(f.published, 0);
        f.saw(&cont.split_off(12)).unwrap();
        assert_eq!(f.published, 0, "the block is complete");
        // A DATA frame's payload is the body's business.
        let data = frame(DATA, 0, 100);
        f.saw(&data[..20]).unwrap();
        assert_eq!(f.published, 0);
    }

    #[test]
    fn a_flood_of_control_frames_is_cut_and_a_few_pass() {
        let (mut f, _) = frames();
        for _ in 0..50 {
            f.saw(&frame(SETTINGS, 0, 0)).unwrap();
            f.saw(&frame(SETTINGS, ACK, 0)).unwrap();
            f.saw(&frame(0x8, 0, 4)).unwrap();
        }
        let mut cut = false;
        for _ in 0..1000 {
            if f.saw(&frame(PING, 0, 8)).is_err() {
                cut = true;
                break;
            }
        }
        assert!(cut, "a thousand PINGs at once are a flood");
    }
}
