//! `sessions.store:` — which store keeps sessions: memory, the sealed cookie, or Redis
//! (standalone, Cluster or Sentinel).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::error::Problems;
use crate::config::node::Node;
use crate::config::reader::{
    MapReader, boolean, duration, integer, list, non_empty, one_of, positive_duration, size, string,
};

/// The memory store's default byte budget: a million sessions of a few small attributes
/// count about 160 MB, so it bounds only sessions far larger than those (a million sessions
/// at `max_session_bytes` would be 16 GiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// Which store keeps sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process.
    Memory {
        /// Most sessions kept.
        max_sessions: u64,
        /// Most bytes of sessions kept.
        max_bytes: u64,
    },
    /// In the client's cookie, sealed (AEAD): no server state at all.
    Cookie {
        /// Longest sealed cookie value.
        max_bytes: u64,
    },
    /// In Redis, shared by every gateway that uses it.
    Redis {
        /// Where Redis is and how it is deployed.
        topology: RedisTopology,
        /// Prefix of every key.
        key_prefix: String,
        /// Longest wait for one operation.
        timeout: Duration,
        /// How long a gateway may serve a session from its near cache (zero: off).
        near_ttl: Duration,
        /// Most sessions in the near cache.
        near_max: u64,
        /// `on_error: serve_stale`: while Redis does not answer, serve from the near cache and
        /// queue writes (else `fail_closed`: 503 for requests with a session).
        serve_stale: bool,
        /// For `rediss://`: the CA certificates (PEM) to trust instead of the system's.
        ca: Option<PathBuf>,
    },
}

/// How Redis is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy in front of several): `redis[s]://[user:password@]host:port[/db]`.
    Standalone {
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster: URLs of some of its nodes (the rest are discovered).
    Cluster {
        /// Seed node URLs, each with the credentials.
        nodes: Vec<String>,
    },
    /// A master watched by Sentinel: the gateway asks the sentinels where the master is, and
    /// asks again when it stops answering as one (a failover).
    Sentinel {
        /// The name the sentinels monitor the master under.
        master: String,
        /// Sentinel URLs (with the sentinels' own credentials, if any).
        nodes: Vec<String>,
        /// User for the master (ACL), if any.
        username: Option<String>,
        /// Password for the master, if any.
        password: Option<String>,
        /// Database number on the master.
        db: i64,
        /// Whether the master speaks TLS.
        tls: bool,
    },
}

/// Reads `sessions.store:` at `node` (a relative `ca` is taken from `base`).
/// What `sessions.store` says: the store, the memory store's snapshot file, and a Redis store
/// to move sessions from (with the window to read through it).
pub(super) struct StoreRead {
    pub(super) store: StoreConfig,
    pub(super) snapshot: Option<PathBuf>,
    pub(super) migrate_from: Option<(StoreConfig, Duration)>,
}

