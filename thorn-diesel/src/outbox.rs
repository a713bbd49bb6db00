//! The transactional outbox in Diesel: events written through the caller's
//! connection, and the relay that delivers them once committed.
//!
//! With the outbox on (`THORN_OUTBOX=true`, [`Config::outbox`](thorn_core::Config::outbox)),
//! each model event that honours the transaction is written to
//! `thorn_events` on the caller's connection, in its transaction. Inside
//! [`thorn_core::integration`] the events of the whole transaction are written
//! as one multi-row `INSERT` just before `COMMIT` (a rolled-back savepoint
//! drops its own); inside a `conn.transaction(...)` Thorn does not manage,
//! each write's events are written right after its statement, so the
//! database keeps their rollback semantics; outside any transaction,
//! statement and events run in a transaction of their own.
//!
//! A [`Relay`] delivers committed events from this process: on
//! PostgreSQL a `LISTEN thorn_outbox` connection wakes it at commit, on
//! SQLite this process's own writes do, and it polls as a backstop so
//! events written by other processes are delivered too. On PostgreSQL any
//! number of relays and `thorn worker` processes can share the tables:
//! claims use `FOR UPDATE SKIP LOCKED` and leases.
//!
//! ```no_run
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use thorn_core::{Config, Thorn};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(ConnectionManager::<diesel::SqliteConnection>::new("app.sqlite3"))?;
//! thorn_diesel::migrate(&mut *pool.get()?)?;
//! let config = Config { outbox: true, ..Config::from_env()? };
//! let thorn = Thorn::new(config)?;
//! let relay = thorn_diesel::Relay::start(&thorn, pool.clone())?;
//! // ... thorn_diesel::insert(&thorn, conn, ...) inside thorn_diesel::transaction ...
//! relay.stop()?; // finishes deliveries in flight
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use diesel::r2d2::{ConnectionManager, Pool, PooledConnection, R2D2Connection};
use thorn_core::integration::BackgroundRelay;
use thorn_core::integration::CHANNEL;
use thorn_core::integration::StoredEvent;
use thorn_core::integration::ThornExt;
use thorn_core::integration::sql::{Database, Listener, SqlOutbox, ready, waking};
use thorn_core::outbox::{DeliveryState, Pruned};
use thorn_core::{RelayOptions, RelayStats};
use thorn_core::{Result, Thorn};
use uuid::Uuid;

use crate::sql::{DieselConn, DieselDb, SqlConnection};

diesel::table! {
    /// Events written by committed transactions.
    thorn_events (id) {
        /// UUIDv7.
        id -> Text,
        /// Event name.
        name -> Text,
        /// The message, JSON.
        message -> Text,
        /// Sender id, JSON.
        sender -> Nullable<Text>,
        /// Sending options, JSON.
        options -> Text,
        /// µs since the epoch.
        created_at -> BigInt,
        /// When its deliveries were recorded.
        fanned_out_at -> Nullable<BigInt>,
        /// Claim lease end.
        locked_until -> Nullable<BigInt>,
        /// Claiming worker.
        locked_by -> Nullable<Text>,
    }
}

diesel::table! {
    /// One row per (event, subscriber).
    thorn_deliveries (id) {
        /// UUIDv7, the `Hook-Delivery` header.
        id -> Text,
        /// The event.
        event_id -> Text,
        /// The subscriber's uuid.
        subscriber_uuid -> Text,
        /// A recipient without a row in `thorn_subscribers` (static or
        /// per-event), as JSON at fan-out; NULL for stored subscriptions,
        /// which are read at send time.
        recipient -> Nullable<Text>,
        /// Recipient URL.
        url -> Text,
        /// pending, delivered or dead.
        state -> Text,
        /// Attempts started.
        attempts -> Integer,
        /// When the next attempt is due.
        run_at -> BigInt,
        /// Claim lease end.
        locked_until -> Nullable<BigInt>,
        /// Claiming worker.
        locked_by -> Nullable<Text>,
        /// Last HTTP status.
        last_status -> Nullable<Integer>,
        /// Last error.
        last_error -> Nullable<Text>,
        /// µs since the epoch.
        created_at -> BigInt,
        /// µs since the epoch.
        updated_at -> BigInt,
    }
}

