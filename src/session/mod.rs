//! Sessions: tokens, resolution, stores and the header contract with backends.
//!
//! Only this module knows a store exists; the proxy will hold a facade. Built so far:
//! [`token`] (signed tokens, key rotation, store ids).

pub mod token;

pub use token::{SessionKeys, StoreId, Token, TokenError};
