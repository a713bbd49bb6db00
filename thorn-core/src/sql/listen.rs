//! `LISTEN` connections ([`Database::listen`](super::Database::listen)):
//! what they report and how their reports are used.

use std::fmt;
use std::sync::Arc;

/// What a [`Database::listen`](super::Database::listen) connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// `LISTEN` is (again) in place: anything before it went unheard.
    Listening,
    /// A notification arrived on the channel.
    Notified,
    /// The connection was lost: notifications go unheard until the next
    /// [`Notice::Listening`].
    Lost,
}

impl Notice {
    /// Whether a notification with `payload`, heard by a connection whose
    /// `current_schema()` is `schema`, is this listener's: channels are
    /// database-wide, so one naming another schema (another application's
    /// tables) is not; an empty payload is for everyone.
    pub fn concerns(payload: &str, schema: &str) -> bool {
        payload.is_empty() || payload == schema
    }
}

/// Called with each [`Notice`] of a [`Database::listen`](super::Database::listen) connection.
pub type OnNotice = Arc<dyn Fn(Notice) + Send + Sync>;

/// An [`OnNotice`] that wakes `wake` (a relay's signal) when `LISTEN` is
/// in place and on each notification: what a relay needs of
/// `LISTEN thorn_outbox`.
pub fn waking(wake: &Arc<tokio::sync::Notify>) -> OnNotice {
    let wake = wake.clone();
    Arc::new(move |notice| {
        if notice != Notice::Lost {
            wake.notify_one();
        }
    })
}

/// A running [`Database::listen`](super::Database::listen): dropping it stops listening.
pub struct Listener(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Listener {
    /// A listener that calls `stop` when dropped.
    pub fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Listener(Some(Box::new(stop)))
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop();
        }
    }
}
