//! The open managed transactions and savepoints of one [`Thorn`](crate::Thorn), and the
//! events each holds until it commits. The integrations drive them through
//! [`crate::integration`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Error;
use crate::dispatch::OutgoingEvent;
use crate::outbox::StoredEvent;

/// Where a raised model event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the dispatcher as it is raised (`honors_transaction = false`).
    Immediate,
    /// Held in memory until its transaction commits, then to the
    /// dispatcher; discarded on rollback.
    OnCommit,
    /// Written to the outbox table in the caller's transaction.
    Outbox,
}

/// One managed transaction or savepoint. The ORM integration chooses it:
/// the identity of the connection (or transaction object) and a level
/// within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameKey {
    connection: usize,
    level: usize,
}

impl FrameKey {
    /// The frame of `connection` (an address that stays the same while the
    /// transaction runs) at nesting `level`.
    pub fn new(connection: usize, level: usize) -> Self {
        FrameKey { connection, level }
    }

    /// The connection's address.
    pub(crate) fn connection(self) -> usize {
        self.connection
    }
}

/// Where a write runs, as the ORM integration sees it when it raises the
/// write's events (see [`crate::integration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Outside any transaction; the integration runs the write in a short
    /// transaction of its own and calls [`Raised::committed`](crate::transaction::Raised::committed) after its
    /// COMMIT.
    Own,
    /// Outside any transaction, on a connection that has committed the
    /// statement by the time its events are raised.
    Autocommit,
    /// Inside the managed transaction or savepoint `FrameKey`.
    Managed(FrameKey),
    /// Inside a transaction or savepoint Thorn does not manage.
    Unmanaged,
    /// On a connection the integration cannot place: it may commit each
    /// statement on its own, or be a transaction that will roll back.
    Unknown,
}

/// Where a managed transaction sits, given to [`ManagedFrame::begin`](crate::transaction::ManagedFrame::begin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// None: its COMMIT is the real one.
    Root,
    /// A savepoint of this managed frame: on release, its events join it.
    Managed(FrameKey),
    /// A savepoint inside a transaction Thorn does not manage: its outbox
    /// rows are written at release (the database keeps their rollback
    /// semantics), and events held in memory are refused.
    Unmanaged,
    /// Not a transaction's frame but a test transaction's marker (Diesel's
    /// `begin_test_transaction`, which never commits): writes directly in
    /// it behave as if they committed on their own ([`Scope::Own`]), and
    /// transactions opened in it as outermost ones. See [`ThornExt::scope_at`](crate::integration::ThornExt::scope_at).
    Test,
}

impl Parent {
    /// Where a transaction (or savepoint) begun in `scope` sits: outermost
    /// outside any transaction, a savepoint of the managed frame it is
    /// begun in, or detached inside one Thorn does not manage (or cannot
    /// place).
    pub fn enclosing(scope: Scope) -> Parent {
        match scope {
            Scope::Own | Scope::Autocommit => Parent::Root,
            Scope::Managed(key) => Parent::Managed(key),
            Scope::Unmanaged | Scope::Unknown => Parent::Unmanaged,
        }
    }
}

pub(crate) struct Frame {
    pub(crate) parent: Parent,
    /// Some ancestor is a transaction Thorn does not manage.
    pub(crate) detached: bool,
    pub(crate) held: Vec<OutgoingEvent>,
    pub(crate) rows: Vec<StoredEvent>,
    /// A write inside failed after its statement ran: why.
    pub(crate) failed: Option<String>,
    /// Old rows of saves split in two hooks, waiting for the second one
    /// ([`SaveAt::Frame`]); they leave with the frame.
    pub(crate) old_rows: Vec<Box<dyn Any + Send>>,
}

/// The open frames of one [`Thorn`](crate::Thorn): a few at a time (one per open
/// managed transaction or savepoint), so a list beats a hash map.
#[derive(Default)]
pub(crate) struct Frames {
    map: Mutex<FrameList>,
    loose: Mutex<LooseRows>,
}

