//! [`Event`]: a named event that can be sent to its subscribers.
//!
//! A plain event has no message format: the payload is the body. Model
//! events ([`crate::model`]) wrap their payload in Thorn's message format.
//!
//! ```no_run
//! use std::time::Duration;
//! use thorn_core::{Config, Event, SendOptions, Thorn};
//! use thorn_core::retry::RetryPolicy;
//! use serde_json::json;
//!
//! let thorn = Thorn::new(Config::from_env()?)?;
//! let on_user_created = Event::new("user.created")
//!     .with_timeout(Duration::from_secs(10))
//!     .with_retry(RetryPolicy { max_retries: 3, ..RetryPolicy::default() });
//! let handle = on_user_created.send_with(
//!     &thorn,
//!     &json!({"username": "alice"}),
//!     SendOptions::new().sender(42).on_error(|o| eprintln!("{} failed: {:?}", o.url, o.result)),
//! )?;
//! for outcome in handle.wait()? {
//!     println!("{} -> {:?} after {} attempt(s)", outcome.url, outcome.result, outcome.attempts);
//! }
//! # Ok::<(), thorn_core::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::delivery::{Callbacks, DeliveryOutcome};
use crate::dispatch::{Message, OutgoingEvent, SendHandle};
use crate::error::to_message_value;
use crate::retry::RetryPolicy;
use crate::subscriber::{SenderId, Subscriber, SubscriberCallback, SubscriberQuery};
use crate::validate::Validators;
use crate::{Error, Result, Thorn};

/// A named event (`"user.created"`) with its sending options (Thorn's
/// `Event` keyword arguments).
#[derive(Clone)]
pub struct Event {
    name: Arc<str>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    retry_patch: RetryPatch,
    request_data: Option<Map<String, Value>>,
    allow_keepalive: bool,
    validators: Option<Validators>,
    subscribers: Vec<Subscriber>,
    subscriber_callbacks: Vec<SubscriberCallback>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("retry_patch", &self.retry_patch)
            .field("request_data", &self.request_data)
            .field("allow_keepalive", &self.allow_keepalive)
            .field("validators", &self.validators)
            .field("subscribers", &self.subscribers)
            .field("subscriber_callbacks", &self.subscriber_callbacks.len())
            .finish()
    }
}

/// Parts of a retry policy to override (the `retry`, `retry_max` and
/// `retry_delay` options of a model event).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetryPatch {
    /// Retry or not.
    pub enabled: Option<bool>,
    /// Maximum retries.
    pub max_retries: Option<u32>,
    /// Delay between retries.
    pub retry_delay: Option<Duration>,
}

/// Options of one `send`.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// The sender (a user id); owner-scoped subscribers only receive their
    /// own events.
    pub sender: Option<SenderId>,
    /// Extra context passed to subscriber callbacks.
    pub context: Option<Value>,
    /// Overrides the event's timeout for this send.
    pub timeout: Option<Duration>,
    /// Extra HTTP headers.
    pub headers: HeaderMap,
    /// Per-attempt callbacks.
    pub callbacks: Callbacks,
}

impl SendOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the sender.
    pub fn sender(mut self, sender: impl Into<SenderId>) -> Self {
        self.sender = Some(sender.into());
        self
    }

    /// Sets the context passed to subscriber callbacks.
    pub fn context(mut self, context: Value) -> Self {
        self.context = Some(context);
        self
    }

    /// Sets the timeout of this send.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds an HTTP header; fails with [`Error::Config`] naming the header
    /// when the name or value cannot be sent.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self> {
        let bad = |what: &str| Error::Config {
            key: format!("header {name}"),
            message: format!("invalid header {what}"),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("name"))?;
        let v = HeaderValue::from_str(value).map_err(|_| bad("value"))?;
        self.headers.insert(n, v);
        Ok(self)
    }

    /// Called when a delivery succeeds.
    pub fn on_success(mut self, f: impl Fn(&DeliveryOutcome) + Send + Sync + 'static) -> Self {
        self.callbacks.on_success = Some(Arc::new(f));
        self
    }

    /// Called for each failed attempt that did not time out.
    pub fn on_error(mut self, f: impl Fn(&DeliveryOutcome) + Send + Sync + 'static) -> Self {
        self.callbacks.on_error = Some(Arc::new(f));
        self
    }

    /// Called for each attempt that timed out.
    pub fn on_timeout(mut self, f: impl Fn(&DeliveryOutcome) + Send + Sync + 'static) -> Self {
        self.callbacks.on_timeout = Some(Arc::new(f));
        self
    }
}

