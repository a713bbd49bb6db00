//! The relay on PostgreSQL through Diesel: deliveries follow their
//! subscription as it is at send time (deleted, paused, new secret), claims
//! are renewed so a relay never repeats its own work, one slow destination
//! does not hold the others back, a relay whose database connections are
//! killed loses nothing and stalls for seconds only, and a relay refuses
//! to start on a database without Thorn's tables. Skipped without
//! `THORN_TEST_DATABASE_URL`.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use thorn::RelayOptions;
use thorn::diesel::store::{SubscriberRow, thorn_subscribers};
use thorn::diesel::{DieselOutbox, DieselStore, Relay, migrate};
use thorn::outbox::OutboxCounts;
use thorn::{Config, Error, Subscriber, Thorn, WebhookModel};

use crate::db::{PgSchema, pg_pool};
use crate::engine::local_config;
use crate::receiver::{Received, Receiver, Reply};

diesel::table! {
    parcels (id) {
        id -> Integer,
        owner_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, WebhookModel)]
#[diesel(table_name = parcels)]
#[webhook_model(sender_field = owner_id, on_create = "parcel.created")]
struct Parcel {
    id: i32,
    owner_id: i32,
}

type PgPool = Pool<ConnectionManager<diesel::PgConnection>>;

/// A schema with Thorn's tables and `parcels`, and a Thorn writing the
/// outbox (loopback recipients allowed).
fn setup() -> Option<(PgSchema, PgPool, Thorn)> {
    let (schema, pool) = pg_pool()?;
    let mut conn = pool.get().unwrap();
    migrate(&mut *conn).unwrap();
    diesel::sql_query("CREATE TABLE parcels (id SERIAL PRIMARY KEY, owner_id INTEGER NOT NULL)")
        .execute(&mut *conn)
        .unwrap();
    let config = Config {
        outbox: true,
        event_timeout: Duration::from_secs(1),
        ..local_config()
    };
    let thorn = Thorn::builder(config)
        .store(DieselStore::new(pool.clone()))
        .build()
        .unwrap();
    Some((schema, pool, thorn))
}

fn subscribe(pool: &PgPool, url: &str) -> Subscriber {
    let sub = Subscriber::new("parcel.*", url).unwrap();
    diesel::insert_into(thorn_subscribers::table)
        .values(SubscriberRow::from(&sub))
        .execute(&mut *pool.get().unwrap())
        .unwrap();
    sub
}

