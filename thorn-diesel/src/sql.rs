//! How Thorn's SQL (in `thorn_core::sql`) runs on Diesel: a
//! [`Connection`] over a Diesel connection and a [`Database`] over an r2d2
//! pool. Statements are prepared once per connection (Diesel's statement
//! cache) with typed binds; rows come back as dynamically typed values.

use diesel::connection::{LoadConnection, SimpleConnection, TransactionManager};
use diesel::deserialize::{self, FromSql, QueryableByName};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel::row::{Field, NamedRow};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Untyped};
use diesel::{QueryResult, RunQueryDsl};
use thorn_core::Result;
use thorn_core::integration::sql::{
    Connection, Database, Dialect, Kind, Listener, OnNotice, Param, Row, Value, Work, ready,
};
use thorn_core::subscriber::BoxFuture;

use crate::store::store_err;

/// A Diesel connection as Thorn's SQL runs on it (its statements complete
/// when first polled).
pub struct DieselConn<'c, C>(pub &'c mut C);

/// One result row, each value decoded by the type the database reports.
pub(crate) struct DynRow(pub(crate) Vec<Value>);

/// A statement of Thorn's SQL with its parameters, as Diesel runs it:
/// prepared once per connection and text (Diesel's statement cache) when
/// `cached`, its placeholders (`$N` on PostgreSQL, `?N` on SQLite) bound in order of
/// appearance, a parameter used twice bound twice.
pub(crate) struct Prepared<'q> {
    pub(crate) sql: &'q str,
    pub(crate) params: Vec<Param>,
    pub(crate) cached: bool,
}

/// Where the next placeholder in `sql` starts and ends, and its number.
fn next_placeholder(sql: &str) -> Option<(usize, usize, usize)> {
    let bytes = sql.as_bytes();
    let mut at = 0;
    while let Some(found) = sql[at..].find(['$', '?']) {
        let start = at + found;
        let digits = bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0
            && let Ok(n) = sql[start + 1..start + 1 + digits].parse::<usize>()
        {
            return Some((start, start + 1 + digits, n));
        }
        at = start + 1;
    }
    None
}

impl<DB> QueryFragment<DB> for Prepared<'_>
where
    DB: diesel::backend::Backend
        + diesel::sql_types::HasSqlType<Nullable<Text>>
        + diesel::sql_types::HasSqlType<Nullable<BigInt>>
        + diesel::sql_types::HasSqlType<Nullable<Integer>>
        + diesel::sql_types::HasSqlType<Nullable<Bool>>,
    Option<String>: diesel::serialize::ToSql<Nullable<Text>, DB>,
    Option<i64>: diesel::serialize::ToSql<Nullable<BigInt>, DB>,
    Option<i32>: diesel::serialize::ToSql<Nullable<Integer>, DB>,
    Option<bool>: diesel::serialize::ToSql<Nullable<Bool>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.cached {
            out.unsafe_to_cache_prepared();
        }
        let mut rest = self.sql;
        while let Some((start, end, n)) = next_placeholder(rest) {
            out.push_sql(&rest[..start]);
            let param = n
                .checked_sub(1)
                .and_then(|i| self.params.get(i))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("placeholder {n} has no parameter").into(),
                    )
                })?;
            match param {
                Param::Text(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Param::BigInt(v) => out.push_bind_param::<Nullable<BigInt>, _>(v)?,
                Param::Int(v) => out.push_bind_param::<Nullable<Integer>, _>(v)?,
                Param::Bool(v) => out.push_bind_param::<Nullable<Bool>, _>(v)?,
            }
            rest = &rest[end..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl<C: diesel::Connection> RunQueryDsl<C> for Prepared<'_> {}

#[cfg(feature = "sqlite")]
impl QueryableByName<diesel::sqlite::Sqlite> for DynRow {
    fn build<'a>(row: &impl NamedRow<'a, diesel::sqlite::Sqlite>) -> deserialize::Result<Self> {
        use diesel::sqlite::{Sqlite, SqliteType};
        let mut values = Vec::with_capacity(row.field_count());
        for i in 0..row.field_count() {
            let field = diesel::row::Row::get(row, i).ok_or("a result column went missing")?;
            let value = match field.value() {
                None => Value::Null,
                Some(raw) => match raw.value_type() {
                    Some(SqliteType::Long | SqliteType::Integer | SqliteType::SmallInt) => {
                        Value::Int(<i64 as FromSql<BigInt, Sqlite>>::from_sql(raw)?)
                    }
                    _ => Value::Text(<String as FromSql<Text, Sqlite>>::from_sql(raw)?),
                },
            };
            values.push(value);
        }
        Ok(DynRow(values))
    }
}

#[cfg(any(feature = "postgres", feature = "async-postgres"))]
impl QueryableByName<diesel::pg::Pg> for DynRow {
    fn build<'a>(row: &impl NamedRow<'a, diesel::pg::Pg>) -> deserialize::Result<Self> {
        use diesel::pg::Pg;
        use diesel::sql_types::SmallInt;
        let mut values = Vec::with_capacity(row.field_count());
        for i in 0..row.field_count() {
            let field = diesel::row::Row::get(row, i).ok_or("a result column went missing")?;
            let value = match field.value() {
                None => Value::Null,
                // Type OIDs of pg_type.
                Some(raw) => match raw.get_oid().get() {
                    16 => Value::Bool(<bool as FromSql<Bool, Pg>>::from_sql(raw)?),
                    20 => Value::Int(<i64 as FromSql<BigInt, Pg>>::from_sql(raw)?),
                    21 => Value::Int(i64::from(<i16 as FromSql<SmallInt, Pg>>::from_sql(raw)?)),
                    23 => Value::Int(i64::from(<i32 as FromSql<Integer, Pg>>::from_sql(raw)?)),
                    _ => Value::Text(<String as FromSql<Text, Pg>>::from_sql(raw)?),
                },
            };
            values.push(value);
        }
        Ok(DynRow(values))
    }
}

