//! Prometheus metrics: what the gateway counts, and the text `/metrics` serves.
//!
//! One [`Metrics`] per gateway (no global registry: tests run several gateways in one
//! process), kept across configuration reloads so that counters do not restart. What the
//! request path counts is resolved once per route, listener or upstream into plain handles
//! (an atomic add each); what other parts already know (server health, store sizes, near
//! cache hits) is read when `/metrics` is scraped.
//!
//! Why one file of this length: every metric's name, help text and labels are here, so that
//! "what does this count, and where" has one place to look.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The content type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets from 0.5 ms to about 33 s (doubling): a proxied request on loopback takes
/// well under a millisecond, a slow backend tens of seconds.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Store operations: from 50 µs (memory) to about 3 s (a Redis timeout).
fn store_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// The methods counted by name; any other is `OTHER` (a client must not be able to make
/// series without end).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A method's place in [`METHODS`].
pub fn method_index(m: &Method) -> u8 {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// What happens to sessions, counted by [`Metrics::session`].
#[derive(Debug, Clone, Copy)]
pub enum SessionEvent {
    /// A backend's first `Set` made a session.
    Created,
    /// `X-Session-Action: regenerate` gave a session a new token.
    Regenerated,
    /// `X-Session-Action: destroy` (a logout) ended one.
    Destroyed,
    /// A request presented a correctly signed token whose session had expired or was gone.
    Expired,
    /// A directive was ignored (malformed, or over a limit), or a backend cookie was not
    /// kept or passed (named like ours, or one a browser would refuse).
    DirectiveRejected,
    /// A client's application cookie (`session.adopt`) became a session's kept cookie.
    Adopted,
    /// A session moved from a store a reload replaced into the new one.
    Migrated,
    /// The admin API ended a session, or its user did from another of theirs
    /// (`X-Session-Action: end-others`).
    Revoked,
    /// A login past `max_per_subject` ended another session of the same subject.
    Evicted,
}

impl SessionEvent {
    fn name(self) -> &'static str {
        match self {
            SessionEvent::Created => "created",
            SessionEvent::Regenerated => "regenerated",
            SessionEvent::Destroyed => "destroyed",
            SessionEvent::Expired => "expired",
            SessionEvent::DirectiveRejected => "directive_rejected",
            SessionEvent::Adopted => "adopted",
            SessionEvent::Migrated => "migrated",
            SessionEvent::Revoked => "revoked",
            SessionEvent::Evicted => "evicted",
        }
    }
}

