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

/// Reports the outcomes of one send to its [`SendHandle`] (see
/// [`SendHandle::channel`]). Dropped without reporting, the handle's
/// waiter gets [`Error::DispatcherClosed`].
#[derive(Debug)]
pub struct OutcomeReporter(oneshot::Sender<Result<Vec<DeliveryOutcome>>>);

impl OutcomeReporter {
    /// Hands `outcomes` to whoever waits on the handle (nobody, if it was
    /// dropped: that is fine).
    pub fn report(self, outcomes: Result<Vec<DeliveryOutcome>>) {
        let _ = self.0.send(outcomes);
    }
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

    /// A handle whose outcomes a dispatcher of your own reports later,
    /// through the [`OutcomeReporter`].
    ///
    /// ```
    /// use thorn_core::SendHandle;
    ///
    /// let (reporter, handle) = SendHandle::channel();
    /// reporter.report(Ok(Vec::new()));
    /// assert!(handle.wait().unwrap().is_empty());
    ///
    /// let (reporter, handle) = SendHandle::channel();
    /// drop(reporter); // never reported
    /// assert!(matches!(handle.wait(), Err(thorn_core::Error::DispatcherClosed)));
    /// ```
    pub fn channel() -> (OutcomeReporter, SendHandle) {
        let (tx, rx) = oneshot::channel();
        (OutcomeReporter(tx), SendHandle::from_receiver(rx))
    }

    /// A handle on outcomes a dispatcher will send through `rx`.
    pub(crate) fn from_receiver(rx: oneshot::Receiver<Result<Vec<DeliveryOutcome>>>) -> Self {
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
