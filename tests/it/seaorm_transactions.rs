//! The transaction rules through thorn-seaorm, on SQLite and PostgreSQL:
//! `thorn::seaorm::transaction` and `begin` send after COMMIT and nothing
//! on rollback (savepoints too), each event arrives once its row is
//! visible to another connection, SeaORM's own transactions are refused
//! with events held in memory, and an `Err` never leaves its row behind.

use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, Set,
    TransactionTrait,
};
use thorn::subscriber::MemoryStore;
use thorn::{Config, Subscriber, Thorn};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Received, Receiver};
use crate::seaorm_funtests::{database, runtime};

mod tx_article {
    use sea_orm::entity::prelude::*;
    use serde::Serialize;
    use serde::ser::Error as _;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, thorn::WebhookModel)]
    #[sea_orm(table_name = "tx_articles")]
    #[webhook_model(
        payload = Self::payload,
        on_create(name = "article.created", propagate_errors = true),
        on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
    )]
    pub(crate) struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub state: String,
    }

    /// The row, failing to encode for the title "unencodable".
    pub(crate) struct Payload<'a>(&'a Model);

    impl Serialize for Payload<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0.title == "unencodable" {
                return Err(S::Error::custom("this title cannot be encoded"));
            }
            (self.0.id, &self.0.title, &self.0.state).serialize(s)
        }
    }

    impl Model {
        fn payload(&self) -> Payload<'_> {
            Payload(self)
        }
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    thorn::seaorm::behavior!(ActiveModel);
}

fn draft(title: &str) -> tx_article::ActiveModel {
    tx_article::ActiveModel {
        title: Set(title.to_owned()),
        state: Set("DRAFT".to_owned()),
        ..Default::default()
    }
}

fn thorn_to(receiver: &Receiver, outbox: bool) -> Thorn {
    let store = MemoryStore::new();
    store.add(Subscriber::new("article.*", &receiver.url).unwrap());
    Thorn::builder(Config {
        outbox,
        ..local_config()
    })
    .store(store)
    .build()
    .unwrap()
}

async fn create_table(db: &DatabaseConnection, postgres: bool) {
    let id = if postgres {
        "SERIAL PRIMARY KEY"
    } else {
        "INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    db.execute_unprepared(&format!(
        "CREATE TABLE tx_articles (id {id}, title TEXT NOT NULL, state TEXT NOT NULL)"
    ))
    .await
    .unwrap();
}

async fn count<C: ConnectionTrait>(db: &C) -> u64 {
    tx_article::Entity::find().count(db).await.unwrap()
}

fn titles(got: &[Received]) -> Vec<String> {
    let mut titles: Vec<String> = got
        .iter()
        .map(|r| r.json()["data"][1].as_str().unwrap().to_owned())
        .collect();
    titles.sort();
    titles
}

/// A receiver that looks, from another connection of `db`'s pool, whether
/// the row of each event is there when it arrives.
fn visibility_receiver(db: &DatabaseConnection) -> Receiver {
    let db = db.clone();
    Receiver::probing(move |body| {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let id = body["data"][0].as_i64().unwrap() as i32;
        let db = db.clone();
        // The probe runs on the receiver's runtime: query from a thread.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let row = rt
                .block_on(tx_article::Entity::find_by_id(id).one(&db))
                .unwrap();
            if row.is_some() { "visible" } else { "missing" }.to_owned()
        })
        .join()
        .unwrap()
    })
}

crate::seaorm_funtests::on_both!(
    rollback_sends_nothing_and_commit_sends_after_the_row_is_visible,
    create_table,
    |rt, db, _pg| {
        let receiver = visibility_receiver(&db);
        let thorn = thorn_to(&receiver, false);
        rt.block_on(thorn::seaorm::scope(thorn, async {
            // Err from the closure: rolled back, nothing sent, a publish included.
            let result = thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    let a = draft("rolled back").insert(txn).await?;
                    let mut a: tx_article::ActiveModel = a.into();
                    a.state = Set("PUBLISHED".to_owned());
                    a.update(txn).await?;
                    Err::<(), _>(DbErr::Custom("changed my mind".into()))
                })
            })
            .await;
            assert!(result.is_err());
            // begin()-style, dropped without commit: rolled back.
            {
                let txn = thorn::seaorm::begin(&db).await.unwrap();
                draft("dropped").insert(&*txn).await.unwrap();
            }
            assert_eq!(count(&db).await, 0);

            // A savepoint that rolls back drops its own events only.
            thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    draft("outer").insert(txn).await?;
                    let inner = thorn::seaorm::transaction(txn, |txn| {
                        Box::pin(async move {
                            draft("inner, rolled back").insert(txn).await?;
                            Err::<(), _>(DbErr::Custom("no".into()))
                        })
                    })
                    .await;
                    assert!(inner.is_err());
                    let released = thorn::seaorm::begin(txn).await?;
                    draft("inner, released").insert(&*released).await?;
                    released.commit().await?;
                    draft("after").insert(txn).await?;
                    Ok::<_, DbErr>(())
                })
            })
            .await
            .unwrap();
        }));
        let got = receiver.expect(3, WAIT);
        assert_eq!(titles(&got), ["after", "inner, released", "outer"]);
        for r in &got {
            assert_eq!(r.header("hook-event"), "article.created");
            assert_eq!(r.probe.as_deref(), Some("visible"), "sent before COMMIT");
        }
    }
);