/// Every metric of one gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabel>,
    upstream_duration: Histograms<UpstreamLabel>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    connections_open: Family<ListenerLabel, Gauge>,
    connections: Family<ListenerLabel, Counter>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    cuts: Family<HandshakeLabels, Counter>,
    sessions: Family<EventLabel, Counter>,
    store_duration: Histograms<StoreLabels>,
    store_errors: Family<StoreLabels, Counter>,
    rewrites: Counter,
    rewritten_bytes: Counter,
    /// Access lines a full queue could not take (a slow or full disk).
    access_dropped: Counter,
    reloads: Family<ResultLabel, Counter>,
    last_reload: Gauge,
    /// Requests that matched no route (404, and requests refused before routing); made on
    /// first use, from the families above.
    unrouted: OnceLock<Arc<RouteMetrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sessiongate");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route, method and status class",
            Family::clone(&requests),
        );
        let request_duration: Histograms<RouteLabel> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival until its response was sent in full, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration: Histograms<UpstreamLabel> = Family::new_with_constructor(latency);
        registry.register_with_unit(
            "upstream_duration",
            "Time from sending a request to a backend until its response head arrived",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Failed attempts to get a response from a backend, by upstream and error",
            Family::clone(&upstream_errors),
        );
        let connections_open = Family::default();
        registry.register(
            "connections_open",
            "Client connections open now, by listener",
            Family::clone(&connections_open),
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "Client connections accepted, by listener",
            Family::clone(&connections),
        );
        let handshake_failures = Family::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by listener",
            Family::clone(&handshake_failures),
        );
        let cuts = Family::default();
        registry.register(
            "connections_cut",
            "Client connections the gateway ended for breaking a limit, by listener and reason",
            Family::clone(&cuts),
        );
        let sessions = Family::default();
        registry.register(
            "session_events",
            "Sessions created, regenerated, destroyed, found expired, and directives rejected",
            Family::clone(&sessions),
        );
        let store_duration: Histograms<StoreLabels> = Family::new_with_constructor(store_latency);
        registry.register_with_unit(
            "store_operation_duration",
            "Time a session store operation took, by store and operation",
            Unit::Seconds,
            store_duration.clone(),
        );
        let store_errors = Family::default();
        registry.register(
            "store_errors",
            "Session store operations that failed (or timed out), by store and operation",
            Family::clone(&store_errors),
        );
        let rewrites = Counter::default();
        registry.register(
            "rewrites",
            "Responses rewritten to carry session tokens in their URLs",
            rewrites.clone(),
        );
        let access_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because the log's writer fell behind (a slow or full disk)",
            access_dropped.clone(),
        );
        let rewritten_bytes = Counter::default();
        registry.register_with_unit(
            "rewritten",
            "Bytes of rewritten responses sent to clients",
            Unit::Bytes,
            rewritten_bytes.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok, failed)",
            Family::clone(&reloads),
        );
        let last_reload = Gauge::default();
        registry.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the configuration in use was loaded (Unix time)",
            Unit::Seconds,
            last_reload.clone(),
        );
        registry.register(
            "build",
            "The gateway's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let metrics = Metrics {
            unrouted: OnceLock::new(),
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            connections_open,
            connections,
            handshake_failures,
            cuts,
            sessions,
            store_duration,
            store_errors,
            rewrites,
            access_dropped,
            rewritten_bytes,
            reloads,
            last_reload,
        };
        metrics.loaded();
        metrics
    }

    /// The handles of a route's request metrics.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics::new(name, self))
    }

    /// The counter of access-log lines dropped for a full queue.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_dropped.clone()
    }

    /// The handles of requests that matched no route.
    pub fn unrouted(&self) -> Arc<RouteMetrics> {
        self.unrouted.get_or_init(|| self.route("-")).clone()
    }

    /// The handles of an upstream's metrics.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let label = UpstreamLabel {
            upstream: name.to_owned(),
        };
        UpstreamMetrics {
            duration: self.upstream_duration.get_or_create_owned(&label),
            name: name.to_owned(),
            errors: self.upstream_errors.clone(),
        }
    }

    /// The handles of a listener's metrics (handshake failures only on a TLS listener).
    pub fn listener(&self, name: &str, tls: bool) -> ListenerMetrics {
        let label = ListenerLabel {
            listener: name.to_owned(),
        };
        let failure = |reason| {
            if !tls {
                return Counter::default();
            }
            self.handshake_failures
                .get_or_create_owned(&HandshakeLabels {
                    listener: name.to_owned(),
                    reason,
                })
        };
        let cuts = CUT_REASONS.map(|reason| {
            self.cuts.get_or_create_owned(&HandshakeLabels {
                listener: name.to_owned(),
                reason,
            })
        });
        ListenerMetrics {
            open: self.connections_open.get_or_create_owned(&label),
            accepted: self.connections.get_or_create_owned(&label),
            handshake_failed: failure("error"),
            handshake_timed_out: failure("timeout"),
            cuts: Arc::new(cuts),
        }
    }

    /// How many of each session event this gateway has counted, by name (the console).
    pub fn session_counts(&self) -> Vec<(&'static str, u64)> {
        [
            SessionEvent::Created,
            SessionEvent::Regenerated,
            SessionEvent::Destroyed,
            SessionEvent::Expired,
            SessionEvent::Revoked,
            SessionEvent::Evicted,
        ]
        .into_iter()
        .map(|e| {
            let n = self.sessions.get_or_create(&EventLabel { event: e.name() });
            (e.name(), n.get())
        })
        .collect()
    }

    /// Counts a session event.
    pub fn session(&self, event: SessionEvent) {
        self.sessions
            .get_or_create(&EventLabel {
                event: event.name(),
            })
            .inc();
    }

    /// The handles of one store operation's metrics.
    pub fn store_operation(&self, store: &'static str, operation: &'static str) -> StoreOpMetrics {
        let labels = StoreLabels { store, operation };
        StoreOpMetrics {
            duration: self.store_duration.get_or_create_owned(&labels),
            errors: self.store_errors.get_or_create_owned(&labels),
        }
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        if ok {
            self.loaded();
        }
    }

    fn loaded(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_reload.set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text of every metric, with `now` (read at the scrape) after them.
    pub fn encode(&self, now: Snapshot) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut scrape = Registry::with_prefix("sessiongate");
        scrape.register_collector(Box::new(now));
        let written = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &scrape))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if let Err(e) = written {
            // Writing to a String does not fail; say so rather than serve half a page.
            out.clear();
            let _ = writeln!(out, "# metrics could not be encoded: {e}");
        }
        out
    }
}

