//! `thorn::diesel::update`: Diesel's `update`, keeping the statement's
//! target so Thorn can load the row as it was before the change.

use diesel::associations::HasTable;
use diesel::backend::Backend;
use diesel::expression::Expression;
use diesel::query_builder::{
    AsChangeset, AstPass, IntoUpdateTarget, Query, QueryFragment, QueryId, UpdateStatement,
    UpdateTarget,
};
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::query_source::{QuerySource, Table};
use diesel::result::QueryResult;
use diesel::{Selectable, SelectableHelper};
use thorn_core::{DispatchOn, WebhookModel};

use crate::statement::{WithWebhooks, WriteOne};
use crate::transaction::{fire, write};
use crate::{Error, OutboxConnection};

/// Diesel's [`update`](diesel::update()), for a model whose change events
/// compare with the row as it was (`state.now_eq("PUBLISHED")`): it takes
/// the same targets (a table, `table.filter(..)`, `table.find(key)`, a
/// `&row` that is `Identifiable`) and builds the same statement, and it
/// keeps the target, so that
/// [`.with_webhooks(&thorn).get_result(conn)`](crate::RunWebhooksDsl)
/// first loads the stored row from that target, in the same transaction
/// (`SELECT ... FOR UPDATE` on PostgreSQL, so no concurrent writer slips
/// in between), and the filters compare against it. The key is given
/// once, in the target.
///
/// For models without such filters it runs exactly Diesel's statement (no
/// extra query), as `diesel::update(..).with_webhooks(..)` does.
///
/// ```
/// # use diesel::prelude::*;
/// use thorn::diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, state -> Text } }
/// #[derive(Queryable, Selectable, Identifiable, thorn::WebhookModel)]
/// #[diesel(table_name = articles)]
/// #[webhook_model(on_publish(name = "article.published", dispatches_on = change,
///                            filter = state.now_eq("PUBLISHED")))]
/// struct Article { id: i32, state: String }
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
/// # let mut conn = SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, state TEXT NOT NULL)").execute(&mut conn)?;
/// # diesel::sql_query("INSERT INTO articles VALUES (1, 'DRAFT')").execute(&mut conn)?;
/// # let article = Article { id: 1, state: "DRAFT".into() };
/// let published: Article = thorn::diesel::update(&article)
///     .set(articles::state.eq("PUBLISHED"))
///     .returning(Article::as_returning())
///     .with_webhooks(&thorn)
///     .get_result(&mut conn)?; // "article.published": it was DRAFT in the database
/// # assert_eq!(published.state, "PUBLISHED");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Its `get_result` refuses a target that matches more than one row
/// before anything is written; `get_results` (bulk) compiles only for
/// models without `now_` filters ([`BulkChange`](crate::BulkChange)).
pub fn update<Target: IntoUpdateTarget>(
    target: Target,
) -> Update<Target::Table, Target::WhereClause, SetNotCalled> {
    let UpdateTarget {
        table,
        where_clause,
    } = target.into_update_target();
    Update {
        table,
        where_clause,
        statement: SetNotCalled,
    }
}

/// An `UPDATE` that keeps its target: from [`update`](crate::update()).
#[derive(Debug, Clone)]
#[must_use = "statements run only when calling `get_result` or `get_results`"]
pub struct Update<T, W, S> {
    pub(crate) table: T,
    pub(crate) where_clause: W,
    pub(crate) statement: S,
}

/// An [`Update`] whose `.set(..)` is still to come.
#[derive(Debug, Clone, Copy)]
pub struct SetNotCalled;

impl<T, W> Update<T, W, SetNotCalled>
where
    T: Table + HasTable<Table = T>,
    W: Clone,
{
    /// The changes, as Diesel's [`UpdateStatement::set`] takes them.
    pub fn set<V>(self, values: V) -> Update<T, W, UpdateStatement<T, W, V::Changeset>>
    where
        V: AsChangeset<Target = T>,
        UpdateStatement<T, W, V::Changeset>: diesel::query_builder::AsQuery,
    {
        let target = Target {
            table: T::table(),
            where_clause: self.where_clause.clone(),
        };
        Update {
            table: self.table,
            where_clause: self.where_clause,
            statement: diesel::update(target).set(values),
        }
    }
}

impl<T, W, U, V> Update<T, W, UpdateStatement<T, U, V>>
where
    T: Table,
{
    /// What the statement returns, as Diesel's
    /// [`UpdateStatement::returning`] takes it: usually
    /// `Model::as_returning()`.
    pub fn returning<E>(
        self,
        returns: E,
    ) -> Update<T, W, diesel::dsl::Returning<UpdateStatement<T, U, V>, E>>
    where
        diesel::dsl::Returning<UpdateStatement<T, U, V>, E>: Query,
    {
        Update {
            table: self.table,
            where_clause: self.where_clause,
            statement: self.statement.returning(returns),
        }
    }
}

