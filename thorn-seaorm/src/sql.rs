//! How Thorn's SQL (in `thorn_core::sql`) runs on SeaORM: a
//! [`Connection`] over any SeaORM connection or transaction, and a
//! [`Database`] over a `DatabaseConnection` pool. Statements are raw
//! [`Statement`]s with typed values; rows are read by the column types the
//! query declares.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, QueryResult, Statement,
    TransactionTrait,
};
use thorn_core::integration::sql::{
    Connection, Database, Dialect, Kind, Listener, Notice, OnNotice, Param, Row, Value, Work,
};
use thorn_core::subscriber::BoxFuture;
use thorn_core::{Error, Result};

use crate::store::store_err;

fn dialect(backend: DbBackend) -> Dialect {
    match backend {
        DbBackend::Postgres => Dialect::Postgres,
        _ => Dialect::Sqlite,
    }
}

fn value(param: Param) -> sea_orm::Value {
    match param {
        Param::Text(v) => sea_orm::Value::String(v),
        Param::BigInt(v) => sea_orm::Value::BigInt(v),
        Param::Int(v) => sea_orm::Value::Int(v),
        Param::Bool(v) => sea_orm::Value::Bool(v),
    }
}

fn statement(backend: DbBackend, sql: &str, params: Vec<Param>) -> Statement {
    Statement::from_sql_and_values(backend, sql, params.into_iter().map(value))
}

fn row(result: &QueryResult, columns: &[Kind]) -> Result<Row> {
    let mut values = Vec::with_capacity(columns.len());
    for (i, kind) in columns.iter().enumerate() {
        let v = match kind {
            Kind::Text => result
                .try_get_by_index::<Option<String>>(i)
                .map(|v| v.map_or(Value::Null, Value::Text)),
            Kind::BigInt => result
                .try_get_by_index::<Option<i64>>(i)
                .map(|v| v.map_or(Value::Null, Value::Int)),
            Kind::Int => result
                .try_get_by_index::<Option<i32>>(i)
                .map(|v| v.map_or(Value::Null, |n| Value::Int(i64::from(n)))),
            Kind::Bool => result
                .try_get_by_index::<Option<bool>>(i)
                .map(|v| v.map_or(Value::Null, Value::Bool)),
        }
        .map_err(store_err)?;
        values.push(v);
    }
    Ok(Row(values))
}

async fn execute_on<C: ConnectionTrait>(conn: &C, sql: &str, params: Vec<Param>) -> Result<u64> {
    let statement = statement(conn.get_database_backend(), sql, params);
    conn.execute_raw(statement)
        .await
        .map(|r| r.rows_affected())
        .map_err(store_err)
}

async fn query_on<C: ConnectionTrait>(
    conn: &C,
    sql: &str,
    params: Vec<Param>,
    columns: &[Kind],
) -> Result<Vec<Row>> {
    let statement = statement(conn.get_database_backend(), sql, params);
    conn.query_all_raw(statement)
        .await
        .map_err(store_err)?
        .iter()
        .map(|r| row(r, columns))
        .collect()
}

/// Any SeaORM connection or transaction, for statements inside the
/// caller's own transaction: it opens none itself.
pub(crate) struct SeaConn<'c, C>(pub &'c C);

fn no_transaction() -> BoxFuture<'static, Result<()>> {
    Box::pin(std::future::ready(Err(Error::Store(
        "Thorn opens no transaction on the caller's connection".into(),
    ))))
}

/// See [`Connection::max_statement_bytes`]: sqlx sends without
/// `TCP_NODELAY`, so statements stay below one 16 KiB socket write.
const STATEMENT_BYTES: usize = 12 * 1024;

impl<C: ConnectionTrait> Connection for SeaConn<'_, C> {
    fn dialect(&self) -> Dialect {
        dialect(self.0.get_database_backend())
    }

    fn max_statement_bytes(&self) -> usize {
        STATEMENT_BYTES
    }

    fn execute<'a>(&'a mut self, sql: &'a str, params: Vec<Param>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(execute_on(self.0, sql, params))
    }

    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        columns: &'a [Kind],
    ) -> BoxFuture<'a, Result<Vec<Row>>> {
        Box::pin(query_on(self.0, sql, params, columns))
    }

    fn batch<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.0.execute_unprepared(sql).await.map_err(store_err)?;
            Ok(())
        })
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<()>> {
        no_transaction()
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<()>> {
        no_transaction()
    }

    fn rollback(&mut self) -> BoxFuture<'_, Result<()>> {
        no_transaction()
    }
}

