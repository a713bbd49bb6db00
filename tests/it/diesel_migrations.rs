//! Thorn's tables as a `diesel_migrations` source, run next to an
//! application's own migrations, on SQLite and PostgreSQL: each step once,
//! whichever runner applied it first.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use thorn::diesel::{DieselOutbox, MIGRATIONS};

/// The application's own migrations: one directory, as `diesel migration
/// generate` makes it.
fn app_migrations() -> (tempfile::TempDir, FileBasedMigrations) {
    let dir = tempfile::tempdir().unwrap();
    let step = dir.path().join("2026-01-01-000000_create_articles");
    std::fs::create_dir(&step).unwrap();
    std::fs::write(
        step.join("up.sql"),
        "CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
    )
    .unwrap();
    std::fs::write(step.join("down.sql"), "DROP TABLE articles;").unwrap();
    let migrations = FileBasedMigrations::from_path(dir.path()).unwrap();
    (dir, migrations)
}

fn versions(applied: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    applied.iter().map(ToString::to_string).collect()
}

macro_rules! migrations_suite {
    ($module:ident, $conn:ty, $backend:ty, $pool:expr) => {
        mod $module {
            use super::*;

            fn pool() -> Option<(Box<dyn std::any::Any>, Pool<ConnectionManager<$conn>>)> {
                let (guard, pool) = $pool?;
                Some((Box::new(guard), pool))
            }

            #[test]
            fn thorn_migrations_run_beside_the_applications_own() {
                let Some((_guard, pool)) = pool() else {
                    return;
                };
                let mut conn = pool.get().unwrap();
                let (_dir, app) = app_migrations();
                let applied = conn.run_pending_migrations(app).unwrap();
                assert_eq!(versions(applied), ["20260101000000"]);
                let applied = conn.run_pending_migrations(MIGRATIONS).unwrap();
                let all = MigrationSource::<$backend>::migrations(&MIGRATIONS).unwrap();
                assert_eq!(
                    versions(applied),
                    [
                        "thorn_0001",
                        "thorn_0002",
                        "thorn_0003",
                        "thorn_0004",
                        "thorn_0005",
                        "thorn_0006"
                    ]
                );
                assert_eq!(all.len() as i64, thorn::diesel::migrate::LATEST);
                // Thorn's tables are there, and its own runner agrees.
                DieselOutbox::new(pool.clone()).check_schema().unwrap();
                assert!(thorn::diesel::migrate(&mut *conn).unwrap().is_empty());
                assert!(conn.run_pending_migrations(MIGRATIONS).unwrap().is_empty());
                conn.batch_execute("INSERT INTO articles (id, title) VALUES (1, 'a')")
                    .unwrap();
                // No down step: reverting one is an error naming what to do.
                let err = conn.revert_last_migration(MIGRATIONS).unwrap_err();
                assert!(err.to_string().contains("no down step"), "{err}");
                DieselOutbox::new(pool.clone()).check_schema().unwrap();
            }

            #[test]
            fn a_database_migrated_by_thorn_is_up_to_date_for_diesel() {
                let Some((_guard, pool)) = pool() else {
                    return;
                };
                let mut conn = pool.get().unwrap();
                assert_eq!(
                    thorn::diesel::migrate(&mut *conn).unwrap(),
                    (1..=thorn::diesel::migrate::LATEST).collect::<Vec<_>>()
                );
                // Recorded as Diesel migrations, none applied twice (an
                // `ALTER TABLE ... ADD COLUMN` run again would fail).
                let applied = conn.run_pending_migrations(MIGRATIONS).unwrap();
                assert_eq!(applied.len() as i64, thorn::diesel::migrate::LATEST);
                assert!(conn.run_pending_migrations(MIGRATIONS).unwrap().is_empty());
                DieselOutbox::new(pool.clone()).check_schema().unwrap();
                assert!(conn.ping().is_ok());
            }
        }
    };
}

migrations_suite!(
    sqlite,
    diesel::SqliteConnection,
    diesel::sqlite::Sqlite,
    Some(crate::db::sqlite_pool())
);
migrations_suite!(
    postgres,
    diesel::PgConnection,
    diesel::pg::Pg,
    crate::db::pg_pool()
);
