//! The outbox tables — `thorn_events`, `thorn_deliveries`,
//! `thorn_attempts` — and every operation on them: [`SqlOutbox`] and
//! [`write_events`].
//!
//! A delivery refers to its subscriber by uuid and is sent to it as it is
//! at send time: its current URL, secret and digest; held while it is
//! paused; cancelled once it is deleted. Recipients that are not stored
//! subscriptions (static subscribers, an in-memory store's, per-event
//! ones) get a `recipient_only` row in `thorn_subscribers` when their
//! event is written or fanned out, so secrets are stored there only;
//! those rows are never matched or listed as subscriptions, and are
//! pruned with the last of their deliveries. (A delivery written by the
//! previous version with a snapshot in `recipient` is sent from it, and
//! its first claim moves the snapshot to a recipient row.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{
    Connection, Database, Dialect, Kind, Param, Row, Work, atomically, execute, in_list,
    insert_rows, limit, placeholders, query,
};
use crate::outbox::{
    Among, AttemptInfo, AttemptRecord, ClaimedDelivery, DeliveryHistory, DeliveryInfo,
    DeliveryState, FanOut, Health, Next, OutboxCounts, OutboxStore, Pruned, StoredEvent, micros,
    now_micros,
};
use crate::subscriber::BoxFuture;
use crate::{Error, Result, SenderId, Subscriber};
use chrono::{DateTime, Utc};

/// The columns of `thorn_events` an event is written to and read from.
const EVENT_COLUMNS: &str = "id, name, message, sender, options, created_at";

const EVENT_KINDS: [Kind; 6] = [
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::BigInt,
];

/// The columns of `thorn_deliveries` a delivery is written to.
const DELIVERY_COLUMNS: &str = "id, event_id, subscriber_uuid, url, state, \
    attempts, run_at, locked_until, locked_by, created_at, updated_at";

/// One row of [`DELIVERY_COLUMNS`].
const DELIVERY_ROW: &str = "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The columns of `thorn_attempts`.
const ATTEMPT_COLUMNS: &str =
    "delivery_id, attempt, started_at, status, latency_us, error, response, worker";

/// The statement counting events and deliveries by state, in one snapshot
/// (separate statements can count a delivery twice as it moves on).
const COUNTS: &str = "SELECT \
    (SELECT COUNT(*) FROM thorn_events WHERE fanned_out_at IS NULL), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'pending'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'delivered'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'dead'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'cancelled'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'pending' AND locked_until > $1)";

/// Claims up to `$4` events not yet fanned out whose lease (if any) ended
/// before `$3`: lease `$1` for worker `$2`.
const CLAIM_EVENTS: &str = "UPDATE thorn_events SET locked_until = $1, locked_by = $2
    WHERE id IN (SELECT id FROM thorn_events
        WHERE fanned_out_at IS NULL AND (locked_until IS NULL OR locked_until < $3)
        ORDER BY created_at LIMIT $4 {lock})
    RETURNING id, name, message, sender, options, created_at";

/// Claims up to `$4` pending deliveries due at `$3` — first attempts or
/// retries, `{which}` — whose lease (if any) ended and whose subscription
/// is not paused: lease `$1` for worker `$2`. The pause check is a scalar
/// subquery, not `NOT EXISTS`: PostgreSQL turns the latter into an anti
/// join over every pending delivery (a sort of the whole backlog per
/// claim) instead of walking the `run_at` index and stopping at the limit.
const CLAIM_DELIVERIES: &str = "UPDATE thorn_deliveries
    SET locked_until = $1, locked_by = $2, updated_at = $3
    WHERE id IN (SELECT d.id FROM thorn_deliveries d
        WHERE d.state = 'pending' AND d.run_at <= $3
          AND (d.locked_until IS NULL OR d.locked_until < $3) AND {which}{skip}
          AND (SELECT s.disabled_at FROM thorn_subscribers s
               WHERE s.uuid = d.subscriber_uuid) IS NULL
        ORDER BY d.run_at LIMIT $4 {lock})
    RETURNING id, event_id, subscriber_uuid, recipient, attempts";

/// [`CLAIM_DELIVERIES`] for [`Among::Only`] on PostgreSQL: the due
/// deliveries of each subscription in `$5` from its own range of the
/// `(subscriber_uuid, run_at)` index, however long a skipped one's
/// backlog is.
const CLAIM_OF_SUBSCRIPTIONS: &str = "UPDATE thorn_deliveries
    SET locked_until = $1, locked_by = $2, updated_at = $3
    WHERE id IN (SELECT c.id
        FROM (SELECT u FROM unnest(string_to_array($5, ',')) AS u
              WHERE (SELECT s.disabled_at FROM thorn_subscribers s WHERE s.uuid = u) IS NULL) o
        CROSS JOIN LATERAL (SELECT d.id, d.run_at FROM thorn_deliveries d
            WHERE d.subscriber_uuid = o.u AND d.state = 'pending' AND d.run_at <= $3
              AND (d.locked_until IS NULL OR d.locked_until < $3) AND {which}
            ORDER BY d.run_at LIMIT $4 FOR UPDATE SKIP LOCKED) c
        ORDER BY c.run_at LIMIT $4)
    RETURNING id, event_id, subscriber_uuid, recipient, attempts";

