//! A small HTTP/2 client that writes frames as a hostile client would: a 9-byte header and a
//! payload, header blocks as literal HPACK. It reads frame headers back (no HPACK decoding).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1).
fn int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields (without indexing, new names, no Huffman).
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0x00);
        int(&mut out, 0, 7, n.len());
        out.extend_from_slice(n.as_bytes());
        int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The fields of a GET of `path` on `authority`.
pub fn get<'a>(authority: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
    ]
}

/// GET frames for `n` streams from `first` (odd ids, in order), and the next free id.
pub fn gets(first: u32, n: u32) -> (Vec<u8>, u32) {
    let mut batch = Vec::new();
    let mut id = first;
    for _ in 0..n {
        batch.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &block(&get("gw.test", "/")),
        ));
        id += 2;
    }
    (batch, id)
}

/// Reads frames from `rd` until the connection ends: whether a GOAWAY came first.
pub fn read_until_closed(mut rd: tokio::net::tcp::OwnedReadHalf) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let mut goaway = false;
        let mut h = [0u8; 9];
        loop {
            if rd.read_exact(&mut h).await.is_err() {
                return goaway;
            }
            goaway |= h[3] == GOAWAY;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let mut p = vec![0u8; len];
            if rd.read_exact(&mut p).await.is_err() {
                return goaway;
            }
        }
    })
}

/// A frame header read back.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)]
pub struct Seen {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub len: usize,
}

/// A raw HTTP/2 connection.
pub struct H2 {
    pub tcp: TcpStream,
}

impl H2 {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> H2 {
        H2::connect_with(addr, &[]).await
    }

    /// Connects and sends the preface and SETTINGS with `settings` (id, value).
    pub async fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> H2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut payload = Vec::new();
        for (id, v) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&v.to_be_bytes());
        }
        let mut first = PREFACE.to_vec();
        first.extend(frame(SETTINGS, 0, 0, &payload));
        tcp.write_all(&first).await.unwrap();
        H2 { tcp }
    }

    /// Writes bytes; `false` once the gateway has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    /// Sends a GET of `path` on `stream` (END_STREAM, END_HEADERS).
    pub async fn get(&mut self, stream: u32, path: &str) -> bool {
        let f = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &block(&get("gw.test", path)),
        );
        self.send(&f).await
    }

    /// The next frame (its payload read and dropped), or `None` at the end of the
    /// connection or after `wait` without one.
    pub async fn next(&mut self, wait: Duration) -> Option<(Seen, Vec<u8>)> {
        let mut h = [0u8; 9];
        match tokio::time::timeout(wait, self.tcp.read_exact(&mut h)).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0u8; len];
        match tokio::time::timeout(wait, self.tcp.read_exact(&mut payload)).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
        Some((
            Seen {
                kind: h[3],
                flags: h[4],
                stream,
                len,
            },
            payload,
        ))
    }

    /// Reads frames until the connection ends (or `limit` passes): whether it ended, and
    /// whether a GOAWAY came first.
    pub async fn until_closed(&mut self, limit: Duration) -> (bool, bool) {
        let end = tokio::time::Instant::now() + limit;
        let mut goaway = false;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return (false, goaway);
            }
            let mut h = [0u8; 9];
            match tokio::time::timeout(left, self.tcp.read_exact(&mut h)).await {
                Err(_) => return (false, goaway),
                Ok(Err(_)) => return (true, goaway),
                Ok(Ok(_)) => {}
            }
            goaway |= h[3] == GOAWAY;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let mut payload = vec![0u8; len];
            if self.tcp.read_exact(&mut payload).await.is_err() {
                return (true, goaway);
            }
        }
    }
}
