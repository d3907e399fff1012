//! The shared store: sessions in Redis, so that several gateways serve one set of sessions.
//! Redis is the distributed engine; this module only lays sessions out in it.
//!
//! Layout, under a key prefix (`sg:` by default):
//! - `PREFIX s:ID` — a hash per session: `k` (its stable key), `c` (created, Unix ms),
//!   `l` (last used, Unix ms), and `a:NAME` per attribute. It expires (`PEXPIRE`) after the
//!   idle timeout since its last write; the absolute timeout is judged from `c`.
//! - `PREFIX m:ID` — another id of a session (a regenerated token's predecessor during the
//!   grace window, a sibling host's alias): the session's id, with its own expiry.
//!
//! Every change runs as one Lua script, so a session's changes and its expiry refresh are
//! atomic: two gateways setting different attributes of one session both keep theirs.
//! The scripts name keys they derive from their arguments, which a standalone Redis
//! allows (Cluster support will pass them as KEYS with a hash tag).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use moka::future::Cache;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};
use rustc_hash::FxBuildHasher;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::StoreId;
use super::store::{
    Applied, Change, Limits, Rejected, Session, SessionKey, SessionStore, StoreError,
    TOUCH_EVERY_MS,
};

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis[s]://[user:password@]host:port[/db]`.
    pub url: String,
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

/// Finds the hash of `ARGV[2]`, directly or through an alias; `false` if there is none.
const RESOLVE: &str = r"
local function resolve(p, id)
  local key = p .. 's:' .. id
  if redis.call('EXISTS', key) == 1 then return key, id end
  local to = redis.call('GET', p .. 'm:' .. id)
  if to and redis.call('EXISTS', p .. 's:' .. to) == 1 then return p .. 's:' .. to, to end
  return false, false
end
";

/// ARGV: prefix, id, now, idle ms, touch ms. Returns {the session's own id, its TTL in ms,
/// HGETALL}. A use is
/// written back (last use, expiry) only
/// when the last one is older than `touch`, or less than half the idle timeout is left.
const LOAD: &str = r"
local key, id = resolve(ARGV[1], ARGV[2])
if not key then return false end
local now, idle, touch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local last = tonumber(redis.call('HGET', key, 'l') or '0')
if now - last >= touch or redis.call('PTTL', key) < idle / 2 then
  if now > last then redis.call('HSET', key, 'l', now) end
  redis.call('PEXPIRE', key, idle)
end
return {id, redis.call('PTTL', key), redis.call('HGETALL', key)}
";

/// ARGV: prefix, id, now, idle ms, create key ('' for none), max attributes, max value
/// bytes, max session bytes, then (op 'S'/'U', name, value) per change.
/// Returns {created, {rejected name, reason, ...}, HGETALL} or false. A change is announced
/// on `PREFIX changed` (other gateways drop their near-cache copy).
const UPDATE: &str = r"
local p, id, now, idle = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local create = ARGV[5]
local max_attrs, max_value, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local key = resolve(p, id)
local created = 0
if not key then
  if create == '' or redis.call('EXISTS', p .. 'm:' .. id) == 1 then return false end
  key = p .. 's:' .. id
  redis.call('HSET', key, 'k', create, 'c', now, 'l', now)
  created = 1
end
local h = redis.call('HGETALL', key)
local attrs, count, size = {}, 0, 0
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 2) == 'a:' then
    local n = string.sub(h[i], 3)
    attrs[n] = h[i + 1]
    count = count + 1
    size = size + #n + #h[i + 1]
  end
end
local rejected = {}
for i = 9, #ARGV, 3 do
  local op, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = attrs[name]
  if op == 'U' then
    if old then
      size = size - #name - #old
      count = count - 1
      attrs[name] = nil
      redis.call('HDEL', key, 'a:' .. name)
    end
  else
    local new_size = size + #name + #value
    if old then new_size = new_size - #name - #old end
    local reason = nil
    if #value > max_value then reason = 'max_value_bytes'
    elseif (not old) and count >= max_attrs then reason = 'max_attributes'
    elseif new_size > max_bytes then reason = 'max_session_bytes' end
    if reason then
      table.insert(rejected, name)
      table.insert(rejected, reason)
    else
      if not old then count = count + 1 end
      attrs[name] = value
      size = new_size
      redis.call('HSET', key, 'a:' .. name, value)
    end
  end
end
local last = tonumber(redis.call('HGET', key, 'l') or '0')
if now > last then redis.call('HSET', key, 'l', now) end
redis.call('PEXPIRE', key, idle)
if #ARGV > 8 then redis.call('PUBLISH', p .. 'changed', string.sub(key, #p + 3)) end
return {created, rejected, redis.call('HGETALL', key)}
";

