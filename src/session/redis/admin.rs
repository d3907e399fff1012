//! The admin API's questions of the Redis store: every session key scanned (on every master
//! of a Cluster), to find a session by its stable key or end those whose attribute matches.
//! Never on the request path.

use redis::{AsyncCommands, Value};

use super::{RedisStore, down, scripts};
use crate::session::StoreId;
use crate::session::store::{AdminStore, Session, SessionKey, SessionStore, StoreError, unix_ms};

impl AdminStore for RedisStore {
    async fn delete_where(
        &self,
        name: &str,
        value: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        self.scan_and_delete(name, value).await
    }

    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        self.scan_for_key(key).await
    }

    async fn export(&self) -> Result<Vec<(StoreId, Session)>, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.0.wire.conn().await?;
        let mut out = Vec::new();
        for hash_key in self.0.wire.session_keys().await? {
            let Some(id) = self.0.wire.id_of(&hash_key) else {
                continue;
            };
            let hash: Vec<Value> = self.0.wire.timed(conn.hgetall(&hash_key)).await?;
            // A retired id is a view of a session exported under its own id.
            if let Some(s) = self.0.wire.session(&hash) {
                out.push((id, s));
            }
        }
        Ok(out)
    }

    async fn is_own(&self, id: &StoreId) -> Result<bool, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.0.wire.conn().await?;
        let hex: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let key = scripts::session_key(&self.0.wire.prefix, &hex);
        let (k, renamed): (Option<String>, Option<String>) = self
            .0
            .wire
            .timed(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("k")
                    .arg("r")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(k.is_some() && renamed.is_none())
    }

    async fn import(&self, id: &StoreId, session: &Session) -> Result<bool, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        // As long as the session has left to idle, as last used (never more than the idle
        // timeout, whatever the line says).
        let idle = u64::try_from(self.0.wire.idle.as_millis()).unwrap_or(u64::MAX);
        let ttl = session
            .last_seen_ms
            .saturating_add(idle)
            .saturating_sub(unix_ms())
            .min(idle);
        if ttl == 0 {
            return Ok(false);
        }
        self.0.wire.restore_copy(id, session, ttl).await
    }
}

impl RedisStore {
    /// `delete_where`: every session scanned, those whose attribute `name` is `value` ended.
    async fn scan_and_delete(
        &self,
        name: &str,
        value: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.0.wire.conn().await?;
        let field = format!("a:{name}");
        let mut ended = Vec::new();
        for key in self.0.wire.session_keys().await? {
            let v: Option<String> = self.0.wire.timed(conn.hget(&key, &field)).await?;
            if let (Some(true), Some(id)) = (v.map(|v| v == value), self.0.wire.id_of(&key)) {
                let hash: Vec<Value> = self.0.wire.timed(conn.hgetall(&key)).await?;
                // Through the delete script, so that other gateways drop their copies.
                self.delete(&id).await?;
                // A retired view goes too, uncounted.
                if let Some(s) = self.0.wire.session(&hash) {
                    ended.push((id, s));
                }
            }
        }
        Ok(ended)
    }

    /// `find_by_key`: every session scanned until the one with stable key `key`.
    async fn scan_for_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        if self.0.wire.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.0.wire.conn().await?;
        for hash_key in self.0.wire.session_keys().await? {
            let (k, renamed): (Option<String>, Option<String>) = self
                .0
                .wire
                .timed(
                    redis::cmd("HMGET")
                        .arg(&hash_key)
                        .arg("k")
                        .arg("r")
                        .query_async(&mut conn),
                )
                .await?;
            if k.as_deref() != Some(key.as_str()) || renamed.is_some() {
                continue;
            }
            let Some(id) = self.0.wire.id_of(&hash_key) else {
                continue;
            };
            let hash: Vec<Value> = self.0.wire.timed(conn.hgetall(&hash_key)).await?;
            return Ok(self.0.wire.session(&hash).map(|s| (id, s)));
        }
        Ok(None)
    }
}