/// A route's request metrics: counters made on first use (so that `/metrics` shows only the
/// methods and statuses seen), then a load and an atomic add per request.
#[derive(Debug)]
pub struct RouteMetrics {
    name: String,
    family: Family<RequestLabels, Counter>,
    counts: [[OnceLock<Counter>; 5]; METHODS.len()],
    duration: Histogram,
    rewrites: Counter,
    rewritten_bytes: Counter,
}

impl RouteMetrics {
    fn new(name: &str, m: &Metrics) -> RouteMetrics {
        RouteMetrics {
            name: name.to_owned(),
            family: m.requests.clone(),
            counts: Default::default(),
            duration: m.request_duration.get_or_create_owned(&RouteLabel {
                route: name.to_owned(),
            }),
            rewrites: m.rewrites.clone(),
            rewritten_bytes: m.rewritten_bytes.clone(),
        }
    }

    /// Counts one answered request (`rewritten`: the bytes of a body that was rewritten).
    pub fn record(&self, method: u8, status: u16, elapsed: Duration, rewritten: Option<u64>) {
        if let Some(bytes) = rewritten {
            self.rewrites.inc();
            self.rewritten_bytes.inc_by(bytes);
        }
        let m = usize::from(method).min(METHODS.len() - 1);
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.counts[m][class]
            .get_or_init(|| {
                self.family.get_or_create_owned(&RequestLabels {
                    route: self.name.clone(),
                    method: METHODS[m],
                    status: CLASSES[class],
                })
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// An upstream's metrics.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    name: String,
    duration: Histogram,
    errors: Family<UpstreamErrorLabels, Counter>,
}

impl UpstreamMetrics {
    /// Notes how long a backend took to answer with a response head.
    pub fn answered(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a failed attempt (`error`: a short name, such as `refused` or `timeout`).
    pub fn failed(&self, error: &'static str) {
        self.errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: self.name.clone(),
                error,
            })
            .inc();
    }
}

/// A listener's metrics.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    open: Gauge,
    accepted: Counter,
    handshake_failed: Counter,
    handshake_timed_out: Counter,
    /// By [`CUT_REASONS`].
    cuts: Arc<[Counter; CUT_REASONS.len()]>,
}

/// Why the gateway ended a client connection (`connections_cut_total`'s reasons).
pub const CUT_REASONS: [&str; 7] = [
    "header_read",
    "send",
    "send_stream",
    "idle",
    "reclaimed",
    "cancelled_requests",
    "control_frames",
];

impl ListenerMetrics {
    /// The gateway ended a connection for `reason` (one of [`CUT_REASONS`]).
    pub fn cut(&self, reason: &str) {
        if let Some(i) = CUT_REASONS.iter().position(|r| *r == reason)
            && let Some(c) = self.cuts.get(i)
        {
            c.inc();
        }
    }

