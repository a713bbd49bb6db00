//! thorn-seaorm beyond the functional suite: transactions and savepoints
//! through the hooks' `db`, old rows under concurrency, the prefetch only
//! when needed (statements counted), bulk helpers, and the errors a
//! misconfigured model gets. SQLite always; PostgreSQL when
//! `THORN_TEST_DATABASE_URL` is set.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, ModelTrait, PaginatorTrait,
    QueryFilter, Set, TransactionTrait, sea_query::Expr,
};
use thorn::seaorm::SeaOrmOutbox;
use thorn::subscriber::MemoryStore;
use thorn::{Config, DispatcherKind, Subscriber, Thorn};

use crate::engine::{Recorder, WAIT, local_config};
use crate::receiver::Receiver;
use crate::seaorm_funtests::{create_tables, database, fun_article, runtime};

fn thorn(kind: DispatcherKind, url: &str) -> Thorn {
    build_thorn(kind, false, url)
}

fn outbox_thorn(url: &str) -> Thorn {
    build_thorn(DispatcherKind::InProcess, true, url)
}

fn build_thorn(kind: DispatcherKind, outbox: bool, url: &str) -> Thorn {
    let store = MemoryStore::new();
    store.add(Subscriber::new("article.*", url).unwrap());
    Thorn::builder(Config {
        dispatcher: kind,
        outbox,
        ..local_config()
    })
    .store(store)
    .build()
    .unwrap()
}

/// An in-process relay on `db`, polling every 50 ms.
fn start_relay(
    rt: &tokio::runtime::Runtime,
    thorn: &Thorn,
    db: &DatabaseConnection,
) -> thorn::seaorm::Relay {
    rt.block_on(thorn::seaorm::Relay::start_with(
        thorn,
        db.clone(),
        thorn::RelayOptions {
            poll: std::time::Duration::from_millis(50),
            ..Default::default()
        },
    ))
    .unwrap()
}

fn draft(title: &str) -> fun_article::ActiveModel {
    fun_article::ActiveModel {
        title: Set(title.to_owned()),
        state: Set("DRAFT".to_owned()),
        author_id: Set(1),
        ..Default::default()
    }
}

async fn new_events(db: &DatabaseConnection) -> i64 {
    SeaOrmOutbox::new(db.clone())
        .counts()
        .await
        .unwrap()
        .new_events
}

