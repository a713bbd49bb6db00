//! The bodies the API reads and writes, as serde types; the OpenAPI
//! document ([`crate::Api::openapi`]) is generated from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use thorn_core::ContentType;
use thorn_core::HmacDigest;
use thorn_core::outbox::DeliveryState;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::FieldErrors;

/// Every error answer: what went wrong, and for invalid input the
/// messages of each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub detail: String,
    /// For a 400 about the body's fields: messages by field name (an
    /// unknown field is named too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldErrors>,
}

/// How a subscription's deliveries are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ContentTypeName {
    /// JSON.
    #[serde(rename = "application/json")]
    Json,
    /// An HTML form's encoding.
    #[serde(rename = "application/x-www-form-urlencoded")]
    FormUrlEncoded,
}

impl From<ContentTypeName> for ContentType {
    fn from(name: ContentTypeName) -> Self {
        match name {
            ContentTypeName::Json => ContentType::Json,
            ContentTypeName::FormUrlEncoded => ContentType::FormUrlEncoded,
        }
    }
}

impl From<ContentType> for ContentTypeName {
    fn from(ct: ContentType) -> Self {
        match ct {
            ContentType::FormUrlEncoded => ContentTypeName::FormUrlEncoded,
            _ => ContentTypeName::Json,
        }
    }
}

/// The hash of a subscription's HMAC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DigestName {
    /// SHA-1 (for old receivers).
    Sha1,
    /// SHA-256, the default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl From<DigestName> for HmacDigest {
    fn from(name: DigestName) -> Self {
        match name {
            DigestName::Sha1 => HmacDigest::Sha1,
            DigestName::Sha256 => HmacDigest::Sha256,
            DigestName::Sha512 => HmacDigest::Sha512,
        }
    }
}

impl From<HmacDigest> for DigestName {
    fn from(d: HmacDigest) -> Self {
        match d {
            HmacDigest::Sha1 => DigestName::Sha1,
            HmacDigest::Sha512 => DigestName::Sha512,
            _ => DigestName::Sha256,
        }
    }
}

/// A present field must have a value: `null` is an error, not "left out".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The fields a request sets: all of them to subscribe (`event` and `url`
/// required), those it names to change a subscription. A field sent as
/// `null` is an error; the fields a subscription is shown with that
/// cannot be set (`id`, `user`, ...) are accepted and ignored, so a
/// client may send back what it read; any other field is an error naming
/// it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[schema(as = SubscriptionChange)]
pub struct SubscriptionFields {
    /// The event pattern: `article.created`, `article.*`, `*.created`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    // What `validate_pattern` accepts: `*` alone, or dot-separated words
    // of `[A-Za-z0-9_-]` with `*` as the first or the last word (surrounding
    // whitespace is trimmed, as Django's fields trim it).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^\s*(\*|\*(\.[A-Za-z0-9_-]+)+|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)\s*$"
    )]
    pub event: Option<String>,
    /// Where deliveries are posted (the recipient rules apply).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    #[schema(format = "uri", max_length = 2048)]
    pub url: Option<String>,
    /// How deliveries are encoded (default `application/json`).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub content_type: Option<ContentTypeName>,
    /// The signing secret: 1 to 255 printable characters (default: 64
    /// random ones).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub hmac_secret: Option<String>,
    /// The signature's hash (default `sha256`).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub hmac_digest: Option<DigestName>,
    /// `false` pauses the subscription, `true` resumes it (also after
    /// Thorn disabled it).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub active: Option<bool>,
    /// Every other field, checked after parsing.
    #[serde(flatten)]
    #[schema(ignore)]
    pub(crate) other: BTreeMap<String, Value>,
}

/// The fields a subscription is shown with that requests cannot set.
pub(crate) const READ_ONLY: [&str; 7] = [
    "id",
    "user",
    "created_at",
    "updated_at",
    "subscription",
    "disabled_at",
    "disabled_reason",
];