impl Event {
    /// An event named `name`, with the configured defaults.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Event {
            name: name.into(),
            timeout: None,
            retry: None,
            retry_patch: RetryPatch::default(),
            request_data: None,
            allow_keepalive: true,
            validators: None,
            subscribers: Vec::new(),
            subscriber_callbacks: Vec::new(),
        }
    }

    /// The same event under another name (used for `{field}` names).
    pub fn renamed(&self, name: impl Into<Arc<str>>) -> Self {
        Event {
            name: name.into(),
            ..self.clone()
        }
    }

    /// The event name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
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

    /// Sets this event's retry policy (default: the configured one).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Overrides parts of the retry policy in effect (this event's or the
    /// configured one): on/off, maximum retries, delay.
    pub fn with_retry_patch(mut self, patch: RetryPatch) -> Self {
        self.retry_patch = patch;
        self
    }

    /// The retry policy this event uses with `config` in process.
    pub fn retry_policy(&self, config: &crate::Config) -> RetryPolicy {
        self.patched(self.retry.clone().unwrap_or_else(|| config.retry.clone()))
    }

    /// The retry policy this event's deliveries take through the outbox:
    /// its own, else [`crate::Config::outbox_retry`].
    pub fn outbox_retry_policy(&self, config: &crate::Config) -> RetryPolicy {
        self.patched(
            self.retry
                .clone()
                .unwrap_or_else(|| config.outbox_retry.clone()),
        )
    }

    fn patched(&self, policy: RetryPolicy) -> RetryPolicy {
        let mut p = policy;
        if let Some(on) = self.retry_patch.enabled {
            p.enabled = on;
        }
        if let Some(max) = self.retry_patch.max_retries {
            p.max_retries = max;
        }
        if let Some(delay) = self.retry_patch.retry_delay {
            p.retry_delay = delay;
        }
        p
    }

    /// Adds fields to every body of this event (top level; the payload's
    /// own fields win), for receivers that expect fixed fields.
    ///
    /// Fails with [`Error::Config`] when `data` is not a JSON object.
    pub fn with_request_data(mut self, data: Value) -> Result<Self> {
        match data {
            Value::Object(map) => {
                self.request_data = Some(map);
                Ok(self)
            }
            other => Err(Error::Config {
                key: format!("request_data of {}", self.name),
                message: format!("expected a JSON object, got {other}"),
            }),
        }
    }

    /// `false` closes the connection after each request of this event.
    pub fn with_keepalive(mut self, allow: bool) -> Self {
        self.allow_keepalive = allow;
        self
    }

    /// Recipient validators for this event instead of the configured ones.
    pub fn with_validators(mut self, validators: Validators) -> Self {
        self.validators = Some(validators);
        self
    }

    /// Adds a subscriber that receives this event in addition to the
    /// stored and configured ones.
    pub fn with_subscriber(mut self, subscriber: Subscriber) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    /// Adds a callback returning more subscribers for each send.
    pub fn with_subscriber_callback(
        mut self,
        f: impl Fn(&SubscriberQuery<'_>) -> Vec<Subscriber> + Send + Sync + 'static,
    ) -> Self {
        self.subscriber_callbacks.push(Arc::new(f));
        self
    }

    /// Sends `payload` as the body to every subscriber.
    ///
    /// Returns once the event is handed to the dispatcher; fails at once if
    /// the payload cannot be encoded ([`Error::Encode`]).
    pub fn send<T: Serialize + ?Sized>(&self, thorn: &Thorn, payload: &T) -> Result<SendHandle> {
        self.send_with(thorn, payload, SendOptions::default())
    }

    /// [`Event::send`] with a sender, context, timeout, headers or callbacks.
    pub fn send_with<T: Serialize + ?Sized>(
        &self,
        thorn: &Thorn,
        payload: &T,
        options: SendOptions,
    ) -> Result<SendHandle> {
        let message = to_message_value(&self.name, payload)?;
        Ok(self.send_value(thorn, message, options))
    }

    /// Sends a message that is already a JSON value (cannot fail to encode).
    pub fn send_value(&self, thorn: &Thorn, message: Value, options: SendOptions) -> SendHandle {
        thorn.dispatch(self.outgoing(thorn, message, options))
    }

    /// The [`OutgoingEvent`] that [`Event::send_value`] hands to the dispatcher:
    /// `request_data` merged, extra subscribers resolved, JSON encoded once.
    /// Integrations that write events to a transactional outbox start here.
    pub fn outgoing(&self, thorn: &Thorn, message: Value, options: SendOptions) -> OutgoingEvent {
        self.outgoing_message(thorn, Message::Value(message), options)
    }

    pub(crate) fn outgoing_message(
        &self,
        thorn: &Thorn,
        mut message: Message,
        options: SendOptions,
    ) -> OutgoingEvent {
        if let Some(extra) = &self.request_data {
            let mut value = message.into_value();
            if let Value::Object(body) = &mut value {
                for (k, v) in extra {
                    body.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            message = Message::Value(value);
        }
        let mut extra_subscribers = self.subscribers.clone();
        if !self.subscriber_callbacks.is_empty() {
            let query = SubscriberQuery {
                event: &self.name,
                sender: options.sender.as_ref(),
                context: options.context.as_ref(),
            };
            for cb in &self.subscriber_callbacks {
                extra_subscribers.extend(cb(&query));
            }
        }
        OutgoingEvent {
            event: self.name.clone(),
            message,
            json: std::sync::OnceLock::new(),
            sender: options.sender,
            context: options.context,
            timeout: options
                .timeout
                .or(self.timeout)
                .unwrap_or(thorn.config().event_timeout),
            headers: options.headers,
            extra_subscribers,
            retry: self.retry_policy(thorn.config()),
            outbox_retry: self.outbox_retry_policy(thorn.config()),
            keepalive: self.allow_keepalive,
            validators: self.validators.clone(),
            callbacks: options.callbacks,
        }
    }
}
