//! The shared store: sessions in Redis, so that several gateways serve one set of sessions.
//! Redis is the distributed engine (standalone, Sentinel or Cluster); this module only lays
//! sessions out in it ([`scripts`] has the layout) and keeps a near cache of them.
//!
//! [`RedisStore`] is composed, as tower-sessions' `CachingSessionStore` is: `wire` speaks
//! to Redis (and judges every outcome: an outage opens the circuit); the near cache
//! (`near`) is read before Redis is asked and forgets a copy on every write; with
//! `serve_stale`, while the circuit is open copies serve and writes wait in a queue
//! (`pending`) that the probe (`outage`) replays. The admin API's scans are in `admin`.
//! The wire reaches back to the store only through two callbacks set at its making (see
//! [`RedisStore::new`]).
//!
//! Every change runs as one Lua script on one session's keys, so a session's changes and its
//! expiry refresh are atomic: two gateways setting different attributes of one session both
//! keep theirs.
//!
//! Why one file of this length: each operation of the store contract is one decision over the
//! three parts (a read: copy, refresh, stale, alias, retired view), best read top to bottom.

mod admin;
mod batch;
mod circuit;
mod conn;
mod event_channel;
mod near;
mod outage;
mod pending;
mod scripts;
mod subjects;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;

pub use conn::Topology;
use near::{NearCache, NearCopy};
use pending::{Pending, PendingWrite};
use wire::{Found, Moved, Wire, corrupt, down, failed, hex, ms, parse_hex, reason};

use super::StoreId;
use super::store::{
    Applied, Change, HandoffStore, Limits, Rejected, Session, SessionKey, SessionStore, StoreError,
    TOUCH_EVERY_MS,
};

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
    /// The attribute that names a session's subject: a use of a session extends its entry in
    /// the subject index (see `subjects`).
    pub subject: String,
}

/// Sessions kept in Redis: the wire, with the near cache and the outage queue over it. A
/// clone shares them all.
#[derive(Clone)]
pub struct RedisStore(Arc<Parts>);