/// The fields a request may set.
pub(crate) const WRITABLE: [&str; 6] = [
    "event",
    "url",
    "content_type",
    "hmac_secret",
    "hmac_digest",
    "active",
];

/// A subscription, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    /// Its uuid.
    pub id: Uuid,
    /// The event pattern.
    pub event: String,
    /// Where deliveries are posted.
    #[schema(format = "uri")]
    pub url: String,
    /// How deliveries are encoded.
    pub content_type: ContentTypeName,
    /// The signing secret.
    pub hmac_secret: String,
    /// The signature's hash.
    pub hmac_digest: DigestName,
    /// Its owner, as the application names users.
    #[schema(value_type = Value)]
    pub user: Value,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it last changed (RFC 3339).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Its URL in this API: `DELETE` it to unsubscribe.
    #[schema(format = "uri")]
    pub subscription: String,
    /// False while paused, or disabled by Thorn.
    pub active: bool,
    /// Since when it is paused or disabled.
    #[schema(format = DateTime)]
    pub disabled_at: Option<String>,
    /// Why it is paused or disabled.
    pub disabled_reason: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStateName {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Failed for good (redeliver or recover it).
    Dead,
    /// Not sent: its subscription was deleted first.
    Cancelled,
}

impl From<DeliveryStateName> for DeliveryState {
    fn from(name: DeliveryStateName) -> Self {
        match name {
            DeliveryStateName::Pending => DeliveryState::Pending,
            DeliveryStateName::Delivered => DeliveryState::Delivered,
            DeliveryStateName::Dead => DeliveryState::Dead,
            DeliveryStateName::Cancelled => DeliveryState::Cancelled,
        }
    }
}

impl From<DeliveryState> for DeliveryStateName {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => DeliveryStateName::Pending,
            DeliveryState::Delivered => DeliveryStateName::Delivered,
            DeliveryState::Dead => DeliveryStateName::Dead,
            _ => DeliveryStateName::Cancelled,
        }
    }
}

/// One delivery of an event to a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Its id: the `Hook-Delivery` header of every attempt.
    pub id: Uuid,
    /// The event's name.
    pub event: String,
    /// The event's id.
    pub event_id: Uuid,
    /// Where it stands.
    pub state: DeliveryStateName,
    /// Attempts made.
    pub attempts: i32,
    /// The URL at the time it was created.
    pub url: String,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the next attempt is due, while pending.
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// The HTTP status of the last attempt, when it got an answer.
    pub last_status: Option<i32>,
    /// What went wrong in the last attempt.
    pub last_error: Option<String>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: i32,
    /// When it started (RFC 3339).
    #[schema(format = DateTime)]
    pub started_at: String,
    /// The HTTP status, when the receiver answered.
    pub status: Option<i32>,
    /// Request start to end of response, milliseconds.
    pub latency_ms: f64,
    /// What went wrong.
    pub error: Option<String>,
    /// The first bytes of the response body.
    pub response: Option<String>,
}

/// A delivery with every attempt, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its attempts, oldest first.
    pub history: Vec<Attempt>,
}

/// A page of a subscription's deliveries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    pub deliveries: Vec<Delivery>,
    /// The next page, when there may be one.
    #[schema(format = "uri")]
    pub next: Option<String>,
}

/// Which failed deliveries to send again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Dead deliveries created at or after this time (RFC 3339).
    #[schema(format = DateTime)]
    pub since: String,
    /// And before this time (RFC 3339; default now).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// The deliveries an action scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryIds {
    /// Their ids, due at once.
    pub deliveries: Vec<Uuid>,
}

/// An event subscribers can ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventTypeInfo {
    /// The event's name.
    pub name: String,
    /// The model that sends it.
    pub model: Option<String>,
    /// What makes it fire: `create`, `change`, `delete`, `m2m_add(tags)`...
    pub fires_on: String,
}
