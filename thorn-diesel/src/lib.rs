//! Diesel integration for Thorn for Rust.
//!
//! Diesel has no lifecycle hooks, so writes that should send webhooks go
//! through one call each for insert, update and delete. Each runs the Diesel
//! statement you built — with a `RETURNING` clause giving the model row —
//! and then sends the model's events for the returned row:
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
//! The statements return what Diesel's `get_result` returns. Delivery runs
//! in the background on Thorn's dispatcher, so the call does not wait for
//! any receiver. A payload that cannot be encoded is logged (with the event
//! name) and does not fail the write.
//!
//! **Not built yet:** events raised inside `conn.transaction(...)` are sent
//! right after the statement, not at commit (the transactional outbox
//! arrives in a later release); fetching the old row for `now_` filters
//! (pass it to [`update_from`] for now), `propagate_errors`, many-to-many
//! helpers, bulk statements and PostgreSQL tests likewise.

use diesel::Connection;
use diesel::query_dsl::LoadQuery;
use diesel::result::QueryResult;
use thorn_core::{DispatchOn, Thorn, WebhookModel};

/// Runs an `INSERT ... RETURNING` statement and sends the model's create
/// events for the inserted row.
pub fn insert<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<M>
where
    M: WebhookModel,
    C: Connection,
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
    C: Connection,
    Q: LoadQuery<'q, C, M>,
{
    let webhooks = M::webhooks();
    if webhooks.needs_old_row(DispatchOn::Change) {
        return Err(diesel::result::Error::QueryBuilderError(
            format!(
                "{} has change events with now_ filters: call thorn_diesel::update_from with the row as it was before",
                webhooks.model()
            )
            .into(),
        ));
    }
    run(thorn, conn, statement, DispatchOn::Change)
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
    C: Connection,
    Q: LoadQuery<'q, C, M>,
{
    let row = diesel::RunQueryDsl::get_result(statement, conn)?;
    fire(thorn, DispatchOn::Change, &row, Some(old));
    Ok(row)
}

/// Runs a `DELETE ... RETURNING` statement (for one row) and sends the
/// model's delete events for the deleted row.
pub fn delete<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q) -> QueryResult<M>
where
    M: WebhookModel,
    C: Connection,
    Q: LoadQuery<'q, C, M>,
{
    run(thorn, conn, statement, DispatchOn::Delete)
}

fn run<'q, M, C, Q>(thorn: &Thorn, conn: &mut C, statement: Q, on: DispatchOn) -> QueryResult<M>
where
    M: WebhookModel,
    C: Connection,
    Q: LoadQuery<'q, C, M>,
{
    let row = diesel::RunQueryDsl::get_result(statement, conn)?;
    fire(thorn, on, &row, None);
    Ok(row)
}

fn fire<M: WebhookModel>(thorn: &Thorn, on: DispatchOn, row: &M, old: Option<&M>) {
    let webhooks = M::webhooks();
    for fired in webhooks.dispatch(thorn, on, row, old) {
        if let Err(error) = fired.result {
            tracing::error!(model = webhooks.model(), event = fired.event.key(), %error, "webhook not sent");
        }
    }
}
