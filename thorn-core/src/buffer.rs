//! Event buffering: hold events and send them together.
//!
//! Events sent inside a buffering scope are held, and sent when the
//! outermost scope ends or on [`flush`]. Nested scopes delegate to the
//! outermost; `flush` sends everything held, from all scopes.
//! [`maybe_flush`] sends the buffer when `flush_freq` events were held or
//! `flush_timeout` passed since the last flush.
//!
//! Which scope applies where:
//!
//! - **Synchronous code** (Diesel): [`buffer_events`] returns a guard; the
//!   buffer belongs to the current thread. The guard is not `Send`, so it
//!   cannot be held across an `.await` in a spawned task by mistake.
//! - **Async code** (SeaORM, axum): [`buffered`] runs a future with a
//!   buffer that belongs to that task, wherever the runtime moves it.
//!
//! Inside a task scope the task's buffer wins; otherwise the thread's.
//!
//! ```no_run
//! use thorn_core::{buffer, Config, Event, Thorn};
//!
//! let thorn = Thorn::new(Config::from_env()?)?;
//! let created = Event::new("article.created");
//! {
//!     let buffer = buffer::buffer_events();
//!     created.send(&thorn, &serde_json::json!({"id": 1}))?;   // held
//!     created.send(&thorn, &serde_json::json!({"id": 2}))?;   // held
//!     buffer.flush();                                         // both sent now
//!     created.send(&thorn, &serde_json::json!({"id": 3}))?;   // held
//! }                                                            // sent here
//! # Ok::<(), thorn_core::Error>(())
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::dispatch::{OutgoingEvent, SendHandle};
use crate::{Error, Result, Thorn};

/// When [`maybe_flush`] sends the buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferOptions {
    /// Flush after this many events were held since the last flush.
    pub flush_freq: Option<usize>,
    /// Flush when this much time passed since the last flush.
    pub flush_timeout: Option<Duration>,
}

struct Held {
    thorn: Thorn,
    outgoing: OutgoingEvent,
    reply: oneshot::Sender<SendHandle>,
}

pub(crate) struct State {
    depth: usize,
    held: Vec<Held>,
    options: BufferOptions,
    since_flush: usize,
    last_flush: Instant,
}

pub(crate) type Shared = Arc<Mutex<State>>;

