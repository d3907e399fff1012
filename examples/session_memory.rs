//! How much memory live sessions take in the memory store: fills it with N sessions of five
//! small attributes (as the shop demo would) and prints the growth of the process's RSS.
//!
//! `cargo run --release --example session_memory -- 1000000`
//!
//! With `floor` after the count it fills a bare `moka` cache, built as the memory store
//! builds its own (idle expiry, LRU, a weigher), with N empty entries under 16-byte ids: what
//! the cache itself costs per entry, which no session data can go under.
//!
//! `cargo run --release --example session_memory -- 1000000 floor`
//!
//! With `indexed`, each session is also in the subject index (one subject per session, the
//! worst case: most subjects have one session), as a login through the gateway puts it.
//!
//! `cargo run --release --example session_memory -- 1000000 indexed`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use sessiongate::session::subjects::SubjectIndex;
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
    if std::env::args().nth(2).as_deref() == Some("floor") {
        return floor(n);
    }
    let indexed = std::env::args().nth(2).as_deref() == Some("indexed");
    let store = MemoryStore::new(MemoryOptions {
        max_sessions: n,
        max_bytes: u64::MAX,
        idle_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(12 * 3600),
        limits: Limits::default(),
        subject: "user".to_owned(),
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
        if indexed {
            store
                .index(&format!("user{i}"), &id, u64::MAX)
                .await
                .unwrap();
        }
    }
    store.run_pending_tasks();
    let grown = rss_kib().saturating_sub(before);
    println!(
        "{} sessions of 5 attributes{}: RSS grew by {:.1} MiB ({:.1} MiB per million)",
        store.entry_count(),
        if indexed { ", indexed by subject" } else { "" },
        grown as f64 / 1024.0,
        grown as f64 / 1024.0 * 1_000_000.0 / n as f64
    );
}

/// `n` empty entries in a moka cache built as `MemoryStore::new` builds its own.
fn floor(n: u64) {
    let cache: moka::sync::Cache<[u8; 16], (), rustc_hash::FxBuildHasher> =
        moka::sync::Cache::builder()
            .max_capacity(n)
            .weigher(|_, _| 1)
            .time_to_idle(Duration::from_secs(3600))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(|_, _, _| {})
            .build_with_hasher(rustc_hash::FxBuildHasher);
    let before = rss_kib();
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        cache.insert(id, ());
    }
    cache.run_pending_tasks();
    let grown = rss_kib().saturating_sub(before);
    println!(
        "{} empty entries in a bare moka cache: RSS grew by {:.1} MiB ({:.1} MiB per million, {:.0} bytes each)",
        cache.entry_count(),
        grown as f64 / 1024.0,
        grown as f64 / 1024.0 * 1_000_000.0 / n as f64,
        grown as f64 * 1024.0 / n as f64
    );
}
