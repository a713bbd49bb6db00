//! Diesel integration for Thorn for Rust.
//!
//! Diesel has no lifecycle hooks, so writes that should send webhooks go
//! through one call each for insert, update and delete. Each runs the Diesel
//! statement you built — with a `RETURNING` clause giving the model row —
//! and then raises the model's events for the returned row:
//!
//! ```
//! # use diesel::prelude::*;
//! # diesel::table! { articles (id) { id -> Integer, title -> Text, author_id -> Integer } }
//! # #[derive(Queryable, Selectable, thorn::WebhookModel)]
//! # #[diesel(table_name = articles)]
//! # #[webhook_model(sender_field = author_id, on_create = "article.created")]
//! # struct Article { id: i32, title: String, author_id: i32 }
//! # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
//! # let mut conn = SqliteConnection::establish(":memory:")?;
//! # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)").execute(&mut conn)?;
//! let article: Article = thorn::diesel::insert(
//!     &thorn,
//!     &mut conn,
//!     diesel::insert_into(articles::table)
//!         .values((articles::title.eq("Hello"), articles::author_id.eq(7)))
//!         .returning(Article::as_returning()),
//! )?;
//! assert_eq!(article.title, "Hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The calls return what Diesel's `get_result` returns. Events leave only
//! after the transaction they were raised in commits
//! ([`thorn_core::integration`]):
//!
//! - inside [`transaction`] — Diesel's `conn.transaction` closure, managed
//!   by Thorn, nestable as savepoints — they are held until its `COMMIT`
//!   (in memory, or as outbox rows written in one multi-row `INSERT` just
//!   before it with [`Config::outbox`](thorn_core::Config::outbox)); a
//!   rollback discards them, a rolled-back savepoint discards its own;
//! - outside any transaction, they leave after the statement's own commit
//!   (a write whose events could fail after its statement — the outbox,
//!   `propagate_errors` — runs in a transaction of its own, so an `Err`
//!   leaves no row behind);
//! - inside a `conn.transaction(..)` Thorn does not manage, a write whose
//!   events wait in memory is refused before its statement runs (the error
//!   names the fix); with the outbox, its events are written right after
//!   the statement, in that transaction;
//! - events declared with `honors_transaction = false` are sent at once.
//!
//! A payload that cannot be encoded is logged with the event name and
//! does not fail the write, unless the event has `propagate_errors = true`:
//! then the call returns the error and its row is not written (a savepoint
//! of its own inside a transaction). A failure to write the outbox is
//! always returned; a missing table names the migration to run.
//!
//! Transition filters (`state.now_eq("PUBLISHED")`) compare against the
//! row as it was: [`update_row`] fetches it by primary key in the same
//! transaction (`SELECT ... FOR UPDATE` on PostgreSQL) — only for models
//! whose change events have such filters — and [`update_from`] takes it
//! from the caller.

pub mod migrate;
pub mod outbox;
pub mod sql;
pub mod store;

#[doc(hidden)]
pub use diesel as __diesel;
pub use migrate::{Migrate, migrate};
pub use outbox::{DieselOutbox, OutboxConnection, Relay};
#[cfg(feature = "sqlite")]
pub use sql::SqliteBusyTimeout;
pub use store::DieselStore;

use diesel::query_dsl::LoadQuery;
use diesel::result::QueryResult;
use thorn_core::integration::StoredEvent;
use thorn_core::integration::{
    FrameKey, ManagedFrame, Parent, Raised, Scope, ThornExt, WebhooksExt,
};
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
    let needs_old = M::webhooks().needs_old_row(DispatchOn::Change);
    // The old row is locked until the update: one transaction for both.
    write::<M, C, M>(thorn, conn, DispatchOn::Change, needs_old, |conn, scope| {
        let old = if needs_old {
            row.fetch_old(conn)?
        } else {
            None
        };
        let new = diesel::RunQueryDsl::get_result(statement, conn)?;
        let raised = fire(
            thorn,
            conn,
            DispatchOn::Change,
            [(&new, old.as_ref())],
            None,
            scope,
        )?;
        Ok((new, raised))
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
    write_one(thorn, conn, statement, DispatchOn::Change, Some(old))
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
    write_one(thorn, conn, statement, on, None)
}

fn write_one<'q, M, C, Q>(
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
    write::<M, C, M>(thorn, conn, on, false, |conn, scope| {
        let row = diesel::RunQueryDsl::get_result(statement, conn)?;
        let raised = fire(thorn, conn, on, [(&row, old)], None, scope)?;
        Ok((row, raised))
    })
}

