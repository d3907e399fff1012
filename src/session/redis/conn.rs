//! Connections to Redis as it is deployed: one server, a Cluster, or a master that Sentinel
//! watches. The store sends every command through a [`Conn`], whichever it is; only the
//! admin scan and the invalidation listener need to know the deployment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ErrorKind, RedisFuture, RedisResult, ServerErrorKind, TlsCertificates, Value};
use tokio::sync::OnceCell;

/// How Redis is deployed: the configuration's own type.
pub use crate::config::RedisTopology as Topology;

/// Makes connections for one deployment and hands out the shared one.
pub(super) struct Connector {
    kind: Kind,
    /// The store's connection, made on first use (so a gateway starts while Redis is down).
    shared: OnceCell<Conn>,
    /// Which seed node the next invalidation subscription goes to (Cluster).
    next_seed: AtomicUsize,
    op_timeout: Duration,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per store, never moved on a request path"
)]
enum Kind {
    Single(redis::Client),
    /// The cluster client, and one plain client per seed node (pub/sub: a message published
    /// anywhere in a cluster reaches subscribers on every node).
    Cluster(ClusterClient, Vec<redis::Client>),
    Sentinel(Arc<Follower>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Single(_) => "standalone",
            Kind::Cluster(..) => "cluster",
            Kind::Sentinel(_) => "sentinel",
        };
        f.debug_struct("Connector")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

fn client(url: &str, ca: Option<&Vec<u8>>) -> RedisResult<redis::Client> {
    match ca {
        Some(ca) => redis::Client::build_with_tls(url, certs(ca)),
        None => redis::Client::open(url),
    }
}

fn certs(ca: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

impl Connector {
    /// A connector for `topology`; nothing connects yet.
    pub(super) fn new(
        topology: &Topology,
        ca: Option<&Vec<u8>>,
        op_timeout: Duration,
    ) -> RedisResult<Connector> {
        let kind = match topology {
            Topology::Standalone { url } => Kind::Single(client(url, ca)?),
            Topology::Cluster { nodes } => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(op_timeout)
                    .response_timeout(op_timeout);
                if let Some(ca) = ca {
                    builder = builder.certs(certs(ca));
                }
                let seeds = nodes
                    .iter()
                    .map(|n| client(n, ca))
                    .collect::<RedisResult<_>>()?;
                Kind::Cluster(builder.build()?, seeds)
            }
            Topology::Sentinel {
                master,
                nodes,
                username,
                password,
                db,
                tls,
            } => {
                let mut info = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(u) = username {
                    info = info.set_username(u);
                }
                if let Some(p) = password {
                    info = info.set_password(p);
                }
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                if *tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let sentinel = SentinelClient::build(
                    nodes.clone(),
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                Kind::Sentinel(Arc::new(Follower {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    current: std::sync::Mutex::new(None),
                    made: AtomicUsize::new(0),
                }))
            }
        };
        Ok(Connector {
            kind,
            shared: OnceCell::new(),
            next_seed: AtomicUsize::new(0),
            op_timeout,
        })
    }

    /// Whether keys of different sessions may live on different servers (a Cluster): a
    /// script may then touch only one session's keys.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(..))
    }

    /// The shared connection, made now if this is the first use.
    pub(super) async fn conn(&self) -> RedisResult<Conn> {
        // Boxed: connecting to a Cluster or through Sentinel is a deep future, and every store
        // operation would otherwise carry its layout.
        let make = || -> std::pin::Pin<Box<dyn Future<Output = RedisResult<Conn>> + Send + '_>> {
            Box::pin(async {
                Ok::<_, redis::RedisError>(match &self.kind {
                    Kind::Single(c) => {
                        // The store times each operation itself, on pooled timers: the client's
                        // own response timeout would add a timer per operation.
                        let config = ConnectionManagerConfig::new()
                            .set_response_timeout(None)
                            .set_connection_timeout(Some(self.op_timeout));
                        Conn::Single(ConnectionManager::new_with_config(c.clone(), config).await?)
                    }
                    Kind::Cluster(c, _) => Conn::Cluster(c.get_async_connection().await?),
                    Kind::Sentinel(f) => {
                        // Connect now, so a first use sees whether the master answers.
                        f.current().await?;
                        Conn::Sentinel(f.clone())
                    }
                })
            })
        };
        self.shared.get_or_try_init(make).await.cloned()
    }

    /// An operation took longer than the store allows: with Sentinel the master may be gone
    /// without a word (frozen, cut off), so the next operation asks the sentinels again.
    pub(super) fn timed_out(&self) {
        if let Kind::Sentinel(f) = &self.kind {
            f.forget(None);
        }
    }

