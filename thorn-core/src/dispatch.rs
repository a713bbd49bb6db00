//! Dispatchers decide what sending an event does.
//!
//! - [`InProcessDispatcher`] (the default) delivers from this process, in
//!   the background, through one pooled HTTP client: deliveries are grouped
//!   by scheme, host and port so connections are reused, the number in
//!   flight is bounded overall and per host, and failed attempts are
//!   retried by the event's [`RetryPolicy`] with the same `Hook-Delivery`.
//!   `send` returns at once with a [`Dispatched`] handle; nothing blocks the
//!   caller's thread or database transaction.
//! - [`DisabledDispatcher`] sends nothing.
//!
//! Applications can plug their own by implementing [`Dispatcher`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::codec::ContentType;
use crate::config::Config;
use crate::deliver::{Delivery, DeliveryOutcome, HttpClient};
use crate::event::Callbacks;
use crate::retry::{RetryPolicy, Verdict};
use crate::subscriber::{SenderId, Subscriber};
use crate::validate::Validators;
use crate::{Error, Result, Thorn};

/// The message of an [`Outgoing`].
#[derive(Debug, Clone)]
pub(crate) enum Message {
    /// Any JSON value (`Event::send`).
    Value(Value),
    /// Thorn's model message, kept in its parts until it is encoded: no
    /// map is built for it on the writer's thread.
    Model(ModelMessage),
}

/// `{"event": ..., "ref": ..., "sender": ..., "data": ...}`, serialized in
/// that order, as the map it stands for.
#[derive(Debug, Clone)]
pub(crate) struct ModelMessage {
    pub(crate) event: Arc<str>,
    pub(crate) reference: Option<String>,
    pub(crate) sender: Option<SenderId>,
    pub(crate) data: Value,
}

impl serde::Serialize for ModelMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("Message", 4)?;
        m.serialize_field("event", &*self.event)?;
        m.serialize_field("ref", &self.reference)?;
        m.serialize_field("sender", &self.sender)?;
        m.serialize_field("data", &self.data)?;
        m.end()
    }
}

impl Message {
    fn to_value(&self) -> std::borrow::Cow<'_, Value> {
        match self {
            Message::Value(v) => std::borrow::Cow::Borrowed(v),
            Message::Model(m) => std::borrow::Cow::Owned(m.clone().into_value()),
        }
    }

    pub(crate) fn into_value(self) -> Value {
        match self {
            Message::Value(v) => v,
            Message::Model(m) => m.into_value(),
        }
    }
}

impl ModelMessage {
    fn into_value(self) -> Value {
        let mut m = serde_json::Map::with_capacity(4);
        m.insert("event".into(), Value::String(self.event.to_string()));
        m.insert(
            "ref".into(),
            self.reference.map_or(Value::Null, Value::String),
        );
        m.insert(
            "sender".into(),
            self.sender.map_or(Value::Null, |s| {
                serde_json::to_value(s).expect("sender ids are JSON")
            }),
        );
        m.insert("data".into(), self.data);
        Value::Object(m)
    }
}

/// One event on its way out: the message and how to send it. Built by
/// [`crate::Event::send`] and by model events.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Event name.
    pub event: Arc<str>,
    /// The message, before encoding.
    pub(crate) message: Message,
    /// The JSON encoding of `message`, made once, when first needed (by
    /// the dispatcher, off the writer's thread).
    pub(crate) json: std::sync::OnceLock<Bytes>,
    /// Who sent it (selects owner-scoped subscribers).
    pub sender: Option<SenderId>,
    /// Context for subscriber callbacks.
    pub context: Option<Value>,
    /// Request timeout.
    pub timeout: std::time::Duration,
    /// Extra HTTP headers.
    pub headers: HeaderMap,
    /// Subscribers added by the event itself.
    pub extra_subscribers: Vec<Subscriber>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Retry policy through the outbox.
    pub(crate) outbox_retry: RetryPolicy,
    /// Reuse connections.
    pub keepalive: bool,
    /// Validators of the event, if not the configured ones.
    pub validators: Option<Validators>,
    /// Per-attempt callbacks.
    pub callbacks: Callbacks,
}

