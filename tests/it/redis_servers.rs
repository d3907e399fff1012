//! Redis servers of a test's own on free loopback ports: a single server, a Cluster of three
//! masters, a master with a replica watched by Sentinel. All are stopped with the test (or,
//! for the Cluster the whole test process shares, with the process).

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use crate::support::free_port;

/// A redis-server of the test's own on `port` (nothing on disk), killed when dropped.
pub struct OwnRedis(pub std::process::Child);

impl OwnRedis {
    /// A server that writes every change to an append-only file in `dir` before answering,
    /// so that one killed and started again on the same `dir` has lost nothing.
    pub fn start_durable(port: u16, dir: &std::path::Path) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        OwnRedis(child)
    }

    pub fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        OwnRedis(child)
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the server: an outage that keeps its data.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port whose Cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a Redis Cluster node");
}

/// Asks `redis-cli -p PORT ARGS...`; its output, or `None` if it failed.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the replica on `replica` has everything the master on `master` wrote.
pub fn in_sync(master: u16, replica: u16) -> bool {
    let offset = |port: u16| {
        let info = redis_cli(port, &["info", "replication"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    matches!((offset(master), offset(replica)), (Some(m), Some(r)) if m > 0 && m == r)
}

/// Waits (bounded) until `check` holds.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node URLs of a Redis Cluster of three masters (no replicas), started once for the whole
/// test process by a shell that stops the servers and removes their files when the process
/// ends (however it ends).
pub fn cluster_nodes() -> &'static [String] {
    static NODES: OnceLock<Vec<String>> = OnceLock::new();
    NODES.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sg-cluster")
            .tempdir()
            .unwrap()
            .keep();
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        let mut script = String::from("pids=''\n");
        for p in &ports {
            script += &format!(
                "redis-server --port {p} --bind 127.0.0.1 --cluster-enabled yes \
                 --cluster-config-file nodes-{p}.conf --cluster-node-timeout 2000 \
                 --dir '{dir}' --save '' --appendonly no >/dev/null &\npids=\"$pids $!\"\n",
                dir = dir.display()
            );
        }
        script += &format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done\nkill $pids\nwait\nrm -rf '{dir}'\n",
            parent = std::process::id(),
            dir = dir.display()
        );
        // Detached (the outer shell returns at once), so it outlives nothing but this process.
        let started = Command::new("sh")
            .args(["-c", &format!("(\n{script}) </dev/null >/dev/null 2>&1 &")])
            .status()
            .expect("sh");
        assert!(started.success(), "starting the cluster's shell");
        for p in &ports {
            wait_until(Duration::from_secs(10), "cluster node up", || {
                redis_cli(*p, &["ping"]).is_some_and(|o| o.contains("PONG"))
            });
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create");
        for p in &ports {
            wait_until(Duration::from_secs(20), "cluster state ok", || {
                redis_cli(*p, &["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok"))
            });
        }
        ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    })
}

/// A master, its replica and one Sentinel (quorum 1) watching it under the name `shop`, with
/// short timeouts so that a failover takes seconds. Everything is killed when dropped.
pub struct SentinelSet {
    pub master: OwnRedis,
    pub master_port: u16,
    pub replica_port: u16,
    pub sentinel_port: u16,
    _replica: OwnRedis,
    _sentinel: OwnRedis,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts all three and waits until the Sentinel knows the replica (bounded).
    pub fn start() -> SentinelSet {
        let dir = tempfile::tempdir().unwrap();
        let (master_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
        // A full sync writes an RDB file even with `--save ''`: both servers keep theirs in the
        // test's directory, not in the working directory (the repository).
        let master = OwnRedis(
            Command::new("redis-server")
                .args(["--port", &master_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--dbfilename", "master.rdb"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server"),
        );
        let replica = OwnRedis(
            Command::new("redis-server")
                .args(["--port", &replica_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--dbfilename", "replica.rdb"])
                .args(["--replicaof", "127.0.0.1", &master_port.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server"),
        );
        // Sentinel rewrites its configuration file, so it lives in the test's directory.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor shop 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds shop 500\n\
                 sentinel failover-timeout shop 3000\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let sentinel = OwnRedis(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel"),
        );
        wait_until(Duration::from_secs(20), "sentinel sees the replica", || {
            redis_cli(sentinel_port, &["sentinel", "replicas", "shop"])
                .is_some_and(|o| o.contains(&replica_port.to_string()))
        });
        SentinelSet {
            master,
            master_port,
            replica_port,
            sentinel_port,
            _replica: replica,
            _sentinel: sentinel,
            _dir: dir,
        }
    }

    /// The port of the master the Sentinel names now.
    pub fn current_master_port(&self) -> Option<u16> {
        let out = redis_cli(
            self.sentinel_port,
            &["sentinel", "get-master-addr-by-name", "shop"],
        )?;
        out.lines().nth(1)?.trim().parse().ok()
    }
}
