//! SeaORM integration for Thorn for Rust.
//!
//! SeaORM runs an entity's `ActiveModelBehavior` hooks around
//! `ActiveModel::insert`, `update`, `save` and `delete`. Thorn's hooks go
//! there: put `#[derive(WebhookModel)]` on the entity's `Model`, then wire
//! the behaviour in with one line —
//!
//! ```
//! # mod article {
//! #     use sea_orm::entity::prelude::*;
//! #
//! #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
//! #     #[sea_orm(table_name = "articles")]
//! #     #[webhook_model(on_create = "article.created")]
//! #     pub struct Model {
//! #         #[sea_orm(primary_key)]
//! #         pub id: i32,
//! #         pub title: String,
//! #     }
//! #
//! #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//! #     pub enum Relation {}
//! #
//!       thorn::seaorm::behavior!(ActiveModel);
//! # }
//! ```
//!
//! — or, to keep hook code of your own, call Thorn from each hook:
//!
//! ```
//! # mod article {
//! # use sea_orm::entity::prelude::*;
//! # #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
//! # #[sea_orm(table_name = "articles")]
//! # #[webhook_model(on_create = "article.created")]
//! # pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
//! # #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//! # pub enum Relation {}
//! #[async_trait::async_trait]
//! impl ActiveModelBehavior for ActiveModel {
//!     async fn before_save<C: ConnectionTrait>(self, db: &C, insert: bool) -> Result<Self, DbErr> {
//!         let this = /* your code */ self;
//!         thorn::seaorm::before_save(this, db, insert).await
//!     }
//!     async fn after_save<C: ConnectionTrait>(model: Model, db: &C, insert: bool) -> Result<Model, DbErr> {
//!         thorn::seaorm::after_save::<Self, _>(model, db, insert).await
//!     }
//!     async fn before_delete<C: ConnectionTrait>(self, db: &C) -> Result<Self, DbErr> {
//!         thorn::seaorm::before_delete(self, db).await
//!     }
//!     async fn after_delete<C: ConnectionTrait>(self, db: &C) -> Result<Self, DbErr> {
//!         thorn::seaorm::after_delete(self, db).await
//!     }
//! }
//! # }
//! ```
//!
//! The hooks find the [`Thorn`] to send with through [`set_global`] (once,
//! at start-up; a second call is an error) or [`scope`] (for the futures
//! run inside it, which takes precedence). A save of a model with events
//! and no Thorn set fails before its statement runs, with an error naming
//! `set_global`.
//!
//! Events leave only after the transaction they were raised in commits
//! ([`thorn_core::integration`]). A hook cannot see a commit, so run
//! transactions through Thorn: [`transaction`] (SeaORM's closure form) or
//! [`begin`] (its `begin()` / `commit()` form), nestable as savepoints.
//! Inside them, events are held until `COMMIT` — in memory, or as outbox
//! rows written as one multi-row `INSERT` just before it with
//! [`Config::outbox`](thorn_core::Config::outbox) — and discarded by a
//! rollback (a rolled-back savepoint discards its own).
//!
//! What a hook does elsewhere depends on the `db` it was given:
//!
//! - a bare `DatabaseConnection` commits each statement on its own: events
//!   held in memory are sent right after the statement; outbox events and
//!   events with `propagate_errors` are refused before the statement runs,
//!   because their row would commit before Thorn could write or check them;
//! - a transaction of SeaORM's own (`db.begin()`, `db.transaction(..)`),
//!   which a hook cannot tell from one that will roll back: events held in
//!   memory are refused before the statement runs, outbox events are
//!   written right after it, in that transaction;
//! - any other connection type (`DatabaseExecutor`, restricted
//!   connections): only events with `honors_transaction = false` are
//!   allowed;
//! - events declared with `honors_transaction = false` are sent at once
//!   everywhere.
//!
//! Inside a transaction, an error from `after_save` (an encode error with
//! `propagate_errors`, an outbox write that failed) arrives after the
//! statement ran: return it from the transaction, which then rolls back.
//!
//! Transition filters (`state.now_eq("PUBLISHED")`) compare against the
//! stored row: `before_save` loads it by primary key (`SELECT ... FOR
//! UPDATE` on PostgreSQL) only when a change event of the model has such a
//! filter, and hands it to `after_save` of the same save, found again by
//! its typed primary key: inside a transaction from [`begin`] or
//! [`transaction`] it waits in that transaction's frame (and is gone with
//! it, even when the save failed between its hooks); elsewhere it waits
//! with the connection and the task running the save. Concurrent saves
//! never see each other's old rows, and none is dropped however many are
//! in flight. `before_delete` loads the row being deleted the same way, so a
//! delete event carries the row as stored (every field, even when the
//! caller set only the key) and none is sent when there was no row.
//!
//! The row lock lasts as long as the transaction: save inside
//! [`begin`] / [`transaction`] when concurrent writers may change
//! the same row, or two saves may both see the old state. On SQLite,
//! whose deferred transactions cannot start writing after reading while
//! another connection writes (`SQLITE_BUSY`), open such transactions with
//! [`begin_with_options`]`(&db, TransactionOptions { sqlite_transaction_mode:
//! Some(SqliteTransactionMode::Immediate), .. })`. Saves of the same row
//! joined within one task (`join!`) share a key: run them one after the
//! other.
//!
//! SeaORM runs no hooks for `Entity::insert_many`, `update_many`,
//! `delete_many` or `delete_by_id`, and no `after_save` for
//! `ActiveModel::update_without_returning`: nothing is sent for those. Use
//! [`insert_many`], [`update_many`] and [`delete_many`], which send one
//! event per returned row, and [`link`], [`unlink`] and [`clear`] for
//! many-to-many relations (over SeaORM's `Related::via()`: see [`m2m`]).

