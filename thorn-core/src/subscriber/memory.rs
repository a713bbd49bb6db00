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
        candidate_patterns(event)
            .filter_map(|p| map.get(p.as_ref()))
            .flat_map(|by_owner| owners.iter().filter_map(|o| by_owner.get(o)))
            .flatten()
            .filter(|s| s.is_active())
            .cloned()
            .collect()
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

impl MemoryStore {
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

    fn update(&self, mut subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        let stored = subscriber.owner.as_ref().and_then(|o| {
            self.owned_by(o)
                .into_iter()
                .find(|s| s.uuid == subscriber.uuid)
        });
        let exists = stored.is_some();
        if let Some(stored) = stored {
            subscriber.disabled_at = stored.disabled_at;
            subscriber.disabled_reason = stored.disabled_reason;
            self.remove(subscriber.uuid);
            self.add(subscriber);
        }
        Box::pin(async move { Ok(exists) })
    }

    fn update_if_unchanged(
        &self,
        mut subscriber: Subscriber,
        seen: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Replace>> {
        // Found, compared and replaced under one write lock.
        let mut map = self.by_pattern.write().unwrap_or_else(|e| e.into_inner());
        let owner = subscriber.owner.clone();
        let stored = owner.as_ref().and_then(|_| {
            map.values_mut()
                .filter_map(|by_owner| by_owner.get_mut(&owner))
                .find_map(|list| {
                    let at = list.iter().position(|s| s.uuid == subscriber.uuid)?;
                    Some((list, at))
                })
        });
        let outcome = match stored {
            None => Replace::Missing,
            Some((list, at)) if list[at].updated_at != seen => {
                let _ = list;
                Replace::Stale
            }
            Some((list, at)) => {
                let old = list.remove(at);
                subscriber.disabled_at = old.disabled_at;
                subscriber.disabled_reason = old.disabled_reason;
                map.entry(subscriber.event.clone())
                    .or_default()
                    .entry(subscriber.owner.clone())
                    .or_default()
                    .push(subscriber);
                Replace::Done
            }
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
        let stored = self.owned_by(owner).into_iter().find(|s| s.uuid == uuid);
        let exists = stored.is_some();
        if let Some(mut s) = stored {
            if active {
                s.enable();
            } else if s.is_active() {
                s.disable(reason);
            }
            self.remove(uuid);
            self.add(s);
        }
        Box::pin(async move { Ok(exists) })
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        let exists = self.owned_by(owner).iter().any(|s| s.uuid == uuid);
        if exists {
            self.remove(uuid);
        }
        Box::pin(async move { Ok(exists) })
    }
}
