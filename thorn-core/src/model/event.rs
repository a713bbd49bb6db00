//! [`ModelEvent`]: one event of a model — when it fires, its filter, and
//! the message it sends.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{DispatchOn, FilterFn, HeadersFn, PayloadFn};
use crate::dispatch::{Message, ModelMessage, OutgoingEvent, SendHandle};
use crate::error::to_message_value;
use crate::event::{Event, RetryPatch, SendOptions};
use crate::filter::{Q, WebhookFields};
use crate::subscriber::SenderId;
use crate::transaction::{Route, ThornExt};
use crate::{Error, Result, Thorn};

/// An event of model `M`.
pub struct ModelEvent<M> {
    pub(super) key: &'static str,
    pub(super) event: Event,
    pub(super) dispatches_on: DispatchOn,
    pub(super) name_fn: Option<fn(&M) -> String>,
    pub(super) payload: PayloadFn<M>,
    pub(super) headers: Option<HeadersFn<M>>,
    pub(super) reverse: Option<fn(&M) -> Option<String>>,
    pub(super) sender: Option<fn(&M) -> Option<SenderId>>,
    pub(super) filter: Option<FilterFn<M>>,
    pub(super) uses_transitions: bool,
    pub(super) propagate_errors: bool,
    pub(super) honors_transaction: Option<bool>,
}

impl<M> fmt::Debug for ModelEvent<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelEvent")
            .field("key", &self.key)
            .field("name", &self.event.name())
            .field("dispatches_on", &self.dispatches_on)
            .field("filtered", &self.filter.is_some())
            .field("uses_transitions", &self.uses_transitions)
            .field("propagate_errors", &self.propagate_errors)
            .field("honors_transaction", &self.honors_transaction)
            .finish_non_exhaustive()
    }
}

fn empty_payload<M>(_: &M) -> Result<Value, serde_json::Error> {
    Ok(Value::Object(Map::new()))
}

impl<M> ModelEvent<M> {
    /// An event declared as `key` (`"on_create"`) named `name`
    /// (`"article.created"`), sent on `dispatches_on`, with an empty payload,
    /// no `ref`, no sender and no filter.
    pub fn new(key: &'static str, name: &'static str, dispatches_on: DispatchOn) -> Self {
        ModelEvent {
            key,
            event: Event::new(name),
            dispatches_on,
            name_fn: None,
            payload: empty_payload::<M>,
            headers: None,
            reverse: None,
            sender: None,
            filter: None,
            uses_transitions: false,
            propagate_errors: false,
            honors_transaction: None,
        }
    }

    /// Computes the name from the instance (names with `{field}` parts).
    pub fn with_name_fn(mut self, f: fn(&M) -> String) -> Self {
        self.name_fn = Some(f);
        self
    }

    /// Sets how the payload is built.
    pub fn with_payload(mut self, f: PayloadFn<M>) -> Self {
        self.payload = f;
        self
    }

    /// Sets extra HTTP headers for each instance.
    pub fn with_headers(mut self, f: HeadersFn<M>) -> Self {
        self.headers = Some(f);
        self
    }

    /// Sets the `reverse` path of the `ref` field (`None` for no `ref`).
    pub fn with_reverse(mut self, f: fn(&M) -> Option<String>) -> Self {
        self.reverse = Some(f);
        self
    }

    /// Sets how the sender is read from the instance.
    pub fn with_sender(mut self, f: fn(&M) -> Option<SenderId>) -> Self {
        self.sender = Some(f);
        self
    }

    /// Sets a compiled filter; `uses_transitions` says whether it reads the
    /// old row (`now_` operators).
    pub fn with_filter_fn(
        mut self,
        f: impl Fn(&M, Option<&M>) -> bool + Send + Sync + 'static,
        uses_transitions: bool,
    ) -> Self {
        self.filter = Some(Arc::new(f));
        self.uses_transitions = uses_transitions;
        self
    }