    /// A client for a pub/sub subscription that hears every session change: the server, the
    /// current master, or the next seed node of the Cluster in turn.
    pub(super) async fn pubsub_client(&self) -> RedisResult<redis::Client> {
        match &self.kind {
            Kind::Single(c) => Ok(c.clone()),
            Kind::Cluster(_, seeds) => {
                let i = self.next_seed.fetch_add(1, Ordering::Relaxed);
                seeds
                    .get(i % seeds.len().max(1))
                    .cloned()
                    .ok_or_else(|| redis::RedisError::from((ErrorKind::Client, "no cluster nodes")))
            }
            Kind::Sentinel(f) => f.sentinel.lock().await.async_get_client().await,
        }
    }

    /// Every key matching `pattern`, on every master (the admin API's scan).
    pub(super) async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut conn = self.conn().await?;
        let mut keys = Vec::new();
        let masters = match &mut conn {
            Conn::Cluster(c) => cluster_masters(c).await?,
            _ => vec![None],
        };
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = match (&mut conn, &master) {
                    (Conn::Cluster(c), Some((host, port))) => {
                        let to = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        let v = tokio::time::timeout(
                            self.op_timeout,
                            c.route_command(scan, RoutingInfo::SingleNode(to)),
                        )
                        .await
                        .map_err(|_| timeout())??;
                        redis::from_redis_value(v)?
                    }
                    (conn, _) => tokio::time::timeout(self.op_timeout, scan.query_async(conn))
                        .await
                        .map_err(|_| timeout())??,
                };
                let (next, batch): (u64, Vec<String>) = reply;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}

fn timeout() -> redis::RedisError {
    redis::RedisError::from((ErrorKind::Io, "no answer within the operation timeout"))
}

/// The masters of a Cluster (`CLUSTER SLOTS`: per slot range, its master first).
async fn cluster_masters(c: &mut ClusterConnection) -> RedisResult<Vec<Option<(String, u16)>>> {
    let slots = c
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(slots)?;
    let mut masters = Vec::new();
    for range in ranges {
        if let Some(node) = range.get(2) {
            let (host, port): (String, u16) = match node {
                Value::Array(parts) if parts.len() >= 2 => (
                    redis::from_redis_value(parts[0].clone())?,
                    redis::from_redis_value(parts[1].clone())?,
                ),
                _ => continue,
            };
            let m = Some((host, port));
            if !masters.contains(&m) {
                masters.push(m);
            }
        }
    }
    Ok(masters)
}

/// Follows the master Sentinel names: one connection to it, dropped when it fails or answers
/// as a replica, after which the next operation asks the sentinels again.
pub(super) struct Follower {
    /// Asks the sentinels; held while asking, so that one lookup serves every waiting caller.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the master, and its number (so a failure drops only that one).
    current: std::sync::Mutex<Option<(usize, MultiplexedConnection)>>,
    made: AtomicUsize,
}

impl Follower {
    fn cached(&self) -> Option<(usize, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn current(&self) -> RedisResult<(usize, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut sentinel = self.sentinel.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = sentinel.get_async_connection_with_config(&config).await?;
        let n = self.made.fetch_add(1, Ordering::Relaxed) + 1;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((n, conn.clone()));
        tracing::info!(
            connection = n,
            "session store: connected to the master Sentinel names"
        );
        Ok((n, conn))
    }

    /// Drops connection `n` (or whichever is current), unless a newer one replaced it.
    fn forget(&self, n: Option<usize>) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|(m, _)| n.is_none_or(|n| n == *m))
        {
            *current = None;
        }
    }
}

/// Whether an error means the connection no longer reaches a master.
fn lost_master(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// A connection to whichever Redis the store uses; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server; reconnects by itself.
    Single(ConnectionManager),
    /// A Cluster; follows slot moves and node failures by itself.
    Cluster(ClusterConnection),
    /// The master Sentinel names; follows failovers.
    Sentinel(Arc<Follower>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(f) => Box::pin(async move {
                let (n, mut c) = f.current().await?;
                let r = c.req_packed_command(cmd).await;
                if let Err(e) = &r
                    && lost_master(e)
                {
                    f.forget(Some(n));
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(f) => Box::pin(async move {
                let (n, mut c) = f.current().await?;
                let r = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r
                    && lost_master(e)
                {
                    f.forget(Some(n));
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(f) => f.cached().map_or(0, |(_, c)| c.get_db()),
        }
    }
}
