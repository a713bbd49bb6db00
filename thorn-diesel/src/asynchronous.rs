//! The same API on [`diesel-async`](diesel_async) (feature `async-postgres`;
//! `diesel-async` on the `thorn` crate): `AsyncPgConnection` and the
//! connections of its pools (deadpool, bb8, mobc), for applications whose
//! handlers are async.
//!
//! Statements read as with `diesel_async::RunQueryDsl`: `.with_webhooks(&thorn)`
//! on an insert, update or delete, then `.get_result(&mut conn).await` or
//! `.get_results(&mut conn).await`. Import this module's prelude instead of
//! `thorn::diesel::prelude` (as one imports `diesel_async::RunQueryDsl`
//! instead of Diesel's):
//!
//! ```no_run
//! use diesel::prelude::*;
//! use thorn::diesel::asynchronous::prelude::*;
//! # diesel::table! { articles (id) { id -> Integer, title -> Text, state -> Text } }
//!
//! #[derive(Queryable, Selectable, Identifiable, thorn::WebhookModel)]
//! #[diesel(table_name = articles, check_for_backend(diesel::pg::Pg))]
//! #[webhook_model(
//!     on_create = "article.created",
//!     on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
//! )]
//! struct Article { id: i32, title: String, state: String }
//!
//! # async fn run(thorn: thorn::Thorn, mut conn: diesel_async::AsyncPgConnection) -> Result<(), thorn::diesel::Error> {
//! let article: Article = thorn::diesel::asynchronous::transaction(&thorn, &mut conn, async |conn| {
//!     let draft: Article = diesel::insert_into(articles::table)
//!         .values((articles::title.eq("Hello"), articles::state.eq("DRAFT")))
//!         .returning(Article::as_returning())
//!         .with_webhooks(&thorn)
//!         .get_result(conn)
//!         .await?;
//!     // The old row is loaded from the update's own target (FOR UPDATE).
//!     thorn::diesel::update(&draft)
//!         .set(articles::state.eq("PUBLISHED"))
//!         .returning(Article::as_returning())
//!         .with_webhooks(&thorn)
//!         .get_result(conn)
//!         .await
//! })
//! .await?; // "article.created" and "article.published" leave now, after COMMIT
//! # let _ = article;
//! # Ok(())
//! # }
//! ```
//!
//! Everything the synchronous API guarantees holds here: events leave
//! after the transaction commits ([`transaction`], nestable as
//! savepoints), a write outside one sends after its own commit, a write
//! whose events could fail after its statement runs in a savepoint of its
//! own, outbox rows are written through the same connection (one
//! multi-row `INSERT` before `COMMIT` in a managed transaction), and the
//! compile-time refusals (a `SELECT`, a bulk update of a model with `now_`
//! filters, a misspelt relation) are the same.
//!
//! Not built yet on diesel-async: the subscription store, outbox relay
//! and migrations, which stay on Diesel's synchronous connections
//! ([`DieselStore`](crate::DieselStore), [`Relay`](crate::Relay),
//! [`migrate`](crate::migrate())) or `thorn worker`; SQLite through
//! diesel-async's `SyncConnectionWrapper`.

use diesel::SelectableHelper;
use diesel::connection::TransactionManagerStatus;
use diesel::pg::Pg;
use diesel::query_builder::{DeleteStatement, InsertStatement, UpdateStatement};
use diesel::query_source::{QuerySource, Table};
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncConnection, RunQueryDsl, TransactionManager};
use thorn_core::integration::sql::{Connection, Dialect, Kind, Param, Row};
use thorn_core::integration::{
    FrameKey, ManagedFrame, Parent, Raised, Scope, StoredEvent, ThornExt, WebhooksExt,
};
use thorn_core::subscriber::BoxFuture;
use thorn_core::{DispatchOn, Thorn, WebhookModel};

use crate::sql::{DynRow, Prepared};
use crate::statement::{M2m, WithWebhooks, m2m_context};
use crate::store::store_err;
use crate::update::{OldRows, Update, one_old_row};
use crate::{BulkChange, Error};

/// An async closure whose future can be named, so that its `Send` can be
/// asked for (as diesel-async asks for it, by the same device): every
/// `async |conn| { .. }` closure is one. Not for you to implement.
pub trait AsyncFunc<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncFunc<T, R>>::Fut
{
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncFunc<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// The traits that run statements with webhooks on diesel-async, for a
/// glob import: `use thorn::diesel::asynchronous::prelude::*;`.
pub mod prelude {
    pub use super::AsyncRunWebhooksDsl;
    pub use crate::WebhookQueryDsl;
}

/// Connections whose statements and transactions Thorn runs:
/// `AsyncPgConnection` and the pooled connections that dereference to it.
pub trait AsyncOutboxConnection: AsyncConnection<Backend = Pg> + Send {}

impl<C: AsyncConnection<Backend = Pg> + Send> AsyncOutboxConnection for C {}

/// A diesel-async connection as Thorn's SQL runs on it.
struct AsyncConn<'c, C>(&'c mut C);