fn done<T: Send + 'static>(result: QueryResult<T>) -> BoxFuture<'static, Result<T>> {
    Box::pin(std::future::ready(result.map_err(store_err)))
}

/// `result`, after marking `conn` broken when it lost the server: r2d2
/// then drops it instead of lending it out again, so a pool needs no
/// `test_on_check_out` round trip to recover from a restarted database.
fn checked<C: diesel::Connection, T>(conn: &mut C, result: QueryResult<T>) -> QueryResult<T> {
    use diesel::result::{DatabaseErrorKind, Error};
    if let Err(Error::DatabaseError(
        DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
        _,
    )) = &result
    {
        <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
            .set_in_error();
    }
    result
}

macro_rules! connection_for {
    ($conn:ty, $dialect:expr) => {
        impl Connection for DieselConn<'_, $conn> {
            fn dialect(&self) -> Dialect {
                $dialect
            }

            fn execute<'a>(
                &'a mut self,
                sql: &'a str,
                params: Vec<Param>,
            ) -> BoxFuture<'a, Result<u64>> {
                let result = Prepared {
                    sql,
                    params,
                    cached: true,
                }
                .execute(self.0);
                done(checked(self.0, result).map(|n| n as u64))
            }

            fn execute_once<'a>(
                &'a mut self,
                sql: &'a str,
                params: Vec<Param>,
            ) -> BoxFuture<'a, Result<u64>> {
                let once = Prepared {
                    sql,
                    params,
                    cached: false,
                };
                let result = once.execute(self.0);
                done(checked(self.0, result).map(|n| n as u64))
            }

            fn query<'a>(
                &'a mut self,
                sql: &'a str,
                params: Vec<Param>,
                _columns: &'a [Kind],
            ) -> BoxFuture<'a, Result<Vec<Row>>> {
                let result = Prepared {
                    sql,
                    params,
                    cached: true,
                }
                .load::<DynRow>(self.0);
                done(
                    checked(self.0, result)
                        .map(|rows| rows.into_iter().map(|r| Row(r.0)).collect()),
                )
            }

            fn batch<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>> {
                let result = self.0.batch_execute(sql);
                done(checked(self.0, result))
            }

            fn begin(&mut self) -> BoxFuture<'_, Result<()>> {
                let result =
                    <$conn as diesel::Connection>::TransactionManager::begin_transaction(self.0);
                done(checked(self.0, result))
            }

            fn commit(&mut self) -> BoxFuture<'_, Result<()>> {
                let result =
                    <$conn as diesel::Connection>::TransactionManager::commit_transaction(self.0);
                done(checked(self.0, result))
            }

            fn rollback(&mut self) -> BoxFuture<'_, Result<()>> {
                let result =
                    <$conn as diesel::Connection>::TransactionManager::rollback_transaction(self.0);
                done(checked(self.0, result))
            }
        }
    };
}

