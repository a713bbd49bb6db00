//! [`CachedStore`]: a store's lookups answered from memory while nothing
//! has changed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{BoxFuture, Replace, SenderId, Subscriber, SubscriberLookup, SubscriptionStore};
use crate::Result;

/// How long a cached lookup is used when nothing says it changed, unless
/// [`CachedStore::max_age`] says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5);

/// How many `(event, sender)` lookups are kept, unless
/// [`CachedStore::max_entries`] says otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// A [`SubscriptionStore`] (or only a [`SubscriberLookup`]) whose lookups
/// are answered from memory until something changes.
///
/// Who gets an event is asked once per event; subscriptions change far
/// less often. A [`CachedStore`] keeps each `(event, sender)` lookup's
/// answer and forgets all of them whenever anything changes:
///
/// - writes through the cached store itself (the REST API's create,
///   update, pause, delete, and `410 Gone`) are seen by the next event;
/// - on PostgreSQL, `SqlStore::cached` (`DieselStore::cached`,
///   `SeaOrmStore::cached`) also holds a `LISTEN thorn_subscribers`
///   connection: a trigger notifies every process when any of them
///   changes a subscription, and while that connection is down the cache
///   is bypassed;
/// - anything else (another process on SQLite, a write that went around
///   the store) is seen within [`CachedStore::max_age`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use thorn_core::subscriber::{CachedStore, MemoryStore};
/// use thorn_core::{Subscriber, SubscriberLookup, SubscriptionStore};
///
/// let store = CachedStore::new(MemoryStore::new());
/// let mut sub = Subscriber::new("article.*", "https://a.example/hook")?;
/// sub.owner = Some(7.into());
/// store.insert(sub.clone()).await?;
/// assert_eq!(store.subscribers_for("article.created", None).await?.len(), 0);
/// assert_eq!(store.subscribers_for("article.created", Some(&7.into())).await?.len(), 1);
/// // Asked again: answered from memory.
/// store.subscribers_for("article.created", Some(&7.into())).await?;
/// assert_eq!(store.stats().hits, 1);
/// // A write through the store is seen by the next lookup.
/// store.delete(&7.into(), sub.uuid).await?;
/// assert!(store.subscribers_for("article.created", Some(&7.into())).await?.is_empty());
/// # Ok::<(), thorn_core::Error>(())
/// # }).unwrap();
/// ```
///
/// Give it to [`ThornBuilder::subscriptions`](crate::ThornBuilder::subscriptions)
/// as an `Arc`, so the REST API writes through the same cache its events
/// read.
pub struct CachedStore<S> {
    inner: S,
    state: Arc<State>,
    max_age: Duration,
    max_entries: usize,
    _listening: Option<Box<dyn Send + Sync>>,
}

#[derive(Default)]
struct State {
    map: RwLock<Map>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Map {
    /// Bumped by every change: a lookup that started before one does not
    /// store what it read.
    generation: u64,
    /// False while changes may go unseen (the `LISTEN` connection is
    /// down): every lookup goes to the store.
    unsynced: bool,
    by_event: HashMap<Box<str>, HashMap<Option<SenderId>, Entry>>,
    entries: usize,
}

struct Entry {
    at: Instant,
    subscribers: Vec<Subscriber>,
}

impl State {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, unsynced: Option<bool>) {
        let mut map = self.map_mut();
        map.generation += 1;
        map.by_event.clear();
        map.entries = 0;
        if let Some(unsynced) = unsynced {
            map.unsynced = unsynced;
        }
    }
}

/// How a [`CachedStore`] is told about changes it cannot see: held by
/// whatever watches the database (a `LISTEN` connection), or by the
/// application after writing subscriptions around the store.
#[derive(Clone)]
pub struct CacheControl(Arc<State>);

impl fmt::Debug for CacheControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheControl").finish_non_exhaustive()
    }
}

impl CacheControl {
    /// Subscriptions changed: every cached lookup is forgotten.
    pub fn changed(&self) {
        self.0.forget(None);
    }

