//! Databases for tests: SQLite in a temporary directory, and PostgreSQL
//! (when `THORN_TEST_DATABASE_URL` is set) in a schema of its own per test,
//! dropped afterwards.

use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};

/// Each PostgreSQL test works in a schema of its own.
#[derive(Debug)]
struct SearchPath(String);

impl CustomizeConnection<diesel::PgConnection, diesel::r2d2::Error> for SearchPath {
    fn on_acquire(&self, conn: &mut diesel::PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&format!("SET search_path TO {}", self.0))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Drops the test's schema.
pub(crate) struct PgSchema {
    url: String,
    schema: String,
}

impl PgSchema {
    /// A connection URL whose sessions use the test's schema (for other
    /// processes, such as `thorn worker`).
    #[allow(dead_code)] // used with the `cli` feature
    pub(crate) fn url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.url, self.schema)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        use diesel::Connection;
        use diesel::connection::SimpleConnection;
        if let Ok(mut c) = diesel::PgConnection::establish(&self.url) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// A pool on a fresh schema, or `None` (after saying so) without
/// `THORN_TEST_DATABASE_URL` — unless `THORN_REQUIRE_POSTGRES` is set (as
/// `.ci/run` sets it): then a missing URL fails the test.
pub(crate) fn pg_pool() -> Option<(PgSchema, Pool<ConnectionManager<diesel::PgConnection>>)> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let Ok(url) = std::env::var("THORN_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("THORN_REQUIRE_POSTGRES").is_none(),
            "THORN_REQUIRE_POSTGRES is set but THORN_TEST_DATABASE_URL is not: \
             the PostgreSQL tests cannot run"
        );
        eprintln!("skipped: THORN_TEST_DATABASE_URL is not set, PostgreSQL part not run");
        return None;
    };
    let schema = format!("thorn_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin =
        diesel::PgConnection::establish(&url).expect("THORN_TEST_DATABASE_URL connects");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let guard = PgSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let pool = Pool::builder()
        .max_size(6)
        .connection_customizer(Box::new(SearchPath(schema)))
        .build(ConnectionManager::new(url))
        .unwrap();
    Some((guard, pool))
}

/// A pool on a new SQLite file in a temporary directory.
pub(crate) fn sqlite_pool() -> (
    tempfile::TempDir,
    Pool<ConnectionManager<diesel::SqliteConnection>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("app.sqlite3").to_str().unwrap().to_owned();
    let pool = Pool::builder()
        .max_size(6)
        .connection_customizer(Box::new(thorn::diesel::SqliteBusyTimeout::default()))
        .build(ConnectionManager::new(url))
        .unwrap();
    (dir, pool)
}

/// True for PostgreSQL connections (direct or pooled).
pub(crate) fn is_postgres<C>() -> bool {
    std::any::type_name::<C>().contains("PgConnection")
}