/// Inserts `events` into `thorn_events` on `conn` — inside the caller's
/// transaction, so they commit and roll back with the rows that raised
/// them — in multi-row statements.
///
/// A missing table is reported as [`Error::OutboxMissing`] naming
/// `migrate`, the call that creates it.
pub async fn write_events(
    conn: &mut dyn Connection,
    events: &[StoredEvent],
    migrate: &'static str,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // Per-event recipients: their rows first, only their uuids in the event.
    let recipients: Vec<&Subscriber> = events.iter().flat_map(|e| &e.options.subscribers).collect();
    let mut values: Vec<Param> = Vec::with_capacity(events.len() * 6);
    for e in events {
        values.extend([
            e.id.to_string().into(),
            e.name.clone().into(),
            e.message_json().into(),
            e.sender_json().into(),
            e.options_json().into(),
            e.created_at.into(),
        ]);
    }
    let template = format!("({})", placeholders(1, 6));
    let written = async {
        super::store::write_recipients(conn, &recipients).await?;
        insert_rows(conn, "thorn_events", EVENT_COLUMNS, &template, "", values).await
    };
    written.await.map_err(|error| match error {
        Error::Store(source)
            if crate::outbox::names_missing_table(&source.to_string(), "thorn_events") =>
        {
            Error::OutboxMissing { migrate, source }
        }
        other => other,
    })
}

/// The event in `row`, whose columns from `at` on are [`EVENT_COLUMNS`].
fn event_from_row(row: &Row, at: usize) -> Result<StoredEvent> {
    StoredEvent::from_columns(
        &row.text(at)?,
        row.text(at + 1)?,
        &row.text(at + 2)?,
        row.opt_text(at + 3)?.as_deref(),
        &row.text(at + 4)?,
        row.int(at + 5)?,
    )
}

/// The outbox in an application's database (SQLite or PostgreSQL),
/// through any ORM that provides a [`Database`]: what a relay or
/// `thorn worker` claims from, and what operators inspect.
///
/// The ORM crates name it `thorn::diesel::DieselOutbox` and
/// `thorn::seaorm::SeaOrmOutbox`.
#[derive(Debug)]
pub struct SqlOutbox<D> {
    db: Arc<D>,
    disable_after: Option<Duration>,
}

impl<D> Clone for SqlOutbox<D> {
    fn clone(&self) -> Self {
        SqlOutbox {
            db: self.db.clone(),
            disable_after: self.disable_after,
        }
    }
}

impl<D> SqlOutbox<D> {
    /// The database.
    pub fn database(&self) -> &D {
        &self.db
    }
}

impl<D: Database> SqlOutbox<D> {
    /// The outbox in `db` (Thorn's migrations applied).
    pub fn new(db: impl Into<D>) -> Self {
        SqlOutbox {
            db: Arc::new(db.into()),
            disable_after: None,
        }
    }

    /// Disables a subscription of `thorn_subscribers` once its deliveries
    /// have been failing, with no 2xx in between, for `window` (a log line
    /// says so; `thorn subscribers list` shows it); its pending deliveries
    /// are then dead. `None`: never.
    pub fn disable_failing_after(mut self, window: Option<Duration>) -> Self {
        self.disable_after = window;
        self
    }

    /// The window of [`SqlOutbox::disable_failing_after`].
    pub fn disables_failing_after(&self) -> Option<Duration> {
        self.disable_after
    }

    fn run<T: Send + 'static>(&self, work: Work<T>) -> BoxFuture<'static, Result<T>> {
        self.db.run(work)
    }

