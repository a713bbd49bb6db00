//! Diesel integration for Thorn for Rust.
//!
//! Diesel has no lifecycle hooks, so writes that should send webhooks go
//! through one call each for insert, update and delete. Each runs the Diesel
//! statement you built — with a `RETURNING` clause giving the model row —
//! and then raises the model's events for the returned row:
//!
//! ```ignore
//! let article: Article = thorn_diesel::insert(
//!     &thorn,
//!     &mut conn,
//!     diesel::insert_into(articles::table)
//!         .values(&new_article)
//!         .returning(Article::as_returning()),
//! )?;
//! ```
//!
//! The calls return what Diesel's `get_result` returns. What happens to the
//! events depends on the dispatcher:
//!
//! - with the **outbox** (`THORN_DISPATCHER=outbox`), events that honour
//!   the transaction (the default) are written to `thorn_events` through
//!   the same connection, so they are delivered after commit and never on
//!   rollback — see [`outbox`] and [`Relay`];
//! - otherwise (and for events with `honors_transaction = false`) they go
//!   to Thorn's dispatcher at once and are delivered in the background.
//!
//! A payload that cannot be encoded is logged with the event name and
//! does not fail the write, unless the event has `propagate_errors = true`:
//! then the call returns the error, so the caller's transaction rolls back.
//! A failure to write the outbox is always returned: the event would
//! otherwise be lost.
//!
//! Transition filters (`state.now_eq("PUBLISHED")`) compare against the
//! row as it was: [`update_row`] fetches it by primary key in the same
//! transaction (`SELECT ... FOR UPDATE` on PostgreSQL) — only for models
//! whose change events have such filters — and [`update_from`] takes it
//! from the caller.

pub mod migrate;
pub mod outbox;
pub mod store;

#[doc(hidden)]
pub use diesel as __diesel;
pub use migrate::{Migrate, migrate};
pub use outbox::{DieselOutbox, OutboxConnection, Relay};
pub use store::DieselStore;

use diesel::query_dsl::LoadQuery;
use diesel::result::QueryResult;
use thorn_core::{DispatchOn, Thorn, WebhookModel};

/// Runs an `INSERT ... RETURNING` statement and sends the model's create
/// events for the inserted row.
pub fn insert<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<M>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    run(thorn, conn, statement, DispatchOn::Create)
}

/// Runs an `UPDATE ... RETURNING` statement (for one row) and sends the
/// model's change events for the updated row.
///
/// A model whose change events have `now_` filters needs the row as it was
/// before: use [`update_from`]. Calling `update` for such a model is an
/// error returned before the statement runs.
pub fn update<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<M>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    refuse_transitions::<M>()?;
    run(thorn, conn, statement, DispatchOn::Change)
}

/// How [`update_row`] loads a row as it was before a change, by primary
/// key, in the caller's transaction (locking it on PostgreSQL).
///
/// `#[derive(WebhookModel)]` implements it for Diesel models: from
/// `#[diesel(table_name = ..., primary_key(...))]` (key `id` by default)
/// when a change event has `now_` filters, and as a no-op otherwise.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has change events with `now_` filters, but Thorn does not know how to load its old row",
    note = "add `#[diesel(table_name = ...)]` (and `primary_key(...)` unless the key is `id`) to `{Self}`, which must derive `Selectable`"
)]
pub trait FetchOld<C>: Sized {
    /// The stored row with the same primary key as `self`, if any.
    fn fetch_old(&self, conn: &mut C) -> QueryResult<Option<Self>>;
}