/// Writes `n` parcels, and their events, in one transaction.
fn write(thorn: &Thorn, pool: &PgPool, n: usize) {
    let mut conn = pool.get().unwrap();
    thorn::diesel::transaction(thorn, &mut conn, |conn| {
        for i in 0..n {
            let _: Parcel = diesel::insert_into(parcels::table)
                .values(parcels::owner_id.eq(i as i32))
                .returning(Parcel::as_returning())
                .with_webhooks(thorn)
                .get_result(conn)?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
}

fn options(per_destination: usize) -> RelayOptions {
    RelayOptions {
        poll: Duration::from_millis(50),
        lease: Duration::from_secs(10),
        max_per_destination: Some(per_destination),
        ..RelayOptions::default()
    }
}

/// Waits (bounded) until `done` holds for the outbox counts.
fn wait_for(pool: &PgPool, done: impl Fn(&OutboxCounts) -> bool) -> OutboxCounts {
    let outbox = DieselOutbox::new(pool.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = outbox.counts().unwrap();
        if done(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ids(received: &[Received]) -> HashSet<String> {
    received
        .iter()
        .map(|r| r.header("hook-delivery").to_owned())
        .collect()
}

#[test]
fn a_deleted_subscription_gets_none_of_its_pending_deliveries() {
    let Some((_schema, pool, thorn)) = setup() else {
        return;
    };
    let receiver = Receiver::always(Reply::Slow(Duration::from_millis(100)));
    let sub = subscribe(&pool, &receiver.url);
    write(&thorn, &pool, 100);
    // One at a time, so most of the 100 are still pending when it goes.
    let relay = Relay::start_with(&thorn, pool.clone(), options(1)).unwrap();
    let before = receiver.first(3, Duration::from_secs(10));
    diesel::delete(thorn_subscribers::table.find(sub.uuid.to_string()))
        .execute(&mut *pool.get().unwrap())
        .unwrap();
    let deleted = Instant::now();
    let counts = wait_for(&pool, |c| c.pending == 0);
    relay.stop().unwrap();
    let after = receiver.until_quiet(Duration::from_millis(200), Duration::from_secs(5));
    let late = after.iter().filter(|r| r.at > deleted).count();
    // At most the one claimed as the delete committed.
    assert!(late <= 1, "{late} deliveries arrived after the delete");
    let sent = (before.len() + after.len()) as i64;
    assert_eq!(counts.delivered, sent, "{counts:?}");
    assert_eq!(counts.cancelled, 100 - sent, "{counts:?}");
}

#[test]
fn pending_deliveries_use_the_new_secret_and_wait_while_paused() {
    let Some((_schema, pool, thorn)) = setup() else {
        return;
    };
    let receiver = Receiver::always(Reply::Slow(Duration::from_millis(50)));
    let sub = subscribe(&pool, &receiver.url);
    write(&thorn, &pool, 30);
    let relay = Relay::start_with(&thorn, pool.clone(), options(1)).unwrap();
    let first = receiver.first(3, Duration::from_secs(10));
    let key = || thorn_subscribers::table.find(sub.uuid.to_string());
    let mut conn = pool.get().unwrap();
    // Paused: nothing more goes out (but what was in flight).
    diesel::update(key())
        .set(thorn_subscribers::disabled_at.eq(Some(1_i64)))
        .execute(&mut *conn)
        .unwrap();
    let paused = receiver.until_quiet(Duration::from_millis(400), Duration::from_secs(5));
    assert!(paused.len() <= 1, "{} sent while paused", paused.len());
    let held = DieselOutbox::new(pool.clone()).counts().unwrap();
    assert_eq!(held.pending as usize, 30 - first.len() - paused.len());
    // A new secret, then resumed: the rest is signed with it.
    diesel::update(key())
        .set((
            thorn_subscribers::hmac_secret.eq("the-new-secret"),
            thorn_subscribers::disabled_at.eq(None::<i64>),
        ))
        .execute(&mut *conn)
        .unwrap();
    let counts = wait_for(&pool, |c| c.delivered == 30);
    relay.stop().unwrap();
    let rest = receiver.until_quiet(Duration::from_millis(200), Duration::from_secs(5));
    assert_eq!(first.len() + paused.len() + rest.len(), 30, "{counts:?}");
    for r in &rest {
        assert!(
            thorn::signing::verify(
                thorn::HmacDigest::Sha256,
                b"the-new-secret",
                &r.body,
                r.header("hook-hmac")
            ),
            "signed with the new secret"
        );
    }
    for r in &first {
        assert!(thorn::signing::verify(
            thorn::HmacDigest::Sha256,
            sub.hmac_secret.expose().as_bytes(),
            &r.body,
            r.header("hook-hmac")
        ));
    }
}

#[test]
fn claims_are_renewed_so_a_relay_never_sends_its_own_work_twice() {
    let Some((_schema, pool, _)) = setup() else {
        return;
    };
    // Events written with a 5 s timeout and 3 attempts; the relay's lease
    // is 1.5 s, and no request outlasts it: each attempt times out at
    // 1.5 s, while its claim, renewed every 0.5 s, never lapses.
    let writer = Thorn::new(Config {
        outbox: true,
        event_timeout: Duration::from_secs(5),
        outbox_retry: thorn::RetryPolicy {
            max_retries: 2,
            retry_delay: Duration::from_millis(20),
            ..thorn::RetryPolicy::default()
        },
        ..local_config()
    })
    .unwrap();
    let relay_thorn = Thorn::builder(Config {
        event_timeout: Duration::from_secs(1),
        ..local_config()
    })
    .store(DieselStore::new(pool.clone()))
    .build()
    .unwrap();
    let receiver = Receiver::always(Reply::Slow(Duration::from_secs(3)));
    subscribe(&pool, &receiver.url);
    write(&writer, &pool, 4);
    let relay = Relay::start_with(
        &relay_thorn,
        pool.clone(),
        RelayOptions {
            lease: Duration::from_millis(1500),
            ..options(4)
        },
    )
    .unwrap();
    let counts = wait_for(&pool, |c| c.dead == 4);
    relay.stop().unwrap();
    let got = receiver.until_quiet(Duration::from_millis(300), Duration::from_secs(5));
    assert_eq!(got.len(), 12, "three attempts each, no more: {counts:?}");
    for id in ids(&got) {
        let mut at: Vec<Instant> = got
            .iter()
            .filter(|r| r.header("hook-delivery") == id)
            .map(|r| r.at)
            .collect();
        at.sort();
        assert_eq!(at.len(), 3);
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(1400),
                "an attempt of {id} started while the previous one was in flight"
            );
        }
    }
}

#[test]
fn a_lease_not_longer_than_the_request_timeout_is_refused() {
    let Some((_schema, pool, thorn)) = setup() else {
        return;
    };
    let error = Relay::start_with(
        &thorn,
        pool,
        RelayOptions {
            lease: Duration::from_millis(900),
            ..options(4)
        },
    )
    .map(|_| ())
    .unwrap_err();
    assert!(error.to_string().contains("lease"), "{error}");
}

#[test]
fn a_slow_destination_does_not_hold_back_a_fast_one() {
    let Some((_schema, pool, thorn)) = setup() else {
        return;
    };
    let slow = Receiver::always(Reply::Slow(Duration::from_secs(2)));
    let fast = Receiver::start();
    subscribe(&pool, &slow.url);
    subscribe(&pool, &fast.url);
    write(&thorn, &pool, 40);
    let relay = Relay::start_with(
        &thorn,
        pool.clone(),
        RelayOptions {
            concurrency: 8,
            lease: Duration::from_secs(30),
            ..options(2)
        },
    )
    .unwrap();
    let fast_got = fast.until_quiet(Duration::from_millis(500), Duration::from_secs(10));
    // Two slow requests at a time: the fifth starts after two rounds.
    let slow_got = slow.until_quiet(Duration::from_millis(2500), Duration::from_secs(10));
    drop(relay);
    assert_eq!(fast_got.len(), 40);
    assert!(slow_got.len() >= 5, "{}", slow_got.len());
    let last_fast = fast_got.iter().map(|r| r.at).max().unwrap();
    assert!(
        last_fast < slow_got[4].at,
        "the fast destination finished before the slow one's third round"
    );
}

#[test]
fn killed_database_connections_stall_the_relay_for_seconds_only() {
    let Some((schema, _pool, thorn)) = setup() else {
        return;
    };
    // The relay's own pool, named so its connections can be found, with
    // no check on checkout (as `thorn worker` runs): connections that lost
    // the server must not keep failing.
    let name = format!("thorn_relay_{}", uuid::Uuid::new_v4().simple());
    let pool: PgPool = Pool::builder()
        .max_size(8)
        .test_on_check_out(false)
        .build(ConnectionManager::new(format!(
            "{}&application_name={name}",
            schema.url()
        )))
        .unwrap();
    let receiver = Receiver::always(Reply::Slow(Duration::from_millis(20)));
    subscribe(&pool, &receiver.url);
    // A lease far longer than the test may take: no claim may wait for it.
    let relay = Relay::start_with(
        &thorn,
        pool.clone(),
        RelayOptions {
            lease: Duration::from_secs(120),
            ..options(16)
        },
    )
    .unwrap();
    write(&thorn, &pool, 300);
    let first = receiver.until_quiet(Duration::from_millis(500), Duration::from_millis(300));
    let mut admin = pg_pool().unwrap().1.get().unwrap();
    let killed: Vec<bool> = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
    )))
    .load(&mut *admin)
    .unwrap();
    assert!(!killed.is_empty(), "the relay's connections were found");
    // Within seconds, not a 120 s lease, everything is sent.
    let killed_at = Instant::now();
    let mut all = ids(&first);
    while all.len() < 300 && killed_at.elapsed() < Duration::from_secs(40) {
        all.extend(ids(
            &receiver.until_quiet(Duration::from_millis(200), Duration::from_secs(1))
        ));
    }
    let counts = wait_for(&pool, |c| c.delivered == 300);
    drop(relay);
    assert_eq!(all.len(), 300, "every delivery arrived: {counts:?}");
    assert_eq!((counts.delivered, counts.pending), (300, 0));
}

#[test]
fn a_relay_refuses_to_start_without_thorns_tables() {
    let Some((_schema, pool)) = pg_pool() else {
        return;
    };
    let thorn = Thorn::new(Config {
        outbox: true,
        ..local_config()
    })
    .unwrap();
    let error = Relay::start(&thorn, pool).map(|_| ()).unwrap_err();
    assert!(
        matches!(error, Error::SchemaOutdated { found: None, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("thorn::diesel::migrate"),
        "{error}"
    );
}

#[test]
fn the_outbox_retries_over_a_day_unless_the_relay_says_otherwise() {
    let Some((_schema, pool, thorn)) = setup() else {
        return;
    };
    let receiver = Receiver::scripted([Reply::Status(500), Reply::Status(500)]);
    subscribe(&pool, &receiver.url);
    write(&thorn, &pool, 1);
    let outbox = DieselOutbox::new(pool.clone());
    // The default schedule: the first retry 5 s (±20%) after the failure.
    let relay = Relay::start_with(&thorn, pool.clone(), options(4)).unwrap();
    receiver.first(1, Duration::from_secs(10));
    wait_for(&pool, |c| c.claimed == 0);
    relay.stop().unwrap();
    let delivery = outbox.deliveries(None, 1).unwrap().remove(0);
    let wait = delivery.run_at - chrono::Utc::now().timestamp_micros();
    assert!(
        (3_500_000..6_100_000).contains(&wait),
        "next attempt in {wait} µs"
    );
    // An operator's schedule replaces it for what this relay sends.
    assert!(outbox.retry_delivery(delivery.id.parse().unwrap()).unwrap());
    let relay = Relay::start_with(
        &thorn,
        pool.clone(),
        RelayOptions {
            retry: Some(thorn::RetryPolicy::scheduled(
                vec![Duration::from_millis(100); 3],
                0.0,
            )),
            ..options(4)
        },
    )
    .unwrap();
    let got = receiver.first(2, Duration::from_secs(5));
    let counts = wait_for(&pool, |c| c.delivered == 1);
    relay.stop().unwrap();
    assert_eq!(counts.delivered, 1);
    assert!(got[1].at - got[0].at < Duration::from_secs(2));
}

/// One number from `sql` on `pool`.
fn count(pool: &PgPool, sql: &str) -> i64 {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(sql))
        .get_result(&mut *pool.get().unwrap())
        .unwrap()
}

#[test]
fn a_static_subscribers_secret_is_stored_in_thorn_subscribers_only() {
    let Some((_schema, pool, _)) = setup() else {
        return;
    };
    let receiver = Receiver::start();
    let secret = "static-secret-0123456789";
    let config = Config {
        outbox: true,
        event_timeout: Duration::from_secs(1),
        subscribers: thorn::subscriber::StaticSubscribers::from_json(&format!(
            r#"{{"parcel.created": {{"url": "{}", "hmac_secret": "{secret}"}}}}"#,
            receiver.url
        ))
        .unwrap(),
        ..local_config()
    };
    let thorn = Thorn::builder(config)
        .store(DieselStore::new(pool.clone()))
        .build()
        .unwrap();
    write(&thorn, &pool, 3);
    let relay = Relay::start_with(&thorn, pool.clone(), options(4)).unwrap();
    let got = receiver.expect(3, Duration::from_secs(10));
    wait_for(&pool, |c| c.delivered == 3);
    drop(relay);
    for request in &got {
        assert!(
            thorn::signing::verify(
                thorn::signing::HmacDigest::Sha256,
                secret.as_bytes(),
                &request.body,
                request.header("hook-hmac"),
            ),
            "signed with the configured secret: {request:?}"
        );
    }
    // One row holds the secret; deliveries and events name it by uuid.
    assert_eq!(
        count(
            &pool,
            &format!(
                "(SELECT COUNT(*) FROM thorn_subscribers WHERE hmac_secret = '{secret}' \
                 AND recipient_only)"
            )
        ),
        1
    );
    assert_eq!(
        count(
            &pool,
            &format!(
                "(SELECT COUNT(*) FROM thorn_deliveries WHERE recipient IS NOT NULL) + \
                 (SELECT COUNT(*) FROM thorn_events WHERE options LIKE '%{secret}%')"
            )
        ),
        0,
        "no copy of the secret elsewhere"
    );
    // It is no subscription: not listed, not matched.
    let store = DieselStore::new(pool.clone());
    assert!(store.statuses(false).unwrap().is_empty());
    // A replay reaches it again, under a new delivery id.
    let outbox = DieselOutbox::new(pool.clone());
    let first = outbox.deliveries(None, 10).unwrap().remove(0);
    let replayed = outbox
        .replay_event(first.event_id.parse().unwrap())
        .unwrap()
        .expect("the event");
    assert_eq!(replayed.len(), 1, "the static subscriber");
    let relay = Relay::start_with(&thorn, pool.clone(), options(4)).unwrap();
    let again = receiver.expect(1, Duration::from_secs(10));
    assert_eq!(again[0].header("hook-delivery"), replayed[0].to_string());
    wait_for(&pool, |c| c.delivered == 4);
    drop(relay);
    // Retention takes it with the last of its deliveries.
    let pruned = outbox.prune(Duration::ZERO).unwrap();
    assert_eq!(pruned.deliveries, 4);
    assert_eq!(
        count(
            &pool,
            "(SELECT COUNT(*) FROM thorn_subscribers WHERE recipient_only)"
        ),
        0,
        "the recipient row is pruned"
    );
}