    /// Whether changes are being seen. `false` (the watch was lost)
    /// sends every lookup to the store until `true` again; either way
    /// every cached lookup is forgotten.
    pub fn set_in_sync(&self, in_sync: bool) {
        self.0.forget(Some(!in_sync));
    }
}

/// What a [`CachedStore`] has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
}

impl<S> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("max_age", &self.max_age)
            .field("max_entries", &self.max_entries)
            .field("stats", &self.stats())
            .field("listening", &self._listening.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> CachedStore<S> {
    /// `inner`'s lookups, cached; changes are seen when made through this
    /// store, when told through [`control`](Self::control), or after
    /// [`DEFAULT_MAX_AGE`].
    pub fn new(inner: S) -> Self {
        CachedStore {
            inner,
            state: Arc::default(),
            max_age: DEFAULT_MAX_AGE,
            max_entries: DEFAULT_MAX_ENTRIES,
            _listening: None,
        }
    }

    /// The longest a cached lookup is used without word of a change
    /// (default [`DEFAULT_MAX_AGE`]); `Duration::ZERO` caches nothing.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How many `(event, sender)` lookups are kept (default
    /// [`DEFAULT_MAX_ENTRIES`]); when full, all are forgotten and the
    /// cache fills again.
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Tells this cache about changes made elsewhere.
    pub fn control(&self) -> CacheControl {
        CacheControl(self.state.clone())
    }

    /// Keeps `listening` (what watches the database for this cache) alive
    /// as long as the cache, starting out of sync until it reports in.
    pub(crate) fn watched_by(mut self, listening: Box<dyn Send + Sync>) -> Self {
        self._listening = Some(listening);
        self
    }

    /// False while changes may go unseen (its `LISTEN` connection is not,
    /// or no longer, in place): lookups then read the store.
    pub fn in_sync(&self) -> bool {
        !self.state.map().unsynced
    }

    /// What it has answered so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.state.hits.load(Ordering::Relaxed),
            misses: self.state.misses.load(Ordering::Relaxed),
        }
    }

    /// The store it caches.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The cached answer for `(event, sender)`, or the generation to store
    /// a fresh one under (`None` when nothing may be stored).
    fn cached(
        &self,
        event: &str,
        sender: Option<&SenderId>,
    ) -> std::result::Result<Vec<Subscriber>, Option<u64>> {
        let map = self.state.map();
        if map.unsynced || self.max_age.is_zero() {
            return Err(None);
        }
        let entry = map
            .by_event
            .get(event)
            .and_then(|owners| owners.get(&sender.cloned()));
        match entry {
            Some(e) if e.at.elapsed() < self.max_age => Ok(e.subscribers.clone()),
            _ => Err(Some(map.generation)),
        }
    }

    fn store(
        &self,
        generation: u64,
        event: &str,
        sender: Option<&SenderId>,
        subscribers: &[Subscriber],
    ) {
        let mut map = self.state.map_mut();
        if map.generation != generation || map.unsynced {
            return;
        }
        if map.entries >= self.max_entries {
            map.by_event.clear();
            map.entries = 0;
        }
        let entry = Entry {
            at: Instant::now(),
            subscribers: subscribers.to_vec(),
        };
        let replaced = map
            .by_event
            .entry(event.into())
            .or_default()
            .insert(sender.cloned(), entry);
        if replaced.is_none() {
            map.entries += 1;
        }
    }

    /// Runs a write, then forgets every cached lookup (also when it
    /// failed: it may have been applied).
    async fn write<T>(&self, write: BoxFuture<'_, Result<T>>) -> Result<T> {
        let result = write.await;
        self.state.forget(None);
        result
    }
}

impl<S: SubscriberLookup> SubscriberLookup for CachedStore<S> {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        let generation = match self.cached(event, sender) {
            Ok(found) => {
                self.state.hits.fetch_add(1, Ordering::Relaxed);
                return Box::pin(std::future::ready(Ok(found)));
            }
            Err(generation) => generation,
        };
        self.state.misses.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let found = self.inner.subscribers_for(event, sender).await?;
            if let Some(generation) = generation {
                self.store(generation, event, sender, &found);
            }
            Ok(found)
        })
    }

    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write(self.inner.mark_gone(subscriber)))
    }
}

