//! The transactional outbox through Diesel, on SQLite always and on
//! PostgreSQL when `THORN_TEST_DATABASE_URL` is set: events commit and roll
//! back with the rows that raised them (savepoints included), the relay
//! delivers committed ones exactly once per subscriber, and every attempt
//! and retry is recorded in the database.

use std::time::Duration;
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use serde::Serialize;
use std::sync::Arc;

use thorn::RelayOptions;
use thorn::diesel::outbox::{OutboxCounts, thorn_attempts, thorn_deliveries};
use thorn::diesel::store::{SubscriberRow, thorn_subscribers};
use thorn::diesel::{DieselOutbox, DieselStore, Relay, migrate};
use thorn::subscriber::MemoryStore;
use thorn::{Config, RetryPolicy, Subscriber, Thorn, WebhookModel};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Receiver, Reply};

diesel::table! {
    posts (id) {
        id -> Integer,
        title -> Text,
        author_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, WebhookModel)]
#[diesel(table_name = posts)]
#[webhook_model(
    sender_field = author_id,
    payload = Self::webhook_payload,
    on_create = "post.created",
    on_delete = "post.removed",
    // The manual's pre-1.5 behaviour: sent at once, whatever the transaction does.
    on_change(name = "post.changed", honors_transaction = false),
)]
struct Post {
    id: i32,
    title: String,
    author_id: i32,
}

#[derive(Serialize)]
struct PostPayload<'a> {
    id: i32,
    title: &'a str,
}

impl Post {
    fn webhook_payload(&self) -> PostPayload<'_> {
        PostPayload {
            id: self.id,
            title: &self.title,
        }
    }
}

fn outbox_thorn(url: &str, retry: RetryPolicy) -> Thorn {
    let store = MemoryStore::new();
    store.add(Subscriber::new("post.*", url).unwrap());
    let config = Config {
        outbox: true,
        outbox_retry: retry,
        ..local_config()
    };
    Thorn::builder(config).store(store).build().unwrap()
}

fn fast_relay() -> RelayOptions {
    RelayOptions {
        poll: Duration::from_millis(50),
        lease: Duration::from_secs(10),
        ..RelayOptions::default()
    }
}

