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
use diesel::result::QueryResult;

use thorn_core::integration::schema::{MIGRATIONS, MIGRATIONS_TABLE};

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
    ($conn:ty, $postgres:expr) => {
        impl Migrate for $conn {
            fn thorn_migrate(&mut self) -> QueryResult<Vec<i64>> {
                use diesel::connection::SimpleConnection;
                use diesel::prelude::*;
                self.batch_execute(MIGRATIONS_TABLE)?;
                let mut applied = Vec::new();
                for (version, sql, pg_sql) in MIGRATIONS {
                    self.transaction::<_, diesel::result::Error, _>(|conn| {
                        let done: i64 = thorn_schema_migrations::table
                            .filter(thorn_schema_migrations::version.eq(version))
                            .count()
                            .get_result(conn)?;
                        if done == 0 {
                            conn.batch_execute(sql)?;
                            if $postgres && !pg_sql.is_empty() {
                                conn.batch_execute(pg_sql)?;
                            }
                            diesel::insert_into(thorn_schema_migrations::table)
                                .values(thorn_schema_migrations::version.eq(version))
                                .execute(conn)?;
                            applied.push(*version);
                        }
                        Ok(())
                    })?;
                }
                Ok(applied)
            }
        }
    };
}

/// Connections Thorn can migrate: `SqliteConnection` and `PgConnection`.
pub trait Migrate: Connection {
    /// Runs the missing migrations; returns the versions it applied.
    fn thorn_migrate(&mut self) -> QueryResult<Vec<i64>>;
}

#[cfg(feature = "sqlite")]
migrate_for!(diesel::SqliteConnection, false);
#[cfg(feature = "postgres")]
migrate_for!(diesel::PgConnection, true);

/// Creates or upgrades Thorn's tables; safe to run at every start.
/// Returns the migration versions applied now (empty when up to date).
pub fn migrate<C: Migrate>(conn: &mut C) -> QueryResult<Vec<i64>> {
    conn.thorn_migrate()
}
