//! Model events: events bound to a database model, sent when rows are
//! created, changed or deleted.
//!
//! `#[derive(WebhookModel)]` (crate `thorn-derive`) builds a model's
//! [`Webhooks`]; the ORM integrations call [`Webhooks::dispatch`] after each
//! write. Every model event sends Thorn's message format:
//!
//! ```json
//! {"event": "article.created", "ref": "https://example.com/article/1/", "sender": 7, "data": {}}
//! ```
//!
//! `ref` is the model's `reverse` path joined to `THORN_BASE_URL` (or the
//! bare path when no base URL is configured, or `null` without `reverse`),
//! `sender` is the model's `sender_field` (or `null`), and `data` is the
//! model's payload (an empty object by default).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::codec::to_message_value;
use crate::dispatch::Dispatched;
use crate::event::{Event, SendOptions};
use crate::subscriber::SenderId;
use crate::{Error, Result, Thorn};

/// The write that makes a model event fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DispatchOn {
    /// A row was inserted.
    Create,
    /// A row was updated.
    Change,
    /// A row was deleted.
    Delete,
}

/// Builds a model's payload (the `data` field).
pub type PayloadFn<M> = fn(&M) -> Result<Value, serde_json::Error>;

/// An event of model `M`.
pub struct ModelEvent<M> {
    key: &'static str,
    event: Event,
    dispatches_on: DispatchOn,
    name_fn: Option<fn(&M) -> String>,
    payload: PayloadFn<M>,
    reverse: Option<fn(&M) -> String>,
    sender: Option<fn(&M) -> Option<SenderId>>,
}

impl<M> fmt::Debug for ModelEvent<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelEvent")
            .field("key", &self.key)
            .field("name", &self.event.name())
            .field("dispatches_on", &self.dispatches_on)
            .finish_non_exhaustive()
    }
}

fn empty_payload<M>(_: &M) -> Result<Value, serde_json::Error> {
    Ok(Value::Object(Map::new()))
}

impl<M> ModelEvent<M> {
    /// An event declared as `key` (`"on_create"`) named `name`
    /// (`"article.created"`), sent on `dispatches_on`, with an empty payload,
    /// no `ref` and no sender.
    pub fn new(key: &'static str, name: &'static str, dispatches_on: DispatchOn) -> Self {
        ModelEvent {
            key,
            event: Event::new(name),
            dispatches_on,
            name_fn: None,
            payload: empty_payload::<M>,
            reverse: None,
            sender: None,
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

    /// Sets the `reverse` path of the `ref` field.
    pub fn with_reverse(mut self, f: fn(&M) -> String) -> Self {
        self.reverse = Some(f);
        self
    }

    /// Sets how the sender is read from the instance.
    pub fn with_sender(mut self, f: fn(&M) -> Option<SenderId>) -> Self {
        self.sender = Some(f);
        self
    }

    /// Sets the request timeout of this event.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.event = self.event.with_timeout(timeout);
        self
    }

    /// Changes the underlying [`Event`]'s options (retry policy,
    /// validators, keep-alive, request data, extra subscribers, ...).
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

    /// The event name for `instance`.
    pub fn name_for(&self, instance: &M) -> String {
        match self.name_fn {
            Some(f) => f(instance),
            None => self.event.name().to_owned(),
        }
    }

    /// The `ref` for `instance`: the reverse path joined to the base URL.
    pub fn reference(&self, thorn: &Thorn, instance: &M) -> Option<String> {
        let path = (self.reverse?)(instance);
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

    /// Sends exactly what an automatic dispatch for `instance` would send.
    pub fn send_from_instance(&self, thorn: &Thorn, instance: &M) -> Result<Dispatched> {
        let name = self.name_for(instance);
        let data = (self.payload)(instance).map_err(|source| Error::Encode {
            event: name.clone(),
            content_type: crate::codec::ContentType::Json,
            source,
        })?;
        let sender = self.sender_of(instance);
        let message = self.wrap(thorn, instance, name.clone(), data, sender.as_ref());
        Ok(self.event_named(name).send_value(
            thorn,
            message,
            SendOptions {
                sender,
                ..SendOptions::default()
            },
        ))
    }

    /// Sends this event for `instance` with a payload and sender of the
    /// caller's choosing.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        thorn: &Thorn,
        instance: &M,
        data: &T,
        sender: Option<SenderId>,
    ) -> Result<Dispatched> {
        let message = self.message(thorn, instance, data, sender.as_ref())?;
        let name = self.name_for(instance);
        Ok(self.event_named(name).send_value(
            thorn,
            message,
            SendOptions {
                sender,
                ..SendOptions::default()
            },
        ))
    }

    fn event_named(&self, name: String) -> Event {
        if name == self.event.name() {
            self.event.clone()
        } else {
            self.event.renamed(name)
        }
    }
}

/// All events of model `M`, as declared by `#[webhook_model(...)]`.
pub struct Webhooks<M> {
    model: &'static str,
    events: Vec<ModelEvent<M>>,
}

impl<M> fmt::Debug for Webhooks<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("model", &self.model)
            .field("events", &self.events)
            .finish()
    }
}

impl<M> Webhooks<M> {
    /// The events of the model named `model`.
    pub fn new(model: &'static str, events: Vec<ModelEvent<M>>) -> Self {
        Webhooks { model, events }
    }

    /// The model's name.
    pub fn model(&self) -> &'static str {
        self.model
    }

    /// Every event, in declaration order.
    pub fn events(&self) -> &[ModelEvent<M>] {
        &self.events
    }

    /// The event declared under `key` (`"on_create"`, `"on_publish"`).
    pub fn event(&self, key: &str) -> Option<&ModelEvent<M>> {
        self.events.iter().find(|e| e.key == key)
    }

    /// True when some event fires on `on` (lets integrations skip work).
    pub fn fires_on(&self, on: DispatchOn) -> bool {
        self.events.iter().any(|e| e.dispatches_on == on)
    }

    /// Sends every event that fires on `on` for `instance`. One result per
    /// event: an event whose payload cannot be encoded does not stop the
    /// others.
    pub fn dispatch(&self, thorn: &Thorn, on: DispatchOn, instance: &M) -> Vec<Result<Dispatched>> {
        self.events
            .iter()
            .filter(|e| e.dispatches_on == on)
            .map(|e| e.send_from_instance(thorn, instance))
            .collect()
    }
}

/// A model with webhook events; implemented by `#[derive(WebhookModel)]`.
pub trait WebhookModel: Sized + 'static {
    /// The model's events.
    fn webhooks() -> &'static Webhooks<Self>;
}

/// Reads a sender id out of a model field (`sender_field = author_id`).
/// Implemented for integers, strings, UUIDs and `Option`s of them.
pub trait AsSender {
    /// The sender id, or `None` for an empty optional field.
    fn as_sender(&self) -> Option<SenderId>;
}

macro_rules! as_sender_via_from {
    ($($t:ty),*) => {$(
        impl AsSender for $t {
            fn as_sender(&self) -> Option<SenderId> { Some(SenderId::from(self.clone())) }
        }
    )*};
}
as_sender_via_from!(i8, i16, i32, i64, u8, u16, u32, String, Uuid);

impl AsSender for str {
    fn as_sender(&self) -> Option<SenderId> {
        Some(SenderId::from(self))
    }
}

impl<T: AsSender> AsSender for Option<T> {
    fn as_sender(&self) -> Option<SenderId> {
        self.as_ref().and_then(AsSender::as_sender)
    }
}

impl<T: AsSender + ?Sized> AsSender for &T {
    fn as_sender(&self) -> Option<SenderId> {
        (**self).as_sender()
    }
}