#[doc(hidden)]
#[macro_export]
macro_rules! __no_old_row {
    ($model:ty) => {
        #[automatically_derived]
        impl<__C> $crate::FetchOld<__C> for $model {
            fn fetch_old(
                &self,
                _conn: &mut __C,
            ) -> $crate::__diesel::QueryResult<::std::option::Option<Self>> {
                ::std::result::Result::Ok(::std::option::Option::None)
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fetch_old {
    ($model:ty, $table:expr, ($($key:ident),+)) => {
        $crate::__fetch_old_sqlite!($model, $table, ($($key),+));
        $crate::__fetch_old_pg!($model, $table, ($($key),+));
    };
}

#[cfg(feature = "sqlite")]
#[doc(hidden)]
#[macro_export]
macro_rules! __fetch_old_sqlite {
    ($model:ty, $table:expr, ($($key:ident),+)) => {
        $crate::__fetch_old_for!(
            $model, $table, ($($key),+),
            $crate::__diesel::SqliteConnection, $crate::__diesel::sqlite::Sqlite,
        );
    };
}

#[cfg(not(feature = "sqlite"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __fetch_old_sqlite {
    ($($t:tt)*) => {};
}

#[cfg(feature = "postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __fetch_old_pg {
    ($model:ty, $table:expr, ($($key:ident),+)) => {
        $crate::__fetch_old_for!(
            $model, $table, ($($key),+),
            $crate::__diesel::PgConnection, $crate::__diesel::pg::Pg, for_update
        );
    };
}

#[cfg(not(feature = "postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __fetch_old_pg {
    ($($t:tt)*) => {};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fetch_old_for {
    ($model:ty, $table:expr, ($($key:ident),+), $conn:ty, $backend:ty, $($lock:ident)?) => {
        #[automatically_derived]
        impl $crate::FetchOld<$conn> for $model {
            fn fetch_old(
                &self,
                conn: &mut $conn,
            ) -> $crate::__diesel::QueryResult<::std::option::Option<Self>> {
                use $crate::__diesel::prelude::*;
                $table
                    .find(($(::std::clone::Clone::clone(&self.$key)),+))
                    .select(<Self as $crate::__diesel::SelectableHelper<$backend>>::as_select())
                    $(.$lock())?
                    .first::<Self>(conn)
                    .optional()
            }
        }

        #[automatically_derived]
        impl $crate::FetchOld<
            $crate::__diesel::r2d2::PooledConnection<$crate::__diesel::r2d2::ConnectionManager<$conn>>,
        > for $model {
            fn fetch_old(
                &self,
                conn: &mut $crate::__diesel::r2d2::PooledConnection<
                    $crate::__diesel::r2d2::ConnectionManager<$conn>,
                >,
            ) -> $crate::__diesel::QueryResult<::std::option::Option<Self>> {
                <Self as $crate::FetchOld<$conn>>::fetch_old(self, &mut **conn)
            }
        }
    };
}

/// Runs an `UPDATE ... RETURNING` statement for `row` (the row being
/// changed, as the caller has it: only its primary key is read) and sends
/// the model's change events.
///
/// When a change event has `now_` filters, the stored row is first loaded
/// by primary key in the same transaction — `SELECT ... FOR UPDATE` on
/// PostgreSQL, so a concurrent writer cannot slip in between — and the
/// filters compare against it. Without such filters there is no extra
/// query.
pub fn update_row<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, row: &M, statement: Q) -> QueryResult<M>
where
    M: WebhookModel + FetchOld<C>,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    if !M::webhooks().needs_old_row(DispatchOn::Change) {
        return write(thorn, conn, statement, DispatchOn::Change, None);
    }
    conn.transaction(|conn| {
        let old = row.fetch_old(conn)?;
        let new = diesel::RunQueryDsl::get_result(statement, conn)?;
        fire(
            thorn,
            conn,
            DispatchOn::Change,
            [(&new, old.as_ref())],
            None,
        )?;
        Ok(new)
    })
}

/// [`update`] for a row whose previous state the caller holds (`old`, as
/// loaded before the change): `now_` transition filters compare against it.
pub fn update_from<'q, M, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    old: &M,
    statement: Q,
) -> QueryResult<M>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    write(thorn, conn, statement, DispatchOn::Change, Some(old))
}