impl<T, W, S> Update<T, W, S> {
    pub(crate) fn into_statement(self) -> S {
        self.statement
    }

    /// The rows this update's target matches, as they are now (`select`
    /// is the model's columns).
    pub(crate) fn old_rows<E>(&self, select: E) -> OldRows<T, W, E>
    where
        T: QuerySource,
        W: Clone,
    {
        OldRows {
            select,
            from: self.table.from_clause(),
            where_clause: self.where_clause.clone(),
        }
    }
}

/// A target handed back to Diesel's `update`.
struct Target<T, W> {
    table: T,
    where_clause: W,
}

impl<T: Table + HasTable<Table = T>, W> HasTable for Target<T, W> {
    type Table = T;
    fn table() -> T {
        T::table()
    }
}

impl<T: Table + HasTable<Table = T>, W> IntoUpdateTarget for Target<T, W> {
    type WhereClause = W;
    fn into_update_target(self) -> UpdateTarget<T, W> {
        UpdateTarget {
            table: self.table,
            where_clause: self.where_clause,
        }
    }
}

/// Backends Thorn loads old rows on, and how it locks them.
#[doc(hidden)]
pub trait OldRowLock: Backend {
    const FOR_UPDATE: &'static str;
}

#[cfg(feature = "sqlite")]
impl OldRowLock for diesel::sqlite::Sqlite {
    // One writer at a time: a read made stale by another writer fails the
    // update (SQLITE_BUSY_SNAPSHOT) instead of comparing with it.
    const FOR_UPDATE: &'static str = "";
}

#[cfg(any(feature = "postgres", feature = "async-postgres"))]
impl OldRowLock for diesel::pg::Pg {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
}

/// `SELECT <model> FROM <table> <the update's WHERE> LIMIT 2 [FOR UPDATE]`.
#[doc(hidden)]
pub struct OldRows<T: QuerySource, W, E> {
    pub(crate) select: E,
    pub(crate) from: T::FromClause,
    pub(crate) where_clause: W,
}

impl<T: QuerySource, W, E> QueryId for OldRows<T, W, E> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T: QuerySource, W, E: Expression> Query for OldRows<T, W, E> {
    type SqlType = E::SqlType;
}

impl<T: QuerySource, W, E, C> RunQueryDsl<C> for OldRows<T, W, E> {}

impl<T, W, E, DB> QueryFragment<DB> for OldRows<T, W, E>
where
    DB: OldRowLock,
    T: QuerySource,
    T::FromClause: QueryFragment<DB>,
    W: QueryFragment<DB>,
    E: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("SELECT ");
        self.select.walk_ast(out.reborrow())?;
        out.push_sql(" FROM ");
        self.from.walk_ast(out.reborrow())?;
        self.where_clause.walk_ast(out.reborrow())?;
        out.push_sql(" LIMIT 2");
        out.push_sql(DB::FOR_UPDATE);
        Ok(())
    }
}

impl<'q, T, W, S, C, M, DB> WriteOne<C, M> for WithWebhooks<'_, Update<T, W, S>>
where
    T: Table,
    DB: OldRowLock,
    C: OutboxConnection<Backend = DB>,
    M: WebhookModel + Selectable<DB>,
    W: Clone,
    S: LoadQuery<'q, C, M>,
    OldRows<T, W, diesel::dsl::AsSelect<M, DB>>: LoadQuery<'q, C, M>,
{
    fn write_one(self, conn: &mut C) -> Result<M, Error> {
        let (thorn, update) = self.into_parts();
        let on = DispatchOn::Change;
        let needs_old = M::webhooks().needs_old_row(on);
        // The old row stays locked until the update: one transaction for both.
        write::<M, C, M>(thorn, conn, on, needs_old, |conn, scope| {
            let old = if needs_old {
                one_old_row(update.old_rows(M::as_select()).load(conn)?)?
            } else {
                None
            };
            let new: M = diesel::RunQueryDsl::get_result(update.statement, conn)?;
            let raised = fire(thorn, conn, on, [(&new, old.as_ref())], None, scope)?;
            Ok((new, raised))
        })
    }
}

/// The one row an update's target matched, as it was; more than one is
/// an error (a transition is judged row by row).
pub(crate) fn one_old_row<M: WebhookModel>(mut old: Vec<M>) -> Result<Option<M>, Error> {
    if old.len() > 1 {
        return Err(thorn_core::Error::BulkTransitions {
            model: M::webhooks().model(),
            fix: "the update's target matches more than one row; target one row \
                  (`thorn::diesel::update(&row)` or `table.find(key)`)",
        }
        .into());
    }
    Ok(old.pop())
}
