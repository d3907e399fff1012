//! The server store a configuration chose (memory or Redis): one type for either, so that
//! the request path is not generic over it.

use std::time::Duration;

use super::StoreId;
use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::store::{
    AdminStore, Applied, Change, HandoffStore, Session, SessionKey, SessionStore, StoreError,
};
use super::subjects::SubjectIndex;

/// One of the server stores.
#[derive(Debug, Clone)]
pub enum ServerStore {
    /// Sessions in this process (boxed, as the Redis store is: both are large).
    Memory(Box<MemoryStore>),
    /// Sessions in Redis, shared by every gateway that uses it (boxed: its client and
    /// scripts are large, and the memory store is the common case).
    Redis(Box<RedisStore>),
}

impl ServerStore {
    /// The store's kind, as metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerStore::Memory(_) => "memory",
            ServerStore::Redis(_) => "redis",
        }
    }

    /// The session `id` reaches as it is, its use not noted (a tunnel's look).
    ///
    /// # Errors
    /// The store did not answer.
    pub async fn peek(&self, id: &StoreId) -> Result<Option<Session>, StoreError> {
        match self {
            ServerStore::Memory(m) => Ok(m.peek(id)),
            ServerStore::Redis(r) => r.peek(id).await,
        }
    }
}

/// Runs the same call on whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            ServerStore::Memory($s) => $call.await,
            ServerStore::Redis($s) => $call.await,
        }
    };
}

impl SessionStore for ServerStore {
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

impl HandoffStore for ServerStore {
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

impl AdminStore for ServerStore {
    async fn delete_where(
        &self,
        name: &str,
        value: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        each!(self, s => s.delete_where(name, value))
    }

    async fn find_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<(StoreId, Session)>, StoreError> {
        each!(self, s => s.find_by_key(key))
    }

    async fn export(&self) -> Result<Vec<(StoreId, Session)>, StoreError> {
        each!(self, s => s.export())
    }

    async fn import(&self, id: &StoreId, session: &Session) -> Result<bool, StoreError> {
        each!(self, s => s.import(id, session))
    }

    async fn is_own(&self, id: &StoreId) -> Result<bool, StoreError> {
        each!(self, s => s.is_own(id))
    }
}

impl SubjectIndex for ServerStore {
    async fn index(&self, subject: &str, id: &StoreId, until_ms: u64) -> Result<(), StoreError> {
        each!(self, s => s.index(subject, id, until_ms))
    }

    async fn unindex(&self, subject: &str, id: &StoreId) -> Result<(), StoreError> {
        each!(self, s => s.unindex(subject, id))
    }

    async fn count(&self, subject: &str) -> Result<usize, StoreError> {
        each!(self, s => s.count(subject))
    }

    async fn of_subject(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Vec<(StoreId, Session)>, StoreError> {
        each!(self, s => s.of_subject(name, subject))
    }
}
