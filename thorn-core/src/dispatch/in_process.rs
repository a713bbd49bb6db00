//! [`InProcessDispatcher`]: deliveries from this process, on a runtime of
//! its own, through one pooled client, bounded overall and per host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{Dispatcher, InFlight, InFlightEntry, OutgoingEvent, SendHandle};
use crate::codec::ContentType;
use crate::config::Config;
use crate::delivery::{Delivery, DeliveryOutcome, HttpClient};
use crate::error::DeliveryError;
use crate::retry::AttemptVerdict;
use crate::subscriber::Directory;
use crate::subscriber::Subscriber;
use crate::validate::Validators;
use crate::{Error, Result};

/// A tokio runtime on background threads, owned by the dispatcher, so
/// deliveries run the same way whether the caller is synchronous (Diesel)
/// or async (SeaORM, axum), and pooled connections outlive any caller's
/// runtime.
#[derive(Debug)]
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Safe to call from any context, async ones included.
            rt.shutdown_background();
        }
    }
}

/// The most clients kept for per-event validator sets (the oldest goes).
const MAX_CUSTOM_CLIENTS: usize = 16;

/// The most per-host limits kept while unused (hosts come from users'
/// URLs): beyond it, those with no delivery in flight are dropped.
const IDLE_HOSTS_KEPT: usize = 1024;

/// Clients by validator set: the configured one, and one per event that
/// brings its own validators (each with its own resolver and pool).
#[derive(Debug)]
struct Clients {
    config: Config,
    default: HttpClient,
    custom: Mutex<Vec<HttpClient>>,
}

impl Clients {
    fn get(&self, validators: Option<&Validators>) -> Result<HttpClient> {
        let Some(v) = validators else {
            return Ok(self.default.clone());
        };
        if v.same_as(self.default.validators()) {
            return Ok(self.default.clone());
        }
        let mut custom = self.custom.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = custom.iter().find(|c| c.validators().same_as(v)) {
            return Ok(c.clone());
        }
        let client = HttpClient::new(&self.config, v.clone())?;
        // Validator sets come from code, but a bound keeps a program that
        // builds one per event from keeping a pool per event forever.
        if custom.len() >= MAX_CUSTOM_CLIENTS {
            custom.remove(0);
        }
        custom.push(client.clone());
        Ok(client)
    }
}

/// Delivers from this process (the default dispatcher).
#[derive(Debug, Clone)]
pub struct InProcessDispatcher {
    inner: Arc<InProcess>,
}

#[derive(Debug)]
struct InProcess {
    runtime: BackgroundRuntime,
    clients: Clients,
    limit: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    max_per_host: usize,
    queue: mpsc::UnboundedSender<Queued>,
    /// Events in `queue`, not yet started: at most `max_queued`.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_queued: usize,
    in_flight: Arc<InFlight>,
}

/// What the feeder's queue carries: one event, or the events of one
/// committed transaction (one wake-up of the feeder for all of them).
#[derive(Debug)]
enum Queued {
    One(Box<Job>),
    Batch(Vec<Job>),
}

/// An event waiting for the feeder.
#[derive(Debug)]
struct Job {
    subscribers: Directory,
    /// The dispatcher, kept running by the job until it is done (after the
    /// application's last handle is gone too).
    dispatcher: Arc<InProcess>,
    outgoing: OutgoingEvent,
    /// Where the outcomes go, when somebody waits for them.
    reply: Option<oneshot::Sender<Result<Vec<DeliveryOutcome>>>>,
    /// Counted from `dispatch` until every delivery finished.
    _counted: InFlightEntry,
}

impl InProcessDispatcher {
    /// A dispatcher with its own HTTP client and two background threads.
    pub fn new(config: &Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("thorn-dispatch")
            .enable_all()
            .build()
            .map_err(|e| Error::Start {
                what: "the dispatcher runtime",
                source: Box::new(e),
            })?;
        let (queue, jobs) = mpsc::unbounded_channel();
        let inner = Arc::new(InProcess {
            runtime: BackgroundRuntime(Some(runtime)),
            clients: Clients {
                config: config.clone(),
                default: HttpClient::new(config, config.validators())?,
                custom: Mutex::new(Vec::new()),
            },
            limit: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            per_host: Mutex::new(HashMap::new()),
            max_per_host: config.max_per_host.max(1),
            queue,
            queued: Arc::default(),
            max_queued: config.max_queued.max(1),
            in_flight: Arc::default(),
        });
        let events = Arc::new(Semaphore::new(config.max_concurrency.max(1)));
        inner
            .handle()
            .spawn(feed(jobs, events, inner.queued.clone()));
        Ok(InProcessDispatcher { inner })
    }
}

