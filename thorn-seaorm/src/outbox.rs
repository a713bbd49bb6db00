//! The transactional outbox in SeaORM: events written through the caller's
//! connection or transaction, and the relay that delivers them once
//! committed.
//!
//! With the outbox on (`THORN_OUTBOX=true`, [`Config::outbox`](thorn_core::Config::outbox)),
//! each model event that honours the transaction is written to
//! `thorn_events` through the transaction the hook was given
//! ([`write_events`]): inside [`crate::transaction`] / [`crate::begin`]
//! as one multi-row `INSERT` just before `COMMIT`, inside a transaction
//! of SeaORM's own right after the statement. A save on a bare
//! `DatabaseConnection` is refused: its row would commit before its event
//! is written.
//!
//! A [`Relay`] delivers committed events from this process, on the
//! caller's tokio runtime: on PostgreSQL a `LISTEN thorn_outbox`
//! connection wakes it at commit, this process's own writes wake it on
//! any database, and it polls as a backstop so events written by other
//! processes are delivered too. On PostgreSQL any number of relays and
//! `thorn worker` processes (Diesel or SeaORM) can share the tables:
//! claims use `FOR UPDATE SKIP LOCKED` and leases.
//!
//! ```no_run
//! use thorn_core::{Config, Thorn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = sea_orm::Database::connect("sqlite://app.sqlite3?mode=rwc").await?;
//! thorn_seaorm::migrate(&db).await?;
//! let config = Config { outbox: true, ..Config::from_env()? };
//! let thorn = Thorn::new(config)?;
//! let relay = thorn_seaorm::outbox::Relay::start(&thorn, db.clone()).await?;
//! // ... saves through ActiveModels, inside thorn_seaorm::transaction ...
//! relay.stop().await?; // finishes deliveries in flight
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, Statement,
    TransactionTrait, Value,
};
use sqlx::postgres::PgListener;
use thorn_core::outbox::{
    AttemptRecord, CHANNEL, ClaimedDelivery, DeliveryState, FanOut, Health, Next, OutboxStore,
    RelayCounters, RelayOptions, RelayStats, StoredEvent, micros, now_micros, run_relay,
};
use thorn_core::schema;
use thorn_core::subscriber::BoxFuture;
use thorn_core::{Error, Result, Thorn};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::store::{column, execute, placeholders, query, store_err, value_rows};

/// Rows per multi-row `INSERT`: bounded statements (and parameter counts)
/// for events with many subscribers.
const ROWS_PER_INSERT: usize = 500;

/// The most bytes of values one statement carries (when its rows allow).
/// sqlx does not set `TCP_NODELAY`, and a message larger than the socket's
/// first send buffer (16 KiB by default on Linux) is written in two parts,
/// the second held back by Nagle's algorithm until PostgreSQL's delayed
/// ACK, 40 ms later. Statements below this size go out in one write.
const BYTES_PER_INSERT: usize = 12 * 1024;

/// The columns of `thorn_events` an event is written to.
const EVENT_COLUMNS: &str = "id, name, message, sender, options, created_at";

/// The columns of `thorn_deliveries` a delivery is written to.
const DELIVERY_COLUMNS: &str = "id, event_id, subscriber_uuid, subscriber, url, state, \
                                attempts, run_at, locked_until, locked_by, created_at, updated_at";

/// The columns of `thorn_attempts`.
const ATTEMPT_COLUMNS: &str =
    "delivery_id, attempt, started_at, status, latency_us, error, response, worker";

/// Inserts `events` into `thorn_events` through `db` — a connection, or a
/// transaction so the events commit and roll back with the caller's rows —
/// in multi-row statements of at most 500 rows.
///
/// The columns are encoded as `thorn-diesel` encodes them (JSON text for
/// the message, sender and options; microseconds since the epoch), so any
/// relay or `thorn worker` delivers them. Call
/// `thorn.outbox_signal().notify_one()` once committed to wake this
/// process's relay at once.
pub async fn write_events<C: ConnectionTrait>(db: &C, events: &[StoredEvent]) -> Result<(), DbErr> {
    let mut values: Vec<Value> = Vec::with_capacity(events.len() * 6);
    for e in events {
        values.extend([
            Value::from(e.id.to_string()),
            Value::from(e.name.clone()),
            Value::from(e.message_json()),
            Value::from(e.sender_json()),
            Value::from(e.options_json()),
            Value::from(e.created_at),
        ]);
    }
    insert_rows(db, "thorn_events", EVENT_COLUMNS, 6, "", values).await
}