thread_local! {
    static THREAD: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

tokio::task_local! {
    static TASK: Shared;
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_state(options: BufferOptions) -> Shared {
    Arc::new(Mutex::new(State {
        depth: 1,
        held: Vec::new(),
        options,
        since_flush: 0,
        last_flush: Instant::now(),
    }))
}

/// The buffer of the current task, else of the current thread.
pub(crate) fn current() -> Option<Shared> {
    TASK.try_with(Arc::clone)
        .ok()
        .or_else(|| THREAD.with(|t| t.borrow().clone()))
}

/// Holds `outgoing` in `shared`; the handle resolves once it is flushed.
pub(crate) fn hold(shared: &Shared, thorn: &Thorn, outgoing: OutgoingEvent) -> SendHandle {
    let (reply, rx) = oneshot::channel();
    let mut state = lock(shared);
    state.held.push(Held {
        thorn: thorn.clone(),
        outgoing,
        reply,
    });
    state.since_flush += 1;
    SendHandle::buffered(rx)
}

fn flush_state(shared: &Shared) -> usize {
    let held = {
        let mut state = lock(shared);
        state.since_flush = 0;
        state.last_flush = Instant::now();
        std::mem::take(&mut state.held)
    };
    let n = held.len();
    for h in held {
        let _ = h.reply.send(h.thorn.dispatch_now(h.outgoing));
    }
    n
}

fn maybe_flush_state(shared: &Shared) -> bool {
    let due = {
        let state = lock(shared);
        let by_count = state
            .options
            .flush_freq
            .is_some_and(|n| state.since_flush >= n);
        let by_time = state
            .options
            .flush_timeout
            .is_some_and(|t| state.last_flush.elapsed() >= t);
        (by_count || by_time) && !state.held.is_empty()
    };
    if due {
        flush_state(shared);
    }
    due
}

/// Sends everything held in the current buffer (all nested scopes); returns
/// how many events were sent. Does nothing outside a buffering scope.
pub fn flush() -> usize {
    current().map_or(0, |s| flush_state(&s))
}

/// Flushes when the buffer's `flush_freq` or `flush_timeout` is reached;
/// returns whether it flushed.
pub fn maybe_flush() -> bool {
    current().is_some_and(|s| maybe_flush_state(&s))
}

/// Starts buffering on this thread (see the module docs for async code).
pub fn buffer_events() -> BufferGuard {
    buffer_events_with(BufferOptions::default())
}

/// [`buffer_events`] with periodic-flush options. Options of a nested
/// scope are ignored: the outermost scope's apply.
pub fn buffer_events_with(options: BufferOptions) -> BufferGuard {
    let shared = THREAD.with(|t| {
        let mut slot = t.borrow_mut();
        match slot.as_ref() {
            Some(existing) => {
                lock(existing).depth += 1;
                existing.clone()
            }
            None => {
                let s = new_state(options);
                *slot = Some(s.clone());
                s
            }
        }
    });
    BufferGuard {
        shared: Some(shared),
        _not_send: PhantomData,
    }
}

/// A thread's buffering scope; ends (and flushes, when outermost) on drop.
#[must_use = "the buffer ends as soon as the guard is dropped"]
pub struct BufferGuard {
    shared: Option<Shared>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for BufferGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferGuard")
            .field("held", &self.len())
            .finish()
    }
}

impl BufferGuard {
    /// Sends everything held (all nested scopes).
    pub fn flush(&self) -> usize {
        self.shared.as_ref().map_or(0, flush_state)
    }

    /// Flushes when `flush_freq` or `flush_timeout` is reached.
    pub fn maybe_flush(&self) -> bool {
        self.shared.as_ref().is_some_and(maybe_flush_state)
    }

    /// Events held right now.
    pub fn len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| lock(s).held.len())
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends this scope without sending. Fails with
    /// [`Error::BufferNotEmpty`] (and keeps buffering) while events are
    /// held, so nothing is lost: flush first.
    pub fn disable(&mut self) -> Result<()> {
        let pending = self.len();
        if pending > 0 {
            return Err(Error::BufferNotEmpty { pending });
        }
        self.end();
        Ok(())
    }

    fn end(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let outermost = {
            let mut state = lock(&shared);
            state.depth -= 1;
            state.depth == 0
        };
        if outermost {
            THREAD.with(|t| *t.borrow_mut() = None);
            flush_state(&shared);
        }
    }
}

impl Drop for BufferGuard {
    fn drop(&mut self) {
        self.end();
    }
}

/// Runs `future` with a buffer of its own task; held events are sent when
/// the outermost scope's future completes. Nested scopes delegate to the
/// outermost.
pub async fn buffered<F: Future>(options: BufferOptions, future: F) -> F::Output {
    if let Ok(existing) = TASK.try_with(Arc::clone) {
        lock(&existing).depth += 1;
        let out = future.await;
        lock(&existing).depth -= 1;
        return out;
    }
    let shared = new_state(options);
    let out = TASK.scope(shared.clone(), future).await;
    flush_state(&shared);
    out
}

/// How a [`Thorn`] hands over an event: to the active buffer when there
/// is one, else to its dispatcher.
impl Thorn {
    /// Hands an event to the dispatcher, or to the active buffer
    /// ([`crate::buffer`]) when there is one.
    pub(crate) fn dispatch(&self, outgoing: OutgoingEvent) -> SendHandle {
        match current() {
            Some(buffer) => hold(&buffer, self, outgoing),
            None => self.dispatch_now(outgoing),
        }
    }

    /// Hands the events of a committed transaction to the dispatcher at
    /// once (or to the active buffer), when nobody waits for outcomes.
    pub(crate) fn dispatch_batch(&self, batch: Vec<OutgoingEvent>) {
        if current().is_some() {
            for outgoing in batch {
                drop(self.dispatch(outgoing));
            }
        } else {
            self.dispatch_batch_now(batch);
        }
    }
}
