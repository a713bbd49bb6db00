//! When a raised model event leaves: at once, after its transaction
//! commits, or through the outbox.
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
//! [`Webhooks::admit`](crate::Webhooks::admit) and
//! [`Webhooks::raise`](crate::Webhooks::raise) decide, in this one place,
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
//! after its statement ran ([`Webhooks::needs_transaction`](crate::Webhooks::needs_transaction)),
//! integrations that can run the statement and its events in a savepoint
//! of their own do so.
//!
//! What an integration does around one write in a managed transaction:
//!
//! ```
//! use thorn_core::transaction::{FrameKey, ManagedFrame, Parent, Scope};
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

use std::fmt;

use crate::dispatch::Outgoing;
use crate::outbox::StoredEvent;
use crate::{Error, Result, Thorn};

pub use crate::app::frames::{FrameKey, Parent, Route, Scope};

/// An open managed transaction or savepoint, from [`ManagedFrame::begin`].
///
/// The integration runs the transaction, then: just before COMMIT (or
/// RELEASE SAVEPOINT), writes the rows of [`ManagedFrame::before_commit`] through the
/// transaction's connection; after COMMIT succeeded, calls
/// [`ManagedFrame::committed`]. Dropping the frame without that — a
/// rollback, an error, a panic — discards every event raised inside it.
#[must_use = "dropping a frame discards its events, as a rollback does"]
pub struct ManagedFrame {
    thorn: Thorn,
    key: FrameKey,
    wrote_rows: bool,
    finished: bool,
}

impl fmt::Debug for ManagedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedFrame")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ManagedFrame {
    /// Opens the frame of a managed transaction or savepoint `key` of
    /// `thorn`: model events raised in it with [`Scope::Managed`] wait
    /// there until it commits.
    pub fn begin(thorn: &Thorn, key: FrameKey, parent: Parent) -> Self {
        thorn.frames().begin(key, parent);
        ManagedFrame {
            thorn: thorn.background(),
            key,
            wrote_rows: false,
            finished: false,
        }
    }

    /// The frame's key, for [`Scope::Managed`].
    pub fn key(&self) -> FrameKey {
        self.key
    }

    /// Call just before COMMIT (or RELEASE SAVEPOINT): the outbox rows to
    /// write now through the transaction's connection — every row of the
    /// frame when its parent is not a managed frame, none otherwise (the
    /// parent writes them at its own commit).
    ///
    /// Fails with [`Error::TransactionFailed`] when a write inside
    /// returned an error after its statement ran (an encode error with
    /// `propagate_errors`, say) and the caller carried on: committing would
    /// keep that row without its events. Roll back instead.
    pub fn before_commit(&mut self) -> Result<Vec<StoredEvent>> {
        let mut map = self.thorn.frames().lock();
        let Some(frame) = map.get_mut(&self.key) else {
            return Ok(Vec::new());
        };
        if let Some(reason) = &frame.failed {
            return Err(Error::TransactionFailed {
                reason: reason.clone(),
            });
        }
        if matches!(frame.parent, Parent::Managed(_)) {
            return Ok(Vec::new());
        }
        let rows = std::mem::take(&mut frame.rows);
        self.wrote_rows |= !rows.is_empty();
        Ok(rows)
    }

    /// The transaction committed (or the savepoint was released): the
    /// outermost frame hands its held events to the dispatcher and wakes
    /// this process's relay; a savepoint's frame joins its parent.
    pub fn committed(mut self) {
        self.finished = true;
        let frames = self.thorn.frames();
        let mut map = frames.lock();
        let Some(frame) = map.remove(&self.key) else {
            return;
        };
        if let Parent::Managed(parent) = frame.parent {
            match map.get_mut(&parent) {
                Some(p) => {
                    p.held.extend(frame.held);
                    p.rows.extend(frame.rows);
                    if p.failed.is_none() {
                        p.failed = frame.failed;
                    }
                }
                None => tracing::error!(
                    held = frame.held.len(),
                    rows = frame.rows.len(),
                    "a savepoint was released after its transaction ended: its webhook events are discarded"
                ),
            }
            return;
        }
        drop(map);
        if !frame.rows.is_empty() {
            // before_commit was not called: nothing wrote these rows.
            tracing::error!(
                events = frame.rows.len(),
                "outbox events of a committed transaction were never written"
            );
        }
        // Inside a transaction Thorn does not manage, nothing has committed yet.
        let wake = self.wrote_rows && !frame.detached;
        release(&self.thorn, frame.held, wake);
    }
}