    /// Runs `{sql} id is one of deliveries` with `$1` = `first`, `$2` =
    /// `worker`; returns the rows changed.
    fn claims(
        &self,
        sql: &'static str,
        first: Param,
        worker: &str,
        deliveries: Vec<Uuid>,
    ) -> BoxFuture<'static, Result<usize>> {
        if deliveries.is_empty() {
            return Box::pin(std::future::ready(Ok(0)));
        }
        let mut params = vec![first, worker.into()];
        let ids = deliveries.iter().map(Uuid::to_string);
        let sql = format!(
            "{sql} {}",
            in_list(self.db.dialect(), "id", false, ids, &mut params)
        );
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let n = execute(conn, &sql, params).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
        }))
    }

    /// Fails with [`Error::SchemaOutdated`] naming `migrate` unless every
    /// migration of this version of Thorn is applied: what a relay checks
    /// before it starts.
    pub fn check_schema(&self, migrate: &'static str) -> BoxFuture<'static, Result<()>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let found = match query(
                    conn,
                    "SELECT MAX(version) FROM thorn_schema_migrations",
                    Vec::new(),
                    &[Kind::BigInt],
                )
                .await
                {
                    Ok(rows) => rows.first().map(|r| r.opt_int(0)).transpose()?.flatten(),
                    // No migrations table: no tables at all. Any other
                    // error (the database went away) is that error.
                    Err(Error::Store(e))
                        if crate::outbox::names_missing_table(
                            &e.to_string(),
                            "thorn_schema_migrations",
                        ) =>
                    {
                        None
                    }
                    Err(other) => return Err(other),
                };
                let needed = crate::schema::LATEST;
                if found.is_some_and(|v| v >= needed) {
                    Ok(())
                } else {
                    Err(Error::SchemaOutdated {
                        found,
                        needed,
                        migrate,
                    })
                }
            })
        }))
    }

    /// How many events and deliveries are in each state.
    pub fn counts(&self) -> BoxFuture<'static, Result<OutboxCounts>> {
        self.run(Box::new(|conn| {
            Box::pin(async move {
                let rows =
                    query(conn, COUNTS, vec![now_micros().into()], &[Kind::BigInt; 6]).await?;
                let row = rows.first().ok_or_else(|| {
                    Error::Store("outbox counts: the query returned no row".into())
                })?;
                Ok(OutboxCounts {
                    new_events: row.int(0)?,
                    pending: row.int(1)?,
                    delivered: row.int(2)?,
                    dead: row.int(3)?,
                    cancelled: row.int(4)?,
                    claimed: row.int(5)?,
                })
            })
        }))
    }

    /// Deliveries with their event's name, newest first, optionally only
    /// those in `state`; `max` at most.
    pub fn deliveries(
        &self,
        state: Option<DeliveryState>,
        max: usize,
    ) -> BoxFuture<'static, Result<Vec<DeliveryInfo>>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move { infos(conn, None, state, max).await })
        }))
    }

    /// One delivery and its attempts, oldest first.
    pub fn delivery(&self, id: Uuid) -> BoxFuture<'static, Result<Option<DeliveryHistory>>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let Some(info) = infos(conn, Some(id), None, 1).await?.pop() else {
                    return Ok(None);
                };
                let attempts = query(
                    conn,
                    "SELECT attempt, started_at, status, latency_us, error, response, worker \
                     FROM thorn_attempts WHERE delivery_id = $1 ORDER BY attempt",
                    vec![id.to_string().into()],
                    &[
                        Kind::Int,
                        Kind::BigInt,
                        Kind::Int,
                        Kind::BigInt,
                        Kind::Text,
                        Kind::Text,
                        Kind::Text,
                    ],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(AttemptInfo {
                        attempt: int32(r.int(0)?),
                        started_at: r.int(1)?,
                        status: r.opt_int(2)?.map(int32),
                        latency_us: r.int(3)?,
                        error: r.opt_text(4)?,
                        response: r.opt_text(5)?,
                        worker: r.text(6)?,
                    })
                })
                .collect::<Result<_>>()?;
                Ok(Some((info, attempts)))
            })
        }))
    }

    /// Makes a delivery that is not claimed right now due at once (a dead
    /// or cancelled one gets another attempt), keeping its id: receivers
    /// de-duplicate it by `Hook-Delivery`. `false` when there is no such
    /// delivery or a worker holds it.
    pub fn retry_delivery(&self, id: Uuid) -> BoxFuture<'static, Result<bool>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let now = now_micros();
                let n = execute(
                    conn,
                    "UPDATE thorn_deliveries SET state = 'pending', run_at = $1, updated_at = $1 \
                     WHERE id = $2 AND (locked_until IS NULL OR locked_until < $1)",
                    vec![now.into(), id.to_string().into()],
                )
                .await?;
                Ok(n == 1)
            })
        }))
    }

    /// Sends an event again, to the subscriptions stored in
    /// `thorn_subscribers` that match it now and to its own per-event
    /// recipients: new deliveries, due at once, whose ids this returns
    /// (receivers see them as `Hook-Delivery`), and to the static
    /// subscribers it went to (as their recipient rows are now; one
    /// configured since is not reached). `None` when there is no such
    /// event.
    pub fn replay_event(&self, id: Uuid) -> BoxFuture<'static, Result<Option<Vec<Uuid>>>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move { atomically!(conn, replay(conn, id).await) })
        }))
    }

    /// Sends again the dead deliveries of one subscription created in
    /// `from..until` (`until`: now when `None`), keeping their ids:
    /// receivers de-duplicate them by `Hook-Delivery`. Returns the ids.
    pub fn recover(
        &self,
        subscription: Uuid,
        from: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> BoxFuture<'static, Result<Vec<Uuid>>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let now = now_micros();
                query(
                    conn,
                    "UPDATE thorn_deliveries SET state = 'pending', run_at = $1, updated_at = $1 \
                     WHERE subscriber_uuid = $2 AND state = 'dead' \
                       AND created_at >= $3 AND created_at < $4 \
                       AND (locked_until IS NULL OR locked_until < $1) \
                     RETURNING id",
                    vec![
                        now.into(),
                        subscription.to_string().into(),
                        from.timestamp_micros().into(),
                        until
                            .map_or(now.saturating_add(1), |t| t.timestamp_micros())
                            .into(),
                    ],
                    &[Kind::Text],
                )
                .await?
                .iter()
                .map(|r| uuid_of(&r.text(0)?))
                .collect()
            })
        }))
    }

    /// Deletes finished deliveries (delivered, dead, cancelled) last
    /// changed more than `older_than` ago, their attempts, and the events
    /// left with no delivery. Pending deliveries are kept.
    pub fn prune_older(&self, older_than: Duration) -> BoxFuture<'static, Result<Pruned>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let cutoff = now_micros().saturating_sub(micros(older_than));
                let which = "SELECT id FROM thorn_deliveries \
                     WHERE state IN ('delivered', 'dead', 'cancelled') AND updated_at < $1";
                atomically!(
                    conn,
                    prune_deliveries(conn, which, vec![cutoff.into()], Some(cutoff)).await
                )
            })
        }))
    }

    /// Deletes one owner's data: every delivery (and attempt) of the
    /// subscriptions it owns, and every event it sent with their
    /// deliveries. Its subscriptions themselves are the store's.
    pub fn prune_owner(&self, owner: &SenderId) -> BoxFuture<'static, Result<Pruned>> {
        let owner = crate::schema::owner_key(owner);
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                let which = "SELECT d.id FROM thorn_deliveries d \
                     LEFT JOIN thorn_events e ON e.id = d.event_id \
                     WHERE d.subscriber_uuid IN (SELECT uuid FROM thorn_subscribers WHERE owner = $1) \
                        OR e.sender = $1";
                atomically!(conn, prune_owner(conn, which, owner).await)
            })
        }))
    }
}

