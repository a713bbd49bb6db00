//! [`SendHandle`]: the handle `send` returns, to await the outcomes of
//! its deliveries.

use tokio::sync::oneshot;

use crate::delivery::DeliveryOutcome;
use crate::{Error, Result};

type OutcomesRx = oneshot::Receiver<Result<Vec<DeliveryOutcome>>>;

#[derive(Debug)]
enum Pending {
    Done,
    Running(OutcomesRx),
    /// Held in a buffer; the dispatcher's handle arrives at flush.
    Buffered(oneshot::Receiver<SendHandle>),
}

/// A handle on a dispatched event: wait for it to learn what each
/// subscriber finally answered. Dropping it does not cancel anything.
#[derive(Debug)]
#[must_use = "dropping the handle is fine, but then nobody learns whether delivery worked"]
pub struct SendHandle {
    pending: Pending,
}

impl SendHandle {
    /// A handle that is already finished with no deliveries.
    pub fn none() -> Self {
        SendHandle {
            pending: Pending::Done,
        }
    }

    /// A handle on outcomes a dispatcher will send through `rx`.
    pub fn from_receiver(rx: oneshot::Receiver<Result<Vec<DeliveryOutcome>>>) -> Self {
        SendHandle {
            pending: Pending::Running(rx),
        }
    }

    pub(crate) fn buffered(rx: oneshot::Receiver<SendHandle>) -> Self {
        SendHandle {
            pending: Pending::Buffered(rx),
        }
    }

    /// Waits for every delivery of the event, retries included (async).
    ///
    /// Fails only when the subscribers could not be looked up or the
    /// dispatcher shut down; failed deliveries are in the outcomes.
    pub async fn outcomes(self) -> Result<Vec<DeliveryOutcome>> {
        let mut pending = self.pending;
        loop {
            pending = match pending {
                Pending::Done => return Ok(Vec::new()),
                Pending::Running(rx) => return rx.await.unwrap_or(Err(Error::DispatcherClosed)),
                Pending::Buffered(rx) => match rx.await {
                    Ok(next) => next.pending,
                    Err(_) => return Err(Error::DispatcherClosed),
                },
            }
        }
    }

    /// Waits for every delivery of the event, blocking the thread.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime; use [`SendHandle::outcomes`]
    /// there.
    pub fn wait(self) -> Result<Vec<DeliveryOutcome>> {
        let mut pending = self.pending;
        loop {
            pending = match pending {
                Pending::Done => return Ok(Vec::new()),
                Pending::Running(rx) => {
                    return rx.blocking_recv().unwrap_or(Err(Error::DispatcherClosed));
                }
                Pending::Buffered(rx) => match rx.blocking_recv() {
                    Ok(next) => next.pending,
                    Err(_) => return Err(Error::DispatcherClosed),
                },
            }
        }
    }
}
