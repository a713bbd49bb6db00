//! The functional suite (see `funtests`) through diesel-async on
//! PostgreSQL: writes on a deadpool pool of `AsyncPgConnection`s, each
//! under the in-process dispatcher and under the transactional outbox
//! (Thorn's tables, subscription store and relay on Diesel's synchronous
//! pool, as the module docs say). Then what only the async API has to get
//! right: rollback, savepoints and errors through async closures.

use std::any::Any;
use std::sync::Arc;

use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use thorn::diesel::asynchronous::prelude::*;
use thorn::diesel::{DieselStore, Relay, migrate};
use thorn::{Config, RelayOptions, SubscriptionStore, Thorn};

use crate::diesel_funtests::{FunArticle, fun_article_tags, fun_articles, outbox};
use crate::funtests::{Blog, base_config};

struct AsyncBlog {
    // Dropped first: the relay finishes before the database goes away.
    _relay: Option<Relay>,
    thorn: Thorn,
    store: Arc<DieselStore<diesel::PgConnection>>,
    pool: Pool<AsyncPgConnection>,
    rt: tokio::runtime::Runtime,
    _guard: Box<dyn Any>,
}

/// A fresh schema with Thorn's tables and the blog's, its sync pool and a
/// deadpool of async connections on it.
fn open_schema() -> Option<(
    crate::db::PgSchema,
    diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<diesel::PgConnection>>,
    Pool<AsyncPgConnection>,
)> {
    let (schema, sync_pool) = crate::db::pg_pool()?;
    use diesel::connection::SimpleConnection;
    let mut conn = sync_pool.get().unwrap();
    migrate(&mut *conn).unwrap();
    conn.batch_execute(
        "CREATE TABLE fun_articles (id SERIAL PRIMARY KEY, title TEXT NOT NULL, \
         state TEXT NOT NULL, author_id INTEGER NOT NULL); \
         CREATE TABLE fun_article_tags (article_id INTEGER NOT NULL, \
         tag_id INTEGER NOT NULL, PRIMARY KEY (article_id, tag_id))",
    )
    .unwrap();
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(schema.url());
    let pool = Pool::builder(manager).max_size(4).build().unwrap();
    Some((schema, sync_pool, pool))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl AsyncBlog {
    async fn article(&self, id: i32) -> FunArticle {
        use diesel_async::RunQueryDsl;
        let mut conn = self.pool.get().await.unwrap();
        fun_articles::table
            .find(id)
            .select(FunArticle::as_select())
            .first(&mut conn)
            .await
            .unwrap()
    }
}

impl Blog for AsyncBlog {
    fn open(config: Config) -> Option<Self> {
        let (guard, sync_pool, pool) = open_schema()?;
        let store = Arc::new(DieselStore::new(sync_pool.clone()));
        let outbox = config.outbox;
        let thorn = Thorn::builder(config)
            .shared_store(store.clone())
            .build()
            .unwrap();
        let relay = outbox.then(|| {
            Relay::start_with(
                &thorn,
                sync_pool,
                RelayOptions {
                    poll: std::time::Duration::from_millis(50),
                    ..RelayOptions::default()
                },
            )
            .unwrap()
        });
        Some(AsyncBlog {
            _relay: relay,
            thorn,
            store,
            pool,
            rt: runtime(),
            _guard: Box::new(guard),
        })
    }

    fn store(&self) -> Arc<dyn SubscriptionStore> {
        self.store.clone()
    }

    fn create(&mut self, title: &str, author: i32) -> i32 {
        self.rt.block_on(async {
            let mut conn = self.pool.get().await.unwrap();
            let a: FunArticle = diesel::insert_into(fun_articles::table)
                .values((
                    fun_articles::title.eq(title),
                    fun_articles::state.eq("DRAFT"),
                    fun_articles::author_id.eq(author),
                ))
                .returning(FunArticle::as_returning())
                .with_webhooks(&self.thorn)
                .get_result(&mut conn)
                .await
                .unwrap();
            a.id
        })
    }

    fn retitle(&mut self, id: i32, title: &str) {
        self.rt.block_on(async {
            let mut conn = self.pool.get().await.unwrap();
            let _: FunArticle = thorn::diesel::update(fun_articles::table.find(id))
                .set(fun_articles::title.eq(title))
                .returning(FunArticle::as_returning())
                .with_webhooks(&self.thorn)
                .get_result(&mut conn)
                .await
                .unwrap();
        })
    }

    fn publish(&mut self, id: i32) {
        let thorn = &self.thorn;
        self.rt.block_on(async {
            let mut conn = self.pool.get().await.unwrap();
            // Publishing in a transaction, as an application would.
            let _: FunArticle =
                thorn::diesel::asynchronous::transaction(thorn, &mut conn, async |conn| {
                    thorn::diesel::update(fun_articles::table.find(id))
                        .set(fun_articles::state.eq("PUBLISHED"))
                        .returning(FunArticle::as_returning())
                        .with_webhooks(thorn)
                        .get_result(conn)
                        .await
                })
                .await
                .unwrap();
        })
    }

    fn remove(&mut self, id: i32) {
        self.rt.block_on(async {
            let mut conn = self.pool.get().await.unwrap();
            let _: FunArticle = diesel::delete(fun_articles::table.find(id))
                .returning(FunArticle::as_returning())
                .with_webhooks(&self.thorn)
                .get_result(&mut conn)
                .await
                .unwrap();
        })
    }

    fn tag(&mut self, id: i32, tags: &[i32]) {
        self.rt.block_on(async {
            let row = self.article(id).await;
            let mut conn = self.pool.get().await.unwrap();
            let links: Vec<_> = tags
                .iter()
                .map(|t| {
                    (
                        fun_article_tags::article_id.eq(id),
                        fun_article_tags::tag_id.eq(*t),
                    )
                })
                .collect();
            // One multi-row INSERT ... RETURNING: one event for all links.
            let linked: Vec<i32> = diesel::insert_into(fun_article_tags::table)
                .values(links)
                .returning(fun_article_tags::tag_id)
                .with_webhooks(&self.thorn)
                .linking(&row, FunArticle::TAGS)
                .get_results(&mut conn)
                .await
                .unwrap();
            assert_eq!(linked.len(), tags.len());
        })
    }

    fn untag(&mut self, id: i32, tags: &[i32]) {
        self.rt.block_on(async {
            let row = self.article(id).await;
            let mut conn = self.pool.get().await.unwrap();
            let _: Vec<i32> = diesel::delete(
                fun_article_tags::table
                    .filter(fun_article_tags::article_id.eq(id))
                    .filter(fun_article_tags::tag_id.eq_any(tags)),
            )
            .returning(fun_article_tags::tag_id)
            .with_webhooks(&self.thorn)
            .unlinking(&row, FunArticle::TAGS)
            .get_results(&mut conn)
            .await
            .unwrap();
        })
    }

    fn clear_tags(&mut self, id: i32) {
        self.rt.block_on(async {
            let row = self.article(id).await;
            let mut conn = self.pool.get().await.unwrap();
            let _: Vec<i32> =
                diesel::delete(fun_article_tags::table.filter(fun_article_tags::article_id.eq(id)))
                    .returning(fun_article_tags::tag_id)
                    .with_webhooks(&self.thorn)
                    .clearing(&row, FunArticle::TAGS)
                    .get_results(&mut conn)
                    .await
                    .unwrap();
        })
    }
}

crate::funtests!(postgres_in_process, AsyncBlog, base_config());
crate::funtests!(postgres_outbox, AsyncBlog, outbox());

/// A Thorn whose events are recorded as they are handed over.
fn recorded() -> (Thorn, crate::engine::Recorder) {
    let recorder = crate::engine::Recorder::default();
    let thorn = Thorn::builder(crate::engine::local_config())
        .dispatcher(recorder.clone())
        .build()
        .unwrap();
    (thorn, recorder)
}

async fn insert(
    thorn: &Thorn,
    conn: &mut AsyncPgConnection,
    title: &str,
) -> Result<FunArticle, thorn::diesel::Error> {
    diesel::insert_into(fun_articles::table)
        .values((
            fun_articles::title.eq(title),
            fun_articles::state.eq("DRAFT"),
            fun_articles::author_id.eq(1),
        ))
        .returning(FunArticle::as_returning())
        .with_webhooks(thorn)
        .get_result(conn)
        .await
}

async fn titles(pool: &Pool<AsyncPgConnection>) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await.unwrap();
    fun_articles::table
        .select(fun_articles::title)
        .order(fun_articles::id)
        .load(&mut conn)
        .await
        .unwrap()
}

