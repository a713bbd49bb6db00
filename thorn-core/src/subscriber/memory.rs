//! [`MemoryStore`]: subscriptions in memory, indexed by pattern and owner.

use std::collections::HashMap;
use std::sync::RwLock;

use uuid::Uuid;

use super::{
    BoxFuture, Replace, SenderId, Subscriber, SubscriberLookup, SubscriptionStore,
    candidate_patterns,
};
use crate::Result;

/// An in-memory [`SubscriberLookup`], indexed by pattern and owner: finding
/// the subscribers of an event looks at its four candidate patterns, each
/// for no owner and for the sender, and at nothing else, however many
/// other subscriptions there are.
#[derive(Debug, Default)]
pub struct MemoryStore {
    by_pattern: RwLock<HashMap<String, ByOwner>>,
}

/// One pattern's subscriptions, by owner (`None`: every sender's).
type ByOwner = HashMap<Option<SenderId>, Vec<Subscriber>>;

impl MemoryStore {
    /// True when it holds no subscription.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_pattern
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber.
    pub fn add(&self, subscriber: Subscriber) {
        self.by_pattern
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(subscriber.event.clone())
            .or_default()
            .entry(subscriber.owner.clone())
            .or_default()
            .push(subscriber);
    }

    /// Removes a subscriber by uuid; returns whether it existed.
    pub fn remove(&self, uuid: Uuid) -> bool {
        let mut map = self.by_pattern.write().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        for list in map.values_mut().flat_map(|owners| owners.values_mut()) {
            let before = list.len();
            list.retain(|s| s.uuid != uuid);
            found |= list.len() != before;
        }
        found
    }

    /// The matching subscribers, synchronously.
    pub fn matching(&self, event: &str, sender: Option<&SenderId>) -> Vec<Subscriber> {
        let map = self.by_pattern.read().unwrap_or_else(|e| e.into_inner());
        let owners = [None, sender.cloned()];
        let owners = if sender.is_some() {
            &owners[..]
        } else {
            &owners[..1]
        };
        let mut found = Vec::new();
        candidate_patterns(event, |p| {
            if let Some(by_owner) = map.get(p) {
                for list in owners.iter().filter_map(|o| by_owner.get(o)) {
                    found.extend(list.iter().filter(|s| s.is_active()).cloned());
                }
            }
        });
        found
    }
}

impl SubscriberLookup for MemoryStore {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        let found = self.matching(event, sender);
        Box::pin(async move { Ok(found) })
    }

    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        self.remove(subscriber);
        Box::pin(async { Ok(()) })
    }
}

/// The owner's subscription `uuid`, taken out of `map`.
fn take(map: &mut HashMap<String, ByOwner>, owner: &SenderId, uuid: Uuid) -> Option<Subscriber> {
    let key = Some(owner.clone());
    map.values_mut()
        .filter_map(|by_owner| by_owner.get_mut(&key))
        .find_map(|list| {
            let at = list.iter().position(|s| s.uuid == uuid)?;
            Some(list.remove(at))
        })
}

impl MemoryStore {
    /// Runs `f` on the owner's subscription `uuid` under one write lock (it
    /// is filed again under its pattern afterwards, so `f` may change it);
    /// `None` when there is none. Nobody sees it missing meanwhile.
    fn edit<T>(
        &self,
        owner: &SenderId,
        uuid: Uuid,
        f: impl FnOnce(&mut Subscriber) -> T,
    ) -> Option<T> {
        let mut map = self.by_pattern.write().unwrap_or_else(|e| e.into_inner());
        let mut subscriber = take(&mut map, owner, uuid)?;
        let out = f(&mut subscriber);
        map.entry(subscriber.event.clone())
            .or_default()
            .entry(subscriber.owner.clone())
            .or_default()
            .push(subscriber);
        Some(out)
    }

    fn owned_by(&self, owner: &SenderId) -> Vec<Subscriber> {
        let map = self.by_pattern.read().unwrap_or_else(|e| e.into_inner());
        let key = Some(owner.clone());
        let mut out: Vec<Subscriber> = map
            .values()
            .filter_map(|by_owner| by_owner.get(&key))
            .flatten()
            .cloned()
            .collect();
        out.sort_by_key(|s| (s.created_at, s.uuid));
        out
    }
}

impl SubscriptionStore for MemoryStore {
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
        let out = self.owned_by(owner);
        Box::pin(async move { Ok(out) })
    }

    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>> {
        let found = self.owned_by(owner).into_iter().find(|s| s.uuid == uuid);
        Box::pin(async move { Ok(found) })
    }

    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
        self.add(subscriber);
        Box::pin(async { Ok(()) })
    }

    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        let found = match subscriber.owner.clone() {
            Some(owner) => self
                .edit(&owner, subscriber.uuid, |stored| {
                    replace_settings(stored, subscriber)
                })
                .is_some(),
            None => false,
        };
        Box::pin(async move { Ok(found) })
    }

    fn update_if_unchanged(
        &self,
        subscriber: Subscriber,
        seen: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Replace>> {
        let outcome = match subscriber.owner.clone() {
            Some(owner) => self
                .edit(&owner, subscriber.uuid, |stored| {
                    if stored.updated_at != seen {
                        return Replace::Stale;
                    }
                    replace_settings(stored, subscriber);
                    Replace::Done
                })
                .unwrap_or(Replace::Missing),
            None => Replace::Missing,
        };
        Box::pin(async move { Ok(outcome) })
    }

    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        let exists = self
            .edit(owner, uuid, |s| {
                if active {
                    s.enable();
                } else if s.is_active() {
                    s.disable(reason);
                }
            })
            .is_some();
        Box::pin(async move { Ok(exists) })
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        let mut map = self.by_pattern.write().unwrap_or_else(|e| e.into_inner());
        let exists = take(&mut map, owner, uuid).is_some();
        drop(map);
        Box::pin(async move { Ok(exists) })
    }
}

/// `stored` with the settings of `new`; its disabled state stays as stored
/// (a worker may have just disabled it).
fn replace_settings(stored: &mut Subscriber, new: Subscriber) {
    let (disabled_at, disabled_reason) = (stored.disabled_at, stored.disabled_reason.take());
    *stored = new;
    stored.disabled_at = disabled_at;
    stored.disabled_reason = disabled_reason;
}