/// What a [`RedisStore`] is made of.
struct Parts {
    /// Redis itself.
    wire: Wire,
    /// Recent sessions, by their own id (not an alias's), if the near cache is on.
    near: Option<NearCache>,
    /// With `serve_stale`: writes made while Redis did not answer, replayed when it does.
    pending: Option<Arc<Pending>>,
    /// `RedisOptions::subject` (a reload may change it).
    subject: arc_swap::ArcSwap<String>,
    /// Other gateways' session events, relayed (see `event_channel`).
    relay: event_channel::Relay,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connector", &self.0.wire.connector)
            .field("prefix", &self.0.wire.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `options`; it connects on first use.
    ///
    /// # Errors
    /// A URL that is not a Redis URL.
    pub fn new(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let wire = Wire::new(&options)?;
        // Serving stale keeps copies as long as a session may idle; what a copy may serve in
        // normal times does not depend on this (see `load`).
        let keep = if options.serve_stale {
            options.near_ttl.max(options.idle_timeout)
        } else {
            options.near_ttl
        };
        let near = (!options.near_ttl.is_zero()).then(|| NearCache::new(options.near_max, keep));
        let pending = (options.serve_stale && !options.near_ttl.is_zero())
            .then(|| Arc::new(Pending::default()));
        let parts = Arc::new(Parts {
            wire,
            near,
            pending,
            subject: arc_swap::ArcSwap::from_pointee(options.subject.clone()),
            relay: event_channel::Relay::default(),
        });
        // The wire calls back into the store it is part of, by a weak reference (a strong
        // one would keep a replaced store, and its listener, alive for ever): a trip starts
        // the probe at once, and the first connection starts the near cache's listener.
        let store = Arc::downgrade(&parts);
        parts.wire.circuit.on_trip(Box::new(move || {
            if let Some(parts) = store.upgrade() {
                RedisStore(parts).start_probe();
            }
        }));
        if parts.near.is_some() {
            let store = Arc::downgrade(&parts);
            parts.wire.on_first_connection(Box::new(move || {
                if let Some(parts) = store.upgrade()
                    && let Some(near) = &parts.near
                {
                    near.listen(
                        &parts.wire.connector,
                        &parts.wire.channel,
                        parts.pending.is_some(),
                    );
                }
            }));
        }
        Ok(RedisStore(parts))
    }

    /// The attribute that names a session's subject from now on (a reload that changes
    /// `sessions.subject` keeps the store).
    pub fn set_subject(&self, attribute: &str) {
        if **self.0.subject.load() != attribute {
            self.0.subject.store(Arc::new(attribute.to_owned()));
        }
    }

    /// Reads the near cache served, and reads it sent to Redis; `None` without a near cache.
    pub fn near_cache_stats(&self) -> Option<(u64, u64)> {
        self.0.near.as_ref().map(NearCache::stats)
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

    /// Deletes the session `id` reaches in Redis (through an alias, the session it names),
    /// and this gateway's copies of it.
    async fn delete_in_redis(&self, id: &StoreId) -> Result<(), StoreError> {
        let named: Option<String> =
            redis::from_redis_value(self.0.wire.delete_here(&hex(id)).await?).map_err(failed)?;
        self.forget(id).await;
        // Deleting through an alias ends the session it names.
        if let Some(to) = named {
            let _: Value = self.0.wire.delete_here(&to).await?;
            if let Some(to) = parse_hex(&to) {
                self.forget(&StoreId::from_bytes(to)).await;
            }
        }
        Ok(())
    }

    /// Drops this gateway's near copy of `id` (other gateways hear of it by pub/sub); a read
    /// in flight meanwhile keeps no copy either.
    async fn forget(&self, id: &StoreId) {
        if let Some(near) = &self.0.near {
            near.forget(id).await;
        }
    }

    /// Reads the session under `id` from Redis (following an alias once), keeping a copy
    /// near when it was reached by its own id.
    async fn load_from_redis(
        &self,
        id: &StoreId,
        now_ms: u64,
    ) -> Result<Option<Session>, StoreError> {
        let epoch = self.0.near.as_ref().map(|n| n.epoch(id));
        let mut target = hex(id);
        for hop in 0..2 {
            // The common case needs no script: see `read`.
            let step = match self.0.wire.read(&target, now_ms).await {
                Ok(Some(read)) => Ok(Found::Here(read)),
                Ok(None) => self.0.wire.load_script(&target, now_ms).await,
                Err(e) => Err(e),
            };
            let read = match step {
                Ok(Found::Here(read)) => read,
                Ok(Found::Alias(to)) => {
                    if let Some(p) = &self.0.pending
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
                    if self.0.pending.is_some()
                        && self.0.wire.circuit.is_open()
                        && let Some(near) = &self.0.near
                        && let Some(copy) = near.get(id).await
                    {
                        tracing::debug!(error = %e, "session served stale");
                        return Ok(Some(copy.session));
                    }
                    return Err(e);
                }
            };
            let age = Duration::from_millis(super::store::unix_ms().saturating_sub(read.created));
            let session = if age > self.0.wire.absolute || read.packed.is_empty() {
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
            // A use noted: the subject index keeps the session as long as Redis does.
            if let (true, Some(s), Some(own)) = (
                read.touched,
                &session,
                parse_hex(&target).map(StoreId::from_bytes),
            ) && let Some(subject) = s.attr(&self.0.subject.load()).filter(|v| !v.is_empty())
            {
                let until = super::subjects::deadline(s, self.0.wire.idle, self.0.wire.absolute);
                self.extend_index(subject.to_owned(), own, until);
            }
            // Only a session reached by its own id is kept near: invalidations name that id.
            // And only if no invalidation came while it was read: the copy could be of a
            // session that was changed, regenerated or ended meanwhile.
            if let (Some(near), Some(s), 0) = (&self.0.near, &session, hop)
                && Some(near.epoch(id)) == epoch
            {
                let expires_ms = now_ms.saturating_add(read.ttl_ms);
                near.insert(*id, NearCopy::new(s.clone(), expires_ms)).await;
            }
            return Ok(session);
        }
        Ok(None)
    }

    /// Whether the session a retired id was renamed to still lives (following further
    /// regenerates within the grace).
    async fn lives(&self, mut successor: String) -> Result<bool, StoreError> {
        for _ in 0..wire::MAX_RETIRED_HOPS {
            // A logout of it, waiting for Redis (see `Pending::ended`), holds here too.
            if self.0.pending.as_ref().is_some_and(|p| {
                parse_hex(&successor).is_some_and(|own| p.ended(&StoreId::from_bytes(own)))
            }) {
                return Ok(false);
            }
            match self.0.wire.successor(&successor).await? {
                (None, _) => return Ok(false),
                (Some(_), None) => return Ok(true),
                (Some(_), Some(next)) => successor = next,
            }
        }
        Ok(false)
    }

    /// The session `id` reaches as it is, its use not noted (a tunnel looking whether its
    /// session still lives); a retired id reads its view while its successor lives.
    pub async fn peek(&self, id: &StoreId) -> Result<Option<Session>, StoreError> {
        // A logout or revocation made while Redis was away ended the session here already.
        if let Some(p) = &self.0.pending
            && (p.ended(id) || p.own_id(id).is_some_and(|own| p.ended(&own)))
        {
            return Ok(None);
        }
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let Some(own) = self.0.wire.own_id(&hex(id)).await? else {
            // Nothing, or only a retired hash (which `own_id` does not count): read it.
            return self.peek_here(&hex(id)).await;
        };
        self.peek_here(&own).await
    }

    async fn peek_here(&self, target: &str) -> Result<Option<Session>, StoreError> {
        let now = super::store::unix_ms();
        let Some(read) = self.0.wire.read_noting(target, now, false).await? else {
            return Ok(None);
        };
        let age = Duration::from_millis(now.saturating_sub(read.created));
        if age > self.0.wire.absolute || read.packed.is_empty() {
            return Ok(None);
        }
        let session = Session::from_packed(Bytes::from(read.packed), read.created, read.last);
        match read.renamed_to {
            Some(successor) => Ok(if self.lives(successor).await? {
                session.map(Session::retired)
            } else {
                None
            }),
            None => Ok(session),
        }
    }

    /// How many outage-class failures this store has seen (a replay tells by it whether its
    /// failure was one).
    pub(super) fn outages(&self) -> u64 {
        self.0.wire.outages()
    }

    /// Whether Redis answers a PING now (the probe's question, past the circuit).
    pub(super) async fn answers(&self) -> bool {
        self.0.wire.answers().await
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        // A logout made while Redis was down holds until it is replayed, even if Redis is
        // back first and still has the session.
        if let Some(p) = &self.0.pending
            && p.ended(id)
        {
            return Ok(None);
        }
        // Redis does not answer (or does, but this session's writes still wait): a copy
        // serves (with `serve_stale`), else the request is refused now rather than after the
        // operation timeout.
        if self.0.wire.circuit.is_open() || self.queued_behind(id) {
            if let Some(p) = &self.0.pending {
                if let Some(near) = &self.0.near
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
        if let Some(near) = &self.0.near
            && let Some(copy) = near.get(id).await
            && copy.expires_ms.saturating_sub(now_ms) > ms(self.0.wire.idle) / 2
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
        if let Some(near) = &self.0.near {
            near.miss();
        }
        let found = self.load_from_redis(id, now_ms).await;
        if let Some(flag) = refreshing {
            match &found {
                // The next request tries again.
                Err(_) => flag.store(false, std::sync::atomic::Ordering::Release),
                // Served stale (Redis did not answer): the copy serves on.
                Ok(_) if self.0.wire.circuit.is_open() => {
                    flag.store(false, std::sync::atomic::Ordering::Release);
                }
                // A copy that Redis did not replace (the session is gone, or is reached
                // through an alias now) must not serve on.
                Ok(_) => {
                    if let Some(near) = &self.0.near
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
        if self.0.wire.circuit.is_open() || self.queued_behind(id) {
            return self.update_stale(id, create, changes, now_ms, down()).await;
        }
        let parts = match self
            .0
            .wire
            .update_in_redis(id, create.as_ref(), changes, now_ms)
            .await
        {
            Ok(parts) => parts,
            Err(e) if self.0.wire.circuit.is_open() => {
                return self.update_stale(id, create, changes, now_ms, e).await;
            }
            Err(e) => return Err(e),
        };
        self.forget(id).await;
        let Some((own, parts)) = parts else {
            return Ok(None);
        };
        let own = parse_hex(&own).map_or(*id, StoreId::from_bytes);
        if own != *id {
            // Changed through an alias: this gateway's copy under the session's own id is
            // stale now, before the announcement comes back.
            self.forget(&own).await;
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
            id: own,
        }))
    }

    async fn delete(&self, id: &StoreId) -> Result<(), StoreError> {
        let stale = self.0.wire.circuit.is_open() || self.queued_behind(id);
        let deleted = if stale {
            Err(down())
        } else {
            self.delete_in_redis(id).await
        };
        match deleted {
            Ok(()) => Ok(()),
            Err(e) if !stale && !self.0.wire.circuit.is_open() => Err(e),
            // With serve_stale, a logout while Redis does not answer is not lost: this
            // gateway stops serving the session at once, and the delete is replayed.
            Err(e) => {
                let Some(pending) = &self.0.pending else {
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
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let (from_hex, to_hex, grace) = (hex(from), hex(to), ms(grace));
        let moved = match self.0.wire.rename_here(&from_hex, &to_hex, grace).await? {
            Moved::Yes => true,
            Moved::No => false,
            // Renamed through an alias: the session moves, and the alias, which names its
            // old id, now reads that id's retired view, and ends with it.
            Moved::Alias(own) => {
                let moved = matches!(
                    self.0.wire.rename_here(&own, &to_hex, grace).await?,
                    Moved::Yes
                );
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
        self.0.wire.ping().await
    }
}

impl HandoffStore for RedisStore {
    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.0
            .wire
            .point(
                &scripts::alias_key(&self.0.wire.prefix, &hex(alias)),
                to,
                ttl,
            )
            .await
    }

    async fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.0
            .wire
            .point(&scripts::code_key(&self.0.wire.prefix, &hex(code)), to, ttl)
            .await
    }

    async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
        self.0.wire.take_code(code).await
    }
}