/// Runs a `DELETE ... RETURNING` statement (for one row) and sends the
/// model's delete events for the deleted row.
pub fn delete<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<M>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    run(thorn, conn, statement, DispatchOn::Delete)
}

fn run<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q, on: DispatchOn) -> QueryResult<M>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    write(thorn, conn, statement, on, None)
}

/// Runs the statement and raises the events; with the outbox, both in one
/// transaction (a savepoint when the caller has one open).
fn write<'q, M, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    statement: Q,
    on: DispatchOn,
    old: Option<&M>,
) -> QueryResult<M>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    atomically(thorn, conn, M::webhooks().fires_on(on), |conn| {
        let row = diesel::RunQueryDsl::get_result(statement, conn)?;
        fire(thorn, conn, on, [(&row, old)], None)?;
        Ok(row)
    })
}

/// `f` inside a transaction when its events go to the outbox and the
/// caller has none open (statement and events commit together), as is
/// otherwise.
///
/// Inside the caller's transaction no savepoint is added (it would cost two
/// round trips per write): an error from the statement or the outbox write
/// is returned, and returning it from the caller's `transaction` closure
/// rolls back the row together with its events, as for any other failed
/// statement.
fn atomically<C, T>(
    thorn: &Thorn,
    conn: &mut C,
    fires: bool,
    f: impl FnOnce(&mut C) -> QueryResult<T>,
) -> QueryResult<T>
where
    C: OutboxConnection,
{
    if thorn.uses_outbox() && fires && !in_transaction(conn) {
        conn.transaction(f)
    } else {
        f(conn)
    }
}

/// Whether `conn` has a transaction open (a broken transaction manager
/// counts as none, so Diesel reports the problem on `transaction`).
fn in_transaction<C: diesel::Connection>(conn: &mut C) -> bool {
    use diesel::connection::TransactionManager;
    matches!(
        C::TransactionManager::transaction_manager_status_mut(conn).transaction_depth(),
        Ok(Some(_))
    )
}

/// Runs an `INSERT ... RETURNING` statement for any number of rows
/// (`.values(&vec)`) and sends the model's create events for each
/// inserted row — with the outbox, all written in one statement.
pub fn insert_many<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<Vec<M>>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    write_many(thorn, conn, statement, DispatchOn::Create)
}

/// Runs an `UPDATE ... RETURNING` statement with any filter and sends the
/// model's change events for each updated row (which Django's bulk
/// `update()` cannot do). Models whose change events have `now_` filters
/// are refused before the statement runs: they need [`update_row`].
pub fn update_many<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<Vec<M>>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    refuse_transitions::<M>()?;
    write_many(thorn, conn, statement, DispatchOn::Change)
}

/// Runs a `DELETE ... RETURNING` statement with any filter and sends the
/// model's delete events for each deleted row, with its full contents.
pub fn delete_many<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<Vec<M>>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    write_many(thorn, conn, statement, DispatchOn::Delete)
}

fn refuse_transitions<M: WebhookModel>() -> QueryResult<()> {
    let webhooks = M::webhooks();
    if webhooks.needs_old_row(DispatchOn::Change) {
        return Err(diesel::result::Error::QueryBuilderError(
            format!(
                "{} has change events with now_ filters: call thorn_diesel::update_row (fetches the old row) or update_from (takes it)",
                webhooks.model()
            )
            .into(),
        ));
    }
    Ok(())
}

fn write_many<'q, M, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    statement: Q,
    on: DispatchOn,
) -> QueryResult<Vec<M>>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
{
    atomically(thorn, conn, M::webhooks().fires_on(on), |conn| {
        let rows: Vec<M> = diesel::RunQueryDsl::get_results(statement, conn)?;
        fire(thorn, conn, on, rows.iter().map(|r| (r, None)), None)?;
        Ok(rows)
    })
}

