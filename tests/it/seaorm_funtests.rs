//! The functional suite (see `funtests`) through thorn-seaorm: SQLite
//! always, PostgreSQL when `THORN_TEST_DATABASE_URL` is set; each under the
//! in-process dispatcher and under the transactional outbox with a relay.
//! Events fire from the entity's `ActiveModelBehavior` hooks.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Set};
use thorn::RelayOptions;
use thorn::seaorm::{Relay, SeaOrmStore, migrate};
use thorn::{Config, SubscriptionStore, Thorn};

use crate::funtests::{Blog, base_config};

pub(crate) mod fun_article {
    use sea_orm::entity::prelude::*;
    use serde::Serialize;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, thorn::WebhookModel, Serialize)]
    #[sea_orm(table_name = "fun_articles")]
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
    pub(crate) struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub state: String,
        pub author_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    // SeaORM's many-to-many: articles <-> tags through fun_article_tags.
    impl Related<super::fun_tag::Entity> for Entity {
        fn to() -> RelationDef {
            super::fun_article_tag::Relation::Tag.def()
        }
        fn via() -> Option<RelationDef> {
            Some(super::fun_article_tag::Relation::Article.def().rev())
        }
    }

    thorn::seaorm::behavior!(ActiveModel);
}

pub(crate) mod fun_tag {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "fun_tags")]
    pub(crate) struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod fun_article_tag {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "fun_article_tags")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub article_id: i32,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tag_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {
        #[sea_orm(
            belongs_to = "super::fun_article::Entity",
            from = "Column::ArticleId",
            to = "super::fun_article::Column::Id"
        )]
        Article,
        #[sea_orm(
            belongs_to = "super::fun_tag::Entity",
            from = "Column::TagId",
            to = "super::fun_tag::Column::Id"
        )]
        Tag,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// A multi-threaded runtime for a synchronous test to drive SeaORM with.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A SeaORM database for one test: a temporary SQLite file, or a fresh
/// PostgreSQL schema (`None`, said skipped, without
/// `THORN_TEST_DATABASE_URL`). The guard drops it.
pub(crate) fn database(
    rt: &tokio::runtime::Runtime,
    postgres: bool,
) -> Option<(Box<dyn Any>, DatabaseConnection)> {
    let (guard, url): (Box<dyn Any>, String) = if postgres {
        let (schema, _pool) = crate::db::pg_pool()?;
        let url = schema.url();
        (Box::new(schema), url)
    } else {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("blog.sqlite3").display()
        );
        (Box::new(dir), url)
    };
    let db = rt.block_on(async {
        let db = Database::connect(&url).await.unwrap();
        if !postgres {
            db.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
                .await
                .unwrap();
        }
        db
    });
    Some((guard, db))
}

/// A test module `$name` whose `sqlite` and `postgres` tests run `$body`
/// against a fresh database of each kind (PostgreSQL when configured),
/// after `$setup(&db, postgres)` created its tables.
macro_rules! on_both {
    ($name:ident, $setup:path, |$rt:ident, $db:ident, $postgres:ident| $body:block) => {
        mod $name {
            use super::*;

            fn run($postgres: bool) {
                let $rt = $crate::seaorm_funtests::runtime();
                let Some((_guard, $db)) = $crate::seaorm_funtests::database(&$rt, $postgres) else {
                    return;
                };
                $rt.block_on($setup(&$db, $postgres));
                $body
            }

            #[test]
            fn sqlite() {
                run(false);
            }

            #[test]
            fn postgres() {
                run(true);
            }
        }
    };
}
pub(crate) use on_both;

/// Creates the blog's tables and Thorn's.
pub(crate) async fn create_tables(db: &DatabaseConnection, postgres: bool) {
    migrate(db).await.unwrap();
    let id = if postgres {
        "SERIAL PRIMARY KEY"
    } else {
        "INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    db.execute_unprepared(&format!(
        "CREATE TABLE fun_articles (id {id}, title TEXT NOT NULL, state TEXT NOT NULL, author_id INTEGER NOT NULL);
         CREATE TABLE fun_article_tags (article_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, PRIMARY KEY (article_id, tag_id));"
    ))
    .await
    .unwrap();
}

pub(crate) struct SeaBlog<const POSTGRES: bool> {
    // Dropped first: the relay finishes before the database goes away.
    relay: Option<Relay>,
    thorn: Thorn,
    store: Arc<SeaOrmStore>,
    db: DatabaseConnection,
    rt: tokio::runtime::Runtime,
    _guard: Box<dyn Any>,
}

impl<const POSTGRES: bool> Drop for SeaBlog<POSTGRES> {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            self.rt.block_on(relay.stop()).unwrap();
        }
    }
}

