//! Thorn's tables as sea-orm-migration migrations, run by an
//! application's `Migrator` next to its own, on SQLite and PostgreSQL:
//! each step once, whichever runner applied it first.

use sea_orm::{DatabaseConnection, EntityTrait};
use sea_orm_migration::prelude::*;
use sea_orm_migration::seaql_migrations;

/// The application's own migration.
struct CreateArticles;

impl MigrationName for CreateArticles {
    fn name(&self) -> &str {
        "m20260101_000001_create_articles"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateArticles {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
            )
            .await
            .map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE articles")
            .await
            .map(drop)
    }
}

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = thorn::seaorm::migration::migrations();
        migrations.push(Box::new(CreateArticles));
        migrations
    }
}

async fn applied(db: &DatabaseConnection) -> Vec<String> {
    let mut names: Vec<String> = seaql_migrations::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.version)
        .collect();
    names.sort();
    names
}

/// Thorn's tables are all there: a subscription can be stored and an
/// outbox relay started over them.
async fn thorn_tables_work(db: &DatabaseConnection) {
    use thorn::SubscriptionStore;
    let store = thorn::seaorm::SeaOrmStore::new(db.clone());
    store
        .insert(thorn::Subscriber::new("article.*", "http://127.0.0.1:9/").unwrap())
        .await
        .unwrap();
    for table in ["thorn_events", "thorn_deliveries", "thorn_attempts"] {
        db.execute_unprepared(&format!("SELECT COUNT(*) FROM {table}"))
            .await
            .unwrap();
    }
}

async fn nothing(_db: &DatabaseConnection, _postgres: bool) {}

crate::seaorm_funtests::on_both!(
    thorn_migrations_run_beside_the_applications_own,
    nothing,
    |rt, db, _pg| {
        rt.block_on(async {
            Migrator::up(&db, None).await.unwrap();
            let names = applied(&db).await;
            let mut expected: Vec<String> = (1..=thorn_core::integration::schema::LATEST)
                .map(|v| format!("thorn_{v:04}"))
                .collect();
            expected.push("m20260101_000001_create_articles".into());
            expected.sort();
            assert_eq!(names, expected);
            thorn_tables_work(&db).await;
            // Thorn's own runner agrees: nothing left to apply.
            assert!(thorn::seaorm::migrate(&db).await.unwrap().is_empty());
            assert!(
                Migrator::get_pending_migrations(&db)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // The application's own step goes down; Thorn's have none,
            // and say how to remove the tables.
            Migrator::down(&db, Some(1)).await.unwrap();
            let err = Migrator::down(&db, Some(1)).await.unwrap_err();
            assert!(err.to_string().contains("no down step"), "{err}");
            assert!(err.to_string().contains("thorn_"), "names the step: {err}");
            thorn_tables_work(&db).await;
        });
    }
);

crate::seaorm_funtests::on_both!(
    a_database_migrated_by_thorn_is_up_to_date_for_the_migrator,
    nothing,
    |rt, db, _pg| {
        rt.block_on(async {
            let all: Vec<i64> = (1..=thorn_core::integration::schema::LATEST).collect();
            assert_eq!(thorn::seaorm::migrate(&db).await.unwrap(), all);
            // Recorded as SeaORM migrations, none applied twice (an
            // `ALTER TABLE ... ADD COLUMN` run again would fail).
            Migrator::up(&db, None).await.unwrap();
            assert_eq!(applied(&db).await.len(), all.len() + 1);
            thorn_tables_work(&db).await;
        });
    }
);
