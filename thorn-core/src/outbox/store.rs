//! What a relay needs of a database: [`OutboxStore`], and the records it
//! reads and writes.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::outbox::StoredEvent;
use crate::subscriber::{BoxFuture, Subscriber};
use crate::{Error, Result};

/// A delivery to record at fan-out.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Delivery id (UUIDv7), `Hook-Delivery` on every attempt.
    pub id: Uuid,
    /// The subscriber, as it was at fan-out (URL, secret, digest...).
    pub subscriber: Subscriber,
    /// Written claimed by the fanning worker, which sends it at once.
    pub claimed: bool,
}

/// The deliveries of one event, for [`OutboxStore::fan_out`].
#[derive(Debug, Clone)]
pub struct FanOut {
    /// The event.
    pub event: Uuid,
    /// Its deliveries.
    pub deliveries: Vec<NewDelivery>,
}

/// A delivery a worker claimed.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// Delivery id.
    pub id: Uuid,
    /// Its event.
    pub event: Arc<StoredEvent>,
    /// Its subscriber.
    pub subscriber: Subscriber,
    /// Attempts recorded before this claim.
    pub attempts: u32,
}

/// One delivery, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// Delivery id (`Hook-Delivery`).
    pub id: String,
    /// Its subscription (or recipient).
    pub subscription: String,
    /// Its event.
    pub event_id: String,
    /// Event name.
    pub event: String,
    /// The recipient URL at fan-out (attempts go to the subscription's
    /// URL at send time).
    pub url: String,
    /// `pending`, `delivered`, `dead` or `cancelled`.
    pub state: String,
    /// Attempts recorded.
    pub attempts: i32,
    /// When the next attempt is due (µs since the epoch).
    pub run_at: i64,
    /// Last HTTP status.
    pub last_status: Option<i32>,
    /// Last error.
    pub last_error: Option<String>,
    /// The worker holding it, while claimed.
    pub locked_by: Option<String>,
    /// When it was created (µs since the epoch).
    pub created_at: i64,
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Events.
    pub events: u64,
    /// Deliveries.
    pub deliveries: u64,
    /// Attempts.
    pub attempts: u64,
}

/// A delivery with its attempts, oldest first.
pub type DeliveryHistory = (DeliveryInfo, Vec<AttemptInfo>);

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// Counts of events and deliveries by state, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxCounts {
    /// Events not yet fanned out.
    pub new_events: i64,
    /// Deliveries waiting for an attempt.
    pub pending: i64,
    /// Deliveries that got a 2xx.
    pub delivered: i64,
    /// Deliveries that failed for good.
    pub dead: i64,
    /// Deliveries whose subscription was deleted before they were sent.
    pub cancelled: i64,
    /// Pending deliveries claimed by a worker right now.
    pub claimed: i64,
}

/// One attempt, as recorded in `thorn_attempts`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: Uuid,
    /// Its subscriber.
    pub subscriber: Uuid,
    /// Attempt number, 1-based.
    pub number: u32,
    /// When it started (µs since the epoch).
    pub started_at: i64,
    /// HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Request start to end of response, microseconds.
    pub latency_us: i64,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// The first bytes of the response body (lossy UTF-8), when there was one.
    pub response: Option<String>,
    /// Who made it.
    pub worker: String,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// 2xx: done.
    Delivered,
    /// Try again at this time (µs since the epoch).
    Retry {
        /// When.
        at: i64,
    },
    /// No more attempts.
    Dead,
    /// `410 Gone`: no more attempts; the subscription was removed.
    Gone,
}

impl AfterAttempt {
    /// The delivery state stored for this outcome.
    pub fn state(self) -> DeliveryState {
        match self {
            AfterAttempt::Delivered => DeliveryState::Delivered,
            AfterAttempt::Retry { .. } => DeliveryState::Pending,
            AfterAttempt::Dead | AfterAttempt::Gone => DeliveryState::Dead,
        }
    }
}

/// States of a row of `thorn_deliveries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Waiting for its first attempt or a retry (`run_at`).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Failed for good.
    Dead,
    /// Not sent: its subscription was deleted first.
    Cancelled,
}

impl DeliveryState {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = Error;

    /// `pending`, `delivered`, `dead` or `cancelled`; an error names the
    /// others.
    fn from_str(s: &str) -> Result<Self> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
            DeliveryState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| Error::Config {
            key: "delivery state".into(),
            message: format!("`{s}` is none of pending, delivered, dead, cancelled"),
        })
    }
}

/// Where the outbox lives; implemented by the ORM integrations.
///
/// Every claim sets a lease (`locked_until = now + lease`, `locked_by =
/// worker`); rows whose lease expired can be claimed again. Updates after
/// a claim check `locked_by`, so a worker that lost its lease cannot
/// overwrite another's work.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` events not yet fanned out.
    fn claim_events<'a>(
        &'a self,
        worker: &'a str,
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>>>;

    /// Records the deliveries of claimed events and marks them fanned out,
    /// all in one transaction. Deliveries with `claimed` set are written
    /// already claimed by `worker` (their first attempt started, lease
    /// `lease`), so the relay sends them without another query. Returns the
    /// events written; an event whose claim was lost is skipped.
    fn fan_out<'a>(
        &'a self,
        worker: &'a str,
        events: Vec<FanOut>,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Uuid>>>;

    /// Claims up to `limit` due deliveries of the subscriptions `among`
    /// names: first attempts only when `first` is true, retries only
    /// otherwise. What is claimed is loaded in the same transaction: a
    /// claim never outlives a failure to load.
    fn claim_deliveries<'a>(
        &'a self,
        worker: &'a str,
        first: bool,
        limit: usize,
        lease: Duration,
        among: Among<'a>,
    ) -> BoxFuture<'a, Result<Vec<ClaimedDelivery>>>;

    /// Extends to `now + lease` the claims `worker` still holds on these
    /// deliveries; returns how many it holds.
    fn renew<'a>(
        &'a self,
        worker: &'a str,
        deliveries: Vec<Uuid>,
        lease: Duration,
    ) -> BoxFuture<'a, Result<usize>>;

    /// Deletes finished deliveries (delivered, dead, cancelled) last
    /// changed more than `older_than` ago, their attempts, and the events
    /// left with no delivery.
    fn prune(&self, older_than: Duration) -> BoxFuture<'_, Result<Pruned>>;

    /// Gives up the claims `worker` holds on these deliveries, unsent: any
    /// worker may claim them again at once.
    fn release<'a>(
        &'a self,
        worker: &'a str,
        deliveries: Vec<Uuid>,
    ) -> BoxFuture<'a, Result<usize>>;

    /// Records attempts and the deliveries' next states, releasing the
    /// claims, in one transaction. Returns how many deliveries were still
    /// claimed by `worker` (the attempts are recorded either way).
    fn finish<'a>(
        &'a self,
        worker: &'a str,
        attempts: Vec<(AttemptRecord, AfterAttempt)>,
    ) -> BoxFuture<'a, Result<usize>>;
}

/// Whose deliveries a claim takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Among<'a> {
    /// Any subscription's but these (their destinations are busy), the
    /// longest due first: one walk of the due index, past the skipped.
    AllBut(&'a [Uuid]),
    /// Only these subscriptions', each from its own range of an index:
    /// what a relay claims while a busy destination's backlog fills the
    /// head of the due index (an [`Among::AllBut`] claim would read past
    /// all of it every time).
    Only(&'a [Uuid]),
}
