//! The shared store: sessions in Redis, so that several gateways serve one set of sessions.
//! Redis is the distributed engine (standalone, Sentinel or Cluster); this module only lays
//! sessions out in it ([`scripts`] has the layout) and keeps a near cache of them.
//!
//! Every change runs as one Lua script on one session's keys, so a session's changes and its
//! expiry refresh are atomic: two gateways setting different attributes of one session both
//! keep theirs.

mod admin;
mod batch;
mod circuit;
mod conn;
mod near;
mod pending;
mod scripts;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::{AsyncCommands, Script, Value};

use batch::Batcher;
use circuit::Circuit;
pub use conn::Topology;
use conn::{Conn, Connector};
use near::{NearCache, NearCopy};
use pending::{Pending, PendingWrite};

use super::StoreId;
use super::store::{
    Applied, Change, HandoffStore, Limits, Rejected, Session, SessionKey, SessionStore, StoreError,
    TOUCH_EVERY_MS,
};
use crate::deadline::{Elapsed, TimerPool};

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Where Redis is and how it is deployed.
    pub topology: Topology,
    /// For `rediss://`: CA certificates (PEM) to trust instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Prefix of every key.
    pub key_prefix: String,
    /// A session unused for this long is dropped by Redis.
    pub idle_timeout: Duration,
    /// A session older than this is dropped when read.
    pub absolute_timeout: Duration,
    /// Size limits on session data.
    pub limits: Limits,
    /// Longest wait for one operation.
    pub op_timeout: Duration,
    /// How long this gateway may serve a session from its near cache without asking Redis
    /// (zero: no near cache). Changes made through any gateway drop the copies at once
    /// (pub/sub); a copy missed while that channel is down lives at most this long.
    pub near_ttl: Duration,
    /// Most sessions in the near cache.
    pub near_max: u64,
    /// While Redis does not answer: serve sessions from the near cache and queue writes for
    /// when it is back (`on_error: serve_stale`), rather than fail (`fail_closed`).
    pub serve_stale: bool,
}

/// Sessions kept in Redis.
#[derive(Clone)]
pub struct RedisStore {
    /// The connection, made on first use (so that the gateway starts while Redis is down);
    /// after that it reconnects, follows Cluster moves and Sentinel failovers by itself.
    connector: Arc<Connector>,
    /// Reads of concurrent requests, sent together (not on a Cluster, where they may be
    /// meant for different nodes).
    batch: Option<Arc<Batcher>>,
    /// Recent sessions, by their own id (not an alias's), if the near cache is on.
    near: Option<NearCache>,
    /// With `serve_stale`: writes made while Redis did not answer, replayed when it does.
    pending: Option<Arc<Pending>>,
    /// Open while Redis does not answer: requests do not ask it (see [`circuit`]).
    circuit: Arc<Circuit>,
    /// This store's own marker key, by which its probe tells a Redis that lost its data
    /// (restarted empty) from one that kept it: other gateways set their own, so none can
    /// hide the loss from another.
    marker: Arc<str>,
    /// When this store last set its marker (Unix ms; 0: never).
    marked: Arc<AtomicU64>,
    /// Outage-class failures seen (see [`RedisStore::outages`]).
    outages: Arc<AtomicU64>,
    prefix: String,
    /// Where changes are announced: `PREFIX changed`.
    channel: String,
    idle: Duration,
    absolute: Duration,
    limits: Limits,
    op_timeout: Duration,
    /// Timers for the operation timeout: a met deadline registers none (see `deadline`).
    timers: Arc<TimerPool>,
    load: Script,
    update: Script,
    delete: Script,
    rename: Script,
    snapshot: Script,
    write_copy: Script,
    restore: Script,
    seal: Script,
    probe: Script,
    touch: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connector", &self.connector)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Redis failed, refused, or cannot be reached.
fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// Redis answered with what the gateway's scripts never write or return.
fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis: {e}"))
}

/// Redis did not answer in time.
fn timed_out(e: impl std::fmt::Display) -> StoreError {
    StoreError::TimedOut(format!("redis: {e}"))
}

/// How often a store sets its marker again (see [`RedisStore::mark`]).
const MARK_EVERY_MS: u64 = 24 * 3600 * 1000;