impl Outgoing {
    /// The message, before encoding.
    pub fn message(&self) -> std::borrow::Cow<'_, Value> {
        self.message.to_value()
    }

    /// The message, taken out.
    pub fn into_message(self) -> Value {
        self.message.into_value()
    }

    /// The JSON encoding of the message, made on first use and shared.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| match &self.message {
            Message::Value(v) => Bytes::from(ContentType::Json.encode(v)),
            Message::Model(m) => {
                Bytes::from(serde_json::to_vec(m).expect("a model message always serializes"))
            }
        })
    }

    /// The body for a content type (JSON is encoded once and shared).
    pub fn body(&self, content_type: ContentType) -> Bytes {
        match content_type {
            ContentType::Json => self.json().clone(),
            other => Bytes::from(other.encode(&self.message())),
        }
    }
}

/// What `send` does with an event.
pub trait Dispatcher: Send + Sync + 'static {
    /// Starts delivering `outgoing`; returns at once.
    fn dispatch(&self, thorn: &Thorn, outgoing: Outgoing) -> Dispatched;

    /// The events this dispatcher has accepted and not finished, for
    /// [`Thorn::drain`]; `None` when it keeps no work of its own in the
    /// background.
    fn in_flight(&self) -> Option<&InFlight> {
        None
    }

    /// Starts delivering every event of `batch` (those of one committed
    /// transaction), when nobody waits for their outcomes. The default
    /// dispatches them one by one; a dispatcher with a queue can hand the
    /// batch over at once.
    fn dispatch_batch(&self, thorn: &Thorn, batch: Vec<Outgoing>) {
        for outgoing in batch {
            drop(self.dispatch(thorn, outgoing));
        }
    }
}

/// Counts the events a dispatcher has accepted and not yet finished
/// (queued, being delivered, or waiting to retry), so a program can wait
/// for them before it exits ([`Thorn::drain`]). Dispatchers of your own
/// can use it too.
#[derive(Debug, Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    lock: Mutex<()>,
    idle: std::sync::Condvar,
    idle_async: tokio::sync::Notify,
}

/// One event counted by an [`InFlight`] until dropped.
#[derive(Debug)]
pub struct InFlightEntry(Arc<InFlight>);

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taking the lock orders this wake-up after a waiter's check.
            drop(self.0.lock.lock().unwrap_or_else(|e| e.into_inner()));
            self.0.idle.notify_all();
            self.0.idle_async.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts one more event until the returned entry is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightEntry {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlightEntry(self.clone())
    }

    /// Events accepted and not finished.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Blocks until no event is left or `timeout` passed; returns how many
    /// are left.
    pub fn wait(&self, timeout: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = self.count();
            if left == 0 {
                return 0;
            }
            guard = match deadline {
                // A timeout too large to add is "no deadline".
                None => self.idle.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return left;
                    }
                    self.idle
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Waits until no event is left or `timeout` passed; returns how many
    /// are left.
    pub async fn wait_async(&self, timeout: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let notified = self.idle_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return 0;
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.count();
                    }
                }
            }
        }
    }
}

type OutcomesRx = oneshot::Receiver<Result<Vec<DeliveryOutcome>>>;

#[derive(Debug)]
enum Pending {
    Done,
    Running(OutcomesRx),
    /// Held in a buffer; the dispatcher's handle arrives at flush.
    Buffered(oneshot::Receiver<Dispatched>),
}

/// A handle on a dispatched event: wait for it to learn what each
/// subscriber finally answered. Dropping it does not cancel anything.
#[derive(Debug)]
#[must_use = "dropping the handle is fine, but then nobody learns whether delivery worked"]
pub struct Dispatched {
    pending: Pending,
}

