//! The transactional outbox in Diesel: events written through the caller's
//! connection, and the relay that delivers them once committed.
//!
//! With the outbox on (`THORN_OUTBOX=true`, [`Config::outbox`](thorn_core::Config::outbox)),
//! each model event that honours the transaction is written to
//! `thorn_events` on the caller's connection, in its transaction. Inside
//! [`crate::transaction`] the events of the whole transaction are written
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection, R2D2Connection};
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use thorn_core::outbox::{
    AttemptRecord, BackgroundRelay, ClaimedDelivery, DeliveryState, FanOut, Health, Next,
    OutboxStore, RelayOptions, RelayStats, StoredEvent, micros, now_micros,
};
use thorn_core::schema;
use thorn_core::subscriber::BoxFuture;
use thorn_core::{Result, Thorn};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{blocking, store_err};

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
        /// The subscriber at fan-out, JSON.
        subscriber -> Text,
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

#[derive(Insertable)]
#[diesel(table_name = thorn_events)]
struct EventRow {
    id: String,
    name: String,
    message: String,
    sender: Option<String>,
    options: String,
    created_at: i64,
}

impl From<&StoredEvent> for EventRow {
    fn from(e: &StoredEvent) -> Self {
        EventRow {
            id: e.id.to_string(),
            name: e.name.clone(),
            message: e.message_json(),
            sender: e.sender_json(),
            options: e.options_json(),
            created_at: e.created_at,
        }
    }
}

#[derive(QueryableByName, Queryable)]
struct ClaimedEventRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    message: String,
    #[diesel(sql_type = Nullable<Text>)]
    sender: Option<String>,
    #[diesel(sql_type = Text)]
    options: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
}

impl ClaimedEventRow {
    fn into_event(self) -> Result<StoredEvent> {
        StoredEvent::from_columns(
            &self.id,
            self.name,
            &self.message,
            self.sender.as_deref(),
            &self.options,
            self.created_at,
        )
    }
}

#[derive(QueryableByName)]
struct CountsRow {
    #[diesel(sql_type = BigInt)]
    new_events: i64,
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    delivered: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
    #[diesel(sql_type = BigInt)]
    claimed: i64,
}

#[derive(QueryableByName)]
struct ClaimedDeliveryRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    subscriber: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(Insertable)]
#[diesel(table_name = thorn_deliveries)]
struct DeliveryRow {
    id: String,
    event_id: String,
    subscriber_uuid: String,
    subscriber: String,
    url: String,
    state: &'static str,
    attempts: i32,
    run_at: i64,
    locked_until: Option<i64>,
    locked_by: Option<String>,
    created_at: i64,
    updated_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = thorn_attempts)]
struct AttemptRow {
    delivery_id: String,
    attempt: i32,
    started_at: i64,
    status: Option<i32>,
    latency_us: i64,
    error: Option<String>,
    response: Option<String>,
    worker: String,
}

/// Connections whose transactions can carry outbox events:
/// `SqliteConnection`, `PgConnection` (feature `postgres`) and r2d2's
/// pooled connections of either.
pub trait OutboxConnection: Connection {
    /// Inserts `events` into `thorn_events` on this connection (inside
    /// whatever transaction is open).
    fn thorn_write_events(&mut self, events: &[StoredEvent]) -> QueryResult<()>;
}

impl<C> OutboxConnection for PooledConnection<ConnectionManager<C>>
where
    C: OutboxConnection + R2D2Connection + 'static,
    Self: Connection,
{
    fn thorn_write_events(&mut self, events: &[StoredEvent]) -> QueryResult<()> {
        (**self).thorn_write_events(events)
    }
}

/// The outbox tables through an r2d2 pool: the [`OutboxStore`] a relay or
/// worker claims from.
pub struct DieselOutbox<C: R2D2Connection + 'static> {
    pool: Pool<ConnectionManager<C>>,
    disable_after: Option<Duration>,
}

impl<C: R2D2Connection + 'static> Clone for DieselOutbox<C> {
    fn clone(&self) -> Self {
        DieselOutbox {
            pool: self.pool.clone(),
            disable_after: self.disable_after,
        }
    }
}

impl<C: R2D2Connection + 'static> std::fmt::Debug for DieselOutbox<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselOutbox")
            .field("pool", &self.pool.state())
            .finish()
    }
}

