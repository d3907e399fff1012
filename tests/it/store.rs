//! The store conformance suite: every session store must pass each check here. A store joins
//! with one `conformance!` line that says how to build it with given timeouts.

use std::sync::Arc;
use std::time::Duration;

use sessiongate::session::subjects::{SubjectIndex, deadline};
use sessiongate::session::{AdminStore, HandoffStore};
use sessiongate::session::{
    Change, Limits, MemoryOptions, MemoryStore, RedisOptions, RedisStore, SessionKey, SessionKeys,
    SessionStore, StoreId, Token, Topology, unix_ms,
};

/// A store with every part of the contract: the request path's, handoffs, admin queries and
/// the subject index.
trait FullStore: SessionStore + HandoffStore + AdminStore + SubjectIndex {}
impl<S: SessionStore + HandoffStore + AdminStore + SubjectIndex> FullStore for S {}

const SECRET: &str = "conformance-secret-0123456789abcdef0123";

fn new_id() -> StoreId {
    let keys = SessionKeys::from_secrets(&[SECRET]).unwrap();
    Token::generate(&keys).unwrap().store_id()
}

fn key() -> SessionKey {
    SessionKey::generate().unwrap()
}

fn set(n: &str, v: &str) -> Change {
    Change::Set(n.to_owned(), v.to_owned())
}

/// Timeouts and limits a check needs from the store it is given.
#[derive(Clone, Copy)]
struct Setup {
    idle: Duration,
    absolute: Duration,
    limits: Limits,
}

const RELAXED: Setup = Setup {
    idle: Duration::from_secs(60),
    absolute: Duration::from_secs(600),
    limits: Limits {
        max_attributes: 128,
        max_value_bytes: 4096,
        max_session_bytes: 16384,
    },
};

async fn nothing_is_created_without_a_create_key(s: impl FullStore) {
    let id = new_id();
    let r = s
        .update(&id, None, &[set("a", "1")], unix_ms())
        .await
        .unwrap();
    assert!(r.is_none());
    assert!(s.load(&id, unix_ms()).await.unwrap().is_none());
}

