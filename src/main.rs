//! The `sessiongate` command: run, check, demo, gen-cert.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sessiongate::config::{Config, LogFormat};
use sessiongate::gateway::{self, Running};
use sessiongate::{certs, demo, reload};

#[derive(Parser, Debug)]
#[command(
    name = "sessiongate",
    version,
    about = "A session-aware reverse proxy gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "SESSIONGATE_CONFIG",
        default_value = "gateway.yaml"
    )]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration; print every problem as FILE:LINE:COL: path: message.
    Check,
    /// Serve gateway.yaml together with a built-in sample backend.
    Demo,
    /// Export or import the sessions of the running gateway's store (through its admin API).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Write a self-signed development certificate and key (PEM).
    GenCert {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// DNS names or IP addresses to cover (repeatable; default: localhost, 127.0.0.1, ::1).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SessionsAction {
    /// Write every live session as JSON lines (store ids and data, never tokens).
    Export {
        /// The file to write (made readable by its owner only); default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load sessions from JSON lines into the store (those already there are left alone).
    Import {
        /// The file to read (`-`: standard input).
        file: PathBuf,
    },
}

/// Exit code for an invalid configuration (as `check` documents).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Select the crypto provider explicitly, so that no dependency's feature choice can make
    // rustls ambiguous at the first handshake.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Sessions { action } => sessions(&cli.config, action),
        Command::GenCert { out, names } => match certs::generate(&out, &names) {
            Ok(w) => {
                println!(
                    "wrote {} and {} (self-signed, for development only)",
                    w.cert.display(),
                    w.key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gen-cert: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run => serve(&cli.config, false),
        Command::Demo => serve(&cli.config, true),
    }
}

/// The configuration at `path`; its problems printed, and the exit code `check` documents.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// A tokio runtime, on every core (`multi`) or on this thread.
fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = gateway::check_files(&config) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    println!(
        "{}: ok ({} listeners, {} upstreams, {} routes)",
        path.display(),
        config.listeners.len(),
        config.upstreams.len(),
        config.routes.len()
    );
    ExitCode::SUCCESS
}

/// `sessions export|import`: the running gateway's admin API does the work.
fn sessions(path: &Path, action: SessionsAction) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match runtime(false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let done = runtime.block_on(async {
        match action {
            SessionsAction::Export { out } => {
                let lines = sessiongate::admin_client::call(
                    &config,
                    http::Method::GET,
                    "/sessions/export",
                    Vec::new(),
                )
                .await?;
                let count = lines.iter().filter(|&&b| b == b'\n').count();
                match out {
                    Some(file) => write_private(&file, &lines)?,
                    None => {
                        use std::io::Write as _;
                        std::io::stdout().write_all(&lines)?;
                    }
                }
                eprintln!("exported {count} sessions");
            }
            SessionsAction::Import { file } => {
                let lines = if file.as_os_str() == "-" {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    buf
                } else {
                    std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?
                };
                let answer = sessiongate::admin_client::call(
                    &config,
                    http::Method::POST,
                    "/sessions/import",
                    lines,
                )
                .await?;
                println!("{}", String::from_utf8_lossy(&answer));
            }
        }
        anyhow::Ok(())
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` to `file`, readable by its owner only (it holds what sessions hold).
fn write_private(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    // Also when the file was there before, with other permissions.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(bytes)?;
    Ok(())
}

fn serve(path: &Path, with_demo: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(config.logs.format);
    let runtime = match runtime(true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(serve_async(config, path, with_demo));
    // Requests the drain cut and that had not ended yet are dropped with the runtime, each
    // writing its access line (499) as it goes: those lines are written too before the
    // process ends, not only those the drain's own flush saw.
    drop(runtime);
    sessiongate::access_log::flush_all(std::time::Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sessiongate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(config: Config, path: &Path, with_demo: bool) -> anyhow::Result<bool> {
    let demo_stop = tokio_util::sync::CancellationToken::new();
    if with_demo {
        start_demo_backend(&config, path, &demo_stop).await?;
    }
    // Installed first: a SIGUSR1 from logrotate while the gateway starts must not end it.
    let mut signals = gateway::Signals::new().context("cannot install signal handlers")?;
    let running = gateway::start(&config).await?;
    // The demo's console needs a token: one made now, unless the configuration names one.
    let demo_token = if with_demo && running.live().admin_token().is_none() {
        let token = demo_admin_token()?;
        running.live().set_fallback_token(&token);
        Some(token)
    } else {
        None
    };
    print_urls(&running, with_demo, demo_token.as_deref());
    // A change of the file (or of its certificates) on disk reloads, as SIGHUP does.
    let _watch = reload::watch(running.live().clone())
        .map_err(
            |e| tracing::warn!(error = %e, "configuration files not watched: reload with SIGHUP"),
        )
        .ok();
    while signals.next().await == gateway::Signal::Reload {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged (and counted) by the reload itself.
        let _ = running.reload().await;
    }
    let drained = running.shutdown().await;
    demo_stop.cancel();
    Ok(drained)
}

/// Binds the sample backend where the first route's upstream expects its first server, and
/// makes the development certificate if the configuration's is missing.
async fn start_demo_backend(
    config: &Config,
    path: &Path,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let upstream = config
        .routes
        .first()
        .and_then(|r| config.upstream(&r.upstream))
        .context("the demo needs a route with an upstream in the configuration")?;
    anyhow::ensure!(
        !upstream.servers.is_empty(),
        "the demo upstream has no server"
    );
    for l in &config.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificates) {
            if !c.cert.exists() && !c.key.exists() {
                let dir = c.cert.parent().unwrap_or(Path::new("."));
                let w = certs::generate(dir, &[])?;
                eprintln!(
                    "demo: made a development certificate {} (self-signed)",
                    w.cert.display()
                );
            }
        }
    }
    // One replica per server of the upstream: each page names the one that served it.
    let count = upstream.servers.len();
    for (i, server) in upstream.servers.iter().enumerate() {
        let addr: SocketAddr = server.authority.as_str().parse().with_context(|| {
            format!(
                "the demo backend must listen on an IP:PORT, but upstream {:?} names {}",
                upstream.name, server.authority
            )
        })?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot start the demo backend on {addr} (from {}): is something else using it?",
                path.display()
            )
        })?;
        let name = format!("replica {} of {count} ({addr})", i + 1);
        let stop = stop.clone();
        tokio::spawn(async move { demo::serve_backend(listener, &name, stop).await });
        tracing::info!(%addr, "demo backend replica listening");
    }
    start_classic_replicas(config, path, stop).await
}

/// The classic cookie application's replicas, one per server of the `classic` upstream (if
/// the configuration has one), each named by its server's `route`.
async fn start_classic_replicas(
    config: &Config,
    path: &Path,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let Some(classic) = config.upstream("classic") else {
        return Ok(());
    };
    for (i, server) in classic.servers.iter().enumerate() {
        let addr: SocketAddr = server.authority.as_str().parse().with_context(|| {
            format!(
                "a classic replica must listen on an IP:PORT, but {} names {}",
                path.display(),
                server.authority
            )
        })?;
        let name = server
            .route
            .clone()
            .unwrap_or_else(|| format!("replica{}", i + 1));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot start the classic replica {name} on {addr}: is something else using it?"
            )
        })?;
        let stop = stop.clone();
        tokio::spawn(async move { demo::cookie_shop::serve(listener, &name, stop).await });
        tracing::info!(%addr, "demo classic replica listening");
    }
    Ok(())
}

/// A random admin token for the demo's console (it lives as long as the process).
fn demo_admin_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn print_urls(running: &Running, with_demo: bool, demo_token: Option<&str>) {
    if with_demo {
        println!("\nsessiongate demo is running. Open:");
    }
    for l in running.listeners() {
        let scheme = if l.tls { "https" } else { "http" };
        let host = match l.addr.ip() {
            ip if ip.is_loopback() || ip.is_unspecified() => {
                if l.tls {
                    "localhost".to_owned()
                } else {
                    "127.0.0.1".to_owned()
                }
            }
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        println!(
            "  {scheme}://{host}:{}/   (listener {})",
            l.addr.port(),
            l.name
        );
    }
    if let Some(a) = running.admin_addr() {
        println!("  http://{a}/healthz   (admin)");
        if with_demo {
            println!("  http://{a}/console   (the admin console: live sessions and events)");
            if let Some(token) = demo_token {
                println!("      admin token for the console: {token}");
            }
        }
    }
    if with_demo {
        println!(
            "The shop runs as three replicas: each page names the one that served it, and the"
        );
        println!("session follows you from one to the next.");
        println!(
            "Under /classic/ a classic application with its own session cookie runs as two replicas:"
        );
        println!("the gateway keeps its cookie, and each page names the replica that served it.");
        println!("The https listener uses the self-signed development certificate in certs/.");
        println!("Press Ctrl-C to stop.\n");
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or one JSON object per
/// line (the event's fields at the top level, beside `timestamp`, `level` and `target`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