/// Deletes the deliveries `which` selects (with `params`), their attempts
/// and — with `events_before` — the events fanned out before it that have
/// no delivery left.
async fn prune_deliveries(
    conn: &mut dyn Connection,
    which: &str,
    params: Vec<Param>,
    events_before: Option<i64>,
) -> Result<Pruned> {
    let attempts = execute(
        conn,
        &format!("DELETE FROM thorn_attempts WHERE delivery_id IN ({which})"),
        params.clone(),
    )
    .await?;
    let deliveries = execute(
        conn,
        &format!("DELETE FROM thorn_deliveries WHERE id IN ({which})"),
        params,
    )
    .await?;
    let events = match events_before {
        Some(cutoff) => {
            let events = execute(
                conn,
                "DELETE FROM thorn_events WHERE fanned_out_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM thorn_deliveries d WHERE d.event_id = thorn_events.id)",
                vec![cutoff.into()],
            )
            .await?;
            // Recipient rows go with the last of their deliveries, unless
            // an event not yet fanned out names them.
            execute(
                conn,
                "DELETE FROM thorn_subscribers WHERE recipient_only \
                 AND NOT EXISTS (SELECT 1 FROM thorn_deliveries d \
                     WHERE d.subscriber_uuid = thorn_subscribers.uuid) \
                 AND NOT EXISTS (SELECT 1 FROM thorn_events e WHERE e.fanned_out_at IS NULL \
                     AND e.options LIKE '%' || thorn_subscribers.uuid || '%')",
                Vec::new(),
            )
            .await?;
            events
        }
        None => 0,
    };
    Ok(Pruned {
        events,
        deliveries,
        attempts,
    })
}

async fn prune_owner(conn: &mut dyn Connection, which: &str, owner: String) -> Result<Pruned> {
    let mut pruned = prune_deliveries(conn, which, vec![owner.clone().into()], None).await?;
    pruned.events += execute(
        conn,
        "DELETE FROM thorn_events WHERE sender = $1",
        vec![owner.clone().into()],
    )
    .await?;
    // Its recipients' rows (and their secrets) too.
    execute(
        conn,
        "DELETE FROM thorn_subscribers WHERE recipient_only AND owner = $1",
        vec![owner.into()],
    )
    .await?;
    Ok(pruned)
}

fn uuid_of(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| Error::Store(format!("`{text}` is not a uuid: {e}").into()))
}

/// New deliveries of event `id` to today's stored subscriptions, its own
/// recipients and the static subscribers it went to.
async fn replay(conn: &mut dyn Connection, id: Uuid) -> Result<Option<Vec<Uuid>>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM thorn_events WHERE id = $1");
    let Some(row) = query(conn, &sql, vec![id.to_string().into()], &EVENT_KINDS)
        .await?
        .pop()
    else {
        return Ok(None);
    };
    let mut event = event_from_row(&row, 0)?;
    with_recipients(conn, std::slice::from_mut(&mut event)).await?;
    let mut subscribers = super::store::matching(conn, &event.name, event.sender.as_ref()).await?;
    subscribers.extend(event.own_recipients().cloned());
    // And the other recipients it went to (static subscribers), as their
    // rows are now.
    let sql = format!(
        "SELECT {} FROM thorn_subscribers WHERE recipient_only AND uuid IN \
         (SELECT subscriber_uuid FROM thorn_deliveries WHERE event_id = $1)",
        super::store::COLUMNS
    );
    for row in query(
        conn,
        &sql,
        vec![id.to_string().into()],
        &super::store::KINDS,
    )
    .await?
    {
        let recipient = super::store::from_row(&row, 0)?;
        if !subscribers.iter().any(|s| s.uuid == recipient.uuid) {
            subscribers.push(recipient);
        }
    }
    let now = now_micros();
    let mut ids = Vec::with_capacity(subscribers.len());
    let mut rows: Vec<Param> = Vec::new();
    for subscriber in &subscribers {
        let delivery = Uuid::now_v7();
        ids.push(delivery);
        rows.extend(delivery_row(
            delivery,
            &id.to_string(),
            subscriber,
            now,
            None,
        )?);
    }
    insert_rows(
        conn,
        "thorn_deliveries",
        DELIVERY_COLUMNS,
        DELIVERY_ROW,
        "",
        rows,
    )
    .await?;
    Ok(Some(ids))
}

/// The values of [`DELIVERY_ROW`] for a new pending delivery, claimed by
/// `claim` (worker, lease end) when given.
fn delivery_row(
    id: Uuid,
    event_id: &str,
    subscriber: &Subscriber,
    now: i64,
    claim: Option<(&str, i64)>,
) -> Result<[Param; 11]> {
    Ok([
        id.to_string().into(),
        event_id.into(),
        subscriber.uuid.to_string().into(),
        subscriber.url.to_string().into(),
        DeliveryState::Pending.as_str().into(),
        0i32.into(),
        now.into(),
        claim.map(|(_, until)| until).into(),
        claim.map(|(worker, _)| worker.to_owned()).into(),
        now.into(),
        now.into(),
    ])
}