impl Dispatcher for InProcessDispatcher {
    fn dispatch(&self, subscribers: &Directory, outgoing: OutgoingEvent) -> SendHandle {
        let (reply, rx) = oneshot::channel();
        if !self.inner.admit(1) {
            let error = self.inner.queue_full(&outgoing.event);
            tracing::error!(event = %outgoing.event, %error, "webhook not sent");
            let _ = reply.send(Err(error));
            return SendHandle::from_receiver(rx);
        }
        let job = Job {
            subscribers: subscribers.clone(),
            dispatcher: self.inner.clone(),
            outgoing,
            reply: Some(reply),
            _counted: self.inner.in_flight.enter(),
        };
        if let Err(mpsc::error::SendError(Queued::One(job))) =
            self.inner.queue.send(Queued::One(Box::new(job)))
            && let Some(reply) = job.reply
        {
            let _ = reply.send(Err(Error::DispatcherClosed));
        }
        SendHandle::from_receiver(rx)
    }

    fn in_flight(&self) -> Option<&InFlight> {
        Some(&self.inner.in_flight)
    }

    fn dispatch_batch(&self, subscribers: &Directory, batch: Vec<OutgoingEvent>) {
        if batch.is_empty() {
            return;
        }
        let events = batch.len();
        if !self.inner.admit(events) {
            for outgoing in &batch {
                let error = self.inner.queue_full(&outgoing.event);
                tracing::error!(event = %outgoing.event, %error, "webhook not sent");
            }
            return;
        }
        let jobs = batch
            .into_iter()
            .map(|outgoing| Job {
                subscribers: subscribers.clone(),
                dispatcher: self.inner.clone(),
                outgoing,
                reply: None,
                _counted: self.inner.in_flight.enter(),
            })
            .collect();
        if self.inner.queue.send(Queued::Batch(jobs)).is_err() {
            tracing::error!(events, "the dispatcher shut down: webhook events dropped");
        }
    }
}

/// Starts events in the order they were sent, at most `events` fanning out
/// at once, so a burst of sends waits in one queue instead of as thousands
/// of parked tasks.
async fn feed(
    mut queue: mpsc::UnboundedReceiver<Queued>,
    events: Arc<Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    while let Some(queued) = queue.recv().await {
        let started = match queued {
            // An event counts as waiting until it has started.
            Queued::One(job) => {
                let started = start(*job, &events).await;
                waiting.fetch_sub(1, Ordering::AcqRel);
                started
            }
            Queued::Batch(jobs) => {
                let mut all = true;
                for job in jobs {
                    all = start(job, &events).await;
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    if !all {
                        break;
                    }
                }
                all
            }
        };
        if !started {
            return;
        }
    }
}

/// Starts one event's fan-out once a permit is free; false when the
/// dispatcher is shutting down.
async fn start(job: Job, events: &Arc<Semaphore>) -> bool {
    let Ok(permit) = events.clone().acquire_owned().await else {
        return false;
    };
    tokio::spawn(async move {
        let Job {
            subscribers,
            outgoing,
            reply,
            _counted: counted,
            dispatcher: inner,
        } = job;
        let event = outgoing.event.clone();
        let result = inner.deliver_all(&subscribers, outgoing, permit).await;
        // Nobody waits for the outcome (no handle, or a dropped one): an
        // error that stopped every delivery is logged here.
        let unheard = match reply {
            Some(reply) => reply.send(result).err(),
            None => Some(result),
        };
        if let Some(Err(error)) = unheard {
            tracing::error!(%event, %error, "webhook not delivered");
        }
        drop(counted);
    });
    true
}

/// `scheme://host:port`, the unit of connection reuse.
fn host_key(url: &url::Url) -> String {
    use std::fmt::Write as _;
    let (scheme, host) = (url.scheme(), url.host_str().unwrap_or(""));
    let mut key = String::with_capacity(scheme.len() + host.len() + 9);
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(host);
    let _ = write!(key, ":{}", url.port_or_known_default().unwrap_or(0));
    key
}

