//! The subject index in Redis: one sorted set per subject, `PREFIX u:{HASH}` (the subject's
//! SHA-256, so that any subject makes a short key of its own slot), whose members are the
//! subject's session ids, each scored by when its session may expire at the latest. Each
//! script touches that one key (a Cluster runs it on the key's node; no command spans two
//! slots), drops the members past their score, and sets the key to expire with its last
//! member: a subject whose sessions have all expired leaves no key behind, without anyone
//! cleaning up (Spring Session's per-user sets, which nothing expires, are the failure this
//! layout avoids). The read path extends a member (or adds a missing one) when it notes a
//! session's use.

use redis::{AsyncCommands, Value};

use super::wire::{down, hex, parse_hex};
use super::{RedisStore, scripts};
use crate::session::StoreId;
use crate::session::store::{Session, StoreError, unix_ms};
use crate::session::subjects::{MAX_LISTED, SubjectIndex};

/// KEYS: index. ARGV: now, id, until. Adds (or moves) a member, drops expired ones, and lets
/// the key live as long as its last member.
const ADD: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(top[2])) + 1)
return 1
";

/// KEYS: index. ARGV: id, until. A session's use noted: its member lives until `until` (added
/// if it is missing: an entry a login could not write, Redis being away, comes back at the
/// session's next use; the session's subject is read from the session itself, so it is the
/// current one). `GT`: never shortened by a late, older write.
const EXTEND: &str = r"
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(top[2])) + 1)
return 1
";

/// KEYS: index. ARGV: id. Removes a member; an empty set goes.
const REMOVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
";

/// `PREFIX u:{HASH}`: the index key of `subject`.
pub(super) fn index_key(prefix: &str, subject: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, subject.as_bytes());
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}u:{{{hash}}}")
}

impl RedisStore {
    /// Runs one of this module's scripts on `subject`'s index key.
    async fn on_index(&self, body: &str, subject: &str, args: &[String]) -> Result<(), StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let script = redis::Script::new(body);
        let key = index_key(&self.0.wire.prefix, subject);
        let _: Value = self
            .0
            .wire
            .retried(|mut conn| {
                let (script, key) = (&script, &key);
                async move {
                    let mut call = script.prepare_invoke();
                    call.key(key);
                    for a in args {
                        call.arg(a);
                    }
                    call.invoke_async(&mut conn).await
                }
            })
            .await?;
        Ok(())
    }

    /// The read path noted a use of session `id` (its own id) of `subject`: its index entry
    /// lives until `until_ms` now. Run apart from the request (a failure only shortens the
    /// entry, which the next use extends again).
    pub(super) fn extend_index(&self, subject: String, id: StoreId, until_ms: u64) {
        let store = self.clone();
        tokio::spawn(async move {
            let args = [hex(&id), until_ms.to_string()];
            if let Err(e) = store.on_index(EXTEND, &subject, &args).await {
                tracing::debug!(error = %e, "subject index entry not extended");
            }
        });
    }
}

impl SubjectIndex for RedisStore {
    async fn index(&self, subject: &str, id: &StoreId, until_ms: u64) -> Result<(), StoreError> {
        let args = [unix_ms().to_string(), hex(id), until_ms.to_string()];
        self.on_index(ADD, subject, &args).await
    }

    async fn unindex(&self, subject: &str, id: &StoreId) -> Result<(), StoreError> {
        self.on_index(REMOVE, subject, &[hex(id)]).await
    }

    async fn count(&self, subject: &str) -> Result<usize, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let key = index_key(&self.0.wire.prefix, subject);
        let mut conn = self.0.wire.conn().await?;
        self.0
            .wire
            .timed(conn.zcount(&key, unix_ms(), "+inf"))
            .await
    }

    async fn of_subject(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let key = index_key(&self.0.wire.prefix, subject);
        let mut conn = self.0.wire.conn().await?;
        let members: Vec<String> = self
            .0
            .wire
            .timed(conn.zrangebyscore_limit(&key, unix_ms(), "+inf", 0, MAX_LISTED as isize))
            .await?;
        // Each session's hash on its own node: one command per key, no cross-slot one; sent
        // together (the connection pipelines them), not one round trip after another.
        let reads = members.iter().map(|member| {
            let (mut conn, wire) = (conn.clone(), &self.0.wire);
            let hash_key = scripts::session_key(&wire.prefix, member);
            async move { wire.timed(conn.hgetall::<_, Vec<Value>>(hash_key)).await }
        });
        let hashes = futures_util::future::join_all(reads).await;
        let mut found = Vec::with_capacity(members.len());
        let mut stale = Vec::new();
        for (member, hash) in members.into_iter().zip(hashes) {
            let hash = hash?;
            let Some(id) = parse_hex(&member).map(StoreId::from_bytes) else {
                stale.push(member);
                continue;
            };
            match self.0.wire.session(&hash) {
                Some(s) if s.attr(name) == Some(subject) => found.push((id, s)),
                _ => stale.push(member),
            }
        }
        if !stale.is_empty() {
            let _: Value = self.0.wire.timed(conn.zrem(&key, &stale)).await?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::index_key;

    #[test]
    fn a_subject_makes_a_short_key_of_its_own_slot() {
        let k = index_key("sg:", "alice");
        assert!(k.starts_with("sg:u:{") && k.ends_with('}'), "{k}");
        assert_eq!(k.len(), "sg:u:{}".len() + 32);
        assert_ne!(k, index_key("sg:", "Alice"));
        // Anything a backend may call a subject still makes a plain key.
        assert!(index_key("sg:", "{x}\r\n ").is_ascii());
    }
}
