//! Events leave after COMMIT, in every mode, through both ORMs: a rollback
//! sends nothing, a rolled-back savepoint drops only its own events, each
//! event arrives once its row is visible to another connection, a write in
//! a transaction Thorn does not manage is refused before it runs, an `Err`
//! never leaves its row behind, and a program that drains before it exits
//! delivers everything.

use std::time::Duration;
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use serde::Serialize;
use serde::ser::Error as _;
use thorn::subscriber::MemoryStore;
use thorn::{Config, Subscriber, Thorn, WebhookModel};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Received, Receiver, Reply};

diesel::table! {
    tx_articles (id) {
        id -> Integer,
        title -> Text,
        state -> Text,
    }
}

/// Serializes the article, and fails for the title "unencodable".
struct Payload<'a>(&'a TxArticle);

impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.title == "unencodable" {
            return Err(S::Error::custom("this title cannot be encoded"));
        }
        (self.0.id, &self.0.title, &self.0.state).serialize(s)
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, WebhookModel)]
#[diesel(table_name = tx_articles)]
#[webhook_model(
    payload = Self::payload,
    on_create(name = "article.created", propagate_errors = true),
    on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
)]
struct TxArticle {
    id: i32,
    title: String,
    state: String,
}

impl TxArticle {
    fn payload(&self) -> Payload<'_> {
        Payload(self)
    }
}

fn thorn_to(receiver: &Receiver, config: Config) -> Thorn {
    let store = MemoryStore::new();
    store.add(Subscriber::new("article.*", &receiver.url).unwrap());
    Thorn::builder(config).store(store).build().unwrap()
}

fn outbox_config() -> Config {
    Config {
        outbox: true,
        ..local_config()
    }
}