crate::seaorm_funtests::on_both!(
    seaorms_own_transactions_are_refused_before_the_write,
    create_table,
    |rt, db, _pg| {
        let receiver = Receiver::start();
        let thorn = thorn_to(&receiver, false);
        rt.block_on(thorn::seaorm::scope(thorn, async {
            let txn = db.begin().await.unwrap();
            let err = draft("unmanaged").insert(&txn).await.unwrap_err();
            let message = err.to_string();
            assert!(message.contains("thorn::seaorm::transaction"), "{message}");
            assert!(message.contains("article.created"), "{message}");
            // Refused in before_save: nothing half-written, even uncommitted.
            assert_eq!(count(&txn).await, 0);
            txn.commit().await.unwrap();

            // A savepoint of SeaORM's own inside a managed transaction, too.
            let result = thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    draft("kept").insert(txn).await?;
                    let inner = txn.begin().await?;
                    draft("in an unmanaged savepoint").insert(&inner).await?;
                    inner.commit().await
                })
            })
            .await;
            let err = result.unwrap_err();
            assert!(err.to_string().contains("does not manage"), "{err}");
            assert_eq!(count(&db).await, 0);
        }));
        receiver.expect_none(Duration::from_millis(300));
    }
);

crate::seaorm_funtests::on_both!(
    an_err_never_leaves_its_row_behind,
    create_table,
    |rt, db, _pg| {
        let receiver = Receiver::start();
        rt.block_on(thorn::seaorm::scope(thorn_to(&receiver, false), async {
            // propagate_errors on a bare connection could only fail after the
            // row committed: refused before the insert.
            let err = draft("fine").insert(&db).await.unwrap_err();
            assert!(err.to_string().contains("bare connection"), "{err}");
            assert_eq!(count(&db).await, 0);
            // In a managed transaction the encode error rolls everything back.
            let result = thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    draft("fine").insert(txn).await?;
                    draft("unencodable").insert(txn).await
                })
            })
            .await;
            let err = result.unwrap_err();
            assert!(err.to_string().contains("cannot be encoded"), "{err}");
            assert_eq!(count(&db).await, 0);
        }));
        rt.block_on(thorn::seaorm::scope(thorn_to(&receiver, true), async {
            // The outbox on a bare connection: refused before the insert.
            let err = draft("no transaction").insert(&db).await.unwrap_err();
            assert!(err.to_string().contains("bare connection"), "{err}");
            // The outbox table is missing (no migration ran): COMMIT never
            // happens, and the error names the migration.
            let result = thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move { draft("no outbox").insert(txn).await })
            })
            .await;
            let err = result.unwrap_err();
            assert!(err.to_string().contains("thorn::seaorm::migrate"), "{err}");
            assert_eq!(count(&db).await, 0);
        }));
        receiver.expect_none(Duration::from_millis(200));
    }
);

crate::seaorm_funtests::on_both!(
    the_outbox_writes_a_transactions_events_at_commit,
    create_table,
    |rt, db, pg| {
        let receiver = Receiver::start();
        rt.block_on(thorn::seaorm::migrate(&db)).unwrap();
        let new_events = |db: DatabaseConnection| async move {
            thorn::seaorm::SeaOrmOutbox::new(db)
                .counts()
                .await
                .unwrap()
                .new_events
        };
        let thorn = thorn_to(&receiver, true);
        let signal = thorn_core::integration::ThornExt::outbox_signal(&thorn).clone();
        rt.block_on(thorn::seaorm::scope(thorn, async {
            let notified = signal.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let txn = thorn::seaorm::begin(&db).await.unwrap();
            for i in 0..5 {
                draft(&format!("batch {i}")).insert(&*txn).await.unwrap();
            }
            assert!(
                !crate::transactions::woken(notified.as_mut()),
                "relay woken before COMMIT"
            );
            // Held until COMMIT, then written in one statement (SQLite's pool
            // has no second connection to look with while the transaction is
            // open).
            if pg {
                assert_eq!(new_events(db.clone()).await, 0);
            }
            txn.commit().await.unwrap();
            assert!(
                crate::transactions::woken(notified.as_mut()),
                "relay not woken after COMMIT"
            );
            assert_eq!(new_events(db.clone()).await, 5);
            assert_eq!(count(&db).await, 5);
        }));
    }
);

