//! `gen-cert`: a self-signed certificate and key for development (never for production).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The names a development certificate covers when none are given.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Paths of a written certificate and key.
#[derive(Debug, Clone)]
pub struct Written {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8), readable by the owner only.
    pub key: PathBuf,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A name is neither a DNS name nor an IP address.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The files could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes `<out>/<first name>.crt` and `.key`: a self-signed ECDSA P-256 certificate for
/// `names` (DNS names or IP addresses).
///
/// # Errors
/// A bad name, or files that cannot be written.
pub fn generate(out: &Path, names: &[String]) -> Result<Written, CertError> {
    let names: Vec<String> = if names.is_empty() {
        DEFAULT_NAMES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        names.to_vec()
    };
    let mut params = rcgen::CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "sessiongate development");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let stem = names[0].replace([':', '/'], "_");
    let written = Written {
        cert: out.join(format!("{stem}.crt")),
        key: out.join(format!("{stem}.key")),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    std::fs::write(&written.cert, cert.pem()).map_err(io(&written.cert))?;
    write_private(&written.key, key.serialize_pem().as_bytes()).map_err(io(&written.key))?;
    Ok(written)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
