//! The one error type of `thorn-core`.

use std::time::Duration;

use crate::codec::ContentType;

/// Everything that can go wrong between "an event is sent" and "the receiver
/// answered".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event's payload could not be turned into a message body: a
    /// `Serialize` implementation failed, a map had non-string keys, or the
    /// codec cannot represent the value.
    #[error("cannot encode the payload of event `{event}` as {content_type}: {source}")]
    Encode {
        /// Name of the event whose payload failed.
        event: String,
        /// The content type that was being produced.
        content_type: ContentType,
        /// What the encoder reported.
        #[source]
        source: serde_json::Error,
    },

    /// A recipient URL was refused by a recipient validator. Never retried.
    #[error(transparent)]
    Security(#[from] SecurityError),

    /// A subscriber URL could not be parsed.
    #[error("invalid subscriber URL `{url}`: {source}")]
    InvalidUrl {
        /// The text that was given.
        url: String,
        /// What the URL parser reported.
        #[source]
        source: url::ParseError,
    },

    /// A configuration value (from code or a `THORN_*` variable) is invalid.
    #[error("invalid configuration for {key}: {message}")]
    Config {
        /// The setting, e.g. `THORN_EVENT_TIMEOUT`.
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// The subscriber store could not be read.
    #[error("subscriber store failed: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The HTTP request could not be completed (connection refused or reset,
    /// TLS failure, ...).
    #[error("request to {url} failed: {source}")]
    Http {
        /// The recipient.
        url: String,
        /// What the HTTP client reported.
        #[source]
        source: reqwest::Error,
    },

    /// The recipient did not answer within the event's timeout.
    #[error("request to {url} timed out after {after:?}")]
    Timeout {
        /// The recipient.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },

    /// The recipient answered with a status outside 2xx.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The recipient.
        url: String,
        /// The HTTP status code.
        status: u16,
    },

    /// A buffer was disabled while it still held events; flush it first.
    #[error("cannot disable the event buffer: {pending} event(s) are still held (flush first)")]
    BufferNotEmpty {
        /// Events still held.
        pending: usize,
    },

    /// The dispatcher was shut down before the delivery finished.
    #[error("the dispatcher shut down before the delivery finished")]
    DispatcherClosed,
}

/// A recipient URL was blocked by a validator: names the URL and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipient {url} blocked: {rule}")]
pub struct SecurityError {
    /// The URL (or `host:port` for resolved addresses) that was refused.
    pub url: String,
    /// The rule that refused it, e.g. `block_internal_ips: 127.0.0.1 is loopback`.
    pub rule: String,
}

/// Shorthand for `Result<T, thorn_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
