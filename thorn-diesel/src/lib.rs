//! Diesel integration for Thorn for Rust.
//!
//! Diesel has no lifecycle hooks, so a write that should send webhooks
//! says so on the statement: `.with_webhooks(&thorn)` on an insert, update
//! or delete (with a `RETURNING` clause giving the model row), then
//! `.get_result(conn)` or `.get_results(conn)` as with Diesel's
//! `RunQueryDsl`. The kind of event follows the statement: an `INSERT`
//! sends the model's create events, an `UPDATE` its change events, a
//! `DELETE` its delete events, one per returned row.
//!
//! ```
//! use diesel::prelude::*;
//! use thorn::diesel::prelude::*;
//!
//! diesel::table! { articles (id) { id -> Integer, title -> Text, author_id -> Integer } }
//!
//! #[derive(Queryable, Selectable, Identifiable, thorn::WebhookModel)]
//! #[diesel(table_name = articles)]
//! #[webhook_model(sender_field = author_id, on_create = "article.created",
//!                 on_change = "article.changed", on_delete = "article.removed")]
//! struct Article { id: i32, title: String, author_id: i32 }
//! # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
//! # let mut conn = SqliteConnection::establish(":memory:")?;
//! # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)").execute(&mut conn)?;
//! # let conn = &mut conn;
//!
//! let article: Article = diesel::insert_into(articles::table)
//!     .values((articles::title.eq("Hello"), articles::author_id.eq(7)))
//!     .returning(Article::as_returning())
//!     .with_webhooks(&thorn)
//!     .get_result(conn)?; // "article.created"
//! let renamed: Vec<Article> = diesel::update(articles::table.filter(articles::author_id.eq(7)))
//!     .set(articles::title.eq("Hello again"))
//!     .returning(Article::as_returning())
//!     .with_webhooks(&thorn)
//!     .get_results(conn)?; // "article.changed" for each row
//! let removed: Article = diesel::delete(&article)
//!     .returning(Article::as_returning())
//!     .with_webhooks(&thorn)
//!     .get_result(conn)?; // "article.removed", with the whole row
//! # assert_eq!((renamed.len(), removed.title.as_str()), (1, "Hello again"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Errors are [`Error`]: Diesel's or Thorn's, either way with nothing
//! written. Many-to-many changes say which relation they change with the
//! constant the derive makes for it (`Article::TAGS`): see
//! [`WithWebhooks::linking`].
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
//! row as it was: [`update()`] (Diesel's `update`, keeping its target)
//! loads it from the statement's target in the same transaction (`SELECT
//! ... FOR UPDATE` on PostgreSQL) — only for models whose change events
//! have such filters. Other updates of such a model do not compile
//! ([`BulkChange`]).

#[cfg(feature = "async-postgres")]
pub mod asynchronous;
pub mod migrate;
pub mod outbox;
pub mod sql;
pub mod store;

mod error;
mod statement;
mod transaction;
mod update;

#[doc(hidden)]
pub use diesel as __diesel;
pub use error::{Error, thorn_error};
pub use migrate::{MIGRATIONS, Migrate, Migrations, migrate};
pub use outbox::{DieselOutbox, OutboxConnection, Relay};
#[cfg(feature = "sqlite")]
pub use sql::SqliteBusyTimeout;
pub use statement::{
    BulkChange, M2m, RunWebhooksDsl, WebhookQueryDsl, WithWebhooks, WriteMany, WriteOne,
    m2m_changed,
};
pub use store::DieselStore;
pub use transaction::{TestTransaction, begin_test_transaction, transaction};
pub use update::{OldRowLock, OldRows, SetNotCalled, Update, update};

/// The traits that run statements with webhooks, for a glob import next
/// to Diesel's: `use thorn::diesel::prelude::*;`.
pub mod prelude {
    pub use crate::{RunWebhooksDsl, WebhookQueryDsl};
}