/// `result`, after marking `conn` broken when it lost the server, so its
/// pool drops it instead of lending it out again.
fn checked<C: AsyncConnection, T>(
    conn: &mut C,
    result: diesel::QueryResult<T>,
) -> thorn_core::Result<T> {
    use diesel::result::{DatabaseErrorKind, Error};
    if let Err(Error::DatabaseError(
        DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
        _,
    )) = &result
    {
        C::TransactionManager::transaction_manager_status_mut(conn).set_in_error();
    }
    result.map_err(store_err)
}

impl<C: AsyncOutboxConnection> Connection for AsyncConn<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, thorn_core::Result<u64>> {
        self.run(sql, params, true)
    }

    fn execute_once<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, thorn_core::Result<u64>> {
        self.run(sql, params, false)
    }

    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        _columns: &'a [Kind],
    ) -> BoxFuture<'a, thorn_core::Result<Vec<Row>>> {
        Box::pin(async move {
            let statement = Prepared {
                sql,
                params,
                cached: true,
            };
            let rows: diesel::QueryResult<Vec<DynRow>> = statement.load(self.0).await;
            checked(self.0, rows).map(|rows| rows.into_iter().map(|r| Row(r.0)).collect())
        })
    }

    fn batch<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, thorn_core::Result<()>> {
        Box::pin(async move {
            let result = self.0.batch_execute(sql).await;
            checked(self.0, result)
        })
    }

    fn begin(&mut self) -> BoxFuture<'_, thorn_core::Result<()>> {
        Box::pin(async move {
            let result = C::TransactionManager::begin_transaction(self.0).await;
            checked(self.0, result)
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, thorn_core::Result<()>> {
        Box::pin(async move {
            let result = C::TransactionManager::commit_transaction(self.0).await;
            checked(self.0, result)
        })
    }

    fn rollback(&mut self) -> BoxFuture<'_, thorn_core::Result<()>> {
        Box::pin(async move {
            let result = C::TransactionManager::rollback_transaction(self.0).await;
            checked(self.0, result)
        })
    }
}

impl<C: AsyncOutboxConnection> AsyncConn<'_, C> {
    fn run<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        cached: bool,
    ) -> BoxFuture<'a, thorn_core::Result<u64>> {
        Box::pin(async move {
            let statement = Prepared {
                sql,
                params,
                cached,
            };
            let result = statement.execute(self.0).await;
            checked(self.0, result).map(|n| n as u64)
        })
    }
}

/// Writes outbox rows through `conn`; a missing table names the
/// migration, a database error comes back as Diesel's own.
async fn write_rows<C: AsyncOutboxConnection>(
    conn: &mut C,
    rows: &[StoredEvent],
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    thorn_core::integration::sql::write_events(
        &mut AsyncConn(conn),
        rows,
        "thorn::diesel::migrate(conn)",
    )
    .await?;
    Ok(())
}

/// The identity of the connection under any pool wrapper (the address of
/// its transaction manager's state) and its transaction depth (0: none).
fn transaction_state<C: AsyncConnection>(conn: &mut C) -> Result<(usize, usize), Error> {
    let status: &mut TransactionManagerStatus =
        C::TransactionManager::transaction_manager_status_mut(conn);
    let depth = status.transaction_depth()?.map_or(0, |d| d.get() as usize);
    Ok((std::ptr::from_mut(status) as usize, depth))
}

fn scope_of<C: AsyncConnection>(thorn: &Thorn, conn: &mut C) -> Result<Scope, Error> {
    Ok(match transaction_state(conn)? {
        (_, 0) => Scope::Own,
        (connection, depth) => thorn.scope_at(FrameKey::new(connection, depth)),
    })
}

/// Opens a transaction (a savepoint inside one) that Thorn manages.
async fn begin<C: AsyncOutboxConnection>(
    thorn: &Thorn,
    conn: &mut C,
) -> Result<ManagedFrame, Error> {
    let (connection, depth) = transaction_state(conn)?;
    let parent = Parent::enclosing(scope_of(thorn, conn)?);
    let frame = ManagedFrame::begin(thorn, FrameKey::new(connection, depth + 1), parent);
    C::TransactionManager::begin_transaction(conn).await?;
    Ok(frame)
}