pub mod entity;
pub mod m2m;
#[cfg(feature = "migration")]
pub mod migration;
pub mod outbox;
pub mod sql;
pub mod store;

#[doc(hidden)]
pub use async_trait::async_trait as __async_trait;
#[doc(hidden)]
pub use sea_orm as __sea_orm;

pub use m2m::{clear, link, unlink};
pub use outbox::{Relay, SeaOrmOutbox};
pub use store::SeaOrmStore;

use std::future::Future;
use std::sync::OnceLock;

use sea_orm::sea_query::ValueTuple;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, DeleteMany, EntityTrait,
    Iterable, ModelTrait, PrimaryKeyToColumn, QueryFilter, QuerySelect, UpdateMany,
};
use sea_orm::{
    InsertMany, IntoActiveModel, TransactionError, TransactionSession, TransactionTrait,
};
use std::pin::Pin;
use thorn_core::integration::StoredEvent;
use thorn_core::integration::schema::{MIGRATIONS, MIGRATIONS_TABLE};
use thorn_core::integration::{FrameKey, ManagedFrame, Parent, Scope, ThornExt, WebhooksExt};
use thorn_core::{DispatchOn, Thorn, WebhookModel};

static GLOBAL: OnceLock<Thorn> = OnceLock::new();

tokio::task_local! {
    static SCOPED: Thorn;
}

/// Sets the [`Thorn`] every hook sends with, for the whole process. Call
/// it once at start-up, before the first save; a second call is an error
/// and changes nothing. [`scope`] overrides it for the futures run inside.
///
/// ```
/// let thorn = thorn::Thorn::new(thorn::Config::default()).unwrap();
/// thorn::seaorm::set_global(thorn.clone()).unwrap();
/// assert!(thorn::seaorm::set_global(thorn).is_err(), "set once");
/// ```
pub fn set_global(thorn: Thorn) -> Result<(), SetGlobalError> {
    GLOBAL.set(thorn).map_err(|_| SetGlobalError(()))
}

/// [`set_global`] was called when a Thorn was set already.
#[derive(Debug)]
pub struct SetGlobalError(());

impl std::fmt::Display for SetGlobalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "thorn::seaorm::set_global was called twice: the hooks' Thorn is set once per process \
             (run code that needs another inside thorn::seaorm::scope)",
        )
    }
}