impl InProcess {
    /// Counts `n` more events into the queue, unless that would pass its
    /// limit.
    fn admit(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= self.max_queued).then_some(q + n)
            })
            .is_ok()
    }

    fn queue_full(&self, event: &str) -> Error {
        Error::QueueFull {
            event: event.to_owned(),
            limit: self.max_queued,
        }
    }

    fn host_limit(&self, key: &str) -> Arc<Semaphore> {
        let mut map = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = map.get(key) {
            return limit.clone();
        }
        if map.len() >= IDLE_HOSTS_KEPT && !map.contains_key(key) {
            // A limit held only here has no permit out: nothing to keep.
            map.retain(|_, limit| Arc::strong_count(limit) > 1);
        }
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_host)))
            .clone()
    }

    async fn permits(
        &self,
        host: &Arc<Semaphore>,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let global = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::DispatcherClosed)?;
        let local = host
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::DispatcherClosed)?;
        Ok((global, local))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .0
            .as_ref()
            .expect("runtime lives until drop")
            .handle()
    }

    /// Fans one event out to its subscribers; `fanning` is released once
    /// every delivery has started.
    async fn deliver_all(
        self: &Arc<Self>,
        subscribers: &Directory,
        outgoing: OutgoingEvent,
        fanning: OwnedSemaphorePermit,
    ) -> Result<Vec<DeliveryOutcome>> {
        let client = self.clients.get(outgoing.validators.as_ref())?;
        let mut found = subscribers
            .subscribers_for(
                &outgoing.event,
                outgoing.sender.as_ref(),
                outgoing.context.as_ref(),
            )
            .await?;
        found.extend(
            outgoing
                .extra_subscribers
                .iter()
                .filter(|s| s.accepts_sender(outgoing.sender.as_ref()))
                .cloned(),
        );
        // Requests to one scheme/host/port go out together, so pooled
        // connections are reused instead of opened side by side.
        let mut keyed: Vec<(String, Subscriber)> =
            found.into_iter().map(|s| (host_key(&s.url), s)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let outgoing = Arc::new(outgoing);
        let mut form_body: Option<Bytes> = None;
        let mut tasks = JoinSet::new();
        let mut outcomes = Vec::with_capacity(keyed.len());
        let last = keyed.len().saturating_sub(1);
        for (i, (key, subscriber)) in keyed.into_iter().enumerate() {
            let body = match subscriber.content_type {
                ContentType::Json => outgoing.json().clone(),
                other => form_body
                    .get_or_insert_with(|| outgoing.body(other))
                    .clone(),
            };
            let standard_webhooks = subscriber
                .standard_webhooks
                .unwrap_or(self.clients.config.standard_webhooks);
            let host = self.host_limit(&key);
            let delivery = Delivery {
                id: Uuid::now_v7(),
                event: outgoing.event.clone(),
                subscriber,
                body,
                headers: outgoing.headers.clone(),
                timeout: outgoing.timeout,
                keepalive: outgoing.keepalive,
                standard_webhooks,
            };
            let first = self.permits(&host).await?;
            if i == last {
                drop(fanning);
                // The last one runs in this task: one spawn fewer per event.
                outcomes.push(
                    Box::pin(self.deliver_one(
                        subscribers,
                        &client,
                        &outgoing,
                        delivery,
                        host,
                        first,
                    ))
                    .await,
                );
                break;
            }
            let (this, client, outgoing, subscribers) = (
                self.clone(),
                client.clone(),
                outgoing.clone(),
                subscribers.clone(),
            );
            tasks.spawn(async move {
                this.deliver_one(&subscribers, &client, &outgoing, delivery, host, first)
                    .await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => tracing::error!(error = %e, "webhook delivery task panicked"),
            }
        }
        Ok(outcomes)
    }

    /// All attempts of one delivery; permits are held only while a request
    /// is in flight, never while waiting to retry.
    async fn deliver_one(
        &self,
        subscribers: &Directory,
        client: &HttpClient,
        outgoing: &OutgoingEvent,
        delivery: Delivery,
        host: Arc<Semaphore>,
        first: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> DeliveryOutcome {
        let mut first = Some(first);
        let mut number = 1;
        loop {
            let permits = match first.take() {
                Some(p) => p,
                None => match self.permits(&host).await {
                    Ok(p) => p,
                    Err(_) => {
                        return DeliveryOutcome {
                            delivery_id: delivery.id,
                            event: delivery.event.clone(),
                            subscriber: delivery.subscriber.uuid,
                            url: delivery.subscriber.url.clone(),
                            attempts: number - 1,
                            result: Err(DeliveryError::Stopped),
                            elapsed: std::time::Duration::ZERO,
                        };
                    }
                },
            };
            let attempt = client.attempt(&delivery, number).await;
            drop(permits);
            outgoing.callbacks.fire(&attempt.outcome);
            match attempt.verdict {
                AttemptVerdict::Retry(after) if outgoing.retry.allows(number) => {
                    let wait = outgoing.retry.delay(number, after);
                    tracing::debug!(delivery = %delivery.id, retry = number, ?wait, "webhook retry scheduled");
                    tokio::time::sleep(wait).await;
                    number += 1;
                }
                AttemptVerdict::Gone => {
                    tracing::info!(subscriber = %delivery.subscriber.uuid, url = %crate::subscriber::SafeUrl(&delivery.subscriber.url),
                        "receiver answered 410 Gone: subscription marked gone");
                    if let Err(error) = subscribers.mark_gone(delivery.subscriber.uuid).await {
                        tracing::error!(%error, "could not mark subscription gone");
                    }
                    return attempt.outcome;
                }
                _ => return attempt.outcome,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_per_host_limits_do_not_pile_up() {
        let dispatcher = InProcessDispatcher::new(&Config::default()).unwrap();
        let inner = &dispatcher.inner;
        let busy = inner.host_limit("https://busy.example:443");
        for i in 0..3 * IDLE_HOSTS_KEPT {
            drop(inner.host_limit(&format!("https://h{i}.example:443")));
        }
        let map = inner.per_host.lock().unwrap();
        assert!(map.len() <= IDLE_HOSTS_KEPT + 1, "{} kept", map.len());
        assert!(
            map.get("https://busy.example:443")
                .is_some_and(|l| Arc::ptr_eq(l, &busy)),
            "a limit in use stays"
        );
    }
}