/// Runs `INSERT INTO {table} ({columns}) VALUES (...), (...){tail}` for
/// `values`, `cols` of them per row, [`ROWS_PER_INSERT`] rows and (unless
/// one row is larger) [`BYTES_PER_INSERT`] bytes at most per statement.
async fn insert_rows<C: ConnectionTrait>(
    db: &C,
    table: &str,
    columns: &str,
    cols: usize,
    tail: &str,
    values: Vec<Value>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    debug_assert_eq!(values.len() % cols, 0, "{table}: values are whole rows");
    // Rows per statement, decided in one pass; then the values move once.
    let mut statements = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    for row in values.chunks(cols) {
        let size: usize = row.iter().map(value_bytes).sum();
        if rows == ROWS_PER_INSERT || (rows > 0 && bytes + size > BYTES_PER_INSERT) {
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
        let sql = format!(
            "INSERT INTO {table} ({columns}) VALUES {}{tail}",
            value_rows(rows, cols)
        );
        let batch: Vec<Value> = values.by_ref().take(rows * cols).collect();
        db.execute_raw(Statement::from_sql_and_values(backend, sql, batch))
            .await?;
    }
    Ok(())
}

/// About how many bytes `value` takes on the wire.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(Some(s)) => s.len() + 4,
        _ => 8,
    }
}

/// The outbox tables through a SeaORM connection: the [`OutboxStore`] a
/// relay or worker claims from.
#[derive(Debug, Clone)]
pub struct SeaOrmOutbox {
    db: DatabaseConnection,
    disable_after: Option<Duration>,
}

impl SeaOrmOutbox {
    /// The outbox in the database of `db` (run [`crate::migrate`] first).
    pub fn new(db: DatabaseConnection) -> Self {
        SeaOrmOutbox {
            db,
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

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    fn postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// How many events and deliveries are in each state.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        let rows = query(&self.db, schema::COUNTS_SQL, vec![now_micros().into()]).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Store("outbox counts: the query returned no row".into()))?;
        Ok(OutboxCounts {
            new_events: column(row, "new_events")?,
            pending: column(row, "pending")?,
            delivered: column(row, "delivered")?,
            dead: column(row, "dead")?,
            claimed: column(row, "claimed")?,
        })
    }
}

pub use thorn_core::outbox::OutboxCounts;

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The event in a row holding [`EVENT_COLUMNS`].
fn event_from_row(row: &QueryResult) -> Result<StoredEvent> {
    let id: String = column(row, "id")?;
    let message: String = column(row, "message")?;
    let sender: Option<String> = column(row, "sender")?;
    let options: String = column(row, "options")?;
    StoredEvent::from_columns(
        &id,
        column(row, "name")?,
        &message,
        sender.as_deref(),
        &options,
        column(row, "created_at")?,
    )
}

/// `head` followed by each of `list`, as statement values.
fn values_with(mut head: Vec<Value>, list: &[String]) -> Vec<Value> {
    head.extend(list.iter().map(Value::from));
    head
}

/// Keeps `failing_since` of stored subscriptions and disables those
/// failing for longer than `window`, marking their pending deliveries
/// dead. Static subscribers have no row: untouched.
async fn track_health<C: ConnectionTrait>(
    db: &C,
    attempts: &[(AttemptRecord, Next)],
    now: i64,
    window: Option<Duration>,
) -> Result<()> {
    let Health {
        recovered: ok,
        failing: failed,
    } = Health::of(attempts);
    if !ok.is_empty() {
        let sql = format!(
            "UPDATE thorn_subscribers SET failing_since = NULL \
             WHERE failing_since IS NOT NULL AND uuid IN ({})",
            placeholders(1, ok.len())
        );
        execute(db, sql, values_with(Vec::new(), &ok)).await?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE thorn_subscribers SET failing_since = $1 \
         WHERE failing_since IS NULL AND uuid IN ({})",
        placeholders(2, failed.len())
    );
    execute(db, sql, values_with(vec![now.into()], &failed)).await?;
    let Some(window) = window else {
        return Ok(());
    };
    let since = now.saturating_sub(micros(window));
    let sql = format!(
        "UPDATE thorn_subscribers SET disabled_at = $1, disabled_reason = $2 \
         WHERE disabled_at IS NULL AND failing_since <= $3 AND uuid IN ({}) \
         RETURNING uuid, url",
        placeholders(4, failed.len())
    );
    let reason = Health::disabled_reason(window);
    let disabled = query(
        db,
        sql,
        values_with(vec![now.into(), reason.into(), since.into()], &failed),
    )
    .await?;
    for row in &disabled {
        let uuid: String = column(row, "uuid")?;
        let url: String = column(row, "url")?;
        Health::log_disabled(&uuid, &url, window);
    }
    // Nothing more is attempted for a disabled subscription.
    let sql = format!(
        "SELECT uuid FROM thorn_subscribers WHERE disabled_at IS NOT NULL AND uuid IN ({})",
        placeholders(1, failed.len())
    );
    let off = query(db, sql, values_with(Vec::new(), &failed))
        .await?
        .iter()
        .map(|row| column::<String>(row, "uuid"))
        .collect::<Result<Vec<_>>>()?;
    if off.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE thorn_deliveries SET state = $1, last_error = $2, updated_at = $3 \
         WHERE state = $4 AND (locked_until IS NULL OR locked_until < $3) \
         AND subscriber_uuid IN ({})",
        placeholders(5, off.len())
    );
    let head = vec![
        DeliveryState::Dead.as_str().into(),
        "subscriber disabled".into(),
        now.into(),
        DeliveryState::Pending.as_str().into(),
    ];
    execute(db, sql, values_with(head, &off)).await?;
    Ok(())
}