impl<const POSTGRES: bool> SeaBlog<POSTGRES> {
    /// Runs `f` on the blog's runtime with its Thorn in scope (the hooks
    /// send with it).
    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt
            .block_on(thorn::seaorm::scope(self.thorn.clone(), f))
    }

    fn article(&self, id: i32) -> fun_article::Model {
        self.run(fun_article::Entity::find_by_id(id).one(&self.db))
            .unwrap()
            .expect("article exists")
    }
}

fn outbox() -> Config {
    Config {
        outbox: true,
        ..base_config()
    }
}

impl<const POSTGRES: bool> Blog for SeaBlog<POSTGRES> {
    fn open(config: Config) -> Option<Self> {
        let rt = runtime();
        let (guard, db) = database(&rt, POSTGRES)?;
        rt.block_on(create_tables(&db, POSTGRES));
        let store = Arc::new(SeaOrmStore::new(db.clone()));
        let outbox = config.outbox;
        let thorn = Thorn::builder(config)
            .shared_store(store.clone())
            .build()
            .unwrap();
        let relay = outbox.then(|| {
            rt.block_on(Relay::start_with(
                &thorn,
                db.clone(),
                RelayOptions {
                    poll: Duration::from_millis(50),
                    ..RelayOptions::default()
                },
            ))
            .unwrap()
        });
        Some(SeaBlog {
            relay,
            thorn,
            store,
            db,
            rt,
            _guard: guard,
        })
    }

    fn store(&self) -> Arc<dyn SubscriptionStore> {
        self.store.clone()
    }

    fn create(&mut self, title: &str, author: i32) -> i32 {
        let (title, db) = (title.to_owned(), self.db.clone());
        let article = self
            .run(thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    fun_article::ActiveModel {
                        title: Set(title),
                        state: Set("DRAFT".to_owned()),
                        author_id: Set(author),
                        ..Default::default()
                    }
                    .insert(txn)
                    .await
                })
            }))
            .unwrap();
        article.id
    }

    fn retitle(&mut self, id: i32, title: &str) {
        let mut article: fun_article::ActiveModel = self.article(id).into();
        article.title = Set(title.to_owned());
        let db = self.db.clone();
        self.run(thorn::seaorm::transaction(&db, |txn| {
            Box::pin(async move { article.update(txn).await })
        }))
        .unwrap();
    }

    fn publish(&mut self, id: i32) {
        // begin()-style: the old row is loaded (and locked) in the transaction.
        let db = self.db.clone();
        self.run(async move {
            let txn = thorn::seaorm::begin(&db).await?;
            let mut article: fun_article::ActiveModel = fun_article::Entity::find_by_id(id)
                .one(&*txn)
                .await?
                .expect("article exists")
                .into();
            article.state = Set("PUBLISHED".to_owned());
            article.update(&*txn).await?;
            txn.commit().await
        })
        .unwrap();
    }

    fn remove(&mut self, id: i32) {
        // Only the key is set: the delete event still carries the full row.
        let article = fun_article::ActiveModel {
            id: Set(id),
            ..Default::default()
        };
        let db = self.db.clone();
        self.run(thorn::seaorm::transaction(&db, |txn| {
            Box::pin(async move { article.delete(txn).await })
        }))
        .unwrap();
    }

    fn tag(&mut self, id: i32, tags: &[i32]) {
        let (article, tags, n) = (self.article(id), fun_tags(tags), tags.len() as u64);
        let db = self.db.clone();
        let linked = self
            .run(thorn::seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    thorn::seaorm::link(txn, &article, fun_article::Model::TAGS, &tags).await
                })
            }))
            .unwrap();
        assert_eq!(linked, n, "each tag is linked once");
    }

    fn untag(&mut self, id: i32, tags: &[i32]) {
        let (article, tags) = (self.article(id), fun_tags(tags));
        let db = self.db.clone();
        self.run(thorn::seaorm::transaction(&db, |txn| {
            Box::pin(async move {
                thorn::seaorm::unlink(txn, &article, fun_article::Model::TAGS, &tags).await
            })
        }))
        .unwrap();
    }

    fn clear_tags(&mut self, id: i32) {
        let article = self.article(id);
        let db = self.db.clone();
        self.run(thorn::seaorm::transaction(&db, |txn| {
            Box::pin(async move {
                thorn::seaorm::clear(txn, &article, fun_article::Model::TAGS, fun_tag::Entity).await
            })
        }))
        .unwrap();
    }
}

/// Tag models with these ids (only their keys go into the junction).
fn fun_tags(ids: &[i32]) -> Vec<fun_tag::Model> {
    ids.iter()
        .map(|&id| fun_tag::Model {
            id,
            name: format!("tag {id}"),
        })
        .collect()
}

crate::funtests!(sqlite_in_process, SeaBlog<false>, base_config());
crate::funtests!(sqlite_outbox, SeaBlog<false>, outbox());
crate::funtests!(postgres_in_process, SeaBlog<true>, base_config());
crate::funtests!(postgres_outbox, SeaBlog<true>, outbox());