diesel::table! {
    /// Every attempt of every delivery.
    thorn_attempts (delivery_id, attempt) {
        /// The delivery.
        delivery_id -> Text,
        /// 1-based.
        attempt -> Integer,
        /// µs since the epoch.
        started_at -> BigInt,
        /// HTTP status, when there was an answer.
        status -> Nullable<Integer>,
        /// Request latency, µs.
        latency_us -> BigInt,
        /// What went wrong.
        error -> Nullable<Text>,
        /// First bytes of the response body.
        response -> Nullable<Text>,
        /// Which worker.
        worker -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(thorn_events, thorn_deliveries, thorn_attempts);

pub use thorn_core::outbox::{AttemptInfo, DeliveryHistory, DeliveryInfo, OutboxCounts};

/// Connections whose transactions can carry outbox events:
/// `SqliteConnection`, `PgConnection` (feature `postgres`) and r2d2's
/// pooled connections of either.
pub trait OutboxConnection: diesel::Connection {
    /// Inserts `events` into `thorn_events` on this connection (inside
    /// whatever transaction is open). A missing table is
    /// [`thorn_core::Error::OutboxMissing`].
    fn thorn_write_events(&mut self, events: &[StoredEvent]) -> Result<()>;

    /// Begins the outermost transaction of
    /// [`transaction`](crate::transaction) when this database needs more
    /// than Diesel's `BEGIN` for a transaction that writes after reading
    /// (`BEGIN IMMEDIATE` on SQLite); `false` when it begins none and a
    /// plain one will do.
    fn thorn_begin_immediate(&mut self) -> diesel::QueryResult<bool> {
        Ok(false)
    }
}

impl<C: SqlConnection> OutboxConnection for C
where
    for<'c> DieselConn<'c, C>: thorn_core::integration::sql::Connection,
{
    fn thorn_write_events(&mut self, events: &[StoredEvent]) -> Result<()> {
        ready(thorn_core::integration::sql::write_events(
            &mut DieselConn(self),
            events,
            "thorn::diesel::migrate(conn)",
        ))?
    }

    fn thorn_begin_immediate(&mut self) -> diesel::QueryResult<bool> {
        self.begin_immediate()
    }
}

impl<C> OutboxConnection for PooledConnection<ConnectionManager<C>>
where
    C: OutboxConnection + R2D2Connection + 'static,
    Self: diesel::Connection,
{
    fn thorn_write_events(&mut self, events: &[StoredEvent]) -> Result<()> {
        (**self).thorn_write_events(events)
    }

    // The pool's transaction manager is the connection's: one begun on
    // the connection is this one's.
    fn thorn_begin_immediate(&mut self) -> diesel::QueryResult<bool> {
        (**self).thorn_begin_immediate()
    }
}

/// The outbox tables in a Diesel database, over an r2d2 pool: Thorn's
/// [`SqlOutbox`] on [`DieselDb`], the [`OutboxStore`](thorn_core::integration::OutboxStore) a relay or worker
/// claims from.
///
/// As an [`OutboxStore`](thorn_core::integration::OutboxStore) its statements run on tokio's blocking threads;
/// its own methods (counts, deliveries, retries) run on the calling
/// thread.
pub struct DieselOutbox<C: R2D2Connection + 'static> {
    outbox: SqlOutbox<DieselDb<C>>,
}

impl<C: R2D2Connection + 'static> Clone for DieselOutbox<C> {
    fn clone(&self) -> Self {
        DieselOutbox {
            outbox: self.outbox.clone(),
        }
    }
}

impl<C: R2D2Connection + 'static> std::fmt::Debug for DieselOutbox<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselOutbox")
            .field("db", self.outbox.database())
            .finish()
    }
}

impl<C: SqlConnection> DieselOutbox<C> {
    /// The outbox over `pool` (run [`crate::migrate()`] once first).
    pub fn new(pool: Pool<ConnectionManager<C>>) -> Self {
        DieselOutbox {
            outbox: SqlOutbox::new(DieselDb::new(pool)),
        }
    }