#[cfg(feature = "sqlite")]
connection_for!(diesel::SqliteConnection, Dialect::Sqlite);
#[cfg(feature = "postgres")]
connection_for!(diesel::PgConnection, Dialect::Postgres);

/// Diesel connections Thorn's SQL runs on: `SqliteConnection` and
/// `PgConnection` (feature `postgres`).
pub trait SqlConnection: R2D2Connection + LoadConnection + 'static {
    /// Which database this is.
    const DIALECT: Dialect;

    /// Runs `work` on this connection, on the calling thread.
    fn run_here<T>(&mut self, work: Work<T>) -> Result<T>;

    /// Begins the outermost transaction so that it can write after it
    /// read: `BEGIN IMMEDIATE` on SQLite, whose deferred transactions fail
    /// with "database is locked" when they write after another connection
    /// committed since their first read (a change event's old row is read
    /// before its `UPDATE`). `false` where a plain `BEGIN` does, and the
    /// caller begins the transaction itself.
    fn begin_immediate(&mut self) -> diesel::QueryResult<bool> {
        Ok(false)
    }

    /// Holds a `LISTEN channel` connection from `pool` ([`Database::listen`]);
    /// `None` where the database has no notifications (SQLite).
    fn listen(
        pool: &Pool<ConnectionManager<Self>>,
        channel: &'static str,
        notice: OnNotice,
    ) -> Option<Listener> {
        let _ = (pool, channel, notice);
        None
    }
}

macro_rules! sql_connection_for {
    ($conn:ty, $dialect:expr $(, $extra:item)*) => {
        impl SqlConnection for $conn {
            const DIALECT: Dialect = $dialect;

            fn run_here<T>(&mut self, work: Work<T>) -> Result<T> {
                ready(work(&mut DieselConn(self)))?
            }

            $($extra)*
        }
    };
}

#[cfg(feature = "sqlite")]
sql_connection_for!(
    diesel::SqliteConnection,
    Dialect::Sqlite,
    fn begin_immediate(&mut self) -> diesel::QueryResult<bool> {
        diesel::connection::AnsiTransactionManager::begin_transaction_sql(self, "BEGIN IMMEDIATE")
            .map(|()| true)
    }
);
#[cfg(feature = "postgres")]
sql_connection_for!(
    diesel::PgConnection,
    Dialect::Postgres,
    fn listen(
        pool: &Pool<ConnectionManager<Self>>,
        channel: &'static str,
        notice: OnNotice,
    ) -> Option<Listener> {
        let pool = pool.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("thorn-listen-{channel}"))
            .spawn(move || listen(pool, channel, notice, stopped))
            .map_err(|error| tracing::error!(%error, "could not start a LISTEN thread"))
            .ok()?;
        Some(Listener::new(move || {
            stop.store(true, std::sync::atomic::Ordering::Relaxed)
        }))
    }
);