impl<C: R2D2Connection + 'static> DieselOutbox<C> {
    /// The outbox in the database of `pool` (run [`crate::migrate()`] first).
    pub fn new(pool: Pool<ConnectionManager<C>>) -> Self {
        DieselOutbox {
            pool,
            disable_after: None,
        }
    }

    /// Disables a subscription of `thorn_subscribers` once its deliveries
    /// have been failing, with no 2xx in between, for `window` (a log line
    /// says so; `thorn subscribers list` shows it). `None`: never.
    pub fn disable_failing_after(mut self, window: Option<Duration>) -> Self {
        self.disable_after = window;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<ConnectionManager<C>> {
        &self.pool
    }
}

pub use thorn_core::outbox::OutboxCounts;

/// One delivery, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct DeliveryInfo {
    /// Delivery id (`Hook-Delivery`).
    pub id: String,
    /// Its event.
    pub event_id: String,
    /// Event name.
    pub event: String,
    /// Recipient URL.
    pub url: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts started.
    pub attempts: i32,
    /// When the next attempt is due (µs since the epoch).
    pub run_at: i64,
    /// Last HTTP status.
    pub last_status: Option<i32>,
    /// Last error.
    pub last_error: Option<String>,
    /// The worker holding it, while claimed.
    pub locked_by: Option<String>,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AttemptInfo {
    /// 1-based.
    pub attempt: i32,
    /// µs since the epoch.
    pub started_at: i64,
    /// HTTP status, when there was an answer.
    pub status: Option<i32>,
    /// Latency, µs.
    pub latency_us: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// First bytes of the response body.
    pub response: Option<String>,
    /// Which worker.
    pub worker: String,
}

/// `$1`-style placeholders (PostgreSQL) as SQLite's `?1`.
fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