/// `(id, title)` of each `article.created` received, in arrival order.
fn created(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| {
            assert_eq!(r.header("hook-event"), "article.created");
            r.json()["data"][1].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Whether the relay's wake-up signal has fired (polled once, no waiting).
pub(crate) fn woken(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::future::Future::poll(notified, &mut cx).is_ready()
}

fn rolled_back() -> diesel::result::Error {
    diesel::result::Error::RollbackTransaction
}

macro_rules! diesel_suite {
    ($name:ident, $conn:ty, $pool:expr, $create:literal) => {
        mod $name {
            use super::*;

            type Conn = $conn;

            fn setup() -> Option<(Box<dyn std::any::Any>, Pool<ConnectionManager<Conn>>)> {
                let (guard, pool) = $pool?;
                diesel::sql_query($create)
                    .execute(&mut *pool.get().unwrap())
                    .unwrap();
                Some((Box::new(guard), pool))
            }

            fn insert(
                thorn: &Thorn,
                conn: &mut Conn,
                title: &str,
            ) -> Result<TxArticle, thorn::diesel::Error> {
                diesel::insert_into(tx_articles::table)
                    .values((tx_articles::title.eq(title), tx_articles::state.eq("DRAFT")))
                    .returning(TxArticle::as_returning())
                    .with_webhooks(thorn)
                    .get_result(conn)
            }

            fn count(conn: &mut Conn) -> i64 {
                tx_articles::table.count().get_result(conn).unwrap()
            }

            /// A receiver that looks, from another connection, whether the
            /// row of each event is there when the event arrives.
            fn visibility_receiver(pool: &Pool<ConnectionManager<Conn>>) -> Receiver {
                let pool = pool.clone();
                Receiver::probing(move |body| {
                    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
                    let id = body["data"][0].as_i64().unwrap() as i32;
                    let n: i64 = tx_articles::table
                        .filter(tx_articles::id.eq(id))
                        .count()
                        .get_result(&mut *pool.get().unwrap())
                        .unwrap();
                    if n == 1 { "visible" } else { "missing" }.to_owned()
                })
            }

            #[test]
            fn rollback_sends_nothing_and_commit_sends_after_the_row_is_visible() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = visibility_receiver(&pool);
                let thorn = thorn_to(&receiver, local_config());
                let mut conn = pool.get().unwrap();

                // A transaction that returns Err sends nothing, a publish included.
                let err = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    let a = insert(&thorn, conn, "rolled back")?;
                    thorn::diesel::update(&a)
                        .set(tx_articles::state.eq("PUBLISHED"))
                        .returning(TxArticle::as_returning())
                        .with_webhooks(&thorn)
                        .get_result(conn)?;
                    Err::<(), _>(rolled_back())
                })
                .unwrap_err();
                assert!(matches!(err, diesel::result::Error::RollbackTransaction));
                receiver.expect_none(Duration::from_millis(300));
                assert_eq!(count(&mut conn), 0);

                // A savepoint that rolls back drops its own events only.
                thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "outer")?;
                    let inner = thorn::diesel::transaction(&thorn, conn, |conn| {
                        insert(&thorn, conn, "inner, rolled back")?;
                        Err::<(), _>(rolled_back())
                    });
                    assert!(inner.is_err());
                    thorn::diesel::transaction(&thorn, conn, |conn| {
                        insert(&thorn, conn, "inner, released").map(drop)
                    })?;
                    insert(&thorn, conn, "after").map(drop)
                })
                .unwrap();
                let got = receiver.expect(3, WAIT);
                let mut titles = created(&got);
                titles.sort();
                assert_eq!(titles, ["after", "inner, released", "outer"]);
                for r in &got {
                    assert_eq!(r.probe.as_deref(), Some("visible"), "sent before COMMIT");
                }
                assert_eq!(count(&mut conn), 3);

                // A lone statement sends after its own commit.
                insert(&thorn, &mut conn, "lone").unwrap();
                let got = receiver.expect(1, WAIT);
                assert_eq!(created(&got), ["lone"]);
                assert_eq!(got[0].probe.as_deref(), Some("visible"));
            }

            #[test]
            fn a_transaction_thorn_does_not_manage_is_refused_before_the_write() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_to(&receiver, local_config());
                let mut conn = pool.get().unwrap();
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    let err = insert(&thorn, conn, "unmanaged").unwrap_err();
                    let message = err.to_string();
                    assert!(message.contains("thorn::diesel::transaction"), "{message}");
                    assert!(message.contains("article.created"), "{message}");
                    // Refused before the statement ran: nothing half-written.
                    assert_eq!(count(conn), 0);
                    Ok(())
                })
                .unwrap();

                // A savepoint of Diesel's own inside a managed transaction, too.
                let err = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "kept")?;
                    conn.transaction(|conn| insert(&thorn, conn, "in an unmanaged savepoint"))
                })
                .unwrap_err();
                assert!(err.to_string().contains("does not manage"), "{err}");
                assert_eq!(count(&mut conn), 0);
                receiver.expect_none(Duration::from_millis(300));
            }

            #[test]
            fn the_relay_is_woken_after_commit_not_before() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
                let receiver = Receiver::start();
                let thorn = thorn_to(&receiver, outbox_config());
                let signal = thorn_core::integration::ThornExt::outbox_signal(&thorn).clone();
                let notified = signal.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let mut conn = pool.get().unwrap();
                thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "woken")?;
                    assert!(!woken(notified.as_mut()), "relay woken before COMMIT");
                    Ok::<_, diesel::result::Error>(())
                })
                .unwrap();
                assert!(woken(notified.as_mut()), "relay not woken after COMMIT");
            }

            #[test]
            fn a_test_transaction_is_transparent() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_to(&receiver, local_config());
                let mut conn = pool.get().unwrap();
                let _test = thorn::diesel::begin_test_transaction(&thorn, &mut conn).unwrap();
                // Directly in it: as if committed on its own.
                insert(&thorn, &mut conn, "in the test").unwrap();
                assert_eq!(created(&receiver.expect(1, WAIT)), ["in the test"]);
                // Transactions inside it commit (release) or roll back as usual.
                let _ = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "rolled back")?;
                    Err::<(), _>(rolled_back())
                });
                thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "released").map(drop)
                })
                .unwrap();
                assert_eq!(created(&receiver.expect(1, WAIT)), ["released"]);
                assert_eq!(count(&mut conn), 2);
                // Diesel's own savepoints in it are still transactions Thorn does not manage.
                let err = conn
                    .transaction(|conn| insert(&thorn, conn, "unmanaged"))
                    .unwrap_err();
                assert!(err.to_string().contains("does not manage"), "{err}");
                receiver.expect_none(Duration::from_millis(200));
            }

            #[test]
            fn events_that_do_not_honour_transactions_are_sent_at_once() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let config = Config {
                    signal_honors_transaction: false,
                    ..local_config()
                };
                let thorn = thorn_to(&receiver, config);
                let mut conn = pool.get().unwrap();
                // Any transaction will do, and its rollback does not stop them.
                let _ = conn.transaction::<(), _, _>(|conn| {
                    insert(&thorn, conn, "sent anyway")?;
                    Err(rolled_back())
                });
                assert_eq!(created(&receiver.expect(1, WAIT)), ["sent anyway"]);
                assert_eq!(count(&mut conn), 0);
            }

            #[test]
            fn an_err_never_leaves_its_row_behind() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let receiver = Receiver::start();
                let thorn = thorn_to(&receiver, local_config());
                let mut conn = pool.get().unwrap();

                // propagate_errors on a lone statement: Err, and no row.
                let err = insert(&thorn, &mut conn, "unencodable").unwrap_err();
                assert!(err.to_string().contains("cannot be encoded"), "{err}");
                assert_eq!(count(&mut conn), 0);
                // ... and inside a managed transaction.
                let err = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "fine")?;
                    insert(&thorn, conn, "unencodable")
                })
                .unwrap_err();
                assert!(err.to_string().contains("cannot be encoded"), "{err}");
                assert_eq!(count(&mut conn), 0);
                // A caller that carries on after the Err commits the rest,
                // never the failed row (it ran in a savepoint of its own).
                thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "fine")?;
                    assert!(insert(&thorn, conn, "unencodable").is_err());
                    Ok::<_, diesel::result::Error>(())
                })
                .unwrap();
                let titles: Vec<String> = tx_articles::table
                    .select(tx_articles::title)
                    .load(&mut conn)
                    .unwrap();
                assert_eq!(titles, ["fine"]);
                assert_eq!(created(&receiver.expect(1, WAIT)), ["fine"]);
                diesel::delete(tx_articles::table)
                    .execute(&mut conn)
                    .unwrap();

                // The outbox table is missing (no migration ran): Err naming
                // the migration, and no row — lone or in a transaction.
                let thorn = thorn_to(&receiver, outbox_config());
                let err = insert(&thorn, &mut conn, "no outbox").unwrap_err();
                assert!(err.to_string().contains("thorn::diesel::migrate"), "{err}");
                assert_eq!(count(&mut conn), 0);
                let err = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    insert(&thorn, conn, "no outbox either")
                })
                .unwrap_err();
                assert!(err.to_string().contains("thorn::diesel::migrate"), "{err}");
                assert_eq!(count(&mut conn), 0);
                receiver.expect_none(Duration::from_millis(200));
            }

            #[test]
            fn the_outbox_writes_a_transactions_events_at_commit() {
                let Some((_guard, pool)) = setup() else {
                    return;
                };
                let mut conn = pool.get().unwrap();
                thorn::diesel::migrate(&mut *conn).unwrap();
                let receiver = Receiver::start();
                let thorn = thorn_to(&receiver, outbox_config());
                let events = |conn: &mut Conn| -> i64 {
                    diesel::sql_query("SELECT COUNT(*) AS n FROM thorn_events")
                        .get_result::<Count>(conn)
                        .unwrap()
                        .n
                };
                thorn::diesel::transaction(&thorn, &mut conn, |conn| {
                    for i in 0..5 {
                        insert(&thorn, conn, &format!("batch {i}"))?;
                    }
                    // Held until COMMIT, then written in one statement.
                    assert_eq!(events(conn), 0);
                    let _ = thorn::diesel::transaction(&thorn, conn, |conn| {
                        insert(&thorn, conn, "dropped")?;
                        Err::<(), _>(rolled_back())
                    });
                    Ok::<_, diesel::result::Error>(())
                })
                .unwrap();
                assert_eq!(events(&mut conn), 5);
                assert_eq!(count(&mut conn), 5);

                // In a transaction Thorn does not manage, events are written
                // through at once and follow that transaction.
                let _ = conn.transaction::<(), _, _>(|conn| {
                    insert(&thorn, conn, "unmanaged")?;
                    assert_eq!(events(conn), 6);
                    Err(rolled_back())
                });
                assert_eq!(events(&mut conn), 5);
            }
        }
    };
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

