//! Subscriptions in `thorn_subscribers`: [`SqlStore`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Connection, Database, Kind, Notice, OnNotice, Param, Row, Work, execute, placeholders, query,
};
use crate::outbox::now_micros;
use crate::schema::{SUBSCRIBERS_CHANNEL, SubscriberRecord, SubscriberStatus, owner_key};
use crate::subscriber::{BoxFuture, CachedStore, Replace, SubscriptionStore, candidate_patterns};
use crate::{Result, SenderId, Subscriber, SubscriberLookup};

/// The columns a [`Subscriber`] is read from and written to, in the order
/// of [`values`].
pub(crate) const COLUMNS: &str = "uuid, event, url, owner, hmac_secret, hmac_digest, \
    content_type, previous_secrets, standard_webhooks, created_at, updated_at, \
    disabled_at, disabled_reason";

/// The types of [`COLUMNS`].
pub(crate) const KINDS: [Kind; 13] = [
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Bool,
    Kind::Text,
    Kind::Text,
    Kind::BigInt,
    Kind::Text,
];

/// Writes a row for each recipient without one — a static or per-event
/// subscriber the outbox delivers to — marked `recipient_only` (never
/// matched, listed or changed as a subscription), or brings an existing
/// recipient row up to date. Rows of stored subscriptions are left alone.
pub(crate) async fn write_recipients(
    conn: &mut dyn Connection,
    recipients: &[&Subscriber],
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut params = Vec::new();
    for s in recipients {
        if seen.insert(s.uuid) {
            params.extend(values(s));
            params.push(Param::Bool(Some(true)));
        }
    }
    if params.is_empty() {
        return Ok(());
    }
    let columns = format!("{COLUMNS}, recipient_only");
    let template = format!("({})", placeholders(1, KINDS.len() + 1));
    super::insert_rows(
        conn,
        "thorn_subscribers",
        &columns,
        &template,
        " ON CONFLICT (uuid) DO UPDATE SET event = excluded.event, url = excluded.url, \
         owner = excluded.owner, hmac_secret = excluded.hmac_secret, \
         hmac_digest = excluded.hmac_digest, content_type = excluded.content_type, \
         previous_secrets = excluded.previous_secrets, \
         standard_webhooks = excluded.standard_webhooks, updated_at = excluded.updated_at \
         WHERE thorn_subscribers.recipient_only",
        params,
    )
    .await
}

/// Replaces a subscription's settings (`$1`–`$10`, [`settings_params`]),
/// selected by uuid (`$11`) and owner; an ownerless subscription is never
/// changed here. The disabled state is left as stored: `set_active` and
/// the workers change it.
const UPDATE_SETTINGS: &str = "UPDATE thorn_subscribers SET event = $1, url = $2, owner = $3, \
     hmac_secret = $4, hmac_digest = $5, content_type = $6, \
     previous_secrets = $7, standard_webhooks = $8, created_at = $9, updated_at = $10 \
     WHERE uuid = $11 AND owner = $3 AND NOT recipient_only";

/// The parameters of [`UPDATE_SETTINGS`] for `s`.
fn settings_params(s: &Subscriber) -> Vec<Param> {
    let mut params = values(s);
    let uuid = params.remove(0);
    params.truncate(KINDS.len() - 3);
    params.push(uuid);
    params
}

