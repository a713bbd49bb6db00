//! Subscriptions stored in the application's database, through Diesel:
//! the `thorn_subscribers` table (created by [`crate::migrate()`]).
//!
//! [`DieselStore`] implements both [`SubscriberLookup`] (finding who gets an
//! event, with the four pattern lookups on an indexed column) and
//! [`SubscriptionStore`] (the REST API's create/read/update/delete). It
//! works on `SqliteConnection` and, with the `postgres` feature,
//! `PgConnection`, over an r2d2 pool; database calls run on tokio's
//! blocking threads so async callers are never blocked.
//!
//! Columns are portable types (text uuids and RFC 3339 timestamps, the
//! owner as its JSON text) so one schema serves both databases.

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use thorn_core::integration::schema::SubscriberRecord;
use thorn_core::integration::sql::{SqlStore, cache_watching, ready};
use thorn_core::subscriber::{BoxFuture, CachedStore, SubscriptionStore};
use thorn_core::{Error, Result, SenderId, Subscriber, SubscriberLookup};
use uuid::Uuid;

use crate::sql::{DieselDb, SqlConnection};

diesel::table! {
    /// Webhook subscriptions.
    thorn_subscribers (uuid) {
        /// Subscription id.
        uuid -> Text,
        /// Event pattern.
        event -> Text,
        /// Recipient URL.
        url -> Text,
        /// Owner's user id as JSON text (`7`, `"alice"`), or NULL.
        owner -> Nullable<Text>,
        /// HMAC secret.
        hmac_secret -> Text,
        /// `sha1`, `sha256` or `sha512`.
        hmac_digest -> Text,
        /// Body content type.
        content_type -> Text,
        /// Earlier secrets still accepted, JSON array.
        previous_secrets -> Text,
        /// Standard Webhooks headers on/off; NULL follows the configuration.
        standard_webhooks -> Nullable<Bool>,
        /// RFC 3339 creation time.
        created_at -> Text,
        /// RFC 3339 time of the last change.
        updated_at -> Text,
        /// Since when deliveries have been failing with no success in
        /// between (µs since the epoch), or NULL.
        failing_since -> Nullable<BigInt>,
        /// When the subscription was disabled (µs), or NULL while active.
        disabled_at -> Nullable<BigInt>,
        /// Why it was disabled.
        disabled_reason -> Nullable<Text>,
        /// A recipient's row (a static or per-event subscriber the outbox
        /// delivers to), not a subscription.
        recipient_only -> Bool,
    }
}

/// One row of `thorn_subscribers`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = thorn_subscribers)]
#[diesel(treat_none_as_null = true)]
pub struct SubscriberRow {
    /// Subscription id.
    pub uuid: String,
    /// Event pattern.
    pub event: String,
    /// Recipient URL.
    pub url: String,
    /// Owner as JSON text.
    pub owner: Option<String>,
    /// HMAC secret.
    pub hmac_secret: String,
    /// HMAC digest name.
    pub hmac_digest: String,
    /// Content type.
    pub content_type: String,
    /// Earlier secrets, JSON array.
    pub previous_secrets: String,
    /// Standard Webhooks switch.
    pub standard_webhooks: Option<bool>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it was disabled (µs since the epoch), or NULL while active.
    /// Changed only by `set_active` and the workers, never by `update`.
    #[diesel(skip_update)]
    pub disabled_at: Option<i64>,
    /// Why it was disabled.
    #[diesel(skip_update)]
    pub disabled_reason: Option<String>,
}

impl From<&Subscriber> for SubscriberRow {
    fn from(s: &Subscriber) -> Self {
        let r = SubscriberRecord::from(s);
        SubscriberRow {
            uuid: r.uuid,
            event: r.event,
            url: r.url,
            owner: r.owner,
            hmac_secret: r.hmac_secret,
            hmac_digest: r.hmac_digest,
            content_type: r.content_type,
            previous_secrets: r.previous_secrets,
            standard_webhooks: r.standard_webhooks,
            created_at: r.created_at,
            updated_at: r.updated_at,
            disabled_at: r.disabled_at,
            disabled_reason: r.disabled_reason,
        }
    }
}

impl TryFrom<SubscriberRow> for Subscriber {
    type Error = Error;

