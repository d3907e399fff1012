//! Test harness: real backends (small hyper servers), a real gateway (in process or as the real
//! binary), real TLS certificates, raw sockets. Everything on 127.0.0.1 with port 0.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sessiongate::config::Config;
use sessiongate::gateway::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// Installs the process-wide crypto provider once (rustls needs exactly one).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // RUST_LOG=debug shows the gateway's logs in a failing test's output.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

pub fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

/// A text answer (`text/plain`, as a backend declares it; the page helpers replace it).
pub fn text(status: u16, s: &str) -> Response<Body> {
    let mut r = Response::new(full(s.to_owned()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
}

/// A real HTTP backend on 127.0.0.1, recording every request it receives.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Backend {
    /// A backend that answers 200 with `name` as the body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |_req| async move { text(200, name) }).await
    }

    /// A backend answering 200 with `name`, on an already bound listener.
    pub async fn start_on(listener: TcpListener, name: &'static str) -> Backend {
        Backend::serve(listener, move |_req| async move { text(200, name) })
    }

    /// A backend with a custom handler.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Backend::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
    }

    /// A backend answering 200 with `name` over HTTPS, with the certificate `cert`.
    pub async fn start_tls(cert: &TestCert, name: &'static str) -> Backend {
        init();
        let chain = vec![rustls::pki_types::CertificateDer::from(cert.der.clone())];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve_with(listener, Some(acceptor), move |_req| async move {
            text(200, name)
        })
    }

    fn serve<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Backend::serve_with(listener, None, handler)
    }

    fn serve_with<F, Fut>(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: F,
    ) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (handler, seen, tls) = (handler.clone(), seen2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().to_string(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // Idle keep-alive connections are closed after a second, as many servers do.
                    builder
                        .http1()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(1))
                        // Sessions with many attributes arrive as many headers.
                        .max_headers(512);
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            seen,
            connections,
        }
    }

    /// How many TCP connections the backend has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the backend saw no request")
    }
}

/// A port held but not listening: connections to it are refused, and no other test can take
/// it meanwhile. `listen` brings it to life on the same address.
pub fn reserved_port() -> tokio::net::TcpSocket {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s
}

/// A free loopback port (bound, then released), for a server of a test's own.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A gateway running in this process.
pub struct Gateway {
    pub running: Option<Running>,
    home: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway from YAML. Relative paths resolve in a fresh temporary directory.
    pub async fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Gateway::start_in(yaml, dir).await
    }

    pub async fn start_in(yaml: &str, dir: tempfile::TempDir) -> Gateway {
        init();
        let config = Config::from_str("test.yaml", yaml, dir.path(), &|_| None)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let running = gateway::start(&config).await.unwrap();
        Gateway {
            running: Some(running),
            home: dir,
        }
    }

    /// Starts a gateway from `yaml` written to `gateway.yaml` in `dir` (which a reload reads
    /// again).
    pub async fn start_file(yaml: &str, dir: tempfile::TempDir) -> Gateway {
        init();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let running = gateway::start(&config).await.unwrap();
        Gateway {
            running: Some(running),
            home: dir,
        }
    }

    /// The directory the gateway's relative paths resolve in.
    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.running.as_ref().unwrap().admin_addr().unwrap()
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.running.as_ref().unwrap().addr(listener).unwrap()
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    pub async fn shutdown(&mut self) -> bool {
        self.running.take().unwrap().shutdown().await
    }
}

/// The smallest config: one plain listener `web` and one upstream `app` of `servers`.
pub fn simple_config(servers: &[SocketAddr], upstream_extra: &str, top_extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ url: \"http://{a}\" }}"))
        .collect();
    format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n    servers: [ {} ]\n{upstream_extra}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n{top_extra}\n",
        servers.join(", ")
    )
}

/// The body of a GET of `url` (any status).
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The body of a GET of `url` that sends `cookie` (a `Cookie` header value), any status.
pub async fn get_with_cookie(url: &str, cookie: &str) -> String {
    client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `name=value` of a response's (first) `Set-Cookie`.
pub fn cookie_pair(resp: &reqwest::Response) -> String {
    resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A connection a WebSocket backend serves, once upgraded.
pub type ServerSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket backend's answer to `req`: the `101` (`serve` then gets the connection), or a
/// 400 for a request that is no WebSocket handshake.
pub fn accept_websocket<F, Fut>(req: &mut Request<Incoming>, serve: F) -> Response<Body>
where
    F: FnOnce(ServerSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(400, "not a websocket request");
    };
    let upgraded = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = TokioIo::new(upgraded.await.unwrap());
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        serve(ws).await;
    });
    let mut r = text(101, "");
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
            .parse()
            .unwrap(),
    );
    r
}

/// A plain HTTP client that does not pool connections between tests' requests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends raw bytes on a fresh connection and reads until the peer closes or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A self-signed certificate for `names`, written as PEM into `dir`.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
    pub pem: String,
}

pub fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    make_cert_with_key(dir, stem, names, &key)
}

