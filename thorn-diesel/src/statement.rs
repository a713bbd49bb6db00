//! Diesel statements that send webhooks: `.with_webhooks(&thorn)` on an
//! insert, update or delete, then `.get_result(conn)` or
//! `.get_results(conn)`.

use diesel::query_builder::{DeleteStatement, InsertStatement, UpdateStatement};
use diesel::query_dsl::LoadQuery;
use diesel::query_source::QuerySource;
use thorn_core::integration::{Raised, WebhooksExt};
use thorn_core::{ContentType, DispatchOn, Relation, Thorn, WebhookModel};

use crate::transaction::{fire, write};
use crate::update::Update;
use crate::{Error, OutboxConnection};

/// `.with_webhooks(&thorn)` on Diesel's insert, update and delete
/// statements: the statement then sends the events of the rows it returns
/// (the kind of event follows the statement: an `INSERT` sends create
/// events, an `UPDATE` change events, a `DELETE` delete events).
///
/// Only those statements have it, so a `SELECT` does not compile:
///
/// ```compile_fail
/// # use diesel::prelude::*;
/// use thorn::diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, title -> Text } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(on_delete = "article.removed")]
/// # struct Article { id: i32, title: String }
/// # fn f(thorn: &thorn::Thorn, conn: &mut SqliteConnection) {
/// let _: Vec<Article> = articles::table
///     .select(Article::as_select())
///     .with_webhooks(thorn)
///     .get_results(conn)
///     .unwrap();
/// # }
/// ```
pub trait WebhookQueryDsl: Sized + private::Statement {
    /// This statement, sending the events of the rows it returns through
    /// `thorn`. Run it with [`RunWebhooksDsl`].
    fn with_webhooks(self, thorn: &Thorn) -> WithWebhooks<'_, Self> {
        WithWebhooks {
            thorn,
            statement: self,
        }
    }
}

impl<S: private::Statement> WebhookQueryDsl for S {}

/// An insert, update or delete that sends webhooks, from
/// [`WebhookQueryDsl::with_webhooks`]; run it with [`RunWebhooksDsl`].
#[derive(Debug)]
#[must_use = "statements run only when calling `get_result` or `get_results`"]
pub struct WithWebhooks<'t, S> {
    thorn: &'t Thorn,
    statement: S,
}

impl<'t, T: QuerySource, U, Op, Ret> WithWebhooks<'t, InsertStatement<T, U, Op, Ret>> {
    /// This insert into a join table links `instance` to related rows
    /// through `relation`: it returns the related keys and sends the
    /// `m2m_add(relation)` events once, with the context
    /// `{"relation": ..., "related": [keys]}`; nothing when no row was
    /// linked.
    pub fn linking<'a, M: WebhookModel>(
        self,
        instance: &'a M,
        relation: Relation<M>,
    ) -> M2m<'t, 'a, InsertStatement<T, U, Op, Ret>, M> {
        self.m2m(instance, relation.added())
    }
}

impl<'t, T: QuerySource, U, Ret> WithWebhooks<'t, DeleteStatement<T, U, Ret>> {
    /// This delete from a join table unlinks some of `instance`'s related
    /// rows: it returns their keys and sends the `m2m_remove(relation)`
    /// events once; nothing when no row was unlinked.
    pub fn unlinking<'a, M: WebhookModel>(
        self,
        instance: &'a M,
        relation: Relation<M>,
    ) -> M2m<'t, 'a, DeleteStatement<T, U, Ret>, M> {
        self.m2m(instance, relation.removed())
    }

    /// This delete of all of `instance`'s join rows clears `relation`: it
    /// returns the keys that were linked and sends the
    /// `m2m_clear(relation)` events once; nothing when none was.
    pub fn clearing<'a, M: WebhookModel>(
        self,
        instance: &'a M,
        relation: Relation<M>,
    ) -> M2m<'t, 'a, DeleteStatement<T, U, Ret>, M> {
        self.m2m(instance, relation.cleared())
    }
}

