//! Behind an L4 balancer: the PROXY protocol header of a trusted peer sets the client address
//! the backend sees; from an untrusted peer it is refused.

use std::time::Duration;

use crate::support::*;

fn config(b: &Backend, trusted: &str) -> String {
    simple_config(&[b.addr], "", &format!("trusted_proxies: [{trusted}]")).replace(
        "bind: \"127.0.0.1:0\" }",
        "bind: \"127.0.0.1:0\", proxy_protocol: true }",
    )
}

const REQUEST: &[u8] = b"GET /who HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_trusted_proxys_header_v1_or_v2_sets_the_client_address() {
    let b = Backend::named("app").await;
    let gw = Gateway::start(&config(&b, "127.0.0.1/32")).await;
    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n".to_vec();
    v1.extend_from_slice(REQUEST);
    let resp = raw_exchange(gw.addr("web"), &v1, Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.last().headers["x-forwarded-for"], "203.0.113.7");

    let mut v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::9]:4000"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
            "[2001:db8::1]:80".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    v2.extend_from_slice(REQUEST);
    let resp = raw_exchange(gw.addr("web"), &v2, Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.last().headers["x-forwarded-for"], "2001:db8::9");

    // A trusted peer must send the header: a bare request is refused.
    let resp = raw_exchange(gw.addr("web"), REQUEST, Duration::from_secs(2)).await;
    assert_eq!(resp, "");
}

#[tokio::test]
async fn an_untrusted_peers_header_is_refused_and_its_plain_requests_served() {
    let b = Backend::named("app").await;
    let gw = Gateway::start(&config(&b, "")).await;
    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n".to_vec();
    v1.extend_from_slice(REQUEST);
    let resp = raw_exchange(gw.addr("web"), &v1, Duration::from_secs(2)).await;
    assert_eq!(resp, "", "a forged client address must not get through");
    assert!(b.requests().is_empty());
    let resp = raw_exchange(gw.addr("web"), REQUEST, Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.last().headers["x-forwarded-for"], "127.0.0.1");
}
