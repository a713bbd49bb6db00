//! The durable outbox: events written to the application's database in the
//! caller's own transaction, and the relay that delivers them after commit.
//!
//! With the outbox on ([`Config::outbox`](crate::Config::outbox),
//! `THORN_OUTBOX=true`), a model event that honours the transaction is not
//! sent by the write that raised it. It becomes a [`StoredEvent`] that the
//! ORM integration inserts through the caller's connection — for a managed
//! transaction, all of its events in one multi-row `INSERT` just before
//! `COMMIT` ([`crate::transaction`]) — so the event exists if and only if
//! the row committed: a rolled-back transaction or savepoint takes its
//! events with it.
//!
//! A relay ([`run_relay`], started in-process by the integrations or by
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::codec::ContentType;
use crate::deliver::{Delivery, HttpClient};
use crate::dispatch::Outgoing;
use crate::retry::{Backoff, RetryPolicy, Verdict};
use crate::subscriber::{BoxFuture, SenderId, Subscriber};
use crate::{Error, Result, Thorn};

/// The PostgreSQL channel a committed outbox write notifies.
pub const CHANNEL: &str = "thorn_outbox";

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `d` in microseconds, saturating.
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What a batch of finished attempts says about the stored subscriptions'
/// health, as the outbox stores keep it (`failing_since`, disabling after
/// a window): the subscriptions that succeeded and those that failed, each
/// uuid once. Static subscribers have no row; a `410 Gone` is handled by
/// `mark_gone`, not here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Delivered at least once: failing no more.
    pub recovered: Vec<String>,
    /// Failed (will retry, or dead): failing since now if not already.
    pub failing: Vec<String>,
}

impl Health {
    /// Sorts the attempts' subscribers by outcome.
    pub fn of(attempts: &[(AttemptRecord, Next)]) -> Self {
        let mut health = Health::default();
        for (a, next) in attempts {
            match next {
                Next::Delivered => health.recovered.push(a.subscriber.to_string()),
                Next::Retry { .. } | Next::Dead => health.failing.push(a.subscriber.to_string()),
                Next::Gone => {}
            }
        }
        for list in [&mut health.recovered, &mut health.failing] {
            list.sort_unstable();
            list.dedup();
        }
        health
    }

    /// The reason stored for a subscription disabled after `window` of
    /// failures.
    pub fn disabled_reason(window: Duration) -> String {
        format!("deliveries failed for longer than {}", humanize(window))
    }

    /// Logs that a subscription was disabled after `window` of failures.
    pub fn log_disabled(uuid: &str, url: &str, window: Duration) {
        let url = url::Url::parse(url)
            .map(|u| crate::subscriber::SafeUrl(&u).to_string())
            .unwrap_or_default();
        tracing::warn!(subscriber = %uuid, %url, window = %humanize(window),
            "subscriber disabled: its deliveries have failed for longer than the window");
    }
}

/// `90s`, `15m`, `3h`, `2d`: the largest whole unit.
pub fn humanize(d: Duration) -> String {
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

/// An event as the outbox stores it: everything needed to deliver it in
/// another process. Subscriber callbacks of `send` and per-event
/// validators are code and stay behind: workers use the configured
/// validators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Event id (UUIDv7: ordered by creation).
    pub id: Uuid,
    /// Event name.
    pub name: String,
    /// The message (`{"event", "ref", "sender", "data"}`).
    pub message: Value,
    /// Who sent it (selects owner-scoped subscribers).
    pub sender: Option<SenderId>,
    /// How to send it.
    pub options: StoredOptions,
    /// When it was written (µs since the epoch).
    pub created_at: i64,
}

/// The sending options of a [`StoredEvent`] (stored as one JSON column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOptions {
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Retry policy.
    pub retry: StoredRetry,
    /// Reuse connections.
    #[serde(default = "yes")]
    pub keepalive: bool,
    /// Subscribers the event itself added. Stored as their uuids
    /// ([`StoredOptions::recipients`]) and a `recipient_only` row each in
    /// `thorn_subscribers`, never in the event: their secrets stay there.
    /// (Events written before read back with them inline.)
    #[serde(default, skip_serializing)]
    pub subscribers: Vec<Subscriber>,
    /// The uuids of [`StoredOptions::subscribers`], as stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Uuid>,
    /// Context for subscriber callbacks of the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

fn yes() -> bool {
    true
}

/// A [`RetryPolicy`] as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRetry {
    /// Retry at all.
    pub enabled: bool,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Base wait, milliseconds.
    pub delay_ms: u64,
    /// Exponential backoff cap in milliseconds; `None` for fixed waits.
    pub backoff_max_ms: Option<u64>,
    /// Jitter of exponential backoff.
    #[serde(default)]
    pub jitter: bool,
    /// Upper bound for `Retry-After`, milliseconds.
    pub max_retry_after_ms: u64,
    /// The waits of a schedule, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_ms: Option<Vec<u64>>,
    /// The spread of a schedule's waits (a fraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_jitter: Option<f64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<RetryPolicy> for StoredRetry {
    fn from(p: RetryPolicy) -> Self {
        let (backoff_max_ms, jitter) = match p.backoff {
            Backoff::Exponential { max, jitter } => (Some(millis(max)), jitter),
            _ => (None, false),
        };
        let (schedule_ms, schedule_jitter) = match &p.backoff {
            Backoff::Schedule { delays, jitter } => (
                Some(delays.iter().map(|d| millis(*d)).collect()),
                Some(*jitter),
            ),
            _ => (None, None),
        };
        StoredRetry {
            enabled: p.enabled,
            max_retries: p.max_retries,
            delay_ms: millis(p.retry_delay),
            backoff_max_ms,
            jitter,
            max_retry_after_ms: millis(p.max_retry_after),
            schedule_ms,
            schedule_jitter,
        }
    }
}

