//! Subscriptions stored in the application's database, through SeaORM:
//! the `thorn_subscribers` table (created by [`crate::migrate`]).
//!
//! [`SeaOrmStore`] implements both [`SubscriberStore`] (finding who gets an
//! event, with the four pattern lookups on an indexed column) and
//! [`SubscriptionStore`] (the REST API's create/read/update/delete), on
//! SQLite and PostgreSQL alike.
//!
//! The table is the one `thorn-diesel` uses, with the same encodings: text
//! uuids, RFC 3339 timestamps with microseconds, the owner as its JSON
//! text and earlier secrets as a JSON array. Either integration reads the
//! rows the other wrote.

use std::fmt::Write as _;

use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult, Statement, TryGetable, Value};
use thorn_core::schema::{SubscriberRecord, owner_key};
use thorn_core::subscriber::{BoxFuture, SubscriptionStore, candidate_patterns};
use thorn_core::{Error, Result, SenderId, Subscriber, SubscriberStore};
use uuid::Uuid;

/// The columns a [`Subscriber`] is read from and written to, in the order
/// of [`subscriber_values`].
const COLUMNS: &str = "uuid, event, url, owner, hmac_secret, hmac_digest, content_type, \
                       previous_secrets, standard_webhooks, created_at, updated_at, \
                       disabled_at, disabled_reason";

/// How many values [`subscriber_values`] gives.
const COLUMN_COUNT: usize = 13;

/// Wraps a database error (or any other) as Thorn's store error.
pub(crate) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Store(Box::new(e))
}

/// `n` placeholders numbered from `from`, comma-separated (`$3, $4, $5`):
/// an `IN (...)` list or one row of `VALUES`.
///
/// PostgreSQL numbers its parameters this way, and SQLite reads `$N` as
/// parameter number `N` too (sqlx binds SQLite's `$N`/`?N` parameters by
/// their number), so one SQL text serves both databases.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    let mut sql = String::with_capacity(n * 5);
    for i in from..from + n {
        if i > from {
            sql.push_str(", ");
        }
        let _ = write!(sql, "${i}");
    }
    sql
}

/// `rows` tuples of `cols` placeholders each, numbered from `$1`:
/// `($1, $2), ($3, $4)`.
pub(crate) fn value_rows(rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * (cols * 5 + 4));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&placeholders(r * cols + 1, cols));
        sql.push(')');
    }
    sql
}

/// Runs a statement; returns how many rows it changed.
pub(crate) async fn execute<C: ConnectionTrait>(
    db: &C,
    sql: impl Into<String>,
    values: Vec<Value>,
) -> Result<u64> {
    let statement = Statement::from_sql_and_values(db.get_database_backend(), sql, values);
    db.execute_raw(statement)
        .await
        .map(|r| r.rows_affected())
        .map_err(store_err)
}