/// A connection of the pool, with the transaction Thorn opened on it.
struct PoolConn {
    db: DatabaseConnection,
    txn: Option<DatabaseTransaction>,
}

impl Connection for PoolConn {
    fn dialect(&self) -> Dialect {
        dialect(self.db.get_database_backend())
    }

    fn max_statement_bytes(&self) -> usize {
        STATEMENT_BYTES
    }

    fn execute<'a>(&'a mut self, sql: &'a str, params: Vec<Param>) -> BoxFuture<'a, Result<u64>> {
        match &self.txn {
            Some(txn) => Box::pin(execute_on(txn, sql, params)),
            None => Box::pin(execute_on(&self.db, sql, params)),
        }
    }

    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        columns: &'a [Kind],
    ) -> BoxFuture<'a, Result<Vec<Row>>> {
        match &self.txn {
            Some(txn) => Box::pin(query_on(txn, sql, params, columns)),
            None => Box::pin(query_on(&self.db, sql, params, columns)),
        }
    }

    fn batch<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match &self.txn {
                Some(txn) => txn.execute_unprepared(sql).await,
                None => self.db.execute_unprepared(sql).await,
            }
            .map_err(store_err)?;
            Ok(())
        })
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.txn.is_some() {
                return Err(Error::Store("a Thorn transaction is open already".into()));
            }
            self.txn = Some(self.db.begin().await.map_err(store_err)?);
            Ok(())
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.txn.take() {
                Some(txn) => txn.commit().await.map_err(store_err),
                None => Err(Error::Store("no Thorn transaction to commit".into())),
            }
        })
    }

    fn rollback(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.txn.take() {
                Some(txn) => txn.rollback().await.map_err(store_err),
                None => Ok(()),
            }
        })
    }
}

/// A SeaORM `DatabaseConnection` (a pool) as Thorn's stores use it:
/// [`crate::SeaOrmStore`] and [`crate::SeaOrmOutbox`] are Thorn's SQL
/// store and outbox on it.
#[derive(Debug, Clone)]
pub struct SeaOrmDb(DatabaseConnection);

impl SeaOrmDb {
    /// The connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.0
    }
}

impl From<DatabaseConnection> for SeaOrmDb {
    fn from(db: DatabaseConnection) -> Self {
        SeaOrmDb(db)
    }
}

impl Database for SeaOrmDb {
    fn dialect(&self) -> Dialect {
        dialect(self.0.get_database_backend())
    }

    fn run<T: Send + 'static>(&self, work: Work<T>) -> BoxFuture<'static, Result<T>> {
        let db = self.0.clone();
        Box::pin(async move {
            let mut conn = PoolConn { db, txn: None };
            work(&mut conn).await
        })
    }

    /// A task on the caller's tokio runtime holding one connection of the
    /// pool (PostgreSQL only; `None` on SQLite, on a mock connection, or
    /// with no runtime, which is logged).
    fn listen(&self, channel: &'static str, notice: OnNotice) -> Option<Listener> {
        if self.0.get_database_backend() != DbBackend::Postgres || self.0.is_mock_connection() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| tracing::error!(channel, "LISTEN needs a tokio runtime; polling only"))
            .ok()?;
        let pool = self.0.get_postgres_connection_pool().clone();
        let task = runtime.spawn(listen(pool, channel, notice));
        Some(Listener::new(move || task.abort()))
    }
}

/// Holds a `LISTEN channel` connection of `pool` and reports what it
/// hears to `notice`, reconnecting after a second when the connection
/// fails. Runs until aborted or the pool is closed.
async fn listen(pool: sqlx::PgPool, channel: &'static str, notice: OnNotice) {
    use sqlx::postgres::PgListener;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, channel, "listener: no connection");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let schema = match listener.listen(channel).await {
            Ok(()) => {
                sqlx::query_scalar::<_, String>("SELECT current_schema()")
                    .fetch_one(&mut listener)
                    .await
            }
            Err(error) => Err(error),
        };
        let schema = match schema {
            Ok(schema) => schema,
            Err(error) => {
                tracing::warn!(%error, channel, "listener: LISTEN failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        notice(Notice::Listening);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if Notice::concerns(n.payload(), &schema) {
                        notice(Notice::Notified);
                    }
                }
                // The connection was lost and LISTEN re-established,
                // notifications in between unheard.
                Ok(None) => {
                    notice(Notice::Lost);
                    notice(Notice::Listening);
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    tracing::warn!(%error, channel, "listener lost its connection");
                    notice(Notice::Lost);
                    break;
                }
            }
        }
        drop(listener);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
