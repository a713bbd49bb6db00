//! The functional suite (see `funtests`) through thorn-diesel: SQLite
//! always, PostgreSQL when `THORN_TEST_DATABASE_URL` is set; each under the
//! in-process dispatcher and under the transactional outbox with a relay.

use std::any::Any;
use std::sync::Arc;
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use serde::Serialize;
use thorn::RelayOptions;
use thorn::diesel::{DieselStore, Relay, migrate};
use thorn::{Config, SubscriptionStore, Thorn, WebhookModel};

use crate::funtests::{Blog, base_config};

diesel::table! {
    fun_articles (id) {
        id -> Integer,
        title -> Text,
        state -> Text,
        author_id -> Integer,
    }
}

diesel::table! {
    fun_article_tags (article_id, tag_id) {
        article_id -> Integer,
        tag_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, WebhookModel, Serialize)]
#[diesel(table_name = fun_articles)]
#[webhook_model(
    sender_field = author_id,
    reverse = "/article/{id}/",
    payload = Self::clone,
    on_create = "article.created",
    on_change = "article.changed",
    on_delete = "article.removed",
    on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
    on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)),
    on_untagged(name = "article.untagged", dispatches_on = m2m_remove(tags)),
    on_tags_cleared(name = "article.tags_cleared", dispatches_on = m2m_clear(tags)),
)]
pub(crate) struct FunArticle {
    pub(crate) id: i32,
    title: String,
    state: String,
    author_id: i32,
}

struct DieselBlog<C: diesel::r2d2::R2D2Connection + 'static> {
    // Dropped first: the relay finishes before the database goes away.
    _relay: Option<Relay>,
    thorn: Thorn,
    store: Arc<DieselStore<C>>,
    pool: Pool<ConnectionManager<C>>,
    _guard: Box<dyn Any>,
}

pub(crate) fn outbox() -> Config {
    Config {
        outbox: true,
        ..base_config()
    }
}

