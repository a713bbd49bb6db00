//! Thorn's tables and every statement run on them, written once for SQLite
//! and PostgreSQL.
//!
//! The subscription store ([`SqlStore`]) and the outbox ([`SqlOutbox`])
//! are algorithms over a [`Connection`]: something that runs one statement
//! with positional parameters and returns rows. An ORM integration
//! implements [`Connection`] for its connections and [`Database`] for its
//! pool, and nothing else: the SQL, its encodings and the transactions'
//! shape live here, so a row written through Diesel reads back through
//! SeaORM and the other way round.
//!
//! Statements number their parameters `$1`, `$2`...; on SQLite they run as
//! `?1`, `?2`... ([`Dialect::sql`]).

use std::borrow::Cow;
use std::fmt;

use crate::subscriber::BoxFuture;
use crate::{Error, Result};

#[cfg(feature = "conformance")]
pub mod conformance;
mod listen;
pub(crate) mod outbox;
pub(crate) mod store;

pub use listen::{Listener, Notice, OnNotice, waking};
pub use outbox::SqlOutbox;
pub use store::{SqlStore, cache_watching};

/// The databases Thorn's SQL runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite 3.35 or newer (`RETURNING`).
    Sqlite,
    /// PostgreSQL 12 or newer.
    Postgres,
}

impl Dialect {
    /// `sql` with this database's placeholders: `$N` stays on PostgreSQL
    /// and becomes `?N` on SQLite.
    pub fn sql<'a>(self, sql: &'a str) -> Cow<'a, str> {
        match self {
            Dialect::Postgres => Cow::Borrowed(sql),
            Dialect::Sqlite => Cow::Owned(sql.replace('$', "?")),
        }
    }

    /// The row lock concurrent claimers take: `FOR UPDATE SKIP LOCKED` on
    /// PostgreSQL, nothing on SQLite (which serializes writers).
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }
}

/// A statement parameter, typed so PostgreSQL knows the type of a `NULL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// `TEXT`.
    Text(Option<String>),
    /// `BIGINT`.
    BigInt(Option<i64>),
    /// `INTEGER`.
    Int(Option<i32>),
    /// `BOOLEAN`.
    Bool(Option<bool>),
}

impl Param {
    /// About how many bytes the parameter takes on the wire.
    pub(crate) fn wire_size(&self) -> usize {
        match self {
            Param::Text(Some(s)) => s.len() + 4,
            _ => 8,
        }
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_owned()))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::BigInt(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::BigInt(v)
    }
}

impl From<i32> for Param {
    fn from(v: i32) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i32>> for Param {
    fn from(v: Option<i32>) -> Self {
        Param::Int(v)
    }
}

impl From<Option<bool>> for Param {
    fn from(v: Option<bool>) -> Self {
        Param::Bool(v)
    }
}

/// The SQL type of a result column, as a query declares it (every column
/// may be `NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `TEXT`.
    Text,
    /// `BIGINT` (and `COUNT(*)`).
    BigInt,
    /// `INTEGER`.
    Int,
    /// `BOOLEAN`.
    Bool,
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// Any integer column.
    Int(i64),
    /// A text column.
    Text(String),
    /// A boolean column.
    Bool(bool),
}

/// One result row: its values in the order of the query's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn value(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| row_error(i, "missing", &self.0.len()))
    }

    /// Column `i` as text; an error for `NULL` or another type.
    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| row_error(i, "NULL", &"text"))
    }

    /// Column `i` as text or `NULL`.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            other => Err(row_error(i, "not text", other)),
        }
    }

    /// Column `i` as an integer; an error for `NULL` or another type.
    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?
            .ok_or_else(|| row_error(i, "NULL", &"an integer"))
    }

    /// Column `i` as an integer or `NULL`.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(*n)),
            other => Err(row_error(i, "not an integer", other)),
        }
    }

    /// Column `i` as a boolean (SQLite's 0 and 1 included) or `NULL`.
    pub fn opt_bool(&self, i: usize) -> Result<Option<bool>> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            Value::Int(n) => Ok(Some(*n != 0)),
            other => Err(row_error(i, "not a boolean", other)),
        }
    }
}

fn row_error(i: usize, what: &str, detail: &dyn fmt::Debug) -> Error {
    Error::Store(format!("result column {i}: {what} ({detail:?})").into())
}

/// One database connection (or a transaction on one) Thorn's statements
/// run on. ORM integrations implement it; see the module docs.
///
/// Every method runs exactly one statement. A connection of a synchronous
/// ORM (Diesel) returns futures that are ready when first polled.
pub trait Connection: Send {
    /// Which database this is.
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns how many rows it changed. `sql` has `$N`
    /// placeholders already rewritten by [`Dialect::sql`].
    fn execute<'a>(&'a mut self, sql: &'a str, params: Vec<Param>) -> BoxFuture<'a, Result<u64>>;