/// Twenty tasks publish one article at once, each in a transaction Thorn
/// manages: the old row is locked in it (`FOR UPDATE` on PostgreSQL), so
/// exactly one `article.published` is sent.
/// On SQLite the same holds with transactions that take the write lock at
/// `BEGIN` (`begin_with_options`, `Immediate`): writers queue up.
#[test]
fn racing_publishes_send_one_publication() {
    racing_publishes(true);
    racing_publishes(false);
}

fn racing_publishes(postgres: bool) {
    let rt = runtime();
    let Some((_guard, db)) = database(&rt, postgres) else {
        return;
    };
    rt.block_on(create_table(&db, postgres));
    let receiver = Receiver::start();
    let thorn = thorn_to(&receiver, false);
    let id = rt
        .block_on(thorn::seaorm::scope(
            thorn.clone(),
            thorn::seaorm::transaction(&db, |txn| Box::pin(draft("raced").insert(txn))),
        ))
        .unwrap()
        .id;
    receiver.expect(1, WAIT);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let db = db.clone();
            rt.spawn(thorn::seaorm::scope(thorn.clone(), async move {
                let txn = thorn::seaorm::begin_with_options(
                    &db,
                    sea_orm::TransactionOptions {
                        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                        ..Default::default()
                    },
                )
                .await?;
                let mut a: tx_article::ActiveModel = tx_article::Entity::find_by_id(id)
                    .one(&*txn)
                    .await?
                    .expect("article exists")
                    .into();
                a.state = Set("PUBLISHED".to_owned());
                a.update(&*txn).await?;
                txn.commit().await
            }))
        })
        .collect();
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("hook-event"), "article.published");
}

/// Run by [`a_seaorm_program_that_drains_before_exit_delivers_everything`]
/// in a child process (ignored otherwise): saves
/// [`crate::transactions::CHILD_ROWS`] rows through SeaORM, each in
/// `thorn::seaorm::transaction`, then `drain_async`s and exits.
#[test]
#[ignore = "run by a_seaorm_program_that_drains_before_exit_delivers_everything in a child process"]
fn seaorm_child_process_writer() {
    let (Ok(url), Ok(db_url)) = (
        std::env::var("THORN_CHILD_RECEIVER"),
        std::env::var("THORN_CHILD_DB"),
    ) else {
        panic!("run by a_seaorm_program_that_drains_before_exit_delivers_everything");
    };
    let rt = runtime();
    rt.block_on(async {
        let store = MemoryStore::new();
        store.add(Subscriber::new("article.*", &url).unwrap());
        let thorn = Thorn::builder(local_config()).store(store).build().unwrap();
        let db = sea_orm::Database::connect(&db_url).await.unwrap();
        thorn::seaorm::scope(thorn.clone(), async {
            for i in 0..crate::transactions::CHILD_ROWS {
                let title = format!("row {i}");
                thorn::seaorm::transaction(&db, |txn| {
                    Box::pin(async move { draft(&title).insert(txn).await })
                })
                .await
                .unwrap();
            }
        })
        .await;
        let drained = thorn.drain_async(Duration::from_secs(20)).await;
        assert!(drained.is_complete(), "{drained:?}");
    });
}

#[test]
fn a_seaorm_program_that_drains_before_exit_delivers_everything() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("child.sqlite3").display()
    );
    rt.block_on(async {
        let db = sea_orm::Database::connect(&url).await.unwrap();
        create_table(&db, false).await;
        db.close().await.unwrap();
    });
    // A receiver that takes its time: deliveries are still in flight when
    // the child's work is done.
    let receiver = Receiver::always(crate::receiver::Reply::Slow(Duration::from_millis(150)));
    let out = crate::transactions::run_child(
        "seaorm_transactions::seaorm_child_process_writer",
        &receiver,
        &url,
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = receiver.expect(crate::transactions::CHILD_ROWS, WAIT);
    let mut t = titles(&got);
    t.dedup();
    assert_eq!(t.len(), crate::transactions::CHILD_ROWS);
}