/// The values of [`COLUMNS`] for `s`.
fn values(s: &Subscriber) -> Vec<Param> {
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

/// The subscriber in `row`, whose columns from `at` on are [`COLUMNS`].
pub(crate) fn from_row(row: &Row, at: usize) -> Result<Subscriber> {
    Subscriber::try_from(SubscriberRecord {
        uuid: row.text(at)?,
        event: row.text(at + 1)?,
        url: row.text(at + 2)?,
        owner: row.opt_text(at + 3)?,
        hmac_secret: row.text(at + 4)?,
        hmac_digest: row.text(at + 5)?,
        content_type: row.text(at + 6)?,
        previous_secrets: row.text(at + 7)?,
        standard_webhooks: row.opt_bool(at + 8)?,
        created_at: row.text(at + 9)?,
        updated_at: row.text(at + 10)?,
        disabled_at: row.opt_int(at + 11)?,
        disabled_reason: row.opt_text(at + 12)?,
    })
}

async fn subscribers(
    conn: &mut dyn Connection,
    sql: &str,
    params: Vec<Param>,
) -> Result<Vec<Subscriber>> {
    query(conn, sql, params, &KINDS)
        .await?
        .iter()
        .map(|row| from_row(row, 0))
        .collect()
}

/// The active subscriptions that get `event` from `sender`: the candidate
/// patterns for no owner and, with a sender, for it — each case one range
/// of the `(owner, event)` index, so the cost follows the subscriptions
/// that match, not how many there are.
pub(crate) async fn matching(
    conn: &mut dyn Connection,
    event: &str,
    sender: Option<&SenderId>,
) -> Result<Vec<Subscriber>> {
    let mut params: Vec<Param> = Vec::with_capacity(5);
    candidate_patterns(event, |p| params.push(Param::from(p.to_owned())));
    let patterns = params.len();
    if let Some(sender) = sender {
        params.push(owner_key(sender).into());
    }
    subscribers(conn, &matching_sql(patterns, sender.is_some()), params).await
}

/// The statement of [`matching`]: `patterns` candidates in `$1`..., the
/// sender's owner key after them when `with_sender`.
pub(crate) fn matching_sql(patterns: usize, with_sender: bool) -> String {
    let list = placeholders(1, patterns);
    let of = |owner: &str| {
        format!(
            "SELECT {COLUMNS} FROM thorn_subscribers WHERE event IN ({list}) AND {owner} \
             AND disabled_at IS NULL AND NOT recipient_only"
        )
    };
    let mut sql = of("owner IS NULL");
    if with_sender {
        sql.push_str(" UNION ALL ");
        sql.push_str(&of(&format!("owner = ${}", patterns + 1)));
    }
    sql
}

/// `store` behind a [`CachedStore`] that `db` keeps fresh: what
/// [`SqlStore::cached`] does, for an integration's own wrapper of it
/// (thorn-diesel's `DieselStore`).
pub fn cache_watching<S, D: Database>(store: S, db: &D) -> CachedStore<S> {
    let cache = CachedStore::new(store);
    let control = cache.control();
    // Out of sync until the listener reports in (set before it starts, so
    // its first report cannot be overtaken).
    control.set_in_sync(false);
    let on: OnNotice = Arc::new(move |notice| match notice {
        Notice::Listening => control.set_in_sync(true),
        Notice::Notified => control.changed(),
        Notice::Lost => control.set_in_sync(false),
    });
    match db.listen(SUBSCRIBERS_CHANNEL, on) {
        Some(listener) => cache.watched_by(Box::new(listener)),
        None => {
            cache.control().set_in_sync(true);
            cache
        }
    }
}

/// Subscriptions stored in the application's database (SQLite or
/// PostgreSQL), through any ORM that provides a [`Database`].
///
/// Implements [`SubscriberLookup`] (who gets an event: the four pattern
/// lookups on an indexed column) and [`SubscriptionStore`] (the REST API's
/// create, read, update and delete). The ORM crates name it
/// `thorn::diesel::DieselStore` and `thorn::seaorm::SeaOrmStore`.
#[derive(Debug)]
pub struct SqlStore<D> {
    db: Arc<D>,
}

impl<D> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore {
            db: self.db.clone(),
        }
    }
}

impl<D> SqlStore<D> {
    /// The database.
    pub fn database(&self) -> &D {
        &self.db
    }
}

impl<D: Database> SqlStore<D> {
    /// A store over `db` (Thorn's migrations applied).
    pub fn new(db: impl Into<D>) -> Self {
        SqlStore {
            db: Arc::new(db.into()),
        }
    }

    fn run<T: Send + 'static>(&self, work: Work<T>) -> BoxFuture<'static, Result<T>> {
        self.db.run(work)
    }

    /// This store behind a [`CachedStore`], so a hot event finds its
    /// subscribers in memory. On PostgreSQL it holds one pooled connection
    /// with `LISTEN thorn_subscribers` (a trigger notifies it of every
    /// change to a subscription, from any process) and goes to the
    /// database for every lookup until that is in place or while it is
    /// lost. On SQLite it sees this cache's own writes at once and other
    /// writers' within [`CachedStore::max_age`]. Dropping the cache stops
    /// the listener.
    ///
    /// Call it within a tokio runtime when the integration's listener is
    /// a task (SeaORM's).
    pub fn cached(self) -> CachedStore<Self> {
        let db = self.db.clone();
        cache_watching(self, &*db)
    }

    /// Every subscription with its status, oldest first; only the
    /// disabled ones with `disabled_only`.
    pub fn statuses(
        &self,
        disabled_only: bool,
    ) -> BoxFuture<'static, Result<Vec<(Subscriber, SubscriberStatus)>>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let filter = if disabled_only {
                    " AND disabled_at IS NOT NULL"
                } else {
                    ""
                };
                let sql = format!(
                    "SELECT {COLUMNS}, failing_since \
                     FROM thorn_subscribers WHERE NOT recipient_only{filter} \
                     ORDER BY created_at ASC, uuid ASC"
                );
                let mut kinds = KINDS.to_vec();
                kinds.push(Kind::BigInt);
                query(conn, &sql, Vec::new(), &kinds)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok((
                            from_row(row, 0)?,
                            SubscriberStatus {
                                failing_since: row.opt_int(13)?,
                                disabled_at: row.opt_int(11)?,
                                disabled_reason: row.opt_text(12)?,
                            },
                        ))
                    })
                    .collect()
            })
        }))
    }

    /// Re-enables a disabled subscription, forgiving its failures so far;
    /// `false` when there is no such subscription.
    pub fn enable(&self, uuid: Uuid) -> BoxFuture<'static, Result<bool>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let n = execute(
                    conn,
                    "UPDATE thorn_subscribers \
                     SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL \
                     WHERE uuid = $1 AND NOT recipient_only",
                    vec![uuid.to_string().into()],
                )
                .await?;
                Ok(n == 1)
            })
        }))
    }
}