/// Every write's frame: finds the scope the connection is in, refuses
/// events that could not follow it (before `body` runs the statement), and
/// runs `body`. When `body` needs a transaction (`atomic`) or an event
/// could fail the write after its statement ran (the outbox outside a
/// managed transaction, `propagate_errors`), `body` runs in a managed
/// transaction of its own — a savepoint inside the caller's — so an `Err`
/// leaves neither the row nor its events behind.
fn write<M, C, T>(
    thorn: &Thorn,
    conn: &mut C,
    on: DispatchOn,
    atomic: bool,
    body: impl FnOnce(&mut C, Scope) -> QueryResult<(T, Raised)>,
) -> QueryResult<T>
where
    M: WebhookModel,
    C: OutboxConnection,
{
    let webhooks = M::webhooks();
    if !webhooks.fires_on(on) && !atomic {
        return body(conn, Scope::Own).map(|(value, _)| value);
    }
    let scope = scope_of(thorn, conn)?;
    webhooks.admit(thorn, on, scope).map_err(into_diesel)?;
    if atomic || webhooks.needs_transaction(thorn, on, scope) {
        return transaction(thorn, conn, |conn| {
            let scope = scope_of(thorn, conn)?;
            let (value, raised) = body(conn, scope)?;
            raised.committed(thorn);
            Ok(value)
        });
    }
    let (value, raised) = body(conn, scope)?;
    raised.committed(thorn);
    Ok(value)
}

/// Where `conn` stands: outside any transaction, in one Thorn manages (at
/// its innermost savepoint), or in one it does not.
fn scope_of<C: diesel::Connection>(thorn: &Thorn, conn: &mut C) -> QueryResult<Scope> {
    let (connection, depth) = transaction_state(conn)?;
    Ok(scope_at(thorn, connection, depth))
}

fn scope_at(thorn: &Thorn, connection: usize, depth: usize) -> Scope {
    match depth {
        0 => Scope::Own,
        depth => thorn.scope_at(FrameKey::new(connection, depth)),
    }
}

/// The identity of the connection under any wrapper (the address of its
/// transaction manager's state, which pooled connections share with the
/// connection they wrap) and its transaction depth (0: none).
fn transaction_state<C: diesel::Connection>(conn: &mut C) -> QueryResult<(usize, usize)> {
    use diesel::connection::TransactionManager;
    let status = C::TransactionManager::transaction_manager_status_mut(conn);
    let depth = status.transaction_depth()?.map_or(0, |d| d.get() as usize);
    Ok((std::ptr::from_mut(status) as usize, depth))
}