/// Where the two halves of a save that an ORM splits in two hooks (one
/// before its statement, one after, as SeaORM's `before_save` and
/// `after_save`) leave the row as it was for each other: see
/// [`ThornExt::hold_old_row`](crate::integration::ThornExt::hold_old_row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveAt {
    /// Inside this managed transaction or savepoint: the row waits in its
    /// frame and leaves with it (a save that fails between its hooks
    /// leaves nothing behind once the transaction ends).
    Frame(FrameKey),
    /// Outside any managed frame, on the connection at this address: the
    /// row waits with the task (or thread) running the save.
    Connection(usize),
}

/// The task (or, outside a runtime, the thread) running a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Runner {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Runner {
    fn current() -> Runner {
        tokio::task::try_id()
            .map(Runner::Task)
            .unwrap_or_else(|| Runner::Thread(std::thread::current().id()))
    }
}

/// Old rows of saves outside managed frames, per connection and task.
/// An entry leaves when the save's second hook takes it; one whose save
/// failed between its hooks is swept after [`LOOSE_TTL`] (never sooner,
/// however many saves are in flight).
#[derive(Default)]
struct LooseRows {
    rows: HashMap<(usize, Runner), Vec<Held>>,
    held: usize,
    sweep_at: usize,
}

/// An old row and when it was held.
type Held = (Instant, Box<dyn Any + Send>);

/// How long the old row of a save that failed between its hooks is kept.
const LOOSE_TTL: Duration = Duration::from_secs(600);

impl LooseRows {
    fn hold(&mut self, key: (usize, Runner), row: Box<dyn Any + Send>) {
        if self.held >= self.sweep_at.max(1024) {
            self.rows.retain(|_, rows| {
                rows.retain(|(at, _)| at.elapsed() < LOOSE_TTL);
                !rows.is_empty()
            });
            self.held = self.rows.values().map(Vec::len).sum();
            self.sweep_at = self.held * 2;
        }
        self.rows
            .entry(key)
            .or_default()
            .push((Instant::now(), row));
        self.held += 1;
    }

    fn take(
        &mut self,
        key: (usize, Runner),
        matches: &mut dyn FnMut(&(dyn Any + Send)) -> bool,
    ) -> Option<Box<dyn Any + Send>> {
        let rows = self.rows.get_mut(&key)?;
        let i = rows.iter().position(|(_, row)| matches(row.as_ref()))?;
        let (_, row) = rows.swap_remove(i);
        if rows.is_empty() {
            self.rows.remove(&key);
        }
        self.held -= 1;
        Some(row)
    }
}

#[derive(Default)]
pub(crate) struct FrameList(Vec<(FrameKey, Frame)>);

impl FrameList {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn get(&self, key: &FrameKey) -> Option<&Frame> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, f)| f)
    }

    pub(crate) fn get_mut(&mut self, key: &FrameKey) -> Option<&mut Frame> {
        self.0
            .iter_mut()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f)
    }

    pub(crate) fn insert(&mut self, key: FrameKey, frame: Frame) -> Option<Frame> {
        let old = self.remove(&key);
        self.0.push((key, frame));
        old
    }

    pub(crate) fn remove(&mut self, key: &FrameKey) -> Option<Frame> {
        let i = self.0.iter().rposition(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }
}

impl fmt::Debug for Frames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames")
            .field("open", &self.lock().len())
            .finish()
    }
}

impl Frames {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FrameList> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn begin(&self, key: FrameKey, parent: Parent) {
        let mut map = self.lock();
        let detached = match parent {
            Parent::Root | Parent::Test => false,
            Parent::Unmanaged => true,
            Parent::Managed(p) => map.get(&p).is_none_or(|f| f.detached),
        };
        let frame = Frame {
            parent,
            detached,
            held: Vec::new(),
            rows: Vec::new(),
            failed: None,
            old_rows: Vec::new(),
        };
        if map.insert(key, frame).is_some() {
            tracing::error!(
                ?key,
                "a managed transaction frame was opened twice; the older one's events are discarded"
            );
        }
    }

