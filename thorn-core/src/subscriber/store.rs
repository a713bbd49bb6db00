//! The store traits: where subscriptions live and how their owners manage them.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SenderId, Subscriber};
use crate::Result;

/// A boxed, sendable future, as returned by [`SubscriberLookup`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where subscriptions are stored: a database table (thorn-diesel,
/// thorn-seaorm) or memory ([`MemoryStore`](super::MemoryStore)).
pub trait SubscriberLookup: Send + Sync + 'static {
    /// Every subscriber that should receive `event` sent by `sender`
    /// (pattern and owner rules applied).
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>>;

    /// The receiver answered `410 Gone`: the subscription should receive
    /// nothing more. Stores delete or disable it; the default does nothing.
    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        let _ = subscriber;
        Box::pin(async { Ok(()) })
    }
}

/// Subscriptions managed by their owners (the REST API): create, read,
/// update and delete, always scoped to one owner.
pub trait SubscriptionStore: SubscriberLookup {
    /// The owner's subscriptions, oldest first (ties by uuid).
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>>;
    /// One of the owner's subscriptions; `None` when it does not exist or
    /// belongs to someone else.
    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>>;
    /// Stores a new subscription.
    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>>;
    /// Replaces the settings of the owner's subscription with the same
    /// uuid; `false` when there is none. Its disabled state is left as
    /// stored (a worker may have just disabled it): change that with
    /// [`set_active`](Self::set_active).
    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>>;
    /// [`update`](Self::update), only if the subscription is still as it
    /// was read — its `updated_at` is `seen` — so a read-modify-write (the
    /// REST API's PATCH) loses no concurrent change: on
    /// [`Replace::Stale`], read it again, apply the change again, retry.
    ///
    /// The default reads, compares and writes in three steps, which leaves
    /// a window; Thorn's stores do it in one atomic step.
    fn update_if_unchanged(
        &self,
        subscriber: Subscriber,
        seen: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<Replace>> {
        Box::pin(async move {
            let Some(owner) = subscriber.owner.clone() else {
                return Ok(Replace::Missing);
            };
            match self.get(&owner, subscriber.uuid).await? {
                None => Ok(Replace::Missing),
                Some(stored) if stored.updated_at != seen => Ok(Replace::Stale),
                Some(_) if self.update(subscriber).await? => Ok(Replace::Done),
                Some(_) => Ok(Replace::Missing),
            }
        })
    }
    /// Deletes one of the owner's subscriptions; `false` when there is none.
    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>>;
    /// Pauses (`active == false`, saying `reason`) or resumes one of the
    /// owner's subscriptions; `false` when there is none. Pausing a
    /// disabled subscription keeps its reason; resuming forgives its
    /// failures so far.
    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
}

/// What [`SubscriptionStore::update_if_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replace {
    /// Replaced.
    Done,
    /// Changed since it was read: nothing written.
    Stale,
    /// The owner has no such subscription.
    Missing,
}
