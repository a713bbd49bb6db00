//! For the authors of ORM integrations (what `thorn-diesel` and
//! `thorn-seaorm` use), not for applications.
//!
//! An integration:
//!
//! - runs the application's write, then raises the model's events with
//!   [`WebhooksExt::raise`] in the [`Scope`] the write ran in: inside a
//!   managed transaction ([`ManagedFrame`]) the events wait for its
//!   `COMMIT`, and with the outbox on they become [`StoredEvent`]s written
//!   through the caller's connection (below);
//! - stores subscriptions and outbox rows by lending Thorn a connection:
//!   [`sql::Database`] and [`sql::Connection`] are all it implements, and
//!   [`sql::SqlStore`] and [`sql::SqlOutbox`] hold every statement, for
//!   SQLite and PostgreSQL; `sql::conformance` (feature `conformance`)
//!   checks the result;
//! - applies Thorn's tables from [`schema::MIGRATIONS`];
//! - runs a relay over its outbox ([`run_relay`], or [`BackgroundRelay`]
//!   on threads of its own).
//!
//! ## When a raised model event leaves
//!
//! At once, after its transaction commits, or through the outbox.
//!
//! A model event that honours transactions (the default;
//! `honors_transaction = false` opts out, `THORN_SIGNAL_HONORS_TRANSACTION`
//! sets the default) leaves only after the database transaction it was
//! raised in has committed, and never when it rolls back. Where it waits is
//! its [`Route`]:
//!
//! | route | chosen by | what happens |
//! |---|---|---|
//! | [`Route::Immediate`] | `honors_transaction = false` | handed to the dispatcher as it is raised |
//! | [`Route::OnCommit`] | the default | held in memory with its transaction, handed to the dispatcher after COMMIT; a rollback discards it, a rolled-back savepoint discards what was raised inside it (Django's `transaction.on_commit`) |
//! | [`Route::Outbox`] | [`Config::outbox`](crate::Config::outbox) (`THORN_OUTBOX`) | a row of `thorn_events`, written through the caller's connection in its transaction, delivered by a relay or `thorn worker` once committed |
//!
//! Neither Diesel nor SeaORM tells anyone when a transaction commits, so
//! Thorn learns it from its own managed-transaction calls
//! (`thorn::diesel::transaction`, `thorn::seaorm::transaction`). Each opens
//! a frame ([`ManagedFrame::begin`]) that collects the events raised inside
//! it. A frame that ends in a rollback is discarded; a savepoint's frame
//! that is released joins its parent; the outermost frame writes its
//! outbox rows as one multi-row `INSERT` just before COMMIT and hands its
//! held events to the dispatcher after COMMIT succeeded.
//!
//! The ORM integrations say where a write runs with a [`Scope`], and
//! [`WebhooksExt::admit`] and [`WebhooksExt::raise`] decide, in this one place,
//! what happens to each event:
//!
//! | scope | immediate | on commit | outbox |
//! |---|---|---|---|
//! | [`Scope::Own`]: no transaction, the integration wraps the write in one of its own | sent now | after that COMMIT | written in it |
//! | [`Scope::Autocommit`]: no transaction, the statement has committed already | sent now | sent now (it committed) | refused before the write |
//! | [`Scope::Managed`]: a transaction or savepoint Thorn manages | sent now | held in its frame | held in its frame, written before COMMIT |
//! | [`Scope::Unmanaged`]: a transaction Thorn does not manage | sent now | refused before the write | written through at once |
//! | [`Scope::Unknown`]: a connection that may or may not be in a transaction | sent now | refused before the write | refused before the write |
//!
//! "Refused before the write" is an error returned before the statement
//! runs, so an `Err` never leaves a row committed without its event. An
//! event with `propagate_errors = true` is refused under
//! [`Scope::Autocommit`] and [`Scope::Unknown`] too: its errors could only
//! arrive after the row committed. Where an event could fail the write
//! after its statement ran ([`WebhooksExt::needs_transaction`]),
//! integrations that can run the statement and its events in a savepoint
//! of their own do so.
//!
//! What an integration does around one write in a managed transaction:
//!
//! ```
//! use thorn_core::integration::{FrameKey, ManagedFrame, Parent, Scope, WebhooksExt};
//! use thorn_core::{Config, DispatchOn, DispatcherKind, ModelEvent, Thorn, Webhooks};
//!
//! struct Note;
//! let webhooks = Webhooks::<Note>::new(
//!     "Note",
//!     vec![ModelEvent::new("on_create", "note.created", DispatchOn::Create)],
//! );
//! let thorn = Thorn::new(Config { dispatcher: DispatcherKind::Disabled, ..Config::default() })?;
//!
//! // BEGIN: a frame for the transaction (the key names the connection).
//! let mut frame = ManagedFrame::begin(&thorn, FrameKey::new(1, 1), Parent::Root);
//! let scope = Scope::Managed(frame.key());
//! webhooks.admit(&thorn, DispatchOn::Create, scope)?; // before the INSERT runs
//! // ... the INSERT runs ...
//! let raised = webhooks.raise(&thorn, DispatchOn::Create, [(&Note, None)], None, scope)?;
//! assert!(raised.is_empty()); // the event waits in the frame
//! raised.committed(&thorn);
//! let rows = frame.before_commit()?; // outbox rows to write now: none in memory
//! assert!(rows.is_empty());
//! // COMMIT succeeded: the held event goes to the dispatcher.
//! frame.committed();
//! # Ok::<(), thorn_core::Error>(())
//! ```
//!
//! This process's relay is woken once rows are committed: after the COMMIT
//! of a managed transaction or of the integration's own. Rows written
//! inside a transaction Thorn does not manage wake nobody early; the
//! relay's poll (or PostgreSQL's `NOTIFY`, sent at commit) finds them.

pub use crate::model::webhooks::WebhooksExt;
pub use crate::outbox::CHANNEL;
pub use crate::outbox::store::{
    AfterAttempt, Among, AttemptRecord, ClaimedDelivery, FanOut, NewDelivery, OutboxStore,
};
pub use crate::outbox::stored::{StoredEvent, StoredOptions, StoredRetry};
pub use crate::relay::{BackgroundRelay, RelayCounters, default_worker_name, run_relay};
pub use crate::schema::SUBSCRIBERS_CHANNEL;
pub use crate::transaction::{
    FrameKey, ManagedFrame, Parent, Raised, Route, SaveAt, Scope, ThornExt,
};

/// Thorn's SQL: every statement of the subscription store and the outbox,
/// over a connection the integration lends.
pub mod sql {
    #[cfg(feature = "conformance")]
    pub use crate::sql::conformance;
    pub use crate::sql::outbox::write_events;
    pub use crate::sql::{
        Connection, Database, Dialect, Kind, Listener, Notice, OnNotice, Param, Row, SqlOutbox,
        SqlStore, Value, Work, cache_watching, ready, waking,
    };
}

/// Thorn's tables: the migrations that create them and the rows of
/// `thorn_subscribers`.
pub mod schema {
    pub use crate::schema::{
        LATEST, MIGRATIONS, MIGRATIONS_TABLE, SubscriberRecord, SubscriberStatus, corrupt,
        owner_key,
    };
}