    fn try_from(r: SubscriberRow) -> Result<Self> {
        Subscriber::try_from(SubscriberRecord {
            uuid: r.uuid,
            event: r.event,
            url: r.url,
            owner: r.owner,
            hmac_secret: r.hmac_secret,
            hmac_digest: r.hmac_digest,
            content_type: r.content_type,
            previous_secrets: r.previous_secrets,
            standard_webhooks: r.standard_webhooks,
            created_at: r.created_at,
            updated_at: r.updated_at,
            disabled_at: r.disabled_at,
            disabled_reason: r.disabled_reason,
        })
    }
}

pub(crate) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Store(Box::new(e))
}

pub use thorn_core::integration::schema::SubscriberStatus;

/// Subscriptions in a Diesel database, over an r2d2 pool: Thorn's
/// [`SqlStore`] on [`DieselDb`].
///
/// As a [`SubscriberLookup`] and [`SubscriptionStore`] (what `Thorn` and
/// the REST API use) its statements run on tokio's blocking threads; its
/// own methods ([`DieselStore::statuses`], [`DieselStore::enable`]) run
/// on the calling thread.
pub struct DieselStore<C: R2D2Connection + 'static> {
    store: SqlStore<DieselDb<C>>,
}

impl<C: R2D2Connection + 'static> Clone for DieselStore<C> {
    fn clone(&self) -> Self {
        DieselStore {
            store: self.store.clone(),
        }
    }
}

impl<C: R2D2Connection + 'static> std::fmt::Debug for DieselStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselStore")
            .field("db", self.store.database())
            .finish()
    }
}

impl<C: SqlConnection> DieselStore<C> {
    /// A store over `pool` (run [`crate::migrate()`] once first).
    pub fn new(pool: Pool<ConnectionManager<C>>) -> Self {
        DieselStore {
            store: SqlStore::new(DieselDb::new(pool)),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<ConnectionManager<C>> {
        self.store.database().pool()
    }

    /// This store behind a [`CachedStore`], so a hot event finds its
    /// subscribers in memory: on PostgreSQL with a thread holding one
    /// pooled connection with `LISTEN thorn_subscribers` (every change to
    /// a subscription, from any process, is heard within milliseconds;
    /// while that connection is down every lookup reads the table), on
    /// SQLite seeing its own writes at once and other writers' within
    /// [`CachedStore::max_age`]. Dropping the cache stops the listener.
    pub fn cached(self) -> CachedStore<Self> {
        let db = self.store.database().clone();
        cache_watching(self, &db)
    }

    /// Thorn's SQL store on this pool, its statements run on tokio's
    /// blocking threads.
    pub fn sql(&self) -> &SqlStore<DieselDb<C>> {
        &self.store
    }

    /// The same store, its statements run on the calling thread.
    fn here(&self) -> SqlStore<DieselDb<C>> {
        SqlStore::new(DieselDb::here(self.pool().clone()))
    }

    /// Every subscription with its status, oldest first; only the
    /// disabled ones with `disabled_only`.
    pub fn statuses(&self, disabled_only: bool) -> Result<Vec<(Subscriber, SubscriberStatus)>> {
        ready(self.here().statuses(disabled_only))?
    }

    /// Re-enables a disabled subscription, forgiving its failures so far;
    /// `false` when there is no such subscription.
    pub fn enable(&self, uuid: Uuid) -> Result<bool> {
        ready(self.here().enable(uuid))?
    }
}

impl<C: SqlConnection> SubscriberLookup for DieselStore<C> {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        self.store.subscribers_for(event, sender)
    }

    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        self.store.mark_gone(subscriber)
    }
}

impl<C: SqlConnection> SubscriptionStore for DieselStore<C> {
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
        self.store.list(owner)
    }

    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>> {
        self.store.get(owner, uuid)
    }

    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
        self.store.insert(subscriber)
    }

    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        self.store.update(subscriber)
    }

    fn update_if_unchanged(
        &self,
        subscriber: Subscriber,
        seen: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<thorn_core::subscriber::Replace>> {
        self.store.update_if_unchanged(subscriber, seen)
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        self.store.delete(owner, uuid)
    }

    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        self.store.set_active(owner, uuid, active, reason)
    }
}