/// Ends what [`begin`] opened: on `Ok`, writes the frame's outbox rows and
/// commits, then hands its events over; on `Err` (or a failed write),
/// rolls back, and its events are dropped.
async fn end<C, T, E>(conn: &mut C, mut frame: ManagedFrame, result: Result<T, E>) -> Result<T, E>
where
    C: AsyncOutboxConnection,
    E: From<diesel::result::Error> + From<Error>,
{
    let value = match result {
        Ok(value) => value,
        Err(error) => return rollback(conn, error).await,
    };
    let rows = match frame.before_commit() {
        Ok(rows) => rows,
        Err(error) => return rollback(conn, Error::from(error).into()).await,
    };
    if let Err(error) = write_rows(conn, &rows).await {
        return rollback(conn, error.into()).await;
    }
    C::TransactionManager::commit_transaction(conn).await?;
    frame.committed();
    Ok(value)
}

async fn rollback<C, T, E>(conn: &mut C, error: E) -> Result<T, E>
where
    C: AsyncOutboxConnection,
    E: From<diesel::result::Error>,
{
    match C::TransactionManager::rollback_transaction(conn).await {
        // The first error says more than a transaction manager that broke
        // because of it.
        Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
        Err(rollback) => Err(rollback.into()),
    }
}

/// Runs `callback` in a database transaction that Thorn manages, as
/// [`AsyncConnection::transaction`] does — `BEGIN`, then `COMMIT` when it
/// returns `Ok`, `ROLLBACK` when it returns `Err` — and sends the model
/// events raised inside only after the `COMMIT` succeeded. Nested calls
/// are savepoints: a rolled-back one drops its own events. With the
/// outbox, the transaction's events are written as one multi-row `INSERT`
/// just before `COMMIT`.
///
/// The callback is an async closure (`async |conn| { .. }`), as
/// diesel-async's own `transaction` takes; its error type converts from
/// Diesel's error and from [`Error`]. See the
/// [module docs](self) for an example.
pub async fn transaction<C, R, E, F>(thorn: &Thorn, conn: &mut C, callback: F) -> Result<R, E>
where
    C: AsyncOutboxConnection,
    F: for<'r> AsyncFnOnce(&'r mut C) -> Result<R, E>
        + for<'r> AsyncFunc<&'r mut C, Result<R, E>, Fut: Send>
        + Send,
    E: From<diesel::result::Error> + From<Error> + Send,
    R: Send,
{
    let frame = begin(thorn, conn).await?;
    let result = callback(&mut *conn).await;
    end(conn, frame, result).await
}

/// Every write's frame, as the synchronous API's: finds the connection's
/// scope, refuses before the statement events that could not follow it,
/// and runs `$body` (an expression of `$conn` and `$scope` giving
/// `Result<(value, Raised), Error>`) — in a managed savepoint of its own
/// when it must be atomic or its events could fail after the statement.
macro_rules! framed {
    ($thorn:expr, $conn:ident, $model:ty, $on:expr, $atomic:expr, |$scope:ident| $body:expr) => {{
        let thorn: &Thorn = $thorn;
        let on: DispatchOn = $on;
        let atomic: bool = $atomic;
        let webhooks = <$model as WebhookModel>::webhooks();
        if !webhooks.fires_on(on) && !atomic {
            let $scope = Scope::Own;
            $body.await.map(|(value, _)| value)
        } else {
            let scope = scope_of(thorn, $conn)?;
            webhooks.admit(thorn, on, scope)?;
            if atomic || webhooks.needs_transaction(thorn, on, scope) {
                let frame = begin(thorn, $conn).await?;
                let result = async {
                    let $scope = scope_of(thorn, $conn)?;
                    let (value, raised): (_, Raised) = $body.await?;
                    raised.committed(thorn);
                    Ok::<_, Error>(value)
                }
                .await;
                end($conn, frame, result).await
            } else {
                let $scope = scope;
                let (value, raised): (_, Raised) = $body.await?;
                raised.committed(thorn);
                Ok(value)
            }
        }
    }};
}

/// Raises the events of `on` for each `(row, old row)` in `scope` and
/// writes the outbox rows left to write now through `conn`.
async fn fire<'r, M: WebhookModel, C: AsyncOutboxConnection>(
    thorn: &Thorn,
    conn: &mut C,
    on: DispatchOn,
    rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
    context: Option<serde_json::Value>,
    scope: Scope,
) -> Result<Raised, Error> {
    let raised = M::webhooks().raise(thorn, on, rows, context, scope)?;
    write_rows(conn, raised.rows()).await?;
    Ok(raised)
}