fn titles(received: &[crate::receiver::Received]) -> Vec<String> {
    let mut t: Vec<String> = received
        .iter()
        .map(|r| r.json()["data"]["title"].as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

/// Waits (bounded) until the relay recorded `delivered` deliveries.
fn wait_for_counts<F: Fn() -> OutboxCounts>(
    counts: F,
    done: impl Fn(&OutboxCounts) -> bool,
) -> OutboxCounts {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = counts();
        if done(&c) || std::time::Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

macro_rules! outbox_suite {
    ($module:ident, $conn:ty, $pool:expr, $create_posts:expr) => {
        mod $module {
            use super::*;

            type Conn = $conn;

            fn setup() -> Option<(Box<dyn std::any::Any>, Pool<ConnectionManager<Conn>>)> {
                let (guard, pool) = $pool?;
                migrate(&mut *pool.get().unwrap()).unwrap();
                diesel::sql_query($create_posts)
                    .execute(&mut *pool.get().unwrap())
                    .unwrap();
                Some((Box::new(guard), pool))
            }

            fn insert(
                thorn: &Thorn,
                conn: &mut Conn,
                title: &str,
            ) -> Result<Post, thorn::diesel::Error> {
                diesel::insert_into(posts::table)
                    .values((posts::title.eq(title), posts::author_id.eq(7)))
                    .returning(Post::as_returning())
                    .with_webhooks(thorn)
                    .get_result(conn)
            }

            fn rollback() -> diesel::result::Error {
                diesel::result::Error::RollbackTransaction
            }

            #[test]
            fn events_follow_commit_rollback_and_savepoints() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = outbox_thorn(&receiver.url, RetryPolicy::never());
                let relay = Relay::start_with(&thorn, pool.clone(), fast_relay()).unwrap();
                let outbox = DieselOutbox::new(pool.clone());
                let mut conn = pool.get().unwrap();

                // Nothing leaves before COMMIT; everything committed does.
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    insert(&thorn, conn, "committed")?;
                    receiver.expect_none(Duration::from_millis(300));
                    Ok(())
                })
                .unwrap();
                let got = receiver.expect(1, WAIT);
                assert_eq!(got[0].header("hook-event"), "post.created");
                assert_eq!(titles(&got), ["committed"]);

                // A rolled-back transaction leaves no event and sends nothing.
                let err = conn.transaction::<(), _, _>(|conn| {
                    insert(&thorn, conn, "rolled back")?;
                    Err(rollback())
                });
                assert!(err.is_err());
                let outbox_events: i64 = thorn::diesel::outbox::thorn_events::table
                    .count()
                    .get_result(&mut *conn)
                    .unwrap();
                assert_eq!(outbox_events, 1, "only the committed event is stored");

                // Savepoints: a rolled-back one drops its event, a released one keeps it.
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    insert(&thorn, conn, "outer")?;
                    let inner = conn.transaction::<(), _, _>(|conn| {
                        insert(&thorn, conn, "savepoint rolled back")?;
                        Err(rollback())
                    });
                    assert!(inner.is_err());
                    conn.transaction(|conn| insert(&thorn, conn, "savepoint released"))?;
                    Ok(())
                })
                .unwrap();
                // Outside a transaction the statement is its own transaction.
                insert(&thorn, &mut conn, "autocommit").unwrap();

                let got = receiver.expect(3, WAIT);
                assert_eq!(titles(&got), ["autocommit", "outer", "savepoint released"]);
                let counts = wait_for_counts(|| outbox.counts().unwrap(), |c| c.delivered == 4);
                relay.stop().unwrap();
                assert_eq!(
                    (
                        counts.new_events,
                        counts.pending,
                        counts.delivered,
                        counts.dead,
                        counts.cancelled,
                        counts.claimed
                    ),
                    (0, 0, 4, 0, 0, 0)
                );
                // One delivery id per (event, subscriber), sent as Hook-Delivery.
                let ids: Vec<String> = thorn_deliveries::table
                    .select(thorn_deliveries::id)
                    .load(&mut *conn)
                    .unwrap();
                for r in &got {
                    assert!(ids.contains(&r.header("hook-delivery").to_owned()));
                }
            }

            #[test]
            fn events_not_honouring_the_transaction_go_out_at_once() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = outbox_thorn(&receiver.url, RetryPolicy::never());
                let mut conn = pool.get().unwrap();
                let post = insert(&thorn, &mut conn, "first").unwrap();
                // No relay running: the created event waits in the outbox...
                receiver.expect_none(Duration::from_millis(200));
                // ...while on_change (honors_transaction = false) is sent even
                // though its transaction rolls back.
                let _ = conn.transaction::<(), _, _>(|conn| {
                    diesel::update(&post)
                        .set(posts::title.eq("changed"))
                        .returning(Post::as_returning())
                        .with_webhooks(&thorn)
                        .get_result(conn)?;
                    Err(rollback())
                });
                let got = receiver.expect(1, WAIT);
                assert_eq!(got[0].header("hook-event"), "post.changed");
                let counts = DieselOutbox::new(pool.clone()).counts().unwrap();
                assert_eq!(counts.new_events, 1, "only post.created is in the outbox");
            }

            #[test]
            fn retries_are_persisted_with_every_attempt() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                // Down twice, then up; another delivery fails for good.
                let receiver = Receiver::scripted([Reply::Status(503), Reply::Status(503)]);
                let retry = RetryPolicy {
                    max_retries: 3,
                    retry_delay: Duration::from_millis(50),
                    ..RetryPolicy::default()
                };
                let thorn = outbox_thorn(&receiver.url, retry);
                let relay = Relay::start_with(&thorn, pool.clone(), fast_relay()).unwrap();
                let mut conn = pool.get().unwrap();
                insert(&thorn, &mut conn, "eventually").unwrap();
                let got = receiver.expect(3, WAIT);
                let id = got[0].header("hook-delivery").to_owned();
                assert!(
                    got.iter().all(|r| r.header("hook-delivery") == id),
                    "same delivery id on every attempt"
                );
                let outbox = DieselOutbox::new(pool.clone());
                wait_for_counts(|| outbox.counts().unwrap(), |c| c.delivered == 1);
                relay.stop().unwrap();

                let attempts: Vec<(i32, Option<i32>, Option<String>)> = thorn_attempts::table
                    .filter(thorn_attempts::delivery_id.eq(&id))
                    .order(thorn_attempts::attempt)
                    .select((
                        thorn_attempts::attempt,
                        thorn_attempts::status,
                        thorn_attempts::response,
                    ))
                    .load(&mut *conn)
                    .unwrap();
                let ok = Some("ok".to_owned()); // the receiver's body
                assert_eq!(
                    attempts,
                    [
                        (1, Some(503), ok.clone()),
                        (2, Some(503), ok.clone()),
                        (3, Some(200), ok)
                    ]
                );
                let (state, n): (String, i32) = thorn_deliveries::table
                    .find(&id)
                    .select((thorn_deliveries::state, thorn_deliveries::attempts))
                    .first(&mut *conn)
                    .unwrap();
                assert_eq!((state.as_str(), n), ("delivered", 3));
            }

            #[test]
            fn failing_subscriptions_are_disabled_and_410_disables_at_once() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let failing = Receiver::scripted(std::iter::repeat_n(Reply::Status(500), 200));
                let gone = Receiver::scripted([Reply::Status(410)]);
                let store = Arc::new(DieselStore::new(pool.clone()));
                let mut conn = pool.get().unwrap();
                for url in [&failing.url, &gone.url] {
                    diesel::insert_into(thorn_subscribers::table)
                        .values(SubscriberRow::from(
                            &Subscriber::new("post.*", url).unwrap(),
                        ))
                        .execute(&mut *conn)
                        .unwrap();
                }
                let config = Config {
                    outbox: true,
                    outbox_retry: RetryPolicy {
                        max_retries: 100,
                        retry_delay: Duration::from_millis(50),
                        ..RetryPolicy::default()
                    },
                    ..local_config()
                };
                let thorn = Thorn::builder(config)
                    .shared_store(store.clone())
                    .build()
                    .unwrap();
                let relay = Relay::start_with(
                    &thorn,
                    pool.clone(),
                    RelayOptions {
                        disable_after: Some(Duration::from_millis(300)),
                        ..fast_relay()
                    },
                )
                .unwrap();
                insert(&thorn, &mut conn, "first").unwrap();
                gone.expect(1, WAIT);
                let outbox = DieselOutbox::new(pool.clone());
                let counts = wait_for_counts(|| outbox.counts().unwrap(), |c| c.dead == 2);
                assert_eq!((counts.dead, counts.pending), (2, 0), "{counts:?}");
                let statuses = store.statuses(true).unwrap();
                let reason = |url: &str| {
                    statuses
                        .iter()
                        .find(|(s, _)| s.url.as_str() == url)
                        .and_then(|(_, st)| st.disabled_reason.clone())
                        .unwrap_or_else(|| panic!("{url} not disabled: {statuses:?}"))
                };
                assert!(reason(&gone.url).contains("410"));
                assert!(reason(&failing.url).contains("failed for longer than"));
                let attempts_before: i64 = thorn_attempts::table
                    .count()
                    .get_result(&mut *conn)
                    .unwrap();
                assert!(
                    attempts_before >= 4,
                    "the failing one was retried before being disabled"
                );

                // Disabled subscriptions get nothing more.
                insert(&thorn, &mut conn, "second").unwrap();
                let counts = wait_for_counts(|| outbox.counts().unwrap(), |c| c.new_events == 0);
                relay.stop().unwrap();
                assert_eq!(counts.new_events, 0);
                let deliveries: i64 = thorn_deliveries::table
                    .count()
                    .get_result(&mut *conn)
                    .unwrap();
                assert_eq!(deliveries, 2, "no delivery for disabled subscriptions");
                gone.expect_none(Duration::from_millis(100));

                // Re-enabled, it is a subscriber again.
                let gone_uuid = statuses
                    .iter()
                    .find(|(s, _)| s.url.as_str() == gone.url)
                    .unwrap()
                    .0
                    .uuid;
                assert!(store.enable(gone_uuid).unwrap());
                assert_eq!(store.statuses(true).unwrap().len(), 1);
            }

            #[test]
            fn a_delivery_is_dead_after_its_last_retry() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::scripted(std::iter::repeat_n(Reply::Status(500), 10));
                let retry = RetryPolicy {
                    max_retries: 2,
                    retry_delay: Duration::from_millis(20),
                    ..RetryPolicy::default()
                };
                let thorn = outbox_thorn(&receiver.url, retry);
                let relay = Relay::start_with(&thorn, pool.clone(), fast_relay()).unwrap();
                insert(&thorn, &mut pool.get().unwrap(), "doomed").unwrap();
                receiver.expect(3, WAIT);
                let outbox = DieselOutbox::new(pool.clone());
                let counts = wait_for_counts(|| outbox.counts().unwrap(), |c| c.dead == 1);
                relay.stop().unwrap();
                assert_eq!((counts.dead, counts.pending, counts.delivered), (1, 0, 0));
                let errors: Vec<Option<String>> = thorn_deliveries::table
                    .select(thorn_deliveries::last_error)
                    .load(&mut *pool.get().unwrap())
                    .unwrap();
                assert!(
                    errors[0].as_deref().unwrap_or("").contains("500"),
                    "{errors:?}"
                );
            }
        }
    };
}

outbox_suite!(
    sqlite,
    diesel::SqliteConnection,
    Some(crate::db::sqlite_pool()),
    "CREATE TABLE posts (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, author_id INTEGER NOT NULL)"
);

outbox_suite!(
    postgres,
    diesel::PgConnection,
    crate::db::pg_pool(),
    "CREATE TABLE posts (id SERIAL PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)"
);
