//! The frame every write runs in, and the transactions Thorn manages.

use diesel::result::QueryResult;
use thorn_core::integration::{
    FrameKey, ManagedFrame, Parent, Raised, Scope, StoredEvent, ThornExt, WebhooksExt,
};
use thorn_core::{DispatchOn, Thorn, WebhookModel};

use crate::{Error, OutboxConnection};

/// Every write's frame: finds the scope the connection is in, refuses
/// events that could not follow it (before `body` runs the statement), and
/// runs `body`. When `body` needs a transaction (`atomic`) or an event
/// could fail the write after its statement ran (the outbox outside a
/// managed transaction, `propagate_errors`), `body` runs in a managed
/// transaction of its own — a savepoint inside the caller's — so an `Err`
/// leaves neither the row nor its events behind.
pub(crate) fn write<M, C, T>(
    thorn: &Thorn,
    conn: &mut C,
    on: DispatchOn,
    atomic: bool,
    body: impl FnOnce(&mut C, Scope) -> Result<(T, Raised), Error>,
) -> Result<T, Error>
where
    M: WebhookModel,
    C: OutboxConnection,
{
    let webhooks = M::webhooks();
    if !webhooks.fires_on(on) && !atomic {
        return body(conn, Scope::Own).map(|(value, _)| value);
    }
    let scope = scope_of(thorn, conn)?;
    webhooks.admit(thorn, on, scope)?;
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

/// Raises the events of `on` for each `(row, old row)` in `scope` and
/// writes the outbox rows left to write now through `conn`.
pub(crate) fn fire<'r, M: WebhookModel, C: OutboxConnection>(
    thorn: &Thorn,
    conn: &mut C,
    on: DispatchOn,
    rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
    context: Option<serde_json::Value>,
    scope: Scope,
) -> Result<Raised, Error> {
    let raised = M::webhooks().raise(thorn, on, rows, context, scope)?;
    write_rows(conn, raised.rows())?;
    Ok(raised)
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

/// Writes outbox rows through `conn`; a missing table names the
/// migration, a database error comes back as Diesel's own.
fn write_rows<C: OutboxConnection>(conn: &mut C, rows: &[StoredEvent]) -> Result<(), Error> {
    Ok(conn.thorn_write_events(rows)?)
}

/// Runs `f` in a database transaction that Thorn manages, as
/// [`diesel::Connection::transaction`] does — `BEGIN` (`BEGIN IMMEDIATE`
/// on SQLite, so that a transaction that reads and then writes waits for
/// other writers instead of failing with "database is locked"), then
/// `COMMIT` when `f` returns `Ok`, `ROLLBACK` when it returns `Err` — and
/// sends the model events raised inside only after the `COMMIT`
/// succeeded.
///
/// Nested calls are savepoints: the events raised inside one that rolls
/// back are discarded, the others kept. With the outbox
/// ([`Config::outbox`](thorn_core::Config::outbox)), the events of the
/// whole transaction are written as one multi-row `INSERT` just before
/// `COMMIT`, and this process's relay is woken after it.
///
/// The closure's error type converts from Diesel's error and from
/// [`Error`] (both of which `diesel::result::Error` and
/// `thorn::diesel::Error` do), as `Connection::transaction` asks.
///
/// Works on SQLite and PostgreSQL connections, r2d2-pooled ones included.
/// Writes through `thorn::diesel` inside a `conn.transaction(..)` that
/// Thorn does not manage are refused (with the in-memory default) or
/// written through at once (with the outbox): see
/// [`thorn_core::integration`].
///
/// ```
/// # use diesel::prelude::*;
/// use thorn::diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, title -> Text, author_id -> Integer } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(sender_field = author_id, on_create = "article.created")]
/// # struct Article { id: i32, title: String, author_id: i32 }
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
/// # let mut conn = SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)").execute(&mut conn)?;
/// let article = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
///     let article: Article = diesel::insert_into(articles::table)
///         .values((articles::title.eq("Hello"), articles::author_id.eq(7)))
///         .returning(Article::as_returning())
///         .with_webhooks(&thorn)
///         .get_result(conn)?;
///     // ... more writes; an Err here sends nothing
///     Ok::<_, thorn::diesel::Error>(article)
/// })?; // "article.created" leaves now, after COMMIT
/// # let _ = article;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn transaction<C, T, E, F>(thorn: &Thorn, conn: &mut C, f: F) -> Result<T, E>
where
    C: OutboxConnection,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<diesel::result::Error> + From<Error>,
{
    let (connection, depth) = transaction_state(conn)?;
    let parent = Parent::enclosing(scope_at(thorn, connection, depth));
    let mut frame = ManagedFrame::begin(thorn, FrameKey::new(connection, depth + 1), parent);
    let run = |conn: &mut C| {
        let value = f(conn)?;
        let rows = frame.before_commit().map_err(Error::from)?;
        write_rows(conn, &rows)?;
        Ok(value)
    };
    let value = if depth == 0 && conn.thorn_begin_immediate()? {
        // Begun as this database needs it; ended as Diesel ends its own.
        use diesel::connection::TransactionManager;
        match run(conn) {
            Ok(value) => {
                C::TransactionManager::commit_transaction(conn)?;
                value
            }
            Err(error) => {
                return match C::TransactionManager::rollback_transaction(conn) {
                    Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
                    Err(rollback) => Err(rollback.into()),
                };
            }
        }
    } else {
        conn.transaction::<T, E, _>(run)?
    };
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
/// use thorn::diesel::prelude::*;
/// # diesel::table! { articles (id) { id -> Integer, title -> Text, author_id -> Integer } }
/// # #[derive(Queryable, Selectable, thorn::WebhookModel)]
/// # #[diesel(table_name = articles)]
/// # #[webhook_model(sender_field = author_id, on_create = "article.created")]
/// # struct Article { id: i32, title: String, author_id: i32 }
/// # let thorn = thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() })?;
/// # let mut conn = SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER NOT NULL)").execute(&mut conn)?;
/// let _test = thorn::diesel::begin_test_transaction(&thorn, &mut conn)?;
/// let article: Article = diesel::insert_into(articles::table)
///     .values((articles::title.eq("Hello"), articles::author_id.eq(7)))
///     .returning(Article::as_returning())
///     .with_webhooks(&thorn)
///     .get_result(&mut conn)?; // "article.created" is sent, though nothing is ever committed
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
    _marker: ManagedFrame,
}