/// Holds a pooled connection with `LISTEN channel` and reports what it
/// hears to `notice` until `stop`. libpq offers no blocking wait through
/// Diesel, so it checks the socket every 2 ms (a non-blocking read); a
/// lost connection is reported and replaced after a second.
#[cfg(feature = "postgres")]
fn listen(
    pool: Pool<ConnectionManager<diesel::PgConnection>>,
    channel: &'static str,
    notice: OnNotice,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use thorn_core::integration::sql::Notice;
    let stopped = || stop.load(Ordering::Relaxed);
    while !stopped() {
        let mut conn = match pool.get() {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, channel, "listener: no connection");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let schema = conn
            .batch_execute(&format!("LISTEN {channel}"))
            .and_then(|()| {
                diesel::select(diesel::dsl::sql::<Text>("current_schema()"))
                    .get_result::<String>(&mut *conn)
            });
        let schema = match schema {
            Ok(schema) => schema,
            Err(error) => {
                tracing::warn!(%error, channel, "listener: LISTEN failed");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        notice(Notice::Listening);
        'poll: while !stopped() {
            let mut heard = false;
            for n in conn.notifications_iter() {
                match n {
                    Ok(n) => heard |= Notice::concerns(&n.payload, &schema),
                    Err(error) => {
                        tracing::warn!(%error, channel, "listener lost its connection");
                        notice(Notice::Lost);
                        break 'poll;
                    }
                }
            }
            if heard {
                notice(Notice::Notified);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = conn.batch_execute("UNLISTEN *");
    }
}

/// An r2d2 pool of Diesel connections as Thorn's stores use it.
///
/// Statements run on tokio's blocking threads, or on the calling thread
/// for the synchronous methods of [`crate::DieselStore`] and
/// [`crate::DieselOutbox`].
pub struct DieselDb<C: R2D2Connection + 'static> {
    pool: Pool<ConnectionManager<C>>,
    here: bool,
}

impl<C: R2D2Connection + 'static> Clone for DieselDb<C> {
    fn clone(&self) -> Self {
        DieselDb {
            pool: self.pool.clone(),
            here: self.here,
        }
    }
}

impl<C: R2D2Connection + 'static> std::fmt::Debug for DieselDb<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselDb")
            .field("pool", &self.pool.state())
            .finish()
    }
}

impl<C: SqlConnection> DieselDb<C> {
    /// `pool`, its statements run on tokio's blocking threads.
    ///
    /// Each statement checks a connection out of the pool: build it with
    /// `.test_on_check_out(false)` to save r2d2's `SELECT 1` round trip
    /// per statement (as `thorn worker` does). A connection that lost the
    /// server is marked broken here, so r2d2 drops it either way.
    pub fn new(pool: Pool<ConnectionManager<C>>) -> Self {
        DieselDb { pool, here: false }
    }

    /// `pool`, its statements run on the thread that polls.
    pub(crate) fn here(pool: Pool<ConnectionManager<C>>) -> Self {
        DieselDb { pool, here: true }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<ConnectionManager<C>> {
        &self.pool
    }
}

impl<C: SqlConnection> Database for DieselDb<C> {
    fn dialect(&self) -> Dialect {
        C::DIALECT
    }

    fn run<T: Send + 'static>(&self, work: Work<T>) -> BoxFuture<'static, Result<T>> {
        let pool = self.pool.clone();
        let job = move || -> Result<T> { pool.get().map_err(store_err)?.run_here(work) };
        if self.here {
            return Box::pin(std::future::ready(job()));
        }
        Box::pin(async move { tokio::task::spawn_blocking(job).await.map_err(store_err)? })
    }

    fn listen(&self, channel: &'static str, notice: OnNotice) -> Option<Listener> {
        C::listen(&self.pool, channel, notice)
    }
}

/// Sets up each SQLite connection of an r2d2 pool for several writers:
/// `busy_timeout` (a writer waits for the lock instead of failing with
/// "database is locked") and WAL journaling (readers do not block the
/// writer). Give it to `Pool::builder().connection_customizer(...)`.
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone, Copy)]
pub struct SqliteBusyTimeout(pub std::time::Duration);

#[cfg(feature = "sqlite")]
impl Default for SqliteBusyTimeout {
    /// Five seconds.
    fn default() -> Self {
        SqliteBusyTimeout(std::time::Duration::from_secs(5))
    }
}

#[cfg(feature = "sqlite")]
impl diesel::r2d2::CustomizeConnection<diesel::SqliteConnection, diesel::r2d2::Error>
    for SqliteBusyTimeout
{
    fn on_acquire(&self, conn: &mut diesel::SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL;",
            self.0.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}
