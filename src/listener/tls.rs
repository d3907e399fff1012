//! TLS termination: certificates from PEM files, chosen by SNI, with ALPN for h2 and http/1.1.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertificateConfig, ConfigError, TlsConfig, TlsVersion};

/// A listener's TLS settings as they stand: a reload swaps in new ones (new certificates),
/// which the connections accepted after it get.
pub type TlsSource = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// Builds the TLS settings of a listener. Errors point at the certificate entry in the file.
///
/// # Errors
/// A certificate or key file that cannot be read or parsed, or a key that does not match
/// its certificate.
pub fn server_config(
    tls: &TlsConfig,
    file: &str,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut certs = Vec::new();
    for c in &tls.certificates {
        let key = load_certificate(c, &provider)
            .map_err(|msg| ConfigError::single(file, c.pos, &c.path, msg))?;
        certs.push(key);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::single(file, Default::default(), "", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate with the DNS names it is valid for.
#[derive(Debug)]
struct NamedCert {
    key: Arc<CertifiedKey>,
    /// Lower-case names from the subject alternative names; `*.x` wildcards included.
    names: Vec<String>,
}

fn load_certificate(c: &CertificateConfig, provider: &CryptoProvider) -> Result<NamedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", c.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", c.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("no certificate found in {}", c.cert.display()));
    };
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| format!("cannot read private key {}: {e}", c.key.display()))?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("cannot parse certificate {}: {e}", c.cert.display()))?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "certificate {} and key {} do not go together: {e}",
            c.cert.display(),
            c.key.display()
        )
    })?;
    Ok(NamedCert {
        key: Arc::new(certified),
        names,
    })
}

/// Picks the certificate whose names cover the SNI name; the first certificate otherwise
/// (including for clients that send no SNI, such as those connecting by IP address).
#[derive(Debug)]
struct SniResolver {
    certs: Vec<NamedCert>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            // Exact names first, then wildcards, across all certificates.
            let exact = self
                .certs
                .iter()
                .find(|c| c.names.iter().any(|n| n.eq_ignore_ascii_case(sni)));
            let wildcard = || {
                self.certs
                    .iter()
                    .find(|c| c.names.iter().any(|n| wildcard_matches(n, sni)))
            };
            if let Some(c) = exact.or_else(wildcard) {
                return Some(c.key.clone());
            }
        }
        self.certs.first().map(|c| c.key.clone())
    }
}

/// `*.example.com` covers exactly one label: `a.example.com`, not `a.b.example.com`.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let Some(label_end) = name.find('.') else {
        return false;
    };
    label_end > 0 && name[label_end..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(!wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("example.com", "example.com"));
    }
}