/// Runs statements that send webhooks on diesel-async, as
/// `diesel_async::RunQueryDsl` runs statements: `get_result` for one row,
/// `get_results` for every row the statement returns (one event per
/// row).
pub trait AsyncRunWebhooksDsl: Sized {
    /// Runs the statement, returns the row it wrote, and sends its events.
    fn get_result<'c, M, C>(self, conn: &'c mut C) -> BoxFuture<'c, Result<M, Error>>
    where
        Self: AsyncWriteOne<'c, C, M>,
    {
        self.write_one(conn)
    }

    /// Runs the statement, returns every row it wrote, and sends the
    /// events of each (with the outbox, written in one statement).
    fn get_results<'c, M, C>(self, conn: &'c mut C) -> BoxFuture<'c, Result<Vec<M>, Error>>
    where
        Self: AsyncWriteMany<'c, C, M>,
    {
        self.write_many(conn)
    }
}

impl<S> AsyncRunWebhooksDsl for WithWebhooks<'_, S> {}
impl<S, M> AsyncRunWebhooksDsl for M2m<'_, '_, S, M> {}

/// Statements that write one row and return it, on diesel-async
/// (implemented for the statements `with_webhooks` accepts).
#[doc(hidden)]
pub trait AsyncWriteOne<'c, C, M> {
    fn write_one(self, conn: &'c mut C) -> BoxFuture<'c, Result<M, Error>>;
}

/// Statements that write any number of rows and return them, on
/// diesel-async.
#[doc(hidden)]
pub trait AsyncWriteMany<'c, C, M> {
    fn write_many(self, conn: &'c mut C) -> BoxFuture<'c, Result<Vec<M>, Error>>;
}

/// Runs a statement that returns model rows and sends the events of `on`
/// for each (no old row).
async fn write_returned<'c, M, C, Q>(
    thorn: &Thorn,
    conn: &'c mut C,
    statement: Q,
    on: DispatchOn,
) -> Result<Vec<M>, Error>
where
    M: WebhookModel + Send + Sync + 'static,
    C: AsyncOutboxConnection,
    Q: LoadQuery<'c, C, M> + Send + 'c,
{
    framed!(thorn, conn, M, on, false, |scope| async {
        let written: Vec<M> = statement.load(&mut *conn).await?;
        let raised = fire(
            thorn,
            conn,
            on,
            written.iter().map(|r| (r, None)),
            None,
            scope,
        )
        .await?;
        Ok::<_, Error>((written, raised))
    })
}

/// The one row of a statement that returns one.
fn one<M>(mut rows: Vec<M>) -> Result<M, Error> {
    match rows.len() {
        1 => Ok(rows.pop().expect("one row")),
        0 => Err(diesel::result::Error::NotFound.into()),
        _ => Err(diesel::result::Error::QueryBuilderError(
            "the statement returned more than one row; use get_results".into(),
        )
        .into()),
    }
}

