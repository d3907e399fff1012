//! `timeouts:` — how long the gateway waits on its clients.

use std::time::Duration;

use super::error::Problems;
use super::node::Node;
use super::reader::{MapReader, duration, positive_duration};

/// Client-side timeouts.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Time to receive a request's whole header section; also bounds idle keep-alive time
    /// on HTTP/1 connections.
    pub header_read: Duration,
    /// Longest pause between two pieces of a request body from the client (408 beyond it).
    pub body_read: Duration,
    /// An HTTP/2 connection or an upgraded (WebSocket) connection with no bytes either way
    /// for this long is closed.
    pub idle: Duration,
    /// Longest a response may wait for the client to take more of it (a client that stops
    /// reading): the connection is closed beyond it (HTTP/1.1, and HTTP/2 when the socket
    /// takes nothing), or sent GOAWAY and closed soon after (an HTTP/2 stream whose flow
    /// control the client keeps shut), and the upstream connection is released.
    pub send: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(20),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            send: Duration::from_secs(30),
            drain: Duration::from_secs(30),
        }
    }
}

/// Reads the `timeouts:` section at `node`.
pub(super) fn read(node: &Node, path: &str, p: &mut Problems) -> Option<Timeouts> {
    let mut m = MapReader::new(node, path, p)?;
    let d = Timeouts::default();
    let header_read = m
        .get("header_read")
        .and_then(|n| positive_duration(n, &m.child("header_read"), p))
        .unwrap_or(d.header_read);
    let body_read = m
        .get("body_read")
        .and_then(|n| positive_duration(n, &m.child("body_read"), p))
        .unwrap_or(d.body_read);
    let idle = m
        .get("idle")
        .and_then(|n| positive_duration(n, &m.child("idle"), p))
        .unwrap_or(d.idle);
    let send = m
        .get("send")
        .and_then(|n| positive_duration(n, &m.child("send"), p))
        .unwrap_or(d.send);
    let drain = m
        .get("drain")
        .and_then(|n| duration(n, &m.child("drain"), p))
        .unwrap_or(d.drain);
    m.finish(p);
    Some(Timeouts {
        header_read,
        body_read,
        idle,
        send,
        drain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse_yaml;

    #[test]
    fn timeouts_default_and_a_zero_send_timeout_is_refused() {
        let node = parse_yaml("{ send: 5s }").unwrap();
        let mut p = Problems::default();
        let t = read(&node, "timeouts", &mut p).unwrap();
        assert_eq!(t.send, Duration::from_secs(5));
        assert_eq!(t.header_read, Timeouts::default().header_read);
        assert!(p.is_empty());
        let node = parse_yaml("{ send: 0s }").unwrap();
        let mut p = Problems::default();
        read(&node, "timeouts", &mut p);
        let text = p.into_error("t.yaml").to_string();
        assert!(text.contains("timeouts.send"), "{text}");
    }
}
