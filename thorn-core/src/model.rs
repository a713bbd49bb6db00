//! Model events: events bound to a database model, sent when rows are
//! created, changed or deleted, or many-to-many links change.
//!
//! `#[derive(WebhookModel)]` (crate `thorn-derive`) builds a model's
//! [`Webhooks`]; the ORM integrations call [`Webhooks::dispatch`] after each
//! write. Every model event sends Thorn's message format:
//!
//! ```json
//! {"event": "article.created", "ref": "https://example.com/article/1/", "sender": 7, "data": {}}
//! ```
//!
//! `ref` is the event's `reverse` path (or the model's [`AbsoluteUrl`])
//! joined to `THORN_BASE_URL` (the bare path when no base URL is
//! configured; `null` when the model has neither), `sender` is the model's
//! `sender_field` (or `null`), and `data` is the model's payload (an empty
//! object by default).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::codec::to_message_value;
use crate::dispatch::{Dispatched, Message, ModelMessage, Outgoing};
use crate::event::{Event, RetryPatch, SendOptions};
use crate::filter::{Q, WebhookFields};
use crate::subscriber::SenderId;
use crate::transaction::{Raised, Route, Scope};
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
    /// Rows were linked through the named many-to-many relation.
    M2mAdd(&'static str),
    /// Links of the named relation were removed.
    M2mRemove(&'static str),
    /// All links of the named relation were removed.
    M2mClear(&'static str),
}

/// Builds a model's payload (the `data` field).
pub type PayloadFn<M> = fn(&M) -> Result<Value, serde_json::Error>;

/// Builds extra HTTP headers for an instance.
pub type HeadersFn<M> = fn(&M) -> Result<HeaderMap>;

/// A filter over the new row and, on change, the old row.
pub type FilterFn<M> = Arc<dyn Fn(&M, Option<&M>) -> bool + Send + Sync>;

/// The canonical URL of a row, used for `ref` when an event has no
/// `reverse` (Django's `get_absolute_url`).
pub trait AbsoluteUrl {
    /// The URL or path of this row.
    fn absolute_url(&self) -> String;
}

/// An event of model `M`.
pub struct ModelEvent<M> {
    key: &'static str,
    event: Event,
    dispatches_on: DispatchOn,
    name_fn: Option<fn(&M) -> String>,
    payload: PayloadFn<M>,
    headers: Option<HeadersFn<M>>,
    reverse: Option<fn(&M) -> Option<String>>,
    sender: Option<fn(&M) -> Option<SenderId>>,
    filter: Option<FilterFn<M>>,
    uses_transitions: bool,
    propagate_errors: bool,
    honors_transaction: Option<bool>,
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

/// Turns `(name, value)` pairs into headers; used for a model's `headers`
/// callback. An invalid name or value is an error naming it.
pub fn to_headers<I, K, V>(pairs: I) -> Result<HeaderMap>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        let bad = |what: &str| Error::Config {
            key: format!("header {k}"),
            message: format!("invalid header {what} from the model's headers callback"),
        };
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| bad("value"))?;
        map.insert(name, value);
    }
    Ok(map)
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
    /// configuration ([`crate::transaction`]).
    pub fn route(&self, thorn: &Thorn) -> Route {
        thorn.route(self.honors_transaction(thorn))
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
            Some(f) => f(instance)?,
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
    pub fn send_from_instance(&self, thorn: &Thorn, instance: &M) -> Result<Dispatched> {
        self.send_with_context(thorn, instance, None)
    }

    fn send_with_context(
        &self,
        thorn: &Thorn,
        instance: &M,
        context: Option<Value>,
    ) -> Result<Dispatched> {
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
    ) -> Result<Outgoing> {
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
    ) -> Result<Dispatched> {
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

/// One event a write set off: which one, and its handle (or why it could
/// not be sent).
#[derive(Debug)]
pub struct Fired<'a, M> {
    /// The event.
    pub event: &'a ModelEvent<M>,
    /// The dispatch handle, or the error that stopped sending.
    pub result: Result<Dispatched>,
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

    /// Checks that `on` is a many-to-many change on a relation some event
    /// of the model declares; the error names the declared relations.
    pub fn check_m2m(&self, on: DispatchOn) -> std::result::Result<(), String> {
        let relation = match on {
            DispatchOn::M2mAdd(r) | DispatchOn::M2mRemove(r) | DispatchOn::M2mClear(r) => r,
            _ => return Err(format!("{on:?} is not a many-to-many change")),
        };
        let mut declared: Vec<&str> = self
            .events
            .iter()
            .filter_map(|e| match e.dispatches_on {
                DispatchOn::M2mAdd(r) | DispatchOn::M2mRemove(r) | DispatchOn::M2mClear(r) => {
                    Some(r)
                }
                _ => None,
            })
            .collect();
        if declared.contains(&relation) {
            return Ok(());
        }
        declared.sort_unstable();
        declared.dedup();
        Err(format!(
            "{} declares no many-to-many relation `{relation}` (declared: {})",
            self.model,
            if declared.is_empty() {
                "none".to_owned()
            } else {
                declared.join(", ")
            }
        ))
    }

    /// True when some event firing on `on` has a `now_` filter, so the
    /// integration must fetch the old row before writing.
    pub fn needs_old_row(&self, on: DispatchOn) -> bool {
        self.events
            .iter()
            .any(|e| e.dispatches_on == on && e.uses_transitions)
    }

    /// Sends every event that fires on `on` and whose filter passes for
    /// `new` (and `old`, on change). One entry per event sent: an event
    /// whose payload cannot be encoded does not stop the others.
    pub fn dispatch(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        new: &M,
        old: Option<&M>,
    ) -> Vec<Fired<'_, M>> {
        self.dispatch_with_context(thorn, on, new, old, None)
    }

    /// [`Webhooks::dispatch`] for a many-to-many change: `related` (the
    /// primary keys linked or unlinked) reaches subscriber callbacks as the
    /// context `{"relation": ..., "related": [...]}`.
    pub fn dispatch_m2m(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        instance: &M,
        related: &[Value],
    ) -> Vec<Fired<'_, M>> {
        let context = Self::m2m_context(on, related);
        self.dispatch_with_context(thorn, on, instance, None, Some(context))
    }

    /// Refuses, before the write runs, a write whose `on` events could not
    /// follow `scope` (see [`crate::transaction`]): an event held until
    /// commit inside a transaction Thorn does not manage, or an outbox or
    /// `propagate_errors` event on a connection that commits on its own.
    /// ORM integrations call it before running the statement, so an `Err`
    /// never leaves a row written without its events.
    pub fn admit(&self, thorn: &Thorn, on: DispatchOn, scope: Scope) -> Result<()> {
        for event in self.events.iter().filter(|e| e.dispatches_on == on) {
            crate::transaction::admit(
                thorn,
                self.model,
                event.name(),
                event.route(thorn),
                event.propagate_errors,
                scope,
            )?;
        }
        Ok(())
    }

    /// True when an `on` event could make a write in `scope` fail after
    /// its statement ran — it propagates its errors, or its outbox row is
    /// written right after the statement — so the integration should run
    /// statement and events in a transaction (or savepoint) of their own
    /// for an `Err` to leave nothing behind. In a managed transaction,
    /// outbox rows wait for COMMIT and cannot fail the write.
    pub fn needs_transaction(&self, thorn: &Thorn, on: DispatchOn, scope: Scope) -> bool {
        let writes_through = !matches!(scope, Scope::Managed(_));
        self.events.iter().any(|e| {
            e.dispatches_on == on
                && (e.propagate_errors || (writes_through && e.route(thorn) == Route::Outbox))
        })
    }

    /// Raises the events of `on` for each `(row, old row)`, as an ORM
    /// integration does after a write that runs in `scope`: each event that
    /// fires goes where its [`Route`] and the scope say
    /// ([`crate::transaction`]) — to the dispatcher now, into the managed
    /// transaction's frame, or into the returned [`Raised`] (outbox rows to
    /// write through the connection now, events to hand over once the write
    /// committed).
    ///
    /// An event that cannot be prepared (its payload does not encode, say)
    /// is logged and skipped, unless it has `propagate_errors`: then the
    /// error is returned, so the caller's transaction can roll back. An
    /// event the scope cannot carry is always an error.
    pub fn raise<'r>(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
        context: Option<Value>,
        scope: Scope,
    ) -> Result<Raised>
    where
        M: 'r,
    {
        let raised = self.raise_rows(thorn, on, rows, context, scope);
        if let (Err(error), Scope::Managed(key)) = (&raised, scope) {
            // The statement ran: the transaction must not commit.
            thorn.frames().fail(key, error);
        }
        raised
    }

    fn raise_rows<'r>(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        rows: impl IntoIterator<Item = (&'r M, Option<&'r M>)>,
        context: Option<Value>,
        scope: Scope,
    ) -> Result<Raised>
    where
        M: 'r,
    {
        let mut raised = Raised::default();
        for (row, old) in rows {
            for event in self.firing(on, row, old) {
                let route = event.route(thorn);
                let placed = event.outgoing(thorn, row, context.clone()).and_then(|o| {
                    crate::transaction::place(thorn, self.model, route, scope, o, &mut raised)
                });
                match placed {
                    Ok(()) => {}
                    Err(
                        error @ (Error::UnmanagedTransaction { .. } | Error::Autocommit { .. }),
                    ) => {
                        return Err(error);
                    }
                    Err(error) if event.propagate_errors() => return Err(error),
                    Err(error) => {
                        tracing::error!(model = self.model, event = event.key(), %error, "webhook not sent");
                    }
                }
            }
        }
        Ok(raised)
    }

    /// The context a many-to-many change gives subscriber callbacks:
    /// `{"relation": ..., "related": [...]}`.
    pub fn m2m_context(on: DispatchOn, related: &[Value]) -> Value {
        let relation = match on {
            DispatchOn::M2mAdd(r) | DispatchOn::M2mRemove(r) | DispatchOn::M2mClear(r) => r,
            _ => "",
        };
        serde_json::json!({ "relation": relation, "related": related })
    }

    /// The events that fire on `on` and whose filters pass for `new`
    /// (and `old`).
    fn firing<'s, 'r>(
        &'s self,
        on: DispatchOn,
        new: &'r M,
        old: Option<&'r M>,
    ) -> impl Iterator<Item = &'s ModelEvent<M>> + use<'s, 'r, M> {
        self.events
            .iter()
            .filter(move |e| e.dispatches_on == on && e.matches(new, old))
    }

    fn dispatch_with_context(
        &self,
        thorn: &Thorn,
        on: DispatchOn,
        new: &M,
        old: Option<&M>,
        context: Option<Value>,
    ) -> Vec<Fired<'_, M>> {
        self.firing(on, new, old)
            .map(|e| Fired {
                event: e,
                result: e.send_with_context(thorn, new, context.clone()),
            })
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

