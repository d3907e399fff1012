//! Redis as the gateway speaks to it: the connection, the operation timeout, the judgement
//! of every outcome (an outage-class failure opens the circuit), and the scripts and
//! commands on one session's keys with what they answer. No copies and no queue: the store
//! (`RedisStore`) composes the near cache and the outage queue over this.
//!
//! Why one file of this length: every script's invocation and the reading of its answer sit
//! together, beside the key layout in `scripts`, under the one judgement and retry rule they
//! share; split by operation, a reader would check that rule in several places.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{AsyncCommands, Script, Value};

use super::RedisOptions;
use super::batch::Batcher;
use super::circuit::{self, Circuit};
use super::conn::{Conn, Connector};
use super::scripts;
use crate::deadline::{Elapsed, TimerPool};
use crate::session::StoreId;
use crate::session::store::{
    Change, Limits, Session, SessionKey, StoreError, TOUCH_EVERY_MS, unix_ms,
};

/// Redis failed, refused, or cannot be reached.
pub(super) fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// Redis answered with what the gateway's scripts never write or return.
pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis: {e}"))
}

/// Redis did not answer in time.
pub(super) fn timed_out(e: impl std::fmt::Display) -> StoreError {
    StoreError::TimedOut(format!("redis: {e}"))
}

/// An admin scan's time, in operation timeouts.
const ADMIN_SCAN_TIMEOUTS: u32 = 10;

/// How often a store sets its marker again (see [`Wire::mark`]).
const MARK_EVERY_MS: u64 = 24 * 3600 * 1000;

/// A random id for this store's marker.
pub(super) fn marker_id() -> Result<String, StoreError> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| failed("no randomness for the store's marker"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What a request is told while the circuit is open.
pub(super) fn down() -> StoreError {
    failed("session store down (not asked until a probe sees it answer)")
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A session hash of `format` can be read here: this gateway's format, or the next one (see
/// [`scripts::FORMAT`]).
fn readable_format(format: u64) -> Result<(), StoreError> {
    if format <= scripts::FORMAT + 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "a session of format {format}: this gateway reads up to {}; upgrade it",
            scripts::FORMAT + 1
        )))
    }
}

pub(super) fn hex(id: &StoreId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * id.as_bytes().len());
    for &b in id.as_bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

