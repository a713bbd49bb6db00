//! [`Event`]: a named event that can be sent to its subscribers.
//!
//! A plain event has no message format: the payload is the body. Model
//! events ([`crate::model`]) wrap their payload in Thorn's message format.
//!
//! ```no_run
//! use thorn_core::{Config, Event, Thorn};
//! use serde_json::json;
//!
//! let thorn = Thorn::new(Config::from_env()?)?;
//! let on_user_created = Event::new("user.created");
//! let handle = on_user_created.send(&thorn, &json!({"username": "alice"}))?;
//! for outcome in handle.wait()? {
//!     println!("{} -> {:?}", outcome.url, outcome.result);
//! }
//! # Ok::<(), thorn_core::Error>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use crate::codec::{ContentType, to_message_value};
use crate::dispatch::{Dispatched, Outgoing};
use crate::subscriber::{SenderId, Subscriber};
use crate::{Result, Thorn};

/// A named event (`"user.created"`) with its sending options.
#[derive(Debug, Clone)]
pub struct Event {
    name: Arc<str>,
    timeout: Option<Duration>,
    subscribers: Vec<Subscriber>,
}

/// Options of one `send`.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// The sender (a user id); owner-scoped subscribers only receive their
    /// own events.
    pub sender: Option<SenderId>,
    /// Overrides the event's timeout for this send.
    pub timeout: Option<Duration>,
    /// Extra HTTP headers.
    pub headers: HeaderMap,
}

impl Event {
    /// An event named `name`, with the configured timeout.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Event {
            name: name.into(),
            timeout: None,
            subscribers: Vec::new(),
        }
    }

    /// The event name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets this event's request timeout (default: `THORN_EVENT_TIMEOUT`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The event's own timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Adds a subscriber that receives this event in addition to the
    /// stored and configured ones.
    pub fn with_subscriber(mut self, subscriber: Subscriber) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    /// Sends `payload` as the body to every subscriber.
    ///
    /// Returns once the event is handed to the dispatcher; fails at once if
    /// the payload cannot be encoded ([`crate::Error::Encode`]).
    pub fn send<T: Serialize + ?Sized>(&self, thorn: &Thorn, payload: &T) -> Result<Dispatched> {
        self.send_with(thorn, payload, SendOptions::default())
    }

    /// [`Event::send`] with a sender, timeout or headers.
    pub fn send_with<T: Serialize + ?Sized>(
        &self,
        thorn: &Thorn,
        payload: &T,
        options: SendOptions,
    ) -> Result<Dispatched> {
        let message = to_message_value(&self.name, payload)?;
        Ok(self.send_value(thorn, message, options))
    }

    /// Sends a message that is already a JSON value (cannot fail to encode).
    pub fn send_value(&self, thorn: &Thorn, message: Value, options: SendOptions) -> Dispatched {
        let json = Bytes::from(ContentType::Json.encode(&message));
        let outgoing = Outgoing {
            event: self.name.clone(),
            message,
            json,
            sender: options.sender,
            timeout: options
                .timeout
                .or(self.timeout)
                .unwrap_or(thorn.config().event_timeout),
            headers: options.headers,
            extra_subscribers: self.subscribers.clone(),
        };
        thorn.dispatch(outgoing)
    }
}