#[test]
fn rollbacks_and_savepoints_keep_their_events_to_themselves() {
    let Some((_schema, _sync, pool)) = open_schema() else {
        return;
    };
    let (thorn, recorder) = recorded();
    runtime().block_on(async {
        let mut conn = pool.get().await.unwrap();
        let t = &thorn;
        // A rolled-back transaction sends nothing and leaves no row.
        let err = thorn::diesel::asynchronous::transaction(t, &mut conn, async |conn| {
            insert(t, conn, "rolled back").await?;
            Err::<(), _>(thorn::diesel::Error::from(
                diesel::result::Error::RollbackTransaction,
            ))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, thorn::diesel::Error::Diesel(_)), "{err}");
        assert!(recorder.names().is_empty());
        // Events wait for COMMIT; a rolled-back savepoint drops its own.
        thorn::diesel::asynchronous::transaction(t, &mut conn, async |conn| {
            insert(t, conn, "kept").await?;
            let inner = thorn::diesel::asynchronous::transaction(t, conn, async |conn| {
                insert(t, conn, "savepoint").await?;
                Err::<(), _>(thorn::diesel::Error::from(
                    diesel::result::Error::RollbackTransaction,
                ))
            })
            .await;
            assert!(inner.is_err());
            insert(t, conn, "after").await?;
            assert!(recorder.names().is_empty(), "nothing before COMMIT");
            Ok::<_, thorn::diesel::Error>(())
        })
        .await
        .unwrap();
        assert_eq!(recorder.names(), ["article.created", "article.created"]);
        assert_eq!(titles(&pool).await, ["kept", "after"]);
    });
}