/// A claim statement with SQLite's placeholders where needed.
fn claim_sql(sql: String, postgres: bool) -> String {
    if postgres {
        sql
    } else {
        sqlite_placeholders(&sql)
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

macro_rules! outbox_for {
    ($conn:ty, $postgres:expr, $insert_attempts:path) => {
        impl OutboxConnection for $conn {
            fn thorn_write_events(&mut self, events: &[StoredEvent]) -> QueryResult<()> {
                let rows: Vec<EventRow> = events.iter().map(EventRow::from).collect();
                diesel::insert_into(thorn_events::table)
                    .values(&rows)
                    .execute(self)?;
                Ok(())
            }
        }

        impl DieselOutbox<$conn> {
            /// How many events and deliveries are in each state.
            pub fn counts(&self) -> Result<OutboxCounts> {
                let mut conn = self.pool.get().map_err(store_err)?;
                let sql = if $postgres {
                    schema::COUNTS_SQL.to_owned()
                } else {
                    sqlite_placeholders(schema::COUNTS_SQL)
                };
                let c: CountsRow = diesel::sql_query(sql)
                    .bind::<BigInt, _>(now_micros())
                    .get_result(&mut *conn)
                    .map_err(store_err)?;
                Ok(OutboxCounts {
                    new_events: c.new_events,
                    pending: c.pending,
                    delivered: c.delivered,
                    dead: c.dead,
                    claimed: c.claimed,
                })
            }
        }

        impl DieselOutbox<$conn> {
            /// Keeps `failing_since` of stored subscriptions and disables
            /// those failing for longer than `window`, marking their pending
            /// deliveries dead. Static subscribers have no row: untouched.
            fn track_health(
                conn: &mut $conn,
                attempts: &[(AttemptRecord, Next)],
                now: i64,
                window: Option<Duration>,
            ) -> QueryResult<()> {
                use crate::store::thorn_subscribers::dsl as t;
                use thorn_deliveries::dsl as d;
                let Health {
                    recovered: ok,
                    failing: failed,
                } = Health::of(attempts);
                if !ok.is_empty() {
                    diesel::update(
                        t::thorn_subscribers
                            .filter(t::uuid.eq_any(&ok))
                            .filter(t::failing_since.is_not_null()),
                    )
                    .set(t::failing_since.eq(None::<i64>))
                    .execute(conn)?;
                }
                if failed.is_empty() {
                    return Ok(());
                }
                diesel::update(
                    t::thorn_subscribers
                        .filter(t::uuid.eq_any(&failed))
                        .filter(t::failing_since.is_null()),
                )
                .set(t::failing_since.eq(now))
                .execute(conn)?;
                let Some(window) = window else { return Ok(()) };
                let since = now.saturating_sub(micros(window));
                let disabled: Vec<(String, String)> = diesel::update(
                    t::thorn_subscribers
                        .filter(t::uuid.eq_any(&failed))
                        .filter(t::disabled_at.is_null())
                        .filter(t::failing_since.le(since)),
                )
                .set((
                    t::disabled_at.eq(now),
                    t::disabled_reason.eq(Health::disabled_reason(window)),
                ))
                .returning((t::uuid, t::url))
                .get_results(conn)?;
                for (uuid, url) in &disabled {
                    Health::log_disabled(uuid, url, window);
                }
                // Nothing more is attempted for a disabled subscription.
                let off: Vec<String> = t::thorn_subscribers
                    .filter(t::uuid.eq_any(&failed))
                    .filter(t::disabled_at.is_not_null())
                    .select(t::uuid)
                    .load(conn)?;
                if off.is_empty() {
                    return Ok(());
                }
                diesel::update(
                    d::thorn_deliveries
                        .filter(d::subscriber_uuid.eq_any(&off))
                        .filter(d::state.eq(DeliveryState::Pending.as_str()))
                        .filter(d::locked_until.is_null().or(d::locked_until.lt(now))),
                )
                .set((
                    d::state.eq(DeliveryState::Dead.as_str()),
                    d::last_error.eq("subscriber disabled"),
                    d::updated_at.eq(now),
                ))
                .execute(conn)?;
                Ok(())
            }

            /// Deliveries, newest first, optionally in one state.
            pub fn deliveries(&self, state: Option<&str>, max: i64) -> Result<Vec<DeliveryInfo>> {
                let mut conn = self.pool.get().map_err(store_err)?;
                Self::infos(&mut conn, None, state, max).map_err(store_err)
            }

            /// Deliveries with their event's name, newest first: one by
            /// `id`, or those in `state`, or all; `max` at most.
            fn infos(
                conn: &mut $conn,
                id: Option<&str>,
                state: Option<&str>,
                max: i64,
            ) -> QueryResult<Vec<DeliveryInfo>> {
                use thorn_deliveries::dsl as d;
                use thorn_events::dsl as e;
                let mut q = d::thorn_deliveries
                    .inner_join(e::thorn_events.on(e::id.eq(d::event_id)))
                    .select((
                        d::id,
                        d::event_id,
                        e::name,
                        d::url,
                        d::state,
                        d::attempts,
                        d::run_at,
                        d::last_status,
                        d::last_error,
                        d::locked_by,
                    ))
                    .order(d::created_at.desc())
                    .limit(max)
                    .into_boxed();
                if let Some(id) = id {
                    q = q.filter(d::id.eq(id.to_owned()));
                }
                if let Some(state) = state {
                    q = q.filter(d::state.eq(state.to_owned()));
                }
                q.load(conn)
            }

            /// One delivery and its attempts.
            pub fn delivery(&self, id: &str) -> Result<Option<(DeliveryInfo, Vec<AttemptInfo>)>> {
                use thorn_attempts::dsl as a;
                let mut conn = self.pool.get().map_err(store_err)?;
                let info = Self::infos(&mut conn, Some(id), None, 1)
                    .map_err(store_err)?
                    .pop();
                let Some(info) = info else { return Ok(None) };
                let attempts = a::thorn_attempts
                    .filter(a::delivery_id.eq(id))
                    .order(a::attempt)
                    .select((
                        a::attempt,
                        a::started_at,
                        a::status,
                        a::latency_us,
                        a::error,
                        a::response,
                        a::worker,
                    ))
                    .load(&mut *conn)
                    .map_err(store_err)?;
                Ok(Some((info, attempts)))
            }

            /// Makes a delivery that is not claimed right now due at once
            /// (a dead one gets another attempt). `false` when there is no
            /// such delivery.
            pub fn retry_delivery(&self, id: &str) -> Result<bool> {
                use thorn_deliveries::dsl as d;
                let mut conn = self.pool.get().map_err(store_err)?;
                let now = now_micros();
                let n = diesel::update(
                    d::thorn_deliveries
                        .filter(d::id.eq(id))
                        .filter(d::locked_until.is_null().or(d::locked_until.lt(now))),
                )
                .set((
                    d::state.eq(DeliveryState::Pending.as_str()),
                    d::run_at.eq(now),
                    d::updated_at.eq(now),
                ))
                .execute(&mut *conn)
                .map_err(store_err)?;
                Ok(n == 1)
            }

            /// Sends an event again: it is fanned out anew to today's
            /// subscribers, with new delivery ids. `false` when there is no
            /// such event.
            pub fn replay_event(&self, id: &str) -> Result<bool> {
                use thorn_events::dsl as e;
                let mut conn = self.pool.get().map_err(store_err)?;
                let n = diesel::update(e::thorn_events.filter(e::id.eq(id)))
                    .set((
                        e::fanned_out_at.eq(None::<i64>),
                        e::locked_until.eq(None::<i64>),
                        e::locked_by.eq(None::<String>),
                    ))
                    .execute(&mut *conn)
                    .map_err(store_err)?;
                Ok(n == 1)
            }
        }

        impl OutboxStore for DieselOutbox<$conn> {
            fn claim_events<'a>(
                &'a self,
                worker: &'a str,
                limit_to: usize,
                lease: Duration,
            ) -> BoxFuture<'a, Result<Vec<StoredEvent>>> {
                let worker = worker.to_owned();
                blocking(&self.pool, move |conn: &mut $conn| {
                    let now = now_micros();
                    let rows: Vec<ClaimedEventRow> = diesel::sql_query(claim_sql(
                        schema::claim_events_sql($postgres),
                        $postgres,
                    ))
                    .bind::<BigInt, _>(now.saturating_add(micros(lease)))
                    .bind::<Text, _>(worker)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(limit(limit_to))
                    .load(conn)
                    .map_err(store_err)?;
                    rows.into_iter().map(ClaimedEventRow::into_event).collect()
                })
            }

            fn fan_out<'a>(
                &'a self,
                worker: &'a str,
                events: Vec<FanOut>,
                lease: Duration,
            ) -> BoxFuture<'a, Result<Vec<Uuid>>> {
                use thorn_events::dsl as e;
                let worker = worker.to_owned();
                blocking(&self.pool, move |conn: &mut $conn| {
                    let now = now_micros();
                    let locked_until = now.saturating_add(micros(lease));
                    conn.transaction::<_, diesel::result::Error, _>(|conn| {
                        let ids: Vec<String> = events.iter().map(|p| p.event.to_string()).collect();
                        let held: Vec<String> = diesel::update(
                            e::thorn_events
                                .filter(e::id.eq_any(&ids))
                                .filter(e::locked_by.eq(&worker))
                                .filter(e::fanned_out_at.is_null()),
                        )
                        .set((
                            e::fanned_out_at.eq(now),
                            e::locked_until.eq(None::<i64>),
                            e::locked_by.eq(None::<String>),
                        ))
                        .returning(e::id)
                        .get_results(conn)?;
                        let mut written = Vec::with_capacity(held.len());
                        let mut rows = Vec::new();
                        for (plan, event_id) in events.iter().zip(ids) {
                            if !held.contains(&event_id) {
                                continue;
                            }
                            written.push(plan.event);
                            rows.extend(plan.deliveries.iter().map(|d| {
                                DeliveryRow {
                                    id: d.id.to_string(),
                                    event_id: event_id.clone(),
                                    subscriber_uuid: d.subscriber.uuid.to_string(),
                                    subscriber: serde_json::to_string(&d.subscriber)
                                        .expect("subscribers are JSON"),
                                    url: d.subscriber.url.to_string(),
                                    state: DeliveryState::Pending.as_str(),
                                    attempts: i32::from(d.claimed),
                                    run_at: now,
                                    locked_until: d.claimed.then_some(locked_until),
                                    locked_by: d.claimed.then(|| worker.clone()),
                                    created_at: now,
                                    updated_at: now,
                                }
                            }));
                        }
                        // Bounded statements for events with many subscribers.
                        for chunk in rows.chunks(500) {
                            diesel::insert_into(thorn_deliveries::table)
                                .values(chunk)
                                .execute(conn)?;
                        }
                        Ok(written)
                    })
                    .map_err(store_err)
                })
            }

            fn claim_deliveries<'a>(
                &'a self,
                worker: &'a str,
                first: bool,
                limit_to: usize,
                lease: Duration,
            ) -> BoxFuture<'a, Result<Vec<ClaimedDelivery>>> {
                use thorn_events::dsl as e;
                let worker = worker.to_owned();
                blocking(&self.pool, move |conn: &mut $conn| {
                    let now = now_micros();
                    let rows: Vec<ClaimedDeliveryRow> = diesel::sql_query(claim_sql(
                        schema::claim_deliveries_sql($postgres, first),
                        $postgres,
                    ))
                    .bind::<BigInt, _>(now.saturating_add(micros(lease)))
                    .bind::<Text, _>(worker)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(limit(limit_to))
                    .load(conn)
                    .map_err(store_err)?;
                    if rows.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    let events: Vec<ClaimedEventRow> = e::thorn_events
                        .filter(e::id.eq_any(&ids))
                        .select((
                            e::id,
                            e::name,
                            e::message,
                            e::sender,
                            e::options,
                            e::created_at,
                        ))
                        .load(conn)
                        .map_err(store_err)?;
                    let events = events
                        .into_iter()
                        .map(|r| Ok((r.id.clone(), Arc::new(r.into_event()?))))
                        .collect::<Result<HashMap<_, _>>>()?;
                    rows.iter()
                        .map(|r| {
                            ClaimedDelivery::from_columns(
                                &r.id,
                                &r.event_id,
                                &events,
                                &r.subscriber,
                                r.attempts,
                            )
                        })
                        .collect()
                })
            }

            fn finish<'a>(
                &'a self,
                worker: &'a str,
                attempts: Vec<(AttemptRecord, Next)>,
            ) -> BoxFuture<'a, Result<usize>> {
                use thorn_deliveries::dsl as d;
                let worker = worker.to_owned();
                let disable_after = self.disable_after;
                blocking(&self.pool, move |conn: &mut $conn| {
                    let now = now_micros();
                    let rows: Vec<AttemptRow> = attempts
                        .iter()
                        .map(|(a, _)| AttemptRow {
                            delivery_id: a.delivery_id.to_string(),
                            attempt: i32::try_from(a.number).unwrap_or(i32::MAX),
                            started_at: a.started_at,
                            status: a.status.map(i32::from),
                            latency_us: a.latency_us,
                            error: a.error.clone(),
                            response: a.response.clone(),
                            worker: a.worker.clone(),
                        })
                        .collect();
                    conn.transaction::<usize, diesel::result::Error, _>(|conn| {
                        $insert_attempts(conn, &rows)?;
                        // Deliveries with the same outcome are released by one statement.
                        let mut groups: Vec<(
                            (&str, i64, Option<i32>, Option<&String>),
                            Vec<&str>,
                        )> = Vec::new();
                        for (row, (_, next)) in rows.iter().zip(&attempts) {
                            let run_at = match next {
                                Next::Retry { at } => *at,
                                _ => now,
                            };
                            let key = (
                                next.state().as_str(),
                                run_at,
                                row.status,
                                row.error.as_ref(),
                            );
                            match groups.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, ids)) => ids.push(&row.delivery_id),
                                None => groups.push((key, vec![&row.delivery_id])),
                            }
                        }
                        let mut held = 0;
                        for ((state, run_at, status, error), ids) in groups {
                            held += diesel::update(
                                d::thorn_deliveries
                                    .filter(d::id.eq_any(ids))
                                    .filter(d::locked_by.eq(&worker)),
                            )
                            .set((
                                d::state.eq(state),
                                d::run_at.eq(run_at),
                                d::locked_until.eq(None::<i64>),
                                d::locked_by.eq(None::<String>),
                                d::last_status.eq(status),
                                d::last_error.eq(error),
                                d::updated_at.eq(now),
                            ))
                            .execute(conn)?;
                        }
                        Self::track_health(conn, &attempts, now, disable_after)?;
                        Ok(held)
                    })
                    .map_err(store_err)
                })
            }
        }
    };
}