pub fn make_cert_with_key(
    dir: &Path,
    stem: &str,
    names: &[&str],
    key: &rcgen::KeyPair,
) -> TestCert {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(key).unwrap();
    let c = TestCert {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        der: cert.der().to_vec(),
        pem: cert.pem(),
    };
    std::fs::write(&c.cert, cert.pem()).unwrap();
    std::fs::write(&c.key, key.serialize_pem()).unwrap();
    c
}

/// A gateway with one TLS listener `tls` (`gw.test`, a certificate of its own) in front of
/// `b`, with `top_extra` at the top of its file; and a client configuration that trusts it
/// and offers `alpn`.
pub async fn tls_gateway(
    b: &Backend,
    top_extra: &str,
    alpn: &[u8],
) -> (Gateway, Arc<rustls::ClientConfig>) {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "gw", &["gw.test"]);
    let yaml = format!(
        "listeners:\n  - name: tls\n    bind: \"127.0.0.1:0\"\n    tls: {{ certificates: [ {{ cert: gw.crt, key: gw.key }} ] }}\nupstreams:\n  app: {{ servers: [ {{ url: \"{}\" }} ] }}\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: app }}\n{top_extra}\n",
        b.url()
    );
    let gw = Gateway::start_in(&yaml, dir).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert.der.clone()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    (gw, Arc::new(config))
}

/// A reqwest client that trusts only `certs` and resolves `name` to `addr`.
pub fn tls_client(certs: &[&TestCert], name: &str, addr: SocketAddr) -> reqwest::Client {
    let roots = certs
        .iter()
        .map(|c| reqwest::Certificate::from_pem(c.pem.as_bytes()).unwrap());
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(roots)
        .resolve(name, addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The gateway as the real binary, for what needs a separate process: signals, peak memory.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub http: SocketAddr,
    /// The admin listener, when the configuration has one.
    pub admin: Option<SocketAddr>,
    home: tempfile::TempDir,
}

impl GatewayProcess {
    pub fn start(yaml: &str) -> GatewayProcess {
        Self::start_in(yaml, tempfile::tempdir().unwrap())
    }

    /// The gateway with its `gateway.yaml` (and whatever the test put there) in `dir`.
    pub fn start_in(yaml: &str, dir: tempfile::TempDir) -> GatewayProcess {
        Self::start_with(yaml, dir, "warn", std::process::Stdio::inherit())
    }

    /// The gateway with access logs on (`RUST_LOG=info`), its stderr written to `log`.
    pub fn start_logged(yaml: &str, log: &Path) -> GatewayProcess {
        let file = std::fs::File::create(log).unwrap();
        let dir = tempfile::tempdir().unwrap();
        Self::start_with(yaml, dir, "info", std::process::Stdio::from(file))
    }

    fn start_with(
        yaml: &str,
        dir: tempfile::TempDir,
        rust_log: &str,
        stderr: std::process::Stdio,
    ) -> GatewayProcess {
        use std::io::BufRead;
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut next = || {
            lines
                .next()
                .expect("the gateway exited before listening")
                .unwrap()
        };
        // The binary prints one URL line per listener: "  http://127.0.0.1:PORT/   (listener web)",
        // then "  http://ADDR/healthz   (admin)" when there is an admin listener.
        let address = |line: &str| -> SocketAddr {
            let rest = line.trim().strip_prefix("http://").unwrap();
            rest.split('/').next().unwrap().parse().unwrap()
        };
        let http = loop {
            let line = next();
            if line.contains("(listener web)") {
                break address(&line);
            }
        };
        let admin = yaml.contains("admin:").then(|| {
            loop {
                let line = next();
                if line.contains("(admin)") {
                    break address(&line);
                }
            }
        });
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        GatewayProcess {
            child,
            http,
            admin,
            home: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding its `gateway.yaml` (relative paths in it resolve here).
    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 20 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway in front of `b` whose sessions are signed (or sealed) with `secrets` (one per
/// line, newest first) and kept in `store` (a `sessions.store` value), with the admin API on
/// (bearer token `admin-token-for-tests-0123456789`).
pub async fn gateway_with_secret(b: &Backend, secrets: &str, store: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session.keys"), secrets).unwrap();
    std::fs::write(
        dir.path().join("admin.token"),
        "admin-token-for-tests-0123456789\n",
    )
    .unwrap();
    let yaml = simple_config(
        &[b.addr],
        "",
        &format!(
            "sessions:\n  secret_file: session.keys\n  store: {store}\nadmin: {{ bind: \"127.0.0.1:0\", token_file: admin.token }}\n"
        ),
    );
    Gateway::start_in(&yaml, dir).await
}

/// A Redis key prefix of a test's own (`sgtest:RANDOM:`), so that tests sharing the machine's
/// Redis never see each other's keys.
pub fn redis_test_prefix() -> String {
    let mut tag = [0u8; 8];
    aws_lc_rs::rand::fill(&mut tag).unwrap();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sgtest:{hex}:")
}
