//! Thorn's tables as [`sea-orm-migration`](sea_orm_migration) migrations
//! (feature `migration`; `seaorm-migration` on the `thorn` crate), for
//! applications that run their schema with a `Migrator` — next to their
//! own, with `sea-orm-cli migrate up` or `Migrator::up`:
//!
//! ```
//! use sea_orm_migration::prelude::*;
//!
//! pub struct Migrator;
//!
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         let mut migrations = thorn::seaorm::migration::migrations();
//!         // migrations.push(Box::new(m20260101_000001_create_articles::Migration));
//!         migrations
//!     }
//! }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! # let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! Migrator::up(&db, None).await?;
//! # use sea_orm::ConnectionTrait;
//! # db.execute_unprepared("SELECT uuid FROM thorn_subscribers").await?;
//! # Ok::<(), DbErr>(())
//! # }).unwrap();
//! ```
//!
//! Each step is named `thorn_0001`, `thorn_0002`, ... in `seaql_migrations`
//! and runs in a transaction on every database. It is also recorded in
//! Thorn's `thorn_schema_migrations`, which [`migrate`](crate::migrate),
//! `thorn migrate` and Diesel's runner read: a step one of them applied
//! is skipped here, and the other way round, so an application can move
//! from one runner to another. There is no down step: `Migrator::down`
//! over one of Thorn's is an error that says how to remove the tables.

use sea_orm::DbErr;
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};
use thorn_core::integration::schema::{MIGRATIONS, MIGRATIONS_TABLE};

use sea_orm::ConnectionTrait;

/// Thorn's migrations, oldest first, to put in a `MigratorTrait`'s
/// `migrations()` (before or after the application's own: they touch
/// only the `thorn_*` tables).
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    MIGRATIONS
        .iter()
        .map(|step| {
            Box::new(Step {
                name: format!("thorn_{:04}", step.0),
                step,
            }) as Box<dyn MigrationTrait>
        })
        .collect()
}

/// One of Thorn's migration steps.
struct Step {
    name: String,
    step: &'static (i64, &'static str, &'static str),
}

impl MigrationName for Step {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Step {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        conn.execute_unprepared(MIGRATIONS_TABLE).await?;
        crate::apply(conn, self.step).await.map(drop)
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(format!(
            "{}: Thorn's migrations have no down step: drop the thorn_* tables and \
             thorn_schema_migrations by hand to remove them",
            self.name
        )))
    }

    fn use_transaction(&self) -> Option<bool> {
        // The check in thorn_schema_migrations, the DDL and its record
        // commit together, on SQLite too.
        Some(true)
    }
}
