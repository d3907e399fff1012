//! Connections to backends: made on demand (TCP, then TLS for `https`), kept idle for reuse,
//! most recently used first.
//!
//! We keep our own small pool instead of hyper-util's generic client: a request takes an idle
//! connection from its backend's stack and gives it back when the response body ends, with no
//! extra task per request, no pool-key hashing, and a clean line between "could not connect"
//! (nothing sent, safe to retry) and "failed after sending".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::RequestBody;
use crate::config::UpstreamTls;

/// The sending half of an HTTP/1.1 connection to a backend.
pub(crate) type Sender = http1::SendRequest<RequestBody>;

/// Why a new connection could not be made. Nothing was sent on it.
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub reason: String,
    pub timed_out: bool,
}

/// Idle connections of one backend.
#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    stack: Mutex<Vec<(Sender, Instant)>>,
}

impl IdleConns {
    /// The most recently used idle connection that is still open and not past `idle_timeout`.
    pub fn pop(&self, idle_timeout: Duration) -> Option<Sender> {
        let mut stack = self.stack.lock().ok()?;
        while let Some((sender, since)) = stack.pop() {
            if !sender.is_closed() && since.elapsed() < idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection for reuse, unless `max_idle` are kept already.
    pub fn push(&self, sender: Sender, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut stack) = self.stack.lock()
            && stack.len() < max_idle
        {
            stack.push((sender, Instant::now()));
        }
    }
}

/// Makes connections to the backends of one pool.
pub(crate) struct Connector {
    connect_timeout: Duration,
    tls: TlsConnector,
}

impl Connector {
    /// A connector for one pool. `https` backends are verified against the public web roots,
    /// or only against the CA certificates in `tls.ca` when it is set.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no usable certificate (a message for the user).
    pub fn new(connect_timeout: Duration, tls: &UpstreamTls) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &tls.ca {
            None => {
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
            }
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(file)
                    .map_err(|e| format!("cannot read CA file {}: {e}", file.display()))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| format!("cannot parse CA file {}: {e}", file.display()))?;
                    roots.add(cert).map_err(|e| {
                        format!("unusable CA certificate in {}: {e}", file.display())
                    })?;
                }
                if roots.is_empty() {
                    return Err(format!("no certificate in CA file {}", file.display()));
                }
                roots
            }
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector {
            connect_timeout,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Connects to `addr` (`host:port`), with TLS to `tls_name` if given, within the connect
    /// timeout, and starts the connection's task.
    pub async fn connect(
        &self,
        addr: &str,
        tls_name: Option<&str>,
    ) -> Result<Sender, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, self.establish(addr, tls_name)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError {
                reason: format!("no connection within {:?}", self.connect_timeout),
                timed_out: true,
            }),
        }
    }

    async fn establish(&self, addr: &str, tls_name: Option<&str>) -> Result<Sender, ConnectError> {
        let failed = |reason: String| ConnectError {
            reason,
            timed_out: false,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| failed(format!("tcp connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match tls_name {
            None => handshake(TokioIo::new(tcp)).await,
            Some(name) => {
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| failed(format!("bad TLS server name {name:?}: {e}")))?;
                let tls = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| failed(format!("tls handshake: {e}")))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<Sender, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(|e| ConnectError {
            reason: format!("http handshake: {e}"),
            timed_out: false,
        })?;
    // The connection's own task reads and writes; it ends when the connection closes or the
    // sender is dropped while idle. Upgrades (WebSocket) hand the socket over.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
