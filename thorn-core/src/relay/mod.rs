//! The relay loop: claims, lanes, attempts recorded.

mod background;
mod lanes;
mod options;
mod work;

pub use background::BackgroundRelay;

use lanes::*;
pub use options::{RelayCounters, default_worker_name};
pub use options::{RelayOptions, RelayStats};
use work::*;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use uuid::Uuid;

use crate::delivery::HttpClient;
use crate::outbox::{Among, ClaimedDelivery, OutboxStore};

use crate::subscriber::Subscriber;
use crate::{Result, Thorn};

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

/// Runs a relay until `stop` turns true, then stops claiming, lets the
/// deliveries in flight finish and record their attempts, and returns.
///
/// `wake` is notified by whatever learns of new events: this process's
/// own outbox writes ([`ThornExt::outbox_signal`](crate::integration::ThornExt::outbox_signal)) or PostgreSQL's `LISTEN`.
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
    let client = HttpClient::new(thorn.config(), thorn.config().validators())?;
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
    // Attempts are recorded by one task, many per transaction. Unbounded
    // in type only: each record is sent by a delivery that holds one of
    // the relay's claims, and claims are at most `concurrency` (plus the
    // claim-ahead shares), so the channel never holds more than that.
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
    // One message per delivery sent and one per lane that ends: bounded,
    // like the attempt records, by the claims held; drained every loop.
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
