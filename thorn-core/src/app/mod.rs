//! [`Thorn`]: configuration, subscribers and a dispatcher in one handle.

use std::fmt;
use std::sync::Arc;

use std::time::Duration;

use crate::Result;
use crate::config::{Config, DispatcherKind};
use crate::dispatch::{
    DisabledDispatcher, Dispatcher, InProcessDispatcher, OutgoingEvent, SendHandle,
};
use crate::outbox::DeliveryLog;
use crate::subscriber::{
    BoxFuture, Directory, SenderId, Subscriber, SubscriberLookup, SubscriptionStore,
};
use frames::Frames;

pub(crate) mod frames;

/// The application's webhook sender: its [`Config`], where subscribers are
/// stored, and the [`Dispatcher`] that delivers. Cheap to clone; build one
/// at start-up and share it.
///
/// ```
/// use thorn_core::{Config, Thorn, subscriber::MemoryStore};
///
/// let thorn = Thorn::builder(Config::default()).store(MemoryStore::new()).build().unwrap();
/// assert_eq!(thorn.config().retry.max_retries, 10);
/// ```
///
/// Deliveries run in the background. Before a program exits, call
/// [`Thorn::drain`] (or [`Thorn::drain_async`]) so queued and in-flight
/// deliveries finish; dropping the last handle with deliveries left logs
/// how many.
#[derive(Clone)]
pub struct Thorn {
    inner: Arc<Inner>,
    /// Present in the application's handles, absent in the dispatcher's
    /// own clones: dropped with the application's last handle.
    _handle: Option<Arc<Handle>>,
}

struct Inner {
    config: Config,
    subscribers: Directory,
    subscriptions: Option<Arc<dyn SubscriptionStore>>,
    delivery_log: Option<Arc<dyn DeliveryLog>>,
    event_types: Vec<EventType>,
    dispatcher: Arc<dyn Dispatcher>,
    outbox_written: Arc<tokio::sync::Notify>,
    frames: Frames,
}

/// Reports deliveries left behind when the application's last handle goes.
struct Handle {
    dispatcher: Arc<dyn Dispatcher>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let left = self.dispatcher.in_flight().map_or(0, |f| f.count());
        if left > 0 {
            tracing::warn!(
                events = left,
                "the last Thorn was dropped without drain(): {left} webhook event(s) still queued or \
                 being delivered are lost if the process exits now"
            );
        }
    }
}

/// What [`Thorn::drain`] left unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a drain that timed out leaves deliveries unfinished"]
#[non_exhaustive]
pub struct Drained {
    /// Events still queued, being delivered or waiting to retry when the
    /// deadline passed (0: everything finished).
    pub unfinished: usize,
}

impl Drained {
    /// True when every delivery finished.
    pub fn is_complete(&self) -> bool {
        self.unfinished == 0
    }
}

impl fmt::Debug for Thorn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thorn")
            .field("config", &self.inner.config)
            .field("store", &self.inner.subscribers.has_store())
            .finish_non_exhaustive()
    }
}

impl Thorn {
    /// A Thorn with `config`, only static subscribers, and the dispatcher the
    /// config names.
    pub fn new(config: Config) -> Result<Self> {
        Self::builder(config).build()
    }

