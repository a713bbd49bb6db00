//! Thorn's tables, created and upgraded in the application's database.
//!
//! ```
//! use diesel::{Connection, SqliteConnection};
//!
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! thorn::diesel::migrate(&mut conn)?; // idempotent: run it at start-up
//! thorn::diesel::migrate(&mut conn)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use diesel::Connection;
use diesel::connection::BoxableConnection;
use diesel::migration::{
    Migration, MigrationMetadata, MigrationName, MigrationSource, MigrationVersion,
    Result as MigrationResult,
};
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::result::QueryResult;

use thorn_core::integration::schema::{MIGRATIONS as STEPS, MIGRATIONS_TABLE};

diesel::table! {
    /// Which of Thorn's migrations ran.
    thorn_schema_migrations (version) {
        /// Migration number.
        version -> BigInt,
    }
}

/// The newest migration this version of Thorn knows.
pub const LATEST: i64 = thorn_core::integration::schema::LATEST;

macro_rules! migrate_for {
    ($conn:ty, $backend:ty) => {
        impl Migrate for $conn {
            fn thorn_migrate(&mut self) -> QueryResult<Vec<i64>> {
                let mut applied = Vec::new();
                for step in STEPS {
                    if self.apply(step)? {
                        applied.push(step.0);
                    }
                }
                Ok(applied)
            }
        }

        impl Migration<$backend> for Step {
            fn run(&self, conn: &mut dyn BoxableConnection<$backend>) -> MigrationResult<()> {
                let conn = conn.as_any_mut();
                let applied = if let Some(conn) = conn.downcast_mut::<$conn>() {
                    conn.apply(self.0)
                } else if let Some(conn) =
                    conn.downcast_mut::<PooledConnection<ConnectionManager<$conn>>>()
                {
                    (**conn).apply(self.0)
                } else {
                    return Err(concat!(
                        "Thorn's Diesel migrations run on a ",
                        stringify!($conn),
                        " or an r2d2-pooled one",
                    )
                    .into());
                };
                applied.map(drop).map_err(Into::into)
            }

            fn revert(&self, _conn: &mut dyn BoxableConnection<$backend>) -> MigrationResult<()> {
                Err(REVERT.into())
            }

            fn metadata(&self) -> &dyn MigrationMetadata {
                self
            }

            fn name(&self) -> &dyn MigrationName {
                self
            }
        }

        impl MigrationSource<$backend> for Migrations {
            fn migrations(&self) -> MigrationResult<Vec<Box<dyn Migration<$backend>>>> {
                Ok(STEPS
                    .iter()
                    .map(|step| Box::new(Step(step)) as Box<dyn Migration<$backend>>)
                    .collect())
            }
        }
    };
}

/// Runs one of Thorn's migrations unless `thorn_schema_migrations` says
/// it ran (by [`migrate`] or as a Diesel migration: both runners record
/// it there, so either can follow the other); true when it ran now.
trait Apply {
    fn apply(&mut self, step: &Versioned) -> QueryResult<bool>;
}

macro_rules! apply_for {
    ($conn:ty, $postgres:expr) => {
        impl Apply for $conn {
            fn apply(&mut self, step: &Versioned) -> QueryResult<bool> {
                use diesel::connection::SimpleConnection;
                use diesel::prelude::*;
                let (version, sql, pg_sql) = *step;
                self.batch_execute(MIGRATIONS_TABLE)?;
                self.transaction::<_, diesel::result::Error, _>(|conn| {
                    let done: i64 = thorn_schema_migrations::table
                        .filter(thorn_schema_migrations::version.eq(version))
                        .count()
                        .get_result(conn)?;
                    if done > 0 {
                        return Ok(false);
                    }
                    if !sql.is_empty() {
                        conn.batch_execute(sql)?;
                    }
                    if $postgres && !pg_sql.is_empty() {
                        conn.batch_execute(pg_sql)?;
                    }
                    diesel::insert_into(thorn_schema_migrations::table)
                        .values(thorn_schema_migrations::version.eq(version))
                        .execute(conn)?;
                    Ok(true)
                })
            }
        }
    };
}

type Versioned = (i64, &'static str, &'static str);

const REVERT: &str = "Thorn's migrations have no down step: drop the thorn_* tables and \
                      thorn_schema_migrations by hand to remove them";

/// Thorn's migrations as a Diesel migration source, for applications that
/// run their migrations with `diesel_migrations` — next to their own
/// embedded ones, on SQLite and PostgreSQL connections (r2d2-pooled ones
/// included):
///
/// ```ignore
/// use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
///
/// const APP: EmbeddedMigrations = embed_migrations!();
///
/// conn.run_pending_migrations(APP)?;
/// conn.run_pending_migrations(thorn::diesel::MIGRATIONS)?;
/// ```
///
/// Each runs once, recorded in Diesel's `__diesel_schema_migrations`
/// (versions `thorn_0001`, `thorn_0002`, ...) and in Thorn's
/// `thorn_schema_migrations`, which [`migrate`] and `thorn migrate` read:
/// a database migrated one way is up to date the other way, and a step
/// already applied is not applied again. They cannot be reverted (Diesel's
/// `revert_last_migration` on one is an error).
pub const MIGRATIONS: Migrations = Migrations;

/// The type of [`MIGRATIONS`].
#[derive(Debug, Clone, Copy)]
pub struct Migrations;

/// One of Thorn's migrations, as Diesel runs it.
#[derive(Debug)]
struct Step(&'static Versioned);

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thorn_{:04}", self.0.0)
    }
}

impl MigrationName for Step {
    fn version(&self) -> MigrationVersion<'_> {
        MigrationVersion::from(self.to_string())
    }
}

impl MigrationMetadata for Step {}

/// Connections Thorn can migrate: `SqliteConnection` and `PgConnection`.
pub trait Migrate: Connection {
    /// Runs the missing migrations; returns the versions it applied.
    fn thorn_migrate(&mut self) -> QueryResult<Vec<i64>>;
}

#[cfg(feature = "sqlite")]
apply_for!(diesel::SqliteConnection, false);
#[cfg(feature = "sqlite")]
migrate_for!(diesel::SqliteConnection, diesel::sqlite::Sqlite);
#[cfg(feature = "postgres")]
apply_for!(diesel::PgConnection, true);
#[cfg(feature = "postgres")]
migrate_for!(diesel::PgConnection, diesel::pg::Pg);

/// Creates or upgrades Thorn's tables; safe to run at every start.
/// Returns the migration versions applied now (empty when up to date).
pub fn migrate<C: Migrate>(conn: &mut C) -> QueryResult<Vec<i64>> {
    conn.thorn_migrate()
}
