//! Subscriptions stored in the application's database, through Diesel:
//! the `thorn_subscribers` table (created by [`crate::migrate()`]).
//!
//! [`DieselStore`] implements both [`SubscriberStore`] (finding who gets an
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
use thorn_core::schema::{SubscriberRecord, owner_key};
use thorn_core::subscriber::{BoxFuture, SubscriptionStore, candidate_patterns};
use thorn_core::{Error, Result, SenderId, Subscriber, SubscriberStore};
use uuid::Uuid;

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

pub use thorn_core::schema::SubscriberStatus;

/// Subscriptions in a Diesel database, over an r2d2 pool.
pub struct DieselStore<C: R2D2Connection + 'static> {
    pool: Pool<ConnectionManager<C>>,
}

impl<C: R2D2Connection + 'static> Clone for DieselStore<C> {
    fn clone(&self) -> Self {
        DieselStore {
            pool: self.pool.clone(),
        }
    }
}

impl<C: R2D2Connection + 'static> std::fmt::Debug for DieselStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselStore")
            .field("pool", &self.pool.state())
            .finish()
    }
}

impl<C: R2D2Connection + 'static> DieselStore<C> {
    /// A store over `pool` (run [`crate::migrate()`] once first).
    pub fn new(pool: Pool<ConnectionManager<C>>) -> Self {
        DieselStore { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<ConnectionManager<C>> {
        &self.pool
    }

    fn blocking<T, F>(&self, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> Result<T> + Send + 'static,
    {
        blocking(&self.pool, f)
    }
}

/// Runs `f` on a pooled connection on tokio's blocking threads.
pub(crate) fn blocking<C, T, F>(
    pool: &Pool<ConnectionManager<C>>,
    f: F,
) -> BoxFuture<'static, Result<T>>
where
    C: R2D2Connection + 'static,
    T: Send + 'static,
    F: FnOnce(&mut C) -> Result<T> + Send + 'static,
{
    let pool = pool.clone();
    Box::pin(async move {
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(store_err)?;
            f(&mut conn)
        })
        .await
        .map_err(store_err)?
    })
}

