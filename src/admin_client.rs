//! `sessiongate sessions export|import`: a request to the running gateway's admin API, found
//! and authorized through the configuration (`admin.bind`, `admin.token_file`). The gateway
//! does the work, so the commands serve every store kind, the memory store included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// Sends `method path` with `body` to the admin listener `config` names, with its token;
/// the answer's body, or what went wrong.
///
/// # Errors
/// The configuration has no admin listener or token file, the gateway does not answer, or it
/// answers with an error (its message is in the error).
pub async fn call(
    config: &Config,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Bytes> {
    let admin = config
        .admin
        .as_ref()
        .context("the configuration has no admin: section (the gateway's admin API does this)")?;
    let token_file = admin
        .token_file
        .as_ref()
        .context("admin.token_file is not set: the session API is off")?;
    let text = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    // Its first line that is not empty, as the gateway reads it.
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .context("the admin token file is empty")?;
    // A listener on every address is asked on the loopback.
    let addr = match admin.bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.bind.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.bind.port())
        }
        _ => admin.bind,
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("no gateway answers on the admin listener {addr}: is it running?")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin connection")?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .context("admin request")?;
    let resp = sender.send_request(req).await.context("admin request")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("admin answer")?
        .to_bytes();
    if status != StatusCode::OK {
        bail!(
            "the gateway answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}
