//! How much memory live sessions take in the memory store: fills it with N sessions of five
//! small attributes (as the shop demo would) and prints the growth of the process's RSS.
//!
//! `cargo run --release --example session_memory -- 1000000`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use sessiongate::session::{
    Change, Limits, MemoryOptions, MemoryStore, SessionKey, SessionKeys, SessionStore, Token,
    unix_ms,
};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let store = MemoryStore::new(MemoryOptions {
        max_sessions: n,
        max_bytes: u64::MAX,
        idle_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(12 * 3600),
        limits: Limits::default(),
    });
    let keys = SessionKeys::generate().unwrap();
    let before = rss_kib();
    let now = unix_ms();
    for i in 0..n {
        let id = Token::generate(&keys).unwrap().store_id();
        let changes = [
            Change::Set("user".into(), format!("user{i}")),
            Change::Set("cart".into(), "3".into()),
            Change::Set("role".into(), "customer".into()),
            Change::Set("lang".into(), "en".into()),
            Change::Set("theme".into(), "dark".into()),
        ];
        store
            .update(&id, Some(SessionKey::generate().unwrap()), &changes, now)
            .await
            .unwrap();
    }
    store.run_pending_tasks().await;
    let grown = rss_kib().saturating_sub(before);
    println!(
        "{} sessions of 5 attributes: RSS grew by {:.1} MiB ({:.1} MiB per million)",
        store.entry_count(),
        grown as f64 / 1024.0,
        grown as f64 / 1024.0 * 1_000_000.0 / n as f64
    );
}