macro_rules! diesel_store_for {
    ($conn:ty) => {
        impl SubscriberStore for DieselStore<$conn> {
            fn subscribers_for<'a>(
                &'a self,
                event: &'a str,
                sender: Option<&'a SenderId>,
            ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
                use thorn_subscribers::dsl as t;
                let patterns: Vec<String> =
                    candidate_patterns(event).map(|p| p.into_owned()).collect();
                let owner = sender.map(owner_key);
                self.blocking(move |conn| {
                    let mut query = t::thorn_subscribers
                        .filter(t::event.eq_any(patterns))
                        .filter(t::disabled_at.is_null())
                        .select(SubscriberRow::as_select())
                        .into_boxed();
                    query = match owner {
                        Some(o) => query.filter(t::owner.is_null().or(t::owner.eq(o))),
                        None => query.filter(t::owner.is_null()),
                    };
                    let rows: Vec<SubscriberRow> = query.load(conn).map_err(store_err)?;
                    rows.into_iter().map(Subscriber::try_from).collect()
                })
            }

            /// Disables the subscription (it stays listed, with its reason,
            /// until re-enabled or deleted).
            fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
                use thorn_subscribers::dsl as t;
                self.blocking(move |conn| {
                    diesel::update(
                        t::thorn_subscribers
                            .filter(t::uuid.eq(subscriber.to_string()))
                            .filter(t::disabled_at.is_null()),
                    )
                    .set((
                        t::disabled_at.eq(thorn_core::outbox::now_micros()),
                        t::disabled_reason.eq("the receiver answered 410 Gone"),
                    ))
                    .execute(conn)
                    .map_err(store_err)?;
                    Ok(())
                })
            }
        }

        impl DieselStore<$conn> {
            /// Every subscription with its status, oldest first; only the
            /// disabled ones with `disabled_only`.
            pub fn statuses(
                &self,
                disabled_only: bool,
            ) -> Result<Vec<(Subscriber, SubscriberStatus)>> {
                use thorn_subscribers::dsl as t;
                let mut conn = self.pool.get().map_err(store_err)?;
                let mut query = t::thorn_subscribers
                    .order((t::created_at.asc(), t::uuid.asc()))
                    .select((
                        SubscriberRow::as_select(),
                        t::failing_since,
                        t::disabled_at,
                        t::disabled_reason,
                    ))
                    .into_boxed();
                if disabled_only {
                    query = query.filter(t::disabled_at.is_not_null());
                }
                let rows: Vec<(SubscriberRow, Option<i64>, Option<i64>, Option<String>)> =
                    query.load(&mut *conn).map_err(store_err)?;
                rows.into_iter()
                    .map(|(row, failing_since, disabled_at, disabled_reason)| {
                        Ok((
                            Subscriber::try_from(row)?,
                            SubscriberStatus {
                                failing_since,
                                disabled_at,
                                disabled_reason,
                            },
                        ))
                    })
                    .collect()
            }

            /// Re-enables a disabled subscription; `false` when there is no
            /// such subscription.
            pub fn enable(&self, uuid: Uuid) -> Result<bool> {
                use thorn_subscribers::dsl as t;
                let mut conn = self.pool.get().map_err(store_err)?;
                let n = diesel::update(t::thorn_subscribers.filter(t::uuid.eq(uuid.to_string())))
                    .set((
                        t::disabled_at.eq(None::<i64>),
                        t::disabled_reason.eq(None::<String>),
                        t::failing_since.eq(None::<i64>),
                    ))
                    .execute(&mut *conn)
                    .map_err(store_err)?;
                Ok(n == 1)
            }
        }

        impl SubscriptionStore for DieselStore<$conn> {
            fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
                use thorn_subscribers::dsl as t;
                let owner = owner_key(owner);
                self.blocking(move |conn| {
                    let rows: Vec<SubscriberRow> = t::thorn_subscribers
                        .filter(t::owner.eq(owner))
                        .order((t::created_at.asc(), t::uuid.asc()))
                        .select(SubscriberRow::as_select())
                        .load(conn)
                        .map_err(store_err)?;
                    rows.into_iter().map(Subscriber::try_from).collect()
                })
            }

            fn get(
                &self,
                owner: &SenderId,
                uuid: Uuid,
            ) -> BoxFuture<'_, Result<Option<Subscriber>>> {
                use thorn_subscribers::dsl as t;
                let owner = owner_key(owner);
                self.blocking(move |conn| {
                    let row: Option<SubscriberRow> = t::thorn_subscribers
                        .filter(t::uuid.eq(uuid.to_string()).and(t::owner.eq(owner)))
                        .select(SubscriberRow::as_select())
                        .first(conn)
                        .optional()
                        .map_err(store_err)?;
                    row.map(Subscriber::try_from).transpose()
                })
            }

            fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
                let row = SubscriberRow::from(&subscriber);
                self.blocking(move |conn| {
                    diesel::insert_into(thorn_subscribers::table)
                        .values(&row)
                        .execute(conn)
                        .map_err(store_err)?;
                    Ok(())
                })
            }

            fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
                use thorn_subscribers::dsl as t;
                let row = SubscriberRow::from(&subscriber);
                self.blocking(move |conn| {
                    let n = diesel::update(
                        t::thorn_subscribers.filter(
                            t::uuid
                                .eq(row.uuid.clone())
                                .and(t::owner.eq(row.owner.clone())),
                        ),
                    )
                    .set(&row)
                    .execute(conn)
                    .map_err(store_err)?;
                    Ok(n == 1)
                })
            }

            fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
                use thorn_subscribers::dsl as t;
                let owner = owner_key(owner);
                self.blocking(move |conn| {
                    let n = diesel::delete(
                        t::thorn_subscribers
                            .filter(t::uuid.eq(uuid.to_string()).and(t::owner.eq(owner))),
                    )
                    .execute(conn)
                    .map_err(store_err)?;
                    Ok(n == 1)
                })
            }

            fn set_active<'a>(
                &'a self,
                owner: &'a SenderId,
                uuid: Uuid,
                active: bool,
                reason: &'a str,
            ) -> BoxFuture<'a, Result<bool>> {
                use thorn_subscribers::dsl as t;
                let (owner, reason) = (owner_key(owner), reason.to_owned());
                self.blocking(move |conn| {
                    let this = t::thorn_subscribers
                        .filter(t::uuid.eq(uuid.to_string()).and(t::owner.eq(owner)));
                    let n = if active {
                        // Resumed: its failures so far are forgiven.
                        diesel::update(this)
                            .set((
                                t::disabled_at.eq(None::<i64>),
                                t::disabled_reason.eq(None::<String>),
                                t::failing_since.eq(None::<i64>),
                            ))
                            .execute(conn)
                    } else {
                        // An already disabled one keeps its reason.
                        diesel::update(this)
                            .set((
                                t::disabled_at.eq(diesel::dsl::sql::<
                                    diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
                                >(
                                    "COALESCE(disabled_at, "
                                )
                                .bind::<diesel::sql_types::BigInt, _>(
                                    thorn_core::outbox::now_micros(),
                                )
                                .sql(")")),
                                t::disabled_reason.eq(diesel::dsl::sql::<
                                    diesel::sql_types::Nullable<diesel::sql_types::Text>,
                                >(
                                    "COALESCE(disabled_reason, "
                                )
                                .bind::<diesel::sql_types::Text, _>(reason)
                                .sql(")")),
                            ))
                            .execute(conn)
                    }
                    .map_err(store_err)?;
                    Ok(n == 1)
                })
            }
        }
    };
}

#[cfg(feature = "sqlite")]
diesel_store_for!(diesel::SqliteConnection);
#[cfg(feature = "postgres")]
diesel_store_for!(diesel::PgConnection);