macro_rules! diesel_blog {
    ($conn:ty, $pool:expr, $serial:literal) => {
        impl Blog for DieselBlog<$conn> {
            fn open(config: Config) -> Option<Self> {
                let (guard, pool) = $pool?;
                let mut conn = pool.get().unwrap();
                migrate(&mut *conn).unwrap();
                diesel::sql_query(concat!(
                    "CREATE TABLE fun_articles (id ",
                    $serial,
                    ", title TEXT NOT NULL, state TEXT NOT NULL, author_id INTEGER NOT NULL)"
                ))
                .execute(&mut *conn)
                .unwrap();
                diesel::sql_query(
                    "CREATE TABLE fun_article_tags (article_id INTEGER NOT NULL, \
                     tag_id INTEGER NOT NULL, PRIMARY KEY (article_id, tag_id))",
                )
                .execute(&mut *conn)
                .unwrap();
                let store = Arc::new(DieselStore::new(pool.clone()));
                let outbox = config.outbox;
                let thorn = Thorn::builder(config)
                    .shared_store(store.clone())
                    .build()
                    .unwrap();
                let relay = outbox.then(|| {
                    Relay::start_with(
                        &thorn,
                        pool.clone(),
                        RelayOptions {
                            poll: std::time::Duration::from_millis(50),
                            ..RelayOptions::default()
                        },
                    )
                    .unwrap()
                });
                Some(DieselBlog {
                    _relay: relay,
                    thorn,
                    store,
                    pool,
                    _guard: Box::new(guard),
                })
            }

            fn store(&self) -> Arc<dyn SubscriptionStore> {
                self.store.clone()
            }

            fn create(&mut self, title: &str, author: i32) -> i32 {
                let a: FunArticle = diesel::insert_into(fun_articles::table)
                    .values((
                        fun_articles::title.eq(title),
                        fun_articles::state.eq("DRAFT"),
                        fun_articles::author_id.eq(author),
                    ))
                    .returning(FunArticle::as_returning())
                    .with_webhooks(&self.thorn)
                    .get_result(&mut *self.pool.get().unwrap())
                    .unwrap();
                a.id
            }

            fn retitle(&mut self, id: i32, title: &str) {
                let _: FunArticle = thorn::diesel::update(fun_articles::table.find(id))
                    .set(fun_articles::title.eq(title))
                    .returning(FunArticle::as_returning())
                    .with_webhooks(&self.thorn)
                    .get_result(&mut *self.pool.get().unwrap())
                    .unwrap();
            }

            fn publish(&mut self, id: i32) {
                let mut conn = self.pool.get().unwrap();
                // Publishing in a transaction, as an application would.
                thorn::diesel::transaction::<_, _, thorn::diesel::Error, _>(
                    &self.thorn,
                    &mut *conn,
                    |conn| {
                        thorn::diesel::update(fun_articles::table.find(id))
                            .set(fun_articles::state.eq("PUBLISHED"))
                            .returning(FunArticle::as_returning())
                            .with_webhooks(&self.thorn)
                            .get_result(conn)
                    },
                )
                .unwrap();
            }

            fn remove(&mut self, id: i32) {
                let _: FunArticle = diesel::delete(fun_articles::table.find(id))
                    .returning(FunArticle::as_returning())
                    .with_webhooks(&self.thorn)
                    .get_result(&mut *self.pool.get().unwrap())
                    .unwrap();
            }

            fn tag(&mut self, id: i32, tags: &[i32]) {
                let mut conn = self.pool.get().unwrap();
                let row: FunArticle = fun_articles::table.find(id).first(&mut *conn).unwrap();
                // One event for all links; one statement per link, as Diesel
                // cannot return rows from a batch insert on SQLite.
                let _: Vec<i32> = thorn::diesel::m2m_changed(
                    &self.thorn,
                    &mut *conn,
                    &row,
                    FunArticle::TAGS.added(),
                    |conn| {
                        tags.iter()
                            .map(|t| {
                                diesel::insert_into(fun_article_tags::table)
                                    .values((
                                        fun_article_tags::article_id.eq(id),
                                        fun_article_tags::tag_id.eq(*t),
                                    ))
                                    .returning(fun_article_tags::tag_id)
                                    .get_result(conn)
                            })
                            .collect()
                    },
                )
                .unwrap();
            }

            fn untag(&mut self, id: i32, tags: &[i32]) {
                let mut conn = self.pool.get().unwrap();
                let row: FunArticle = fun_articles::table.find(id).first(&mut *conn).unwrap();
                let _: Vec<i32> = diesel::delete(
                    fun_article_tags::table
                        .filter(fun_article_tags::article_id.eq(id))
                        .filter(fun_article_tags::tag_id.eq_any(tags)),
                )
                .returning(fun_article_tags::tag_id)
                .with_webhooks(&self.thorn)
                .unlinking(&row, FunArticle::TAGS)
                .get_results(&mut *conn)
                .unwrap();
            }

            fn clear_tags(&mut self, id: i32) {
                let mut conn = self.pool.get().unwrap();
                let row: FunArticle = fun_articles::table.find(id).first(&mut *conn).unwrap();
                let _: Vec<i32> = diesel::delete(
                    fun_article_tags::table.filter(fun_article_tags::article_id.eq(id)),
                )
                .returning(fun_article_tags::tag_id)
                .with_webhooks(&self.thorn)
                .clearing(&row, FunArticle::TAGS)
                .get_results(&mut *conn)
                .unwrap();
            }
        }
    };
}

diesel_blog!(
    diesel::SqliteConnection,
    Some(crate::db::sqlite_pool()),
    "INTEGER PRIMARY KEY AUTOINCREMENT"
);
diesel_blog!(
    diesel::PgConnection,
    crate::db::pg_pool(),
    "SERIAL PRIMARY KEY"
);

crate::funtests!(
    sqlite_in_process,
    DieselBlog<diesel::SqliteConnection>,
    base_config()
);
crate::funtests!(
    sqlite_outbox,
    DieselBlog<diesel::SqliteConnection>,
    outbox()
);
crate::funtests!(
    postgres_in_process,
    DieselBlog<diesel::PgConnection>,
    base_config()
);
crate::funtests!(postgres_outbox, DieselBlog<diesel::PgConnection>, outbox());
