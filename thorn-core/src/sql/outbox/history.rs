//! What operators and owners read and do afterwards: attempts, counts,
//! replay and pruning.

use uuid::Uuid;

use crate::outbox::{
    AttemptInfo, DeliveryHistory, DeliveryInfo, DeliveryState, Pruned, now_micros,
};
use crate::sql::{Connection, Kind, Param, execute, limit, query};
use crate::{Error, Result};

use super::deliveries::{delivery_row, insert_deliveries};
use super::events::{EVENT_COLUMNS, EVENT_KINDS, event_from_row, with_recipients};

/// The columns of `thorn_attempts`.
pub(super) const ATTEMPT_COLUMNS: &str =
    "delivery_id, attempt, started_at, status, latency_us, error, response, worker";

/// The statement counting events and deliveries by state, in one snapshot
/// (separate statements can count a delivery twice as it moves on).
pub(super) const COUNTS: &str = "SELECT \
    (SELECT COUNT(*) FROM thorn_events WHERE fanned_out_at IS NULL), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'pending'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'delivered'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'dead'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'cancelled'), \
    (SELECT COUNT(*) FROM thorn_deliveries WHERE state = 'pending' AND locked_until > $1)";
/// Deletes the deliveries `which` selects (with `params`), their attempts
/// and — with `events_before` — the events fanned out before it that have
/// no delivery left.
pub(super) async fn prune_deliveries(
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

pub(super) async fn prune_owner(
    conn: &mut dyn Connection,
    which: &str,
    owner: String,
) -> Result<Pruned> {
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

pub(super) fn uuid_of(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| Error::Store(format!("`{text}` is not a uuid: {e}").into()))
}

/// New deliveries of event `id` to today's stored subscriptions, its own
/// recipients and the static subscribers it went to.
pub(super) async fn replay(conn: &mut dyn Connection, id: Uuid) -> Result<Option<Vec<Uuid>>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM thorn_events WHERE id = $1");
    let Some(row) = query(conn, &sql, vec![id.to_string().into()], &EVENT_KINDS)
        .await?
        .pop()
    else {
        return Ok(None);
    };
    let mut event = event_from_row(&row, 0)?;
    with_recipients(conn, std::slice::from_mut(&mut event)).await?;
    let mut subscribers =
        crate::sql::store::matching(conn, &event.name, event.sender.as_ref()).await?;
    subscribers.extend(event.own_recipients().cloned());
    // And the other recipients it went to (static subscribers), as their
    // rows are now.
    let sql = format!(
        "SELECT {} FROM thorn_subscribers WHERE recipient_only AND uuid IN \
         (SELECT subscriber_uuid FROM thorn_deliveries WHERE event_id = $1)",
        crate::sql::store::COLUMNS
    );
    for row in query(
        conn,
        &sql,
        vec![id.to_string().into()],
        &crate::sql::store::KINDS,
    )
    .await?
    {
        let recipient = crate::sql::store::from_row(&row, 0)?;
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
    insert_deliveries(conn, rows).await?;
    Ok(Some(ids))
}
/// Makes delivery `id` — of `subscription`, when one is named — due at
/// once, whatever its state, unless a worker holds it; true when it did.
pub(super) async fn retry(
    conn: &mut dyn Connection,
    id: Uuid,
    subscription: Option<Uuid>,
) -> Result<bool> {
    let mut params: Vec<Param> = vec![now_micros().into(), id.to_string().into()];
    let mut sql = String::from(
        "UPDATE thorn_deliveries SET state = 'pending', run_at = $1, updated_at = $1 \
         WHERE id = $2 AND (locked_until IS NULL OR locked_until < $1)",
    );
    if let Some(subscription) = subscription {
        params.push(subscription.to_string().into());
        sql.push_str(" AND subscriber_uuid = $3");
    }
    Ok(execute(conn, &sql, params).await? == 1)
}

pub(super) fn int32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Which deliveries [`infos`] reads: any of these that are set.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Which {
    /// This one.
    pub(super) id: Option<Uuid>,
    /// This subscription's.
    pub(super) subscription: Option<Uuid>,
    /// In this state.
    pub(super) state: Option<DeliveryState>,
    /// Older than this one.
    pub(super) before: Option<Uuid>,
}

/// Deliveries with their event's name, newest first, as `which` selects;
/// `max` at most.
pub(super) async fn infos(
    conn: &mut dyn Connection,
    which: Which,
    max: usize,
) -> Result<Vec<DeliveryInfo>> {
    let mut params: Vec<Param> = vec![limit(max).into()];
    let mut filter = String::new();
    let mut and = |column: &str, op: &str, value: Param, params: &mut Vec<Param>| {
        params.push(value);
        filter.push_str(&format!(" AND d.{column} {op} ${}", params.len()));
    };
    if let Some(id) = which.id {
        and("id", "=", id.to_string().into(), &mut params);
    }
    if let Some(subscription) = which.subscription {
        and(
            "subscriber_uuid",
            "=",
            subscription.to_string().into(),
            &mut params,
        );
    }
    if let Some(state) = which.state {
        and("state", "=", state.as_str().into(), &mut params);
    }
    if let Some(before) = which.before {
        and("id", "<", before.to_string().into(), &mut params);
    }
    // Delivery ids are UUIDv7: by id is by creation, and a page's last id
    // is where the next begins.
    let sql = format!(
        "SELECT d.id, d.subscriber_uuid, d.event_id, e.name, d.url, d.state, d.attempts, \
         d.run_at, d.last_status, d.last_error, d.locked_by, d.created_at \
         FROM thorn_deliveries d JOIN thorn_events e ON e.id = d.event_id \
         WHERE 1 = 1{filter} ORDER BY d.id DESC LIMIT $1"
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
            Kind::Text,
            Kind::Int,
            Kind::BigInt,
            Kind::Int,
            Kind::Text,
            Kind::Text,
            Kind::BigInt,
        ],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DeliveryInfo {
            id: r.text(0)?,
            subscription: r.text(1)?,
            event_id: r.text(2)?,
            event: r.text(3)?,
            url: r.text(4)?,
            state: r.text(5)?,
            attempts: int32(r.int(6)?),
            run_at: r.int(7)?,
            last_status: r.opt_int(8)?.map(int32),
            last_error: r.opt_text(9)?,
            locked_by: r.opt_text(10)?,
            created_at: r.int(11)?,
        })
    })
    .collect()
}

/// Delivery `id` (of the deliveries `which` selects) and its attempts,
/// oldest first.
pub(super) async fn history_of(
    conn: &mut dyn Connection,
    which: Which,
) -> Result<Option<DeliveryHistory>> {
    let Some(info) = infos(conn, which, 1).await?.pop() else {
        return Ok(None);
    };
    let attempts = query(
        conn,
        "SELECT attempt, started_at, status, latency_us, error, response, worker \
         FROM thorn_attempts WHERE delivery_id = $1 ORDER BY attempt",
        vec![info.id.clone().into()],
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
}