    /// A connection was accepted: it counts as open until the returned guard drops.
    pub fn accepted(&self) -> OpenConnection {
        self.accepted.inc();
        self.open.inc();
        OpenConnection(self.open.clone())
    }

    /// A TLS handshake failed (`timed_out`: the client took too long).
    pub fn handshake_failed(&self, timed_out: bool) {
        if timed_out {
            self.handshake_timed_out.inc();
        } else {
            self.handshake_failed.inc();
        }
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A store operation's metrics.
#[derive(Debug, Clone)]
pub struct StoreOpMetrics {
    duration: Histogram,
    errors: Counter,
}

impl StoreOpMetrics {
    /// Notes one operation.
    pub fn record(&self, elapsed: Duration, failed: bool) {
        self.duration.observe(elapsed.as_secs_f64());
        if failed {
            self.errors.inc();
        }
    }
}

/// A count kept by some part of the gateway itself (the memory store's evictions, the near
/// cache's hits), read at each scrape.
#[derive(Debug, Default)]
pub struct Tally(AtomicU64);

impl Tally {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What is read from the gateway's parts at a scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per backend: upstream, server, whether it takes traffic (healthy and not ejected),
    /// and its ejections so far.
    pub servers: Vec<(String, String, bool, u64)>,
    /// Sessions held, where the store knows (the memory store).
    pub sessions_live: Option<u64>,
    /// Sessions the memory store evicted for room.
    pub sessions_evicted: Option<u64>,
    /// Near-cache hits and misses (the Redis store).
    pub near_cache: Option<(u64, u64)>,
    /// Pages whose rewriting failed (this process).
    pub rewrite_errors: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    server: String,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn gauge(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            value: i64,
        ) -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        }
        fn counter(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            value: u64,
        ) -> Result<(), std::fmt::Error> {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        }
        if !self.servers.is_empty() {
            let mut up = encoder.encode_descriptor(
                "upstream_server_up",
                "Whether a backend takes traffic: 1 when healthy and not ejected",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (upstream, server, is_up, _) in &self.servers {
                let labels = ServerLabels {
                    upstream: upstream.clone(),
                    server: server.clone(),
                };
                ConstGauge::new(i64::from(*is_up)).encode(up.encode_family(&labels)?)?;
            }
            let mut ejections = encoder.encode_descriptor(
                "upstream_ejections",
                "Times a backend was ejected after consecutive failures",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (upstream, server, _, n) in &self.servers {
                let labels = ServerLabels {
                    upstream: upstream.clone(),
                    server: server.clone(),
                };
                ConstCounter::new(*n).encode(ejections.encode_family(&labels)?)?;
            }
        }
        if let Some(n) = self.sessions_live {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            gauge(
                &mut encoder,
                "sessions_live",
                "Sessions held by the memory store",
                n,
            )?;
        }
        if let Some(n) = self.sessions_evicted {
            counter(
                &mut encoder,
                "sessions_evicted",
                "Sessions the memory store evicted to stay within max_sessions",
                n,
            )?;
        }
        if let Some((hits, misses)) = self.near_cache {
            counter(
                &mut encoder,
                "near_cache_hits",
                "Session reads served from this gateway's near cache",
                hits,
            )?;
            counter(
                &mut encoder,
                "near_cache_misses",
                "Session reads the near cache could not serve (they asked Redis)",
                misses,
            )?;
        }
        counter(
            &mut encoder,
            "rewrite_errors",
            "Pages whose rewriting failed (passed on unchanged past the failure, or cut)",
            self.rewrite_errors,
        )
    }
}