/// Used by derived code: a model's payload as the message's `data`. A
/// payload function that returns a `serde_json::Value` is used as it is
/// (an inherent method, found first); anything else `Serialize` goes
/// through `serde_json::to_value`.
#[doc(hidden)]
pub mod payload_probe {
    use serde::Serialize;
    use serde_json::Value;

    pub struct Payload<T>(pub T);

    impl Payload<Value> {
        pub fn into_payload(self) -> Result<Value, serde_json::Error> {
            Ok(self.0)
        }
    }

    pub trait ViaSerialize {
        fn into_payload(self) -> Result<Value, serde_json::Error>;
    }

    impl<T: Serialize> ViaSerialize for Payload<T> {
        fn into_payload(self) -> Result<Value, serde_json::Error> {
            serde_json::to_value(self.0)
        }
    }
}

/// Used by derived code: a model's [`AbsoluteUrl`] when it has one, else
/// nothing (autoref specialization, resolved at compile time).
#[doc(hidden)]
pub mod url_probe {
    use super::AbsoluteUrl;

    pub struct UrlProbe<'a, T>(pub &'a T);

    pub trait ViaAbsoluteUrl {
        fn probe_url(&self) -> Option<String>;
    }
    impl<T: AbsoluteUrl> ViaAbsoluteUrl for UrlProbe<'_, T> {
        fn probe_url(&self) -> Option<String> {
            Some(self.0.absolute_url())
        }
    }

    pub trait ViaNoUrl {
        fn probe_url(&self) -> Option<String>;
    }
    impl<T> ViaNoUrl for &UrlProbe<'_, T> {
        fn probe_url(&self) -> Option<String> {
            None
        }
    }
}