#[test]
fn writes_in_a_transaction_thorn_does_not_manage_are_refused() {
    let Some((_schema, _sync, pool)) = open_schema() else {
        return;
    };
    let (thorn, recorder) = recorded();
    runtime().block_on(async {
        use diesel_async::AsyncConnection;
        let mut conn = pool.get().await.unwrap();
        let t = &thorn;
        let err = conn
            .transaction(async |conn| insert(t, conn, "unmanaged").await)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("transaction"), "{err}");
        assert!(recorder.names().is_empty());
        assert!(titles(&pool).await.is_empty(), "refused before the INSERT");
    });
}

#[test]
fn an_update_whose_target_matches_several_rows_is_refused_before_it_runs() {
    let Some((_schema, _sync, pool)) = open_schema() else {
        return;
    };
    let (thorn, recorder) = recorded();
    runtime().block_on(async {
        let mut conn = pool.get().await.unwrap();
        insert(&thorn, &mut conn, "a").await.unwrap();
        insert(&thorn, &mut conn, "b").await.unwrap();
        let err = thorn::diesel::update(fun_articles::table)
            .set(fun_articles::state.eq("PUBLISHED"))
            .returning(FunArticle::as_returning())
            .with_webhooks(&thorn)
            .get_result(&mut conn)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("more than one row"), "{err}");
        let states: Vec<String> = {
            use diesel_async::RunQueryDsl;
            fun_articles::table
                .select(fun_articles::state)
                .load(&mut conn)
                .await
                .unwrap()
        };
        assert_eq!(states, ["DRAFT", "DRAFT"], "nothing was updated");
        assert_eq!(recorder.names(), ["article.created", "article.created"]);
    });
}

#[test]
fn writes_run_in_spawned_tasks_and_links_made_by_own_code_send_once() {
    let Some((_schema, _sync, pool)) = open_schema() else {
        return;
    };
    let (thorn, recorder) = recorded();
    runtime().block_on(async {
        // As an axum handler runs: on a spawned task (the futures are Send).
        let task = tokio::spawn({
            let (thorn, pool) = (thorn.clone(), pool.clone());
            async move {
                let mut conn = pool.get().await.unwrap();
                let article = insert(&thorn, &mut conn, "spawned").await.unwrap();
                let tags = thorn::diesel::asynchronous::m2m_changed(
                    &thorn,
                    &mut conn,
                    &article,
                    FunArticle::TAGS.added(),
                    async |conn| {
                        use diesel_async::RunQueryDsl;
                        let mut linked = Vec::new();
                        for tag in [3, 4] {
                            linked.push(
                                diesel::insert_into(fun_article_tags::table)
                                    .values((
                                        fun_article_tags::article_id.eq(article.id),
                                        fun_article_tags::tag_id.eq(tag),
                                    ))
                                    .returning(fun_article_tags::tag_id)
                                    .get_result::<i32>(conn)
                                    .await?,
                            );
                        }
                        Ok(linked)
                    },
                )
                .await
                .unwrap();
                assert_eq!(tags, [3, 4]);
            }
        });
        task.await.unwrap();
    });
    let recorded = recorder.0.lock().unwrap().clone();
    let names: Vec<&str> = recorded.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(names, ["article.created", "article.tagged"]);
    assert_eq!(
        recorded[1].2.as_ref().unwrap()["related"],
        serde_json::json!([3, 4])
    );
}