    /// Sets a runtime filter. A filter naming a field the model does not
    /// have never matches (and is logged).
    pub fn filter(self, q: Q) -> Self
    where
        M: WebhookFields + 'static,
    {
        let uses = q.uses_transitions();
        let key = self.key;
        self.with_filter_fn(
            move |new, old| match q.eval(new, old) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(event = key, error = %e, "invalid filter");
                    false
                }
            },
            uses,
        )
    }

    /// Sets the request timeout of this event.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.event = self.event.with_timeout(timeout);
        self
    }

    /// Overrides parts of the retry policy.
    pub fn with_retry_patch(mut self, patch: RetryPatch) -> Self {
        self.event = self.event.with_retry_patch(patch);
        self
    }

    /// `false` closes connections after each request of this event.
    pub fn with_keepalive(mut self, allow: bool) -> Self {
        self.event = self.event.with_keepalive(allow);
        self
    }

    /// `true`: errors while sending reach the caller of the write, so its
    /// transaction can roll back (default: logged and swallowed).
    pub fn with_propagate_errors(mut self, propagate: bool) -> Self {
        self.propagate_errors = propagate;
        self
    }

    /// Follow (or not) the database transaction; `None` uses
    /// `THORN_SIGNAL_HONORS_TRANSACTION`.
    pub fn with_honors_transaction(mut self, honors: Option<bool>) -> Self {
        self.honors_transaction = honors;
        self
    }

    /// Changes the underlying [`Event`]'s options (retry policy,
    /// validators, request data, extra subscribers, ...).
    pub fn with_event(mut self, f: impl FnOnce(Event) -> Event) -> Self {
        self.event = f(self.event);
        self
    }

    /// The underlying event and its options.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The key it was declared under (`"on_create"`).
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The declared name (with `{field}` parts uninterpolated).
    pub fn name(&self) -> &str {
        self.event.name()
    }

    /// When it fires.
    pub fn dispatches_on(&self) -> DispatchOn {
        self.dispatches_on
    }

    /// True when its filter reads the old row.
    pub fn uses_transitions(&self) -> bool {
        self.uses_transitions
    }

    /// True when errors while sending reach the caller.
    pub fn propagate_errors(&self) -> bool {
        self.propagate_errors
    }

    /// Whether this event follows the database transaction under `thorn`'s
    /// configuration.
    pub fn honors_transaction(&self, thorn: &Thorn) -> bool {
        self.honors_transaction
            .unwrap_or(thorn.config().signal_honors_transaction)
    }

    /// Where this event goes when a write raises it under `thorn`'s
    /// configuration ([`crate::integration`]).
    pub fn route(&self, thorn: &Thorn) -> Route {
        ThornExt::route(thorn, self.honors_transaction(thorn))
    }

    /// True when the filter (if any) passes for `new` and, on change, `old`.
    pub fn matches(&self, new: &M, old: Option<&M>) -> bool {
        self.filter.as_ref().is_none_or(|f| f(new, old))
    }

    /// The event name for `instance`.
    pub fn name_for(&self, instance: &M) -> String {
        match self.name_fn {
            Some(f) => f(instance),
            None => self.event.name().to_owned(),
        }
    }

    /// The `ref` for `instance`: the reverse path joined to the base URL.
    pub fn reference(&self, thorn: &Thorn, instance: &M) -> Option<String> {
        let path = (self.reverse?)(instance)?;
        Some(match &thorn.config().base_url {
            Some(base) => base.join(&path).map(|u| u.to_string()).unwrap_or(path),
            None => path,
        })
    }

    /// The sender read from `instance`.
    pub fn sender_of(&self, instance: &M) -> Option<SenderId> {
        self.sender.and_then(|f| f(instance))
    }

    /// The full message for `instance` with `data` as payload.
    pub fn message<T: Serialize + ?Sized>(
        &self,
        thorn: &Thorn,
        instance: &M,
        data: &T,
        sender: Option<&SenderId>,
    ) -> Result<Value> {
        let name = self.name_for(instance);
        let data = to_message_value(&name, data)?;
        Ok(self.wrap(thorn, instance, name, data, sender))
    }

    fn wrap(
        &self,
        thorn: &Thorn,
        instance: &M,
        name: String,
        data: Value,
        sender: Option<&SenderId>,
    ) -> Value {
        let mut m = Map::with_capacity(4);
        m.insert("event".into(), Value::String(name));
        m.insert(
            "ref".into(),
            self.reference(thorn, instance)
                .map_or(Value::Null, Value::String),
        );
        m.insert(
            "sender".into(),
            sender.map_or(Value::Null, |s| {
                serde_json::to_value(s).expect("sender ids are JSON")
            }),
        );
        m.insert("data".into(), data);
        Value::Object(m)
    }

    fn options(
        &self,
        instance: &M,
        sender: Option<SenderId>,
        context: Option<Value>,
    ) -> Result<SendOptions> {
        let headers = match self.headers {
            Some(f) => f(instance).map_err(|error| match error {
                Error::Header { name, reason, .. } => Error::Header {
                    event: self.event.name().to_owned(),
                    name,
                    reason,
                },
                other => other,
            })?,
            None => HeaderMap::new(),
        };
        Ok(SendOptions {
            sender,
            context,
            headers,
            ..SendOptions::default()
        })
    }

    /// Sends exactly what an automatic dispatch for `instance` would send
    /// (filters are not consulted: this is the manual way).
    pub fn send_from_instance(&self, thorn: &Thorn, instance: &M) -> Result<SendHandle> {
        self.send_with_context(thorn, instance, None)
    }

    pub(super) fn send_with_context(
        &self,
        thorn: &Thorn,
        instance: &M,
        context: Option<Value>,
    ) -> Result<SendHandle> {
        Ok(thorn.dispatch(self.outgoing(thorn, instance, context)?))
    }

    /// What an automatic dispatch for `instance` hands to the dispatcher,
    /// without dispatching it (the transactional outbox writes it instead).
    /// `context` reaches subscriber callbacks.
    pub fn outgoing(
        &self,
        thorn: &Thorn,
        instance: &M,
        context: Option<Value>,
    ) -> Result<OutgoingEvent> {
        let renamed = match self.name_fn {
            Some(f) => Some(f(instance)).filter(|n| n != self.event.name()),
            None => None,
        }
        .map(|n| self.event.renamed(n));
        let event = renamed.as_ref().unwrap_or(&self.event);
        let data = (self.payload)(instance).map_err(|source| Error::Encode {
            event: event.name().to_owned(),
            content_type: crate::codec::ContentType::Json,
            source,
        })?;
        let sender = self.sender_of(instance);
        let options = self.options(instance, sender.clone(), context)?;
        let message = Message::Model(ModelMessage {
            event: event.name_arc().clone(),
            reference: self.reference(thorn, instance),
            sender,
            data,
        });
        Ok(event.outgoing_message(thorn, message, options))
    }

    /// Sends this event for `instance` with a payload and sender of the
    /// caller's choosing.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        thorn: &Thorn,
        instance: &M,
        data: &T,
        sender: Option<SenderId>,
    ) -> Result<SendHandle> {
        let message = self.message(thorn, instance, data, sender.as_ref())?;
        let name = self.name_for(instance);
        let options = self.options(instance, sender, None)?;
        Ok(self.event_named(name).send_value(thorn, message, options))
    }

    fn event_named(&self, name: String) -> Event {
        if name == self.event.name() {
            self.event.clone()
        } else {
            self.event.renamed(name)
        }
    }
}