/// Diesel's statements that return rows of `M`, and the event each sends.
macro_rules! returning {
    ($statement:ident<$($param:ident),*>, $model:path, $on:expr) => {
        impl<'c, $($param,)* C, M> AsyncWriteOne<'c, C, M> for WithWebhooks<'c, $statement<$($param),*>>
        where
            T: QuerySource,
            M: $model + Send + Sync + 'static,
            C: AsyncOutboxConnection,
            $statement<$($param),*>: LoadQuery<'c, C, M> + Send + 'c,
        {
            fn write_one(self, conn: &'c mut C) -> BoxFuture<'c, Result<M, Error>> {
                let (thorn, statement) = self.into_parts();
                Box::pin(async move { one(write_returned(thorn, conn, statement, $on).await?) })
            }
        }

        impl<'c, $($param,)* C, M> AsyncWriteMany<'c, C, M> for WithWebhooks<'c, $statement<$($param),*>>
        where
            T: QuerySource,
            M: $model + Send + Sync + 'static,
            C: AsyncOutboxConnection,
            $statement<$($param),*>: LoadQuery<'c, C, M> + Send + 'c,
        {
            fn write_many(self, conn: &'c mut C) -> BoxFuture<'c, Result<Vec<M>, Error>> {
                let (thorn, statement) = self.into_parts();
                Box::pin(write_returned(thorn, conn, statement, $on))
            }
        }
    };
}

returning!(InsertStatement<T, U, Op, Ret>, WebhookModel, DispatchOn::Create);
returning!(DeleteStatement<T, U, Ret>, WebhookModel, DispatchOn::Delete);
returning!(UpdateStatement<T, U, V, Ret>, BulkChange, DispatchOn::Change);

impl<'c, T, W, S, C, M> AsyncWriteMany<'c, C, M> for WithWebhooks<'c, Update<T, W, S>>
where
    M: BulkChange + Send + Sync + 'static,
    C: AsyncOutboxConnection,
    S: LoadQuery<'c, C, M> + Send + 'c,
    T: 'c,
    W: 'c,
{
    fn write_many(self, conn: &'c mut C) -> BoxFuture<'c, Result<Vec<M>, Error>> {
        let (thorn, update) = self.into_parts();
        Box::pin(write_returned(
            thorn,
            conn,
            update.into_statement(),
            DispatchOn::Change,
        ))
    }
}

impl<'c, T, W, S, C, M> AsyncWriteOne<'c, C, M> for WithWebhooks<'c, Update<T, W, S>>
where
    T: Table + Send + 'c,
    T::FromClause: Send,
    C: AsyncOutboxConnection,
    M: WebhookModel + diesel::Selectable<Pg> + Send + Sync + 'static,
    W: Clone + Send + 'c,
    S: LoadQuery<'c, C, M> + Send + 'c,
    OldRows<T, W, diesel::dsl::AsSelect<M, Pg>>: LoadQuery<'c, C, M> + 'c,
{
    fn write_one(self, conn: &'c mut C) -> BoxFuture<'c, Result<M, Error>> {
        let (thorn, update) = self.into_parts();
        let on = DispatchOn::Change;
        let needs_old = M::webhooks().needs_old_row(on);
        // The old row stays locked until the update: one transaction for both.
        Box::pin(async move {
            framed!(thorn, conn, M, on, needs_old, |scope| async {
                let old = if needs_old {
                    let old: Vec<M> = update.old_rows(M::as_select()).load(&mut *conn).await?;
                    one_old_row(old)?
                } else {
                    None
                };
                let new: M = one(update.statement.load(&mut *conn).await?)?;
                let raised = fire(thorn, conn, on, [(&new, old.as_ref())], None, scope).await?;
                Ok::<_, Error>((new, raised))
            })
        })
    }
}

impl<'c, S, M, C, R> AsyncWriteMany<'c, C, R> for M2m<'c, 'c, S, M>
where
    M: WebhookModel + Sync,
    R: serde::Serialize + Send + 'static,
    C: AsyncOutboxConnection,
    S: LoadQuery<'c, C, R> + Send + 'c,
{
    fn write_many(self, conn: &'c mut C) -> BoxFuture<'c, Result<Vec<R>, Error>> {
        let M2m {
            thorn,
            statement,
            instance,
            on,
        } = self;
        Box::pin(async move {
            M::webhooks().check_m2m(on)?;
            framed!(thorn, conn, M, on, true, |scope| async {
                let related: Vec<R> = statement.load(&mut *conn).await?;
                m2m_fire(thorn, conn, instance, on, related, scope).await
            })
        })
    }
}

/// Sends `instance`'s events for the related keys a many-to-many change
/// returned, once; nothing for none.
async fn m2m_fire<M, C, R>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    on: DispatchOn,
    related: Vec<R>,
    scope: Scope,
) -> Result<(Vec<R>, Raised), Error>
where
    M: WebhookModel + Sync,
    C: AsyncOutboxConnection,
    R: serde::Serialize,
{
    let mut raised = Raised::default();
    if let Some(context) = m2m_context::<M, R>(on, &related)? {
        raised = fire(thorn, conn, on, [(instance, None)], Some(context), scope).await?;
    }
    Ok((related, raised))
}

/// The many-to-many engine for links made by code of your own, as
/// [`m2m_changed`](crate::m2m_changed()): runs `change` (an async closure
/// that links or unlinks, and returns the related keys) and sends the
/// events of `on` (`Article::TAGS.added()`, ..) once, with those keys, in
/// one transaction (a savepoint inside the caller's).
pub async fn m2m_changed<M, R, C, F>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    on: DispatchOn,
    change: F,
) -> Result<Vec<R>, Error>
where
    M: WebhookModel + Sync,
    R: serde::Serialize + Send,
    C: AsyncOutboxConnection,
    F: for<'r> AsyncFnOnce(&'r mut C) -> diesel::QueryResult<Vec<R>>
        + for<'r> AsyncFunc<&'r mut C, diesel::QueryResult<Vec<R>>, Fut: Send>
        + Send,
{
    M::webhooks().check_m2m(on)?;
    framed!(thorn, conn, M, on, true, |scope| async {
        let related: Vec<R> = change(&mut *conn).await?;
        m2m_fire(thorn, conn, instance, on, related, scope).await
    })
}