impl Dispatched {
    /// A handle that is already finished with no deliveries.
    pub fn none() -> Self {
        Dispatched {
            pending: Pending::Done,
        }
    }

    /// A handle on outcomes a dispatcher will send through `rx`.
    pub fn from_receiver(rx: oneshot::Receiver<Result<Vec<DeliveryOutcome>>>) -> Self {
        Dispatched {
            pending: Pending::Running(rx),
        }
    }

    pub(crate) fn buffered(rx: oneshot::Receiver<Dispatched>) -> Self {
        Dispatched {
            pending: Pending::Buffered(rx),
        }
    }

    /// Waits for every delivery of the event, retries included (async).
    ///
    /// Fails only when the subscribers could not be looked up or the
    /// dispatcher shut down; failed deliveries are in the outcomes.
    pub async fn outcomes(self) -> Result<Vec<DeliveryOutcome>> {
        let mut pending = self.pending;
        loop {
            pending = match pending {
                Pending::Done => return Ok(Vec::new()),
                Pending::Running(rx) => return rx.await.unwrap_or(Err(Error::DispatcherClosed)),
                Pending::Buffered(rx) => match rx.await {
                    Ok(next) => next.pending,
                    Err(_) => return Err(Error::DispatcherClosed),
                },
            }
        }
    }

    /// Waits for every delivery of the event, blocking the thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime; use [`Dispatched::outcomes`]
    /// there.
    pub fn wait(self) -> Result<Vec<DeliveryOutcome>> {
        let mut pending = self.pending;
        loop {
            pending = match pending {
                Pending::Done => return Ok(Vec::new()),
                Pending::Running(rx) => {
                    return rx.blocking_recv().unwrap_or(Err(Error::DispatcherClosed));
                }
                Pending::Buffered(rx) => match rx.blocking_recv() {
                    Ok(next) => next.pending,
                    Err(_) => return Err(Error::DispatcherClosed),
                },
            }
        }
    }
}

/// Sends nothing (`THORN_DISPATCHER=disabled`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DisabledDispatcher;

impl Dispatcher for DisabledDispatcher {
    fn dispatch(&self, _thorn: &Thorn, outgoing: Outgoing) -> Dispatched {
        tracing::debug!(event = %outgoing.event, "dispatcher disabled: event not sent");
        Dispatched::none()
    }
}

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
    thorn: Thorn,
    outgoing: Outgoing,
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
                default: HttpClient::new(config, config.recipient_validators.clone())?,
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
        inner.handle().spawn(feed(
            Arc::downgrade(&inner),
            jobs,
            events,
            inner.queued.clone(),
        ));
        Ok(InProcessDispatcher { inner })
    }

    /// The HTTP client of the configured validators.
    pub fn client(&self) -> &HttpClient {
        &self.inner.clients.default
    }
}

