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

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{Database, Dialect, Kind, Param, Work, atomically, execute, in_list, query};
use crate::outbox::{
    AfterAttempt, Among, AttemptRecord, ClaimedDelivery, DeliveryHistory, DeliveryInfo,
    DeliveryState, FanOut, OutboxCounts, OutboxStore, Pruned, StoredEvent, micros, now_micros,
};
use crate::subscriber::BoxFuture;
use crate::{Error, Result, SenderId};
use chrono::{DateTime, Utc};
use deliveries::{claim_deliveries, finish};
use events::{claim_events, fan_out};
use history::{
    COUNTS, Which, history_of, infos, prune_deliveries, prune_owner, replay, retry, uuid_of,
};

mod deliveries;
mod events;
mod history;
mod log;

pub use events::write_events;

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
            Box::pin(async move {
                infos(
                    conn,
                    Which {
                        state,
                        ..Which::default()
                    },
                    max,
                )
                .await
            })
        }))
    }

    /// One delivery and its attempts, oldest first.
    pub fn delivery(&self, id: Uuid) -> BoxFuture<'static, Result<Option<DeliveryHistory>>> {
        let which = Which {
            id: Some(id),
            ..Which::default()
        };
        self.run(Box::new(move |conn| {
            Box::pin(async move { history_of(conn, which).await })
        }))
    }

    /// Makes a delivery that is not claimed right now due at once (a dead
    /// or cancelled one gets another attempt), keeping its id: receivers
    /// de-duplicate it by `Hook-Delivery`. `false` when there is no such
    /// delivery or a worker holds it.
    pub fn retry_delivery(&self, id: Uuid) -> BoxFuture<'static, Result<bool>> {
        self.run(Box::new(move |conn| {
            Box::pin(async move { retry(conn, id, None).await })
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
        attempts: Vec<(AttemptRecord, AfterAttempt)>,
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