impl<'t, S> WithWebhooks<'t, S> {
    fn m2m<'a, M>(self, instance: &'a M, on: DispatchOn) -> M2m<'t, 'a, S, M> {
        M2m {
            thorn: self.thorn,
            statement: self.statement,
            instance,
            on,
        }
    }
}

/// A change to a many-to-many relation that sends webhooks, from
/// [`WithWebhooks::linking`], [`unlinking`](WithWebhooks::unlinking) or
/// [`clearing`](WithWebhooks::clearing); run it with
/// [`RunWebhooksDsl::get_results`].
#[derive(Debug)]
#[must_use = "statements run only when calling `get_results`"]
pub struct M2m<'t, 'a, S, M> {
    pub(crate) thorn: &'t Thorn,
    pub(crate) statement: S,
    pub(crate) instance: &'a M,
    pub(crate) on: DispatchOn,
}

/// Runs statements that send webhooks, as Diesel's `RunQueryDsl` runs
/// statements: `get_result` for one row, `get_results` for every row the
/// statement returns (one event per row).
///
/// Events leave after the transaction the statement ran in commits (see
/// [`transaction`](crate::transaction)); a write whose events could fail
/// after its statement runs in a savepoint of its own, so an `Err` means
/// nothing was written.
pub trait RunWebhooksDsl: Sized + private::Runnable {
    /// Runs the statement, returns the row it wrote, and sends its events.
    fn get_result<M, C>(self, conn: &mut C) -> Result<M, Error>
    where
        Self: WriteOne<C, M>,
    {
        self.write_one(conn)
    }

    /// Runs the statement, returns every row it wrote, and sends the
    /// events of each (with the outbox, written in one statement).
    fn get_results<M, C>(self, conn: &mut C) -> Result<Vec<M>, Error>
    where
        Self: WriteMany<C, M>,
    {
        self.write_many(conn)
    }
}

impl<S> RunWebhooksDsl for WithWebhooks<'_, S> {}
impl<S, M> RunWebhooksDsl for M2m<'_, '_, S, M> {}

/// Statements that write one row and return it (implemented for the
/// statements [`WebhookQueryDsl`] accepts; not for you to implement).
#[doc(hidden)]
pub trait WriteOne<C, M> {
    fn write_one(self, conn: &mut C) -> Result<M, Error>;
}

/// Statements that write any number of rows and return them.
#[doc(hidden)]
pub trait WriteMany<C, M> {
    fn write_many(self, conn: &mut C) -> Result<Vec<M>, Error>;
}

/// Models whose updates need no old row: their change events have no
/// `now_` filters. `#[derive(WebhookModel)]` implements it for them.
///
/// Any Diesel update of such a model sends webhooks, bulk ones too. A
/// model with `now_` filters updates one row at a time through
/// [`thorn::diesel::update`](crate::update()), which loads the row as it
/// was from the statement's own target:
///
/// ```compile_fail
/// # use diesel::prelude::*;
/// use thorn::diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, state -> Text } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")))]
/// # struct Article { id: i32, state: String }
/// # fn f(thorn: &thorn::Thorn, conn: &mut SqliteConnection) {
/// let _: Vec<Article> = thorn::diesel::update(articles::table)
///     .set(articles::state.eq("PUBLISHED"))
///     .returning(Article::as_returning())
///     .with_webhooks(thorn)
///     .get_results(conn) // error: `Article` has change events with `now_` filters
///     .unwrap();
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has change events with `now_` filters, which compare each row with the row as it was",
    label = "Thorn loads the old row for one row at a time",
    note = "update one row with `thorn::diesel::update(target).set(..).with_webhooks(&thorn).get_result(conn)`: it loads the old row from the statement's target"
)]
pub trait BulkChange: WebhookModel {}

#[doc(hidden)]
#[macro_export]
macro_rules! __bulk_change {
    ($model:ty) => {
        #[automatically_derived]
        impl $crate::BulkChange for $model {}
    };
}