/// Deliveries finished with the same outcome, released by one statement:
/// state, `run_at`, last status and last error.
type Outcome<'a> = (&'static str, i64, Option<i32>, Option<&'a str>);

impl SeaOrmOutbox {
    async fn claim_new_events(
        &self,
        worker: &str,
        limit_to: usize,
        lease: Duration,
    ) -> Result<Vec<StoredEvent>> {
        let now = now_micros();
        let rows = query(
            &self.db,
            schema::claim_events_sql(self.postgres()),
            vec![
                now.saturating_add(micros(lease)).into(),
                worker.into(),
                now.into(),
                limit(limit_to).into(),
            ],
        )
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn write_fan_out(
        &self,
        worker: &str,
        events: Vec<FanOut>,
        lease: Duration,
    ) -> Result<Vec<Uuid>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_micros();
        let locked_until = now.saturating_add(micros(lease));
        let ids: Vec<String> = events.iter().map(|p| p.event.to_string()).collect();
        let txn = self.db.begin().await.map_err(store_err)?;
        let sql = format!(
            "UPDATE thorn_events SET fanned_out_at = $1, locked_until = NULL, locked_by = NULL \
             WHERE locked_by = $2 AND fanned_out_at IS NULL AND id IN ({}) RETURNING id",
            placeholders(3, ids.len())
        );
        let held = query(
            &txn,
            sql,
            values_with(vec![now.into(), worker.into()], &ids),
        )
        .await?
        .iter()
        .map(|row| column::<String>(row, "id"))
        .collect::<Result<Vec<_>>>()?;
        let mut written = Vec::with_capacity(held.len());
        let mut rows: Vec<Value> = Vec::new();
        for (plan, event_id) in events.iter().zip(&ids) {
            if !held.contains(event_id) {
                continue;
            }
            written.push(plan.event);
            for d in &plan.deliveries {
                rows.extend([
                    Value::from(d.id.to_string()),
                    Value::from(event_id),
                    Value::from(d.subscriber.uuid.to_string()),
                    Value::from(
                        serde_json::to_string(&d.subscriber).expect("subscribers are JSON"),
                    ),
                    Value::from(d.subscriber.url.to_string()),
                    Value::from(DeliveryState::Pending.as_str()),
                    Value::from(i32::from(d.claimed)),
                    Value::from(now),
                    Value::from(d.claimed.then_some(locked_until)),
                    Value::from(d.claimed.then(|| worker.to_owned())),
                    Value::from(now),
                    Value::from(now),
                ]);
            }
        }
        insert_rows(&txn, "thorn_deliveries", DELIVERY_COLUMNS, 12, "", rows)
            .await
            .map_err(store_err)?;
        txn.commit().await.map_err(store_err)?;
        Ok(written)
    }