    /// Runs a query (or a statement with `RETURNING`) whose columns have
    /// the types `columns`; returns its rows.
    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
        columns: &'a [Kind],
    ) -> BoxFuture<'a, Result<Vec<Row>>>;

    /// Runs a statement whose text is unlikely to repeat (a multi-row
    /// `INSERT` sized to its rows). A connection that keeps statements
    /// prepared (Diesel's cache keeps every text it prepares) runs this one
    /// unprepared; by default it is [`Connection::execute`].
    fn execute_once<'a>(
        &'a mut self,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, Result<u64>> {
        self.execute(sql, params)
    }

    /// The most bytes of values one multi-row `INSERT` should carry (when
    /// its rows allow); unbounded by default. SeaORM's sqlx does not set
    /// `TCP_NODELAY`: a message larger than the socket's first send buffer
    /// (16 KiB on Linux) is written in two parts, the second held back by
    /// Nagle's algorithm until PostgreSQL's delayed ACK, 40 ms later.
    fn max_statement_bytes(&self) -> usize {
        usize::MAX
    }

    /// Runs several statements without parameters (a migration).
    fn batch<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Opens a transaction (a savepoint when one is open).
    fn begin(&mut self) -> BoxFuture<'_, Result<()>>;

    /// Commits what [`Connection::begin`] opened.
    fn commit(&mut self) -> BoxFuture<'_, Result<()>>;

    /// Rolls back what [`Connection::begin`] opened.
    fn rollback(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// Work on one connection, as [`Database::run`] takes it.
pub type Work<T> =
    Box<dyn for<'c> FnOnce(&'c mut dyn Connection) -> BoxFuture<'c, Result<T>> + Send>;

/// Where Thorn's stores take connections from: an ORM's pool.
pub trait Database: Send + Sync + 'static {
    /// Which database this is.
    fn dialect(&self) -> Dialect;

    /// Runs `work` on a connection from the pool. Diesel runs it on a
    /// blocking thread; SeaORM on the caller's task.
    fn run<T: Send + 'static>(&self, work: Work<T>) -> BoxFuture<'static, Result<T>>;

    /// Holds a `LISTEN channel` connection from the pool, telling `notice`
    /// what it hears and when it is lost or back, until the returned
    /// [`Listener`] is dropped; `None` where the database has no
    /// notifications (SQLite). The default has none.
    fn listen(&self, channel: &'static str, notice: OnNotice) -> Option<Listener> {
        let _ = (channel, notice);
        None
    }
}

/// Runs `sql` with `params` on `conn`, placeholders rewritten for its
/// database.
pub(crate) async fn execute(
    conn: &mut dyn Connection,
    sql: &str,
    params: Vec<Param>,
) -> Result<u64> {
    let sql = conn.dialect().sql(sql);
    conn.execute(&sql, params).await
}

/// Runs the query `sql` with `params` on `conn`.
pub(crate) async fn query(
    conn: &mut dyn Connection,
    sql: &str,
    params: Vec<Param>,
    columns: &[Kind],
) -> Result<Vec<Row>> {
    let sql = conn.dialect().sql(sql);
    conn.query(&sql, params, columns).await
}

/// Runs `body` inside a transaction on `conn`: committed when it returns
/// `Ok`, rolled back otherwise. `body` is one call (an `.await`ed async
/// fn): a `?` inside the macro's argument would skip the rollback.
macro_rules! atomically {
    ($conn:ident, $body:expr) => {{
        $conn.begin().await?;
        match $body {
            Ok(value) => {
                $conn.commit().await?;
                Ok(value)
            }
            Err(error) => {
                let _ = $conn.rollback().await;
                Err(error)
            }
        }
    }};
}
pub(crate) use atomically;

/// `n` placeholders numbered from `from`, comma-separated (`$3, $4, $5`):
/// an `IN (...)` list or one row of `VALUES`.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(n * 5);
    for i in from..from + n {
        if i > from {
            sql.push_str(", ");
        }
        let _ = write!(sql, "${i}");
    }
    sql
}