    /// Disables a subscription of `thorn_subscribers` once its deliveries
    /// have been failing, with no 2xx in between, for `window` (a log line
    /// says so; `thorn subscribers list` shows it). `None`: never.
    pub fn disable_failing_after(mut self, window: Option<Duration>) -> Self {
        self.outbox = self.outbox.disable_failing_after(window);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<ConnectionManager<C>> {
        self.outbox.database().pool()
    }

    /// Thorn's SQL outbox on this pool, its statements run on tokio's
    /// blocking threads: the [`OutboxStore`](thorn_core::integration::OutboxStore) a relay claims from.
    pub fn sql(&self) -> &SqlOutbox<DieselDb<C>> {
        &self.outbox
    }

    /// This outbox as each subscription's delivery log, for
    /// [`ThornBuilder::delivery_log`](thorn_core::ThornBuilder::delivery_log):
    /// what the REST API's delivery routes read and replay (its
    /// statements run on tokio's blocking threads).
    pub fn delivery_log(&self) -> std::sync::Arc<dyn thorn_core::outbox::DeliveryLog> {
        std::sync::Arc::new(self.outbox.clone())
    }

    /// Fails with [`thorn_core::Error::SchemaOutdated`] unless Thorn's
    /// migrations are applied.
    pub fn check_schema(&self) -> Result<()> {
        ready(self.here().check_schema("thorn::diesel::migrate(conn)"))?
    }

    /// The same outbox, its statements run on the calling thread.
    fn here(&self) -> SqlOutbox<DieselDb<C>> {
        SqlOutbox::new(DieselDb::here(self.pool().clone()))
            .disable_failing_after(self.outbox.disables_failing_after())
    }

    /// How many events and deliveries are in each state.
    pub fn counts(&self) -> Result<OutboxCounts> {
        ready(self.here().counts())?
    }

    /// Deliveries, newest first, optionally only those in `state`; `max`
    /// at most.
    pub fn deliveries(
        &self,
        state: Option<DeliveryState>,
        max: usize,
    ) -> Result<Vec<DeliveryInfo>> {
        ready(self.here().deliveries(state, max))?
    }

    /// One delivery and its attempts.
    pub fn delivery(&self, id: Uuid) -> Result<Option<DeliveryHistory>> {
        ready(self.here().delivery(id))?
    }

    /// Makes a delivery that is not claimed right now due at once (a dead
    /// one gets another attempt), keeping its id. `false` when there is no
    /// such delivery or a worker holds it.
    pub fn retry_delivery(&self, id: Uuid) -> Result<bool> {
        ready(self.here().retry_delivery(id))?
    }

    /// Sends an event again to the stored subscriptions matching it now
    /// (and its own recipients): new deliveries, whose ids this returns;
    /// `None` when there is no such event.
    pub fn replay_event(&self, id: Uuid) -> Result<Option<Vec<Uuid>>> {
        ready(self.here().replay_event(id))?
    }

    /// Sends again the dead deliveries of one subscription created in
    /// `from..until` (now when `None`), same ids; returns them.
    pub fn recover(
        &self,
        subscription: Uuid,
        from: chrono::DateTime<chrono::Utc>,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<Uuid>> {
        ready(self.here().recover(subscription, from, until))?
    }

    /// Deletes finished deliveries last changed more than `older_than`
    /// ago, their attempts, and the events left with none.
    pub fn prune(&self, older_than: Duration) -> Result<Pruned> {
        ready(self.here().prune_older(older_than))?
    }

    /// Deletes one owner's deliveries, attempts and events.
    pub fn prune_owner(&self, owner: &thorn_core::SenderId) -> Result<Pruned> {
        ready(self.here().prune_owner(owner))?
    }
}

/// Delivers committed outbox events from this process; stops when
/// dropped or on [`Relay::stop`].
#[derive(Debug)]
pub struct Relay {
    relay: Option<BackgroundRelay>,
    listener: Option<Listener>,
}

impl Relay {
    /// Starts a relay over `pool` with default [`RelayOptions`] and
    /// `thorn`'s configuration and subscribers.
    pub fn start<C>(thorn: &Thorn, pool: Pool<ConnectionManager<C>>) -> Result<Self>
    where
        C: SqlConnection,
    {
        Self::start_with(thorn, pool, RelayOptions::default())
    }

    /// [`Relay::start`] with options.
    pub fn start_with<C>(
        thorn: &Thorn,
        pool: Pool<ConnectionManager<C>>,
        options: RelayOptions,
    ) -> Result<Self>
    where
        C: SqlConnection,
    {
        let outbox = DieselOutbox::new(pool.clone()).disable_failing_after(options.disable_after);
        outbox.check_schema()?;
        let wake = thorn.outbox_signal().clone();
        let listener = outbox.sql().database().listen(CHANNEL, waking(&wake));
        let relay =
            BackgroundRelay::start(thorn.clone(), Arc::new(outbox.sql().clone()), options, wake)?;
        Ok(Relay {
            relay: Some(relay),
            listener,
        })
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        self.relay.as_ref().map(|r| r.stats()).unwrap_or_default()
    }

    /// Stops claiming, lets deliveries in flight finish and be recorded.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        drop(self.listener.take());
        match self.relay.take() {
            Some(r) => r.stop(),
            None => Ok(()),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Err(error) = self.halt() {
            tracing::error!(%error, "outbox relay stopped with an error");
        }
    }
}
