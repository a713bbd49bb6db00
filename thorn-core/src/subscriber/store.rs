//! The store traits: where subscriptions live and how their owners manage them.

use std::future::Future;
use std::pin::Pin;

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