impl std::error::Error for SetGlobalError {}

/// Runs `future` with `thorn` as the instance its hooks (and [`begin`],
/// [`transaction`]) send with, ahead of the one from [`set_global`]: for
/// tests, or several Thorn configurations in one process.
pub async fn scope<F: Future>(thorn: Thorn, future: F) -> F::Output {
    SCOPED.scope(thorn, future).await
}

/// The instance hooks send with here: the [`scope`]d one, else the one
/// from [`set_global`].
pub fn current() -> Option<Thorn> {
    SCOPED
        .try_with(Thorn::clone)
        .ok()
        .or_else(|| GLOBAL.get().cloned())
}

fn thorn_for(model: &str) -> Result<Thorn, DbErr> {
    current().ok_or_else(|| {
        DbErr::Custom(format!(
            "thorn_seaorm: {model} has webhook events but no Thorn is set: \
             call thorn::seaorm::set_global(thorn) at start-up (or run the save inside thorn::seaorm::scope)"
        ))
    })
}

/// Implements `ActiveModelBehavior` for an entity's `ActiveModel` with
/// Thorn's four hooks and nothing else.
///
/// ```
/// mod article {
///     use sea_orm::entity::prelude::*;
///
///     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
///     #[sea_orm(table_name = "articles")]
///     #[webhook_model(on_create = "article.created", payload = Self::payload)]
///     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
///
///     impl Model {
///         fn payload(&self) -> serde_json::Value {
///             serde_json::json!({ "id": self.id, "title": self.title })
///         }
///     }
///
///     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
///     pub enum Relation {}
///
///     thorn::seaorm::behavior!(ActiveModel);
/// }
/// ```
#[macro_export]
macro_rules! behavior {
    ($active_model:ty) => {
        #[$crate::__async_trait]
        impl $crate::__sea_orm::ActiveModelBehavior for $active_model {
            async fn before_save<C>(
                self,
                db: &C,
                insert: bool,
            ) -> ::std::result::Result<Self, $crate::__sea_orm::DbErr>
            where
                C: $crate::__sea_orm::ConnectionTrait,
            {
                $crate::before_save(self, db, insert).await
            }

            async fn after_save<C>(
                model: <<Self as $crate::__sea_orm::ActiveModelTrait>::Entity as $crate::__sea_orm::EntityTrait>::Model,
                db: &C,
                insert: bool,
            ) -> ::std::result::Result<
                <<Self as $crate::__sea_orm::ActiveModelTrait>::Entity as $crate::__sea_orm::EntityTrait>::Model,
                $crate::__sea_orm::DbErr,
            >
            where
                C: $crate::__sea_orm::ConnectionTrait,
            {
                $crate::after_save::<Self, C>(model, db, insert).await
            }

            async fn before_delete<C>(
                self,
                db: &C,
            ) -> ::std::result::Result<Self, $crate::__sea_orm::DbErr>
            where
                C: $crate::__sea_orm::ConnectionTrait,
            {
                $crate::before_delete(self, db).await
            }

            async fn after_delete<C>(
                self,
                db: &C,
            ) -> ::std::result::Result<Self, $crate::__sea_orm::DbErr>
            where
                C: $crate::__sea_orm::ConnectionTrait,
            {
                $crate::after_delete(self, db).await
            }
        }
    };
}

/// The model of an active model.
type ModelOf<A> = <<A as ActiveModelTrait>::Entity as EntityTrait>::Model;

/// A row as stored, loaded by the first hook of a save for its second:
/// found again by its typed primary key, apart for saves and deletes.
struct OldRow<M> {
    key: ValueTuple,
    deleting: bool,
    row: M,
}

fn hold_old<M: Send + 'static, C>(thorn: &Thorn, db: &C, key: ValueTuple, deleting: bool, row: M) {
    thorn.hold_old_row(thorn.save_at(frame_key(db)), OldRow { key, deleting, row });
}

