//! The configuration in use, and how a reload replaces it.
//!
//! A reload reads the file again and builds everything from it before it changes anything:
//! a file with any problem is refused whole (its problems logged and counted) and the
//! configuration in use keeps serving. A good one is swapped in at once: routes, upstreams,
//! session policies (the session store is kept unless its own settings changed), the
//! certificates of TLS listeners, the admin token. Requests in flight finish on the
//! configuration they started with; open connections stay open and take the new one with
//! their next request. What only a restart can change (a listener's address, connection
//! limits, the log format) is reported, and the rest applies.
//!
//! Triggers: SIGHUP (see `main`), a change of the file or its certificates on disk (debounced,
//! [`watch`]), and `POST /reload` on the admin listener.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::listener::Drain;
use crate::listener::tls::{self, TlsSource};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// What a successful reload could not apply: each entry names a setting and says why it needs
/// a restart.
pub type NeedsRestart = Vec<String>;

/// The running configuration and what was built from it.
pub struct Live {
    proxy: ArcSwap<Proxy>,
    /// The configuration in use, and where it came from.
    config: Mutex<Arc<Config>>,
    path: PathBuf,
    /// The configuration the listeners were started with: what needs a restart is judged
    /// against it, so it is reported until a restart, not only by the reload that changed it.
    started: Arc<Config>,
    /// A hash of the contents of the file and its certificates as last read: the file watch
    /// reloads only when it changes (reading the files makes events too).
    seen: Mutex<u64>,
    /// The TLS settings of each TLS listener, by listener name.
    tls: Vec<(String, TlsSource)>,
    admin_token: ArcSwap<Option<String>>,
    /// The token that stands in while the configuration names none (the demo's).
    fallback_token: std::sync::OnceLock<String>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// The live state of a gateway started from `config` (read from `config.source`, which a
    /// reload reads again).
    pub fn new(
        config: Config,
        proxy: Proxy,
        tls: Vec<(String, TlsSource)>,
        admin_token: Option<String>,
        metrics: Arc<Metrics>,
        drain: Drain,
    ) -> Live {
        let config = Arc::new(config);
        Live {
            proxy: ArcSwap::from_pointee(proxy),
            path: PathBuf::from(&config.source),
            seen: Mutex::new(fingerprint(&watched_files(&config))),
            started: config.clone(),
            config: Mutex::new(config),
            tls,
            admin_token: ArcSwap::from_pointee(admin_token),
            fallback_token: std::sync::OnceLock::new(),
            metrics,
            drain,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The proxy of the configuration in use (a request keeps the one it started with).
    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.load_full()
    }

    /// The configuration in use.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The admin API's bearer token, if one is configured (or stands in, see
    /// [`Live::set_fallback_token`]).
    pub fn admin_token(&self) -> Arc<Option<String>> {
        let token = self.admin_token.load_full();
        match (token.as_ref(), self.fallback_token.get()) {
            (None, Some(fallback)) => Arc::new(Some(fallback.clone())),
            _ => token,
        }
    }

    /// A token for the admin API while the configuration names none, across reloads (the
    /// demo's console); set once.
    pub fn set_fallback_token(&self, token: &str) {
        let _ = self.fallback_token.set(token.to_owned());
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads the configuration file again and swaps it in if it is good.
    ///
    /// # Errors
    /// The file's problems (every one, each with its position); nothing changed.
    pub async fn reload(&self) -> Result<NeedsRestart, String> {
        let _one = self.reloading.lock().await;
        self.note_seen(&self.config());
        let outcome = self.try_reload();
        if outcome.is_ok() {
            // The new configuration may name other certificates.
            self.note_seen(&self.config());
        }
        self.metrics.reload(outcome.is_ok());
        match &outcome {
            Ok(restart) => {
                tracing::info!(file = %self.path.display(), "configuration reloaded");
                for what in restart {
                    tracing::warn!(setting = %what, "changed in the file, applies after a restart");
                }
            }
            Err(e) => tracing::error!(
                file = %self.path.display(),
                "configuration reload refused, the previous configuration keeps serving:\n{e}"
            ),
        }
        outcome
    }

    fn note_seen(&self, config: &Config) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            fingerprint(&watched_files(config));
    }

    /// Whether the watched files' contents differ from what was last read.
    fn changed_on_disk(&self) -> bool {
        let now = fingerprint(&watched_files(&self.config()));
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    fn try_reload(&self) -> Result<NeedsRestart, String> {
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        // Everything that can fail, before anything changes.
        let mut certificates = Vec::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let built = tls::server_config(t, &config.source).map_err(|e| e.to_string())?;
                certificates.push((l.name.clone(), built));
            }
        }
        let token = config.admin_token().map_err(|e| e.to_string())?;
        let old = self.proxy();
        let proxy = Proxy::new(
            &config,
            &self.metrics,
            &self.drain.stop,
            (self.drain.tracker.clone(), self.drain.force.clone()),
            Some(&old),
        )
        .map_err(|e| e.to_string())?;

        let restart = needs_restart(&self.started, &config);
        for (name, source) in &self.tls {
            if let Some((_, built)) = certificates.iter().find(|(n, _)| n == name) {
                source.store(built.clone());
            }
        }
        self.admin_token.store(Arc::new(token));
        let proxy = Arc::new(proxy);
        self.proxy.store(proxy.clone());
        old.retire(&proxy);
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(restart)
    }
}

