//! Sessions: tokens, resolution, stores and the header contract with backends.
//!
//! Only this module knows a store exists; the proxy holds the facade, [`Sessions`] (in
//! [`gate`]). The parts:
//! - [`token`]: signed tokens, key rotation, store ids; [`cookie`]: our cookies in a request;
//!   [`url`]: tokens in URLs; [`tracking`]: how a route carries the token; [`handoff`]:
//!   one-time codes between sibling hosts;
//! - [`store`]: the store contract and the session record; the stores [`memory`] (embedded),
//!   [`redis`] (shared, with a near cache and a circuit) and [`sealed`] (the whole session in
//!   a cookie), chosen by [`stores`];
//! - [`contract`]: the headers exchanged with backends.

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