fn int32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Deliveries with their event's name, newest first: one by `id`, or
/// those in `state`, or all; `max` at most.
async fn infos(
    conn: &mut dyn Connection,
    id: Option<Uuid>,
    state: Option<DeliveryState>,
    max: usize,
) -> Result<Vec<DeliveryInfo>> {
    let mut params: Vec<Param> = vec![limit(max).into()];
    let mut filter = String::new();
    if let Some(id) = id {
        params.push(id.to_string().into());
        filter.push_str(" AND d.id = $2");
    }
    if let Some(state) = state {
        params.push(state.as_str().into());
        filter.push_str(&format!(" AND d.state = ${}", params.len()));
    }
    let sql = format!(
        "SELECT d.id, d.event_id, e.name, d.url, d.state, d.attempts, d.run_at, \
         d.last_status, d.last_error, d.locked_by \
         FROM thorn_deliveries d JOIN thorn_events e ON e.id = d.event_id \
         WHERE 1 = 1{filter} ORDER BY d.created_at DESC, d.id DESC LIMIT $1"
    );
    query(
        conn,
        &sql,
        params,
        &[
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::Int,
            Kind::BigInt,
            Kind::Int,
            Kind::Text,
            Kind::Text,
        ],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DeliveryInfo {
            id: r.text(0)?,
            event_id: r.text(1)?,
            event: r.text(2)?,
            url: r.text(3)?,
            state: r.text(4)?,
            attempts: int32(r.int(5)?),
            run_at: r.int(6)?,
            last_status: r.opt_int(7)?.map(int32),
            last_error: r.opt_text(8)?,
            locked_by: r.opt_text(9)?,
        })
    })
    .collect()
}

async fn claim_events(
    conn: &mut dyn Connection,
    worker: String,
    max: usize,
    lease: Duration,
) -> Result<Vec<StoredEvent>> {
    let now = now_micros();
    let sql = CLAIM_EVENTS.replace("{lock}", conn.dialect().skip_locked());
    let mut events = query(
        conn,
        &sql,
        vec![
            now.saturating_add(micros(lease)).into(),
            worker.into(),
            now.into(),
            limit(max).into(),
        ],
        &EVENT_KINDS,
    )
    .await?
    .iter()
    .map(|row| event_from_row(row, 0))
    .collect::<Result<Vec<_>>>()?;
    // `RETURNING` keeps no order: oldest first again.
    events.sort_by_key(|e| (e.created_at, e.id));
    with_recipients(conn, &mut events).await?;
    Ok(events)
}

/// Loads the per-event recipients of `events` (stored as uuids) from
/// their rows; one that is gone (pruned) is left out.
async fn with_recipients(conn: &mut dyn Connection, events: &mut [StoredEvent]) -> Result<()> {
    let wanted: Vec<String> = events
        .iter()
        .flat_map(|e| {
            let o = &e.options;
            o.recipients
                .iter()
                .filter(|r| !o.subscribers.iter().any(|s| s.uuid == **r))
        })
        .map(Uuid::to_string)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let found = subscriptions(conn, wanted).await?;
    for e in events {
        let o = &mut e.options;
        for r in &o.recipients {
            if !o.subscribers.iter().any(|s| s.uuid == *r)
                && let Some(s) = found.get(&r.to_string())
            {
                o.subscribers.push(s.clone());
            }
        }
    }
    Ok(())
}

async fn fan_out(
    conn: &mut dyn Connection,
    worker: String,
    events: Vec<FanOut>,
    lease: Duration,
) -> Result<Vec<Uuid>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_micros();
    let locked_until = now.saturating_add(micros(lease));
    let ids: Vec<String> = events.iter().map(|p| p.event.to_string()).collect();
    let mut params: Vec<Param> = vec![now.into(), worker.clone().into()];
    let sql = format!(
        "UPDATE thorn_events SET fanned_out_at = $1, locked_until = NULL, locked_by = NULL \
         WHERE locked_by = $2 AND fanned_out_at IS NULL AND {} RETURNING id",
        in_list(conn.dialect(), "id", false, ids.clone(), &mut params)
    );
    let held = query(conn, &sql, params, &[Kind::Text])
        .await?
        .iter()
        .map(|row| row.text(0))
        .collect::<Result<Vec<_>>>()?;
    let mut written = Vec::with_capacity(held.len());
    let mut rows: Vec<Param> = Vec::new();
    let mut recipients = Vec::new();
    for (plan, event_id) in events.iter().zip(&ids) {
        if !held.contains(event_id) {
            continue;
        }
        written.push(plan.event);
        for d in &plan.deliveries {
            let claim = d.claimed.then_some((worker.as_str(), locked_until));
            rows.extend(delivery_row(d.id, event_id, &d.subscriber, now, claim)?);
            recipients.push(&d.subscriber);
        }
    }
    // A subscriber without a row gets one (a stored subscription's is
    // left as it is): what its deliveries are sent to.
    super::store::write_recipients(conn, &recipients).await?;
    insert_rows(
        conn,
        "thorn_deliveries",
        DELIVERY_COLUMNS,
        DELIVERY_ROW,
        "",
        rows,
    )
    .await?;
    Ok(written)
}

/// The subscriptions of `thorn_subscribers` with these uuids, by uuid.
async fn subscriptions(
    conn: &mut dyn Connection,
    uuids: Vec<String>,
) -> Result<HashMap<String, Subscriber>> {
    if uuids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut params = Vec::new();
    let sql = format!(
        "SELECT {} FROM thorn_subscribers WHERE {}",
        super::store::COLUMNS,
        in_list(conn.dialect(), "uuid", false, uuids, &mut params)
    );
    query(conn, &sql, params, &super::store::KINDS)
        .await?
        .iter()
        .map(|row| {
            let s = super::store::from_row(row, 0)?;
            Ok((s.uuid.to_string(), s))
        })
        .collect()
}

