//! One delivery: one signed HTTP POST of one event to one subscriber, and
//! the attempts it takes.
//!
//! Every attempt carries Thorn's headers:
//!
//! | header | value |
//! |---|---|
//! | `Hook-Event` | the event name |
//! | `Hook-Delivery` | the delivery's id (UUIDv7), the same for every attempt |
//! | `Hook-HMAC` | signature of the exact body with the subscriber's secret |
//! | `Hook-Subscription` | the subscriber's uuid |
//! | `User-Agent` | `Mozilla/5.0 (compatible; thorn/<version>; reqwest/0.13)` |
//! | `Content-Type` | the subscriber's content type |
//!
//! and, when Standard Webhooks are on for the subscriber, `webhook-id`
//! (= `Hook-Delivery`), `webhook-timestamp` and `webhook-signature`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use url::Url;
use uuid::Uuid;

use crate::error::DeliveryError;
use crate::retry::AttemptVerdict;
use crate::subscriber::Subscriber;

/// Header names Thorn sends.
pub mod headers {
    /// Name of the event.
    pub const HOOK_EVENT: &str = "hook-event";
    /// Unique id of the delivery, the same for every attempt.
    pub const HOOK_DELIVERY: &str = "hook-delivery";
    /// Signature of the body.
    pub const HOOK_HMAC: &str = "hook-hmac";
    /// The subscriber's uuid.
    pub const HOOK_SUBSCRIPTION: &str = "hook-subscription";
    /// Standard Webhooks: the message id (the delivery id).
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// Standard Webhooks: seconds since the Unix epoch at sending.
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// Standard Webhooks: `v1,<base64>` signatures, space-separated.
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
}

/// One event for one subscriber, ready to POST.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Unique id, sent as `Hook-Delivery` on every attempt.
    pub id: Uuid,
    /// Event name, sent as `Hook-Event`.
    pub event: Arc<str>,
    /// The recipient.
    pub subscriber: Subscriber,
    /// The encoded body, in the subscriber's content type.
    pub body: Bytes,
    /// Extra headers from the event (a model's `headers` callback).
    pub headers: HeaderMap,
    /// Request timeout.
    pub timeout: Duration,
    /// Reuse the connection afterwards (`allow_keepalive`).
    pub keepalive: bool,
    /// Add Standard Webhooks headers.
    pub standard_webhooks: bool,
}

/// What one attempt, or a whole delivery, came to.
#[derive(Debug)]
#[non_exhaustive]
pub struct DeliveryOutcome {
    /// The delivery's id (`Hook-Delivery`).
    pub delivery_id: Uuid,
    /// The event name.
    pub event: Arc<str>,
    /// The subscriber's uuid.
    pub subscriber: Uuid,
    /// Where it was sent.
    pub url: Url,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// The response status (2xx) or what went wrong.
    pub result: std::result::Result<u16, DeliveryError>,
    /// Time of the last attempt, from request start to the end of the
    /// response.
    pub elapsed: Duration,
}

impl DeliveryOutcome {
    /// True when the receiver answered 2xx.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }

    /// True when the attempt timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.result, Err(DeliveryError::Timeout { .. }))
    }
}

/// One attempt: its outcome and what it means for the delivery.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The outcome.
    pub outcome: DeliveryOutcome,
    /// Retry, give up, or done.
    pub verdict: AttemptVerdict,
    /// The first bytes of the response body (up to [`RESPONSE_HEAD`]),
    /// empty when there was no response.
    pub response_head: Bytes,
}

/// How much of a response body an [`Attempt`] keeps.
pub(crate) const RESPONSE_HEAD: usize = 256;

/// Called with the outcome of a delivery attempt.
pub type Callback = Arc<dyn Fn(&DeliveryOutcome) + Send + Sync>;

/// Callbacks of one `send`, each called once per HTTP attempt of each
/// delivery: `on_success` when the receiver answered 2xx, `on_timeout` when
/// the attempt timed out, `on_error` for every other failed attempt
/// (including those that will be retried).
#[derive(Clone, Default)]
pub struct Callbacks {
    /// A delivery succeeded.
    pub on_success: Option<Callback>,
    /// An attempt failed (not a timeout).
    pub on_error: Option<Callback>,
    /// An attempt timed out.
    pub on_timeout: Option<Callback>,
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks")
            .field("on_success", &self.on_success.is_some())
            .field("on_error", &self.on_error.is_some())
            .field("on_timeout", &self.on_timeout.is_some())
            .finish()
    }
}

impl Callbacks {
    /// Calls the callback that fits `outcome`.
    pub fn fire(&self, outcome: &DeliveryOutcome) {
        let callback = match &outcome.result {
            Ok(_) => &self.on_success,
            Err(DeliveryError::Timeout { .. }) => &self.on_timeout,
            Err(_) => &self.on_error,
        };
        if let Some(cb) = callback {
            cb(outcome);
        }
    }
}

mod client;

pub(crate) use client::HttpClient;
