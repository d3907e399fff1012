//! The admin API's questions of the Redis store: every session key scanned (on every master
//! of a Cluster), to find a session by its stable key or end those whose attribute matches.
//! Never on the request path.

use redis::{AsyncCommands, Value};

use super::{RedisStore, down, failed, parse_hex, scripts, timed_out};
use crate::session::StoreId;
use crate::session::store::{AdminStore, Session, SessionKey, SessionStore, StoreError};

/// An admin scan's time, in operation timeouts.
const ADMIN_SCAN_TIMEOUTS: u32 = 10;

impl RedisStore {
    /// Every session hash key (a scan of every master: the admin API's, not a request path's).
    async fn session_keys(&self) -> Result<Vec<String>, StoreError> {
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

impl AdminStore for RedisStore {
    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.conn().await?;
        let field = format!("a:{name}");
        let mut deleted = 0;
        for key in self.session_keys().await? {
            let v: Option<String> = self.timed(conn.hget(&key, &field)).await?;
            let id = scripts::id_of(&self.prefix, &key).and_then(parse_hex);
            if let (Some(true), Some(id)) = (v.map(|v| v == value), id) {
                // Through the delete script, so that other gateways drop their copies.
                self.delete(&StoreId::from_bytes(id)).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        if self.circuit.is_open() {
            return Err(down());
        }
        let mut conn = self.conn().await?;
        for hash_key in self.session_keys().await? {
            let (k, renamed): (Option<String>, Option<String>) = self
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
            let Some(id) = scripts::id_of(&self.prefix, &hash_key)
                .and_then(parse_hex)
                .map(StoreId::from_bytes)
            else {
                continue;
            };
            let hash: Vec<Value> = self.timed(conn.hgetall(&hash_key)).await?;
            return Ok(self.session(&hash).map(|s| (id, s)));
        }
        Ok(None)
    }
}