/// Runs `f` in a database transaction that Thorn manages, as
/// [`diesel::Connection::transaction`] does — `BEGIN`, then `COMMIT` when
/// `f` returns `Ok`, `ROLLBACK` when it returns `Err` or panics — and
/// sends the model events raised inside only after the `COMMIT`
/// succeeded.
///
/// Nested calls are savepoints: the events raised inside one that rolls
/// back are discarded, the others kept. With the outbox
/// ([`Config::outbox`](thorn_core::Config::outbox)), the events of the
/// whole transaction are written as one multi-row `INSERT` just before
/// `COMMIT`, and this process's relay is woken after it.
///
/// Works on SQLite and PostgreSQL connections, r2d2-pooled ones included.
/// Writes through `thorn::diesel` inside a `conn.transaction(..)` that
/// Thorn does not manage are refused (with the in-memory default) or
/// written through at once (with the outbox): see
/// [`thorn_core::integration`].
///
/// ```
/// # use diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, title -> Text, author_id -> Integer } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(sender_field = author_id, on_create = "article.created")]
/// # struct Article { id: i32, title: String, author_id: i32 }
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
/// # let mut conn = SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)").execute(&mut conn)?;
/// let article = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
///     let article: Article = thorn::diesel::insert(
///         &thorn,
///         conn,
///         diesel::insert_into(articles::table)
///             .values((articles::title.eq("Hello"), articles::author_id.eq(7)))
///             .returning(Article::as_returning()),
///     )?;
///     // ... more writes; an Err here sends nothing
///     Ok::<_, diesel::result::Error>(article)
/// })?; // "article.created" leaves now, after COMMIT
/// # let _ = article;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn transaction<C, T, E, F>(thorn: &Thorn, conn: &mut C, f: F) -> Result<T, E>
where
    C: OutboxConnection,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    let (connection, depth) = transaction_state(conn)?;
    let parent = Parent::enclosing(scope_at(thorn, connection, depth));
    let mut frame = ManagedFrame::begin(thorn, FrameKey::new(connection, depth + 1), parent);
    let value = conn.transaction::<T, E, _>(|conn| {
        let value = f(conn)?;
        let rows = frame.before_commit().map_err(into_diesel)?;
        write_rows(conn, &rows)?;
        Ok(value)
    })?;
    frame.committed();
    Ok(value)
}

/// Begins Diesel's test transaction on `conn` (one that is never
/// committed: everything is rolled back when the connection goes) and
/// tells Thorn about it, so tests of code that writes through
/// `thorn::diesel` see its webhooks: writes directly in the test
/// transaction send their events after the statement, as if they had
/// committed on their own, and [`transaction`]s opened inside it send
/// theirs when they "commit" (release their savepoint).
///
/// Keep the returned guard for as long as the connection is used.
///
/// ```
/// # use diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, title -> Text, author_id -> Integer } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(sender_field = author_id, on_create = "article.created")]
/// # struct Article { id: i32, title: String, author_id: i32 }
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
/// # let mut conn = SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)").execute(&mut conn)?;
/// let _test = thorn::diesel::begin_test_transaction(&thorn, &mut conn)?;
/// let article: Article = thorn::diesel::insert(
///     &thorn,
///     &mut conn,
///     diesel::insert_into(articles::table)
///         .values((articles::title.eq("Hello"), articles::author_id.eq(7)))
///         .returning(Article::as_returning()),
/// )?; // "article.created" is sent, though nothing is ever committed
/// # let _ = article;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn begin_test_transaction<C: diesel::Connection>(
    thorn: &Thorn,
    conn: &mut C,
) -> QueryResult<TestTransaction> {
    conn.begin_test_transaction()?;
    let (connection, depth) = transaction_state(conn)?;
    Ok(TestTransaction {
        _marker: ManagedFrame::begin(thorn, FrameKey::new(connection, depth), Parent::Test),
    })
}

/// Thorn's knowledge of a test transaction, from
/// [`begin_test_transaction`]; dropping it forgets the test transaction
/// (not rolling anything back: Diesel does that when the connection goes).
#[derive(Debug)]
#[must_use = "dropping it at once makes the test transaction one Thorn does not manage"]
pub struct TestTransaction {
    _marker: thorn_core::integration::ManagedFrame,
}

/// The Thorn error inside a Diesel error returned by this crate's calls:
/// Thorn's errors travel as Diesel's `SerializationError` (a payload that
/// cannot be encoded) or `QueryBuilderError` (a write refused before its
/// statement ran), boxed, and this finds them.
///
/// ```
/// let error = diesel::result::Error::QueryBuilderError(Box::new(thorn::Error::DispatcherClosed));
/// assert!(matches!(thorn::diesel::thorn_error(&error), Some(thorn::Error::DispatcherClosed)));
/// assert!(thorn::diesel::thorn_error(&diesel::result::Error::NotFound).is_none());
/// ```
pub fn thorn_error(error: &diesel::result::Error) -> Option<&thorn_core::Error> {
    match error {
        diesel::result::Error::SerializationError(inner)
        | diesel::result::Error::QueryBuilderError(inner) => inner.downcast_ref(),
        _ => None,
    }
}