fn take_old<M: Send + 'static, C>(
    thorn: &Thorn,
    db: &C,
    key: &ValueTuple,
    deleting: bool,
) -> Option<M> {
    thorn
        .take_old_row(thorn.save_at(frame_key(db)), |old: &OldRow<M>| {
            old.deleting == deleting && old.key == *key
        })
        .map(|old| old.row)
}

/// Loads the stored row with primary key `key`, locked for update on
/// PostgreSQL (SQLite has no row locks: its writers are serialized).
async fn fetch_row<E, C>(db: &C, key: &ValueTuple) -> Result<Option<E::Model>, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let mut select = E::find();
    for (k, v) in E::PrimaryKey::iter().zip(key.iter()) {
        select = select.filter(k.into_column().eq(v.clone()));
    }
    if db.get_database_backend() == DbBackend::Postgres {
        select = select.lock_exclusive();
    }
    select.one(db).await
}

/// Thorn's `before_save` hook: on update, loads the stored row when a
/// change event of the model has a `now_` filter.
pub async fn before_save<A, C>(am: A, db: &C, insert: bool) -> Result<A, DbErr>
where
    A: ActiveModelTrait + Send,
    ModelOf<A>: WebhookModel + Send + 'static,
    C: ConnectionTrait,
{
    let on = if insert {
        DispatchOn::Create
    } else {
        DispatchOn::Change
    };
    admit::<ModelOf<A>, C>(db, on)?;
    let webhooks = ModelOf::<A>::webhooks();
    if insert || !webhooks.needs_old_row(DispatchOn::Change) {
        return Ok(am);
    }
    if let Some(key) = am.get_primary_key_value()
        && let Some(old) = fetch_row::<A::Entity, C>(db, &key).await?
    {
        hold_old(&thorn_for(webhooks.model())?, db, key, false, old);
    }
    Ok(am)
}

/// Thorn's `after_save` hook: sends the model's create (`insert`) or
/// change events for the saved row, change events compared against the
/// row `before_save` loaded.
pub async fn after_save<A, C>(model: ModelOf<A>, db: &C, insert: bool) -> Result<ModelOf<A>, DbErr>
where
    A: ActiveModelTrait,
    ModelOf<A>: WebhookModel + Send + 'static,
    C: ConnectionTrait,
{
    let on = if insert {
        DispatchOn::Create
    } else {
        DispatchOn::Change
    };
    let webhooks = ModelOf::<A>::webhooks();
    if !webhooks.fires_on(on) {
        return Ok(model);
    }
    let thorn = thorn_for(webhooks.model())?;
    let old = if !insert && webhooks.needs_old_row(DispatchOn::Change) {
        take_old(&thorn, db, &model.get_primary_key_value(), false)
    } else {
        None
    };
    fire(&thorn, db, on, [(&model, old.as_ref())], None).await?;
    Ok(model)
}

/// Thorn's `before_delete` hook: when the model has delete events, loads
/// the stored row by primary key (`FOR UPDATE` on PostgreSQL), so the
/// event carries the row as stored — every field, even when the caller
/// set only the key — and is sent only if there was a row to delete.
pub async fn before_delete<A, C>(am: A, db: &C) -> Result<A, DbErr>
where
    A: ActiveModelTrait + Send,
    ModelOf<A>: WebhookModel + Send + 'static,
    C: ConnectionTrait,
{
    if !ModelOf::<A>::webhooks().fires_on(DispatchOn::Delete) {
        return Ok(am);
    }
    admit::<ModelOf<A>, C>(db, DispatchOn::Delete)?;
    // Without a key SeaORM refuses the delete itself.
    if let Some(key) = am.get_primary_key_value()
        && let Some(row) = fetch_row::<A::Entity, C>(db, &key).await?
    {
        let thorn = thorn_for(ModelOf::<A>::webhooks().model())?;
        hold_old(&thorn, db, key, true, row);
    }
    Ok(am)
}