async fn first_update_creates_and_load_returns_it(s: impl FullStore) {
    let (id, k) = (new_id(), key());
    let applied = s
        .update(&id, Some(k.clone()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap()
        .unwrap();
    assert!(applied.created);
    let got = s.load(&id, unix_ms()).await.unwrap().unwrap();
    assert_eq!(got.session_key(), k);
    assert_eq!(got.attr("user"), Some("alice"));
    // A second update with a create key does not replace the session.
    let again = s
        .update(&id, Some(key()), &[set("cart", "3")], unix_ms())
        .await
        .unwrap()
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.session.session_key(), k);
    assert_eq!(again.session.attr_count(), 2);
}

/// The cookie jar keeps each backend cookie as an attribute whose name no backend writes
/// (`~jar;=host;/path;NAME`, up to 255 bytes) and whose value holds `;`: every store keeps
/// them exactly, beside ordinary attributes, and unsets them one by one.
async fn jar_attributes_are_kept_exactly(s: impl FullStore) {
    let id = new_id();
    let now = unix_ms();
    let long = format!("~jar;=shop.example;/{};APP", "p".repeat(255 - 24));
    assert_eq!(long.len(), 255);
    let jar = [
        ("~jar;=shop.example;/;JSESSIONID", "0;;ABC123.node1"),
        ("~jar;.example;/cart;theme", "1900000000000;sS;\"dark\""),
        ("~pin", "10.0.0.1:8080"),
        (long.as_str(), "0;;x"),
    ];
    let mut changes: Vec<Change> = jar.iter().map(|(n, v)| set(n, v)).collect();
    changes.push(set("user", "alice"));
    s.update(&id, Some(key()), &changes, now).await.unwrap();
    let got = s.load(&id, now).await.unwrap().unwrap();
    for (n, v) in jar {
        assert_eq!(got.attr(n), Some(v), "{n}");
    }
    assert_eq!(got.attr("user"), Some("alice"));
    s.update(&id, None, &[Change::Unset(jar[0].0.into())], now)
        .await
        .unwrap();
    let got = s.load(&id, now).await.unwrap().unwrap();
    assert_eq!(got.attr(jar[0].0), None);
    assert_eq!(got.attr(jar[1].0), Some(jar[1].1));
}

async fn unset_and_last_write_wins(s: impl FullStore) {
    let id = new_id();
    let now = unix_ms();
    s.update(&id, Some(key()), &[set("a", "1"), set("b", "1")], now)
        .await
        .unwrap();
    s.update(&id, None, &[set("a", "2")], now).await.unwrap();
    s.update(&id, None, &[Change::Unset("b".into())], now)
        .await
        .unwrap();
    let got = s.load(&id, now).await.unwrap().unwrap();
    assert_eq!(got.attr_count(), 1);
    assert_eq!(got.attr("a"), Some("2"));
}

async fn concurrent_updates_of_different_attributes_all_survive(s: impl FullStore + 'static) {
    let s = Arc::new(s);
    let id = new_id();
    s.update(&id, Some(key()), &[], unix_ms()).await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.update(&id, None, &[set(&format!("a{i}"), "x")], unix_ms())
                    .await
                    .unwrap()
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = s.load(&id, unix_ms()).await.unwrap().unwrap();
    assert_eq!(got.attr_count(), 100);
}

async fn changes_over_the_limits_are_refused_and_the_rest_applied(s: impl FullStore) {
    let id = new_id();
    let big = "v".repeat(5000);
    let applied = s
        .update(
            &id,
            Some(key()),
            &[set("big", &big), set("ok", "1")],
            unix_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(applied.rejected.len(), 1);
    assert_eq!(applied.rejected[0].name, "big");
    assert_eq!(
        applied.session.attrs().map(|(n, _)| n).collect::<Vec<_>>(),
        ["ok"]
    );
}

async fn delete_removes_the_session(s: impl FullStore) {
    let id = new_id();
    s.update(&id, Some(key()), &[set("a", "1")], unix_ms())
        .await
        .unwrap();
    s.delete(&id).await.unwrap();
    assert!(s.load(&id, unix_ms()).await.unwrap().is_none());
    // Deleting nothing is fine.
    s.delete(&new_id()).await.unwrap();
}

async fn rename_retires_the_old_id_read_only_for_the_grace(s: impl FullStore) {
    let (old, new, k) = (new_id(), new_id(), key());
    s.update(&old, Some(k.clone()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(
        s.rename(&old, &new, Duration::from_millis(300))
            .await
            .unwrap()
    );
    let moved = s.load(&new, unix_ms()).await.unwrap().unwrap();
    assert_eq!(
        (moved.session_key(), moved.attr("user")),
        (k.clone(), Some("alice"))
    );
    assert!(!moved.is_read_only());
    // The new id's changes are its own.
    s.update(&new, None, &[set("user", "bob")], unix_ms())
        .await
        .unwrap();
    // In flight with the old token: the session as it was, and nothing it does lands.
    let via_old = s.load(&old, unix_ms()).await.unwrap().unwrap();
    assert_eq!(via_old.session_key(), k);
    assert_eq!(
        via_old.attr("user"),
        Some("alice"),
        "the old id sees the change"
    );
    assert!(via_old.is_read_only());
    assert!(
        s.update(&old, None, &[set("late", "1")], unix_ms())
            .await
            .unwrap()
            .is_none(),
        "a retired id wrote"
    );
    assert!(
        s.update(&old, Some(key()), &[set("late", "1")], unix_ms())
            .await
            .unwrap()
            .is_none(),
        "a retired id became a session again"
    );
    let now = s.load(&new, unix_ms()).await.unwrap().unwrap();
    assert_eq!((now.attr("user"), now.attr("late")), (Some("bob"), None));
    assert!(!s.rename(&old, &new_id(), Duration::ZERO).await.unwrap());
    assert!(
        !s.alias(&new_id(), &old, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !s.put_code(&new_id(), &old, Duration::from_secs(60))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(s.load(&old, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&new, unix_ms()).await.unwrap().is_some());
    assert!(
        !s.rename(&new_id(), &new_id(), Duration::ZERO)
            .await
            .unwrap()
    );
}

async fn a_retired_id_ends_with_its_successor_and_its_own_logout_ends_only_it(s: impl FullStore) {
    let (old, new) = (new_id(), new_id());
    s.update(&old, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(s.rename(&old, &new, Duration::from_secs(60)).await.unwrap());
    s.delete(&new).await.unwrap();
    assert!(
        s.load(&old, unix_ms()).await.unwrap().is_none(),
        "outlived its successor"
    );
    let (old, new) = (new_id(), new_id());
    s.update(&old, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(s.rename(&old, &new, Duration::from_secs(60)).await.unwrap());
    s.delete(&old).await.unwrap();
    assert!(s.load(&old, unix_ms()).await.unwrap().is_none());
    assert!(
        s.load(&new, unix_ms()).await.unwrap().is_some(),
        "the old id's logout ended the new"
    );
}

async fn a_rename_through_an_alias_moves_the_session_and_retires_both_old_ids(s: impl FullStore) {
    let (id, alias, new) = (new_id(), new_id(), new_id());
    s.update(&id, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(s.alias(&alias, &id, Duration::from_secs(60)).await.unwrap());
    assert!(
        s.rename(&alias, &new, Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(
        !s.load(&new, unix_ms())
            .await
            .unwrap()
            .unwrap()
            .is_read_only()
    );
    for old in [&id, &alias] {
        let view = s.load(old, unix_ms()).await.unwrap().unwrap();
        assert!(view.is_read_only());
        assert!(
            s.update(old, None, &[set("x", "1")], unix_ms())
                .await
                .unwrap()
                .is_none()
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(s.load(&id, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&alias, unix_ms()).await.unwrap().is_none());
    assert_eq!(
        s.load(&new, unix_ms()).await.unwrap().unwrap().attr("user"),
        Some("alice")
    );
}

async fn delete_where_logs_a_user_out_everywhere(s: impl FullStore) {
    let (a1, a2, b) = (new_id(), new_id(), new_id());
    for (id, user) in [(a1, "alice"), (a2, "alice"), (b, "bob")] {
        s.update(&id, Some(key()), &[set("user", user)], unix_ms())
            .await
            .unwrap();
    }
    assert_eq!(s.delete_where("user", "alice").await.unwrap().len(), 2);
    assert!(s.load(&a1, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&a2, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&b, unix_ms()).await.unwrap().is_some());
}

async fn sessions_are_found_by_their_stable_key(s: impl FullStore) {
    let (id, k) = (new_id(), key());
    s.update(&id, Some(k.clone()), &[set("a", "1")], unix_ms())
        .await
        .unwrap();
    let (found_id, found) = s.find_by_key(&k).await.unwrap().unwrap();
    assert_eq!((found_id, found.attr("a")), (id, Some("1")));
    assert!(s.find_by_key(&key()).await.unwrap().is_none());
}

async fn an_idle_session_expires_and_a_used_one_does_not(s: impl FullStore, setup: Setup) {
    let (idle, used) = (new_id(), new_id());
    for id in [idle, used] {
        s.update(&id, Some(key()), &[set("a", "1")], unix_ms())
            .await
            .unwrap();
    }
    // Use one of them more often than the idle timeout, for longer than it.
    for _ in 0..6 {
        tokio::time::sleep(setup.idle / 3).await;
        let got = s.load(&used, unix_ms()).await.unwrap().unwrap();
        assert!(!got.expired(unix_ms(), setup.idle, setup.absolute));
    }
    let gone = s.load(&idle, unix_ms()).await.unwrap();
    assert!(gone.is_none_or(|g| g.expired(unix_ms(), setup.idle, setup.absolute)));
}

async fn a_session_expires_at_the_absolute_timeout_even_when_used(s: impl FullStore, setup: Setup) {
    let id = new_id();
    s.update(&id, Some(key()), &[set("a", "1")], unix_ms())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + setup.absolute * 3;
    loop {
        tokio::time::sleep(setup.idle / 4).await;
        match s.load(&id, unix_ms()).await.unwrap() {
            None => break,
            Some(g) if g.expired(unix_ms(), setup.idle, setup.absolute) => break,
            Some(_) => assert!(tokio::time::Instant::now() < deadline, "never expired"),
        }
    }
}

async fn an_alias_reaches_the_same_session(s: impl FullStore) {
    let (id, alias, k) = (new_id(), new_id(), key());
    assert!(
        !s.alias(&alias, &id, Duration::from_secs(60)).await.unwrap(),
        "an alias of nothing"
    );
    s.update(&id, Some(k.clone()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(s.alias(&alias, &id, Duration::from_secs(60)).await.unwrap());
    let via = s.load(&alias, unix_ms()).await.unwrap().unwrap();
    assert_eq!(via.session_key(), k);
    let applied = s
        .update(&alias, None, &[set("cart", "2")], unix_ms())
        .await
        .unwrap()
        .unwrap();
    // The update names the session's own id (the subject index files it under that one).
    assert_eq!(applied.id, id);
    let direct = s.load(&id, unix_ms()).await.unwrap().unwrap();
    assert_eq!(direct.attr("cart"), Some("2"));
    // Logging out through the alias ends the one session.
    s.delete(&alias).await.unwrap();
    assert!(s.load(&id, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&alias, unix_ms()).await.unwrap().is_none());
}

async fn a_code_names_its_session_once(s: impl FullStore) {
    let (id, code) = (new_id(), new_id());
    assert!(
        !s.put_code(&code, &id, Duration::from_secs(60))
            .await
            .unwrap(),
        "a code for nothing"
    );
    s.update(&id, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(
        s.put_code(&code, &id, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        s.load(&code, unix_ms()).await.unwrap().is_none(),
        "a code is not an id"
    );
    assert_eq!(s.take_code(&code).await.unwrap(), Some(id));
    assert_eq!(s.take_code(&code).await.unwrap(), None, "taken twice");
    assert!(
        s.load(&id, unix_ms()).await.unwrap().is_some(),
        "taking the code ended the session"
    );
    // Past its ttl a code is not taken.
    let late = new_id();
    assert!(
        s.put_code(&late, &id, Duration::from_millis(100))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(s.take_code(&late).await.unwrap(), None);
}

async fn ping_answers(s: impl FullStore) {
    s.ping().await.unwrap();
}

/// Indexes the session under `id` by its `user`, as the gateway does after a login.
async fn index_user(s: &impl FullStore, id: &StoreId, setup: Setup) {
    let session = s.load(id, unix_ms()).await.unwrap().unwrap();
    let user = session.attr("user").unwrap().to_owned();
    s.index(&user, id, deadline(&session, setup.idle, setup.absolute))
        .await
        .unwrap();
}

/// The ids of the sessions the index lists for the `user` `subject`.
async fn listed_ids(s: &impl FullStore, subject: &str) -> Vec<StoreId> {
    s.of_subject("user", subject)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

async fn a_subjects_sessions_are_found_through_the_index_and_stale_entries_dropped(
    s: impl FullStore,
) {
    let ids: Vec<StoreId> = (0..5).map(|_| new_id()).collect();
    for id in &ids {
        s.update(id, Some(key()), &[set("user", "alice")], unix_ms())
            .await
            .unwrap();
        index_user(&s, id, RELAXED).await;
    }
    let other = new_id();
    s.update(&other, Some(key()), &[set("user", "bob")], unix_ms())
        .await
        .unwrap();
    index_user(&s, &other, RELAXED).await;
    let mut found = listed_ids(&s, "alice").await;
    found.sort_by_key(|id| *id.as_bytes());
    let mut want = ids.clone();
    want.sort_by_key(|id| *id.as_bytes());
    assert_eq!(found, want);
    // Deleted, renamed away (its successor not indexed yet), handed to another subject,
    // unindexed: none of them is listed, whatever the index still says.
    s.delete(&ids[0]).await.unwrap();
    let successor = new_id();
    assert!(
        s.rename(&ids[1], &successor, Duration::from_secs(30))
            .await
            .unwrap()
    );
    s.update(&ids[2], None, &[set("user", "mallory")], unix_ms())
        .await
        .unwrap();
    s.unindex("alice", &ids[3]).await.unwrap();
    assert_eq!(listed_ids(&s, "alice").await, [ids[4]]);
    // The renamed session, indexed under its new id, is found again (once).
    index_user(&s, &successor, RELAXED).await;
    assert_eq!(s.of_subject("user", "alice").await.unwrap().len(), 2);
    // Another attribute name finds nothing: the index is checked against the data.
    assert!(s.of_subject("role", "alice").await.unwrap().is_empty());
    assert_eq!(s.of_subject("user", "bob").await.unwrap().len(), 1);
    assert!(s.of_subject("user", "nobody").await.unwrap().is_empty());
}

/// A value of 200 bytes makes the packed form's length bytes non-UTF-8 (0xC8 0x00): the admin
/// paths that read a session's hash field by field (export, find by key, the index) must
/// still read it.
async fn a_session_with_long_values_is_found_exported_and_listed(s: impl FullStore) {
    let (id, k) = (new_id(), key());
    let long = "v".repeat(200);
    s.update(
        &id,
        Some(k.clone()),
        &[set("user", "dora"), set("note", &long)],
        unix_ms(),
    )
    .await
    .unwrap();
    index_user(&s, &id, RELAXED).await;
    let (found_id, found) = s.find_by_key(&k).await.unwrap().unwrap();
    assert_eq!((found_id, found.attr("note")), (id, Some(long.as_str())));
    assert!(
        s.export()
            .await
            .unwrap()
            .iter()
            .any(|(i, s)| *i == id && s.attr("note") == Some(long.as_str()))
    );
    assert_eq!(s.of_subject("user", "dora").await.unwrap().len(), 1);
}

async fn an_index_entry_leaves_with_its_idle_session(s: impl FullStore, setup: Setup) {
    let (idle, used) = (new_id(), new_id());
    for id in [&idle, &used] {
        s.update(id, Some(key()), &[set("user", "carol")], unix_ms())
            .await
            .unwrap();
        index_user(&s, id, setup).await;
    }
    for _ in 0..4 {
        tokio::time::sleep(setup.idle / 2).await;
        assert!(s.load(&used, unix_ms()).await.unwrap().is_some());
    }
    assert_eq!(listed_ids(&s, "carol").await, [used]);
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            async fn make(setup: Setup) -> impl FullStore + 'static {
                ($make)(setup).await
            }

            #[tokio::test]
            async fn nothing_is_created_without_a_create_key() {
                super::nothing_is_created_without_a_create_key(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn first_update_creates_and_load_returns_it() {
                super::first_update_creates_and_load_returns_it(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn jar_attributes_are_kept_exactly() {
                super::jar_attributes_are_kept_exactly(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn unset_and_last_write_wins() {
                super::unset_and_last_write_wins(make(RELAXED).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_updates_of_different_attributes_all_survive() {
                super::concurrent_updates_of_different_attributes_all_survive(make(RELAXED).await)
                    .await;
            }
            #[tokio::test]
            async fn changes_over_the_limits_are_refused_and_the_rest_applied() {
                super::changes_over_the_limits_are_refused_and_the_rest_applied(
                    make(RELAXED).await,
                )
                .await;
            }
            #[tokio::test]
            async fn delete_removes_the_session() {
                super::delete_removes_the_session(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn rename_retires_the_old_id_read_only_for_the_grace() {
                super::rename_retires_the_old_id_read_only_for_the_grace(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn a_retired_id_ends_with_its_successor_and_its_own_logout_ends_only_it() {
                super::a_retired_id_ends_with_its_successor_and_its_own_logout_ends_only_it(
                    make(RELAXED).await,
                )
                .await;
            }
            #[tokio::test]
            async fn a_rename_through_an_alias_moves_the_session_and_retires_both_old_ids() {
                super::a_rename_through_an_alias_moves_the_session_and_retires_both_old_ids(
                    make(RELAXED).await,
                )
                .await;
            }
            #[tokio::test]
            async fn delete_where_logs_a_user_out_everywhere() {
                super::delete_where_logs_a_user_out_everywhere(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn sessions_are_found_by_their_stable_key() {
                super::sessions_are_found_by_their_stable_key(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn an_idle_session_expires_and_a_used_one_does_not() {
                let setup = Setup {
                    idle: Duration::from_millis(1200),
                    ..RELAXED
                };
                super::an_idle_session_expires_and_a_used_one_does_not(make(setup).await, setup)
                    .await;
            }
            #[tokio::test]
            async fn a_session_expires_at_the_absolute_timeout_even_when_used() {
                let setup = Setup {
                    idle: Duration::from_millis(400),
                    absolute: Duration::from_millis(900),
                    ..RELAXED
                };
                super::a_session_expires_at_the_absolute_timeout_even_when_used(
                    make(setup).await,
                    setup,
                )
                .await;
            }
            #[tokio::test]
            async fn an_alias_reaches_the_same_session() {
                super::an_alias_reaches_the_same_session(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn a_code_names_its_session_once() {
                super::a_code_names_its_session_once(make(RELAXED).await).await;
            }
            #[tokio::test]
            async fn a_subjects_sessions_are_found_through_the_index_and_stale_entries_dropped() {
                super::a_subjects_sessions_are_found_through_the_index_and_stale_entries_dropped(
                    make(RELAXED).await,
                )
                .await;
            }
            #[tokio::test]
            async fn a_session_with_long_values_is_found_exported_and_listed() {
                super::a_session_with_long_values_is_found_exported_and_listed(make(RELAXED).await)
                    .await;
            }
            #[tokio::test]
            async fn an_index_entry_leaves_with_its_idle_session() {
                let setup = Setup {
                    idle: Duration::from_millis(1200),
                    ..RELAXED
                };
                super::an_index_entry_leaves_with_its_idle_session(make(setup).await, setup).await;
            }
            #[tokio::test]
            async fn ping_answers() {
                super::ping_answers(make(RELAXED).await).await;
            }
        }
    };
}

conformance!(memory, |setup: Setup| async move {
    MemoryStore::new(MemoryOptions {
        max_sessions: 10_000,
        max_bytes: 1 << 30,
        idle_timeout: setup.idle,
        absolute_timeout: setup.absolute,
        limits: setup.limits,
        subject: "user".to_owned(),
    })
});

/// Options for a Redis store with a key prefix of the test's own (its keys expire with the
/// idle timeout).
fn redis_options(topology: Topology, setup: Setup) -> RedisOptions {
    RedisOptions {
        topology,
        ca_pem: None,
        key_prefix: crate::support::redis_test_prefix(),
        idle_timeout: setup.idle,
        absolute_timeout: setup.absolute,
        limits: setup.limits,
        op_timeout: Duration::from_secs(2),
        near_ttl: Duration::from_secs(2),
        near_max: 1000,
        serve_stale: false,
        subject: "user".to_owned(),
    }
}

// The machine's Redis (127.0.0.1:6379, started by scripts/test when it is not running).
conformance!(redis, |setup: Setup| async move {
    let url = "redis://127.0.0.1:6379".to_owned();
    RedisStore::connect(redis_options(Topology::Standalone { url }, setup))
        .await
        .expect("redis-server on 127.0.0.1:6379 (scripts/test starts one)")
});

// A Cluster of three masters, started once for this test process: the ids of one session
// (a regenerated token's old and new ids, an alias) mostly live on different nodes.
conformance!(redis_cluster, |setup: Setup| async move {
    let nodes = crate::redis_servers::cluster_nodes().to_vec();
    RedisStore::connect(redis_options(Topology::Cluster { nodes }, setup))
        .await
        .expect("the test's Redis Cluster")
});

#[tokio::test]
async fn memory_store_evicts_past_its_capacity() {
    let s = MemoryStore::new(MemoryOptions {
        max_sessions: 100,
        max_bytes: 1 << 30,
        idle_timeout: Duration::from_secs(60),
        absolute_timeout: Duration::from_secs(600),
        limits: Limits::default(),
        subject: "user".to_owned(),
    });
    for _ in 0..500 {
        s.update(&new_id(), Some(key()), &[set("a", "1")], unix_ms())
            .await
            .unwrap();
    }
    s.run_pending_tasks();
    assert!(s.entry_count() <= 100, "{} entries", s.entry_count());
}

#[tokio::test]
async fn on_a_cluster_a_logout_through_one_gateway_drops_the_near_copy_of_another() {
    let nodes = crate::redis_servers::cluster_nodes().to_vec();
    let options = RedisOptions {
        near_ttl: Duration::from_secs(60),
        ..redis_options(Topology::Cluster { nodes }, RELAXED)
    };
    let a = RedisStore::connect(options.clone()).await.unwrap();
    let b = RedisStore::connect(options).await.unwrap();
    // Subscriptions land on different nodes: a change published on one reaches the others.
    let ids: Vec<StoreId> = (0..8).map(|_| new_id()).collect();
    for id in &ids {
        a.update(id, Some(key()), &[set("user", "alice")], unix_ms())
            .await
            .unwrap();
        assert!(b.load(id, unix_ms()).await.unwrap().is_some());
    }
    // The listener subscribes in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        a.delete(id).await.unwrap();
    }
    let started = std::time::Instant::now();
    for id in &ids {
        while b.load(id, unix_ms()).await.unwrap().is_some() {
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "a near copy outlived the logout by 100 ms"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How many times the Redis on `port` ran each of `commands` (a read is one `HMGET`, or a
/// script: `EVALSHA`).
fn calls(port: u16, commands: &[&str]) -> u64 {
    let stats = crate::redis_servers::redis_cli(port, &["info", "commandstats"]).unwrap();
    commands
        .iter()
        .map(|c| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{c}:calls=")))
                .and_then(|v| v.split(',').next())
                .map_or(0, |v| v.parse::<u64>().unwrap())
        })
        .sum()
}

/// A redis-server of the test's own (its counters are the test's alone): it, its port, its URL.
fn own_redis() -> (crate::redis_servers::OwnRedis, u16, String) {
    let port = crate::redis_servers::free_port();
    let redis = crate::redis_servers::OwnRedis::start(port);
    crate::redis_servers::wait_until(Duration::from_secs(5), "redis up", || {
        crate::redis_servers::redis_cli(port, &["ping"]).is_some()
    });
    (redis, port, format!("redis://127.0.0.1:{port}"))
}

/// How many reads from its clients' sockets the Redis on `port` has made.
fn socket_reads(port: u16) -> u64 {
    let stats = crate::redis_servers::redis_cli(port, &["info", "stats"]).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

// One worker, as the gateway has on one CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_reads_without_a_near_cache_reach_redis_together_and_each_gets_its_own_session()
{
    let (_redis, port, url) = own_redis();
    let store = Arc::new(
        RedisStore::connect(RedisOptions {
            near_ttl: Duration::ZERO,
            ..redis_options(Topology::Standalone { url }, RELAXED)
        })
        .await
        .unwrap(),
    );
    const N: usize = 100;
    let mut ids = Vec::new();
    for i in 0..N {
        let id = new_id();
        store
            .update(&id, Some(key()), &[set("n", &i.to_string())], unix_ms())
            .await
            .unwrap();
        ids.push(id);
    }
    let (reads, hmgets) = (socket_reads(port), calls(port, &["hmget"]));
    // All start together, as requests arriving on many connections at once do.
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.load(&id, unix_ms()).await.unwrap().unwrap()
            })
        })
        .collect();
    for (i, got) in futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(got.unwrap().attr("n"), Some(i.to_string().as_str()));
    }
    assert_eq!(
        calls(port, &["hmget"]) - hmgets,
        N as u64,
        "one HMGET per read"
    );
    // One by one, that is a read of Redis's per command (and the INFO call, one more).
    let made = socket_reads(port) - reads;
    assert!(made <= 20, "{N} reads took {made} socket reads in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_hits_cost_no_round_trip_and_one_request_notes_the_use_for_all() {
    let (_redis, port, url) = own_redis();
    let store = Arc::new(
        RedisStore::connect(RedisOptions {
            near_ttl: Duration::from_secs(60),
            ..redis_options(Topology::Standalone { url }, RELAXED)
        })
        .await
        .unwrap(),
    );
    let id = new_id();
    let loads = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.load(&id, unix_ms()).await.unwrap().unwrap() })
            })
            .collect();
        futures_util::future::join_all(tasks)
    };
    let reads = || calls(port, &["hmget", "evalsha"]);
    // Hits within the touch interval cost no round trip. Two things outside the code under
    // test can spoil a try, and then it does not count and the write and reads start again:
    // on a loaded machine the second after the write can pass before the 200 reads end (a
    // read then rightly notes the use in Redis), and the write's own announcement can reach
    // the listener after the first read kept its copy (it then rightly drops the copy). The
    // priming read is repeated until a copy serves, so only a late announcement spoils it.
    for attempt in 1..=5 {
        let written = std::time::Instant::now();
        store
            .update(&id, Some(key()), &[set("user", "alice")], unix_ms())
            .await
            .unwrap();
        for _ in 0..100 {
            store.load(&id, unix_ms()).await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let before = reads();
            store.load(&id, unix_ms()).await.unwrap().unwrap();
            if reads() == before {
                break;
            }
        }
        let before = reads();
        for got in loads(200).await {
            assert_eq!(got.unwrap().attr("user"), Some("alice"));
        }
        let went = reads() - before;
        if went != 0 && attempt < 5 {
            eprintln!(
                "try {attempt}: {went} of 200 reads went to Redis, {:?} after the write",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(1100)).await;
            continue;
        }
        assert_eq!(went, 0, "hits went to Redis");
        break;
    }
    // Past the touch interval the use must reach Redis: one request takes it there.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (before, noted) = (calls(port, &["hmget"]), calls(port, &["pexpire"]));
    for got in loads(50).await {
        assert_eq!(got.unwrap().attr("user"), Some("alice"));
    }
    assert_eq!(
        calls(port, &["hmget"]) - before,
        1,
        "one request goes to Redis"
    );
    assert_eq!(calls(port, &["pexpire"]) - noted, 1, "the use was noted");
}

#[tokio::test]
async fn a_near_copy_of_a_session_gone_from_redis_stops_serving_at_its_next_touch() {
    let (_redis, port, url) = own_redis();
    let options = RedisOptions {
        near_ttl: Duration::from_secs(60),
        ..redis_options(Topology::Standalone { url }, RELAXED)
    };
    let prefix = options.key_prefix.clone();
    let store = RedisStore::connect(options).await.unwrap();
    let id = new_id();
    store
        .update(&id, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(store.load(&id, unix_ms()).await.unwrap().is_some());
    // Gone without an announcement reaching this gateway (as when its copy was filed just
    // after the announcement went by).
    let keys = crate::redis_servers::redis_cli(port, &["keys", &format!("{prefix}s:*")]).unwrap();
    let key = keys.lines().next().unwrap().to_owned();
    crate::redis_servers::redis_cli(port, &["del", &key]).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert!(store.load(&id, unix_ms()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn with_serve_stale_a_logout_through_an_alias_holds_for_the_session_until_replayed() {
    let (redis, _, url) = own_redis();
    let mut options = redis_options(Topology::Standalone { url }, RELAXED);
    options.serve_stale = true;
    options.op_timeout = Duration::from_millis(300);
    let s = RedisStore::connect(options).await.unwrap();
    let (id, alias) = (new_id(), new_id());
    s.update(&id, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    assert!(s.alias(&alias, &id, Duration::from_secs(60)).await.unwrap());
    // Read once each: the session's copy is kept near, and the alias is followed.
    assert!(s.load(&id, unix_ms()).await.unwrap().is_some());
    assert!(s.load(&alias, unix_ms()).await.unwrap().is_some());
    redis.signal("STOP");
    // The logout through the alias (a sibling's token) is queued: the session's own copy
    // stops serving at once.
    s.delete(&alias).await.unwrap();
    assert!(s.load(&id, unix_ms()).await.map_or(true, |s| s.is_none()));
    redis.signal("CONT");
    // Redis answers again and still holds the session: until the logout is replayed, it
    // holds all the same, by either id.
    assert!(s.load(&id, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&alias, unix_ms()).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s.load(&id, unix_ms()).await.unwrap().is_none());
    assert!(s.load(&alias, unix_ms()).await.unwrap().is_none());
}

/// Session hashes carry their format (`f`), so gateways of two adjacent versions share one
/// Redis: this gateway reads its own format and the next, and refuses one further ahead
/// rather than misread it.
#[tokio::test]
async fn redis_session_hashes_carry_their_format_and_one_too_far_ahead_is_refused() {
    let prefix = crate::support::redis_test_prefix();
    let store = RedisStore::connect(RedisOptions {
        key_prefix: prefix.clone(),
        near_ttl: Duration::ZERO,
        ..redis_options(
            Topology::Standalone {
                url: "redis://127.0.0.1:6379".to_owned(),
            },
            RELAXED,
        )
    })
    .await
    .unwrap();
    let id = new_id();
    store
        .update(&id, Some(key()), &[set("user", "alice")], unix_ms())
        .await
        .unwrap();
    let hex: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let hash = format!("{prefix}s:{{{hex}}}");
    let cli = |args: &[&str]| crate::redis_servers::redis_cli(6379, args).unwrap();
    assert_eq!(cli(&["HGET", &hash, "f"]).trim(), "1");
    cli(&["HSET", &hash, "f", "2"]);
    let next = store.load(&id, unix_ms()).await.unwrap().unwrap();
    assert_eq!(next.attr("user"), Some("alice"));
    cli(&["HSET", &hash, "f", "3"]);
    let e = store.load(&id, unix_ms()).await.unwrap_err();
    assert!(
        matches!(e, sessiongate::session::StoreError::Corrupt(_)),
        "{e:?}"
    );
    assert!(store.export().await.unwrap().is_empty());
}