/// ARGV: prefix, id. Deletes the session and the alias `id` if it is one.
const DELETE: &str = r"
local key, id = resolve(ARGV[1], ARGV[2])
if key then
  redis.call('DEL', key)
  redis.call('PUBLISH', ARGV[1] .. 'changed', id)
end
redis.call('DEL', ARGV[1] .. 'm:' .. ARGV[2])
return 1
";

/// ARGV: prefix, from, to, grace ms. The session moves to `to`; `from` answers for `grace`.
const RENAME: &str = r"
local p = ARGV[1]
local key, id = resolve(p, ARGV[2])
if not key then return 0 end
local to = p .. 's:' .. ARGV[3]
redis.call('RENAME', key, to)
redis.call('PUBLISH', p .. 'changed', id)
local grace = tonumber(ARGV[4])
if grace > 0 then redis.call('SET', p .. 'm:' .. ARGV[2], ARGV[3], 'PX', grace)
else redis.call('DEL', p .. 'm:' .. ARGV[2]) end
return 1
";

/// ARGV: prefix, alias, to, ttl ms.
const ALIAS: &str = r"
local p = ARGV[1]
local key, id = resolve(p, ARGV[3])
if not key then return 0 end
redis.call('SET', p .. 'm:' .. ARGV[2], id, 'PX', math.max(1, tonumber(ARGV[4])))
return 1
";