impl From<StoredRetry> for RetryPolicy {
    fn from(s: StoredRetry) -> Self {
        RetryPolicy {
            enabled: s.enabled,
            max_retries: s.max_retries,
            retry_delay: Duration::from_millis(s.delay_ms),
            backoff: match (s.schedule_ms, s.backoff_max_ms) {
                (Some(delays), _) => Backoff::schedule(
                    delays
                        .into_iter()
                        .map(Duration::from_millis)
                        .collect::<Vec<_>>(),
                    s.schedule_jitter.unwrap_or(0.0),
                ),
                (None, Some(max)) => Backoff::Exponential {
                    max: Duration::from_millis(max),
                    jitter: s.jitter,
                },
                (None, None) => Backoff::Fixed,
            },
            max_retry_after: Duration::from_millis(s.max_retry_after_ms),
        }
    }
}

impl StoredEvent {
    /// The stored form of `outgoing`, with a new UUIDv7.
    ///
    /// Fails when a header value is not UTF-8 text (it could not be stored
    /// faithfully); the error names the event and the header.
    pub fn from_outgoing(outgoing: Outgoing) -> Result<Self> {
        let mut headers = Vec::with_capacity(outgoing.headers.len());
        for (name, value) in &outgoing.headers {
            let value = std::str::from_utf8(value.as_bytes()).map_err(|_| Error::Header {
                event: outgoing.event.to_string(),
                name: name.as_str().to_owned(),
                reason: "the value is not UTF-8 text and cannot be stored in the outbox",
            })?;
            headers.push((name.as_str().to_owned(), value.to_owned()));
        }
        Ok(StoredEvent {
            id: Uuid::now_v7(),
            name: outgoing.event.to_string(),
            message: outgoing.message.into_value(),
            sender: outgoing.sender,
            options: StoredOptions {
                headers,
                timeout_ms: millis(outgoing.timeout),
                retry: outgoing.outbox_retry.into(),
                keepalive: outgoing.keepalive,
                recipients: outgoing.extra_subscribers.iter().map(|s| s.uuid).collect(),
                subscribers: outgoing.extra_subscribers,
                context: outgoing.context,
            },
            created_at: now_micros(),
        })
    }

    /// The message as the JSON text the outbox column holds.
    pub fn message_json(&self) -> String {
        serde_json::to_string(&self.message).expect("a serde_json::Value always serializes")
    }

    /// The sender as the JSON text the outbox column holds.
    pub fn sender_json(&self) -> Option<String> {
        self.sender
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("sender ids are JSON"))
    }

    /// The options as the JSON text the outbox column holds: per-event
    /// subscribers by uuid only.
    pub fn options_json(&self) -> String {
        let missing = |s: &&Subscriber| !self.options.recipients.contains(&s.uuid);
        if self.options.subscribers.iter().any(|s| missing(&s)) {
            let mut options = self.options.clone();
            let more: Vec<Uuid> = self
                .options
                .subscribers
                .iter()
                .filter(missing)
                .map(|s| s.uuid)
                .collect();
            options.recipients.extend(more);
            return serde_json::to_string(&options).expect("options are JSON");
        }
        serde_json::to_string(&self.options).expect("options are JSON")
    }

    /// Rebuilds an event from its columns; errors name the column.
    pub fn from_columns(
        id: &str,
        name: String,
        message: &str,
        sender: Option<&str>,
        options: &str,
        created_at: i64,
    ) -> Result<Self> {
        let bad =
            |what, e: &dyn std::fmt::Display| crate::schema::corrupt("thorn_events", id, what, e);
        Ok(StoredEvent {
            id: Uuid::parse_str(id).map_err(|e| bad("id", &e))?,
            name,
            message: serde_json::from_str(message).map_err(|e| bad("message", &e))?,
            sender: sender
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| bad("sender", &e))?,
            options: serde_json::from_str(options).map_err(|e| bad("options", &e))?,
            created_at,
        })
    }

    fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.options.headers.len());
        for (k, v) in &self.options.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
                map.append(k, v);
            }
        }
        map
    }
}

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
pub struct DeliveryInfo {
    /// Delivery id (`Hook-Delivery`).
    pub id: String,
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
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
pub enum Next {
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

impl Next {
    /// The delivery state stored for this outcome.
    pub fn state(self) -> DeliveryState {
        match self {
            Next::Delivered => DeliveryState::Delivered,
            Next::Retry { .. } => DeliveryState::Pending,
            Next::Dead | Next::Gone => DeliveryState::Dead,
        }
    }
}

/// States of a row of `thorn_deliveries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        attempts: Vec<(AttemptRecord, Next)>,
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

/// How a relay works.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// This worker's name in `locked_by` and the attempts table.
    pub worker: String,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Share of `concurrency` retries may take (the rest is kept for first
    /// attempts, so a backlog of retries cannot starve new events).
    pub retry_share: f64,
    /// Rows claimed per query.
    pub batch: usize,
    /// How long a claim holds; renewed every third of it while the
    /// delivery is sent. Must exceed the request timeout.
    pub lease: Duration,
    /// Prune finished deliveries older than this, at start and every 10
    /// minutes ([`OutboxStore::prune`]); `None` keeps everything.
    pub retention: Option<Duration>,
    /// The retry policy for every delivery this relay sends, replacing
    /// the one each event was written with; `None` keeps theirs.
    pub retry: Option<RetryPolicy>,
    /// Deliveries in flight to one `host:port` at once; `None` takes
    /// `THORN_MAX_PER_HOST` ([`crate::Config::max_per_host`]).
    pub max_per_destination: Option<usize>,
    /// The longest wait between polls when nothing wakes the relay.
    pub poll: Duration,
    /// Disable a stored subscription whose deliveries have been failing
    /// (no 2xx in between) for this long; `None` never does.
    pub disable_after: Option<Duration>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            worker: default_worker_name(),
            concurrency: 64,
            retry_share: 0.75,
            batch: 100,
            lease: Duration::from_secs(60),
            max_per_destination: None,
            retry: None,
            retention: None,
            poll: Duration::from_secs(1),
            disable_after: Some(Duration::from_secs(3 * 24 * 3600)),
        }
    }
}