    /// The scope of a write at `key`: see [`ThornExt::scope_at`](crate::integration::ThornExt::scope_at).
    pub(crate) fn scope_at(&self, key: FrameKey) -> Scope {
        match self.lock().get(&key) {
            Some(f) if f.parent == Parent::Test => Scope::Own,
            Some(_) => Scope::Managed(key),
            None => Scope::Unmanaged,
        }
    }

    /// `Some(detached)` when `key` is open.
    pub(crate) fn detached(&self, key: FrameKey) -> Option<bool> {
        self.lock().get(&key).map(|f| f.detached)
    }

    /// Marks `key`: a write inside it returned an error after its
    /// statement ran, so it must not commit.
    pub(crate) fn fail(&self, key: FrameKey, error: &Error) {
        if let Some(frame) = self.lock().get_mut(&key) {
            frame.failed.get_or_insert_with(|| error.to_string());
        }
    }

    /// The innermost open frame at or below `key`: writes through a
    /// transaction handle while a savepoint of it is open run inside that
    /// savepoint. `None` when `key` is not open.
    pub(crate) fn innermost(&self, key: FrameKey) -> Option<FrameKey> {
        let list = self.lock();
        list.get(&key)?;
        let mut at = key;
        while let Some((child, _)) = list.0.iter().find(|(_, f)| f.parent == Parent::Managed(at)) {
            at = *child;
        }
        Some(at)
    }

    /// Keeps `row` at `at` for the second hook of the same save.
    pub(crate) fn hold_old_row(&self, at: SaveAt, row: Box<dyn Any + Send>) {
        match at {
            SaveAt::Frame(key) => {
                if let Some(frame) = self.lock().get_mut(&key) {
                    frame.old_rows.push(row);
                }
            }
            SaveAt::Connection(connection) => self
                .loose
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hold((connection, Runner::current()), row),
        }
    }

    /// Takes the first row held at `at` that `matches`.
    pub(crate) fn take_old_row(
        &self,
        at: SaveAt,
        matches: &mut dyn FnMut(&(dyn Any + Send)) -> bool,
    ) -> Option<Box<dyn Any + Send>> {
        match at {
            SaveAt::Frame(key) => {
                let mut list = self.lock();
                let rows = &mut list.get_mut(&key)?.old_rows;
                let i = rows.iter().position(|row| matches(row.as_ref()))?;
                Some(rows.swap_remove(i))
            }
            SaveAt::Connection(connection) => self
                .loose
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take((connection, Runner::current()), matches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_in_flight_keep_their_old_rows_however_many() {
        let frames = Frames::default();
        // Far past the sweep threshold: none is old enough to sweep.
        for connection in 0..20_000 {
            frames.hold_old_row(SaveAt::Connection(connection), Box::new(connection));
        }
        for connection in (0..20_000).rev() {
            let row = frames
                .take_old_row(SaveAt::Connection(connection), &mut |r| {
                    r.downcast_ref::<usize>() == Some(&connection)
                })
                .unwrap_or_else(|| panic!("the row of save {connection} is there"));
            assert_eq!(row.downcast_ref::<usize>(), Some(&connection));
        }
        assert_eq!(frames.loose.lock().unwrap().held, 0);
    }

    #[test]
    fn a_frames_old_rows_leave_with_it() {
        let frames = Frames::default();
        let key = FrameKey::new(7, 1);
        frames.begin(key, Parent::Root);
        frames.hold_old_row(SaveAt::Frame(key), Box::new(1u8));
        frames.hold_old_row(SaveAt::Frame(key), Box::new(2u8));
        let mut is_two = |r: &(dyn Any + Send)| r.downcast_ref::<u8>() == Some(&2);
        assert!(
            frames
                .take_old_row(SaveAt::Frame(key), &mut is_two)
                .is_some()
        );
        assert!(
            frames
                .take_old_row(SaveAt::Frame(key), &mut is_two)
                .is_none()
        );
        frames.lock().remove(&key);
        let mut any = |_: &(dyn Any + Send)| true;
        assert!(frames.take_old_row(SaveAt::Frame(key), &mut any).is_none());
        // Nothing leaked to the connection's rows.
        assert_eq!(frames.loose.lock().unwrap().held, 0);
    }
}