/// Thorn's `after_delete` hook: sends the model's delete events for the
/// row `before_delete` loaded (nothing when there was none).
pub async fn after_delete<A, C>(am: A, db: &C) -> Result<A, DbErr>
where
    A: ActiveModelTrait + Send,
    ModelOf<A>: WebhookModel + Send + 'static,
    C: ConnectionTrait,
{
    let webhooks = ModelOf::<A>::webhooks();
    if !webhooks.fires_on(DispatchOn::Delete) {
        return Ok(am);
    }
    let Some(key) = am.get_primary_key_value() else {
        return Ok(am);
    };
    let thorn = thorn_for(webhooks.model())?;
    if let Some(row) = take_old::<ModelOf<A>, C>(&thorn, db, &key, true) {
        fire(&thorn, db, DispatchOn::Delete, [(&row, None)], None).await?;
    }
    Ok(am)
}

/// Where a hook's `db` stands: a transaction Thorn manages
/// ([`transaction`], [`begin`]), a bare `DatabaseConnection` (each
/// statement commits on its own), or anything else — a transaction from
/// SeaORM's own `begin` or `transaction`, which a hook cannot tell from
/// one that will commit.
fn scope_of<C: ConnectionTrait>(thorn: &Thorn, db: &C) -> Scope {
    use std::any::type_name;
    if let Some(frame) = thorn.managed_frame(frame_key(db)) {
        // Through an outer handle while a savepoint of it is open, the
        // statement runs inside the savepoint: its events join that frame.
        Scope::Managed(frame)
    } else if type_name::<C>() == type_name::<sea_orm::DatabaseConnection>() {
        Scope::Autocommit
    } else if type_name::<C>() == type_name::<sea_orm::DatabaseTransaction>() {
        Scope::Unmanaged
    } else {
        Scope::Unknown
    }
}

/// A transaction's frame key: its address, stable while it is borrowed.
fn frame_key<C>(db: &C) -> FrameKey {
    FrameKey::new(std::ptr::from_ref(db) as usize, 0)
}

fn core_error(model: &str, error: thorn_core::Error) -> DbErr {
    match error {
        thorn_core::Error::UnmanagedTransaction { .. }
        | thorn_core::Error::Autocommit { .. }
        | thorn_core::Error::OutboxMissing { .. } => DbErr::Custom(error.to_string()),
        other => DbErr::Custom(format!("thorn: {model}: {other}")),
    }
}

/// Refuses, before the statement runs, a write whose `on` events could
/// not follow the transaction `db` is in (see [`thorn_core::integration`]).
fn admit<M: WebhookModel, C: ConnectionTrait>(db: &C, on: DispatchOn) -> Result<(), DbErr> {
    let webhooks = M::webhooks();
    if !webhooks.fires_on(on) {
        return Ok(());
    }
    let thorn = thorn_for(webhooks.model())?;
    webhooks
        .admit(&thorn, on, scope_of(&thorn, db))
        .map_err(|e| core_error(webhooks.model(), e))
}

/// Raises the events of `on` for each `(row, old row)` in the scope `db`
/// is in: held by a managed transaction, outbox rows written through `db`,
/// or sent now when the statement has committed already.
async fn fire<'r, M, C>(
    thorn: &Thorn,
    db: &C,
    on: DispatchOn,
    rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
    context: Option<serde_json::Value>,
) -> Result<(), DbErr>
where
    M: WebhookModel + 'r,
    C: ConnectionTrait,
{
    let webhooks = M::webhooks();
    let raised = webhooks
        .raise(thorn, on, rows, context, scope_of(thorn, db))
        .map_err(|e| core_error(webhooks.model(), e))?;
    write_rows(db, raised.rows()).await?;
    raised.committed(thorn);
    Ok(())
}

/// Writes outbox rows through `db`; a missing table names the migration,
/// a database error comes back as SeaORM's own.
async fn write_rows<C: ConnectionTrait>(db: &C, rows: &[StoredEvent]) -> Result<(), DbErr> {
    outbox::write_events(db, rows)
        .await
        .map_err(|error| match error {
            thorn_core::Error::Store(source) => match source.downcast::<DbErr>() {
                Ok(error) => *error,
                Err(source) => DbErr::Custom(thorn_core::Error::Store(source).to_string()),
            },
            other => DbErr::Custom(other.to_string()),
        })
}

