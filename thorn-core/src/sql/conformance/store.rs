//! Conformance of the subscription store: matching and its index use,
//! and every operation an owner makes.

use uuid::Uuid;

use crate::sql::{Database, SqlStore};
use crate::subscriber::Replace;
use crate::{SenderId, Subscriber, SubscriberLookup, SubscriptionStore};

/// A lookup reads the `(owner, event)` index, one range per candidate
/// pattern and owner case, never the whole table (PostgreSQL is told not
/// to scan sequentially, as it would on a table this small).
pub(super) async fn matching_reads_one_index_range_per_case<D: Database>(db: &D) {
    let plan = db
        .run(Box::new(|conn| {
            Box::pin(async move {
                let sql = crate::sql::store::matching_sql(4, true);
                let params = || -> Vec<crate::sql::Param> {
                    ["*", "a.b", "a.*", "*.b", "\"alice\""]
                        .into_iter()
                        .map(crate::sql::Param::from)
                        .collect()
                };
                if conn.dialect() == crate::sql::Dialect::Postgres {
                    conn.begin().await?;
                    let explained = async {
                        conn.batch("SET LOCAL enable_seqscan = off").await?;
                        let kinds = [crate::sql::Kind::Text];
                        crate::sql::query(conn, &format!("EXPLAIN {sql}"), params(), &kinds).await
                    }
                    .await;
                    conn.rollback().await?;
                    explained?.iter().map(|r| r.text(0)).collect()
                } else {
                    let kinds = [
                        crate::sql::Kind::BigInt,
                        crate::sql::Kind::BigInt,
                        crate::sql::Kind::BigInt,
                        crate::sql::Kind::Text,
                    ];
                    let sql = format!("EXPLAIN QUERY PLAN {sql}");
                    crate::sql::query(conn, &sql, params(), &kinds)
                        .await?
                        .iter()
                        .map(|r| r.text(3))
                        .collect::<crate::Result<Vec<_>>>()
                }
            })
        }))
        .await
        .expect("explain the lookup");
    let plan = plan.join("\n");
    assert_eq!(
        plan.matches("thorn_subscribers_owner_event").count(),
        2,
        "both owner cases on the (owner, event) index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("SCAN thorn_subscribers"),
        "{plan}"
    );
    if plan.contains("Index Cond") {
        assert!(
            plan.contains("owner IS NULL") && plan.contains("owner = "),
            "{plan}"
        );
    }
}
pub(super) async fn subscriptions<D: Database>(store: &SqlStore<D>) {
    let alice = SenderId::from("alice");
    let seven = SenderId::Int(7);
    let a = Subscriber::new("article.*", "https://a.example/hook")
        .unwrap()
        .with_owner(alice.clone());
    let b = Subscriber::new("article.created", "https://b.example/hook")
        .unwrap()
        .with_owner(seven.clone())
        .with_standard_webhooks(true);
    store.insert(a.clone()).await.expect("insert");
    store.insert(b.clone()).await.expect("insert");
    assert!(
        store.insert(a.clone()).await.is_err(),
        "insert: a duplicate uuid is refused"
    );

    let got = store.get(&alice, a.uuid).await.unwrap().expect("get: own");
    assert_eq!(got, a, "get: every field round-trips");
    assert_eq!(
        store.get(&seven, a.uuid).await.unwrap(),
        None,
        "get: another owner's"
    );
    assert_eq!(
        store.list(&alice).await.unwrap(),
        vec![a.clone()],
        "list: own only"
    );

    let found = |event: &'static str, sender: Option<SenderId>| async move {
        let mut uuids: Vec<Uuid> = store
            .subscribers_for(event, sender.as_ref())
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.uuid)
            .collect();
        uuids.sort();
        uuids
    };
    assert_eq!(
        found("article.created", Some(alice.clone())).await,
        vec![a.uuid],
        "match: owner"
    );
    assert_eq!(
        found("article.created", Some(seven.clone())).await,
        vec![b.uuid]
    );
    assert!(
        found("article.created", None).await.is_empty(),
        "match: owned need a sender"
    );
    assert!(
        found("comment.created", Some(alice.clone()))
            .await
            .is_empty()
    );

    let mut changed = a.clone().rotate_secret("a-new-secret");
    changed.url = "https://a2.example/hook".parse().unwrap();
    changed.touch();
    assert!(store.update(changed.clone()).await.unwrap(), "update");
    let got = store.get(&alice, a.uuid).await.unwrap().unwrap();
    assert_eq!(
        (got.url.as_str(), got.hmac_secret.expose()),
        ("https://a2.example/hook", "a-new-secret")
    );
    assert_eq!(
        got.previous_secrets, changed.previous_secrets,
        "update: earlier secrets"
    );
    let mut foreign = changed.clone();
    foreign.owner = Some(seven.clone());
    assert!(
        !store.update(foreign).await.unwrap(),
        "update: another owner's is refused"
    );

    // A write conditional on the version read: done once, stale after.
    let seen = got.updated_at;
    let mut first = got.clone();
    first.hmac_digest = crate::HmacDigest::Sha512;
    first.updated_at = seen + chrono::Duration::microseconds(1);
    assert_eq!(
        store.update_if_unchanged(first, seen).await.unwrap(),
        Replace::Done,
        "update_if_unchanged: as read"
    );
    let mut late = got.clone();
    late.url = "https://late.example/hook".parse().unwrap();
    late.updated_at = seen + chrono::Duration::microseconds(2);
    assert_eq!(
        store.update_if_unchanged(late, seen).await.unwrap(),
        Replace::Stale,
        "update_if_unchanged: changed since it was read"
    );
    let now = store.get(&alice, a.uuid).await.unwrap().unwrap();
    assert_eq!(
        (now.hmac_digest, now.url.as_str()),
        (crate::HmacDigest::Sha512, "https://a2.example/hook"),
        "update_if_unchanged: the stale write left nothing"
    );
    // A version written by someone else in another RFC 3339 spelling.
    let respelled = now
        .updated_at
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string();
    let uuid = a.uuid.to_string();
    store
        .database()
        .run(Box::new(move |conn| {
            Box::pin(async move {
                crate::sql::execute(
                    conn,
                    "UPDATE thorn_subscribers SET updated_at = $1 WHERE uuid = $2",
                    vec![respelled.into(), uuid.into()],
                )
                .await
            })
        }))
        .await
        .unwrap();
    let mut again = now.clone();
    again.updated_at = now.updated_at + chrono::Duration::microseconds(1);
    assert_eq!(
        store
            .update_if_unchanged(again, now.updated_at)
            .await
            .unwrap(),
        Replace::Done,
        "update_if_unchanged: the version compared as a time, not as text"
    );
    let now = store.get(&alice, a.uuid).await.unwrap().unwrap();
    let mut missing = now.clone();
    missing.owner = Some(seven.clone());
    assert_eq!(
        store
            .update_if_unchanged(missing, now.updated_at)
            .await
            .unwrap(),
        Replace::Missing,
        "update_if_unchanged: another owner's"
    );

    assert!(
        store
            .set_active(&alice, a.uuid, false, "paused by alice")
            .await
            .unwrap()
    );
    assert!(
        found("article.created", Some(alice.clone()))
            .await
            .is_empty(),
        "paused: no match"
    );
    let statuses = store.statuses(true).await.unwrap();
    assert_eq!(statuses.len(), 1, "statuses: the disabled one");
    assert_eq!(
        statuses[0].1.disabled_reason.as_deref(),
        Some("paused by alice")
    );
    assert!(store.set_active(&alice, a.uuid, true, "").await.unwrap());
    assert_eq!(
        found("article.created", Some(alice.clone())).await,
        vec![a.uuid],
        "resumed"
    );

    store.mark_gone(b.uuid).await.unwrap();
    let gone = store.statuses(true).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert!(
        gone[0]
            .1
            .disabled_reason
            .as_deref()
            .unwrap()
            .contains("410")
    );
    assert!(store.enable(b.uuid).await.unwrap(), "enable");
    assert!(
        !store.enable(Uuid::new_v4()).await.unwrap(),
        "enable: unknown"
    );
    assert!(store.statuses(true).await.unwrap().is_empty());

    assert!(
        !store.delete(&seven, a.uuid).await.unwrap(),
        "delete: another owner's"
    );
    assert!(store.delete(&alice, a.uuid).await.unwrap(), "delete");
    assert_eq!(store.get(&alice, a.uuid).await.unwrap(), None);
}

