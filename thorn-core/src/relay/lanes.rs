//! Destinations, their queues of claimed deliveries and the lanes that
//! send from them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::outbox::ClaimedDelivery;
use uuid::Uuid;

/// Claimed deliveries waiting for a lane, by destination.
pub(super) type Queues = Arc<std::sync::Mutex<HashMap<String, VecDeque<(ClaimedDelivery, bool)>>>>;

pub(super) fn queues_lock(
    queues: &Queues,
) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<(ClaimedDelivery, bool)>>> {
    queues
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many deliveries wait in each non-empty queue.
pub(super) fn queued_by_destination(queues: &Queues) -> HashMap<String, usize> {
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
pub(super) const AHEAD_WITHIN: Duration = Duration::from_millis(50);

/// What a relay knows of one destination.
#[derive(Default)]
pub(super) struct Destination {
    /// Lanes sending to it.
    pub(super) lanes: usize,
    /// The subscriptions seen going there (skipped by claims while it is
    /// full).
    pub(super) subscriptions: HashSet<Uuid>,
    /// How long its requests take, averaged.
    pub(super) pace: Option<Duration>,
}

/// What a lane reports.
pub(super) enum Lane {
    /// A delivery to this destination was sent and took this long.
    Sent(String, Duration),
    /// The lane found its queue empty and ended.
    Ended(String),
}

impl Lane {
    pub(super) fn destination(&self) -> &str {
        match self {
            Lane::Sent(to, _) | Lane::Ended(to) => to,
        }
    }
}

/// How many deliveries a destination may hold, in flight and queued:
/// `per_destination`, and up to four shares more queued while its
/// requests are quick ([`AHEAD_WITHIN`]).
pub(super) fn share(d: Option<&Destination>, per_destination: usize) -> usize {
    let rounds = match d.and_then(|d| d.pace) {
        Some(pace) => AHEAD_WITHIN.as_micros() / pace.as_micros().max(1),
        None => 0,
    };
    per_destination * (1 + usize::try_from(rounds).unwrap_or(4).min(4))
}

/// How much room a destination has before the relay claims more for it:
/// a quarter of its share, at least half of `per_destination`.
pub(super) fn refill(d: Option<&Destination>, per_destination: usize) -> usize {
    (share(d, per_destination) / 4).max(per_destination.div_ceil(2))
}

pub(super) fn note(dests: &mut HashMap<String, Destination>, event: Lane) {
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
