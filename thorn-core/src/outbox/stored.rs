//! Events as the outbox stores them.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::dispatch::OutgoingEvent;
use crate::outbox::now_micros;
use crate::retry::{Backoff, RetryPolicy};
use crate::subscriber::{SenderId, Subscriber};
use crate::{Error, Result};

/// An event as the outbox stores it: everything needed to deliver it in
/// another process. Subscriber callbacks of `send` and per-event
/// validators are code and stay behind: workers use the configured
/// validators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Event id (UUIDv7: ordered by creation).
    pub id: Uuid,
    /// Event name.
    pub name: String,
    /// The message (`{"event", "ref", "sender", "data"}`).
    pub message: Value,
    /// Who sent it (selects owner-scoped subscribers).
    pub sender: Option<SenderId>,
    /// How to send it.
    pub options: StoredOptions,
    /// When it was written (µs since the epoch).
    pub created_at: i64,
}

/// The sending options of a [`StoredEvent`] (stored as one JSON column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOptions {
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Retry policy.
    pub retry: StoredRetry,
    /// Reuse connections.
    #[serde(default = "yes")]
    pub keepalive: bool,
    /// Subscribers the event itself added. Stored as their uuids
    /// ([`StoredOptions::recipients`]) and a `recipient_only` row each in
    /// `thorn_subscribers`, never in the event: their secrets stay there.
    /// (Events written before read back with them inline.)
    #[serde(default, skip_serializing)]
    pub subscribers: Vec<Subscriber>,
    /// The uuids of [`StoredOptions::subscribers`], as stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Uuid>,
    /// Context for subscriber callbacks of the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

fn yes() -> bool {
    true
}

/// A [`RetryPolicy`] as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRetry {
    /// Retry at all.
    pub enabled: bool,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Base wait, milliseconds.
    pub delay_ms: u64,
    /// Exponential backoff cap in milliseconds; `None` for fixed waits.
    pub backoff_max_ms: Option<u64>,
    /// Jitter of exponential backoff.
    #[serde(default)]
    pub jitter: bool,
    /// Upper bound for `Retry-After`, milliseconds.
    pub max_retry_after_ms: u64,
    /// The waits of a schedule, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_ms: Option<Vec<u64>>,
    /// The spread of a schedule's waits (a fraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_jitter: Option<f64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<RetryPolicy> for StoredRetry {
    fn from(p: RetryPolicy) -> Self {
        let (backoff_max_ms, jitter) = match p.backoff {
            Backoff::Exponential { max, jitter } => (Some(millis(max)), jitter),
            _ => (None, false),
        };
        let (schedule_ms, schedule_jitter) = match &p.backoff {
            Backoff::Schedule { delays, jitter } => (
                Some(delays.iter().map(|d| millis(*d)).collect()),
                Some(*jitter),
            ),
            _ => (None, None),
        };
        StoredRetry {
            enabled: p.enabled,
            max_retries: p.max_retries,
            delay_ms: millis(p.retry_delay),
            backoff_max_ms,
            jitter,
            max_retry_after_ms: millis(p.max_retry_after),
            schedule_ms,
            schedule_jitter,
        }
    }
}

impl From<StoredRetry> for RetryPolicy {
    fn from(s: StoredRetry) -> Self {
        RetryPolicy {
            enabled: s.enabled,
            max_retries: s.max_retries,
            retry_delay: Duration::from_millis(s.delay_ms),
            backoff: match (s.schedule_ms, s.backoff_max_ms) {
                (Some(delays), _) => Backoff::schedule(
                    delays
                        .into_iter()
                        .map(Duration::from_millis)
                        .collect::<Vec<_>>(),
                    s.schedule_jitter.unwrap_or(0.0),
                ),
                (None, Some(max)) => Backoff::Exponential {
                    max: Duration::from_millis(max),
                    jitter: s.jitter,
                },
                (None, None) => Backoff::Fixed,
            },
            max_retry_after: Duration::from_millis(s.max_retry_after_ms),
        }
    }
}

