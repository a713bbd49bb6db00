//! [`Thorn`]: configuration, subscribers and a dispatcher in one handle.

use std::fmt;
use std::sync::Arc;

use crate::Result;
use crate::config::{Config, DispatcherKind};
use crate::dispatch::{DisabledDispatcher, Dispatched, Dispatcher, InProcessDispatcher, Outgoing};
use crate::subscriber::{SenderId, Subscriber, SubscriberQuery, SubscriberStore};

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
#[derive(Clone)]
pub struct Thorn {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Option<Arc<dyn SubscriberStore>>,
    dispatcher: Arc<dyn Dispatcher>,
    outbox_written: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for Thorn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thorn")
            .field("config", &self.inner.config)
            .field("store", &self.inner.store.is_some())
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
        self.subscribers_for_query(event, sender, None).await
    }

    /// [`Thorn::subscribers_for`], with the context of the send passed to
    /// subscriber callbacks.
    pub async fn subscribers_for_query(
        &self,
        event: &str,
        sender: Option<&SenderId>,
        context: Option<&serde_json::Value>,
    ) -> Result<Vec<Subscriber>> {
        let mut found = match &self.inner.store {
            Some(store) => store.subscribers_for(event, sender).await?,
            None => Vec::new(),
        };
        found.extend(self.inner.config.subscribers.query(&SubscriberQuery {
            event,
            sender,
            context,
        }));
        Ok(found)
    }

    /// Tells the store that a subscription's receiver answered `410 Gone`.
    pub async fn mark_gone(&self, subscriber: uuid::Uuid) -> Result<()> {
        match &self.inner.store {
            Some(store) => store.mark_gone(subscriber).await,
            None => Ok(()),
        }
    }

    /// True when model events that honour the transaction go to the
    /// outbox table (`THORN_DISPATCHER=outbox`).
    pub fn uses_outbox(&self) -> bool {
        self.inner.config.dispatcher == DispatcherKind::Outbox
    }

    /// Signalled each time this process writes an event to the outbox, so
    /// an in-process relay wakes without waiting for its next poll.
    pub fn outbox_signal(&self) -> &Arc<tokio::sync::Notify> {
        &self.inner.outbox_written
    }

    /// Hands an event to the dispatcher, or to the active buffer
    /// ([`crate::buffer`]) when there is one.
    pub fn dispatch(&self, outgoing: Outgoing) -> Dispatched {
        match crate::buffer::current() {
            Some(buffer) => crate::buffer::hold(&buffer, self, outgoing),
            None => self.dispatch_now(outgoing),
        }
    }

    /// Hands an event to the dispatcher, bypassing any buffer.
    pub fn dispatch_now(&self, outgoing: Outgoing) -> Dispatched {
        self.inner.dispatcher.dispatch(self, outgoing)
    }
}

/// Builds a [`Thorn`].
#[must_use]
pub struct ThornBuilder {
    config: Config,
    store: Option<Arc<dyn SubscriberStore>>,
    dispatcher: Option<Arc<dyn Dispatcher>>,
}

impl ThornBuilder {
    /// Where subscriptions are stored.
    pub fn store(mut self, store: impl SubscriberStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A store that is already shared.
    pub fn shared_store(mut self, store: Arc<dyn SubscriberStore>) -> Self {
        self.store = Some(store);
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
            (None, DispatcherKind::InProcess | DispatcherKind::Outbox) => {
                Arc::new(InProcessDispatcher::new(&self.config)?)
            }
        };
        Ok(Thorn {
            inner: Arc::new(Inner {
                config: self.config,
                store: self.store,
                dispatcher,
                outbox_written: Arc::new(tokio::sync::Notify::new()),
            }),
        })
    }
}
