//! Thorn's SQL conformance suite (`thorn_core::integration::sql::conformance`) through
//! each ORM on each database: every store and outbox operation behaves the
//! same through Diesel and SeaORM, on SQLite and PostgreSQL (when
//! `THORN_TEST_DATABASE_URL` is set).

use thorn::diesel::migrate;
use thorn::diesel::sql::DieselDb;
use thorn_core::integration::sql::conformance;

use crate::db::{pg_pool, sqlite_pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_on_sqlite() {
    let (_dir, pool) = sqlite_pool();
    migrate(&mut *pool.get().unwrap()).unwrap();
    conformance::run(DieselDb::new(pool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_on_postgres() {
    let Some((_schema, pool)) = pg_pool() else {
        return;
    };
    migrate(&mut *pool.get().unwrap()).unwrap();
    conformance::run(DieselDb::new(pool)).await;
}

#[cfg(feature = "seaorm")]
mod seaorm {
    use sea_orm::{ConnectionTrait, Database};
    use thorn::seaorm::sql::SeaOrmDb;
    use thorn_core::integration::sql::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seaorm_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("c.sqlite3").display()
        );
        let db = Database::connect(&url).await.unwrap();
        db.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
            .await
            .unwrap();
        thorn::seaorm::migrate(&db).await.unwrap();
        conformance::run(SeaOrmDb::from(db)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seaorm_on_postgres() {
        let Some((schema, _pool)) = crate::db::pg_pool() else {
            return;
        };
        let db = Database::connect(&schema.url()).await.unwrap();
        thorn::seaorm::migrate(&db).await.unwrap();
        conformance::run(SeaOrmDb::from(db)).await;
    }
}

/// The columns of `table` in the migrated database, sorted.
fn migrated_columns(conn: &mut diesel::SqliteConnection, table: &str) -> Vec<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let mut names: Vec<String> =
        diesel::sql_query(format!("SELECT name FROM pragma_table_info('{table}')"))
            .load::<Name>(conn)
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
    names.sort();
    names
}

/// The columns a Diesel `SELECT` of `query` names, sorted.
fn selected_columns<Q>(query: Q) -> Vec<String>
where
    Q: diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>,
{
    let sql = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&query).to_string();
    let list = sql
        .trim_start_matches("SELECT ")
        .split(" FROM ")
        .next()
        .unwrap();
    let mut names: Vec<String> = list
        .split(", ")
        .map(|c| c.rsplit('.').next().unwrap().trim_matches('`').to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_read_models_match_the_migrations() {
    use diesel::prelude::*;
    use thorn::diesel::outbox::{thorn_attempts, thorn_deliveries, thorn_events};
    use thorn::diesel::store::thorn_subscribers;
    let (_dir, pool) = sqlite_pool();
    let mut conn = pool.get().unwrap();
    migrate(&mut *conn).unwrap();
    let diesel = [
        (
            "thorn_subscribers",
            selected_columns(thorn_subscribers::table.select(thorn_subscribers::all_columns)),
        ),
        (
            "thorn_events",
            selected_columns(thorn_events::table.select(thorn_events::all_columns)),
        ),
        (
            "thorn_deliveries",
            selected_columns(thorn_deliveries::table.select(thorn_deliveries::all_columns)),
        ),
        (
            "thorn_attempts",
            selected_columns(thorn_attempts::table.select(thorn_attempts::all_columns)),
        ),
    ];
    for (table, columns) in diesel {
        assert_eq!(
            columns,
            migrated_columns(&mut conn, table),
            "Diesel's table! for {table}"
        );
    }
    #[cfg(feature = "seaorm")]
    {
        use sea_orm::{Iden, Iterable};
        use thorn::seaorm::entity::{attempt, delivery, event, subscriber};
        fn names<C: Iterable + Iden>() -> Vec<String> {
            let mut n: Vec<String> = C::iter().map(|c| c.to_string()).collect();
            n.sort();
            n
        }
        for (table, columns) in [
            ("thorn_subscribers", names::<subscriber::Column>()),
            ("thorn_events", names::<event::Column>()),
            ("thorn_deliveries", names::<delivery::Column>()),
            ("thorn_attempts", names::<attempt::Column>()),
        ] {
            assert_eq!(
                columns,
                migrated_columns(&mut conn, table),
                "SeaORM's entity for {table}"
            );
        }
    }
}