/// Diesel's statements that return rows of `M`, and the event each sends:
/// inserts create, deletes delete, and updates change (of models that
/// need no old row, [`BulkChange`]).
macro_rules! returning {
    ($statement:ident<$($param:ident),*>, $model:path, $on:expr) => {
        impl<'q, $($param,)* C, M> WriteOne<C, M> for WithWebhooks<'_, $statement<$($param),*>>
        where
            T: QuerySource,
            M: $model,
            C: OutboxConnection,
            $statement<$($param),*>: LoadQuery<'q, C, M>,
        {
            fn write_one(self, conn: &mut C) -> Result<M, Error> {
                write_returned(self.thorn, conn, self.statement, $on, One)
            }
        }

        impl<'q, $($param,)* C, M> WriteMany<C, M> for WithWebhooks<'_, $statement<$($param),*>>
        where
            T: QuerySource,
            M: $model,
            C: OutboxConnection,
            $statement<$($param),*>: LoadQuery<'q, C, M>,
        {
            fn write_many(self, conn: &mut C) -> Result<Vec<M>, Error> {
                write_returned(self.thorn, conn, self.statement, $on, Many)
            }
        }
    };
}

returning!(InsertStatement<T, U, Op, Ret>, WebhookModel, DispatchOn::Create);
returning!(DeleteStatement<T, U, Ret>, WebhookModel, DispatchOn::Delete);
returning!(UpdateStatement<T, U, V, Ret>, BulkChange, DispatchOn::Change);

impl<'q, T, W, S, C, M> WriteMany<C, M> for WithWebhooks<'_, Update<T, W, S>>
where
    M: BulkChange,
    C: OutboxConnection,
    S: LoadQuery<'q, C, M>,
{
    fn write_many(self, conn: &mut C) -> Result<Vec<M>, Error> {
        let statement = self.statement.into_statement();
        write_returned(self.thorn, conn, statement, DispatchOn::Change, Many)
    }
}

impl<'t, S> WithWebhooks<'t, S> {
    pub(crate) fn into_parts(self) -> (&'t Thorn, S) {
        (self.thorn, self.statement)
    }
}

/// How many rows a statement's caller takes: Diesel's `get_result` or
/// `get_results`.
pub(crate) trait Rows<M> {
    type Output;
    fn load<'q, C, Q: LoadQuery<'q, C, M>>(
        &self,
        statement: Q,
        conn: &mut C,
    ) -> Result<Vec<M>, Error>;
    fn output(rows: Vec<M>) -> Self::Output;
}

pub(crate) struct One;
pub(crate) struct Many;

impl<M> Rows<M> for One {
    type Output = M;
    fn load<'q, C, Q: LoadQuery<'q, C, M>>(
        &self,
        statement: Q,
        conn: &mut C,
    ) -> Result<Vec<M>, Error> {
        Ok(vec![diesel::RunQueryDsl::get_result(statement, conn)?])
    }
    fn output(mut rows: Vec<M>) -> M {
        rows.pop().expect("one row")
    }
}

impl<M> Rows<M> for Many {
    type Output = Vec<M>;
    fn load<'q, C, Q: LoadQuery<'q, C, M>>(
        &self,
        statement: Q,
        conn: &mut C,
    ) -> Result<Vec<M>, Error> {
        Ok(diesel::RunQueryDsl::get_results(statement, conn)?)
    }
    fn output(rows: Vec<M>) -> Vec<M> {
        rows
    }
}

/// Runs a statement that returns model rows and sends the events of `on`
/// for each (no old row).
fn write_returned<'q, M, C, Q, R>(
    thorn: &Thorn,
    conn: &mut C,
    statement: Q,
    on: DispatchOn,
    rows: R,
) -> Result<R::Output, Error>
where
    M: WebhookModel,
    C: OutboxConnection,
    Q: LoadQuery<'q, C, M>,
    R: Rows<M>,
{
    write::<M, C, R::Output>(thorn, conn, on, false, |conn, scope| {
        let written = rows.load(statement, conn)?;
        let raised = fire(
            thorn,
            conn,
            on,
            written.iter().map(|r| (r, None)),
            None,
            scope,
        )?;
        Ok((R::output(written), raised))
    })
}