impl RelayOptions {
    /// Fails unless the lease is longer than the request timeout
    /// (`THORN_EVENT_TIMEOUT`): a relay and `thorn worker` check it before
    /// they start.
    pub fn check(&self, config: &crate::Config) -> Result<()> {
        let timeout = config.event_timeout;
        if self.lease <= timeout {
            return Err(Error::Config {
                key: "lease".into(),
                message: format!(
                    "the claim lease ({}) must be longer than the request timeout \
                     (THORN_EVENT_TIMEOUT, {})",
                    humanize(self.lease),
                    humanize(timeout)
                ),
            });
        }
        Ok(())
    }
}

/// `host:pid:random`, unique per process.
pub fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "thorn".into());
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!(
        "{host}:{}:{:02x}{:02x}{:02x}",
        std::process::id(),
        b[0],
        b[1],
        b[2]
    )
}

/// Counts a relay keeps (read them any time through [`RelayStats`]).
#[derive(Debug, Default)]
pub struct RelayCounters {
    fanned_out: AtomicU64,
    delivered: AtomicU64,
    retrying: AtomicU64,
    dead: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of [`RelayCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Events fanned out.
    pub fanned_out: u64,
    /// Deliveries that got a 2xx.
    pub delivered: u64,
    /// Attempts that failed and were scheduled again.
    pub retrying: u64,
    /// Deliveries that failed for good.
    pub dead: u64,
    /// Database errors the relay survived.
    pub errors: u64,
}

impl RelayCounters {
    /// The counts now.
    pub fn snapshot(&self) -> RelayStats {
        RelayStats {
            fanned_out: self.fanned_out.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            retrying: self.retrying.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// How long a claim on events holds: fan-out takes milliseconds, so a
/// batch a failed worker claimed is taken over within seconds.
const EVENT_LEASE: Duration = Duration::from_secs(10);

/// How often a relay looks for due retries (at once again while a claim
/// comes back full), and, while kept busy, for new events.
const RETRY_CHECK: Duration = Duration::from_millis(50);

/// While a destination is full, how often claims look past its backlog
/// for other subscriptions' deliveries (see [`Among`]).
const LOOK_BEYOND: Duration = Duration::from_millis(250);

/// Where a delivery goes, for the per-destination limit: `host:port`.
fn destination(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The deliveries a relay holds claims on, renewed until their attempts
/// are recorded.
type Held = Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>;

fn held_lock(held: &Held) -> std::sync::MutexGuard<'_, std::collections::HashSet<Uuid>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claimed deliveries waiting for a lane, by destination.
type Queues = Arc<std::sync::Mutex<HashMap<String, VecDeque<(ClaimedDelivery, bool)>>>>;

fn queues_lock(
    queues: &Queues,
) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<(ClaimedDelivery, bool)>>> {
    queues
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many deliveries wait in each non-empty queue.
fn queued_by_destination(queues: &Queues) -> HashMap<String, usize> {
    queues_lock(queues)
        .iter()
        .filter(|(_, q)| !q.is_empty())
        .map(|(to, q)| (to.clone(), q.len()))
        .collect()
}

/// A destination whose requests are quick gets deliveries claimed ahead,
/// queued while its share is sent, as many as its lanes send in this long
/// (at most four shares): its next claims overlap the requests instead of
/// waiting for them, and a delivery so queued waits at most about this
/// long before it is sent.
const AHEAD_WITHIN: Duration = Duration::from_millis(50);

/// What a relay knows of one destination.
#[derive(Default)]
struct Destination {
    /// Lanes sending to it.
    lanes: usize,
    /// The subscriptions seen going there (skipped by claims while it is
    /// full).
    subscriptions: HashSet<Uuid>,
    /// How long its requests take, averaged.
    pace: Option<Duration>,
}

/// What a lane reports.
enum Lane {
    /// A delivery to this destination was sent and took this long.
    Sent(String, Duration),
    /// The lane found its queue empty and ended.
    Ended(String),
}

impl Lane {
    fn destination(&self) -> &str {
        match self {
            Lane::Sent(to, _) | Lane::Ended(to) => to,
        }
    }
}

/// How many deliveries a destination may hold, in flight and queued:
/// `per_destination`, and up to four shares more queued while its
/// requests are quick ([`AHEAD_WITHIN`]).
fn share(d: Option<&Destination>, per_destination: usize) -> usize {
    let rounds = match d.and_then(|d| d.pace) {
        Some(pace) => AHEAD_WITHIN.as_micros() / pace.as_micros().max(1),
        None => 0,
    };
    per_destination * (1 + usize::try_from(rounds).unwrap_or(4).min(4))
}

/// How much room a destination has before the relay claims more for it:
/// a quarter of its share, at least half of `per_destination`.
fn refill(d: Option<&Destination>, per_destination: usize) -> usize {
    (share(d, per_destination) / 4).max(per_destination.div_ceil(2))
}

fn note(dests: &mut HashMap<String, Destination>, event: Lane) {
    match event {
        Lane::Sent(to, took) => {
            let d = dests.entry(to).or_default();
            d.pace = Some(match d.pace {
                Some(pace) => (pace * 4 + took) / 5,
                None => took,
            });
        }
        Lane::Ended(to) => {
            if let Some(d) = dests.get_mut(&to) {
                d.lanes = d.lanes.saturating_sub(1);
            }
        }
    }
}

/// Runs a relay until `stop` turns true, then stops claiming, lets the
/// deliveries in flight finish and record their attempts, and returns.
///
/// `wake` is notified by whatever learns of new events: this process's
/// own outbox writes ([`Thorn::outbox_signal`]) or PostgreSQL's `LISTEN`.
/// Without a wake-up the relay polls, at most `options.poll` apart.
///
/// Claims are renewed every third of `options.lease` while their
/// deliveries are sent or wait, so a relay never sends its own work twice;
/// the relay refuses a lease not longer than the request timeout
/// (`THORN_EVENT_TIMEOUT`), and no request outlasts the lease. At most
/// `options.max_per_destination` deliveries go to one `host:port` at a
/// time: a busy destination's other deliveries stay in the outbox,
/// unclaimed, and take no slot from other destinations. A destination
/// whose requests take under 100 ms on average gets one more share
/// claimed ahead, queued in memory while the first is sent, so claims
/// overlap requests; a queued delivery waits about one such request and
/// is sent to its subscription as the claim loaded it.
pub async fn run_relay(
    thorn: Thorn,
    store: Arc<dyn OutboxStore>,
    options: RelayOptions,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    counters: Arc<RelayCounters>,
) -> Result<()> {
    options.check(thorn.config())?;
    let client = HttpClient::new(thorn.config(), thorn.config().recipient_validators.clone())?;
    let concurrency = options.concurrency.max(1);
    let per_destination = options
        .max_per_destination
        .unwrap_or(thorn.config().max_per_host)
        .max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let retry_cap = ((concurrency as f64 * options.retry_share) as usize).clamp(1, concurrency);
    // Retries claimed and not yet sent.
    let retries_held = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let held: Held = Arc::default();
    let shared = Arc::new(Shared {
        thorn,
        store,
        client,
        worker: options.worker.clone(),
        counters,
        lease: options.lease,
        retry: options.retry.clone(),
    });
    // Attempts are recorded by one task, many per transaction.
    let (done, records) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_attempts(shared.clone(), records, held.clone()));
    let renewer = tokio::spawn(renew_claims(shared.clone(), held.clone()));
    let pruner = options
        .retention
        .map(|keep| tokio::spawn(prune_every(shared.clone(), keep)));
    // Each destination has a queue of claimed deliveries and up to
    // `per_destination` lanes (tasks) sending from it one after another.
    let queues: Queues = Arc::default();
    let halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (lane_tx, mut lane_events) = mpsc::unbounded_channel::<Lane>();
    let mut dests: HashMap<String, Destination> = HashMap::new();
    let mut idle = Duration::from_millis(1);
    let mut events_maybe = true;
    let mut events_checked = std::time::Instant::now();
    let mut retries_checked = std::time::Instant::now() - RETRY_CHECK;
    let mut looked_beyond = std::time::Instant::now();
    let spawn_lane = |to: String, tasks: &mut JoinSet<()>| -> bool {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            return false;
        };
        let (shared, queues, halt, retries_held, done, lanes) = (
            shared.clone(),
            queues.clone(),
            halt.clone(),
            retries_held.clone(),
            done.clone(),
            lane_tx.clone(),
        );
        tasks.spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                let next = queues_lock(&queues)
                    .get_mut(&to)
                    .and_then(VecDeque::pop_front);
                let Some((claimed, is_retry)) = next else {
                    break;
                };
                metrics::gauge!("thorn_deliveries_in_flight").increment(1.0);
                let started = std::time::Instant::now();
                let record = shared.deliver(claimed).await;
                let _ = done.send(record);
                metrics::gauge!("thorn_deliveries_in_flight").decrement(1.0);
                if is_retry {
                    retries_held.fetch_sub(1, Ordering::Relaxed);
                }
                let took = started.elapsed();
                let _ = lanes.send(Lane::Sent(to.clone(), took));
            }
            drop(permit);
            let _ = lanes.send(Lane::Ended(to));
        });
        true
    };
    while !*stop.borrow() {
        while tasks.try_join_next().is_some() {}
        while let Ok(event) = lane_events.try_recv() {
            note(&mut dests, event);
        }
        let queued = queued_by_destination(&queues);
        let total_queued: usize = queued.values().sum();
        let want = |dests: &HashMap<String, Destination>, to: &str| {
            let d = dests.get(to);
            let holding = d.map_or(0, |d| d.lanes) + queued.get(to).copied().unwrap_or(0);
            share(d, per_destination).saturating_sub(holding)
        };
        let (mut skip, mut open) = (Vec::new(), Vec::new());
        for (to, d) in &dests {
            let list = if want(&dests, to) == 0 {
                &mut skip
            } else {
                &mut open
            };
            list.extend(d.subscriptions.iter().copied());
        }
        // While a destination is full, its backlog may fill the head of
        // the due index: claims then name the subscriptions that have
        // room, and look past the full ones for others every 250 ms.
        let beyond = skip.is_empty() || looked_beyond.elapsed() >= LOOK_BEYOND;
        let among = if beyond {
            if !skip.is_empty() {
                looked_beyond = std::time::Instant::now();
            }
            Among::AllBut(&skip)
        } else {
            Among::Only(&open)
        };
        let nobody = among == Among::Only(&[]);
        // Claim no more than the destinations can take now: the room of
        // those seen (a full one is skipped), or one destination's worth;
        // and never more than twice the slots, queued and in flight.
        let room_known: usize = dests.keys().map(|to| want(&dests, to)).sum();
        let in_flight = concurrency - slots.available_permits();
        let mut room = if room_known > 0 {
            room_known
        } else {
            per_destination
        }
        .min((2 * concurrency).saturating_sub(in_flight + total_queued));
        let mut found = 0;
        // New events first; their first deliveries come back claimed. They
        // are looked for when something may have written some: a wake-up,
        // a poll, or a full batch last time.
        // A relay kept busy looks anyway, every 50 ms.
        events_maybe |= events_checked.elapsed() >= RETRY_CHECK;
        let fresh = if events_maybe && room > 0 {
            events_checked = std::time::Instant::now();
            // Claimed at once: what each destination has room for.
            let mut left: HashMap<String, usize> = HashMap::new();
            let mut claim = |s: &Subscriber| {
                let to = destination(&s.url);
                let n = left.entry(to).or_insert_with_key(|to| want(&dests, to));
                *n > 0 && {
                    *n -= 1;
                    true
                }
            };
            match shared.fan_out(options.batch, room, &mut claim).await {
                Ok((events, claimed)) => {
                    found += events;
                    events_maybe = events >= options.batch;
                    claimed
                }
                Err(error) => {
                    shared.db_error("fan-out", &error);
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        room = room.saturating_sub(fresh.len());
        let first = if room > 0 && !nobody {
            shared
                .store
                .claim_deliveries(
                    &shared.worker,
                    true,
                    room.min(options.batch),
                    options.lease,
                    among,
                )
                .await
                .unwrap_or_else(|error| {
                    shared.db_error("claim", &error);
                    Vec::new()
                })
        } else {
            Vec::new()
        };
        room = room.saturating_sub(first.len());
        let retry_room = retry_cap.saturating_sub(retries_held.load(Ordering::Relaxed));
        // Retries are due at their `run_at`: looked for every 50 ms, or
        // at once while a claim comes back full.
        let wanted = room.min(retry_room).min(options.batch);
        let retries = if wanted > 0 && !nobody && retries_checked.elapsed() >= RETRY_CHECK {
            let got = shared
                .store
                .claim_deliveries(&shared.worker, false, wanted, options.lease, among)
                .await
                .unwrap_or_else(|error| {
                    shared.db_error("claim", &error);
                    Vec::new()
                });
            if got.len() < wanted {
                retries_checked = std::time::Instant::now();
            }
            got
        } else {
            Vec::new()
        };
        found += fresh.len() + first.len() + retries.len();
        room = room.saturating_sub(retries.len());
        retries_held.fetch_add(retries.len(), Ordering::Relaxed);
        let claimed: Vec<(ClaimedDelivery, bool)> = fresh
            .into_iter()
            .chain(first)
            .map(|c| (c, false))
            .chain(retries.into_iter().map(|c| (c, true)))
            .collect();
        held_lock(&held).extend(claimed.iter().map(|(c, _)| c.id));
        // Each goes to its destination's queue, unless that one is full
        // (it goes back unsent, and its subscription is skipped by the
        // next claims).
        let mut excess = Vec::new();
        {
            let mut queues = queues_lock(&queues);
            let mut taken: HashMap<String, usize> = HashMap::new();
            for (claimed, is_retry) in claimed {
                let to = destination(&claimed.subscriber.url);
                let d = dests.entry(to.clone()).or_default();
                d.subscriptions.insert(claimed.subscriber.uuid);
                let n = taken.entry(to.clone()).or_default();
                if *n >= want(&dests, &to) {
                    if is_retry {
                        retries_held.fetch_sub(1, Ordering::Relaxed);
                    }
                    excess.push(claimed.id);
                    continue;
                }
                *n += 1;
                queues.entry(to).or_default().push_back((claimed, is_retry));
            }
        }
        // Lanes for every queue that has deliveries waiting and room.
        for (to, waiting) in queued_by_destination(&queues) {
            let d = dests.entry(to.clone()).or_default();
            let mut wanted = waiting.min(per_destination.saturating_sub(d.lanes));
            while wanted > 0 && spawn_lane(to.clone(), &mut tasks) {
                d.lanes += 1;
                wanted -= 1;
            }
        }
        if !excess.is_empty() {
            release(&shared, &held, excess).await;
        }
        // More may be waiting where there is still room: look again now.
        if found > 0 && room > 0 && slots.available_permits() > 0 {
            idle = Duration::from_millis(1);
            continue;
        }
        // Nothing to do (or no room): sleep until woken, a lane needs
        // more, or the poll interval passes. Right after a wake-up the
        // events may not be committed yet, so polls start 1 ms apart and
        // back off. A destination is refilled once a quarter of its share
        // is free (see `refill`; or a quarter of the slots): claims stay
        // batched instead of one statement per delivery.
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = wake.notified() => {
                    idle = Duration::from_millis(1);
                    events_maybe = true;
                    break;
                }
                Some(event) = lane_events.recv() => {
                    let to = event.destination().to_owned();
                    let ended = matches!(event, Lane::Ended(_));
                    note(&mut dests, event);
                    let queued = queues_lock(&queues).get(&to).map_or(0, VecDeque::len);
                    let d = dests.get(&to);
                    let holding = d.map_or(0, |d| d.lanes) + queued;
                    if (ended && queued > 0)
                        || holding + refill(d, per_destination) <= share(d, per_destination)
                        || slots.available_permits() >= concurrency.div_ceil(4)
                    {
                        break;
                    }
                }
                _ = &mut sleep => {
                    idle = (idle * 2).min(options.poll);
                    events_maybe = true;
                    break;
                }
                _ = stop.changed() => break,
            }
        }
    }
    // Deliveries in flight finish; those still queued go back unsent.
    halt.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let unsent: Vec<Uuid> = queues_lock(&queues)
        .drain()
        .flat_map(|(_, q)| q.into_iter().map(|(c, _)| c.id))
        .collect();
    release(&shared, &held, unsent).await;
    drop(done);
    let _ = recorder.await;
    renewer.abort();
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    Ok(())
}

/// Gives claims back unsent and stops renewing them.
async fn release(shared: &Shared, held: &Held, deliveries: Vec<Uuid>) {
    if deliveries.is_empty() {
        return;
    }
    {
        let mut held = held_lock(held);
        for id in &deliveries {
            held.remove(id);
        }
    }
    if let Err(error) = shared.store.release(&shared.worker, deliveries).await {
        shared.db_error("release", &error);
    }
}

/// Prunes what is older than `keep`, now and every 10 minutes.
async fn prune_every(shared: Arc<Shared>, keep: Duration) {
    loop {
        match shared.store.prune(keep).await {
            Ok(p) => tracing::info!(
                events = p.events,
                deliveries = p.deliveries,
                attempts = p.attempts,
                "outbox pruned"
            ),
            Err(error) => shared.db_error("prune", &error),
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

/// Renews the claims a relay holds, every third of its lease.
async fn renew_claims(shared: Arc<Shared>, held: Held) {
    let every = shared.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let ids: Vec<Uuid> = held_lock(&held).iter().copied().collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(error) = shared.store.renew(&shared.worker, ids, shared.lease).await {
            shared.db_error("lease renewal", &error);
        }
    }
}

/// Writes finished attempts: whatever has arrived, up to 256 per
/// transaction, so a busy relay pays one commit for many deliveries. A
/// failed write is tried again for about six seconds (the claims are
/// renewed meanwhile); then the claims are left to expire, and another
/// worker sends those deliveries again.
async fn record_attempts(
    shared: Arc<Shared>,
    mut records: mpsc::UnboundedReceiver<(AttemptRecord, Next)>,
    held: Held,
) {
    while let Some(first) = records.recv().await {
        // What arrives within 2 ms joins the batch: one commit for many.
        let mut batch = vec![first];
        let window = tokio::time::sleep(Duration::from_millis(2));
        tokio::pin!(window);
        while batch.len() < 256 {
            tokio::select! {
                r = records.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        let ids: Vec<Uuid> = batch.iter().map(|(a, _)| a.delivery_id).collect();
        let n = batch.len();
        let mut pause = Duration::from_millis(100);
        for tries_left in (0..7).rev() {
            match shared.store.finish(&shared.worker, batch.clone()).await {
                Ok(held) => {
                    if held < n {
                        tracing::warn!(
                            lost = n - held,
                            "claims expired before their attempts were recorded; \
                             another worker may repeat them"
                        );
                    }
                    break;
                }
                Err(error) => {
                    shared.db_error("recording attempts", &error);
                    if tries_left == 0 {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        let mut held = held_lock(&held);
        for id in &ids {
            held.remove(id);
        }
    }
}

struct Shared {
    thorn: Thorn,
    store: Arc<dyn OutboxStore>,
    client: HttpClient,
    worker: String,
    counters: Arc<RelayCounters>,
    lease: Duration,
    retry: Option<RetryPolicy>,
}

impl Shared {
    fn db_error(&self, what: &str, error: &Error) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("thorn_outbox_errors_total").increment(1);
        tracing::error!(worker = %self.worker, %error, "outbox {what} failed");
    }

    /// Fans out one batch of new events; returns how many, and up to
    /// `free` of their deliveries, claimed for sending now.
    /// Fans out up to `batch` events; claims the new deliveries `claim`
    /// accepts (at most `free`).
    async fn fan_out(
        &self,
        batch: usize,
        free: usize,
        claim: &mut (dyn FnMut(&Subscriber) -> bool + Send),
    ) -> Result<(usize, Vec<ClaimedDelivery>)> {
        let lease = self.lease;
        let events = self
            .store
            .claim_events(&self.worker, batch, EVENT_LEASE.min(lease))
            .await?;
        if events.is_empty() {
            return Ok((0, Vec::new()));
        }
        let mut budget = free;
        let mut plans = Vec::with_capacity(events.len());
        // Events of a batch often share name and sender: look each pair up once.
        type Query<'e> = (&'e str, Option<&'e SenderId>, Option<&'e Value>);
        let mut lookups: Vec<(Query<'_>, Vec<Subscriber>)> = Vec::new();
        for event in &events {
            let key = (
                event.name.as_str(),
                event.sender.as_ref(),
                event.options.context.as_ref(),
            );
            let found = match lookups.iter().find(|(k, _)| *k == key) {
                Some((_, found)) => found.clone(),
                None => {
                    let found = self
                        .thorn
                        .subscribers_for_query(key.0, key.1, key.2)
                        .await?;
                    lookups.push((key, found.clone()));
                    found
                }
            };
            let mut subscribers = found;
            subscribers.extend(
                event
                    .options
                    .subscribers
                    .iter()
                    .filter(|s| s.accepts_sender(event.sender.as_ref()))
                    .cloned(),
            );
            let deliveries = subscribers
                .into_iter()
                .map(|subscriber| {
                    let claimed = budget > 0 && claim(&subscriber);
                    if claimed {
                        budget -= 1;
                    }
                    NewDelivery {
                        id: Uuid::now_v7(),
                        subscriber,
                        claimed,
                    }
                })
                .collect::<Vec<_>>();
            plans.push(FanOut {
                event: event.id,
                deliveries,
            });
        }
        let created: usize = plans.iter().map(|p| p.deliveries.len()).sum();
        let written = self
            .store
            .fan_out(&self.worker, plans.clone(), lease)
            .await?;
        self.counters
            .fanned_out
            .fetch_add(written.len() as u64, Ordering::Relaxed);
        metrics::counter!("thorn_events_fanned_out_total").increment(written.len() as u64);
        metrics::counter!("thorn_deliveries_created_total").increment(created as u64);
        let mut claimed = Vec::new();
        for (event, plan) in events.into_iter().zip(plans) {
            if !written.contains(&event.id) {
                continue;
            }
            tracing::debug!(event = %event.name, id = %event.id, deliveries = plan.deliveries.len(), "outbox event fanned out");
            let event = Arc::new(event);
            claimed.extend(plan.deliveries.into_iter().filter(|d| d.claimed).map(|d| {
                ClaimedDelivery {
                    id: d.id,
                    event: event.clone(),
                    subscriber: d.subscriber,
                    attempts: 0,
                }
            }));
        }
        Ok((written.len(), claimed))
    }

    /// Sends one attempt; returns what to record.
    async fn deliver(&self, claimed: ClaimedDelivery) -> (AttemptRecord, Next) {
        let number = claimed.attempts + 1;
        let span = tracing::info_span!("thorn.delivery",
            event = %claimed.event.name, delivery = %claimed.id,
            subscriber = %claimed.subscriber.uuid, attempt = number,
            status = tracing::field::Empty, latency_ms = tracing::field::Empty);
        async {
            let event = &claimed.event;
            let body = match claimed.subscriber.content_type {
                ContentType::Json => Bytes::from(ContentType::Json.encode(&event.message)),
                other => Bytes::from(other.encode(&event.message)),
            };
            let delivery = Delivery {
                id: claimed.id,
                event: Arc::from(event.name.as_str()),
                standard_webhooks: claimed
                    .subscriber
                    .standard_webhooks
                    .unwrap_or(self.thorn.config().standard_webhooks),
                subscriber: claimed.subscriber,
                body,
                headers: event.headers(),
                // No request outlasts its claim.
                timeout: Duration::from_millis(event.options.timeout_ms).min(self.lease),
                keepalive: event.options.keepalive,
            };
            let started_at = now_micros();
            let attempt = self.client.attempt(&delivery, number).await;
            let policy = self
                .retry
                .clone()
                .unwrap_or_else(|| RetryPolicy::from(event.options.retry.clone()));
            let next = match attempt.verdict {
                Verdict::Delivered => Next::Delivered,
                Verdict::Retry(after) if policy.allows(number) => Next::Retry {
                    at: now_micros().saturating_add(micros(policy.delay(number, after))),
                },
                Verdict::Gone => {
                    tracing::info!(url = %crate::subscriber::SafeUrl(&delivery.subscriber.url),
                        "receiver answered 410 Gone: subscription removed");
                    if let Err(error) = self.thorn.mark_gone(delivery.subscriber.uuid).await {
                        tracing::error!(%error, "could not mark subscription gone");
                    }
                    Next::Gone
                }
                _ => Next::Dead,
            };
            let outcome = &attempt.outcome;
            let status = match &outcome.result {
                Ok(s) => Some(*s),
                Err(Error::Status { status, .. }) => Some(*status),
                Err(_) => None,
            };
            let span = tracing::Span::current();
            if let Some(s) = status {
                span.record("status", s);
            }
            span.record("latency_ms", outcome.elapsed.as_millis() as u64);
            let record = AttemptRecord {
                delivery_id: claimed.id,
                subscriber: delivery.subscriber.uuid,
                number,
                started_at,
                status,
                latency_us: micros(outcome.elapsed),
                error: outcome.result.as_ref().err().map(|e| e.to_string()),
                response: (!attempt.response_head.is_empty())
                    .then(|| String::from_utf8_lossy(&attempt.response_head).into_owned()),
                worker: self.worker.clone(),
            };
            let (counter, label) = match next {
                Next::Delivered => (&self.counters.delivered, "delivered"),
                Next::Retry { .. } => (&self.counters.retrying, "retry"),
                Next::Dead => (&self.counters.dead, "dead"),
                Next::Gone => (&self.counters.dead, "gone"),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("thorn_attempts_total", "outcome" => label).increment(1);
            metrics::histogram!("thorn_attempt_duration_seconds")
                .record(outcome.elapsed.as_secs_f64());
            (record, next)
        }
        .instrument(span)
        .await
    }
}

/// A relay on a background thread with its own runtime: what the ORM
/// integrations start in-process. Dropping it stops it (see
/// [`BackgroundRelay::stop`]).
#[derive(Debug)]
pub struct BackgroundRelay {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    counters: Arc<RelayCounters>,
    wake: Arc<Notify>,
}

impl BackgroundRelay {
    /// Starts `run_relay` on a thread named `thorn-relay`.
    pub fn start(
        thorn: Thorn,
        store: Arc<dyn OutboxStore>,
        options: RelayOptions,
        wake: Arc<Notify>,
    ) -> Result<Self> {
        options.check(thorn.config())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("thorn-relay")
            .enable_all()
            .build()
            .map_err(|e| Error::Start {
                what: "the relay runtime",
                source: Box::new(e),
            })?;
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(RelayCounters::default());
        let (c, w) = (counters.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("thorn-relay".into())
            .spawn(move || runtime.block_on(run_relay(thorn, store, options, w, stopped, c)))
            .map_err(|e| Error::Config {
                key: "relay thread".into(),
                message: e.to_string(),
            })?;
        Ok(BackgroundRelay {
            stop,
            thread: Some(thread),
            counters,
            wake,
        })
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Wakes the relay now (new events were committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops claiming, waits for deliveries in flight to finish and be
    /// recorded, and returns the relay's error if it stopped on one.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::Panicked {
                    what: "the relay thread",
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundRelay {
    fn drop(&mut self) {
        if let Err(error) = self.halt() {
            tracing::error!(%error, "outbox relay stopped with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policies_survive_storage() {
        for policy in [
            RetryPolicy::default(),
            RetryPolicy::never(),
            RetryPolicy {
                backoff: Backoff::Exponential {
                    max: Duration::from_secs(90),
                    jitter: false,
                },
                retry_delay: Duration::from_millis(250),
                ..RetryPolicy::default()
            },
            RetryPolicy::outbox_default(),
        ] {
            let stored = StoredRetry::from(policy.clone());
            let json = serde_json::to_string(&stored).unwrap();
            let back: StoredRetry = serde_json::from_str(&json).unwrap();
            assert_eq!(RetryPolicy::from(back), policy);
        }
    }
}
