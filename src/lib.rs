//! sessiongate: a session-aware reverse proxy gateway for unmodified web applications.
//!
//! # Layout
//! Arrows point one way: `gateway` wires `listener` to `proxy` (and `admin`); `proxy` uses
//! `routing`, `upstream`, `session` and `rewrite`, which never import each other; only
//! `config` reads YAML.
//!
//! - [`config`]: reads and validates `gateway.yaml`, reporting every problem with its position.
//! - [`listener`]: accepts connections, terminates TLS (SNI, ALPN), serves HTTP/1.1 and HTTP/2.
//! - [`proxy`]: the life of a request, phase by phase; the one error → status mapping.
//! - [`routing`]: host and path-prefix matching, path normalization.
//! - [`session`]: tokens (signed, rotated keys), resolution from cookie or URL, the memory
//!   store, the header contract with backends, tracking modes, handoffs to sibling hosts.
//! - [`rewrite`]: URL rewriting for cookieless clients: streaming HTML, redirect headers.
//! - [`path_param`]: `;NAME=VALUE` path parameters, read alike by `session` and `rewrite`.
//! - [`cache_control`]: keeping responses that carry a credential out of shared caches.
//! - [`upstream`]: backend pools, balancing, health, the pooled client, retries' safety.
//! - [`gateway`]: start, serve, drain.
//! - [`reload`]: the configuration in use, and how a reload (SIGHUP, a file change,
//!   `POST /reload`) swaps in a new one.
//! - [`admin`]: `/healthz`, `/readyz`, the session API; [`admin_client`]: the
//!   `sessions export|import` commands' requests to it.
//! - [`deadline`]: per-request timeouts that cost no timer registration when met.
//! - [`idle`]: silence detection for HTTP/2 connections and WebSocket tunnels.
//! - [`metrics`]: Prometheus metrics, counted by every other part, served by `admin`.
//! - [`demo`]: the sample backend of `sessiongate demo`.
//! - [`certs`]: development certificates (`gen-cert`).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod cache_control;
pub mod certs;
pub mod config;
pub mod content_type;
pub mod deadline;
pub mod demo;
pub mod gateway;
pub mod idle;
pub mod listener;
pub mod metrics;
pub mod path_param;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod routing;
pub mod session;
#[cfg(test)]
mod test_util;
pub mod upstream;