diesel_suite!(
    diesel_sqlite,
    diesel::SqliteConnection,
    Some(crate::db::sqlite_pool()),
    "CREATE TABLE tx_articles (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, state TEXT NOT NULL)"
);

diesel_suite!(
    diesel_postgres,
    diesel::PgConnection,
    crate::db::pg_pool(),
    "CREATE TABLE tx_articles (id SERIAL PRIMARY KEY, title TEXT NOT NULL, state TEXT NOT NULL)"
);

/// How many rows the child process writes.
pub(crate) const CHILD_ROWS: usize = 20;

/// Run by [`a_program_that_drains_before_exit_delivers_everything`] in a
/// child process (it is ignored otherwise): writes [`CHILD_ROWS`] rows
/// through `thorn::diesel`, one lone statement each, drains (unless
/// `THORN_CHILD_DRAIN=no`) and exits.
#[test]
#[ignore = "run by a_program_that_drains_before_exit_delivers_everything in a child process"]
fn child_process_writer() {
    let (Ok(url), Ok(db)) = (
        std::env::var("THORN_CHILD_RECEIVER"),
        std::env::var("THORN_CHILD_DB"),
    ) else {
        panic!("run by a_program_that_drains_before_exit_delivers_everything");
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    let store = MemoryStore::new();
    store.add(Subscriber::new("article.*", &url).unwrap());
    let thorn = Thorn::builder(local_config()).store(store).build().unwrap();
    let mut conn = diesel::SqliteConnection::establish(&db).unwrap();
    for i in 0..CHILD_ROWS {
        let _: TxArticle = diesel::insert_into(tx_articles::table)
            .values((
                tx_articles::title.eq(format!("row {i}")),
                tx_articles::state.eq("DRAFT"),
            ))
            .returning(TxArticle::as_returning())
            .with_webhooks(&thorn)
            .get_result(&mut conn)
            .unwrap();
    }
    if std::env::var("THORN_CHILD_DRAIN").as_deref() != Ok("no") {
        let drained = thorn.drain(Duration::from_secs(20));
        assert!(drained.is_complete(), "{drained:?}");
    }
}

/// Runs the ignored test `test` of this binary in a child process, with
/// the receiver's URL and the database `db` in its environment.
pub(crate) fn run_child(
    test: &str,
    receiver: &Receiver,
    db: &str,
    drain: bool,
) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(exe)
        .args(["--exact", test, "--ignored", "--nocapture"])
        .env("THORN_CHILD_RECEIVER", &receiver.url)
        .env("THORN_CHILD_DB", db)
        .env("THORN_CHILD_DRAIN", if drain { "yes" } else { "no" })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_program_that_drains_before_exit_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir
        .path()
        .join("child.sqlite3")
        .to_str()
        .unwrap()
        .to_owned();
    let mut conn = diesel::SqliteConnection::establish(&db).unwrap();
    diesel::sql_query(
        "CREATE TABLE tx_articles (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, state TEXT NOT NULL)",
    )
    .execute(&mut conn)
    .unwrap();

    // A receiver that takes its time: deliveries are still in flight when
    // the child's main returns.
    let receiver = Receiver::always(Reply::Slow(Duration::from_millis(150)));
    let out = run_child("transactions::child_process_writer", &receiver, &db, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = receiver.expect(CHILD_ROWS, WAIT);
    let mut titles = created(&got);
    titles.sort();
    titles.dedup();
    assert_eq!(titles.len(), CHILD_ROWS);

    // Without drain, the last handle's drop says what is being left behind.
    let out = run_child("transactions::child_process_writer", &receiver, &db, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dropped without drain()"),
        "no warning on stderr: {stderr}"
    );
}
