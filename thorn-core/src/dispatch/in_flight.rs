//! [`InFlight`]: counting the events a dispatcher has not finished, so a
//! program can wait for them before it exits.

use std::sync::{Arc, Mutex};

/// Counts the events a dispatcher has accepted and not yet finished
/// (queued, being delivered, or waiting to retry), so a program can wait
/// for them before it exits ([`Thorn::drain`](crate::Thorn::drain)). Dispatchers of your own
/// can use it too.
#[derive(Debug, Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    lock: Mutex<()>,
    idle: std::sync::Condvar,
    idle_async: tokio::sync::Notify,
}

/// One event counted by an [`InFlight`] until dropped.
#[derive(Debug)]
pub struct InFlightEntry(Arc<InFlight>);

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taking the lock orders this wake-up after a waiter's check.
            drop(self.0.lock.lock().unwrap_or_else(|e| e.into_inner()));
            self.0.idle.notify_all();
            self.0.idle_async.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts one more event until the returned entry is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightEntry {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlightEntry(self.clone())
    }

    /// Events accepted and not finished.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Blocks until no event is left or `timeout` passed; returns how many
    /// are left.
    pub fn wait(&self, timeout: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = self.count();
            if left == 0 {
                return 0;
            }
            guard = match deadline {
                // A timeout too large to add is "no deadline".
                None => self.idle.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return left;
                    }
                    self.idle
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Waits until no event is left or `timeout` passed; returns how many
    /// are left.
    pub async fn wait_async(&self, timeout: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let notified = self.idle_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return 0;
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.count();
                    }
                }
            }
        }
    }
}
