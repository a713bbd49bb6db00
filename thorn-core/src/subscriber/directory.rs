//! [`Directory`]: every place a Thorn finds subscribers, behind one lookup.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::{SenderId, StaticSubscribers, Subscriber, SubscriberLookup, SubscriberQuery};
use crate::Result;

/// Where a [`Thorn`](crate::Thorn)'s subscribers come from: its
/// [`SubscriberLookup`], if it has one, then the static and callback
/// subscribers of its configuration. Cheap to clone; a
/// [`Dispatcher`](crate::Dispatcher) is handed one with each event.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use thorn_core::subscriber::{Directory, MemoryStore, StaticSubscribers};
/// use thorn_core::Subscriber;
///
/// let store = MemoryStore::new();
/// store.add(Subscriber::new("article.*", "https://a.example/hook")?);
/// let statics = StaticSubscribers::new().subscriber(Subscriber::new("*", "https://b.example/hook")?);
/// let directory = Directory::new(Some(std::sync::Arc::new(store)), statics);
/// let found = directory.subscribers_for("article.created", None, None).await?;
/// assert_eq!(found.len(), 2);
/// # Ok::<(), thorn_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct Directory(Arc<Sources>);

#[derive(Default)]
struct Sources {
    store: Option<Arc<dyn SubscriberLookup>>,
    statics: StaticSubscribers,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("store", &self.0.store.is_some())
            .field("statics", &self.0.statics)
            .finish()
    }
}

impl Directory {
    /// Subscribers from `store` (when given), then from `statics`.
    pub fn new(store: Option<Arc<dyn SubscriberLookup>>, statics: StaticSubscribers) -> Self {
        Directory(Arc::new(Sources { store, statics }))
    }

    /// True when subscriptions are looked up in a store.
    pub fn has_store(&self) -> bool {
        self.0.store.is_some()
    }

    /// Every subscriber of `event` sent by `sender`: the store's, then the
    /// static ones; `context` (the send's [`SendOptions::context`]) is
    /// what subscriber callbacks are shown.
    ///
    /// [`SendOptions::context`]: crate::SendOptions::context
    pub async fn subscribers_for(
        &self,
        event: &str,
        sender: Option<&SenderId>,
        context: Option<&Value>,
    ) -> Result<Vec<Subscriber>> {
        let mut found = match &self.0.store {
            Some(store) => store.subscribers_for(event, sender).await?,
            None => Vec::new(),
        };
        found.extend(self.0.statics.query(&SubscriberQuery {
            event,
            sender,
            context,
        }));
        Ok(found)
    }

    /// Tells the store that a subscription's receiver answered `410 Gone`.
    pub async fn mark_gone(&self, subscriber: Uuid) -> Result<()> {
        match &self.0.store {
            Some(store) => store.mark_gone(subscriber).await,
            None => Ok(()),
        }
    }
}