    async fn claim_due(
        &self,
        worker: &str,
        first: bool,
        limit_to: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>> {
        let now = now_micros();
        let rows = query(
            &self.db,
            schema::claim_deliveries_sql(self.postgres(), first),
            vec![
                now.saturating_add(micros(lease)).into(),
                worker.into(),
                now.into(),
                limit(limit_to).into(),
            ],
        )
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut event_ids = rows
            .iter()
            .map(|row| column::<String>(row, "event_id"))
            .collect::<Result<Vec<_>>>()?;
        event_ids.sort_unstable();
        event_ids.dedup();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM thorn_events WHERE id IN ({})",
            placeholders(1, event_ids.len())
        );
        let mut events = HashMap::with_capacity(event_ids.len());
        for row in query(&self.db, sql, values_with(Vec::new(), &event_ids)).await? {
            let id: String = column(&row, "id")?;
            events.insert(id, Arc::new(event_from_row(&row)?));
        }
        rows.iter()
            .map(|row| {
                ClaimedDelivery::from_columns(
                    &column::<String>(row, "id")?,
                    &column::<String>(row, "event_id")?,
                    &events,
                    &column::<String>(row, "subscriber")?,
                    column(row, "attempts")?,
                )
            })
            .collect()
    }

    async fn record(&self, worker: &str, attempts: Vec<(AttemptRecord, Next)>) -> Result<usize> {
        if attempts.is_empty() {
            return Ok(0);
        }
        let now = now_micros();
        let mut rows: Vec<Value> = Vec::with_capacity(attempts.len() * 8);
        for (a, _) in &attempts {
            rows.extend([
                Value::from(a.delivery_id.to_string()),
                Value::from(i32::try_from(a.number).unwrap_or(i32::MAX)),
                Value::from(a.started_at),
                Value::from(a.status.map(i32::from)),
                Value::from(a.latency_us),
                Value::from(a.error.clone()),
                Value::from(a.response.clone()),
                Value::from(a.worker.clone()),
            ]);
        }
        // Deliveries with the same outcome are released by one statement.
        let mut groups: Vec<(Outcome<'_>, Vec<String>)> = Vec::new();
        for (a, next) in &attempts {
            let run_at = match next {
                Next::Retry { at } => *at,
                _ => now,
            };
            let key = (
                next.state().as_str(),
                run_at,
                a.status.map(i32::from),
                a.error.as_deref(),
            );
            let id = a.delivery_id.to_string();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ids)) => ids.push(id),
                None => groups.push((key, vec![id])),
            }
        }
        let txn = self.db.begin().await.map_err(store_err)?;
        // An attempt recorded already (by a worker whose lease expired) is kept once.
        insert_rows(
            &txn,
            "thorn_attempts",
            ATTEMPT_COLUMNS,
            8,
            " ON CONFLICT DO NOTHING",
            rows,
        )
        .await
        .map_err(store_err)?;
        let mut held = 0;
        for ((state, run_at, status, error), ids) in &groups {
            let sql = format!(
                "UPDATE thorn_deliveries SET state = $1, run_at = $2, locked_until = NULL, \
                 locked_by = NULL, last_status = $3, last_error = $4, updated_at = $5 \
                 WHERE locked_by = $6 AND id IN ({})",
                placeholders(7, ids.len())
            );
            let head = vec![
                Value::from(*state),
                Value::from(*run_at),
                Value::from(*status),
                Value::from(*error),
                Value::from(now),
                Value::from(worker),
            ];
            held += execute(&txn, sql, values_with(head, ids)).await?;
        }
        track_health(&txn, &attempts, now, self.disable_after).await?;
        txn.commit().await.map_err(store_err)?;
        Ok(usize::try_from(held).unwrap_or(usize::MAX))
    }
}

impl OutboxStore for SeaOrmOutbox {
    fn claim_events<'a>(
        &'a self,
        worker: &'a str,
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>>> {
        Box::pin(self.claim_new_events(worker, limit, lease))
    }

    fn fan_out<'a>(
        &'a self,
        worker: &'a str,
        events: Vec<FanOut>,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        Box::pin(self.write_fan_out(worker, events, lease))
    }

    fn claim_deliveries<'a>(
        &'a self,
        worker: &'a str,
        first: bool,
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<ClaimedDelivery>>> {
        Box::pin(self.claim_due(worker, first, limit, lease))
    }

    fn finish<'a>(
        &'a self,
        worker: &'a str,
        attempts: Vec<(AttemptRecord, Next)>,
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(self.record(worker, attempts))
    }
}