/// A database transaction that Thorn manages, from [`begin`]: the model
/// events raised by writes through it are sent after [`Transaction::commit`]
/// succeeded, and discarded by [`Transaction::rollback`] or by dropping it.
///
/// It dereferences to SeaORM's transaction: pass `&*txn` (or
/// [`Transaction::conn`]) where SeaORM wants a connection.
///
/// ```
/// # mod article {
/// #     use sea_orm::entity::prelude::*;
/// #
/// #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
/// #     #[sea_orm(table_name = "articles")]
/// #     #[webhook_model(on_create = "article.created")]
/// #     pub struct Model {
/// #         #[sea_orm(primary_key)]
/// #         pub id: i32,
/// #         pub title: String,
/// #     }
/// #
/// #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// #     pub enum Relation {}
/// #
/// #     thorn::seaorm::behavior!(ActiveModel);
/// # }
/// # use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL)").await?;
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() }).unwrap();
/// # thorn::seaorm::set_global(thorn).unwrap();
/// let txn = thorn::seaorm::begin(&db).await?;
/// article::ActiveModel { title: Set("Hello".into()), ..Default::default() }
///     .insert(&*txn)
///     .await?;
/// txn.commit().await?; // "article.created" leaves now
/// # Ok::<(), DbErr>(())
/// # }).unwrap();
/// ```
pub struct Transaction<T = sea_orm::DatabaseTransaction> {
    // Declared first, so dropped first: the frame leaves the registry
    // before the transaction's address can be reused.
    frame: ManagedFrame,
    // Boxed so its address, the frame's key, never moves; `None` only once
    // `commit` or `rollback` took the transaction, and the box is freed
    // only after the frame left the registry, so a transaction begun
    // meanwhile cannot get the same address (the same frame key).
    txn: Box<Option<T>>,
}

impl<T> std::fmt::Debug for Transaction<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("frame", &self.frame)
            .finish_non_exhaustive()
    }
}

impl<T> std::ops::Deref for Transaction<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.conn_ref()
    }
}

impl<T> Transaction<T> {
    fn conn_ref(&self) -> &T {
        self.txn
            .as_ref()
            .as_ref()
            .expect("a Transaction holds its transaction until commit or rollback consume it")
    }
}

impl<T: ConnectionTrait + TransactionSession> Transaction<T> {
    /// SeaORM's transaction, to pass where a connection is wanted.
    pub fn conn(&self) -> &T {
        self.conn_ref()
    }

    /// Writes the transaction's outbox events (multi-row `INSERT`s),
    /// commits, then sends the events held in memory and wakes this
    /// process's relay. When the commit fails, nothing is sent.
    ///
    /// A save inside that returned an error after its statement ran (an
    /// encode error with `propagate_errors`) makes this roll back and fail:
    /// committing would keep that row without its events.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        let rows = match self.frame.before_commit() {
            Ok(rows) => rows,
            Err(error) => {
                if let Err(rollback) = self.rollback().await {
                    tracing::error!(%rollback, "rolling back a transaction that cannot commit failed");
                }
                return Err(DbErr::Custom(error.to_string()));
            }
        };
        write_rows(self.conn_ref(), &rows).await?;
        let Transaction { mut txn, frame } = self;
        let Some(conn) = txn.take() else {
            return Ok(());
        };
        conn.commit().await?;
        frame.committed();
        drop(txn);
        Ok(())
    }

    /// Rolls back; the events raised inside are discarded.
    pub async fn rollback(self) -> Result<(), DbErr> {
        let Transaction { mut txn, frame } = self;
        drop(frame);
        match txn.take() {
            Some(conn) => conn.rollback().await,
            None => Ok(()),
        }
    }
}

/// Begins a database transaction on `db` (a savepoint when `db` is a
/// transaction already) that Thorn manages: see [`Transaction`]. The
/// `begin()`-style form of [`transaction`].
pub async fn begin<C>(db: &C) -> Result<Transaction<C::Transaction>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    begin_with_options(db, sea_orm::TransactionOptions::default()).await
}

