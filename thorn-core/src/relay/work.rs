//! What a relay's tasks do besides its loop: fan events out, send one
//! delivery, record attempts, renew and release claims, prune.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use tracing::Instrument;
use uuid::Uuid;

use crate::codec::ContentType;
use crate::delivery::{Delivery, HttpClient};
use crate::error::DeliveryError;
use crate::outbox::{
    AfterAttempt, AttemptRecord, ClaimedDelivery, FanOut, NewDelivery, OutboxStore, micros,
    now_micros,
};
use crate::retry::{AttemptVerdict, RetryPolicy};
use crate::subscriber::{SenderId, Subscriber};
use crate::{Error, Result, Thorn};

use super::RelayCounters;

/// How long a claim on events holds: fan-out takes milliseconds, so a
/// batch a failed worker claimed is taken over within seconds.
pub(super) const EVENT_LEASE: Duration = Duration::from_secs(10);

/// The deliveries a relay holds claims on, renewed until their attempts
/// are recorded.
pub(super) type Held = Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>;

pub(super) fn held_lock(held: &Held) -> std::sync::MutexGuard<'_, std::collections::HashSet<Uuid>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives claims back unsent and stops renewing them.
pub(super) async fn release(shared: &Shared, held: &Held, deliveries: Vec<Uuid>) {
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
pub(super) async fn prune_every(shared: Arc<Shared>, keep: Duration) {
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
pub(super) async fn renew_claims(shared: Arc<Shared>, held: Held) {
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
pub(super) async fn record_attempts(
    shared: Arc<Shared>,
    mut records: mpsc::UnboundedReceiver<(AttemptRecord, AfterAttempt)>,
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

pub(super) struct Shared {
    pub(super) thorn: Thorn,
    pub(super) store: Arc<dyn OutboxStore>,
    pub(super) client: HttpClient,
    pub(super) worker: String,
    pub(super) counters: Arc<RelayCounters>,
    pub(super) lease: Duration,
    pub(super) retry: Option<RetryPolicy>,
}

impl Shared {
    pub(super) fn db_error(&self, what: &str, error: &Error) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("thorn_outbox_errors_total").increment(1);
        tracing::error!(worker = %self.worker, %error, "outbox {what} failed");
    }

    /// Fans out one batch of new events; returns how many, and up to
    /// `free` of their deliveries, claimed for sending now.
    /// Fans out up to `batch` events; claims the new deliveries `claim`
    /// accepts (at most `free`).
    pub(super) async fn fan_out(
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
                        .subscribers()
                        .subscribers_for(key.0, key.1, key.2)
                        .await?;
                    lookups.push((key, found.clone()));
                    found
                }
            };
            let mut subscribers = found;
            subscribers.extend(event.own_recipients().cloned());
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
    pub(super) async fn deliver(&self, claimed: ClaimedDelivery) -> (AttemptRecord, AfterAttempt) {
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
                AttemptVerdict::Delivered => AfterAttempt::Delivered,
                AttemptVerdict::Retry(after) if policy.allows(number) => AfterAttempt::Retry {
                    at: now_micros().saturating_add(micros(policy.delay(number, after))),
                },
                AttemptVerdict::Gone => {
                    tracing::info!(url = %crate::subscriber::SafeUrl(&delivery.subscriber.url),
                        "receiver answered 410 Gone: subscription removed");
                    if let Err(error) = self
                        .thorn
                        .subscribers()
                        .mark_gone(delivery.subscriber.uuid)
                        .await
                    {
                        tracing::error!(%error, "could not mark subscription gone");
                    }
                    AfterAttempt::Gone
                }
                _ => AfterAttempt::Dead,
            };
            let outcome = &attempt.outcome;
            let status = match &outcome.result {
                Ok(s) => Some(*s),
                Err(DeliveryError::Status { status, .. }) => Some(*status),
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
                AfterAttempt::Delivered => (&self.counters.delivered, "delivered"),
                AfterAttempt::Retry { .. } => (&self.counters.retrying, "retry"),
                AfterAttempt::Dead => (&self.counters.dead, "dead"),
                AfterAttempt::Gone => (&self.counters.dead, "gone"),
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