impl Drop for ManagedFrame {
    fn drop(&mut self) {
        if !self.finished {
            let discarded = self.thorn.frames().lock().remove(&self.key);
            if let Some(f) = discarded
                && !(f.held.is_empty() && f.rows.is_empty())
            {
                tracing::debug!(
                    held = f.held.len(),
                    rows = f.rows.len(),
                    "transaction rolled back: its webhook events are discarded"
                );
            }
        }
    }
}

/// Hands committed events to the dispatcher and wakes the relay.
fn release(thorn: &Thorn, held: Vec<Outgoing>, wake: bool) {
    // Delivery runs in the background; its outcome is logged.
    thorn.dispatch_batch(held);
    if wake {
        thorn.outbox_signal().notify_one();
    }
}

/// What [`Webhooks::raise`](crate::Webhooks::raise) left for the
/// integration: outbox rows to write through the connection now, and
/// events to hand over once the write committed. Under
/// [`Scope::Managed`] both stay in the frame and this is empty.
#[derive(Debug, Default)]
#[must_use = "call `committed` once the write has committed, or the events are lost"]
pub struct Raised {
    rows: Vec<StoredEvent>,
    held: Vec<Outgoing>,
    /// The rows commit with the write ([`Scope::Own`]), so the relay can
    /// be woken after it.
    wake: bool,
}

impl Raised {
    /// Outbox rows to write through the write's connection, in its
    /// transaction, before it commits.
    pub fn rows(&self) -> &[StoredEvent] {
        &self.rows
    }

    /// True when nothing is left to write or send.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.held.is_empty()
    }

    /// The write committed (or, in a transaction Thorn does not manage,
    /// ran): hands the held events to the dispatcher, and wakes the relay
    /// when rows were written that are committed now.
    pub fn committed(self, thorn: &Thorn) {
        release(thorn, self.held, self.wake && !self.rows.is_empty());
    }
}

/// Refuses, before the write, an event that could not follow `scope`.
pub(crate) fn admit(
    thorn: &Thorn,
    model: &'static str,
    event: &str,
    route: Route,
    propagates: bool,
    scope: Scope,
) -> Result<()> {
    let unmanaged = || Error::UnmanagedTransaction {
        model,
        event: event.to_owned(),
    };
    let autocommit = || Error::Autocommit {
        model,
        event: event.to_owned(),
    };
    match scope {
        Scope::Own => Ok(()),
        Scope::Autocommit if route == Route::Outbox || propagates => Err(autocommit()),
        Scope::Autocommit => Ok(()),
        Scope::Unknown if route == Route::OnCommit => Err(unmanaged()),
        Scope::Unknown if route == Route::Outbox || propagates => Err(autocommit()),
        Scope::Unknown => Ok(()),
        Scope::Unmanaged if route == Route::OnCommit => Err(unmanaged()),
        Scope::Unmanaged => Ok(()),
        Scope::Managed(key) => match thorn.frames().detached(key) {
            None => Err(unmanaged()),
            Some(true) if route == Route::OnCommit => Err(unmanaged()),
            Some(_) => Ok(()),
        },
    }
}

/// Puts one prepared event where its route and scope say.
pub(crate) fn place(
    thorn: &Thorn,
    model: &'static str,
    route: Route,
    scope: Scope,
    outgoing: Outgoing,
    raised: &mut Raised,
) -> Result<()> {
    if route == Route::Immediate {
        drop(thorn.dispatch(outgoing));
        return Ok(());
    }
    let unmanaged = |outgoing: &Outgoing| Error::UnmanagedTransaction {
        model,
        event: outgoing.event.to_string(),
    };
    match scope {
        Scope::Managed(key) => {
            let mut map = thorn.frames().lock();
            let Some(frame) = map.get_mut(&key) else {
                return Err(unmanaged(&outgoing));
            };
            if route == Route::Outbox {
                frame.rows.push(StoredEvent::from_outgoing(outgoing)?);
            } else if frame.detached {
                return Err(unmanaged(&outgoing));
            } else {
                frame.held.push(outgoing);
            }
        }
        _ if route == Route::Outbox => {
            raised.rows.push(StoredEvent::from_outgoing(outgoing)?);
            raised.wake = scope == Scope::Own;
        }
        Scope::Unmanaged | Scope::Unknown => return Err(unmanaged(&outgoing)),
        Scope::Own | Scope::Autocommit => raised.held.push(outgoing),
    }
    Ok(())
}
