//! A flood of session creations (bots on a login page) must not lock real users out of a full
//! memory store: a new session is always admitted, and the store evicts by recency of use.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::hostile::{App, config, gateway, session_cookie};
use crate::support::*;

/// The store's capacity in these tests.
const CAP: usize = 10_000;

/// `/whoami` on `base` with session `token`: the app's answer.
async fn whoami(http: &reqwest::Client, base: &str, token: &str) -> String {
    http.get(format!("{base}/whoami"))
        .header("cookie", format!("sg={token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Logs in as `user` on `base` and asks again with the new cookie: whether the session held.
async fn login_holds(http: &reqwest::Client, base: &str, user: &str) -> bool {
    let r = http
        .get(format!("{base}/login?user={user}"))
        .send()
        .await
        .unwrap();
    let Some(token) = session_cookie(r.headers()) else {
        return false;
    };
    whoami(http, base, &token)
        .await
        .contains(&format!("user={user}"))
}

/// `n` logins from bots that never come back, `workers` at a time.
async fn flood(base: &str, n: usize, workers: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, base) = (next.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let http = client();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = http.get(format!("{base}/login?user=bot")).send().await;
                assert!(r.unwrap().status().is_success());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn flooded_store_admits_real_users(burst: usize) {
    let app = App::start().await;
    let yaml = config(
        &app,
        &["{ name: app, match: { path_prefix: / }, upstream: app }"],
        &format!(
            "{{ secret_file: session.keys, store: {{ kind: memory, memory: {{ max_sessions: {CAP} }} }} }}"
        ),
    );
    let gw = gateway(&yaml).await;
    let base = gw.url("web", "");
    let http = client();
    // Users who logged in before the flood and keep using the site.
    let mut regulars = Vec::new();
    for i in 0..20 {
        let r = http
            .get(format!("{base}/login?user=r{i}"))
            .send()
            .await
            .unwrap();
        regulars.push(session_cookie(r.headers()).unwrap());
    }
    // Real users log in while the flood runs, and come back at once.
    let during = {
        let base = base.clone();
        tokio::spawn(async move {
            let http = client();
            let mut held = 0;
            for i in 0..50 {
                if login_holds(&http, &base, &format!("d{i}")).await {
                    held += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            held
        })
    };
    // The regulars' sessions are used throughout, so a store that evicts by recency keeps them.
    let used = {
        let (base, regulars) = (base.clone(), regulars.clone());
        tokio::spawn(async move {
            let http = client();
            let mut kept = 0;
            for round in 0..40 {
                kept = 0;
                for (i, token) in regulars.iter().enumerate() {
                    if whoami(&http, &base, token)
                        .await
                        .contains(&format!("user=r{i} "))
                    {
                        kept += 1;
                    }
                }
                if round < 39 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            kept
        })
    };
    flood(&base, burst, 8).await;
    let held_during = during.await.unwrap();
    let regulars_kept = used.await.unwrap();
    // Real users who log in after the flood.
    let mut held_after = 0;
    for i in 0..50 {
        if login_holds(&http, &base, &format!("a{i}")).await {
            held_after += 1;
        }
    }
    // ...and are still there once the store has settled its books.
    let mut later = Vec::new();
    for i in 0..50 {
        let r = http
            .get(format!("{base}/login?user=l{i}"))
            .send()
            .await
            .unwrap();
        later.push(session_cookie(r.headers()).unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for (i, token) in later.iter().enumerate() {
        if whoami(&http, &base, token)
            .await
            .contains(&format!("user=l{i} "))
        {
            held_after += 1;
        }
    }
    assert_eq!(
        (held_during, held_after),
        (50, 100),
        "after {burst} bot sessions in a store of {CAP}: of 50 logins during the flood and 100 after, these held"
    );
    assert_eq!(
        regulars_kept, 20,
        "sessions in use through the flood are the last to be evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3x_login_flood_does_not_lock_real_users_out() {
    flooded_store_admits_real_users(3 * CAP).await;
}

// The 20x burst is checked on the store itself (`session::memory`'s unit tests): 200,000
// requests through a debug build take too long for the suite.
