//! Dispatchers decide what sending an event does.
//!
//! - [`InProcessDispatcher`] (the default) delivers from this process, in
//!   the background, through one pooled HTTP client: deliveries are grouped
//!   by scheme, host and port so connections are reused, the number in
//!   flight is bounded overall and per host, and failed attempts are
//!   retried by the event's [`RetryPolicy`](crate::RetryPolicy) with the same `Hook-Delivery`.
//!   `send` returns at once with a [`SendHandle`]; nothing blocks the
//!   caller's thread or database transaction.
//! - [`DisabledDispatcher`] sends nothing.
//!
//! Applications can plug their own by implementing [`Dispatcher`].

use crate::subscriber::Directory;

mod handle;
mod in_flight;
mod in_process;
mod outgoing;

pub use handle::{OutcomeReporter, SendHandle};
pub use in_flight::{InFlight, InFlightEntry};
pub use in_process::InProcessDispatcher;
pub use outgoing::OutgoingEvent;
pub(crate) use outgoing::{Message, ModelMessage};

/// What `send` does with an event.
pub trait Dispatcher: Send + Sync + 'static {
    /// Starts delivering `outgoing`; returns at once.
    fn dispatch(&self, subscribers: &Directory, outgoing: OutgoingEvent) -> SendHandle;

    /// The events this dispatcher has accepted and not finished, for
    /// [`Thorn::drain`](crate::Thorn::drain); `None` when it keeps no work of its own in the
    /// background.
    fn in_flight(&self) -> Option<&InFlight> {
        None
    }

    /// Starts delivering every event of `batch` (those of one committed
    /// transaction), when nobody waits for their outcomes. The default
    /// dispatches them one by one; a dispatcher with a queue can hand the
    /// batch over at once.
    fn dispatch_batch(&self, subscribers: &Directory, batch: Vec<OutgoingEvent>) {
        for outgoing in batch {
            drop(self.dispatch(subscribers, outgoing));
        }
    }
}

/// Sends nothing (`THORN_DISPATCHER=disabled`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DisabledDispatcher;

impl Dispatcher for DisabledDispatcher {
    fn dispatch(&self, _subscribers: &Directory, outgoing: OutgoingEvent) -> SendHandle {
        tracing::debug!(event = %outgoing.event, "dispatcher disabled: event not sent");
        SendHandle::none()
    }
}