/// Claims due deliveries and loads what they need to be sent — events and
/// current subscriptions — in one transaction, so a claim never outlives
/// a failure to load it. Deliveries whose subscription was deleted are
/// cancelled on the way.
async fn claim_deliveries(
    conn: &mut dyn Connection,
    worker: String,
    first: bool,
    max: usize,
    lease: Duration,
    among: Among<'_>,
) -> Result<Vec<ClaimedDelivery>> {
    let now = now_micros();
    let which = if first {
        "d.attempts = 0"
    } else {
        "d.attempts > 0"
    };
    let mut params: Vec<Param> = vec![
        now.saturating_add(micros(lease)).into(),
        worker.into(),
        now.into(),
        limit(max).into(),
    ];
    // One statement text whatever is named (on PostgreSQL).
    let (only, uuids) = match among {
        Among::AllBut(skip) => (false, skip),
        Among::Only(these) => (true, these),
    };
    let uuids = uuids.iter().map(Uuid::to_string);
    let dialect = conn.dialect();
    let named = in_list(dialect, "d.subscriber_uuid", !only, uuids, &mut params);
    let sql = if only && dialect == Dialect::Postgres {
        CLAIM_OF_SUBSCRIPTIONS.replace("{which}", which)
    } else {
        CLAIM_DELIVERIES
            .replace("{lock}", dialect.skip_locked())
            .replace("{which}", which)
            .replace("{skip}", &format!(" AND {named}"))
    };
    if conn.dialect() == Dialect::Postgres {
        return claim_deliveries_joined(conn, &sql, params, now).await;
    }
    let claimed = query(
        conn,
        &sql,
        params,
        &[Kind::Text, Kind::Text, Kind::Text, Kind::Text, Kind::Int],
    )
    .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let mut event_ids = Vec::with_capacity(claimed.len());
    let mut stored = Vec::new();
    for row in &claimed {
        event_ids.push(row.text(1)?);
        if row.opt_text(3)?.is_none() {
            stored.push(row.text(2)?);
        }
    }
    event_ids.sort_unstable();
    event_ids.dedup();
    stored.sort_unstable();
    stored.dedup();
    let mut events = HashMap::with_capacity(event_ids.len());
    let mut params = Vec::new();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM thorn_events WHERE {}",
        in_list(conn.dialect(), "id", false, event_ids, &mut params)
    );
    for row in query(conn, &sql, params, &EVENT_KINDS).await? {
        events.insert(row.text(0)?, Arc::new(event_from_row(&row, 0)?));
    }
    let subscriptions = subscriptions(conn, stored).await?;
    let mut out = Vec::with_capacity(claimed.len());
    let mut cancelled = Vec::new();
    let mut snapshots = Vec::new();
    for row in &claimed {
        let id = row.text(0)?;
        let recipient = row.opt_text(3)?;
        let stored = match &recipient {
            Some(_) => None,
            None => subscriptions.get(&row.text(2)?).cloned(),
        };
        let event = events.get(&row.text(1)?).cloned();
        let legacy = recipient.is_some();
        match claimed_delivery(&id, recipient, stored, event, row.int(4)?)? {
            Some(d) => {
                if legacy {
                    snapshots.push(d.clone());
                }
                out.push(d);
            }
            None => cancelled.push(id),
        }
    }
    cancel(conn, cancelled, now).await?;
    adopt(conn, &snapshots).await;
    Ok(out)
}

/// A claimed delivery from its columns: sent to `recipient` (a snapshot)
/// or to `stored` (the subscription now); `None` when it has neither, its
/// subscription deleted. Errors name the row and the column.
fn claimed_delivery(
    id: &str,
    recipient: Option<String>,
    stored: Option<Subscriber>,
    event: Option<Arc<StoredEvent>>,
    attempts: i64,
) -> Result<Option<ClaimedDelivery>> {
    let corrupt = |what, detail: &dyn std::fmt::Display| {
        crate::schema::corrupt("thorn_deliveries", id, what, detail)
    };
    let subscriber = match (recipient, stored) {
        (Some(snapshot), _) => {
            serde_json::from_str(&snapshot).map_err(|e| corrupt("recipient", &e))?
        }
        (None, Some(subscription)) => subscription,
        (None, None) => return Ok(None),
    };
    Ok(Some(ClaimedDelivery {
        id: Uuid::parse_str(id).map_err(|e| corrupt("id", &e))?,
        event: event.ok_or_else(|| corrupt("event_id", &"no such event"))?,
        subscriber,
        attempts: u32::try_from(attempts).unwrap_or(0),
    }))
}