/// Runs a query (or a statement with `RETURNING`); returns its rows.
pub(crate) async fn query<C: ConnectionTrait>(
    db: &C,
    sql: impl Into<String>,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>> {
    let statement = Statement::from_sql_and_values(db.get_database_backend(), sql, values);
    db.query_all_raw(statement).await.map_err(store_err)
}

/// Reads column `col` of `row`.
pub(crate) fn column<T: TryGetable>(row: &QueryResult, col: &str) -> Result<T> {
    row.try_get::<T>("", col).map_err(store_err)
}

/// The values of [`COLUMNS`] for `s`.
fn subscriber_values(s: &Subscriber) -> Vec<Value> {
    let r = SubscriberRecord::from(s);
    vec![
        r.uuid.into(),
        r.event.into(),
        r.url.into(),
        r.owner.into(),
        r.hmac_secret.into(),
        r.hmac_digest.into(),
        r.content_type.into(),
        r.previous_secrets.into(),
        r.standard_webhooks.into(),
        r.created_at.into(),
        r.updated_at.into(),
        r.disabled_at.into(),
        r.disabled_reason.into(),
    ]
}

/// The subscriber in a row holding [`COLUMNS`].
fn subscriber_from_row(row: &QueryResult) -> Result<Subscriber> {
    Subscriber::try_from(SubscriberRecord {
        uuid: column(row, "uuid")?,
        event: column(row, "event")?,
        url: column(row, "url")?,
        owner: column(row, "owner")?,
        hmac_secret: column(row, "hmac_secret")?,
        hmac_digest: column(row, "hmac_digest")?,
        content_type: column(row, "content_type")?,
        previous_secrets: column(row, "previous_secrets")?,
        standard_webhooks: column(row, "standard_webhooks")?,
        created_at: column(row, "created_at")?,
        updated_at: column(row, "updated_at")?,
        disabled_at: column(row, "disabled_at")?,
        disabled_reason: column(row, "disabled_reason")?,
    })
}

fn subscribers_from_rows(rows: &[QueryResult]) -> Result<Vec<Subscriber>> {
    rows.iter().map(subscriber_from_row).collect()
}

pub use thorn_core::schema::SubscriberStatus;

/// Subscriptions in a SeaORM database (SQLite or PostgreSQL).
///
/// Cheap to clone: the connection is a pool.
#[derive(Debug, Clone)]
pub struct SeaOrmStore {
    db: DatabaseConnection,
}

impl SeaOrmStore {
    /// A store over `db` (run [`crate::migrate`] once first).
    pub fn new(db: DatabaseConnection) -> Self {
        SeaOrmStore { db }
    }

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Every subscription with its status, oldest first; only the
    /// disabled ones with `disabled_only`.
    pub async fn statuses(
        &self,
        disabled_only: bool,
    ) -> Result<Vec<(Subscriber, SubscriberStatus)>> {
        let filter = if disabled_only {
            " WHERE disabled_at IS NOT NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS}, failing_since \
             FROM thorn_subscribers{filter} ORDER BY created_at ASC, uuid ASC"
        );
        let rows = query(&self.db, sql, Vec::new()).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    subscriber_from_row(row)?,
                    SubscriberStatus {
                        failing_since: column(row, "failing_since")?,
                        disabled_at: column(row, "disabled_at")?,
                        disabled_reason: column(row, "disabled_reason")?,
                    },
                ))
            })
            .collect()
    }

    /// Re-enables a disabled subscription; `false` when there is no such
    /// subscription.
    pub async fn enable(&self, uuid: Uuid) -> Result<bool> {
        let n = execute(
            &self.db,
            "UPDATE thorn_subscribers \
             SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL \
             WHERE uuid = $1",
            vec![uuid.to_string().into()],
        )
        .await?;
        Ok(n == 1)
    }
}

impl SeaOrmStore {
    async fn matching(&self, event: &str, sender: Option<&SenderId>) -> Result<Vec<Subscriber>> {
        let mut values: Vec<Value> = candidate_patterns(event).map(Value::from).collect();
        let patterns = placeholders(1, values.len());
        let owner = match sender {
            Some(sender) => {
                values.push(owner_key(sender).into());
                format!("(owner IS NULL OR owner = ${})", values.len())
            }
            None => "owner IS NULL".to_owned(),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM thorn_subscribers \
             WHERE event IN ({patterns}) AND disabled_at IS NULL AND {owner}"
        );
        subscribers_from_rows(&query(&self.db, sql, values).await?)
    }

