//! The transactional outbox in SeaORM: events written through the caller's
//! connection or transaction, and the relay that delivers them once
//! committed.
//!
//! With the outbox on (`THORN_OUTBOX=true`, [`Config::outbox`](thorn_core::Config::outbox)),
//! each model event that honours the transaction is written to
//! `thorn_events` through the transaction the hook was given
//! ([`write_events`]): inside [`thorn_core::integration`] / [`crate::begin`]
//! as one multi-row `INSERT` just before `COMMIT`, inside a transaction
//! of SeaORM's own right after the statement. A save on a bare
//! `DatabaseConnection` is refused: its row would commit before its event
//! is written.
//!
//! A [`Relay`] delivers committed events from this process, on the
//! caller's tokio runtime: on PostgreSQL a `LISTEN thorn_outbox`
//! connection wakes it at commit, this process's own writes wake it on
//! any database, and it polls as a backstop so events written by other
//! processes are delivered too. On PostgreSQL any number of relays and
//! `thorn worker` processes (Diesel or SeaORM) can share the tables:
//! claims use `FOR UPDATE SKIP LOCKED` and leases.
//!
//! ```no_run
//! use thorn_core::{Config, Thorn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db = sea_orm::Database::connect("sqlite://app.sqlite3?mode=rwc").await?;
//! thorn_seaorm::migrate(&db).await?;
//! let config = Config { outbox: true, ..Config::from_env()? };
//! let thorn = Thorn::new(config)?;
//! let relay = thorn_seaorm::outbox::Relay::start(&thorn, db.clone()).await?;
//! // ... saves through ActiveModels, inside thorn_seaorm::transaction ...
//! relay.stop().await?; // finishes deliveries in flight
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use thorn_core::integration::ThornExt;
use thorn_core::integration::sql::{Database, Listener, SqlOutbox, waking};
use thorn_core::integration::{CHANNEL, StoredEvent};
use thorn_core::integration::{RelayCounters, run_relay};
use thorn_core::{Error, Result, Thorn};
use thorn_core::{RelayOptions, RelayStats};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::sql::{SeaConn, SeaOrmDb};

pub use thorn_core::outbox::{AttemptInfo, DeliveryHistory, DeliveryInfo, OutboxCounts};

/// The outbox tables through a SeaORM connection: Thorn's [`SqlOutbox`]
/// on a `DatabaseConnection`, made with `SeaOrmOutbox::new(db)` — the
/// store a relay or worker claims from, and what operators inspect
/// (counts, deliveries, retries, replays).
pub type SeaOrmOutbox = SqlOutbox<SeaOrmDb>;

/// Inserts `events` into `thorn_events` through `db` — a connection, or a
/// transaction so the events commit and roll back with the caller's rows —
/// in multi-row statements.
///
/// Call `thorn.outbox_signal().notify_one()` once committed to wake this
/// process's relay at once. A missing table is
/// [`thorn_core::Error::OutboxMissing`].
pub async fn write_events<C: ConnectionTrait>(db: &C, events: &[StoredEvent]) -> Result<()> {
    thorn_core::integration::sql::write_events(
        &mut SeaConn(db),
        events,
        "thorn::seaorm::migrate(&db)",
    )
    .await
}

/// Delivers committed outbox events from this process, as tasks on the
/// tokio runtime that started it.
///
/// [`Relay::stop`] stops claiming and waits for the deliveries in flight
/// to finish and be recorded. Dropping the relay stops it too, without
/// waiting: deliveries in flight finish in the background (as long as the
/// runtime runs).
#[derive(Debug)]
pub struct Relay {
    stop: watch::Sender<bool>,
    relay: Option<JoinHandle<Result<()>>>,
    listener: Option<Listener>,
    counters: Arc<RelayCounters>,
}

impl Relay {
    /// Starts a relay over `db` with default [`RelayOptions`] and
    /// `thorn`'s configuration and subscribers. Call it from within a
    /// tokio runtime, which runs the relay.
    pub async fn start(thorn: &Thorn, db: DatabaseConnection) -> Result<Self> {
        Self::start_with(thorn, db, RelayOptions::default()).await
    }

    /// [`Relay::start`] with options.
    ///
    /// On PostgreSQL the relay holds one connection of `db`'s pool for
    /// `LISTEN thorn_outbox`, established before this returns when the
    /// database is reachable (else the listener retries each second while
    /// the relay polls).
    pub async fn start_with(
        thorn: &Thorn,
        db: DatabaseConnection,
        options: RelayOptions,
    ) -> Result<Self> {
        let store = SeaOrmOutbox::new(db.clone()).disable_failing_after(options.disable_after);
        options.check(thorn.config())?;
        store.check_schema("thorn::seaorm::migrate(&db)").await?;
        let wake = thorn.outbox_signal().clone();
        let listener = store.database().listen(CHANNEL, waking(&wake));
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(RelayCounters::default());
        let run = run_relay(
            thorn.clone(),
            Arc::new(store),
            options,
            wake,
            stopped,
            counters.clone(),
        );
        // Logged here too: a relay dropped without `stop` would lose it.
        let relay = tokio::spawn(async move {
            let result = run.await;
            if let Err(error) = &result {
                tracing::error!(%error, "outbox relay stopped");
            }
            result
        });
        Ok(Relay {
            stop,
            relay: Some(relay),
            listener,
            counters,
        })
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops claiming, lets deliveries in flight finish and be recorded,
    /// and returns the relay's error if it stopped on one.
    pub async fn stop(mut self) -> Result<()> {
        self.signal_stop();
        match self.relay.take() {
            Some(relay) => relay.await.unwrap_or_else(|_| {
                Err(Error::Panicked {
                    what: "the relay task",
                })
            }),
            None => Ok(()),
        }
    }

    /// Tells the relay to stop claiming and ends the listener.
    fn signal_stop(&mut self) {
        let _ = self.stop.send(true);
        drop(self.listener.take());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.signal_stop();
    }
}