impl<D: Database> SubscriberLookup for SqlStore<D> {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        let event = event.to_owned();
        let sender = sender.cloned();
        self.run(Box::new(move |conn| {
            Box::pin(async move { matching(conn, &event, sender.as_ref()).await })
        }))
    }

    /// Disables the subscription (it stays listed, with its reason, until
    /// re-enabled or deleted).
    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                execute(
                    conn,
                    "UPDATE thorn_subscribers SET disabled_at = $1, disabled_reason = $2 \
                     WHERE uuid = $3 AND disabled_at IS NULL AND NOT recipient_only",
                    vec![
                        now_micros().into(),
                        "the receiver answered 410 Gone".into(),
                        subscriber.to_string().into(),
                    ],
                )
                .await?;
                Ok(())
            })
        }))
    }
}

impl<D: Database> SubscriptionStore for SqlStore<D> {
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
        let owner = owner_key(owner);
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {COLUMNS} FROM thorn_subscribers \
                     WHERE owner = $1 AND NOT recipient_only \
                     ORDER BY created_at ASC, uuid ASC"
                );
                subscribers(conn, &sql, vec![owner.into()]).await
            })
        }))
    }

    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>> {
        let owner = owner_key(owner);
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {COLUMNS} FROM thorn_subscribers \
                     WHERE uuid = $1 AND owner = $2 AND NOT recipient_only LIMIT 1"
                );
                Ok(
                    subscribers(conn, &sql, vec![uuid.to_string().into(), owner.into()])
                        .await?
                        .pop(),
                )
            })
        }))
    }

    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
        let params = values(&subscriber);
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO thorn_subscribers ({COLUMNS}) VALUES ({})",
                    placeholders(1, KINDS.len())
                );
                execute(conn, &sql, params).await?;
                Ok(())
            })
        }))
    }

    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        let params = settings_params(&subscriber);
        self.run(Box::new(move |conn| {
            Box::pin(async move { Ok(execute(conn, UPDATE_SETTINGS, params).await? == 1) })
        }))
    }

    fn update_if_unchanged(
        &self,
        subscriber: Subscriber,
        seen: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Replace>> {
        // Compared on the version as stored (whatever wrote its text), then
        // replaced only if it still is that text: one conditional UPDATE.
        let mut params = settings_params(&subscriber);
        let uuid = params[10].clone();
        let owner = params[2].clone();
        let id = subscriber.uuid.to_string();
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let rows = query(
                    conn,
                    "SELECT updated_at FROM thorn_subscribers \
                     WHERE uuid = $1 AND owner = $2 AND NOT recipient_only",
                    vec![uuid.clone(), owner],
                    &[Kind::Text],
                )
                .await?;
                let Some(row) = rows.first() else {
                    return Ok(Replace::Missing);
                };
                let stored = row.text(0)?;
                let as_read = DateTime::parse_from_rfc3339(&stored)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        crate::schema::corrupt("thorn_subscribers", &id, "updated_at", &e)
                    })?;
                if as_read != seen {
                    return Ok(Replace::Stale);
                }
                params.push(stored.into());
                let sql = format!("{UPDATE_SETTINGS} AND updated_at = $12");
                Ok(if execute(conn, &sql, params).await? == 1 {
                    Replace::Done
                } else {
                    Replace::Stale
                })
            })
        }))
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        let owner = owner_key(owner);
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let n = execute(
                    conn,
                    "DELETE FROM thorn_subscribers \
                     WHERE uuid = $1 AND owner = $2 AND NOT recipient_only",
                    vec![uuid.to_string().into(), owner.into()],
                )
                .await?;
                Ok(n == 1)
            })
        }))
    }

    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut params: Vec<Param> = vec![uuid.to_string().into(), owner_key(owner).into()];
        let sql = if active {
            // Resumed: its failures so far are forgiven.
            "UPDATE thorn_subscribers SET disabled_at = NULL, \
             disabled_reason = NULL, failing_since = NULL \
             WHERE uuid = $1 AND owner = $2 AND NOT recipient_only"
        } else {
            // An already disabled one keeps its reason.
            params.push(now_micros().into());
            params.push(reason.into());
            "UPDATE thorn_subscribers SET \
             disabled_at = COALESCE(disabled_at, $3), \
             disabled_reason = COALESCE(disabled_reason, $4) \
             WHERE uuid = $1 AND owner = $2 AND NOT recipient_only"
        };
        self.run(Box::new(move |conn| {
            Box::pin(async move { Ok(execute(conn, sql, params).await? == 1) })
        }))
    }
}
