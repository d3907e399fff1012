//! Sessions: tokens, resolution, stores and the header contract with backends.
//!
//! Only this module knows a store exists; the proxy holds the facade, [`Sessions`] (in
//! `facade`), whose `resolve`, `load` and `commit` are the request's session phases. The
//! leaves it stands on:
//! - `setup`: sessions built from their configuration (keys from the secret file, the
//!   store, kept across reloads); `store_metrics`: each store operation's metrics;
//! - `request`: what the phases know of one request, and what the proxy learns back;
//! - [`token`]: signed tokens, key rotation, store ids; [`our_cookies`]: our cookies, taken
//!   out of requests and written into responses; [`url`]: tokens in URLs; [`tracking`]: how
//!   a route carries the token; [`handoff`]: one-time codes between sibling hosts;
//! - [`store`]: the store contract and the session record; the stores [`memory`] (embedded),
//!   [`redis`] (shared, with a near cache and a circuit) and [`sealed`] (the whole session in
//!   a cookie), one of which [`stores`] holds;
//! - [`transfer`]: sessions exported and imported as JSON lines; `migration`: a replaced
//!   store's sessions moved into the new one;
//! - [`contract`]: the headers exchanged with backends; [`jar`]: the backend's cookies kept
//!   in the session (`backend_cookies: jar`);
//! - [`subjects`]: whose sessions they are (the subject index, what a session records of
//!   its client, `max_per_subject`); [`events`]: what happens to sessions, for the admin
//!   API's event stream, other gateways, and the tunnels a session's end must close.

pub mod contract;
pub mod events;
mod facade;
pub mod handoff;
pub mod jar;
mod kept_in_cookies;
mod kept_in_store;
pub mod memory;
mod migration;
pub mod our_cookies;
pub mod redis;
mod request;
pub mod sealed;
pub mod server_store;
mod setup;
pub mod store;
mod store_metrics;
pub mod subjects;
pub mod token;
pub mod tracking;
pub mod transfer;
mod tunnel_watch;
pub mod url;

pub use facade::Sessions;
pub use memory::{MemoryOptions, MemoryStore};
pub use redis::{RedisOptions, RedisStore, Topology};
pub use request::{Arrival, Held, LogoutFailed, RequestInfo, RequestSession};
pub use sealed::{SealedOptions, Sealer};
pub use server_store::ServerStore;
pub use store::{
    AdminStore, Applied, Change, HandoffStore, Limits, Rejected, Session, SessionKey, SessionStore,
    StoreError, unix_ms,
};
pub use token::{LogHash, SessionKeys, StoreId, Token, TokenError};
pub use tunnel_watch::SessionWatch;