/// A random id for this store's marker.
fn marker_id() -> Result<String, StoreError> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| failed("no randomness for the store's marker"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What a request is told while the circuit is open.
fn down() -> StoreError {
    failed("session store down (not asked until a probe sees it answer)")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(id: &StoreId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * id.as_bytes().len());
    for &b in id.as_bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn parse_hex(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A session as read from Redis.
struct Read {
    /// About how long until its key expires unless used.
    ttl_ms: u64,
    /// Created, last used (Unix ms).
    created: u64,
    last: u64,
    /// Its key and attributes, packed.
    packed: Vec<u8>,
    /// For a hash a regenerate retired: the id the session was renamed to.
    renamed_to: Option<String>,
}

/// How far a retired id follows its successors (a session regenerated again within the
/// grace) before it counts as gone.
const MAX_RETIRED_HOPS: usize = 4;

/// What a script found under an id.
enum Found<T = Vec<Value>> {
    /// The session's data (the script's answer after its leading 1).
    Here(T),
    /// An alias: the id it names.
    Alias(String),
    /// Nothing (or, from rename, nothing to move).
    Nothing,
}

impl Found {
    fn from_reply(v: Value) -> Result<Found, StoreError> {
        let mut parts = match v {
            Value::Nil => return Ok(Found::Nothing),
            Value::Array(parts) => parts.into_iter(),
            other => return Err(corrupt(format!("unexpected script answer {other:?}"))),
        };
        match parts.next() {
            Some(Value::Int(1)) => Ok(Found::Here(parts.collect())),
            Some(Value::Int(2)) => {
                let to: String =
                    redis::from_redis_value(parts.next().unwrap_or(Value::Nil)).map_err(corrupt)?;
                Ok(Found::Alias(to))
            }
            _ => Ok(Found::Nothing),
        }
    }
}

/// What a rename did on one id.
enum Moved {
    Yes,
    No,
    /// The id is an alias of this one: move that.
    Alias(String),
}

impl RedisStore {
    /// A store for `options`; it connects on first use.
    ///
    /// # Errors
    /// A URL that is not a Redis URL.
    pub fn new(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let connector = Connector::new(
            &options.topology,
            options.ca_pem.as_ref(),
            options.op_timeout,
        )
        .map_err(failed)?;
        // Serving stale keeps copies as long as a session may idle; what a copy may serve in
        // normal times does not depend on this (see `load`).
        let keep = if options.serve_stale {
            options.near_ttl.max(options.idle_timeout)
        } else {
            options.near_ttl
        };
        let near = (!options.near_ttl.is_zero()).then(|| NearCache::new(options.near_max, keep));
        Ok(RedisStore {
            batch: (!connector.is_cluster()).then(|| Arc::new(Batcher::new(options.op_timeout))),
            connector: Arc::new(connector),
            near,
            pending: (options.serve_stale && !options.near_ttl.is_zero())
                .then(|| Arc::new(Pending::default())),
            circuit: Arc::default(),
            marker: Arc::from(scripts::marker_key(&options.key_prefix, &marker_id()?)),
            marked: Arc::default(),
            outages: Arc::default(),
            channel: format!("{}changed", options.key_prefix),
            prefix: options.key_prefix,
            idle: options.idle_timeout,
            absolute: options.absolute_timeout,
            limits: options.limits,
            op_timeout: options.op_timeout,
            timers: Arc::new(TimerPool::default()),
            load: scripts::script(scripts::LOAD),
            update: scripts::script(scripts::UPDATE),
            delete: scripts::script(scripts::DELETE),
            rename: scripts::script(scripts::RENAME),
            snapshot: scripts::script(scripts::SNAPSHOT),
            write_copy: scripts::script(scripts::WRITE_COPY),
            seal: scripts::script(scripts::SEAL),
            probe: scripts::script(scripts::PROBE),
            touch: scripts::script(scripts::TOUCH),
            restore: scripts::script(scripts::RESTORE),
        })
    }

    /// Reads the near cache served, and reads it sent to Redis; `None` without a near cache.
    pub fn near_cache_stats(&self) -> Option<(u64, u64)> {
        self.near.as_ref().map(NearCache::stats)
    }

    /// A store for `options`, connected now.
    ///
    /// # Errors
    /// A bad URL, or no Redis answering within the operation timeout.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let store = RedisStore::new(options)?;
        store.ping().await?;
        Ok(store)
    }

    /// The connection, made now if this is the first use (within the operation timeout).
    async fn conn(&self) -> Result<Conn, StoreError> {
        let conn = self.timed(self.connector.conn()).await?;
        let marked = self.marked.load(Ordering::Relaxed);
        if super::store::unix_ms().saturating_sub(marked) > MARK_EVERY_MS {
            self.mark(&conn).await;
        }
        if let Some(near) = &self.near {
            near.listen(&self.connector, &self.channel, self.pending.is_some());
        }
        Ok(conn)
    }

    /// Runs `f` within the operation timeout.
    async fn timed<T>(
        &self,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = self.timers.within(self.op_timeout, f).await;
        self.judged(r)
    }

    /// An operation's outcome within the operation timeout: an outage-class failure opens
    /// the circuit.
    fn judged<T>(&self, r: Result<redis::RedisResult<T>, Elapsed>) -> Result<T, StoreError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if circuit::is_outage(&e) {
                    self.trip();
                }
                Err(failed(e))
            }
            Err(_) => {
                self.connector.timed_out();
                self.trip();
                Err(timed_out(format!("no answer within {:?}", self.op_timeout)))
            }
        }
    }

    /// Like [`RedisStore::timed`], asking once more if the connection turned out to be dead
    /// before an answer came (Redis restarted while the gateway sat idle: the first command
    /// finds the old socket broken, and the connection is made again for the second). Only
    /// for operations that may run twice.
    async fn retried<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn().await?;
        match self.timers.within(self.op_timeout, op(conn)).await {
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::debug!(error = %e, "session store connection dropped: asking again");
            }
            r => return self.judged(r),
        }
        let conn = self.conn().await?;
        self.timed(op(conn)).await
    }

    /// Opens the circuit (Redis does not answer), and starts the probe that closes it.
    fn trip(&self) {
        self.outages.fetch_add(1, Ordering::Relaxed);
        if self.circuit.trip() {
            tracing::warn!(
                "session store does not answer: not asked on the request path until it does"
            );
            self.start_probe();
        }
    }

    fn start_probe(&self) {
        let store = self.clone();
        tokio::spawn(async move { store.probe().await });
    }

    /// A write was queued: a probe must replay it.
    fn replay_later(&self) {
        if self.circuit.ensure_probe() {
            self.start_probe();
        }
    }

    /// How many outage-class failures this store has seen (a replay tells by it whether its
    /// failure was one).
    pub(super) fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// Whether a request for session `id` must not ask Redis yet: Redis answers again, but
    /// writes of this session still wait in the queue, and its later ones go behind them.
    fn queued_behind(&self, id: &StoreId) -> bool {
        self.circuit.is_draining() && self.pending.as_ref().is_some_and(|p| p.has_queued(id))
    }

    /// Asks Redis every [`circuit::PROBE_EVERY`] until it answers, replays the writes queued
    /// meanwhile (after a Redis that lost its data, restoring each written session from this
    /// gateway's copy first), then closes the circuit once none is left. It is the only task
    /// that replays.
    async fn probe(self) {
        loop {
            tokio::time::sleep(circuit::PROBE_EVERY).await;
            // The store was replaced (a reload) and nothing else holds it.
            if Arc::strong_count(&self.circuit) == 1 {
                self.circuit.abandon();
                return;
            }
            let Ok(conn) = self.timed(self.connector.conn()).await else {
                continue;
            };
            let mut c = conn.clone();
            let Ok(kept) = self
                .timed(
                    redis::cmd("EXISTS")
                        .arg(&*self.marker)
                        .query_async::<bool>(&mut c),
                )
                .await
            else {
                continue;
            };
            let lost = !kept && self.marked.load(Ordering::Relaxed) > 0;
            if lost {
                tracing::warn!(
                    "session store lost its data (restarted empty?): queued writes restore their sessions"
                );
            }
            self.mark(&conn).await;
            // Sessions without queued writes ask Redis again from now on.
            self.circuit.drain();
            loop {
                if let Some(p) = &self.pending
                    && !p.replay(&self, lost).await
                {
                    break;
                }
                let empty = || self.pending.as_ref().is_none_or(|p| p.is_empty());
                if self.circuit.close_if(empty) {
                    tracing::info!("session store answers again");
                    return;
                }
                // Writes of sessions still queued came in meanwhile: those too.
            }
        }
    }

    /// Whether Redis answers a PING now (the probe's question, past the circuit).
    async fn answers(&self) -> bool {
        let Ok(mut conn) = self.conn().await else {
            return false;
        };
        self.timed(redis::cmd("PING").query_async::<Value>(&mut conn))
            .await
            .is_ok()
    }

    /// Sets the marker whose absence tells that Redis lost its data (it lives a week, and is
    /// set again every day and after each outage).
    async fn mark(&self, conn: &Conn) {
        let mut c = conn.clone();
        let set = self
            .timed(
                redis::cmd("SET")
                    .arg(&*self.marker)
                    .arg(1)
                    .arg("PX")
                    .arg(MARK_EVERY_MS * 7)
                    .query_async::<Value>(&mut c),
            )
            .await;
        if set.is_ok() {
            self.marked
                .store(super::store::unix_ms().max(1), Ordering::Relaxed);
        }
    }

    /// Writes this gateway's copy of session `id` back into a Redis that lost it (nothing is
    /// written over a session that is there).
    async fn restore(&self, id: &StoreId) -> Result<(), StoreError> {
        let Some(s) = self.pending.as_ref().and_then(|p| p.snapshot(id)) else {
            return Ok(());
        };
        let s = &s;
        // What is left of its idle time, as it was last used: a session that idled out
        // meanwhile stays out.
        let ttl = (s.last_seen_ms + ms(self.idle)).saturating_sub(super::store::unix_ms());
        if ttl == 0 {
            return Ok(());
        }
        let own = hex(id);
        let mut call = self.restore.prepare_invoke();
        call.key(scripts::session_key(&self.prefix, &own))
            .key(scripts::tombstone_key(&self.prefix, &own))
            .arg(&self.channel)
            .arg(&own)
            .arg(ttl)
            .arg("k")
            .arg(s.key())
            .arg("c")
            .arg(s.created_ms)
            .arg("l")
            .arg(s.last_seen_ms)
            .arg("v")
            .arg(1)
            .arg("p")
            .arg(&s.packed()[..]);
        for (n, v) in s.attrs() {
            call.arg(format!("a:{n}")).arg(v);
        }
        let mut conn = self.conn().await?;
        let _: Value = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Runs `script` on the keys of session `id` (its hash, its alias record) and `extra`
    /// keys, with `args`, within the operation timeout; asked again once if the connection
    /// turned out dead (see [`RedisStore::retried`]): for scripts that may run twice.
    async fn eval(
        &self,
        script: &Script,
        id: &str,
        extra: &[String],
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<Value, StoreError> {
        let call = Self::invocation(script, &self.prefix, id, extra, args);
        self.retried(|mut conn| {
            let call = &call;
            async move { call.invoke_async(&mut conn).await }
        })
        .await
    }

    /// [`RedisStore::eval`] asked once: for scripts that must not run twice (a rename).
    async fn eval_once(
        &self,
        script: &Script,
        id: &str,
        extra: &[String],
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<Value, StoreError> {
        let call = Self::invocation(script, &self.prefix, id, extra, args);
        let mut conn = self.conn().await?;
        self.timed(call.invoke_async(&mut conn)).await
    }

    fn invocation<'a>(
        script: &'a Script,
        prefix: &str,
        id: &str,
        extra: &[String],
        args: impl FnOnce(&mut redis::ScriptInvocation<'a>),
    ) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(scripts::session_key(prefix, id))
            .key(scripts::alias_key(prefix, id));
        for k in extra {
            call.key(k);
        }
        args(&mut call);
        call
    }

    /// Runs the update script for `changes` to the session under `id` (following an alias
    /// once); the id of the session changed and the script's reply, or `None`.
    async fn update_in_redis(
        &self,
        id: &StoreId,
        create: Option<&SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<(String, Vec<Value>)>, StoreError> {
        let mut target = hex(id);
        let mut create = create.map_or("", |k| k.as_str());
        for _hop in 0..2 {
            let reply = self
                .eval(&self.update, &target, &[], |call| {
                    call.arg(&self.channel)
                        .arg(&target)
                        .arg(now_ms)
                        .arg(ms(self.idle).max(1))
                        .arg(create)
                        .arg(self.limits.max_attributes)
                        .arg(self.limits.max_value_bytes)
                        .arg(self.limits.max_session_bytes);
                    for change in changes {
                        match change {
                            Change::Set(n, v) => call.arg("S").arg(n).arg(v),
                            Change::Unset(n) => call.arg("U").arg(n).arg(""),
                        };
                    }
                })
                .await?;
            match Found::from_reply(reply)? {
                Found::Here(parts) => return Ok(Some((target, parts))),
                Found::Nothing => return Ok(None),
                // No session is created under an alias: the one it names is changed, if any.
                Found::Alias(to) => (target, create) = (to, ""),
            }
        }
        Ok(None)
    }

    /// Replays a write queued while Redis did not answer; after Redis `lost` its data, the
    /// session is restored from this gateway's copy first.
    async fn replay(&self, w: &PendingWrite, lost: bool) -> Result<(), StoreError> {
        if w.delete {
            return self.delete_in_redis(&w.id).await;
        }
        if lost {
            self.restore(&w.id).await?;
        }
        self.update_in_redis(&w.id, w.create.as_ref(), &w.changes, w.now_ms)
            .await
            .map(|_| ())
    }

    /// With `serve_stale`, while Redis does not answer: the changes applied to this gateway's
    /// copy (which then serves), and queued for Redis; otherwise the error.
    async fn update_stale(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
        error: StoreError,
    ) -> Result<Option<Applied>, StoreError> {
        let (Some(pending), Some(near)) = (&self.pending, &self.near) else {
            return Err(error);
        };
        // Logged out here, the logout waiting for Redis: nothing to change, nor to create
        // again under this id.
        if pending.ended(id) {
            return Ok(None);
        }
        let (mut session, created) = match (near.get(id).await, &create) {
            (Some(copy), _) => (copy.session, false),
            (None, _) if let Some(s) = pending.snapshot(id) => (s, false),
            (None, Some(key)) => (Session::new(key.clone(), now_ms), true),
            (None, None) => return Err(error),
        };
        let rejected = session.apply(changes, &self.limits);
        session.last_seen_ms = session.last_seen_ms.max(now_ms);
        near.insert(*id, NearCopy::new(session.clone(), 0)).await;

        // A change is always queued (the oldest is dropped past the bound); the circuit's
        // probe replays it.
        pending.push(PendingWrite {
            id: *id,
            create,
            changes: changes.to_vec(),
            now_ms,
            delete: false,
        });
        // The session as this gateway has it now: what a Redis that lost its data gets back
        // (the near cache may drop its copy before the replay). Kept after the push, so that
        // it goes with the session's last queued write.
        pending.keep_snapshot(*id, session.clone());
        self.replay_later();
        tracing::warn!(error = %error, "session store down: change kept here, queued for Redis");
        Ok(Some(Applied {
            session,
            rejected,
            created,
        }))
    }

    /// Deletes the session `id` reaches in Redis (through an alias, the session it names).
    async fn delete_in_redis(&self, id: &StoreId) -> Result<(), StoreError> {
        let own = hex(id);
        let named: Option<String> = redis::from_redis_value(
            self.eval(
                &self.delete,
                &own,
                &[scripts::tombstone_key(&self.prefix, &own)],
                |call| {
                    call.arg(&self.channel).arg(&own).arg(ms(self.idle).max(1));
                },
            )
            .await?,
        )
        .map_err(failed)?;
        self.forget(id).await;
        // Deleting through an alias ends the session it names.
        if let Some(to) = named {
            let _: Value = self
                .eval(
                    &self.delete,
                    &to,
                    &[scripts::tombstone_key(&self.prefix, &to)],
                    |call| {
                        call.arg(&self.channel).arg(&to).arg(ms(self.idle).max(1));
                    },
                )
                .await?;
            if let Some(to) = parse_hex(&to) {
                self.forget(&StoreId::from_bytes(to)).await;
            }
        }
        Ok(())
    }

    /// Drops this gateway's near copy of `id` (other gateways hear of it by pub/sub); a read
    /// in flight meanwhile keeps no copy either (see [`Epoch`]).
    async fn forget(&self, id: &StoreId) {
        if let Some(near) = &self.near {
            near.forget(id).await;
        }
    }

    /// Renames the session under `from` (not following an alias) to `to`.
    async fn rename_here(&self, from: &str, to: &str, grace: u64) -> Result<Moved, StoreError> {
        if !self.connector.is_cluster() {
            // One server holds both ids: one atomic script.
            let reply = self
                .eval_once(
                    &self.rename,
                    from,
                    &[scripts::session_key(&self.prefix, to)],
                    |call| {
                        call.arg(&self.channel).arg(from).arg(to).arg(grace);
                    },
                )
                .await?;
            return Ok(match Found::from_reply(reply)? {
                Found::Here(_) => Moved::Yes,
                Found::Alias(t) => Moved::Alias(t),
                Found::Nothing => Moved::No,
            });
        }
        // In a Cluster the two ids may live on different nodes: copy, then retire the old
        // session only if no update came in between (else copy again).
        for _attempt in 0..5 {
            let reply = self.eval(&self.snapshot, from, &[], |_| {}).await?;
            let parts = match Found::from_reply(reply)? {
                Found::Here(parts) => parts,
                Found::Alias(t) => return Ok(Moved::Alias(t)),
                Found::Nothing => return Ok(Moved::No),
            };
            let mut parts = parts.into_iter();
            let ttl: i64 =
                redis::from_redis_value(parts.next().unwrap_or(Value::Nil)).map_err(corrupt)?;
            let hash: Vec<Vec<u8>> =
                redis::from_redis_value(parts.next().unwrap_or(Value::Nil)).map_err(corrupt)?;
            let version = hash
                .chunks_exact(2)
                .find(|p| p[0] == b"v")
                .map(|p| p[1].clone())
                .unwrap_or_default();
            let new_keys = [scripts::session_key(&self.prefix, to)];
            let mut copy = self.write_copy.prepare_invoke();
            copy.key(&new_keys[0]).arg(ttl.max(1));
            for field in &hash {
                copy.arg(field);
            }
            let mut conn = self.conn().await?;
            let _: i64 = self.timed(copy.invoke_async(&mut conn)).await?;
            let sealed: i64 = redis::from_redis_value(
                self.eval_once(&self.seal, from, &[], |call| {
                    call.arg(&self.channel)
                        .arg(from)
                        .arg(to)
                        .arg(grace)
                        .arg(&version);
                })
                .await?,
            )
            .map_err(failed)?;
            match sealed {
                1 => return Ok(Moved::Yes),
                0 => continue,
                _ => {
                    // Deleted meanwhile (a logout): the copy must not outlive it.
                    let _: i64 = self.timed(conn.del(&new_keys[0])).await?;
                    return Ok(Moved::No);
                }
            }
        }
        Err(failed("the session kept changing while it was renamed"))
    }

    /// The id of the session `id` reaches (itself, or the one its alias names), if any.
    async fn own_id(&self, id: &str) -> Result<Option<String>, StoreError> {
        let mut target = id.to_owned();
        for _hop in 0..2 {
            match Found::from_reply(self.eval(&self.probe, &target, &[], |_| {}).await?)? {
                Found::Here(_) => return Ok(Some(target)),
                Found::Alias(to) => target = to,
                Found::Nothing => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Sets `key` (an alias or a code) to the own id of the session `to` reaches, for `ttl`;
    /// `false` if it reaches none.
    async fn point(&self, key: &str, to: &StoreId, ttl: Duration) -> Result<bool, StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let Some(own) = self.own_id(&hex(to)).await? else {
            return Ok(false);
        };
        let mut conn = self.conn().await?;
        let _: () = self.timed(conn.pset_ex(key, &own, ms(ttl).max(1))).await?;
        Ok(true)
    }

    /// Reads the session under `id` from Redis (following an alias once), keeping a copy
    /// near when it was reached by its own id.
    async fn load_from_redis(
        &self,
        id: &StoreId,
        now_ms: u64,
    ) -> Result<Option<Session>, StoreError> {
        let epoch = self.near.as_ref().map(|n| n.epoch(id));
        let mut target = hex(id);
        for hop in 0..2 {
            // The common case needs no script: see `read`.
            let step = match self.read(&target, now_ms).await {
                Ok(Some(read)) => Ok(Found::Here(read)),
                Ok(None) => self.load_script(&target, now_ms).await,
                Err(e) => Err(e),
            };
            let read = match step {
                Ok(Found::Here(read)) => read,
                Ok(Found::Alias(to)) => {
                    if let Some(p) = &self.pending
                        && let Some(own) = parse_hex(&to).map(StoreId::from_bytes)
                    {
                        // A logout of the session, waiting for Redis, holds through its
                        // aliases too.
                        if p.ended(&own) {
                            return Ok(None);
                        }
                        p.followed(*id, own);
                    }
                    target = to;
                    continue;
                }
                Ok(Found::Nothing) => return Ok(None),
                Err(e) => {
                    if self.pending.is_some()
                        && self.circuit.is_open()
                        && let Some(near) = &self.near
                        && let Some(copy) = near.get(id).await
                    {
                        tracing::debug!(error = %e, "session served stale");
                        return Ok(Some(copy.session));
                    }
                    return Err(e);
                }
            };
            let age = Duration::from_millis(super::store::unix_ms().saturating_sub(read.created));
            let session = if age > self.absolute || read.packed.is_empty() {
                None
            } else {
                Session::from_packed(Bytes::from(read.packed), read.created, read.last)
            };
            // A retired id reads the session as it was, while the one it became lives; it is
            // never kept near (it must die with its grace, or with its successor, at once).
            if let Some(successor) = read.renamed_to {
                if session.is_none() || !self.lives(successor).await? {
                    return Ok(None);
                }
                return Ok(session.map(Session::retired));
            }
            // Only a session reached by its own id is kept near: invalidations name that id.
            // And only if no invalidation came while it was read: the copy could be of a
            // session that was changed, regenerated or ended meanwhile.
            if let (Some(near), Some(s), 0) = (&self.near, &session, hop)
                && Some(near.epoch(id)) == epoch
            {
                let expires_ms = now_ms.saturating_add(read.ttl_ms);
                near.insert(*id, NearCopy::new(s.clone(), expires_ms)).await;
            }
            return Ok(session);
        }
        Ok(None)
    }

    /// The load script on `id`: follows an alias, packs a session that lacks its packed form.
    async fn load_script(&self, id: &str, now_ms: u64) -> Result<Found<Read>, StoreError> {
        let reply = self
            .eval(&self.load, id, &[], |call| {
                call.arg(now_ms)
                    .arg(ms(self.idle).max(1))
                    .arg(TOUCH_EVERY_MS);
            })
            .await?;
        Ok(match Found::from_reply(reply)? {
            Found::Here(parts) => {
                let (ttl_ms, created, last, packed, renamed_to): (i64, u64, u64, Vec<u8>, String) =
                    redis::from_redis_value(Value::Array(parts)).map_err(corrupt)?;
                Found::Here(Read {
                    ttl_ms: u64::try_from(ttl_ms).unwrap_or(0),
                    created,
                    last,
                    packed,
                    renamed_to: (!renamed_to.is_empty()).then_some(renamed_to),
                })
            }
            Found::Alias(to) => Found::Alias(to),
            Found::Nothing => Found::Nothing,
        })
    }

    /// The read path without a script: one `HMGET p c l`, then, at most once per touch
    /// interval, the touch script. `None` when the id holds no packed session (an alias,
    /// nothing, or a session written before `p` existed): the caller runs the load script.
    async fn read(&self, id: &str, now_ms: u64) -> Result<Option<Read>, StoreError> {
        let key = scripts::session_key(&self.prefix, id);
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(&key).arg(&scripts::READ_FIELDS);
        let reply: Value = self
            .retried(|mut conn| {
                let (hmget, batch) = (&hmget, &self.batch);
                async move {
                    match batch {
                        Some(batch) => batch.query(&conn, hmget.clone()).await,
                        None => hmget.query_async(&mut conn).await,
                    }
                }
            })
            .await?;
        let Value::Array(fields) = reply else {
            return Ok(None);
        };
        let mut fields = fields.into_iter();
        let number = |v: Option<Value>| match v {
            Some(Value::BulkString(b)) => std::str::from_utf8(&b).ok()?.parse::<u64>().ok(),
            _ => None,
        };
        let (Some(Value::BulkString(packed)), Some(created), Some(mut last)) =
            (fields.next(), number(fields.next()), number(fields.next()))
        else {
            return Ok(None);
        };
        let renamed_to = match fields.next() {
            Some(Value::BulkString(to)) => Some(String::from_utf8_lossy(&to).into_owned()),
            _ => None,
        };
        if renamed_to.is_some() {
            // Retired: read as it was, never touched (its expiry is its grace).
            return Ok(Some(Read {
                ttl_ms: 0,
                created,
                last,
                packed,
                renamed_to,
            }));
        }
        let idle = ms(self.idle).max(1);
        // Every write sets the expiry to the idle timeout as it writes the last use, so the key
        // expires about `idle` after `l`, and no PTTL is needed: the use is noted once per
        // touch interval, or as soon as less than half the idle timeout is left.
        if now_ms.saturating_sub(last) >= TOUCH_EVERY_MS.min(idle / 2) {
            let mut touch = self.touch.prepare_invoke();
            touch.key(&key).arg(now_ms).arg(idle);
            let mut conn = self.conn().await?;
            let touched: i64 = self.timed(touch.invoke_async(&mut conn)).await?;
            if touched == 0 {
                return Ok(None);
            }
            last = last.max(now_ms);
        }
        Ok(Some(Read {
            ttl_ms: (last + idle).saturating_sub(now_ms),
            created,
            last,
            packed,
            renamed_to: None,
        }))
    }

    /// Whether the session a retired id was renamed to still lives (following further
    /// regenerates within the grace).
    async fn lives(&self, mut successor: String) -> Result<bool, StoreError> {
        for _ in 0..MAX_RETIRED_HOPS {
            // A logout of it, waiting for Redis (see `Pending::ended`), holds here too.
            if self.pending.as_ref().is_some_and(|p| {
                parse_hex(&successor).is_some_and(|own| p.ended(&StoreId::from_bytes(own)))
            }) {
                return Ok(false);
            }
            let key = scripts::session_key(&self.prefix, &successor);
            let mut conn = self.conn().await?;
            let (created, renamed): (Option<String>, Option<String>) = self
                .timed(
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg("c")
                        .arg("r")
                        .query_async(&mut conn),
                )
                .await?;
            match (created, renamed) {
                (None, _) => return Ok(false),
                (Some(_), None) => return Ok(true),
                (Some(_), Some(next)) => successor = next,
            }
        }
        Ok(false)
    }

    /// A session from its hash (`HGETALL`), if it is one and not past the absolute timeout.
    /// Fields are read in place (this runs on every read the near cache does not serve).
    fn session(&self, hash: &[Value]) -> Option<Session> {
        fn text(v: &Value) -> Option<&str> {
            match v {
                Value::BulkString(b) => std::str::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s.as_str()),
                _ => None,
            }
        }
        let (mut key, mut created, mut last) = (None, None, None);
        let mut attrs = Vec::with_capacity(hash.len() / 2);
        for pair in hash.chunks_exact(2) {
            let (field, value) = (text(&pair[0])?, text(&pair[1])?);
            match field {
                "k" => key = Some(value),
                "c" => created = value.parse::<u64>().ok(),
                "l" => last = value.parse::<u64>().ok(),
                f => {
                    if let Some(name) = f.strip_prefix("a:") {
                        attrs.push((name, value));
                    }
                }
            }
        }
        let (key, created, last) = (key?, created?, last?);
        let age = Duration::from_millis(super::store::unix_ms().saturating_sub(created));
        if age > self.absolute {
            return None;
        }
        Some(Session::from_parts(key, attrs, created, last))
    }
}

fn reason(text: &str) -> &'static str {
    match text {
        "max_value_bytes" => "max_value_bytes",
        "max_attributes" => "max_attributes",
        _ => "max_session_bytes",
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        // A logout made while Redis was down holds until it is replayed, even if Redis is
        // back first and still has the session.
        if let Some(p) = &self.pending
            && p.ended(id)
        {
            return Ok(None);
        }
        // Redis does not answer (or does, but this session's writes still wait): a copy
        // serves (with `serve_stale`), else the request is refused now rather than after the
        // operation timeout.
        if self.circuit.is_open() || self.queued_behind(id) {
            if let Some(p) = &self.pending {
                if let Some(near) = &self.near
                    && let Some(copy) = near.get(id).await
                {
                    near.hit();
                    return Ok(Some(copy.session));
                }
                // Written during the outage, its copy since dropped (the invalidation
                // channel, back before the replay ends, drops them all).
                if let Some(s) = p.snapshot(id) {
                    return Ok(Some(s));
                }
            }
            return Err(down());
        }
        // A near copy serves while its last use is recent; once it is older, one request goes
        // to Redis, which notes the use (so the near cache never hides a session's use from
        // the idle timeout), and the copy serves the others until that one is back.
        let mut refreshing = None;
        if let Some(near) = &self.near
            && let Some(copy) = near.get(id).await
            && copy.expires_ms.saturating_sub(now_ms) > ms(self.idle) / 2
        {
            if now_ms.saturating_sub(copy.session.last_seen_ms) < TOUCH_EVERY_MS
                || copy
                    .refreshing
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                near.hit();
                return Ok(Some(copy.session));
            }
            refreshing = Some(copy.refreshing);
        }
        if let Some(near) = &self.near {
            near.miss();
        }
        let found = self.load_from_redis(id, now_ms).await;
        if let Some(flag) = refreshing {
            match &found {
                // The next request tries again.
                Err(_) => flag.store(false, std::sync::atomic::Ordering::Release),
                // Served stale (Redis did not answer): the copy serves on.
                Ok(_) if self.circuit.is_open() => {
                    flag.store(false, std::sync::atomic::Ordering::Release);
                }
                // A copy that Redis did not replace (the session is gone, or is reached
                // through an alias now) must not serve on.
                Ok(_) => {
                    if let Some(near) = &self.near
                        && near
                            .get(id)
                            .await
                            .is_some_and(|c| Arc::ptr_eq(&c.refreshing, &flag))
                    {
                        near.drop_copy(id).await;
                    }
                }
            }
        }
        found
    }

    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<Applied>, StoreError> {
        if self.circuit.is_open() || self.queued_behind(id) {
            return self.update_stale(id, create, changes, now_ms, down()).await;
        }
        let parts = match self
            .update_in_redis(id, create.as_ref(), changes, now_ms)
            .await
        {
            Ok(parts) => parts,
            Err(e) if self.circuit.is_open() => {
                return self.update_stale(id, create, changes, now_ms, e).await;
            }
            Err(e) => return Err(e),
        };
        self.forget(id).await;
        let Some((own, parts)) = parts else {
            return Ok(None);
        };
        if let Some(own) = parse_hex(&own)
            && own != *id.as_bytes()
        {
            // Changed through an alias: this gateway's copy under the session's own id is
            // stale now, before the announcement comes back.
            self.forget(&StoreId::from_bytes(own)).await;
        }
        let (created, rejected, created_ms, last_ms, packed): (
            i64,
            Vec<String>,
            u64,
            u64,
            Vec<u8>,
        ) = redis::from_redis_value(Value::Array(parts)).map_err(corrupt)?;
        let Some(session) = Session::from_packed(Bytes::from(packed), created_ms, last_ms) else {
            return Ok(None);
        };
        let rejected = rejected
            .chunks_exact(2)
            .map(|r| Rejected {
                name: r[0].clone(),
                reason: reason(&r[1]),
            })
            .collect();
        Ok(Some(Applied {
            session,
            rejected,
            created: created == 1,
        }))
    }

    async fn delete(&self, id: &StoreId) -> Result<(), StoreError> {
        let stale = self.circuit.is_open() || self.queued_behind(id);
        let deleted = if stale {
            Err(down())
        } else {
            self.delete_in_redis(id).await
        };
        match deleted {
            Ok(()) => Ok(()),
            Err(e) if !stale && !self.circuit.is_open() => Err(e),
            // With serve_stale, a logout while Redis does not answer is not lost: this
            // gateway stops serving the session at once, and the delete is replayed.
            Err(e) => {
                let Some(pending) = &self.pending else {
                    return Err(e);
                };
                // Through an alias, the session's own id (and the copy kept under it) ends too.
                let own = pending.own_id(id);
                let mut queued = true;
                for id in std::iter::once(*id).chain(own) {
                    self.forget(&id).await;
                    pending.drop_snapshot(&id);
                    queued &= pending.push(PendingWrite {
                        id,
                        create: None,
                        changes: Vec::new(),
                        now_ms: 0,
                        delete: true,
                    });
                }
                self.replay_later();
                if !queued {
                    // Too many logouts wait: this one fails, visibly (the proxy answers 503),
                    // rather than be lost.
                    return Err(e);
                }
                tracing::warn!(error = %e, "session store down: logout queued for Redis");
                Ok(())
            }
        }
    }

    async fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let (from_hex, to_hex, grace) = (hex(from), hex(to), ms(grace));
        let moved = match self.rename_here(&from_hex, &to_hex, grace).await? {
            Moved::Yes => true,
            Moved::No => false,
            // Renamed through an alias: the session moves, and the alias, which names its
            // old id, now reads that id's retired view, and ends with it.
            Moved::Alias(own) => {
                let moved = matches!(self.rename_here(&own, &to_hex, grace).await?, Moved::Yes);
                if moved && let Some(own) = parse_hex(&own) {
                    self.forget(&StoreId::from_bytes(own)).await;
                }
                moved
            }
        };
        self.forget(from).await;
        Ok(moved)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let _: Value = self
            .retried(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        Ok(())
    }
}

impl HandoffStore for RedisStore {
    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.point(&scripts::alias_key(&self.prefix, &hex(alias)), to, ttl)
            .await
    }
    async fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.point(&scripts::code_key(&self.prefix, &hex(code)), to, ttl)
            .await
    }
    async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.conn().await?;
        let key = scripts::code_key(&self.prefix, &hex(code));
        let to: Option<String> = self
            .timed(redis::cmd("GETDEL").arg(&key).query_async(&mut conn))
            .await?;
        Ok(to.as_deref().and_then(parse_hex).map(StoreId::from_bytes))
    }
}