impl Dispatcher for InProcessDispatcher {
    fn dispatch(&self, thorn: &Thorn, outgoing: Outgoing) -> Dispatched {
        let (reply, rx) = oneshot::channel();
        if !self.inner.admit(1) {
            let error = self.inner.queue_full(&outgoing.event);
            tracing::error!(event = %outgoing.event, %error, "webhook not sent");
            let _ = reply.send(Err(error));
            return Dispatched::from_receiver(rx);
        }
        let job = Job {
            thorn: thorn.background(),
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
        Dispatched::from_receiver(rx)
    }

    fn in_flight(&self) -> Option<&InFlight> {
        Some(&self.inner.in_flight)
    }

    fn dispatch_batch(&self, thorn: &Thorn, batch: Vec<Outgoing>) {
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
                thorn: thorn.background(),
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
    inner: std::sync::Weak<InProcess>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    events: Arc<Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    while let Some(queued) = queue.recv().await {
        let started = match queued {
            // An event counts as waiting until it has started.
            Queued::One(job) => {
                let started = start(&inner, *job, &events).await;
                waiting.fetch_sub(1, Ordering::AcqRel);
                started
            }
            Queued::Batch(jobs) => {
                let mut all = true;
                for job in jobs {
                    all = start(&inner, job, &events).await;
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
/// dispatcher is gone.
async fn start(inner: &std::sync::Weak<InProcess>, job: Job, events: &Arc<Semaphore>) -> bool {
    let Ok(permit) = events.clone().acquire_owned().await else {
        return false;
    };
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    tokio::spawn(async move {
        let Job {
            thorn,
            outgoing,
            reply,
            _counted: counted,
        } = job;
        let event = outgoing.event.clone();
        let result = inner.deliver_all(&thorn, outgoing, permit).await;
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
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
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
        thorn: &Thorn,
        outgoing: Outgoing,
        fanning: OwnedSemaphorePermit,
    ) -> Result<Vec<DeliveryOutcome>> {
        let client = self.clients.get(outgoing.validators.as_ref())?;
        let mut subscribers = thorn
            .subscribers_for_query(
                &outgoing.event,
                outgoing.sender.as_ref(),
                outgoing.context.as_ref(),
            )
            .await?;
        subscribers.extend(
            outgoing
                .extra_subscribers
                .iter()
                .filter(|s| s.accepts_sender(outgoing.sender.as_ref()))
                .cloned(),
        );
        // Requests to one scheme/host/port go out together, so pooled
        // connections are reused instead of opened side by side.
        let mut keyed: Vec<(String, Subscriber)> = subscribers
            .into_iter()
            .map(|s| (host_key(&s.url), s))
            .collect();
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
                .unwrap_or(thorn.config().standard_webhooks);
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
                    Box::pin(self.deliver_one(thorn, &client, &outgoing, delivery, host, first))
                        .await,
                );
                break;
            }
            let (this, client, outgoing, thorn) = (
                self.clone(),
                client.clone(),
                outgoing.clone(),
                thorn.clone(),
            );
            tasks.spawn(async move {
                this.deliver_one(&thorn, &client, &outgoing, delivery, host, first)
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
        thorn: &Thorn,
        client: &HttpClient,
        outgoing: &Outgoing,
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
                    Err(e) => {
                        return DeliveryOutcome {
                            delivery_id: delivery.id,
                            event: delivery.event.clone(),
                            subscriber: delivery.subscriber.uuid,
                            url: delivery.subscriber.url.clone(),
                            attempts: number - 1,
                            result: Err(e),
                            elapsed: std::time::Duration::ZERO,
                        };
                    }
                },
            };
            let attempt = client.attempt(&delivery, number).await;
            drop(permits);
            outgoing.callbacks.fire(&attempt.outcome);
            match attempt.verdict {
                Verdict::Retry(after) if outgoing.retry.allows(number) => {
                    let wait = outgoing.retry.delay(number, after);
                    tracing::debug!(delivery = %delivery.id, retry = number, ?wait, "webhook retry scheduled");
                    tokio::time::sleep(wait).await;
                    number += 1;
                }
                Verdict::Gone => {
                    tracing::info!(subscriber = %delivery.subscriber.uuid, url = %crate::subscriber::SafeUrl(&delivery.subscriber.url),
                        "receiver answered 410 Gone: subscription marked gone");
                    if let Err(error) = thorn.mark_gone(delivery.subscriber.uuid).await {
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

    #[test]
    fn a_model_message_encodes_as_the_map_it_stands_for() {
        for (reference, sender) in [
            (None, None),
            (Some("/a/1/".to_owned()), Some(SenderId::from(7))),
            (
                Some("https://x.example/a/1/".to_owned()),
                Some(SenderId::from("alice")),
            ),
        ] {
            let parts = ModelMessage {
                event: Arc::from("a.created"),
                reference,
                sender,
                data: serde_json::json!({"id": 1, "tags": ["x"], "ok": true}),
            };
            let direct = serde_json::to_vec(&parts).unwrap();
            let via_map = ContentType::Json.encode(&parts.into_value());
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(via_map).unwrap()
            );
        }
    }
}