/// A core error as Diesel's: encode errors as serialization errors, the
/// rest (refused before the statement ran) as query-builder errors.
fn into_diesel(error: thorn_core::Error) -> diesel::result::Error {
    match error {
        thorn_core::Error::Encode { .. } => {
            diesel::result::Error::SerializationError(Box::new(error))
        }
        other => diesel::result::Error::QueryBuilderError(Box::new(other)),
    }
}

/// Writes outbox rows through `conn`; a missing table names the
/// migration, a database error comes back as Diesel's own.
fn write_rows<C: OutboxConnection>(conn: &mut C, rows: &[StoredEvent]) -> QueryResult<()> {
    conn.thorn_write_events(rows).map_err(|error| match error {
        thorn_core::Error::Store(source) => match source.downcast::<diesel::result::Error>() {
            Ok(error) => *error,
            Err(source) => into_diesel(thorn_core::Error::Store(source)),
        },
        other => into_diesel(other),
    })
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
        return Err(into_diesel(thorn_core::Error::BulkTransitions {
            model: webhooks.model(),
            fix: "call thorn::diesel::update_row (it loads the old row) or update_from (it takes it)",
        }));
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
    write::<M, C, Vec<M>>(thorn, conn, on, false, |conn, scope| {
        let rows: Vec<M> = diesel::RunQueryDsl::get_results(statement, conn)?;
        let raised = fire(thorn, conn, on, rows.iter().map(|r| (r, None)), None, scope)?;
        Ok((rows, raised))
    })
}

/// Links `instance` to related rows: runs `statement` (an insert into the
/// join table, `RETURNING` the related keys) and sends the events declared
/// with `dispatches_on = m2m_add(relation)`. Subscriber callbacks get the
/// context `{"relation": ..., "related": [keys]}`. Nothing is sent when no
/// row was linked.
///
/// ```
/// # use diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, title -> Text } }
/// # diesel::table! { article_tags (article_id, tag_id) { article_id -> Integer, tag_id -> Integer } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(on_tag(name = "article.tagged", dispatches_on = m2m_add(tags)))]
/// # struct Article { id: i32, title: String }
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
/// # let mut conn = SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE article_tags (article_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, PRIMARY KEY (article_id, tag_id))").execute(&mut conn)?;
/// # let article = Article { id: 1, title: "Hello".into() };
/// let tag_ids: Vec<i32> = thorn::diesel::m2m_add(
///     &thorn,
///     &mut conn,
///     &article,
///     "tags",
///     diesel::insert_into(article_tags::table)
///         .values(&[(article_tags::article_id.eq(article.id), article_tags::tag_id.eq(3))])
///         .returning(article_tags::tag_id),
/// )?; // "article.tagged" is sent with {"relation": "tags", "related": [3]}
/// assert_eq!(tag_ids, [3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
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
    webhooks.check_m2m(on).map_err(into_diesel)?;
    // `change` may run several statements: all or none.
    write::<M, C, Vec<R>>(thorn, conn, on, true, |conn, scope| {
        let related: Vec<R> = change(conn)?;
        let mut raised = Raised::default();
        if !related.is_empty() {
            // A key that cannot be encoded fails the change (rolled back).
            let keys = related
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| {
                    into_diesel(thorn_core::Error::Encode {
                        event: format!(
                            "{} ({} keys)",
                            webhooks.model(),
                            on.relation().unwrap_or_default()
                        ),
                        content_type: thorn_core::ContentType::Json,
                        source,
                    })
                })?;
            let context = M::webhooks().m2m_context(on, &keys);
            raised = fire(thorn, conn, on, [(instance, None)], Some(context), scope)?;
        }
        Ok((related, raised))
    })
}

/// Raises the events of `on` for each `(row, old row)` in `scope` and
/// writes the outbox rows left to write now through `conn`.
fn fire<'r, M: WebhookModel, C: OutboxConnection>(
    thorn: &Thorn,
    conn: &mut C,
    on: DispatchOn,
    rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
    context: Option<serde_json::Value>,
    scope: Scope,
) -> QueryResult<Raised> {
    let raised = M::webhooks()
        .raise(thorn, on, rows, context, scope)
        .map_err(into_diesel)?;
    write_rows(conn, raised.rows())?;
    Ok(raised)
}