    async fn disable_gone(&self, subscriber: Uuid) -> Result<()> {
        execute(
            &self.db,
            "UPDATE thorn_subscribers SET disabled_at = $1, disabled_reason = $2 \
             WHERE uuid = $3 AND disabled_at IS NULL",
            vec![
                thorn_core::outbox::now_micros().into(),
                "the receiver answered 410 Gone".into(),
                subscriber.to_string().into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn owned_by(&self, owner: String) -> Result<Vec<Subscriber>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM thorn_subscribers WHERE owner = $1 \
             ORDER BY created_at ASC, uuid ASC"
        );
        subscribers_from_rows(&query(&self.db, sql, vec![owner.into()]).await?)
    }

    async fn one_owned_by(&self, owner: String, uuid: Uuid) -> Result<Option<Subscriber>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM thorn_subscribers WHERE uuid = $1 AND owner = $2 LIMIT 1"
        );
        let rows = query(&self.db, sql, vec![uuid.to_string().into(), owner.into()]).await?;
        rows.first().map(subscriber_from_row).transpose()
    }

    async fn insert_row(&self, values: Vec<Value>) -> Result<()> {
        let sql = format!(
            "INSERT INTO thorn_subscribers ({COLUMNS}) VALUES ({})",
            placeholders(1, COLUMN_COUNT)
        );
        execute(&self.db, sql, values).await?;
        Ok(())
    }

    /// `values`: every column but the key, then the key.
    async fn update_row(&self, values: Vec<Value>) -> Result<bool> {
        let n = execute(
            &self.db,
            "UPDATE thorn_subscribers SET event = $1, url = $2, owner = $3, \
             hmac_secret = $4, hmac_digest = $5, content_type = $6, \
             previous_secrets = $7, standard_webhooks = $8, created_at = $9, \
             updated_at = $10 \
             WHERE uuid = $11 AND owner = $3",
            values,
        )
        .await?;
        Ok(n == 1)
    }

    async fn delete_row(&self, owner: String, uuid: Uuid) -> Result<bool> {
        let n = execute(
            &self.db,
            "DELETE FROM thorn_subscribers WHERE uuid = $1 AND owner = $2",
            vec![uuid.to_string().into(), owner.into()],
        )
        .await?;
        Ok(n == 1)
    }
}

impl SubscriberStore for SeaOrmStore {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        Box::pin(self.matching(event, sender))
    }

    /// Disables the subscription (it stays listed, with its reason, until
    /// re-enabled or deleted).
    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.disable_gone(subscriber))
    }
}

impl SubscriptionStore for SeaOrmStore {
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
        Box::pin(self.owned_by(owner_key(owner)))
    }

    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>> {
        Box::pin(self.one_owned_by(owner_key(owner), uuid))
    }

    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.insert_row(subscriber_values(&subscriber)))
    }

    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        // The key and the owner select the row (an ownerless subscription
        // is never updated here).
        // The settings only: the disabled state (the last two values) is
        // left as stored, changed by `set_active` and the workers.
        let mut values = subscriber_values(&subscriber);
        let uuid = values.remove(0);
        values.truncate(COLUMN_COUNT - 3);
        values.push(uuid);
        Box::pin(self.update_row(values))
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.delete_row(owner_key(owner), uuid))
    }

    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        let key = vec![uuid.to_string().into(), owner_key(owner).into()];
        Box::pin(async move {
            let n = if active {
                // Resumed: its failures so far are forgiven.
                execute(
                    &self.db,
                    "UPDATE thorn_subscribers SET disabled_at = NULL, \
                     disabled_reason = NULL, failing_since = NULL \
                     WHERE uuid = $1 AND owner = $2",
                    key,
                )
                .await?
            } else {
                // An already disabled one keeps its reason.
                let mut values = key;
                values.push(thorn_core::outbox::now_micros().into());
                values.push(reason.into());
                execute(
                    &self.db,
                    "UPDATE thorn_subscribers SET \
                     disabled_at = COALESCE(disabled_at, $3), \
                     disabled_reason = COALESCE(disabled_reason, $4) \
                     WHERE uuid = $1 AND owner = $2",
                    values,
                )
                .await?
            };
            Ok(n == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
        assert_eq!(value_rows(2, 2), "($1, $2), ($3, $4)");
    }
}