/// Links `instance` to related rows: runs `statement` (an insert into the
/// join table, `RETURNING` the related keys) and sends the events declared
/// with `dispatches_on = m2m_add(relation)`. Subscriber callbacks get the
/// context `{"relation": ..., "related": [keys]}`. Nothing is sent when no
/// row was linked.
///
/// ```ignore
/// let tag_ids: Vec<i32> = thorn_diesel::m2m_add(&thorn, conn, &article, "tags",
///     diesel::insert_into(article_tags::table)
///         .values(&[(article_tags::article_id.eq(article.id), article_tags::tag_id.eq(3))])
///         .returning(article_tags::tag_id))?;
/// ```
pub fn m2m_add<'q, M, R, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    relation: &'static str,
    statement: Q,
) -> QueryResult<Vec<R>>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, R>,
{
    m2m(
        thorn,
        conn,
        instance,
        DispatchOn::M2mAdd(relation),
        statement,
    )
}

/// Unlinks related rows (a delete from the join table, `RETURNING` the
/// related keys) and sends the `m2m_remove(relation)` events.
pub fn m2m_remove<'q, M, R, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    relation: &'static str,
    statement: Q,
) -> QueryResult<Vec<R>>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, R>,
{
    m2m(
        thorn,
        conn,
        instance,
        DispatchOn::M2mRemove(relation),
        statement,
    )
}

/// Unlinks every related row (a delete of all of `instance`'s join rows,
/// `RETURNING` the related keys) and sends the `m2m_clear(relation)`
/// events.
pub fn m2m_clear<'q, M, R, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    relation: &'static str,
    statement: Q,
) -> QueryResult<Vec<R>>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, R>,
{
    m2m(
        thorn,
        conn,
        instance,
        DispatchOn::M2mClear(relation),
        statement,
    )
}

fn m2m<'q, M, R, C, Q>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    on: DispatchOn,
    statement: Q,
) -> QueryResult<Vec<R>>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, R>,
{
    m2m_changed(thorn, conn, instance, on, |conn| {
        diesel::RunQueryDsl::get_results(statement, conn)
    })
}

/// The many-to-many helpers' engine, for links made by code of your own:
/// runs `change` (which links or unlinks, and returns the related keys)
/// and sends the events of `on` (`DispatchOn::M2mAdd("tags")`, ...) once,
/// with those keys — in one transaction with the outbox. Use it where one
/// statement cannot return every key, such as several single-row inserts
/// on SQLite.
pub fn m2m_changed<M, R, C>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    on: DispatchOn,
    change: impl FnOnce(&mut C) -> QueryResult<Vec<R>>,
) -> QueryResult<Vec<R>>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
{
    let webhooks = M::webhooks();
    webhooks
        .check_m2m(on)
        .map_err(|message| diesel::result::Error::QueryBuilderError(message.into()))?;
    atomically(thorn, conn, webhooks.fires_on(on), |conn| {
        let related: Vec<R> = change(conn)?;
        if !related.is_empty() {
            let keys: Vec<serde_json::Value> = related
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or(serde_json::Value::Null))
                .collect();
            let context = thorn_core::Webhooks::<M>::m2m_context(on, &keys);
            fire(thorn, conn, on, [(instance, None)], Some(context))?;
        }
        Ok(related)
    })
}

/// Raises the events of `on` for each `(row, old row)`: outbox rows
/// through `conn` for those that honour the transaction (with the outbox
/// on, all in one insert), the dispatcher for the rest.
fn fire<'r, M: WebhookModel, C: OutboxConnection>(
    thorn: &Thorn,
    conn: &mut C,
    on: DispatchOn,
    rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
    context: Option<serde_json::Value>,
) -> QueryResult<()> {
    let stored = M::webhooks()
        .raise(thorn, on, rows, context)
        .map_err(|error| diesel::result::Error::SerializationError(Box::new(error)))?;
    if !stored.is_empty() {
        for chunk in stored.chunks(1000) {
            conn.thorn_write_events(chunk)?;
        }
        thorn.outbox_signal().notify_one();
    }
    Ok(())
}