    /// Starts building a Thorn with `config`.
    pub fn builder(config: Config) -> ThornBuilder {
        ThornBuilder {
            config,
            store: None,
            subscriptions: None,
            delivery_log: None,
            event_types: Vec::new(),
            dispatcher: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Every subscriber of `event` sent by `sender`: from the store, then
    /// the static and callback subscribers of the configuration.
    pub async fn subscribers_for(
        &self,
        event: &str,
        sender: Option<&SenderId>,
    ) -> Result<Vec<Subscriber>> {
        self.inner
            .subscribers
            .subscribers_for(event, sender, None)
            .await
    }

    /// The store its subscriptions' owners manage (the REST API's), when it
    /// was built with [`ThornBuilder::subscriptions`].
    pub fn subscription_store(&self) -> Option<&Arc<dyn SubscriptionStore>> {
        self.inner.subscriptions.as_ref()
    }

    /// The deliveries of each subscription, as their owners see them,
    /// when it was built with [`ThornBuilder::delivery_log`].
    pub fn delivery_log(&self) -> Option<&Arc<dyn DeliveryLog>> {
        self.inner.delivery_log.as_ref()
    }

    /// The events the application declared with
    /// [`ThornBuilder::event_types`]: what subscribers can ask for.
    pub fn event_types(&self) -> &[EventType] {
        &self.inner.event_types
    }

    /// Where this Thorn finds subscribers: its store and its
    /// configuration's static subscribers.
    pub(crate) fn subscribers(&self) -> &Directory {
        &self.inner.subscribers
    }

    pub(crate) fn frames(&self) -> &Frames {
        &self.inner.frames
    }

    /// A clone for the dispatcher's own use, which does not keep the
    /// application's handle alive.
    pub(crate) fn background(&self) -> Thorn {
        Thorn {
            inner: self.inner.clone(),
            _handle: None,
        }
    }

    /// Waits, blocking the thread, until every event handed to the
    /// dispatcher has finished — delivered, failed, or out of retries — or
    /// `timeout` passed. Call it before a program exits; in async code use
    /// [`Thorn::drain_async`].
    ///
    /// Events still held by an open transaction or buffer are not counted:
    /// they have not reached the dispatcher.
    pub fn drain(&self, timeout: Duration) -> Drained {
        Drained {
            unfinished: self
                .inner
                .dispatcher
                .in_flight()
                .map_or(0, |f| f.wait(timeout)),
        }
    }

    /// [`Thorn::drain`] for async code.
    pub async fn drain_async(&self, timeout: Duration) -> Drained {
        let unfinished = match self.inner.dispatcher.in_flight() {
            Some(f) => f.wait_async(timeout).await,
            None => 0,
        };
        Drained { unfinished }
    }

    /// Signalled each time this process writes an event to the outbox, so
    /// an in-process relay wakes without waiting for its next poll.
    pub(crate) fn outbox_written(&self) -> &Arc<tokio::sync::Notify> {
        &self.inner.outbox_written
    }

    /// Hands an event to the dispatcher, bypassing any buffer.
    pub(crate) fn dispatch_now(&self, outgoing: OutgoingEvent) -> SendHandle {
        self.inner
            .dispatcher
            .dispatch(&self.inner.subscribers, outgoing)
    }

    /// Hands a committed transaction's events to the dispatcher at once,
    /// bypassing any buffer.
    pub(crate) fn dispatch_batch_now(&self, batch: Vec<OutgoingEvent>) {
        self.inner
            .dispatcher
            .dispatch_batch(&self.inner.subscribers, batch);
    }
}

/// Builds a [`Thorn`].
#[must_use]
pub struct ThornBuilder {
    config: Config,
    store: Option<Arc<dyn SubscriberLookup>>,
    subscriptions: Option<Arc<dyn SubscriptionStore>>,
    delivery_log: Option<Arc<dyn DeliveryLog>>,
    event_types: Vec<EventType>,
    dispatcher: Option<Arc<dyn Dispatcher>>,
}

impl ThornBuilder {
    /// Where subscriptions are stored.
    pub fn store(mut self, store: impl SubscriberLookup) -> Self {
        self.store = Some(Arc::new(store));
        self.subscriptions = None;
        self
    }

    /// A store that is already shared.
    pub fn shared_store(mut self, store: Arc<dyn SubscriberLookup>) -> Self {
        self.store = Some(store);
        self.subscriptions = None;
        self
    }

    /// Where subscriptions are stored and managed by their owners: the
    /// store events are matched in, and the one the REST API
    /// (`thorn::api::Api::new`) serves.
    pub fn subscriptions(mut self, store: Arc<dyn SubscriptionStore>) -> Self {
        self.store = Some(Arc::new(Managed(store.clone())));
        self.subscriptions = Some(store);
        self
    }

    /// Where the deliveries of the subscriptions are recorded: the
    /// outbox (`DieselOutbox::delivery_log()`, `Arc::new(SeaOrmOutbox::new(db))`),
    /// which the REST API's delivery log, redelivery and test sends serve.
    pub fn delivery_log(mut self, log: Arc<dyn DeliveryLog>) -> Self {
        self.delivery_log = Some(log);
        self
    }

    /// Declares events subscribers can ask for — a model's with
    /// [`EventType::of_model`](crate::model::EventType::of_model) — listed
    /// by the REST API's event catalogue. May be called again to add more.
    pub fn event_types(mut self, types: impl IntoIterator<Item = EventType>) -> Self {
        self.event_types.extend(types);
        self
    }

    /// A dispatcher of the application's, instead of the one the config names.
    pub fn dispatcher(mut self, dispatcher: impl Dispatcher) -> Self {
        self.dispatcher = Some(Arc::new(dispatcher));
        self
    }

    /// Builds the Thorn; fails when the HTTP client or the background
    /// runtime cannot be created.
    pub fn build(self) -> Result<Thorn> {
        let dispatcher: Arc<dyn Dispatcher> = match (self.dispatcher, self.config.dispatcher) {
            (Some(d), _) => d,
            (None, DispatcherKind::Disabled) => Arc::new(DisabledDispatcher),
            (None, DispatcherKind::InProcess) => Arc::new(InProcessDispatcher::new(&self.config)?),
        };
        Ok(Thorn {
            _handle: Some(Arc::new(Handle {
                dispatcher: dispatcher.clone(),
            })),
            inner: Arc::new(Inner {
                subscribers: Directory::new(self.store, self.config.subscribers.clone()),
                subscriptions: self.subscriptions,
                delivery_log: self.delivery_log,
                event_types: self.event_types,
                config: self.config,
                dispatcher,
                outbox_written: Arc::new(tokio::sync::Notify::new()),
                frames: Frames::default(),
            }),
        })
    }
}

/// An event subscribers can ask for, as the REST API's catalogue lists
/// it. (Defined here, re-exported as `thorn_core::model::EventType`.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventType {
    /// The event's name (`article.published`).
    pub name: String,
    /// The model that sends it, when one does (`Article`).
    pub model: Option<String>,
    /// What makes it fire (`create`, `change`, `delete`, `m2m_add(tags)`...,
    /// or what the application says).
    pub fires_on: String,
}

impl EventType {
    /// An event the application sends itself (not a model's), fired on
    /// `fires_on`.
    pub fn new(name: impl Into<String>, fires_on: impl Into<String>) -> Self {
        EventType {
            name: name.into(),
            model: None,
            fires_on: fires_on.into(),
        }
    }
}

/// A subscription store, seen as where events find their subscribers.
struct Managed(Arc<dyn SubscriptionStore>);

impl SubscriberLookup for Managed {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        self.0.subscribers_for(event, sender)
    }

    fn mark_gone(&self, subscriber: uuid::Uuid) -> BoxFuture<'_, Result<()>> {
        self.0.mark_gone(subscriber)
    }
}