/// The settings that changed between `old` and `new` but apply only after a restart: they
/// are fixed when a listener starts.
fn needs_restart(old: &Config, new: &Config) -> NeedsRestart {
    let mut out = Vec::new();
    let mut note = |what: String| out.push(what);
    for l in &new.listeners {
        let Some(o) = old.listeners.iter().find(|o| o.name == l.name) else {
            note(format!("listeners.{}: a new listener", l.name));
            continue;
        };
        if o.bind != l.bind {
            note(format!(
                "listeners.{}.bind: {} → {}",
                l.name, o.bind, l.bind
            ));
        }
        if o.tls.is_some() != l.tls.is_some() {
            note(format!("listeners.{}.tls: added or removed", l.name));
        }
        if o.proxy_protocol != l.proxy_protocol {
            note(format!("listeners.{}.proxy_protocol", l.name));
        }
        if o.redirect_to_https != l.redirect_to_https {
            note(format!("listeners.{}.redirect_to_https", l.name));
        }
        let (ot, nt) = (o.tls.as_ref(), l.tls.as_ref());
        if ot.map(|t| &t.hsts) != nt.map(|t| &t.hsts) && ot.is_some() && nt.is_some() {
            note(format!("listeners.{}.tls.hsts", l.name));
        }
        if ot.map(|t| t.handshake_timeout) != nt.map(|t| t.handshake_timeout)
            && ot.is_some()
            && nt.is_some()
        {
            note(format!("listeners.{}.tls.handshake_timeout", l.name));
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == o.name) {
            note(format!("listeners.{}: removed (it keeps serving)", o.name));
        }
    }
    if old.admin.as_ref().map(|a| a.bind) != new.admin.as_ref().map(|a| a.bind) {
        note("admin.bind".to_owned());
    }
    if old.limits.max_connections != new.limits.max_connections {
        note("limits.max_connections".to_owned());
    }
    if old.limits.max_header_bytes != new.limits.max_header_bytes {
        note("limits.max_header_bytes".to_owned());
    }
    if old.timeouts.header_read != new.timeouts.header_read {
        note("timeouts.header_read".to_owned());
    }
    if old.timeouts.send != new.timeouts.send {
        note("timeouts.send".to_owned());
    }
    if old.timeouts.idle != new.timeouts.idle {
        note(
            "timeouts.idle (for HTTP/2 connections; WebSocket tunnels take the new value)"
                .to_owned(),
        );
    }
    let proxied = new.listeners.iter().any(|l| l.proxy_protocol);
    if proxied && old.trusted_proxies != new.trusted_proxies {
        note("trusted_proxies (for the PROXY protocol; X-Forwarded-* use the new list)".to_owned());
    }
    if old.logs.format != new.logs.format {
        note("logs.format".to_owned());
    }
    out
}

/// The files whose contents make the configuration: the file itself, and the certificates
/// and keys it names.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![absolute(Path::new(&config.source))];
    for l in &config.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificates) {
            files.push(absolute(&c.cert));
            files.push(absolute(&c.key));
        }
    }
    files
}

/// A hash of the files' contents (a missing file counts as such).
fn fingerprint(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

/// Reloads when the contents of the configuration file, or of a certificate or key it names,
/// change on disk. The files' directories are watched (editors and deploy tools write a new
/// file and rename it over the old; Kubernetes swaps a `..data` link), events are debounced
/// for half a second, and a reload happens only when the files' contents differ from what was
/// last read: reading them (a reload does) makes events too. Directories named only by a
/// later configuration are watched after a restart (SIGHUP reloads whatever changed). The
/// watch stops when the returned value is dropped.
///
/// # Errors
/// The files' directories cannot be watched.
pub fn watch(live: Arc<Live>) -> notify::Result<impl Drop> {
    use notify::{EventKind, RecursiveMode};
    use notify_debouncer_full::{DebounceEventResult, new_debouncer};

    let files = watched_files(&live.config());
    let runtime = tokio::runtime::Handle::current();
    let mut debouncer = new_debouncer(
        Duration::from_millis(500),
        None,
        move |events: DebounceEventResult| {
            let Ok(events) = events else { return };
            // Opening and reading a file changes nothing.
            if events
                .iter()
                .all(|e| matches!(e.kind, EventKind::Access(_)))
            {
                return;
            }
            if !live.changed_on_disk() {
                return;
            }
            let live = live.clone();
            runtime.spawn(async move {
                tracing::info!("configuration files changed on disk: reloading");
                let _ = live.reload().await;
            });
        },
    )?;
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        debouncer.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(debouncer)
}

/// `path` made absolute against the working directory (event paths are absolute).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
