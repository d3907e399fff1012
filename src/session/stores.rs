//! The store a configuration chose: the gateway holds one of these, whatever its kind.

use std::time::Duration;

use super::StoreId;
use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::sealed::Jar;
use super::store::{
    AdminStore, Applied, Change, HandoffStore, Session, SessionKey, SessionStore, StoreError,
};

/// One of the stores.
#[derive(Debug, Clone)]
pub enum Store {
    /// Sessions in this process (boxed, as the Redis store is: both are large beside the
    /// sealed store's per-request jar).
    Memory(Box<MemoryStore>),
    /// Sessions in Redis, shared by every gateway that uses it (boxed: its client and
    /// scripts are large, and the memory store is the common case).
    Redis(Box<RedisStore>),
    /// Sessions sealed in clients' cookies: the configured store is an empty jar, and each
    /// request works on a jar of its own holding the cookie it presented.
    Sealed(Jar),
}

/// Runs the same call on whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Memory($s) => $call.await,
            Store::Redis($s) => $call.await,
            Store::Sealed($s) => $call.await,
        }
    };
}

impl SessionStore for Store {
    async fn load(&self, id: &StoreId, now_ms: u64) -> Result<Option<Session>, StoreError> {
        each!(self, s => s.load(id, now_ms))
    }

    async fn update(
        &self,
        id: &StoreId,
        create: Option<SessionKey>,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Option<Applied>, StoreError> {
        each!(self, s => s.update(id, create, changes, now_ms))
    }

    async fn delete(&self, id: &StoreId) -> Result<(), StoreError> {
        each!(self, s => s.delete(id))
    }

    async fn rename(
        &self,
        from: &StoreId,
        to: &StoreId,
        grace: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.rename(from, to, grace))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping())
    }
}

impl HandoffStore for Store {
    async fn alias(
        &self,
        alias: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.alias(alias, to, ttl))
    }

    async fn put_code(
        &self,
        code: &StoreId,
        to: &StoreId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.put_code(code, to, ttl))
    }

    async fn take_code(&self, code: &StoreId) -> Result<Option<StoreId>, StoreError> {
        each!(self, s => s.take_code(code))
    }
}

impl AdminStore for Store {
    async fn delete_where(&self, name: &str, value: &str) -> Result<usize, StoreError> {
        each!(self, s => s.delete_where(name, value))
    }

    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        each!(self, s => s.find_by_key(key))
    }
}