/// On PostgreSQL: the claim and what it needs — events and current
/// subscriptions — in one statement, one round trip.
async fn claim_deliveries_joined(
    conn: &mut dyn Connection,
    claim: &str,
    params: Vec<Param>,
    now: i64,
) -> Result<Vec<ClaimedDelivery>> {
    let sql = format!(
        "WITH c AS ({claim}) \
         SELECT c.id, c.recipient, c.attempts, {events}, {subs} \
         FROM c JOIN thorn_events e ON e.id = c.event_id \
         LEFT JOIN thorn_subscribers s ON s.uuid = c.subscriber_uuid",
        events = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        subs = super::store::COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let mut kinds = vec![Kind::Text, Kind::Text, Kind::Int];
    kinds.extend(EVENT_KINDS);
    kinds.extend(super::store::KINDS);
    let rows = query(conn, &sql, params, &kinds).await?;
    let mut events: HashMap<String, Arc<StoredEvent>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    let mut cancelled = Vec::new();
    let mut snapshots = Vec::new();
    let subs_at = 3 + EVENT_KINDS.len();
    for row in &rows {
        let id = row.text(0)?;
        let recipient = row.opt_text(1)?;
        let stored = match (&recipient, row.opt_text(subs_at)?) {
            (None, Some(_)) => Some(super::store::from_row(row, subs_at)?),
            _ => None,
        };
        let event_id = row.text(3)?;
        let event = match events.get(&event_id) {
            Some(e) => e.clone(),
            None => {
                let e = Arc::new(event_from_row(row, 3)?);
                events.insert(event_id, e.clone());
                e
            }
        };
        let legacy = recipient.is_some();
        match claimed_delivery(&id, recipient, stored, Some(event), row.int(2)?)? {
            Some(d) => {
                if legacy {
                    snapshots.push(d.clone());
                }
                out.push(d);
            }
            None => cancelled.push(id),
        }
    }
    cancel(conn, cancelled, now).await?;
    adopt(conn, &snapshots).await;
    Ok(out)
}

/// Moves the subscriber snapshots of `claimed` deliveries — written by the
/// previous version, secret included, into `recipient` — to recipient
/// rows. Best effort: the claim stands either way (a failure is logged,
/// and the next claim of such a delivery tries again).
async fn adopt(conn: &mut dyn Connection, claimed: &[ClaimedDelivery]) {
    if claimed.is_empty() {
        return;
    }
    let recipients: Vec<&Subscriber> = claimed.iter().map(|d| &d.subscriber).collect();
    let mut params = Vec::new();
    let ids = claimed.iter().map(|d| d.id.to_string());
    let sql = format!(
        "UPDATE thorn_deliveries SET recipient = NULL WHERE {}",
        in_list(conn.dialect(), "id", false, ids, &mut params)
    );
    let moved = async {
        super::store::write_recipients(conn, &recipients).await?;
        execute(conn, &sql, params).await
    };
    if let Err(error) = moved.await {
        tracing::warn!(%error, "could not move delivery snapshots to recipient rows");
    }
}

/// Marks deliveries whose subscription was deleted cancelled.
async fn cancel(conn: &mut dyn Connection, cancelled: Vec<String>, now: i64) -> Result<()> {
    if !cancelled.is_empty() {
        let mut params: Vec<Param> = vec![now.into()];
        let sql = format!(
            "UPDATE thorn_deliveries SET state = 'cancelled', locked_until = NULL, \
             locked_by = NULL, last_error = 'subscription deleted', updated_at = $1 \
             WHERE {}",
            in_list(conn.dialect(), "id", false, cancelled, &mut params)
        );
        execute(conn, &sql, params).await?;
    }
    Ok(())
}

/// Deliveries finished with the same outcome, released by one statement:
/// state, `run_at`, last status and last error.
type Outcome<'a> = (&'static str, i64, Option<i32>, Option<&'a str>);

async fn finish(
    conn: &mut dyn Connection,
    worker: String,
    attempts: Vec<(AttemptRecord, Next)>,
    disable_after: Option<Duration>,
) -> Result<usize> {
    if attempts.is_empty() {
        return Ok(0);
    }
    let now = now_micros();
    let mut rows: Vec<Param> = Vec::with_capacity(attempts.len() * 8);
    for (a, _) in &attempts {
        rows.extend([
            a.delivery_id.to_string().into(),
            int32(i64::from(a.number)).into(),
            a.started_at.into(),
            a.status.map(i32::from).into(),
            a.latency_us.into(),
            a.error.clone().into(),
            a.response.clone().into(),
            a.worker.clone().into(),
        ]);
    }
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
    // An attempt recorded already (by a worker whose lease expired) is kept once.
    let template = format!("({})", placeholders(1, 8));
    insert_rows(
        conn,
        "thorn_attempts",
        ATTEMPT_COLUMNS,
        &template,
        " ON CONFLICT DO NOTHING",
        rows,
    )
    .await?;
    let mut held = 0;
    for ((state, run_at, status, error), ids) in groups {
        // `attempts` counts the attempts recorded, nothing else.
        let mut params: Vec<Param> = vec![
            state.into(),
            run_at.into(),
            status.into(),
            error.map(str::to_owned).into(),
            now.into(),
            worker.clone().into(),
        ];
        let sql = format!(
            "UPDATE thorn_deliveries SET state = $1, run_at = $2, locked_until = NULL, \
             locked_by = NULL, last_status = $3, last_error = $4, updated_at = $5, \
             attempts = (SELECT COUNT(*) FROM thorn_attempts a \
                         WHERE a.delivery_id = thorn_deliveries.id) \
             WHERE locked_by = $6 AND {}",
            in_list(conn.dialect(), "id", false, ids, &mut params)
        );
        held += execute(conn, &sql, params).await?;
    }
    track_health(conn, &attempts, now, disable_after).await?;
    Ok(usize::try_from(held).unwrap_or(usize::MAX))
}

/// Keeps `failing_since` of stored subscriptions and disables those
/// failing for longer than `window`, marking their pending deliveries
/// dead. Recipient rows (no subscriptions) are untouched.
async fn track_health(
    conn: &mut dyn Connection,
    attempts: &[(AttemptRecord, Next)],
    now: i64,
    window: Option<Duration>,
) -> Result<()> {
    let Health {
        recovered: ok,
        failing: failed,
    } = Health::of(attempts);
    let dialect = conn.dialect();
    // `head`, then the uuids: (the condition on `column`, the parameters).
    let uuids_in = |head: Vec<Param>, column: &str, ids: &[String]| {
        let mut params = head;
        let sql = in_list(dialect, column, false, ids.iter().cloned(), &mut params);
        (sql, params)
    };
    if !ok.is_empty() {
        let (uuids, params) = uuids_in(Vec::new(), "uuid", &ok);
        let sql = format!(
            "UPDATE thorn_subscribers SET failing_since = NULL \
             WHERE failing_since IS NOT NULL AND NOT recipient_only AND {uuids}"
        );
        execute(conn, &sql, params).await?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    let (uuids, params) = uuids_in(vec![now.into()], "uuid", &failed);
    let sql = format!(
        "UPDATE thorn_subscribers SET failing_since = $1 \
         WHERE failing_since IS NULL AND NOT recipient_only AND {uuids}"
    );
    execute(conn, &sql, params).await?;
    let Some(window) = window else {
        return Ok(());
    };
    let since = now.saturating_sub(micros(window));
    let head = vec![
        now.into(),
        Health::disabled_reason(window).into(),
        since.into(),
    ];
    let (uuids, params) = uuids_in(head, "uuid", &failed);
    let sql = format!(
        "UPDATE thorn_subscribers SET disabled_at = $1, disabled_reason = $2 \
         WHERE disabled_at IS NULL AND failing_since <= $3 AND {uuids} \
         RETURNING uuid, url"
    );
    for row in query(conn, &sql, params, &[Kind::Text, Kind::Text]).await? {
        Health::log_disabled(&row.text(0)?, &row.text(1)?, window);
    }
    // Nothing more is attempted for a subscription disabled for failing.
    let (uuids, params) = uuids_in(vec![now.into()], "uuid", &failed);
    let sql = format!(
        "UPDATE thorn_deliveries SET state = 'dead', last_error = 'subscriber disabled', \
         updated_at = $1 \
         WHERE state = 'pending' AND (locked_until IS NULL OR locked_until < $1) \
         AND subscriber_uuid IN (SELECT uuid FROM thorn_subscribers \
             WHERE disabled_at IS NOT NULL AND {uuids})"
    );
    execute(conn, &sql, params).await?;
    Ok(())
}

/// An [`Among`] that owns its uuids, to move into a [`Work`].
enum Owned {
    AllBut(Vec<Uuid>),
    Only(Vec<Uuid>),
}

impl Owned {
    fn borrow(&self) -> Among<'_> {
        match self {
            Owned::AllBut(v) => Among::AllBut(v),
            Owned::Only(v) => Among::Only(v),
        }
    }
}

impl<D: Database> OutboxStore for SqlOutbox<D> {
    fn claim_events<'a>(
        &'a self,
        worker: &'a str,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>>> {
        let worker = worker.to_owned();
        self.run(Box::new(move |conn| {
            Box::pin(claim_events(conn, worker, max, lease))
        }))
    }

    fn fan_out<'a>(
        &'a self,
        worker: &'a str,
        events: Vec<FanOut>,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Uuid>>> {
        let worker = worker.to_owned();
        self.run(Box::new(move |conn| {
            Box::pin(async move { atomically!(conn, fan_out(conn, worker, events, lease).await) })
        }))
    }

    fn claim_deliveries<'a>(
        &'a self,
        worker: &'a str,
        first: bool,
        max: usize,
        lease: Duration,
        among: Among<'a>,
    ) -> BoxFuture<'a, Result<Vec<ClaimedDelivery>>> {
        let worker = worker.to_owned();
        let among = match among {
            Among::AllBut(skip) => Owned::AllBut(skip.to_vec()),
            Among::Only(these) => Owned::Only(these.to_vec()),
        };
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                // On PostgreSQL one statement; on SQLite a transaction.
                if conn.dialect() == Dialect::Postgres {
                    claim_deliveries(conn, worker, first, max, lease, among.borrow()).await
                } else {
                    atomically!(
                        conn,
                        claim_deliveries(conn, worker, first, max, lease, among.borrow()).await
                    )
                }
            })
        }))
    }

    fn renew<'a>(
        &'a self,
        worker: &'a str,
        deliveries: Vec<Uuid>,
        lease: Duration,
    ) -> BoxFuture<'a, Result<usize>> {
        let until = now_micros().saturating_add(micros(lease));
        let sql = "UPDATE thorn_deliveries SET locked_until = $1 \
                   WHERE locked_by = $2 AND state = 'pending' AND";
        self.claims(sql, until.into(), worker, deliveries)
    }

    fn prune(&self, older_than: Duration) -> BoxFuture<'_, Result<Pruned>> {
        self.prune_older(older_than)
    }

    fn release<'a>(
        &'a self,
        worker: &'a str,
        deliveries: Vec<Uuid>,
    ) -> BoxFuture<'a, Result<usize>> {
        let sql = "UPDATE thorn_deliveries SET locked_until = NULL, locked_by = NULL, \
                   updated_at = $1 WHERE locked_by = $2 AND";
        self.claims(sql, now_micros().into(), worker, deliveries)
    }

    fn finish<'a>(
        &'a self,
        worker: &'a str,
        attempts: Vec<(AttemptRecord, Next)>,
    ) -> BoxFuture<'a, Result<usize>> {
        let worker = worker.to_owned();
        let disable_after = self.disable_after;
        self.run(Box::new(move |conn| {
            Box::pin(async move {
                atomically!(conn, finish(conn, worker, attempts, disable_after).await)
            })
        }))
    }
}
