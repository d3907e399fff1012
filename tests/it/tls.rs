use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

struct TlsSetup {
    gw: Gateway,
    alpha: TestCert,
    beta: TestCert,
    backend: Backend,
}

/// A gateway with a plain listener `web` and a TLS listener `tls` holding two certificates:
/// alpha.test (also 127.0.0.1; the default) and beta.test.
async fn tls_gateway(tls_extra: &str) -> TlsSetup {
    let backend = Backend::named("secure").await;
    let dir = tempfile::tempdir().unwrap();
    let alpha = make_cert(dir.path(), "alpha", &["alpha.test", "127.0.0.1"]);
    let beta = make_cert(dir.path(), "beta", &["beta.test", "*.beta.test"]);
    let yaml = tls_yaml(&["alpha", "beta"], tls_extra, &backend);
    let gw = Gateway::start_in(&yaml, dir).await;
    TlsSetup {
        gw,
        alpha,
        beta,
        backend,
    }
}

/// A plain listener `web` and a TLS listener `tls` with the certificates `stems` (files
/// STEM.crt and STEM.key), in front of `backend`.
fn tls_yaml(stems: &[&str], tls_extra: &str, backend: &Backend) -> String {
    let certs: String = stems
        .iter()
        .map(|s| format!("        - {{ cert: {s}.crt, key: {s}.key }}\n"))
        .collect();
    format!(
        "listeners:
  - {{ name: web, bind: \"127.0.0.1:0\" }}
  - name: tls
    bind: \"127.0.0.1:0\"
    tls:
      certificates:
{certs}{tls_extra}
upstreams:
  app: {{ servers: [ {{ url: \"{}\" }} ] }}
routes:
  - {{ match: {{ path_prefix: / }}, upstream: app }}
",
        backend.url()
    )
}

impl TlsSetup {
    /// A GET over TLS to alpha.test (the client trusts alpha's certificate only).
    fn get_alpha(&self, path: &str) -> reqwest::RequestBuilder {
        let addr = self.gw.addr("tls");
        tls_client(&[&self.alpha], "alpha.test", addr)
            .get(format!("https://alpha.test:{}{path}", addr.port()))
    }
}

fn client_config(
    roots: &[&TestCert],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(CertificateDer::from(c.der.clone())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// Handshakes with `server_name` (sent as SNI unless it is an IP) and returns the certificate
/// the gateway chose and the protocol version.
async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
) -> Result<(Vec<u8>, rustls::ProtocolVersion), std::io::Error> {
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = connector.connect(name, tcp).await?;
    let conn = tls.get_ref().1;
    Ok((
        conn.peer_certificates().unwrap()[0].to_vec(),
        conn.protocol_version().unwrap(),
    ))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn sni_selects_the_matching_certificate() {
    init();
    let s = tls_gateway("").await;
    let addr = s.gw.addr("tls");
    let roots = [&s.alpha, &s.beta];
    let (cert, _) = handshake(addr, "beta.test", client_config(&roots, BOTH))
        .await
        .unwrap();
    assert_eq!(cert, s.beta.der);
    let (cert, _) = handshake(addr, "shop.beta.test", client_config(&roots, BOTH))
        .await
        .unwrap();
    assert_eq!(cert, s.beta.der, "wildcard name");
    let (cert, _) = handshake(addr, "alpha.test", client_config(&roots, BOTH))
        .await
        .unwrap();
    assert_eq!(cert, s.alpha.der);
    // An IP address sends no SNI: the first certificate is the default.
    let (cert, _) = handshake(addr, "127.0.0.1", client_config(&roots, BOTH))
        .await
        .unwrap();
    assert_eq!(cert, s.alpha.der);
}

#[tokio::test]
async fn tls12_and_tls13_are_both_accepted() {
    init();
    let s = tls_gateway("").await;
    let addr = s.gw.addr("tls");
    let (_, v) = handshake(
        addr,
        "alpha.test",
        client_config(&[&s.alpha], &[&rustls::version::TLS12]),
    )
    .await
    .unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
    let (_, v) = handshake(
        addr,
        "alpha.test",
        client_config(&[&s.alpha], &[&rustls::version::TLS13]),
    )
    .await
    .unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn min_version_13_refuses_tls12_clients() {
    init();
    let s = tls_gateway("      min_version: \"1.3\"").await;
    let addr = s.gw.addr("tls");
    let r = handshake(
        addr,
        "alpha.test",
        client_config(&[&s.alpha], &[&rustls::version::TLS12]),
    )
    .await;
    assert!(r.is_err(), "a TLS 1.2-only client got in");
}

#[tokio::test]
async fn http2_client_is_served_through_alpn_and_forwarded_as_http11() {
    init();
    let s = tls_gateway("").await;
    let addr = s.gw.addr("tls");
    let resp = s.get_alpha("/h2").send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "secure");
    let seen = s.backend.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.headers["host"],
        format!("alpha.test:{}", addr.port()).as_str()
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn spoofed_forwarding_headers_over_http2_are_replaced() {
    init();
    let s = tls_gateway("").await;
    let resp = s
        .get_alpha("/")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let h = s.backend.last().headers;
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn tls_listener_adds_strict_transport_security() {
    init();
    let s = tls_gateway("      hsts: { max_age: 365d, include_subdomains: true }").await;
    let resp = s.get_alpha("/").send().await.unwrap();
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    // Never on plain HTTP (RFC 6797 §7.2).
    let plain = client().get(s.gw.url("web", "/")).send().await.unwrap();
    assert!(!plain.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn plain_listener_can_redirect_every_request_to_https() {
    let b = Backend::named("b").await;
    let yaml = "listeners:
  - { name: web, bind: \"127.0.0.1:0\", redirect_to_https: true, https_port: 8443 }
upstreams:
  app: { servers: [ { url: \"http://BACKEND\" } ] }
routes:
  - { match: { path_prefix: / }, upstream: app }
"
    .replace("BACKEND", &b.addr.to_string());
    let gw = Gateway::start(&yaml).await;
    let resp = client()
        .post(gw.url("web", "/cart/add?item=7"))
        .header("host", "shop.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308, "308 keeps the method and body");
    assert_eq!(
        resp.headers()["location"],
        "https://shop.test:8443/cart/add?item=7"
    );
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn rsa_pkcs1_and_ec_sec1_keys_are_accepted() {
    init();
    let backend = Backend::named("keys").await;
    let dir = tempfile::tempdir().unwrap();
    let rsa_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa = make_cert_with_key(dir.path(), "rsa", &["rsa.test"], &rsa_key);
    let ec = make_cert(dir.path(), "ec", &["ec.test"]);
    // rcgen writes PKCS#8; rewrite the keys in their traditional forms.
    for (key, header) in [
        (&rsa.key, "BEGIN RSA PRIVATE KEY"),
        (&ec.key, "BEGIN EC PRIVATE KEY"),
    ] {
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-traditional", "-in"])
            .arg(key)
            .output()
            .expect("openssl is needed to write PKCS#1 and SEC1 keys");
        assert!(out.status.success());
        let pem = String::from_utf8(out.stdout).unwrap();
        assert!(pem.contains(header), "{pem}");
        std::fs::write(key, pem).unwrap();
    }
    let yaml = tls_yaml(&["rsa", "ec"], "", &backend);
    let gw = Gateway::start_in(&yaml, dir).await;
    let addr = gw.addr("tls");
    let (cert, _) = handshake(addr, "rsa.test", client_config(&[&rsa], BOTH))
        .await
        .unwrap();
    assert_eq!(cert, rsa.der);
    let (cert, _) = handshake(addr, "ec.test", client_config(&[&ec], BOTH))
        .await
        .unwrap();
    assert_eq!(cert, ec.der);
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    init();
    let s = tls_gateway("      handshake_timeout: 300ms").await;
    let mut tcp = TcpStream::connect(s.gw.addr("tls")).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the gateway kept a silent TLS connection open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn http2_request_bodies_reach_an_http11_backend() {
    init();
    let echo = Backend::start(|req| async move {
        use http_body_util::BodyExt;
        let framing = if req.headers().contains_key("content-length") {
            "length"
        } else {
            "chunked"
        };
        let body = req.into_body().collect().await.unwrap().to_bytes();
        text(200, &format!("{framing} {}", body.len()))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let alpha = make_cert(dir.path(), "alpha", &["alpha.test"]);
    let gw = Gateway::start_in(&tls_yaml(&["alpha"], "", &echo), dir).await;
    let addr = gw.addr("tls");
    let c = tls_client(&[&alpha], "alpha.test", addr);
    let url = format!("https://alpha.test:{}/upload", addr.port());
    let resp = c.post(&url).body(vec![1u8; 70_000]).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "length 70000");
    // Without a declared length, the body goes upstream chunked.
    let stream = futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![2u8; 1000]))),
    );
    let resp = c
        .post(&url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "chunked 3000");
}

#[tokio::test]
async fn over_http2_spoofed_session_headers_are_stripped_and_the_cookie_is_host_prefixed() {
    init();
    let backend = Backend::start(|_req| async {
        let mut r = text(200, "ok");
        r.headers_mut()
            .append("x-session-set", "user=alice".parse().unwrap());
        r
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let alpha = make_cert(dir.path(), "alpha", &["alpha.test", "127.0.0.1"]);
    let yaml = tls_yaml(&["alpha"], "", &backend) + "sessions: {}\n";
    let gw = Gateway::start_in(&yaml, dir).await;
    let addr = gw.addr("tls");
    let resp = tls_client(&[&alpha], "alpha.test", addr)
        .get(format!("https://alpha.test:{}/", addr.port()))
        .header("X-Session-Attr-User", "root")
        .header("x_session_key", "forged")
        .header("X-SESSION-STATUS", "active")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-sg="), "{cookie}");
    assert!(
        cookie.contains("Secure") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(!cookie.contains("Domain"), "{cookie}");
    assert!(resp.headers().get("x-session-set").is_none());
    let seen = backend.last().headers;
    let ours: Vec<_> = seen
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-session") || k.as_str().starts_with("x_session"))
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
        .collect();
    assert_eq!(ours, ["x-session-status: none"]);
}