/// [`begin`] with SeaORM's transaction options: isolation level, access
/// mode, and on SQLite the transaction mode — `Immediate` takes the write
/// lock at `BEGIN`, which transactions that read and then write need when
/// other connections write too.
///
/// ```
/// # use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL)").await?;
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() }).unwrap();
/// # thorn::seaorm::set_global(thorn).unwrap();
/// let txn = thorn::seaorm::begin_with_options(&db, sea_orm::TransactionOptions {
///     sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
///     ..Default::default()
/// })
/// .await?;
/// # txn.commit().await?;
/// # Ok::<(), DbErr>(())
/// # }).unwrap();
/// ```
pub async fn begin_with_options<C>(
    db: &C,
    options: sea_orm::TransactionOptions,
) -> Result<Transaction<C::Transaction>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let thorn = thorn_for("thorn_seaorm::begin")?;
    let parent = Parent::enclosing(scope_of(&thorn, db));
    let txn = Box::new(Some(db.begin_with_options(options).await?));
    let frame = ManagedFrame::begin(
        &thorn,
        frame_key(txn.as_ref().as_ref().expect("just begun")),
        parent,
    );
    Ok(Transaction { txn, frame })
}

/// Runs `callback` in a database transaction that Thorn manages, as
/// SeaORM's `TransactionTrait::transaction` does — `COMMIT` when it returns
/// `Ok`, `ROLLBACK` when it returns `Err` — and sends the model events
/// raised through the transaction only after the `COMMIT` succeeded.
///
/// Called on a transaction Thorn manages, it opens a savepoint: events
/// raised inside one that rolls back are discarded, the rest kept. With the
/// outbox, the transaction's events are written as one multi-row `INSERT`
/// just before `COMMIT`.
///
/// ```
/// # mod article {
/// #     use sea_orm::entity::prelude::*;
/// #
/// #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
/// #     #[sea_orm(table_name = "articles")]
/// #     #[webhook_model(on_create = "article.created")]
/// #     pub struct Model {
/// #         #[sea_orm(primary_key)]
/// #         pub id: i32,
/// #         pub title: String,
/// #     }
/// #
/// #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// #     pub enum Relation {}
/// #
/// #     thorn::seaorm::behavior!(ActiveModel);
/// # }
/// # use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL)").await?;
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() }).unwrap();
/// # thorn::seaorm::set_global(thorn).unwrap();
/// let article = thorn::seaorm::transaction(&db, |txn| {
///     Box::pin(async move {
///         let article = article::ActiveModel { title: Set("Hello".into()), ..Default::default() }
///             .insert(txn)
///             .await?;
///         Ok::<_, DbErr>(article)
///     })
/// })
/// .await?; // "article.created" leaves now, after COMMIT
/// assert_eq!(article.title, "Hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn transaction<C, F, T, E>(db: &C, callback: F) -> Result<T, TransactionError<E>>
where
    C: ConnectionTrait + TransactionTrait,
    F: for<'c> FnOnce(
            &'c C::Transaction,
        ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    let txn = begin(db).await.map_err(TransactionError::Connection)?;
    match callback(&txn).await {
        Ok(value) => {
            txn.commit().await.map_err(TransactionError::Connection)?;
            Ok(value)
        }
        Err(error) => {
            txn.rollback().await.map_err(TransactionError::Connection)?;
            Err(TransactionError::Transaction(error))
        }
    }
}

fn refuse_transitions<M: WebhookModel>() -> Result<(), DbErr> {
    let webhooks = M::webhooks();
    if webhooks.needs_old_row(DispatchOn::Change) {
        return Err(core_error(
            webhooks.model(),
            thorn_core::Error::BulkTransitions {
                model: webhooks.model(),
                fix: "update rows one by one through ActiveModel::update (the hooks load the old row)",
            },
        ));
    }
    Ok(())
}

async fn fire_all<M: WebhookModel, C: ConnectionTrait>(
    db: &C,
    on: DispatchOn,
    rows: &[M],
) -> Result<(), DbErr> {
    let webhooks = M::webhooks();
    if rows.is_empty() || !webhooks.fires_on(on) {
        return Ok(());
    }
    let thorn = thorn_for(webhooks.model())?;
    fire(&thorn, db, on, rows.iter().map(|r| (r, None)), None).await
}

