//! The delivery side: claiming due deliveries (with their events and
//! subscriptions), recording each attempt, and tracking subscription health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::outbox::{
    AfterAttempt, Among, AttemptRecord, ClaimedDelivery, DeliveryState, Health, StoredEvent,
    micros, now_micros,
};
use crate::sql::{
    Connection, Dialect, Kind, Param, execute, in_list, insert_rows, limit, placeholders, query,
};
use crate::{Result, Subscriber};

use super::events::{EVENT_COLUMNS, EVENT_KINDS, event_from_row, subscriptions};
use super::history::{ATTEMPT_COLUMNS, int32};

/// The columns of `thorn_deliveries` a delivery is written to.
pub(super) const DELIVERY_COLUMNS: &str = "id, event_id, subscriber_uuid, url, state, \
    attempts, run_at, locked_until, locked_by, created_at, updated_at";

/// One row of [`DELIVERY_COLUMNS`].
pub(super) const DELIVERY_ROW: &str = "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
/// Inserts rows of [`DELIVERY_ROW`]s (from [`delivery_row`]) into
/// `thorn_deliveries`, in multi-row statements.
pub(super) async fn insert_deliveries(conn: &mut dyn Connection, rows: Vec<Param>) -> Result<()> {
    insert_rows(
        conn,
        "thorn_deliveries",
        DELIVERY_COLUMNS,
        DELIVERY_ROW,
        "",
        rows,
    )
    .await
}

/// Claims up to `$4` pending deliveries due at `$3` — first attempts or
/// retries, `{which}` — whose lease (if any) ended and whose subscription
/// is not paused: lease `$1` for worker `$2`. The pause check is a scalar
/// subquery, not `NOT EXISTS`: PostgreSQL turns the latter into an anti
/// join over every pending delivery (a sort of the whole backlog per
/// claim) instead of walking the `run_at` index and stopping at the limit.
pub(super) const CLAIM_DELIVERIES: &str = "UPDATE thorn_deliveries
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
pub(super) const CLAIM_OF_SUBSCRIPTIONS: &str = "UPDATE thorn_deliveries
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
/// Claims due deliveries and loads what they need to be sent — events and
/// current subscriptions — in one transaction, so a claim never outlives
/// a failure to load it. Deliveries whose subscription was deleted are
/// cancelled on the way.
pub(super) async fn claim_deliveries(
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
pub(super) fn claimed_delivery(
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
pub(super) async fn claim_deliveries_joined(
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
        subs = crate::sql::store::COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let mut kinds = vec![Kind::Text, Kind::Text, Kind::Int];
    kinds.extend(EVENT_KINDS);
    kinds.extend(crate::sql::store::KINDS);
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
            (None, Some(_)) => Some(crate::sql::store::from_row(row, subs_at)?),
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
pub(super) async fn adopt(conn: &mut dyn Connection, claimed: &[ClaimedDelivery]) {
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
        crate::sql::store::write_recipients(conn, &recipients).await?;
        execute(conn, &sql, params).await
    };
    if let Err(error) = moved.await {
        tracing::warn!(%error, "could not move delivery snapshots to recipient rows");
    }
}

/// Marks deliveries whose subscription was deleted cancelled.
pub(super) async fn cancel(
    conn: &mut dyn Connection,
    cancelled: Vec<String>,
    now: i64,
) -> Result<()> {
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
pub(super) type Outcome<'a> = (&'static str, i64, Option<i32>, Option<&'a str>);

pub(super) async fn finish(
    conn: &mut dyn Connection,
    worker: String,
    attempts: Vec<(AttemptRecord, AfterAttempt)>,
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
            AfterAttempt::Retry { at } => *at,
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
pub(super) async fn track_health(
    conn: &mut dyn Connection,
    attempts: &[(AttemptRecord, AfterAttempt)],
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

/// The values of [`DELIVERY_ROW`] for a new pending delivery, claimed by
/// `claim` (worker, lease end) when given.
pub(super) fn delivery_row(
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
