//! A relay on a thread of its own.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use super::{RelayCounters, RelayOptions, RelayStats, run_relay};
use crate::outbox::OutboxStore;
use crate::{Error, Result, Thorn};

/// A relay on a background thread with its own runtime: what the ORM
/// integrations start in-process. Dropping it stops it (see
/// [`BackgroundRelay::stop`]).
#[derive(Debug)]
pub struct BackgroundRelay {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    counters: Arc<RelayCounters>,
    wake: Arc<Notify>,
}

impl BackgroundRelay {
    /// Starts `run_relay` on a thread named `thorn-relay`.
    pub fn start(
        thorn: Thorn,
        store: Arc<dyn OutboxStore>,
        options: RelayOptions,
        wake: Arc<Notify>,
    ) -> Result<Self> {
        options.check(thorn.config())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("thorn-relay")
            .enable_all()
            .build()
            .map_err(|e| Error::Start {
                what: "the relay runtime",
                source: Box::new(e),
            })?;
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(RelayCounters::default());
        let (c, w) = (counters.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("thorn-relay".into())
            .spawn(move || runtime.block_on(run_relay(thorn, store, options, w, stopped, c)))
            .map_err(|e| Error::Config {
                key: "relay thread".into(),
                message: e.to_string(),
            })?;
        Ok(BackgroundRelay {
            stop,
            thread: Some(thread),
            counters,
            wake,
        })
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Wakes the relay now (new events were committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops claiming, waits for deliveries in flight to finish and be
    /// recorded, and returns the relay's error if it stopped on one.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::Panicked {
                    what: "the relay thread",
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundRelay {
    fn drop(&mut self) {
        if let Err(error) = self.halt() {
            tracing::error!(%error, "outbox relay stopped with an error");
        }
    }
}