/// Runs `Entity::insert_many(...)` with `RETURNING` and sends the model's
/// create events for each inserted row (SeaORM runs no hooks for it).
pub async fn insert_many<A, C>(db: &C, insert: InsertMany<A>) -> Result<Vec<ModelOf<A>>, DbErr>
where
    A: ActiveModelTrait,
    ModelOf<A>: WebhookModel + IntoActiveModel<A>,
    C: ConnectionTrait,
{
    admit::<ModelOf<A>, C>(db, DispatchOn::Create)?;
    let rows = insert.exec_with_returning(db).await?;
    fire_all(db, DispatchOn::Create, &rows).await?;
    Ok(rows)
}

/// Runs `Entity::update_many()...` with `RETURNING` and sends the model's
/// change events for each updated row. Models whose change events have
/// `now_` filters are refused before the statement runs.
pub async fn update_many<E, C>(db: &C, update: UpdateMany<E>) -> Result<Vec<E::Model>, DbErr>
where
    E: EntityTrait,
    E::Model: WebhookModel,
    C: ConnectionTrait,
{
    refuse_transitions::<E::Model>()?;
    admit::<E::Model, C>(db, DispatchOn::Change)?;
    let rows = update.exec_with_returning(db).await?;
    fire_all(db, DispatchOn::Change, &rows).await?;
    Ok(rows)
}

/// Runs `Entity::delete_many()...` with `RETURNING` and sends the model's
/// delete events for each deleted row, with its full contents.
pub async fn delete_many<E, C>(db: &C, delete: DeleteMany<E>) -> Result<Vec<E::Model>, DbErr>
where
    E: EntityTrait,
    E::Model: WebhookModel,
    C: ConnectionTrait,
{
    admit::<E::Model, C>(db, DispatchOn::Delete)?;
    let rows = delete.exec_with_returning(db).await?;
    fire_all(db, DispatchOn::Delete, &rows).await?;
    Ok(rows)
}

/// Creates or upgrades Thorn's tables (subscribers and outbox) — the same
/// tables and versions as `thorn_diesel::migrate` and `thorn migrate`;
/// safe to run at every start. Returns the versions applied now.
pub async fn migrate<C>(db: &C) -> Result<Vec<i64>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    db.execute_unprepared(MIGRATIONS_TABLE).await?;
    let mut applied = Vec::new();
    // On SQLite take the write lock at BEGIN: another writer between the
    // check and the DDL would otherwise fail the upgrade at once.
    let options = sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    for step in MIGRATIONS {
        let txn = db.begin_with_options(options).await?;
        if apply(&txn, step).await? {
            applied.push(step.0);
        }
        sea_orm::TransactionSession::commit(txn).await?;
    }
    Ok(applied)
}

/// Runs one of Thorn's migration steps on `conn` (a transaction) unless
/// `thorn_schema_migrations` says it ran — by [`migrate`], `thorn
/// migrate`, Diesel's runner or as a SeaORM migration: all record it
/// there, so any can follow another. True when it ran now.
async fn apply<C: ConnectionTrait>(
    conn: &C,
    &(version, sql, pg_sql): &(i64, &str, &str),
) -> Result<bool, DbErr> {
    let backend = conn.get_database_backend();
    let done = conn
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            "SELECT version FROM thorn_schema_migrations WHERE version = $1",
            [version.into()],
        ))
        .await?
        .is_some();
    if done {
        return Ok(false);
    }
    if !sql.is_empty() {
        conn.execute_unprepared(sql).await?;
    }
    if backend == DbBackend::Postgres && !pg_sql.is_empty() {
        conn.execute_unprepared(pg_sql).await?;
    }
    conn.execute_raw(sea_orm::Statement::from_sql_and_values(
        backend,
        "INSERT INTO thorn_schema_migrations (version) VALUES ($1)",
        [version.into()],
    ))
    .await?;
    Ok(true)
}