/// SQLite cannot batch an insert with `ON CONFLICT`; row by row is cheap
/// in-process.
#[cfg(feature = "sqlite")]
fn insert_attempts_sqlite(
    conn: &mut diesel::SqliteConnection,
    rows: &[AttemptRow],
) -> QueryResult<()> {
    for row in rows {
        diesel::insert_into(thorn_attempts::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(conn)?;
    }
    Ok(())
}

#[cfg(feature = "postgres")]
fn insert_attempts_pg(conn: &mut diesel::PgConnection, rows: &[AttemptRow]) -> QueryResult<()> {
    for chunk in rows.chunks(500) {
        diesel::insert_into(thorn_attempts::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(conn)?;
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
outbox_for!(diesel::SqliteConnection, false, insert_attempts_sqlite);
#[cfg(feature = "postgres")]
outbox_for!(diesel::PgConnection, true, insert_attempts_pg);

/// Connections a [`Relay`] can run on. PostgreSQL adds a `LISTEN`
/// connection that wakes the relay when an outbox write commits.
pub trait RelayConnection: R2D2Connection + 'static
where
    DieselOutbox<Self>: OutboxStore,
{
    /// Starts whatever wakes the relay besides this process's own writes.
    fn start_listener(
        _pool: &Pool<ConnectionManager<Self>>,
        _wake: Arc<Notify>,
        _stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        None
    }
}

#[cfg(feature = "sqlite")]
impl RelayConnection for diesel::SqliteConnection {}

#[cfg(feature = "postgres")]
impl RelayConnection for diesel::PgConnection {
    fn start_listener(
        pool: &Pool<ConnectionManager<Self>>,
        wake: Arc<Notify>,
        stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("thorn-listen".into())
            .spawn(move || listen(pool, wake, stop))
            .map_err(|error| tracing::error!(%error, "could not start the LISTEN thread"))
            .ok()
    }
}

/// Holds a pooled connection with `LISTEN thorn_outbox` and turns
/// notifications into wake-ups. libpq offers no blocking wait through
/// Diesel, so it checks the socket every 2 ms (a non-blocking read).
#[cfg(feature = "postgres")]
fn listen(
    pool: Pool<ConnectionManager<diesel::PgConnection>>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
) {
    use diesel::connection::SimpleConnection;
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match pool.get() {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "outbox listener: no connection; polling only");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(error) = conn.batch_execute(&format!("LISTEN {}", thorn_core::outbox::CHANNEL)) {
            tracing::warn!(%error, "outbox listener: LISTEN failed");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        // A wake-up now covers anything committed before LISTEN.
        wake.notify_one();
        'poll: while !stop.load(Ordering::Relaxed) {
            let mut woke = false;
            for n in conn.notifications_iter() {
                match n {
                    Ok(_) => woke = true,
                    Err(error) => {
                        tracing::warn!(%error, "outbox listener lost its connection");
                        break 'poll;
                    }
                }
            }
            if woke {
                wake.notify_one();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = conn.batch_execute("UNLISTEN *");
    }
}

/// Delivers committed outbox events from this process; stops when
/// dropped or on [`Relay::stop`].
#[derive(Debug)]
pub struct Relay {
    relay: Option<BackgroundRelay>,
    listener: Option<std::thread::JoinHandle<()>>,
    stop_listener: Arc<AtomicBool>,
}

impl Relay {
    /// Starts a relay over `pool` with default [`RelayOptions`] and
    /// `thorn`'s configuration and subscribers.
    pub fn start<C>(thorn: &Thorn, pool: Pool<ConnectionManager<C>>) -> Result<Self>
    where
        C: RelayConnection,
        DieselOutbox<C>: OutboxStore,
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
        C: RelayConnection,
        DieselOutbox<C>: OutboxStore,
    {
        let wake = thorn.outbox_signal().clone();
        let stop_listener = Arc::new(AtomicBool::new(false));
        let listener = C::start_listener(&pool, wake.clone(), stop_listener.clone());
        let relay = BackgroundRelay::start(
            thorn.clone(),
            Arc::new(DieselOutbox::new(pool).disable_failing_after(options.disable_after)),
            options,
            wake,
        )?;
        Ok(Relay {
            relay: Some(relay),
            listener,
            stop_listener,
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
        self.stop_listener.store(true, Ordering::Relaxed);
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
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