impl<'q, S, M, C, R> WriteMany<C, R> for M2m<'_, '_, S, M>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
    S: LoadQuery<'q, C, R>,
{
    fn write_many(self, conn: &mut C) -> Result<Vec<R>, Error> {
        m2m_changed(self.thorn, conn, self.instance, self.on, |conn| {
            diesel::RunQueryDsl::get_results(self.statement, conn)
        })
    }
}

/// The many-to-many engine, for links made by code of your own: runs
/// `change` (which links or unlinks, and returns the related keys) and
/// sends the events of `on` (`Article::TAGS.added()`, `.removed()`,
/// `.cleared()`) once, with those keys, in one transaction (a savepoint
/// inside the caller's). Use it where one statement cannot return every
/// key, such as several single-row inserts on SQLite. A key that cannot
/// be encoded is an error, and the change is rolled back.
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
/// let tags = thorn::diesel::m2m_changed(&thorn, &mut conn, &article, Article::TAGS.added(), |conn| {
///     for tag in [3, 4] {
///         diesel::insert_into(article_tags::table)
///             .values((article_tags::article_id.eq(article.id), article_tags::tag_id.eq(tag)))
///             .execute(conn)?;
///     }
///     Ok(vec![3, 4])
/// })?; // "article.tagged" is sent once, with {"relation": "tags", "related": [3, 4]}
/// # assert_eq!(tags, [3, 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn m2m_changed<M, R, C>(
    thorn: &Thorn,
    conn: &mut C,
    instance: &M,
    on: DispatchOn,
    change: impl FnOnce(&mut C) -> diesel::result::QueryResult<Vec<R>>,
) -> Result<Vec<R>, Error>
where
    M: WebhookModel,
    R: serde::Serialize,
    C: OutboxConnection,
{
    let webhooks = M::webhooks();
    webhooks.check_m2m(on)?;
    // `change` may run several statements: all or none.
    write::<M, C, Vec<R>>(thorn, conn, on, true, |conn, scope| {
        let related: Vec<R> = change(conn)?;
        let mut raised = Raised::default();
        if let Some(context) = m2m_context::<M, R>(on, &related)? {
            raised = fire(thorn, conn, on, [(instance, None)], Some(context), scope)?;
        }
        Ok((related, raised))
    })
}

/// The context of a many-to-many change's events, `{"relation": ..,
/// "related": [keys]}`; none when no key changed. A key that cannot be
/// encoded is an error.
pub(crate) fn m2m_context<M: WebhookModel, R: serde::Serialize>(
    on: DispatchOn,
    related: &[R],
) -> Result<Option<serde_json::Value>, thorn_core::Error> {
    if related.is_empty() {
        return Ok(None);
    }
    let webhooks = M::webhooks();
    let keys = related
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| thorn_core::Error::Encode {
            event: format!(
                "{} ({} keys)",
                webhooks.model(),
                on.relation().unwrap_or_default()
            ),
            content_type: ContentType::Json,
            source,
        })?;
    Ok(Some(webhooks.m2m_context(on, &keys)))
}

mod private {
    use super::*;

    /// The statements that can send webhooks.
    pub trait Statement {}
    impl<T: QuerySource, U, Op, Ret> Statement for InsertStatement<T, U, Op, Ret> {}
    impl<T: QuerySource, U, V, Ret> Statement for UpdateStatement<T, U, V, Ret> {}
    impl<T: QuerySource, U, Ret> Statement for DeleteStatement<T, U, Ret> {}
    impl<T, W, S> Statement for Update<T, W, S> {}

    /// What [`RunWebhooksDsl`] runs.
    pub trait Runnable {}
    impl<S> Runnable for WithWebhooks<'_, S> {}
    impl<S, M> Runnable for M2m<'_, '_, S, M> {}
}
