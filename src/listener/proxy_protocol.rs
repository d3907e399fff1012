//! The PROXY protocol (v1 and v2, parsed by `ppp`): an L4 balancer in front of the gateway
//! sends the client's address in a header before the connection's first byte. Only peers in
//! `trusted_proxies` may send one (and on such a listener they must); from any other peer a
//! connection that opens with one is refused, and one that does not is a direct client.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// The client's address for a connection from `peer`, after its PROXY header if it must have
/// one; `None`: close the connection (a header from an untrusted peer, a bad or missing header
/// from a trusted one, or nothing within `wait`).
pub(crate) async fn client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
    wait: Duration,
) -> Option<SocketAddr> {
    let deadline = Instant::now() + wait;
    let ip = peer.ip().to_canonical();
    if !trusted.iter().any(|n| n.contains(&ip)) {
        return match opens_with_header(stream, deadline).await? {
            true => {
                tracing::warn!(client = %peer, "PROXY header from an untrusted peer refused");
                None
            }
            false => Some(peer),
        };
    }
    let header = tokio::time::timeout_at(deadline, read_header(stream))
        .await
        .ok()
        .flatten();
    match header.as_deref().map(source) {
        Some(Ok(Some(client))) => Some(client),
        // LOCAL or UNKNOWN: the proxy's own connection (a health check).
        Some(Ok(None)) => Some(peer),
        _ => {
            tracing::warn!(client = %peer, "trusted proxy sent no valid PROXY header");
            None
        }
    }
}

/// Whether the first bytes are a PROXY header's, peeking (nothing is consumed) until they
/// tell; `None` if the peer sends nothing in time.
async fn opens_with_header(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    let mut buf = [0u8; 12];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        let is = |sig: &[u8]| seen.starts_with(sig);
        let may_be = |sig: &[u8]| sig.starts_with(seen);
        if is(V1_PREFIX) || is(V2_SIGNATURE) {
            return Some(true);
        }
        if !may_be(V1_PREFIX) && !may_be(V2_SIGNATURE) {
            return Some(false);
        }
        // A prefix of a signature so far: wait for more bytes.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Reads exactly one PROXY header off the stream (v1: up to CRLF; v2: its declared length).
async fn read_header(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = vec![0u8; 16];
    stream.read_exact(&mut head[..6]).await.ok()?;
    if head.starts_with(V1_PREFIX) {
        head.truncate(6);
        while !head.ends_with(b"\r\n") {
            if head.len() >= V1_MAX {
                return None;
            }
            head.push(stream.read_u8().await.ok()?);
        }
        return Some(head);
    }
    stream.read_exact(&mut head[6..16]).await.ok()?;
    if !head.starts_with(V2_SIGNATURE) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await.ok()?;
    head.extend_from_slice(&rest);
    Some(head)
}

/// The source address a header names: `Ok(None)` for LOCAL or UNKNOWN (the connection then
/// counts as the proxy's own); `Err` for a malformed header (the caller closes the
/// connection: a trusted peer that garbles its header is not believed about anything).
fn source(header: &[u8]) -> Result<Option<SocketAddr>, ()> {
    use ppp::HeaderResult;
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match h.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            _ => None,
        }),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_sources_are_read() {
        assert_eq!(
            source(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n"),
            Ok(Some("203.0.113.7:56324".parse().unwrap()))
        );
        assert_eq!(
            source(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n"),
            Ok(Some("[2001:db8::7]:4000".parse().unwrap()))
        );
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), Ok(None));
        assert_eq!(source(b"PROXY TCP4 nonsense\r\n"), Err(()));
        assert_eq!(source(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n"), Err(()));
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.9:1234".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:80".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(source(&v2), Ok(Some("198.51.100.9:1234".parse().unwrap())));
    }
}