crate::seaorm_funtests::on_both!(
    outbox_follows_transactions_and_savepoints,
    create_tables,
    |rt, db, _pg| {
        let receiver = Receiver::start();
        let thorn = outbox_thorn(&receiver.url);
        rt.block_on(thorn::seaorm::scope(thorn.clone(), async {
            // Rolled back: nothing in the outbox.
            let txn = db.begin().await.unwrap();
            draft("rolled back").insert(&txn).await.unwrap();
            txn.rollback().await.unwrap();
            assert_eq!(new_events(&db).await, 0);

            // A savepoint rolled back drops its event; the released one keeps its.
            let txn = db.begin().await.unwrap();
            draft("kept").insert(&txn).await.unwrap();
            let inner = txn.begin().await.unwrap();
            draft("dropped").insert(&inner).await.unwrap();
            inner.rollback().await.unwrap();
            let inner = txn.begin().await.unwrap();
            draft("released").insert(&inner).await.unwrap();
            inner.commit().await.unwrap();
            // Not visible before commit from another connection.
            txn.commit().await.unwrap();
            assert_eq!(new_events(&db).await, 2);

            let titles: BTreeSet<String> = fun_article::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.title)
                .collect();
            assert_eq!(titles, BTreeSet::from(["kept".into(), "released".into()]));
        }));
        // Nothing is sent in-process; a relay sends the two committed ones,
        // and only those.
        receiver.expect_none(std::time::Duration::from_millis(200));
        let relay = start_relay(&rt, &thorn, &db);
        let sent: BTreeSet<String> = receiver
            .expect(2, WAIT)
            .iter()
            .map(|r| r.json()["data"]["title"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(sent, BTreeSet::from(["kept".into(), "released".into()]));
        receiver.expect_none(std::time::Duration::from_millis(300));
        rt.block_on(relay.stop()).unwrap();
    }
);

crate::seaorm_funtests::on_both!(
    concurrent_saves_keep_their_own_old_rows,
    create_tables,
    |rt, db, pg| {
        let receiver = Receiver::start();
        let thorn = thorn(DispatcherKind::InProcess, &receiver.url);
        const N: i32 = 24;
        let ids: Vec<i32> = rt.block_on(thorn::seaorm::scope(thorn.clone(), async {
            let mut ids = Vec::new();
            for i in 0..N {
                ids.push(draft(&format!("a{i}")).insert(&db).await.unwrap().id);
            }
            ids
        }));
        receiver.expect(N as usize, WAIT);
        // Every other article is already published, behind Thorn's back.
        let published_before: Vec<i32> = ids.iter().copied().step_by(2).collect();
        rt.block_on(async {
            fun_article::Entity::update_many()
                .col_expr(fun_article::Column::State, Expr::value("PUBLISHED"))
                .filter(fun_article::Column::Id.is_in(published_before.clone()))
                .exec(&db)
                .await
                .unwrap();
        });
        // All articles are saved as PUBLISHED at once, each from its own task
        // (on PostgreSQL each in its own transaction; SQLite, whose deferred
        // transactions cannot upgrade to writing while others write, saves
        // through the pool).
        let tasks: Vec<_> = ids
            .iter()
            .map(|&id| {
                let db = db.clone();
                let thorn = thorn.clone();
                rt.spawn(thorn::seaorm::scope(thorn, async move {
                    let mut a: fun_article::ActiveModel = fun_article::Entity::find_by_id(id)
                        .one(&db)
                        .await
                        .unwrap()
                        .unwrap()
                        .into();
                    a.state = Set("PUBLISHED".to_owned());
                    a.title = Set(format!("published {id}"));
                    tokio::task::yield_now().await;
                    if pg {
                        let txn = thorn::seaorm::begin(&db).await.unwrap();
                        a.update(&*txn).await.unwrap();
                        txn.commit().await.unwrap();
                    } else {
                        a.update(&db).await.unwrap();
                    }
                }))
            })
            .collect();
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        let got = receiver.expect(N as usize + (N as usize) / 2, WAIT);
        let published: BTreeSet<i64> = got
            .iter()
            .filter(|r| r.header("hook-event") == "article.published")
            .map(|r| r.json()["data"]["id"].as_i64().unwrap())
            .collect();
        let expected: BTreeSet<i64> = ids
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&id| i64::from(id))
            .collect();
        assert_eq!(published, expected, "only the drafts became published");
        receiver.expect_none(std::time::Duration::from_millis(200));
    }
);

crate::seaorm_funtests::on_both!(
    bulk_helpers_send_one_event_per_row,
    create_tables,
    |rt, db, _pg| {
        let receiver = Receiver::start();
        let thorn = outbox_thorn(&receiver.url);
        rt.block_on(thorn::seaorm::scope(thorn, async {
            let txn = db.begin().await.unwrap();
            let rows = thorn::seaorm::insert_many(
                &txn,
                fun_article::Entity::insert_many((0..5).map(|i| draft(&format!("bulk {i}")))),
            )
            .await
            .unwrap();
            assert_eq!(rows.len(), 5);
            txn.commit().await.unwrap();
            assert_eq!(new_events(&db).await, 5);

            // Change events with now_ filters need the old row: refused.
            let err = thorn::seaorm::update_many(
                &db,
                fun_article::Entity::update_many()
                    .col_expr(fun_article::Column::Title, Expr::value("x")),
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("now_ filters"), "{err}");

            // On a bare connection the rows would commit before their outbox
            // events are written: refused before anything is deleted.
            let err = thorn::seaorm::delete_many(
                &db,
                fun_article::Entity::delete_many().filter(fun_article::Column::Title.ne("bulk 0")),
            )
            .await
            .unwrap_err();
            assert!(
                err.to_string().contains("thorn::seaorm::transaction"),
                "{err}"
            );
            assert_eq!(fun_article::Entity::find().count(&db).await.unwrap(), 5);

            let txn = db.begin().await.unwrap();
            let deleted = thorn::seaorm::delete_many(
                &txn,
                fun_article::Entity::delete_many().filter(fun_article::Column::Title.ne("bulk 0")),
            )
            .await
            .unwrap();
            txn.commit().await.unwrap();
            assert_eq!(deleted.len(), 4);
            assert_eq!(new_events(&db).await, 9);
        }));
    }
);

