//! Managed-transaction frames, and where a raised model event goes in
//! each [`Scope`]; documented for integrations in [`crate::integration`].

use std::any::Any;
use std::fmt;

use crate::dispatch::OutgoingEvent;
use crate::outbox::StoredEvent;
use crate::{Error, Result, Thorn};

pub use crate::app::frames::{FrameKey, Parent, Route, SaveAt, Scope};

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
fn release(thorn: &Thorn, held: Vec<OutgoingEvent>, wake: bool) {
    // Delivery runs in the background; its outcome is logged.
    thorn.dispatch_batch(held);
    if wake {
        thorn.outbox_written().notify_one();
    }
}

/// What [`WebhooksExt::raise`](crate::integration::WebhooksExt::raise) left for the
/// integration: outbox rows to write through the connection now, and
/// events to hand over once the write committed. Under
/// [`Scope::Managed`] both stay in the frame and this is empty.
#[derive(Debug, Default)]
#[must_use = "call `committed` once the write has committed, or the events are lost"]
pub struct Raised {
    rows: Vec<StoredEvent>,
    held: Vec<OutgoingEvent>,
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
    outgoing: OutgoingEvent,
    raised: &mut Raised,
) -> Result<()> {
    if route == Route::Immediate {
        drop(thorn.dispatch(outgoing));
        return Ok(());
    }
    let unmanaged = |outgoing: &OutgoingEvent| Error::UnmanagedTransaction {
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

/// What an ORM integration asks a [`Thorn`] about transactions: where a
/// model event goes, and which managed frame a write joins. Implemented
/// for [`Thorn`]; applications do not call it.
pub trait ThornExt {
    /// Where a model event goes when raised: [`Route::Immediate`] unless
    /// it `honors_transaction`, then [`Route::Outbox`] with
    /// [`Config::outbox`](crate::Config::outbox) and [`Route::OnCommit`]
    /// without.
    fn route(&self, honors_transaction: bool) -> Route;

    /// The scope of a write on a connection whose innermost transaction
    /// is `key` (for integrations that know their transaction depth, as
    /// Diesel does): [`Scope::Managed`] when `key` is an open frame,
    /// [`Scope::Own`] when it marks a test transaction ([`Parent::Test`]),
    /// [`Scope::Unmanaged`] otherwise.
    fn scope_at(&self, key: FrameKey) -> Scope;

    /// The frame a write through the managed transaction `key` joins: the
    /// innermost savepoint of it that is open (writes through an outer
    /// handle run inside it), or `key` itself; `None` when `key` is not
    /// managed.
    fn managed_frame(&self, key: FrameKey) -> Option<FrameKey>;

    /// Signalled each time this process writes an event to the outbox, so
    /// an in-process relay wakes without waiting for its next poll. Notify
    /// it after committing outbox rows written outside a managed frame.
    fn outbox_signal(&self) -> &std::sync::Arc<tokio::sync::Notify>;

    /// Where the hooks of one save on the connection (or transaction
    /// object) at address `connection` meet: the managed frame it writes
    /// in, else the connection itself with the running task.
    fn save_at(&self, connection: FrameKey) -> SaveAt;

    /// For ORMs that split a save in two hooks, one before its statement
    /// and one after (SeaORM's `before_save` / `after_save`): keeps the
    /// row as it was for the second hook of the same save. Inside a
    /// managed frame it waits in the frame and is gone when the frame
    /// ends; elsewhere it waits with the connection and the running task.
    fn hold_old_row<R: Any + Send>(&self, at: SaveAt, row: R);

    /// Takes the row of type `R` held at `at` (by the running task, when
    /// outside a frame) for which `matches` is true: the old row of the
    /// same save, found by its typed key.
    fn take_old_row<R: Any + Send>(&self, at: SaveAt, matches: impl Fn(&R) -> bool) -> Option<R>;
}

impl ThornExt for Thorn {
    fn route(&self, honors_transaction: bool) -> Route {
        match (honors_transaction, self.config().outbox) {
            (false, _) => Route::Immediate,
            (true, true) => Route::Outbox,
            (true, false) => Route::OnCommit,
        }
    }

    fn scope_at(&self, key: FrameKey) -> Scope {
        self.frames().scope_at(key)
    }

    fn managed_frame(&self, key: FrameKey) -> Option<FrameKey> {
        self.frames().innermost(key)
    }

    fn outbox_signal(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        self.outbox_written()
    }

    fn save_at(&self, connection: FrameKey) -> SaveAt {
        match self.frames().innermost(connection) {
            Some(frame) => SaveAt::Frame(frame),
            None => SaveAt::Connection(connection.connection()),
        }
    }

    fn hold_old_row<R: Any + Send>(&self, at: SaveAt, row: R) {
        self.frames().hold_old_row(at, Box::new(row));
    }

    fn take_old_row<R: Any + Send>(&self, at: SaveAt, matches: impl Fn(&R) -> bool) -> Option<R> {
        let row = self.frames().take_old_row(at, &mut |row| {
            (row as &dyn Any).downcast_ref::<R>().is_some_and(&matches)
        })?;
        (row as Box<dyn Any>).downcast::<R>().ok().map(|row| *row)
    }
}