/// Sessions kept in Redis.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    /// Made on first use, so that the gateway starts while Redis is down; after that it
    /// reconnects by itself.
    conn: Arc<OnceCell<ConnectionManager>>,
    /// Recent sessions, by their own id (not an alias's), if the near cache is on.
    near: Option<Cache<StoreId, NearCopy, FxBuildHasher>>,
    /// The near cache's invalidation listener: started with the connection, stopped when the
    /// last clone of the store goes.
    listener: Arc<Listener>,
    /// With `serve_stale`: writes made while Redis did not answer, replayed when it does.
    pending: Option<Arc<Pending>>,
    prefix: String,
    idle: Duration,
    absolute: Duration,
    limits: Limits,
    op_timeout: Duration,
    load: Script,
    update: Script,
    delete: Script,
    rename: Script,
    alias: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(id: &StoreId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisStore {
    /// A store for `options`; it connects on first use.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let client = match options.ca_pem {
            Some(ca) => redis::Client::build_with_tls(
                options.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            ),
            None => redis::Client::open(options.url.as_str()),
        }
        .map_err(failed)?;
        let script = |body: &str| Script::new(&format!("{RESOLVE}\n{body}"));
        // Serving stale keeps copies as long as a session may idle; what a copy may serve in
        // normal times does not depend on this (see `load`).
        let keep = if options.serve_stale {
            options.near_ttl.max(options.idle_timeout)
        } else {
            options.near_ttl
        };
        let near = (!options.near_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(options.near_max)
                .time_to_live(keep)
                .build_with_hasher(FxBuildHasher)
        });
        Ok(RedisStore {
            client,
            conn: Arc::new(OnceCell::new()),
            near,
            listener: Arc::new(Listener::default()),
            pending: (options.serve_stale && !options.near_ttl.is_zero())
                .then(|| Arc::new(Pending::default())),
            prefix: options.key_prefix,
            idle: options.idle_timeout,
            absolute: options.absolute_timeout,
            limits: options.limits,
            op_timeout: options.op_timeout,
            load: script(LOAD),
            update: script(UPDATE),
            delete: script(DELETE),
            rename: script(RENAME),
            alias: script(ALIAS),
        })
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
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let make = || async {
            tokio::time::timeout(self.op_timeout, ConnectionManager::new(self.client.clone()))
                .await
                .map_err(|_| failed("no connection within the operation timeout"))?
                .map_err(failed)
        };
        let conn = self.conn.get_or_try_init(make).await.cloned()?;
        if let Some(near) = &self.near {
            self.listener.start(
                self.client.clone(),
                format!("{}changed", self.prefix),
                near.clone(),
            );
        }
        Ok(conn)
    }

    /// Runs `f` within the operation timeout.
    async fn timed<T>(
        &self,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.op_timeout, f)
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.op_timeout)))?
            .map_err(failed)
    }

    /// Runs a prepared script call, within the operation timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(call.invoke_async(&mut conn)).await
    }

    /// A call of `script` with the key prefix and `id` as its first arguments.
    fn call<'s>(&self, script: &'s Script, id: &StoreId) -> redis::ScriptInvocation<'s> {
        let mut call = script.prepare_invoke();
        call.arg(&self.prefix).arg(hex(id));
        call
    }

    /// A call of the update script for `changes` to the session under `id`.
    fn update_call(
        &self,
        id: &StoreId,
        create: Option<&SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> redis::ScriptInvocation<'_> {
        let mut call = self.call(&self.update, id);
        call.arg(now_ms)
            .arg(ms(self.idle).max(1))
            .arg(create.map_or("", |k| k.0.as_str()))
            .arg(self.limits.max_attributes)
            .arg(self.limits.max_value_bytes)
            .arg(self.limits.max_session_bytes);
        for change in changes {
            match change {
                Change::Set(n, v) => call.arg("S").arg(n).arg(v),
                Change::Unset(n) => call.arg("U").arg(n).arg(""),
            };
        }
        call
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
        let (mut session, created) = match (near.get(id).await, &create) {
            (Some(copy), _) => (copy.session, false),
            (None, Some(key)) => (Session::new(key.clone(), now_ms), true),
            (None, None) => return Err(error),
        };
        let rejected = session.apply(changes, &self.limits);
        session.last_seen_ms = session.last_seen_ms.max(now_ms);
        let copy = NearCopy {
            session: session.clone(),
            expires_ms: 0,
        };
        near.insert(*id, copy).await;
        pending.push(PendingWrite {
            id: *id,
            create,
            changes: changes.to_vec(),
            now_ms,
        });
        pending.start(self.clone());
        tracing::warn!(error = %error, "session store down: change kept here, queued for Redis");
        Ok(Some(Applied {
            session,
            rejected,
            created,
        }))
    }

    /// Drops this gateway's near copy of `id` (other gateways hear of it by pub/sub).
    async fn forget(&self, id: &StoreId) {
        if let Some(near) = &self.near {
            near.invalidate(id).await;
        }
    }

    /// Every session hash key (a scan: the admin API's, not a request path's).
    async fn session_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}s:*", self.prefix);
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// A session from its hash (`HGETALL`), if it is one and not past the absolute timeout.
    fn session(&self, hash: &[Value]) -> Option<Session> {
        let text = |v: &Value| match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
            Value::SimpleString(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        };
        let (mut key, mut created, mut last) = (None, None, None);
        let mut attrs = Vec::new();
        for pair in hash.chunks_exact(2) {
            let (field, value) = (text(&pair[0])?, text(&pair[1])?);
            match field.as_str() {
                "k" => key = Some(value),
                "c" => created = value.parse::<u64>().ok(),
                "l" => last = value.parse::<u64>().ok(),
                f => {
                    if let Some(name) = f.strip_prefix("a:") {
                        attrs.push((name.to_owned(), value));
                    }
                }
            }
        }
        let (key, created, last) = (key?, created?, last?);
        let age = Duration::from_millis(super::store::unix_ms().saturating_sub(created));
        if age > self.absolute {
            return None;
        }
        Some(Session::from_parts(
            &key,
            attrs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            created,
            last,
        ))
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
        let mut call = self.call(&self.load, id);
        call.arg(now_ms)
            .arg(ms(self.idle).max(1))
            .arg(TOUCH_EVERY_MS);
        // A near copy serves while its last use is recent; an older one goes to Redis, which
        // notes the use (so the near cache never hides a session's use from the idle timeout).
        if let Some(near) = &self.near
            && let Some(copy) = near.get(id).await
            && now_ms.saturating_sub(copy.session.last_seen_ms) < TOUCH_EVERY_MS
            && copy.expires_ms.saturating_sub(now_ms) > ms(self.idle) / 2
        {
            return Ok(Some(copy.session));
        }
        let found: Option<(String, i64, Vec<Value>)> = match self.run(&call).await {
            Ok(found) => found,
            Err(e) => {
                if self.pending.is_some()
                    && let Some(near) = &self.near
                    && let Some(copy) = near.get(id).await
                {
                    tracing::debug!(error = %e, "session served stale");
                    return Ok(Some(copy.session));
                }
                return Err(e);
            }
        };
        let Some((own_id, ttl_ms, hash)) = found else {
            return Ok(None);
        };
        let session = self.session(&hash);
        // Only a session reached by its own id is kept near: invalidations name that id.
        if let (Some(near), Some(s)) = (&self.near, &session)
            && own_id == hex(id)
        {
            let copy = NearCopy {
                session: s.clone(),
                expires_ms: now_ms.saturating_add(u64::try_from(ttl_ms).unwrap_or(0)),
            };
            near.insert(*id, copy).await;
        }
        Ok(session)
    }

    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<Applied>, StoreError> {
        let call = self.update_call(id, create.as_ref(), changes, now_ms);
        let result: UpdateReply = match self.run(&call).await {
            Ok(result) => result,
            Err(e) => return self.update_stale(id, create, changes, now_ms, e).await,
        };
        self.forget(id).await;
        let Some((created, rejected, hash)) = result else {
            return Ok(None);
        };
        let Some(session) = self.session(&hash) else {
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
        let _: i64 = self.run(&self.call(&self.delete, id)).await?;
        self.forget(id).await;
        Ok(())
    }

    async fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        let mut call = self.call(&self.rename, from);
        call.arg(hex(to)).arg(ms(grace));
        let moved: i64 = self.run(&call).await?;
        self.forget(from).await;
        Ok(moved == 1)
    }

    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut call = self.call(&self.alias, alias);
        call.arg(hex(to)).arg(ms(ttl));
        let made: i64 = self.run(&call).await?;
        Ok(made == 1)
    }

    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let field = format!("a:{name}");
        let s_prefix = format!("{}s:", self.prefix);
        let mut deleted = 0;
        for key in self.session_keys().await? {
            let v: Option<String> = self.timed(conn.hget(&key, &field)).await?;
            let id = key.strip_prefix(&s_prefix).and_then(parse_hex);
            if let (Some(true), Some(id)) = (v.map(|v| v == value), id) {
                // Through the delete script, so that other gateways drop their copies.
                self.delete(&StoreId(id)).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        let mut conn = self.conn().await?;
        let s_prefix = format!("{}s:", self.prefix);
        for hash_key in self.session_keys().await? {
            let k: Option<String> = self.timed(conn.hget(&hash_key, "k")).await?;
            if k.as_deref() != Some(key.0.as_str()) {
                continue;
            }
            let Some(id) = hash_key
                .strip_prefix(&s_prefix)
                .and_then(parse_hex)
                .map(StoreId)
            else {
                continue;
            };
            let hash: Vec<Value> = self.timed(conn.hgetall(&hash_key)).await?;
            return Ok(self.session(&hash).map(|s| (id, s)));
        }
        Ok(None)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: String = self
            .timed(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
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

/// A session as this gateway last read it, and when its Redis key expires unless used: a copy
/// serves only while the same rules that make Redis note a use would not (see `LOAD`).
#[derive(Clone)]
struct NearCopy {
    session: Session,
    expires_ms: u64,
}

/// Listens on `PREFIX changed` and drops the near-cache copies of the sessions named there.
#[derive(Default)]
struct Listener {
    started: std::sync::atomic::AtomicBool,
    stop: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listener {
    /// Starts the listening task, once; it resubscribes after a lost connection.
    fn start(
        &self,
        client: redis::Client,
        channel: String,
        near: Cache<StoreId, NearCopy, FxBuildHasher>,
    ) {
        if self
            .started
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let stop = self.stop.clone();
        {
            tokio::spawn(async move {
                loop {
                    let listened = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = listen(&client, &channel, &near) => r,
                    };
                    if let Err(e) = listened {
                        tracing::warn!(error = %e, "near-cache invalidations: subscription lost");
                    }
                    // Copies missed meanwhile expire with the near cache's TTL.
                    near.invalidate_all();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            });
        }
    }
}

async fn listen(
    client: &redis::Client,
    channel: &str,
    near: &Cache<StoreId, NearCopy, FxBuildHasher>,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        if let Some(id) = std::str::from_utf8(msg.get_payload_bytes())
            .ok()
            .and_then(parse_hex)
        {
            near.invalidate(&StoreId(id)).await;
        }
    }
    Ok(())
}

/// What the update script answers: created, rejected (name, reason)*, the hash; or nothing.
type UpdateReply = Option<(i64, Vec<String>, Vec<Value>)>;

/// A write made while Redis did not answer.
struct PendingWrite {
    id: StoreId,
    create: Option<SessionKey>,
    changes: Vec<Change>,
    now_ms: u64,
}

/// Writes queued while Redis did not answer (at most `MAX`; the oldest go first), and the task
/// that replays them in order once it answers.
#[derive(Default)]
struct Pending {
    writes: std::sync::Mutex<std::collections::VecDeque<PendingWrite>>,
    running: std::sync::atomic::AtomicBool,
}

impl Pending {
    const MAX: usize = 10_000;

    fn push(&self, w: PendingWrite) {
        let mut q = self
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= Self::MAX {
            q.pop_front();
            tracing::warn!("session store down: queued writes over the bound, oldest dropped");
        }
        q.push_back(w);
    }

    fn pop(&self) -> Option<PendingWrite> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    fn is_empty(&self) -> bool {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    fn unpop(&self, w: PendingWrite) {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_front(w);
    }

    /// Starts the replaying task unless it runs; it ends when the queue is empty.
    fn start(self: &Arc<Self>, store: RedisStore) {
        if self.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                while let Some(w) = me.pop() {
                    let call = store.update_call(&w.id, w.create.as_ref(), &w.changes, w.now_ms);
                    let done: Result<UpdateReply, _> = store.run(&call).await;
                    if done.is_err() {
                        me.unpop(w);
                        break;
                    }
                }
                if me.is_empty() {
                    me.running
                        .store(false, std::sync::atomic::Ordering::Release);
                    // A write queued between the check and the flag would wait for the next
                    // one: take the task back if so.
                    if me.is_empty() || me.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }
}