crate::seaorm_funtests::on_both!(
    old_row_loaded_only_when_a_filter_needs_it,
    create_tables,
    |rt, db, pg| {
        let receiver = Receiver::start();
        let thorn = thorn(DispatcherKind::InProcess, &receiver.url);
        let statements = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut db = db;
        {
            let statements = statements.clone();
            db.set_metric_callback(move |info| {
                statements.lock().unwrap().push(info.statement.sql.clone());
            });
        }
        rt.block_on(thorn::seaorm::scope(thorn, async {
            let a = draft("counted").insert(&db).await.unwrap();
            let mut am: fun_article::ActiveModel = a.into();
            statements.lock().unwrap().clear();
            am.title = Set("counted again".into());
            am.update(&db).await.unwrap();
            let sql = statements.lock().unwrap().clone();
            let selects: Vec<&String> = sql.iter().filter(|s| s.starts_with("SELECT")).collect();
            assert_eq!(selects.len(), 1, "one prefetch of the old row: {sql:?}");
            if pg {
                assert!(selects[0].contains("FOR UPDATE"), "{}", selects[0]);
            }
        }));
        // The tag model has no events: its saves add no statement.
        rt.block_on(async {
            statements.lock().unwrap().clear();
            crate::seaorm_funtests::fun_article_tag::ActiveModel {
                article_id: Set(1),
                tag_id: Set(1),
            }
            .insert(&db)
            .await
            .unwrap();
            let sql = statements.lock().unwrap().clone();
            assert_eq!(sql.len(), 1, "{sql:?}");
        });
    }
);

crate::seaorm_funtests::on_both!(
    delete_events_carry_the_stored_row_and_only_once,
    create_tables,
    |rt, db, _pg| {
        let receiver = Receiver::start();
        let thorn = thorn(DispatcherKind::InProcess, &receiver.url);
        rt.block_on(thorn::seaorm::scope(thorn, async {
            let a = draft("as the caller has it").insert(&db).await.unwrap();
            assert_eq!(receiver.expect(1, WAIT).len(), 1);
            // Changed behind the caller's copy.
            fun_article::Entity::update_many()
                .col_expr(fun_article::Column::Title, Expr::value("as stored"))
                .filter(fun_article::Column::Id.eq(a.id))
                .exec(&db)
                .await
                .unwrap();
            let deleted = a.clone().delete(&db).await.unwrap();
            assert_eq!(deleted.rows_affected, 1);
            let got = receiver.expect(1, WAIT);
            assert_eq!(got[0].header("hook-event"), "article.removed");
            assert_eq!(got[0].json()["data"]["title"], "as stored");
            // Deleting it again deletes nothing and sends nothing.
            let again = a.delete(&db).await.unwrap();
            assert_eq!(again.rows_affected, 0);
        }));
        receiver.expect_none(std::time::Duration::from_millis(300));
    }
);

crate::seaorm_funtests::on_both!(
    delivery_history_reads_through_entities,
    create_tables,
    |rt, db, _pg| {
        use thorn::seaorm::entity::{attempt, delivery, event};
        let receiver = Receiver::start();
        let thorn = outbox_thorn(&receiver.url);
        let relay = start_relay(&rt, &thorn, &db);
        rt.block_on(thorn::seaorm::scope(
            thorn,
            thorn::seaorm::transaction(&db, |txn| Box::pin(draft("tracked").insert(txn))),
        ))
        .unwrap();
        receiver.expect(1, WAIT);
        // The attempt is recorded just after the answer: wait for it, boundedly.
        let mut history = Vec::new();
        for _ in 0..200 {
            history = rt
                .block_on(
                    delivery::Entity::find()
                        .filter(delivery::Column::State.eq("delivered"))
                        .find_with_related(attempt::Entity)
                        .all(&db),
                )
                .unwrap();
            if !history.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert_eq!(history.len(), 1, "one delivery, delivered");
        let (d, attempts) = &history[0];
        assert_eq!(d.url, receiver.url);
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].status, Some(200));
        let e = rt
            .block_on(d.find_related(event::Entity).one(&db))
            .unwrap()
            .unwrap();
        assert_eq!(e.name, "article.created");
        assert!(e.fanned_out_at.is_some());
        rt.block_on(relay.stop()).unwrap();
    }
);