impl<S: SubscriptionStore> SubscriptionStore for CachedStore<S> {
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
        self.inner.list(owner)
    }

    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>> {
        self.inner.get(owner, uuid)
    }

    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write(self.inner.insert(subscriber)))
    }

    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.write(self.inner.update(subscriber)))
    }

    fn update_if_unchanged(
        &self,
        subscriber: Subscriber,
        seen: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Replace>> {
        Box::pin(self.write(self.inner.update_if_unchanged(subscriber, seen)))
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.write(self.inner.delete(owner, uuid)))
    }

    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.write(self.inner.set_active(owner, uuid, active, reason)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriber::MemoryStore;

    fn sub(pattern: &str, owner: Option<i64>) -> Subscriber {
        let mut s = Subscriber::new(pattern, "https://a.example/hook").unwrap();
        s.owner = owner.map(SenderId::from);
        s
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_change_told_through_control_is_seen_by_the_next_lookup() {
        block(async {
            let store = CachedStore::new(MemoryStore::new());
            assert!(store.subscribers_for("a.b", None).await.unwrap().is_empty());
            // Added around the cache: not seen until told.
            store.inner().add(sub("*", None));
            assert!(store.subscribers_for("a.b", None).await.unwrap().is_empty());
            store.control().changed();
            assert_eq!(store.subscribers_for("a.b", None).await.unwrap().len(), 1);
            assert_eq!(store.stats(), CacheStats { hits: 1, misses: 2 });
        });
    }

    #[test]
    fn out_of_sync_goes_to_the_store_every_time() {
        block(async {
            let store = CachedStore::new(MemoryStore::new());
            store.control().set_in_sync(false);
            store.subscribers_for("a.b", None).await.unwrap();
            store.inner().add(sub("a.*", None));
            assert_eq!(store.subscribers_for("a.b", None).await.unwrap().len(), 1);
            assert_eq!(store.stats().hits, 0);
            store.control().set_in_sync(true);
            store.subscribers_for("a.b", None).await.unwrap();
            store.subscribers_for("a.b", None).await.unwrap();
            assert_eq!(store.stats().hits, 1);
        });
    }

    #[test]
    fn lookups_older_than_max_age_are_read_again() {
        block(async {
            let store = CachedStore::new(MemoryStore::new()).max_age(Duration::from_millis(30));
            store.subscribers_for("a.b", None).await.unwrap();
            store.inner().add(sub("a.b", None));
            std::thread::sleep(Duration::from_millis(40));
            assert_eq!(store.subscribers_for("a.b", None).await.unwrap().len(), 1);
        });
    }

    #[test]
    fn senders_and_events_are_cached_apart_and_bounded() {
        block(async {
            let store = CachedStore::new(MemoryStore::new()).max_entries(2);
            store.insert(sub("*", Some(1))).await.unwrap();
            assert_eq!(
                store
                    .subscribers_for("a.b", Some(&1.into()))
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert!(
                store
                    .subscribers_for("a.b", Some(&2.into()))
                    .await
                    .unwrap()
                    .is_empty()
            );
            // A third entry clears the full cache first.
            store.subscribers_for("c.d", None).await.unwrap();
            store.subscribers_for("c.d", None).await.unwrap();
            store.subscribers_for("a.b", Some(&1.into())).await.unwrap();
            assert_eq!(store.stats(), CacheStats { hits: 1, misses: 4 });
        });
    }

    #[test]
    fn a_lookup_that_raced_a_change_is_not_kept() {
        block(async {
            let store = CachedStore::new(MemoryStore::new());
            let Err(Some(generation)) = store.cached("a.b", None) else {
                panic!("nothing is cached yet");
            };
            let read = store.inner().matching("a.b", None);
            // A change lands between the read and storing what it read.
            store.insert(sub("a.b", Some(1))).await.unwrap();
            store.store(generation, "a.b", None, &read);
            assert!(matches!(store.cached("a.b", None), Err(Some(_))));
        });
    }
}
