//! Subscribers from configuration: fixed ones and callbacks, keyed by
//! event pattern (`THORN_SUBSCRIBERS`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{MemoryStore, SenderId, Subscriber, pattern_matches};
use crate::{Error, Result};

/// What a subscriber callback is asked: the event, its sender, and the
/// context given to `send`.
#[derive(Debug, Clone, Copy)]
pub struct SubscriberQuery<'a> {
    /// The event name.
    pub event: &'a str,
    /// The sender, if any.
    pub sender: Option<&'a SenderId>,
    /// Extra context passed to `send` ([`crate::SendOptions::context`]).
    pub context: Option<&'a Value>,
}

/// A function returning subscribers for an event, accepted wherever static
/// subscribers are (configuration and [`crate::Event::with_subscriber_callback`]).
pub type SubscriberCallback = Arc<dyn Fn(&SubscriberQuery<'_>) -> Vec<Subscriber> + Send + Sync>;

/// Subscribers from configuration (Thorn's `THORN_SUBSCRIBERS`): fixed
/// subscribers and callbacks, keyed by event pattern.
///
/// ```
/// use thorn_core::subscriber::StaticSubscribers;
///
/// let subs = StaticSubscribers::from_json(r#"{
///     "user.created": "https://example.com/e/on_user_created",
///     "address.changed": {"url": "https://foo.example.com/e/address_change",
///                         "content_type": "application/x-www-form-urlencoded"},
///     "balance.negative": ["https://a.example.com/e", "https://b.example.com/e"]
/// }"#).unwrap();
/// assert_eq!(subs.matching("balance.negative", None).len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct StaticSubscribers {
    fixed: Arc<MemoryStore>,
    callbacks: Vec<(String, SubscriberCallback)>,
}

impl fmt::Debug for StaticSubscribers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticSubscribers")
            .field("fixed", &self.fixed)
            .field(
                "callbacks",
                &self.callbacks.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SpecOrList {
    One(Spec),
    Many(Vec<Spec>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Spec {
    Url(String),
    Full {
        url: String,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        hmac_secret: Option<String>,
        #[serde(default)]
        hmac_digest: Option<String>,
    },
}

impl StaticSubscribers {
    /// No static subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one URL for an event pattern, with a random secret.
    pub fn url(self, pattern: &str, url: &str) -> Result<Self> {
        let subscriber = Subscriber::new(pattern, url)?;
        Ok(self.subscriber(subscriber))
    }

    /// Adds a fully configured subscriber. Its uuid is replaced by one
    /// derived from its pattern and URL, so `Hook-Subscription` stays the
    /// same across restarts.
    pub fn subscriber(self, mut subscriber: Subscriber) -> Self {
        let name = format!("{} {}", subscriber.event, subscriber.url);
        subscriber.uuid = Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes());
        self.fixed.add(subscriber);
        self
    }

    /// Adds a callback consulted for events matching `pattern`.
    pub fn callback<F>(mut self, pattern: &str, f: F) -> Self
    where
        F: Fn(&SubscriberQuery<'_>) -> Vec<Subscriber> + Send + Sync + 'static,
    {
        self.callbacks.push((pattern.to_owned(), Arc::new(f)));
        self
    }

    /// Parses the JSON form of `THORN_SUBSCRIBERS`: an object from event
    /// pattern to a URL, an object with `url` and optional `content_type`,
    /// `hmac_secret` and `hmac_digest`, or a list of these.
    pub fn from_json(text: &str) -> Result<Self> {
        let config_err = |message: String| Error::Config {
            key: "THORN_SUBSCRIBERS".into(),
            message,
        };
        let map: HashMap<String, Value> =
            serde_json::from_str(text).map_err(|e| config_err(e.to_string()))?;
        let mut out = StaticSubscribers::new();
        for (pattern, value) in map {
            let specs = match serde_json::from_value::<SpecOrList>(value) {
                Ok(SpecOrList::One(s)) => vec![s],
                Ok(SpecOrList::Many(v)) => v,
                Err(_) => {
                    return Err(config_err(format!(
                        "`{pattern}`: expected a URL, an object with `url`, or a list of these"
                    )));
                }
            };
            for spec in specs {
                out = match spec {
                    Spec::Url(url) => out.url(&pattern, &url)?,
                    Spec::Full {
                        url,
                        content_type,
                        hmac_secret,
                        hmac_digest,
                    } => {
                        let mut s = Subscriber::new(pattern.as_str(), &url)?;
                        if let Some(ct) = content_type {
                            s.content_type = ct
                                .parse()
                                .map_err(|e| config_err(format!("`{pattern}`: {e}")))?;
                        }
                        if let Some(d) = hmac_digest {
                            s.hmac_digest = d
                                .parse()
                                .map_err(|e| config_err(format!("`{pattern}`: {e}")))?;
                        }
                        if let Some(secret) = hmac_secret {
                            s.hmac_secret = secret.into();
                        }
                        out.subscriber(s)
                    }
                };
            }
        }
        Ok(out)
    }

    /// True when there is nothing configured.
    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty() && self.fixed.is_empty()
    }

    /// The static and callback subscribers for `event` sent by `sender`.
    pub fn matching(&self, event: &str, sender: Option<&SenderId>) -> Vec<Subscriber> {
        self.query(&SubscriberQuery {
            event,
            sender,
            context: None,
        })
    }

    /// The static and callback subscribers for a query (callbacks see its
    /// context).
    pub fn query(&self, q: &SubscriberQuery<'_>) -> Vec<Subscriber> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut found = self.fixed.matching(q.event, q.sender);
        for (pattern, callback) in &self.callbacks {
            if pattern_matches(pattern, q.event) {
                found.extend(
                    callback(q)
                        .into_iter()
                        .filter(|s| s.accepts_sender(q.sender)),
                );
            }
        }
        found
    }
}