#[test]
fn a_model_with_events_and_no_thorn_is_an_error() {
    let rt = runtime();
    let (_guard, db) = database(&rt, false).unwrap();
    rt.block_on(create_tables(&db, false));
    let err = rt.block_on(draft("orphan").insert(&db)).unwrap_err();
    assert!(
        err.to_string().contains("thorn::seaorm::set_global(thorn)"),
        "names the fix: {err}"
    );
}

crate::seaorm_funtests::on_both!(
    links_send_the_keys_that_changed,
    create_tables,
    |rt, db, _pg| {
        use crate::seaorm_funtests::{fun_article_tag, fun_tag};
        let tags = |ids: &[i32]| -> Vec<fun_tag::Model> {
            ids.iter()
                .map(|&id| fun_tag::Model {
                    id,
                    name: format!("t{id}"),
                })
                .collect()
        };
        let recorder = Recorder::default();
        let thorn = Thorn::builder(local_config())
            .dispatcher(recorder.clone())
            .build()
            .unwrap();
        const TAGS: thorn::Relation<fun_article::Model> = fun_article::Model::TAGS;
        rt.block_on(thorn::seaorm::scope(thorn, async {
            let a = draft("tagged").insert(&db).await.unwrap();
            let txn = thorn::seaorm::begin(&db).await.unwrap();
            assert_eq!(
                thorn::seaorm::link(&*txn, &a, TAGS, &tags(&[1, 2, 3]))
                    .await
                    .unwrap(),
                3
            );
            // 3 is linked already: only 4 is new.
            assert_eq!(
                thorn::seaorm::link(&*txn, &a, TAGS, &tags(&[3, 4]))
                    .await
                    .unwrap(),
                1
            );
            // 9 was never linked.
            assert_eq!(
                thorn::seaorm::unlink(&*txn, &a, TAGS, &tags(&[2, 9]))
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(
                thorn::seaorm::unlink(&*txn, &a, TAGS, &tags(&[9]))
                    .await
                    .unwrap(),
                0
            );
            txn.commit().await.unwrap();
            // A rolled-back link sends nothing and leaves no row.
            let txn = thorn::seaorm::begin(&db).await.unwrap();
            thorn::seaorm::link(&*txn, &a, TAGS, &tags(&[7]))
                .await
                .unwrap();
            txn.rollback().await.unwrap();
            let linked: Vec<i32> = fun_article_tag::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.tag_id)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(linked, [1, 3, 4]);
            let txn = thorn::seaorm::begin(&db).await.unwrap();
            assert_eq!(
                thorn::seaorm::clear(&*txn, &a, TAGS, fun_tag::Entity)
                    .await
                    .unwrap(),
                3
            );
            assert_eq!(
                thorn::seaorm::clear(&*txn, &a, TAGS, fun_tag::Entity)
                    .await
                    .unwrap(),
                0
            );
            txn.commit().await.unwrap();
            assert_eq!(fun_article_tag::Entity::find().count(&db).await.unwrap(), 0);
        }));
        let got: Vec<(String, serde_json::Value)> = recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _, _)| e != "article.created")
            .map(|(e, _, context)| {
                let mut related: Vec<i64> = context.as_ref().unwrap()["related"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_i64().unwrap())
                    .collect();
                related.sort_unstable();
                assert_eq!(context.as_ref().unwrap()["relation"], "tags");
                (e.clone(), serde_json::json!(related))
            })
            .collect();
        use serde_json::json;
        assert_eq!(
            got,
            [
                ("article.tagged".to_owned(), json!([1, 2, 3])),
                ("article.tagged".to_owned(), json!([4])),
                ("article.untagged".to_owned(), json!([2])),
                ("article.tags_cleared".to_owned(), json!([1, 3, 4])),
            ],
            "one event per change that linked or unlinked something, with its keys"
        );
    }
);

/// An article whose `Related<fun_tag::Entity>` has no junction.
mod unjoined {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, thorn::WebhookModel)]
    #[sea_orm(table_name = "fun_articles")]
    #[webhook_model(on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)))]
    pub(crate) struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl Related<crate::seaorm_funtests::fun_tag::Entity> for Entity {
        fn to() -> RelationDef {
            Entity::belongs_to(crate::seaorm_funtests::fun_tag::Entity)
                .from(Column::Id)
                .to(crate::seaorm_funtests::fun_tag::Column::Id)
                .into()
        }
    }

    thorn::seaorm::behavior!(ActiveModel);
}

