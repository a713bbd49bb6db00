//! How a relay is set up, and what it counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::outbox::humanize;
use crate::retry::RetryPolicy;
use crate::{Error, Result};

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
    /// minutes ([`OutboxStore::prune`](crate::outbox::OutboxStore::prune)); `None` keeps everything.
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
    pub(super) fanned_out: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) retrying: AtomicU64,
    pub(super) dead: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// A snapshot of [`RelayCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