impl StoredEvent {
    /// The stored form of `outgoing`, with a new UUIDv7.
    ///
    /// Fails when a header value is not UTF-8 text (it could not be stored
    /// faithfully); the error names the event and the header.
    pub fn from_outgoing(outgoing: OutgoingEvent) -> Result<Self> {
        let mut headers = Vec::with_capacity(outgoing.headers.len());
        for (name, value) in &outgoing.headers {
            let value = std::str::from_utf8(value.as_bytes()).map_err(|_| Error::Header {
                event: outgoing.event.to_string(),
                name: name.as_str().to_owned(),
                reason: "the value is not UTF-8 text and cannot be stored in the outbox",
            })?;
            headers.push((name.as_str().to_owned(), value.to_owned()));
        }
        Ok(StoredEvent {
            id: Uuid::now_v7(),
            name: outgoing.event.to_string(),
            message: outgoing.message.into_value(),
            sender: outgoing.sender,
            options: StoredOptions {
                headers,
                timeout_ms: millis(outgoing.timeout),
                retry: outgoing.outbox_retry.into(),
                keepalive: outgoing.keepalive,
                recipients: outgoing.extra_subscribers.iter().map(|s| s.uuid).collect(),
                subscribers: outgoing.extra_subscribers,
                context: outgoing.context,
            },
            created_at: now_micros(),
        })
    }

    /// The message as the JSON text the outbox column holds.
    pub fn message_json(&self) -> String {
        serde_json::to_string(&self.message).expect("a serde_json::Value always serializes")
    }

    /// The sender as the JSON text the outbox column holds.
    pub fn sender_json(&self) -> Option<String> {
        self.sender
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("sender ids are JSON"))
    }

    /// The options as the JSON text the outbox column holds: per-event
    /// subscribers by uuid only.
    pub fn options_json(&self) -> String {
        let missing = |s: &&Subscriber| !self.options.recipients.contains(&s.uuid);
        if self.options.subscribers.iter().any(|s| missing(&s)) {
            let mut options = self.options.clone();
            let more: Vec<Uuid> = self
                .options
                .subscribers
                .iter()
                .filter(missing)
                .map(|s| s.uuid)
                .collect();
            options.recipients.extend(more);
            return serde_json::to_string(&options).expect("options are JSON");
        }
        serde_json::to_string(&self.options).expect("options are JSON")
    }

    /// Rebuilds an event from its columns; errors name the column.
    pub fn from_columns(
        id: &str,
        name: String,
        message: &str,
        sender: Option<&str>,
        options: &str,
        created_at: i64,
    ) -> Result<Self> {
        let bad =
            |what, e: &dyn std::fmt::Display| crate::schema::corrupt("thorn_events", id, what, e);
        Ok(StoredEvent {
            id: Uuid::parse_str(id).map_err(|e| bad("id", &e))?,
            name,
            message: serde_json::from_str(message).map_err(|e| bad("message", &e))?,
            sender: sender
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| bad("sender", &e))?,
            options: serde_json::from_str(options).map_err(|e| bad("options", &e))?,
            created_at,
        })
    }

    /// The event's own recipients that take events from its sender.
    pub(crate) fn own_recipients(&self) -> impl Iterator<Item = &Subscriber> {
        self.options
            .subscribers
            .iter()
            .filter(|s| s.accepts_sender(self.sender.as_ref()))
    }

    pub(crate) fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.options.headers.len());
        for (k, v) in &self.options.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v)) {
                map.append(k, v);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policies_survive_storage() {
        for policy in [
            RetryPolicy::default(),
            RetryPolicy::never(),
            RetryPolicy {
                backoff: Backoff::Exponential {
                    max: Duration::from_secs(90),
                    jitter: false,
                },
                retry_delay: Duration::from_millis(250),
                ..RetryPolicy::default()
            },
            RetryPolicy::outbox_default(),
        ] {
            let stored = StoredRetry::from(policy.clone());
            let json = serde_json::to_string(&stored).unwrap();
            let back: StoredRetry = serde_json::from_str(&json).unwrap();
            assert_eq!(RetryPolicy::from(back), policy);
        }
    }
}