/// A cache over the store (`SqlStore::cached`) answers from memory, sees
/// its own writes at once, and another writer's: on PostgreSQL through
/// `LISTEN thorn_subscribers` (its age limit set far beyond the test),
/// elsewhere within its age limit.
pub(super) async fn cached_lookups_see_every_change<D: Database + Clone>(db: &D) {
    use std::time::{Duration, Instant};
    let postgres = db.dialect() == crate::sql::Dialect::Postgres;
    let max_age = if postgres {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(2)
    };
    let cache = SqlStore::<D>::new(db.clone()).cached().max_age(max_age);
    let other = SqlStore::<D>::new(db.clone());
    let owner = SenderId::from("cache-owner");
    let sender = Some(&owner);
    let count = || async {
        cache
            .subscribers_for("cache.created", sender)
            .await
            .expect("cached lookup")
            .len()
    };
    // Bounded waits: the listener reports in, a change is heard.
    let within = |limit: Duration| {
        let started = Instant::now();
        move || started.elapsed() < limit
    };
    let waiting = within(Duration::from_secs(10));
    while !cache.in_sync() {
        assert!(waiting(), "the cache's listener never reported in");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert_eq!(count().await, 0);
    let mut first = Subscriber::new("cache.*", "https://a.example/hook").unwrap();
    first.owner = Some(owner.clone());
    cache.insert(first.clone()).await.unwrap();
    assert_eq!(count().await, 1, "its own insert, seen by the next lookup");
    // Asked again, it is answered from memory — once the notification of
    // its own insert (which forgets everything once more) has come by.
    let waiting = within(Duration::from_secs(10));
    loop {
        let hits = cache.stats().hits;
        assert_eq!(count().await, 1);
        if cache.stats().hits > hits {
            break;
        }
        assert!(waiting(), "never answered from memory");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Another writer (another process) adds one.
    let mut second = Subscriber::new("*", "https://b.example/hook").unwrap();
    second.owner = Some(owner.clone());
    other.insert(second.clone()).await.unwrap();
    if !postgres {
        assert_eq!(count().await, 1, "not seen before its age limit");
    }
    let waiting = within(Duration::from_secs(10));
    while count().await != 2 {
        assert!(waiting(), "another writer's insert was never seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Another writer pauses one; the cache's own 410 disables the other.
    assert!(
        other
            .set_active(&owner, second.uuid, false, "paused")
            .await
            .unwrap()
    );
    let waiting = within(Duration::from_secs(10));
    while count().await != 1 {
        assert!(waiting(), "another writer's pause was never seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache.mark_gone(first.uuid).await.unwrap();
    assert_eq!(
        count().await,
        0,
        "its own 410 Gone, seen by the next lookup"
    );

    for s in [&first, &second] {
        assert!(other.delete(&owner, s.uuid).await.unwrap());
    }
}