/// `column` is one of `ids` (with `negate`, none of them) — ids that
/// contain no comma, such as uuids — its parameters pushed onto `params`.
///
/// On PostgreSQL the list is one text parameter split by
/// `string_to_array`, so the statement's text, and the plan prepared for
/// it, is the same for any number of ids; on SQLite (which prepares
/// locally) it is one placeholder per id.
pub(crate) fn in_list(
    dialect: Dialect,
    column: &str,
    negate: bool,
    ids: impl IntoIterator<Item = String>,
    params: &mut Vec<Param>,
) -> String {
    match dialect {
        Dialect::Postgres => {
            let mut list = String::new();
            for id in ids {
                debug_assert!(!id.contains(','), "an id with a comma: {id}");
                if !list.is_empty() {
                    list.push(',');
                }
                list.push_str(&id);
            }
            params.push(list.into());
            let op = if negate { "<> ALL" } else { "= ANY" };
            format!("{column} {op}(string_to_array(${}, ','))", params.len())
        }
        Dialect::Sqlite => {
            let from = params.len() + 1;
            params.extend(ids.into_iter().map(Param::from));
            let not = if negate { " NOT" } else { "" };
            format!(
                "{column}{not} IN ({})",
                placeholders(from, params.len() + 1 - from)
            )
        }
    }
}

/// The most rows one `INSERT` carries.
const ROWS_PER_INSERT: usize = 500;

/// `template` with each `$N` shifted to `$(N + offset)`.
fn renumber(template: &str, offset: usize, out: &mut String) {
    use std::fmt::Write as _;
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest.len() - at - 1, |n| n);
        match rest[at + 1..at + 1 + digits].parse::<usize>() {
            Ok(n) => {
                let _ = write!(out, "${}", n + offset);
            }
            Err(_) => out.push('$'),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
}

/// Runs `INSERT INTO {table} ({columns}) VALUES row, row...{tail}` for
/// `values`, each row `row` — a tuple whose placeholders `$1`..`$cols`
/// are that row's values — in statements of at most [`ROWS_PER_INSERT`]
/// rows and (unless one row is larger) [`Connection::max_statement_bytes`].
pub(crate) async fn insert_rows(
    conn: &mut dyn Connection,
    table: &str,
    columns: &str,
    row: &str,
    tail: &str,
    values: Vec<Param>,
) -> Result<()> {
    let cols = columns.split(',').count();
    let max_bytes = conn.max_statement_bytes();
    debug_assert_eq!(values.len() % cols, 0, "{table}: values are whole rows");
    // Rows per statement, decided in one pass; then the values move once.
    let mut statements = Vec::new();
    let (mut rows, mut bytes) = (0, 0_usize);
    for values in values.chunks(cols) {
        let size: usize = values.iter().map(Param::wire_size).sum();
        if rows == ROWS_PER_INSERT || (rows > 0 && bytes.saturating_add(size) > max_bytes) {
            statements.push(rows);
            (rows, bytes) = (0, 0);
        }
        rows += 1;
        bytes += size;
    }
    if rows > 0 {
        statements.push(rows);
    }
    let mut values = values.into_iter();
    for rows in statements {
        let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            renumber(row, r * cols, &mut sql);
        }
        sql.push_str(tail);
        let batch: Vec<Param> = values.by_ref().take(rows * cols).collect();
        let sql = conn.dialect().sql(&sql).into_owned();
        conn.execute_once(&sql, batch).await?;
    }
    Ok(())
}

/// A count or limit as a `BIGINT` parameter.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs a future that is ready when first polled — the statements of a
/// synchronous [`Connection`] — on the calling thread.
///
/// Fails (rather than blocks) when the future is not ready: a connection
/// that really waits must be driven by an async runtime.
pub fn ready<F: std::future::Future>(future: F) -> Result<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => Err(Error::Store(
            "a synchronous connection's statement did not complete when run".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_and_rewritten_for_sqlite() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(
            Dialect::Sqlite.sql("a = $1 AND b = $12"),
            "a = ?1 AND b = ?12"
        );
        assert_eq!(Dialect::Postgres.sql("a = $1"), "a = $1");
        let mut out = String::new();
        renumber("($1, f($2), $1)", 10, &mut out);
        assert_eq!(out, "($11, f($12), $11)");
    }

    #[test]
    fn id_lists_have_one_text_on_postgres() {
        let mut params = vec![Param::from(1_i64)];
        let ids = || ["a".to_owned(), "b".to_owned()];
        let sql = in_list(Dialect::Postgres, "id", false, ids(), &mut params);
        assert_eq!(sql, "id = ANY(string_to_array($2, ','))");
        assert_eq!(params[1], Param::from("a,b"));
        let mut params = vec![Param::from(1_i64)];
        let sql = in_list(Dialect::Sqlite, "id", true, ids(), &mut params);
        assert_eq!(sql, "id NOT IN ($2, $3)");
        assert_eq!(params.len(), 3);
    }

    #[test]
    fn rows_check_their_types() {
        let row = Row(vec![Value::Text("x".into()), Value::Null, Value::Int(1)]);
        assert_eq!(row.text(0).unwrap(), "x");
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert_eq!(row.opt_bool(2).unwrap(), Some(true));
        assert!(row.int(0).unwrap_err().to_string().contains("column 0"));
        assert!(row.text(1).is_err());
        assert!(row.text(3).is_err());
    }
}