/// Reads `sessions.store`, and its `migrate_from: { kind: redis, redis: {...} }` and
/// `migrate_window` (default 24h): sessions move from that Redis into this store.
pub(super) fn read_store(
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<StoreRead> {
    let mut m = MapReader::new(node, path, p)?;
    let from_node = m.get("migrate_from");
    let from_path = m.child("migrate_from");
    let window = m
        .get("migrate_window")
        .and_then(|n| positive_duration(n, &m.child("migrate_window"), p))
        .unwrap_or(Duration::from_secs(24 * 3600));
    let migrate_from = from_node.and_then(|n| {
        let read = read_one(n, &from_path, base, p)?;
        match read.0 {
            StoreConfig::Redis { .. } => Some((read.0, window)),
            _ => {
                p.push(
                    n.pos,
                    &from_path,
                    "sessions move from a Redis store (kind: redis): a memory store is this \
                     process's own, and the cookie store has none",
                );
                None
            }
        }
    });
    let (store, snapshot) = read_in(m, node, path, base, p)?;
    if let (Some((from, _)), Some(n)) = (&migrate_from, from_node)
        && from.same_data(&store)
    {
        p.push(
            n.pos,
            &from_path,
            "migrate_from names this very store (the same Redis and key_prefix)",
        );
    }
    Some(StoreRead {
        store,
        snapshot,
        migrate_from,
    })
}

impl StoreConfig {
    /// Whether `self` and `other` keep their sessions in the same place: the same Redis (its
    /// topology and key prefix) whatever their tuning. Memory stores never do (each is its
    /// own), nor sealed cookies.
    pub fn same_data(&self, other: &StoreConfig) -> bool {
        match (self, other) {
            (
                StoreConfig::Redis {
                    topology: a,
                    key_prefix: pa,
                    ..
                },
                StoreConfig::Redis {
                    topology: b,
                    key_prefix: pb,
                    ..
                },
            ) => a == b && pa == pb,
            _ => false,
        }
    }
}

/// One store mapping (`kind` and its settings), nothing else in it.
fn read_one(
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<(StoreConfig, Option<PathBuf>)> {
    let m = MapReader::new(node, path, p)?;
    read_in(m, node, path, base, p)
}

/// A store mapping's `kind` and settings, read from `m`, which is then finished.
fn read_in(
    mut m: MapReader<'_>,
    node: &Node,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<(StoreConfig, Option<PathBuf>)> {
    let kind = match m.get("kind") {
        Some(n) => one_of(n, &m.child("kind"), &["memory", "redis", "cookie"], p)?,
        None => "memory",
    };
    let memory = m.get("memory");
    let mpath = m.child("memory");
    let redis = m.get("redis");
    let rpath = m.child("redis");
    let cookie = m.get("cookie");
    let cpath = m.child("cookie");
    m.finish(p);
    if kind == "cookie" {
        let mut max_bytes = 3800;
        if let Some(n) = cookie
            && let Some(mut cm) = MapReader::new(n, &cpath, p)
        {
            // Browsers keep cookies of about 4096 bytes, name and attributes included.
            if let Some(v) = cm
                .get("max_bytes")
                .and_then(|v| integer(v, &cm.child("max_bytes"), 256, 4000, p))
            {
                max_bytes = v;
            }
            cm.finish(p);
        }
        return Some((StoreConfig::Cookie { max_bytes }, None));
    }
    if kind == "redis" {
        let Some(r) = redis else {
            p.push(
                node.pos,
                path,
                "kind: redis needs a redis: { url: ... } section",
            );
            return None;
        };
        let mut rm = MapReader::new(r, &rpath, p)?;
        let topology = read_topology(r, &rpath, &mut rm, p);
        let key_prefix = rm
            .get("key_prefix")
            .and_then(|n| non_empty(n, &rm.child("key_prefix"), p))
            .unwrap_or_else(|| "sg:".to_owned());
        let timeout = rm
            .get("timeout")
            .and_then(|n| positive_duration(n, &rm.child("timeout"), p))
            .unwrap_or(Duration::from_secs(1));
        let (mut near_ttl, mut near_max) = (Duration::from_secs(2), 100_000);
        if let Some(n) = rm.get("near_cache")
            && let Some(mut nm) = MapReader::new(n, &rm.child("near_cache"), p)
        {
            if let Some(t) = nm.get("ttl").and_then(|v| duration(v, &nm.child("ttl"), p)) {
                near_ttl = t;
            }
            if let Some(m) = nm
                .get("max_sessions")
                .and_then(|v| integer(v, &nm.child("max_sessions"), 1, 1 << 40, p))
            {
                near_max = m;
            }
            nm.finish(p);
        }
        let ca = rm
            .get("ca")
            .and_then(|n| non_empty(n, &rm.child("ca"), p))
            .map(|c| base.join(c));
        let on_error = rm.get("on_error");
        let serve_stale = on_error
            .and_then(|n| one_of(n, &rm.child("on_error"), &["fail_closed", "serve_stale"], p))
            .is_some_and(|v| v == "serve_stale");
        if let (true, Some(n)) = (serve_stale && near_ttl.is_zero(), on_error) {
            p.push(
                n.pos,
                &rm.child("on_error"),
                "serve_stale serves from the near cache: give near_cache a ttl above 0s",
            );
        }
        rm.finish(p);
        return Some((
            StoreConfig::Redis {
                topology: topology?,
                key_prefix,
                timeout,
                near_ttl,
                near_max,
                serve_stale,
                ca,
            },
            None,
        ));
    }
    let (mut max_sessions, mut max_bytes) = (1_000_000, DEFAULT_MEMORY_BYTES);
    let mut snapshot = None;
    if let Some(n) = memory
        && let Some(mut mm) = MapReader::new(n, &mpath, p)
    {
        snapshot = mm
            .get("snapshot")
            .and_then(|n| non_empty(n, &mm.child("snapshot"), p))
            .map(|f| base.join(f));
        if let Some(v) = mm
            .get("max_sessions")
            .and_then(|v| integer(v, &mm.child("max_sessions"), 1, 1 << 40, p))
        {
            max_sessions = v;
        }
        if let Some(n) = mm.get("max_bytes") {
            match size(n, &mm.child("max_bytes"), p) {
                Some(v) if v >= 64 * 1024 => max_bytes = v,
                Some(_) => p.push(n.pos, &mm.child("max_bytes"), "at least 64KiB"),
                None => {}
            }
        }
        mm.finish(p);
    }
    Some((
        StoreConfig::Memory {
            max_sessions,
            max_bytes,
        },
        snapshot,
    ))
}

/// A Redis URL, if `node` holds one.
fn redis_url(node: &Node, path: &str, p: &mut Problems) -> Option<String> {
    let url = non_empty(node, path, p)?;
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Some(url)
    } else {
        p.push(
            node.pos,
            path,
            "a Redis URL starts with redis:// or rediss://",
        );
        None
    }
}

/// Redis URLs, at least one.
fn redis_urls(node: &Node, path: &str, p: &mut Problems) -> Option<Vec<String>> {
    let items = list(node, path, p)?;
    if items.is_empty() {
        p.push(node.pos, path, "list at least one node");
        return None;
    }
    let urls: Vec<_> = items
        .iter()
        .enumerate()
        .filter_map(|(i, n)| redis_url(n, &format!("{path}[{i}]"), p))
        .collect();
    (urls.len() == items.len()).then_some(urls)
}

/// Where Redis is: exactly one of `url`, `cluster` and `sentinel`.
fn read_topology(
    r: &Node,
    rpath: &str,
    rm: &mut MapReader<'_>,
    p: &mut Problems,
) -> Option<RedisTopology> {
    let url = rm.get("url").map(|n| (n, rm.child("url")));
    let cluster = rm.get("cluster").map(|n| (n, rm.child("cluster")));
    let sentinel = rm.get("sentinel").map(|n| (n, rm.child("sentinel")));
    match (url, cluster, sentinel) {
        (Some((n, path)), None, None) => Some(RedisTopology::Standalone {
            url: redis_url(n, &path, p)?,
        }),
        (None, Some((n, path)), None) => Some(RedisTopology::Cluster {
            nodes: redis_urls(n, &path, p)?,
        }),
        (None, None, Some((n, path))) => {
            let mut sm = MapReader::new(n, &path, p)?;
            let master = sm
                .require("master", n.pos, p)
                .and_then(|m| non_empty(m, &sm.child("master"), p));
            let nodes = sm
                .require("nodes", n.pos, p)
                .and_then(|m| redis_urls(m, &sm.child("nodes"), p));
            let username = sm
                .get("username")
                .and_then(|m| non_empty(m, &sm.child("username"), p));
            let password = sm
                .get("password")
                .and_then(|m| string(m, &sm.child("password"), p));
            let db = sm
                .get("db")
                .and_then(|m| integer(m, &sm.child("db"), 0, 1 << 20, p))
                .unwrap_or(0);
            let tls = sm
                .get("tls")
                .and_then(|m| boolean(m, &sm.child("tls"), p))
                .unwrap_or(false);
            sm.finish(p);
            Some(RedisTopology::Sentinel {
                master: master?,
                nodes: nodes?,
                username,
                password,
                db: i64::try_from(db).unwrap_or(0),
                tls,
            })
        }
        (None, None, None) => {
            p.push(r.pos, rpath, "say where Redis is: url, cluster or sentinel");
            None
        }
        _ => {
            p.push(
                r.pos,
                rpath,
                "give one of url, cluster and sentinel, not several",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{BASE, load, problems};

    #[test]
    fn a_redis_store_is_read_and_its_mistakes_reported() {
        let text = BASE.to_owned()
            + "sessions:\n  store:\n    kind: redis\n    redis: { url: \"redis://10.0.0.5:6379/2\", key_prefix: \"shop:\", timeout: 250ms, near_cache: { ttl: 0s } }\n";
        let s = load(&text).unwrap().sessions.unwrap();
        assert_eq!(
            s.store,
            StoreConfig::Redis {
                topology: RedisTopology::Standalone {
                    url: "redis://10.0.0.5:6379/2".to_owned()
                },
                key_prefix: "shop:".to_owned(),
                timeout: Duration::from_millis(250),
                near_ttl: Duration::ZERO,
                near_max: 100_000,
                serve_stale: false,
                ca: None,
            }
        );
        let errs =
            problems(&(BASE.to_owned() + "sessions:\n  store: { kind: redis }\n")).join("\n");
        assert!(errs.contains("needs a redis:"), "{errs}");
        let errs = problems(
            &(BASE.to_owned()
                + "sessions:\n  store: { kind: redis, redis: { url: \"http://x\" } }\n"),
        )
        .join("\n");
        assert!(errs.contains("sessions.store.redis.url"), "{errs}");
        let errs = problems(&(BASE.to_owned() + "sessions:\n  store: { kind: redis, redis: { url: \"redis://x\", on_error: serve_stale, near_cache: { ttl: 0s } } }\n")).join("\n");
        assert!(errs.contains("sessions.store.redis.on_error"), "{errs}");
    }

    #[test]
    fn a_redis_cluster_or_sentinel_is_read_and_exactly_one_place_is_asked_for() {
        let store = |redis: &str| {
            let text = BASE.to_owned()
                + &format!("sessions:\n  store:\n    kind: redis\n    redis: {redis}\n");
            match load(&text).map(|c| c.sessions.map(|s| s.store)) {
                Ok(Some(StoreConfig::Redis { topology, .. })) => Ok(topology),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(
            store("{ cluster: [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }"),
            Ok(RedisTopology::Cluster {
                nodes: vec![
                    "redis://10.0.0.1:7000".to_owned(),
                    "redis://10.0.0.2:7000".to_owned()
                ]
            })
        );
        assert_eq!(
            store(
                "{ sentinel: { master: shop, nodes: [\"redis://10.0.0.1:26379\"], username: gw, password: pw, db: 2, tls: true } }"
            ),
            Ok(RedisTopology::Sentinel {
                master: "shop".to_owned(),
                nodes: vec!["redis://10.0.0.1:26379".to_owned()],
                username: Some("gw".to_owned()),
                password: Some("pw".to_owned()),
                db: 2,
                tls: true,
            })
        );
        let err = store("{ url: \"redis://a\", cluster: [\"redis://b\"] }").unwrap_err();
        assert!(err.contains("not several"), "{err}");
        let err = store("{ key_prefix: x }").unwrap_err();
        assert!(err.contains("url, cluster or sentinel"), "{err}");
        let err = store("{ cluster: [] }").unwrap_err();
        assert!(err.contains("sessions.store.redis.cluster"), "{err}");
        let err = store("{ cluster: [\"http://b\"] }").unwrap_err();
        assert!(err.contains("sessions.store.redis.cluster[0]"), "{err}");
        let err = store("{ sentinel: { nodes: [\"redis://b\"] } }").unwrap_err();
        assert!(
            err.contains("sessions.store.redis.sentinel.master"),
            "{err}"
        );
    }
}
