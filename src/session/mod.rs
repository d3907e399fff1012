//! Sessions: tokens, resolution, stores and the header contract with backends.
//!
//! Only this module knows a store exists; the proxy will hold a facade. Built so far:
//! [`token`] (signed tokens, key rotation, store ids), [`url`] (tokens in URLs), [`store`] (the store contract and the
//! session record), [`memory`] (the embedded store) and [`contract`] (the headers exchanged
//! with backends).

pub mod contract;
pub mod cookie;
pub mod gate;
pub mod handoff;
pub mod memory;
pub mod redis;
pub mod sealed;
pub mod store;
pub mod stores;
pub mod token;
pub mod tracking;
pub mod url;

pub use gate::{Arrival, Held, LogoutFailed, RequestInfo, RequestSession, Sessions};
pub use memory::{MemoryOptions, MemoryStore};
pub use redis::{RedisOptions, RedisStore, Topology};
pub use sealed::{Jar, SealedOptions, Sealer};
pub use store::{
    Applied, Change, Limits, Rejected, Session, SessionKey, SessionStore, StoreError, unix_ms,
};
pub use stores::Store;
pub use token::{SessionKeys, StoreId, Token, TokenError};
