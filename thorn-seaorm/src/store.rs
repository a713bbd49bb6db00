//! Subscriptions stored in the application's database, through SeaORM:
//! the `thorn_subscribers` table (created by [`crate::migrate`]).
//!
//! [`SeaOrmStore`] implements both [`SubscriberLookup`](thorn_core::SubscriberLookup) (finding who gets an
//! event, with the four pattern lookups on an indexed column) and
//! [`SubscriptionStore`](thorn_core::SubscriptionStore) (the REST API's create/read/update/delete), on
//! SQLite and PostgreSQL alike.
//!
//! The table is the one `thorn-diesel` uses, with the same encodings: text
//! uuids, RFC 3339 timestamps with microseconds, the owner as its JSON
//! text and earlier secrets as a JSON array. Either integration reads the
//! rows the other wrote.

use thorn_core::Error;
use thorn_core::integration::sql::SqlStore;

use crate::sql::SeaOrmDb;

pub use thorn_core::integration::schema::SubscriberStatus;

/// Wraps a database error (or any other) as Thorn's store error.
pub(crate) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Store(Box::new(e))
}

/// Subscriptions in a SeaORM database (SQLite or PostgreSQL): Thorn's
/// [`SqlStore`] on a `DatabaseConnection`, made with
/// `SeaOrmStore::new(db)`. Cheap to clone: the connection is a pool.
pub type SeaOrmStore = SqlStore<SeaOrmDb>;
