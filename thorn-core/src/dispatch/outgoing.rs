//! [`OutgoingEvent`]: an event on its way to the dispatcher, its message kept
//! in parts until a subscriber's content type asks for a body.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::codec::ContentType;
use crate::delivery::Callbacks;
use crate::retry::RetryPolicy;
use crate::subscriber::{SenderId, Subscriber};
use crate::validate::Validators;

/// The message of an [`OutgoingEvent`].
#[derive(Debug, Clone)]
pub(crate) enum Message {
    /// Any JSON value (`Event::send`).
    Value(Value),
    /// Thorn's model message, kept in its parts until it is encoded: no
    /// map is built for it on the writer's thread.
    Model(ModelMessage),
}

/// `{"event": ..., "ref": ..., "sender": ..., "data": ...}`, serialized in
/// that order, as the map it stands for.
#[derive(Debug, Clone)]
pub(crate) struct ModelMessage {
    pub(crate) event: Arc<str>,
    pub(crate) reference: Option<String>,
    pub(crate) sender: Option<SenderId>,
    pub(crate) data: Value,
}

impl serde::Serialize for ModelMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("Message", 4)?;
        m.serialize_field("event", &*self.event)?;
        m.serialize_field("ref", &self.reference)?;
        m.serialize_field("sender", &self.sender)?;
        m.serialize_field("data", &self.data)?;
        m.end()
    }
}

impl Message {
    fn to_value(&self) -> std::borrow::Cow<'_, Value> {
        match self {
            Message::Value(v) => std::borrow::Cow::Borrowed(v),
            Message::Model(m) => std::borrow::Cow::Owned(m.clone().into_value()),
        }
    }

    pub(crate) fn into_value(self) -> Value {
        match self {
            Message::Value(v) => v,
            Message::Model(m) => m.into_value(),
        }
    }
}

impl ModelMessage {
    pub(super) fn into_value(self) -> Value {
        let mut m = serde_json::Map::with_capacity(4);
        m.insert("event".into(), Value::String(self.event.to_string()));
        m.insert(
            "ref".into(),
            self.reference.map_or(Value::Null, Value::String),
        );
        m.insert(
            "sender".into(),
            self.sender.map_or(Value::Null, |s| {
                serde_json::to_value(s).expect("sender ids are JSON")
            }),
        );
        m.insert("data".into(), self.data);
        Value::Object(m)
    }
}

/// One event on its way out: the message and how to send it. Built by
/// [`crate::Event::send`] and by model events.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    /// Event name.
    pub event: Arc<str>,
    /// The message, before encoding.
    pub(crate) message: Message,
    /// The JSON encoding of `message`, made once, when first needed (by
    /// the dispatcher, off the writer's thread).
    pub(crate) json: std::sync::OnceLock<Bytes>,
    /// Who sent it (selects owner-scoped subscribers).
    pub sender: Option<SenderId>,
    /// Context for subscriber callbacks.
    pub context: Option<Value>,
    /// Request timeout.
    pub timeout: std::time::Duration,
    /// Extra HTTP headers.
    pub headers: HeaderMap,
    /// Subscribers added by the event itself.
    pub extra_subscribers: Vec<Subscriber>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Retry policy through the outbox.
    pub(crate) outbox_retry: RetryPolicy,
    /// Reuse connections.
    pub keepalive: bool,
    /// Validators of the event, if not the configured ones.
    pub validators: Option<Validators>,
    /// Per-attempt callbacks.
    pub callbacks: Callbacks,
}

impl OutgoingEvent {
    /// The message, before encoding.
    pub fn message(&self) -> std::borrow::Cow<'_, Value> {
        self.message.to_value()
    }

    /// The message, taken out.
    pub fn into_message(self) -> Value {
        self.message.into_value()
    }

    /// The JSON encoding of the message, made on first use and shared.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| match &self.message {
            Message::Value(v) => Bytes::from(ContentType::Json.encode(v)),
            Message::Model(m) => {
                Bytes::from(serde_json::to_vec(m).expect("a model message always serializes"))
            }
        })
    }

    /// The body for a content type (JSON is encoded once and shared).
    pub fn body(&self, content_type: ContentType) -> Bytes {
        match content_type {
            ContentType::Json => self.json().clone(),
            other => Bytes::from(other.encode(&self.message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_message_encodes_as_the_map_it_stands_for() {
        for (reference, sender) in [
            (None, None),
            (Some("/a/1/".to_owned()), Some(SenderId::from(7))),
            (
                Some("https://x.example/a/1/".to_owned()),
                Some(SenderId::from("alice")),
            ),
        ] {
            let parts = ModelMessage {
                event: Arc::from("a.created"),
                reference,
                sender,
                data: serde_json::json!({"id": 1, "tags": ["x"], "ok": true}),
            };
            let direct = serde_json::to_vec(&parts).unwrap();
            let via_map = ContentType::Json.encode(&parts.into_value());
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(via_map).unwrap()
            );
        }
    }
}
