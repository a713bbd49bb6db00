//! What a subscription's owner reads and does with its deliveries:
//! [`DeliveryLog`], the REST API's view of the outbox.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Result;
use crate::outbox::{DeliveryHistory, DeliveryInfo, DeliveryState, StoredEvent};
use crate::subscriber::{BoxFuture, Subscriber};

/// The deliveries of one subscription, as its owner sees and replays
/// them: what the REST API's delivery routes serve.
///
/// Every method is scoped by the subscription's uuid: a delivery of
/// another subscription is "not found", so a caller that checked who owns
/// the subscription cannot reach anybody else's deliveries. The outbox of
/// either ORM integration is one (`thorn::diesel::DieselOutbox::delivery_log`,
/// `thorn::seaorm::SeaOrmOutbox`); give it to
/// [`ThornBuilder::delivery_log`](crate::ThornBuilder::delivery_log).
pub trait DeliveryLog: Send + Sync + 'static {
    /// A page of `subscription`'s deliveries, newest first.
    fn deliveries_of(
        &self,
        subscription: Uuid,
        page: DeliveryPage,
    ) -> BoxFuture<'_, Result<Vec<DeliveryInfo>>>;

    /// Delivery `id` of `subscription` with every attempt, oldest first;
    /// `None` when `subscription` has no such delivery.
    fn delivery_of(
        &self,
        subscription: Uuid,
        id: Uuid,
    ) -> BoxFuture<'_, Result<Option<DeliveryHistory>>>;

    /// Sends delivery `id` of `subscription` again, due at once, with the
    /// same id (its `Hook-Delivery`: receivers de-duplicate by it),
    /// whatever its state.
    fn redeliver(&self, subscription: Uuid, id: Uuid) -> BoxFuture<'_, Result<Redelivery>>;

    /// Sends again, with their ids, `subscription`'s dead deliveries
    /// created in `since..until` (`until`: now when `None`); returns them.
    fn recover_since(
        &self,
        subscription: Uuid,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<Uuid>>>;

    /// Writes `event` with one delivery, to `subscription` only (a stored
    /// subscription, sent as it is at send time), due at once: a test
    /// send. Returns the delivery's id.
    fn send_to(&self, subscription: &Subscriber, event: StoredEvent)
    -> BoxFuture<'_, Result<Uuid>>;
}

/// Which page of a delivery log: [`DeliveryPage::newest`] and its
/// refinements.
///
/// ```
/// use thorn_core::outbox::{DeliveryPage, DeliveryState};
///
/// let page = DeliveryPage::newest(25).in_state(DeliveryState::Dead);
/// assert_eq!(page.limit, 25);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryPage {
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// Only deliveries older than this one (the last of the previous page).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: usize,
}

impl DeliveryPage {
    /// The `limit` newest deliveries.
    pub fn newest(limit: usize) -> Self {
        DeliveryPage {
            state: None,
            before: None,
            limit,
        }
    }

    /// Only those in `state`.
    pub fn in_state(mut self, state: DeliveryState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only those older than delivery `id`: the page after the one `id`
    /// ended.
    pub fn before(mut self, id: Uuid) -> Self {
        self.before = Some(id);
        self
    }
}

/// What [`DeliveryLog::redeliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redelivery {
    /// Due at once, with the same id.
    Scheduled,
    /// A worker is sending it right now: nothing changed.
    Busy,
    /// The subscription has no such delivery.
    NotFound,
}