pub(super) fn parse_hex(s: &str) -> Option<[u8; 16]> {
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
pub(super) struct Read {
    /// About how long until its key expires unless used.
    pub(super) ttl_ms: u64,
    /// Created, last used (Unix ms).
    pub(super) created: u64,
    pub(super) last: u64,
    /// Its key and attributes, packed.
    pub(super) packed: Vec<u8>,
    /// For a hash a regenerate retired: the id the session was renamed to.
    pub(super) renamed_to: Option<String>,
    /// This read noted a use (the key's expiry moved).
    pub(super) touched: bool,
}

/// How far a retired id follows its successors (a session regenerated again within the
/// grace) before it counts as gone.
pub(super) const MAX_RETIRED_HOPS: usize = 4;

/// What a script found under an id.
pub(super) enum Found<T = Vec<Value>> {
    /// The session's data (the script's answer after its leading 1).
    Here(T),
    /// An alias: the id it names.
    Alias(String),
    /// Nothing (or, from rename, nothing to move).
    Nothing,
}

impl Found {
    pub(super) fn from_reply(v: Value) -> Result<Found, StoreError> {
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
pub(super) enum Moved {
    Yes,
    No,
    /// The id is an alias of this one: move that.
    Alias(String),
}

/// What runs once, after a store's first connection.
#[derive(Default)]
struct FirstConnection {
    done: AtomicBool,
    then: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// Redis, spoken to.
#[derive(Clone)]
pub(super) struct Wire {
    /// The connection, made on first use (so that the gateway starts while Redis is down);
    /// after that it reconnects, follows Cluster moves and Sentinel failovers by itself.
    pub(super) connector: Arc<Connector>,
    /// Reads of concurrent requests, sent together (not on a Cluster, where they may be
    /// meant for different nodes).
    batch: Option<Arc<Batcher>>,
    /// Open while Redis does not answer: requests do not ask it (see [`circuit`]).
    pub(super) circuit: Arc<Circuit>,
    /// This store's own marker key, by which its probe tells a Redis that lost its data
    /// (restarted empty) from one that kept it: other gateways set their own, so none can
    /// hide the loss from another.
    marker: Arc<str>,
    /// When this store last set its marker (Unix ms; 0: never).
    marked: Arc<AtomicU64>,
    /// Outage-class failures seen (see [`Wire::outages`]).
    outages: Arc<AtomicU64>,
    pub(super) prefix: String,
    /// Where changes are announced: `PREFIX changed`.
    pub(super) channel: String,
    pub(super) idle: Duration,
    pub(super) absolute: Duration,
    pub(super) limits: Limits,
    op_timeout: Duration,
    /// Timers for the operation timeout: a met deadline registers none (see `deadline`).
    timers: Arc<TimerPool>,
    /// Run once, after the first connection (the near cache starts listening then).
    first_connection: Arc<FirstConnection>,
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

impl Wire {
    /// Redis as `options` place it; connected on first use.
    ///
    /// # Errors
    /// A URL that is not a Redis URL.
    pub(super) fn new(options: &RedisOptions) -> Result<Wire, StoreError> {
        let connector = Connector::new(
            &options.topology,
            options.ca_pem.as_ref(),
            options.op_timeout,
        )
        .map_err(failed)?;
        Ok(Wire {
            batch: (!connector.is_cluster()).then(|| Arc::new(Batcher::new(options.op_timeout))),
            connector: Arc::new(connector),
            circuit: Arc::default(),
            marker: Arc::from(scripts::marker_key(&options.key_prefix, &marker_id()?)),
            marked: Arc::default(),
            outages: Arc::default(),
            channel: format!("{}changed", options.key_prefix),
            prefix: options.key_prefix.clone(),
            idle: options.idle_timeout,
            absolute: options.absolute_timeout,
            limits: options.limits,
            op_timeout: options.op_timeout,
            timers: Arc::new(TimerPool::default()),
            first_connection: Arc::default(),
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

    /// What to do once, after the first connection: set once, when the store is made.
    pub(super) fn on_first_connection(&self, then: Box<dyn Fn() + Send + Sync>) {
        let _ = self.first_connection.then.set(then);
    }

    /// The connection, made now if this is the first use (within the operation timeout).
    pub(super) async fn conn(&self) -> Result<Conn, StoreError> {
        let conn = self.timed(self.connector.conn()).await?;
        let marked = self.marked.load(Ordering::Relaxed);
        if unix_ms().saturating_sub(marked) > MARK_EVERY_MS {
            self.mark(&conn).await;
        }
        // Checked first: this runs on every operation.
        let first = &self.first_connection;
        if !first.done.load(Ordering::Relaxed)
            && !first.done.swap(true, Ordering::Relaxed)
            && let Some(then) = first.then.get()
        {
            then();
        }
        Ok(conn)
    }

    /// Runs `f` within the operation timeout.
    pub(super) async fn timed<T>(
        &self,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = self.timers.within(self.op_timeout, f).await;
        self.judged(r)
    }

    /// An operation's outcome within the operation timeout: an outage-class failure opens
    /// the circuit.
    pub(super) fn judged<T>(
        &self,
        r: Result<redis::RedisResult<T>, Elapsed>,
    ) -> Result<T, StoreError> {
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

    /// Like [`Wire::timed`], asking once more if the connection turned out to be dead
    /// before an answer came (Redis restarted while the gateway sat idle: the first command
    /// finds the old socket broken, and the connection is made again for the second). Only
    /// for operations that may run twice.
    pub(super) async fn retried<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
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
    pub(super) fn trip(&self) {
        self.outages.fetch_add(1, Ordering::Relaxed);
        if self.circuit.trip() {
            tracing::warn!(
                "session store does not answer: not asked on the request path until it does"
            );
        }
    }

    /// How many outage-class failures this store has seen (a replay tells by it whether its
    /// failure was one).
    pub(super) fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// Whether Redis answers a PING now (the probe's question, past the circuit).
    pub(super) async fn answers(&self) -> bool {
        let Ok(mut conn) = self.conn().await else {
            return false;
        };
        self.timed(redis::cmd("PING").query_async::<Value>(&mut conn))
            .await
            .is_ok()
    }

    /// Sets the marker whose absence tells that Redis lost its data (it lives a week, and is
    /// set again every day and after each outage).
    pub(super) async fn mark(&self, conn: &Conn) {
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
            self.marked.store(unix_ms().max(1), Ordering::Relaxed);
        }
    }

    /// Runs `script` on the keys of session `id` (its hash, its alias record) and `extra`
    /// keys, with `args`, within the operation timeout; asked again once if the connection
    /// turned out dead (see [`Wire::retried`]): for scripts that may run twice.
    pub(super) async fn eval(
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

    /// [`Wire::eval`] asked once: for scripts that must not run twice (a rename).
    pub(super) async fn eval_once(
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

    /// `script` prepared on the keys of session `id` (its hash, its alias record) and
    /// `extra` keys, with `args`.
    pub(super) fn invocation<'a>(
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
    pub(super) async fn update_in_redis(
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

    /// Renames the session under `from` (not following an alias) to `to`.
    pub(super) async fn rename_here(
        &self,
        from: &str,
        to: &str,
        grace: u64,
    ) -> Result<Moved, StoreError> {
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
    pub(super) async fn own_id(&self, id: &str) -> Result<Option<String>, StoreError> {
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
    pub(super) async fn point(
        &self,
        key: &str,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
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

    /// The load script on `id`: follows an alias, packs a session that lacks its packed form.
    pub(super) async fn load_script(
        &self,
        id: &str,
        now_ms: u64,
    ) -> Result<Found<Read>, StoreError> {
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
                    // The script notes a use by writing the time it was given.
                    touched: last == now_ms,
                })
            }
            Found::Alias(to) => Found::Alias(to),
            Found::Nothing => Found::Nothing,
        })
    }

    /// The read path without a script: one `HMGET p c l`, then, at most once per touch
    /// interval, the touch script. `None` when the id holds no packed session (an alias,
    /// nothing, or a session written before `p` existed): the caller runs the load script.
    pub(super) async fn read(&self, id: &str, now_ms: u64) -> Result<Option<Read>, StoreError> {
        self.read_noting(id, now_ms, true).await
    }

    /// [`Wire::read`], noting the use only if `note` (a tunnel's look at its session must
    /// not keep it alive).
    pub(super) async fn read_noting(
        &self,
        id: &str,
        now_ms: u64,
        note: bool,
    ) -> Result<Option<Read>, StoreError> {
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
        if let Some(format) = number(fields.next()) {
            readable_format(format)?;
        }
        if renamed_to.is_some() {
            // Retired: read as it was, never touched (its expiry is its grace).
            return Ok(Some(Read {
                ttl_ms: 0,
                created,
                last,
                packed,
                renamed_to,
                touched: false,
            }));
        }
        let idle = ms(self.idle).max(1);
        // Every write sets the expiry to the idle timeout as it writes the last use, so the key
        // expires about `idle` after `l`, and no PTTL is needed: the use is noted once per
        // touch interval, or as soon as less than half the idle timeout is left.
        let touched = note && now_ms.saturating_sub(last) >= TOUCH_EVERY_MS.min(idle / 2);
        if touched {
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
            touched,
        }))
    }

    /// A session from its hash (`HGETALL`), if it is a live one: not retired by a regenerate
    /// (`r`: a view of a session found under its own id), not past the absolute timeout.
    /// Fields are read in place.
    pub(super) fn session(&self, hash: &[Value]) -> Option<Session> {
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
            let field = text(&pair[0])?;
            if field == "r" {
                return None;
            }
            // The packed form (`p`) is binary (its lengths are raw bytes): it is not read here,
            // and must not make a session with a value of 128 bytes or more unreadable.
            if !matches!(field, "k" | "c" | "l" | "f") && !field.starts_with("a:") {
                continue;
            }
            let value = text(&pair[1])?;
            match field {
                "k" => key = Some(value),
                "c" => created = value.parse::<u64>().ok(),
                "l" => last = value.parse::<u64>().ok(),
                "f" => readable_format(value.parse().ok()?).ok()?,
                f => {
                    if let Some(name) = f.strip_prefix("a:") {
                        attrs.push((name, value));
                    }
                }
            }
        }
        let (key, created, last) = (key?, created?, last?);
        let age = Duration::from_millis(unix_ms().saturating_sub(created));
        if age > self.absolute {
            return None;
        }
        Some(Session::from_parts(key, attrs, created, last))
    }

    /// The session id in a session hash's key (`PREFIX s:{ID}`), if it is one.
    pub(super) fn id_of(&self, key: &str) -> Option<StoreId> {
        scripts::id_of(&self.prefix, key)
            .and_then(parse_hex)
            .map(StoreId::from_bytes)
    }

    /// The probe's question, past the circuit: does Redis answer, and did it keep its data
    /// (this store's marker is there, if it was ever set)? `None`: no answer; `Some(lost)`.
    /// The marker is set again.
    pub(super) async fn answers_with_data(&self) -> Option<bool> {
        let conn = self.timed(self.connector.conn()).await.ok()?;
        let mut c = conn.clone();
        let kept = self
            .timed(
                redis::cmd("EXISTS")
                    .arg(&*self.marker)
                    .query_async::<bool>(&mut c),
            )
            .await
            .ok()?;
        let lost = !kept && self.marked.load(Ordering::Relaxed) > 0;
        if lost {
            tracing::warn!(
                "session store lost its data (restarted empty?): queued writes restore their sessions"
            );
        }
        self.mark(&conn).await;
        Some(lost)
    }

    /// Writes `s`, this gateway's copy of session `id` (or an imported one), into Redis for
    /// `ttl_ms`: nothing is written over a session that is there, nor over a logout's
    /// tombstone. `true` if written.
    pub(super) async fn restore_copy(
        &self,
        id: &StoreId,
        s: &Session,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let own = hex(id);
        let mut call = self.restore.prepare_invoke();
        call.key(scripts::session_key(&self.prefix, &own))
            .key(scripts::tombstone_key(&self.prefix, &own))
            .arg(&self.channel)
            .arg(&own)
            .arg(ttl_ms)
            .arg("k")
            .arg(s.key())
            .arg("c")
            .arg(s.created_ms)
            .arg("l")
            .arg(s.last_seen_ms)
            .arg("v")
            .arg(1)
            .arg("f")
            .arg(scripts::FORMAT)
            .arg("p")
            .arg(&s.packed()[..]);
        for (n, v) in s.attrs() {
            call.arg(format!("a:{n}")).arg(v);
        }
        let mut conn = self.conn().await?;
        let written: Value = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(matches!(written, Value::Int(1)))
    }

    /// Runs the delete script on `own` (a hex id): the session there ends, leaving a
    /// tombstone; the script's answer names the session an alias there pointed to.
    pub(super) async fn delete_here(&self, own: &str) -> Result<Value, StoreError> {
        self.eval(
            &self.delete,
            own,
            &[scripts::tombstone_key(&self.prefix, own)],
            |call| {
                call.arg(&self.channel).arg(own).arg(ms(self.idle).max(1));
            },
        )
        .await
    }

    /// Whether the session under `successor` (a hex id) exists, and the id it was renamed to
    /// if a regenerate retired it.
    pub(super) async fn successor(
        &self,
        successor: &str,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let key = scripts::session_key(&self.prefix, successor);
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("HMGET")
                .arg(&key)
                .arg("c")
                .arg("r")
                .query_async(&mut conn),
        )
        .await
    }

    /// The id a one-time `code` stands for, taken (once).
    pub(super) async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
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

    /// Whether Redis answers a PING (asked again once on a dead connection).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let _: Value = self
            .retried(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Every session hash key (a scan of every master: the admin API's, not a request path's).
    pub(super) async fn session_keys(&self) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}s:*", self.prefix);
        // A scan of a large keyspace may take longer than one operation: it gets more time,
        // and running out of it says nothing of whether Redis answers (no circuit trip).
        match self
            .timers
            .within(
                self.op_timeout * ADMIN_SCAN_TIMEOUTS,
                self.connector.scan(&pattern),
            )
            .await
        {
            Ok(r) => r.map_err(failed),
            Err(_) => Err(timed_out("the key scan took too long")),
        }
    }
}

pub(super) fn reason(text: &str) -> &'static str {
    match text {
        "max_value_bytes" => "max_value_bytes",
        "max_attributes" => "max_attributes",
        _ => "max_session_bytes",
    }
}