#[test]
fn a_relation_without_a_junction_is_refused() {
    let rt = runtime();
    let (_guard, db) = database(&rt, false).unwrap();
    rt.block_on(create_tables(&db, false));
    let receiver = Receiver::start();
    let thorn = thorn(DispatcherKind::InProcess, &receiver.url);
    let article = unjoined::Model {
        id: 1,
        title: "x".into(),
    };
    let tag = crate::seaorm_funtests::fun_tag::Model {
        id: 1,
        name: "t".into(),
    };
    let err = rt
        .block_on(thorn::seaorm::scope(
            thorn,
            thorn::seaorm::link(&db, &article, unjoined::Model::TAGS, &[tag]),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("has no via()"), "{err}");
    assert!(
        err.to_string().contains("fun_tags"),
        "names the entity: {err}"
    );
}

crate::seaorm_funtests::on_both!(
    ten_thousand_concurrent_saves_each_keep_their_old_row,
    create_tables,
    |rt, db, pg| {
        const N: i32 = 10_000;
        // Every other article is published already.
        rt.block_on(async {
            for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
                fun_article::Entity::insert_many(chunk.iter().map(|&i| fun_article::ActiveModel {
                    title: Set(format!("a{i}")),
                    state: Set(if i % 2 == 0 { "PUBLISHED" } else { "DRAFT" }.to_owned()),
                    author_id: Set(1),
                    ..Default::default()
                }))
                .exec(&db)
                .await
                .unwrap();
            }
        });
        let ids: Vec<(i32, String)> = rt.block_on(async {
            fun_article::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .into_iter()
                .map(|a| (a.id, a.state))
                .collect()
        });
        assert_eq!(ids.len(), N as usize);
        let recorder = Recorder::default();
        let thorn = Thorn::builder(local_config())
            .dispatcher(recorder.clone())
            .build()
            .unwrap();
        // All saves start together, so thousands wait between their two
        // hooks for one of the pool's connections. On PostgreSQL every
        // other one runs in a managed transaction (its old row waits in the
        // frame), the rest on the pool (with the connection and task).
        let start = Arc::new(tokio::sync::Barrier::new(N as usize));
        let tasks: Vec<_> = ids
            .iter()
            .map(|&(id, _)| {
                let db = db.clone();
                let start = start.clone();
                rt.spawn(thorn::seaorm::scope(thorn.clone(), async move {
                    let a = fun_article::ActiveModel {
                        id: sea_orm::ActiveValue::Unchanged(id),
                        state: Set("PUBLISHED".to_owned()),
                        ..Default::default()
                    };
                    start.wait().await;
                    if pg && id % 2 == 0 {
                        let txn = thorn::seaorm::begin(&db).await.unwrap();
                        a.update(&*txn).await.unwrap();
                        txn.commit().await.unwrap();
                    } else {
                        a.update(&db).await.unwrap();
                    }
                }))
            })
            .collect();
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        let got = recorder.0.lock().unwrap().clone();
        let changed: BTreeSet<i64> = got
            .iter()
            .filter(|(e, _, _)| e == "article.changed")
            .map(|&(_, id, _)| id)
            .collect();
        assert_eq!(changed.len(), N as usize, "one change event per save");
        let mut published: Vec<i64> = got
            .iter()
            .filter(|(e, _, _)| e == "article.published")
            .map(|&(_, id, _)| id)
            .collect();
        published.sort_unstable();
        let drafts: Vec<i64> = ids
            .iter()
            .filter(|(_, state)| state == "DRAFT")
            .map(|&(id, _)| i64::from(id))
            .collect();
        let missing: Vec<_> = drafts.iter().filter(|d| !published.contains(d)).collect();
        let extra: Vec<_> = published.iter().filter(|d| !drafts.contains(d)).collect();
        assert_eq!(
            (published.len(), &missing, &extra),
            (drafts.len(), &vec![], &vec![]),
            "each save compared with its own old row: exactly the drafts became published"
        );
    }
);