/// Connects a `LISTEN thorn_outbox` connection from `pool`.
async fn connect_listener(pool: &sqlx::PgPool) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Holds a `LISTEN thorn_outbox` connection (`first`, or one of its own)
/// and turns notifications into wake-ups, reconnecting after a second when
/// the connection fails. Runs until aborted or the pool is closed.
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, mut first: Option<PgListener>) {
    loop {
        let mut listener = match first.take() {
            Some(listener) => listener,
            None => match connect_listener(&pool).await {
                Ok(listener) => listener,
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    tracing::warn!(%error, "outbox listener: LISTEN failed; polling only");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        // A wake-up now covers anything committed before LISTEN.
        wake.notify_one();
        loop {
            match listener.try_recv().await {
                // A notification; or (`None`) the connection was lost and
                // LISTEN re-established, notifications in between lost:
                // look now either way.
                Ok(_) => wake.notify_one(),
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    tracing::warn!(%error, "outbox listener lost its connection");
                    break;
                }
            }
        }
        drop(listener);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Delivers committed outbox events from this process, as tasks on the
/// tokio runtime that started it.
///
/// [`Relay::stop`] stops claiming and waits for the deliveries in flight
/// to finish and be recorded. Dropping the relay stops it too, without
/// waiting: deliveries in flight finish in the background (as long as the
/// runtime runs).
#[derive(Debug)]
pub struct Relay {
    stop: watch::Sender<bool>,
    relay: Option<JoinHandle<Result<()>>>,
    listener: Option<JoinHandle<()>>,
    counters: Arc<RelayCounters>,
}

impl Relay {
    /// Starts a relay over `db` with default [`RelayOptions`] and
    /// `thorn`'s configuration and subscribers. Call it from within a
    /// tokio runtime, which runs the relay.
    pub async fn start(thorn: &Thorn, db: DatabaseConnection) -> Result<Self> {
        Self::start_with(thorn, db, RelayOptions::default()).await
    }

    /// [`Relay::start`] with options.
    ///
    /// On PostgreSQL the relay holds one connection of `db`'s pool for
    /// `LISTEN thorn_outbox`, established before this returns when the
    /// database is reachable (else the listener retries each second while
    /// the relay polls).
    pub async fn start_with(
        thorn: &Thorn,
        db: DatabaseConnection,
        options: RelayOptions,
    ) -> Result<Self> {
        let wake = thorn.outbox_signal().clone();
        let listener =
            if db.get_database_backend() == DbBackend::Postgres && !db.is_mock_connection() {
                let pool = db.get_postgres_connection_pool().clone();
                let first = match connect_listener(&pool).await {
                    Ok(listener) => Some(listener),
                    Err(error) => {
                        tracing::warn!(%error, "outbox listener: LISTEN failed; polling only");
                        None
                    }
                };
                Some(tokio::spawn(listen(pool, wake.clone(), first)))
            } else {
                None
            };
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(RelayCounters::default());
        let store = SeaOrmOutbox::new(db).disable_failing_after(options.disable_after);
        let run = run_relay(
            thorn.clone(),
            Arc::new(store),
            options,
            wake,
            stopped,
            counters.clone(),
        );
        // Logged here too: a relay dropped without `stop` would lose it.
        let relay = tokio::spawn(async move {
            let result = run.await;
            if let Err(error) = &result {
                tracing::error!(%error, "outbox relay stopped");
            }
            result
        });
        Ok(Relay {
            stop,
            relay: Some(relay),
            listener,
            counters,
        })
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops claiming, lets deliveries in flight finish and be recorded,
    /// and returns the relay's error if it stopped on one.
    pub async fn stop(mut self) -> Result<()> {
        self.signal_stop();
        if let Some(listener) = self.listener.take() {
            // Aborted, not failed: nothing to report.
            let _ = listener.await;
        }
        match self.relay.take() {
            Some(relay) => relay.await.unwrap_or_else(|error| {
                Err(Error::Config {
                    key: "relay task".into(),
                    message: error.to_string(),
                })
            }),
            None => Ok(()),
        }
    }

    /// Tells the relay to stop claiming and ends the listener.
    fn signal_stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.signal_stop();
    }
}
