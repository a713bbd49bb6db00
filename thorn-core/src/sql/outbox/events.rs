//! The event side of the outbox: writing events in the caller's
//! transaction, claiming them, and fanning each out into deliveries.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::outbox::{FanOut, StoredEvent, micros, now_micros};
use crate::sql::{Connection, Kind, Param, Row, in_list, insert_rows, limit, placeholders, query};
use crate::{Error, Result, Subscriber};

use super::deliveries::{delivery_row, insert_deliveries};

/// The columns of `thorn_events` an event is written to and read from.
pub(super) const EVENT_COLUMNS: &str = "id, name, message, sender, options, created_at";

pub(super) const EVENT_KINDS: [Kind; 6] = [
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::Text,
    Kind::BigInt,
];
/// Claims up to `$4` events not yet fanned out whose lease (if any) ended
/// before `$3`: lease `$1` for worker `$2`.
pub(super) const CLAIM_EVENTS: &str = "UPDATE thorn_events SET locked_until = $1, locked_by = $2
    WHERE id IN (SELECT id FROM thorn_events
        WHERE fanned_out_at IS NULL AND (locked_until IS NULL OR locked_until < $3)
        ORDER BY created_at LIMIT $4 {lock})
    RETURNING id, name, message, sender, options, created_at";
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
        crate::sql::store::write_recipients(conn, &recipients).await?;
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
pub(super) fn event_from_row(row: &Row, at: usize) -> Result<StoredEvent> {
    StoredEvent::from_columns(
        &row.text(at)?,
        row.text(at + 1)?,
        &row.text(at + 2)?,
        row.opt_text(at + 3)?.as_deref(),
        &row.text(at + 4)?,
        row.int(at + 5)?,
    )
}
pub(super) async fn claim_events(
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
pub(super) async fn with_recipients(
    conn: &mut dyn Connection,
    events: &mut [StoredEvent],
) -> Result<()> {
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

pub(super) async fn fan_out(
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
    crate::sql::store::write_recipients(conn, &recipients).await?;
    insert_deliveries(conn, rows).await?;
    Ok(written)
}

/// The subscriptions of `thorn_subscribers` with these uuids, by uuid.
pub(super) async fn subscriptions(
    conn: &mut dyn Connection,
    uuids: Vec<String>,
) -> Result<HashMap<String, Subscriber>> {
    if uuids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut params = Vec::new();
    let sql = format!(
        "SELECT {} FROM thorn_subscribers WHERE {}",
        crate::sql::store::COLUMNS,
        in_list(conn.dialect(), "uuid", false, uuids, &mut params)
    );
    query(conn, &sql, params, &crate::sql::store::KINDS)
        .await?
        .iter()
        .map(|row| {
            let s = crate::sql::store::from_row(row, 0)?;
            Ok((s.uuid.to_string(), s))
        })
        .collect()
}
