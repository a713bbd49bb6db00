//! The durable outbox: events written to the application's database in the
//! caller's own transaction, and the relay that delivers them after commit.
//!
//! With the outbox on ([`Config::outbox`](crate::Config::outbox),
//! `THORN_OUTBOX=true`), a model event that honours the transaction is not
//! sent by the write that raised it. It becomes a [`StoredEvent`] that the
//! ORM integration inserts through the caller's connection — for a managed
//! transaction, all of its events in one multi-row `INSERT` just before
//! `COMMIT` ([`crate::integration`]) — so the event exists if and only if
//! the row committed: a rolled-back transaction or savepoint takes its
//! events with it.
//!
//! A relay ([`run_relay`](crate::integration::run_relay), started in-process by the integrations or by
//! `thorn worker`) then works the tables through an [`OutboxStore`]:
//!
//! 1. **fan-out**, once per event: claim new events, look up their
//!    subscribers, and record one delivery per subscriber, each with a
//!    UUIDv7 that is its `Hook-Delivery` on every attempt;
//! 2. **delivery**: claim due deliveries with a lease (`locked_until`),
//!    post them with no database transaction open, record every attempt,
//!    and schedule the next by the event's retry policy (`run_at`), or mark
//!    the delivery delivered or dead. A delivery whose worker died is
//!    claimed again once its lease expires.
//!
//! Delivery is at least once: a worker that dies after the receiver
//! answered but before the attempt was recorded leads to a second attempt
//! with the same `Hook-Delivery`, which receivers use to de-duplicate.
//!
//! The relay reports through the [`metrics`] facade (install any
//! recorder; `thorn worker --metrics-addr` serves them to Prometheus):
//! `thorn_attempts_total{outcome="delivered|retry|dead|gone"}`,
//! `thorn_attempt_duration_seconds` (histogram),
//! `thorn_events_fanned_out_total`, `thorn_deliveries_created_total`,
//! `thorn_deliveries_in_flight` (gauge) and `thorn_outbox_errors_total`.
//!
//! Times in the outbox are microseconds since the Unix epoch, as the
//! workers' clocks see them: keep the machines' clocks in sync (NTP).

pub(crate) mod health;
pub(crate) mod log;
pub(crate) mod store;
pub(crate) mod stored;

pub(crate) use health::Health;
pub use log::{DeliveryLog, DeliveryPage, Redelivery};
pub(crate) use store::{
    AfterAttempt, Among, AttemptRecord, ClaimedDelivery, FanOut, NewDelivery, OutboxStore,
};
pub use store::{AttemptInfo, DeliveryHistory, DeliveryInfo, DeliveryState, OutboxCounts, Pruned};
#[cfg_attr(not(feature = "conformance"), allow(unused_imports))]
pub(crate) use stored::{StoredEvent, StoredOptions};

use std::time::Duration;

/// The PostgreSQL channel a committed outbox write notifies.
pub const CHANNEL: &str = "thorn_outbox";

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `d` in microseconds, saturating.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `90s`, `15m`, `3h`, `2d`: the largest whole unit.
pub(crate) fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// True when a database error message (SQLite's or PostgreSQL's) says
/// `table` does not exist.
pub(crate) fn names_missing_table(message: &str, table: &str) -> bool {
    message.contains(table)
        && (message.contains("no such table") || message.contains("does not exist"))
}
