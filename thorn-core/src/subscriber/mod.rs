//! Subscribers: who receives which events, and where they come from.
//!
//! A [`Subscriber`] holds an event pattern and a URL. Patterns follow
//! Thorn's matching, which is four exact lookups rather than a general glob:
//! a pattern matches event `E` when it is `*`, `E` itself, `<first segment
//! of E>.*`, or `*.<everything after the first dot of E>`.
//!
//! ```
//! use thorn_core::subscriber::pattern_matches;
//!
//! assert!(pattern_matches("article.*", "article.created"));
//! assert!(pattern_matches("article.*", "article.tag.added"));
//! assert!(pattern_matches("*.created", "article.created"));
//! assert!(!pattern_matches("*.created", "blog.article.created"));
//! ```
//!
//! Subscribers come from a [`SubscriberLookup`] (a database table, or the
//! in-memory [`MemoryStore`]) and from static configuration
//! ([`StaticSubscribers`], the `THORN_SUBSCRIBERS` setting), which also
//! accepts callbacks.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use url::Url;
use uuid::Uuid;

use crate::codec::ContentType;
use crate::signing::HmacDigest;
use crate::{Error, Result};

/// Who sent an event (a user id), and who owns a subscription.
///
/// Serialized as a JSON number or string in the message's `sender` field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum SenderId {
    /// A numeric user id.
    Int(i64),
    /// A textual user id (UUIDs are kept in their hyphenated form).
    Text(String),
}

impl fmt::Display for SenderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderId::Int(i) => write!(f, "{i}"),
            SenderId::Text(s) => f.write_str(s),
        }
    }
}

macro_rules! sender_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for SenderId {
            fn from(v: $t) -> Self { SenderId::Int(i64::from(v)) }
        }
    )*};
}
sender_from_int!(i8, i16, i32, i64, u8, u16, u32);

/// Text that spells an integer exactly as `i64` displays it (`"42"`, not
/// `"042"` or `"+42"`) becomes [`SenderId::Int`], so a user id read from a
/// header or a token matches the same id taken from an integer column.
impl From<String> for SenderId {
    fn from(v: String) -> Self {
        match v.parse::<i64>() {
            Ok(i) if i.to_string() == v => SenderId::Int(i),
            _ => SenderId::Text(v),
        }
    }
}
/// As `From<String>`: canonical integers become [`SenderId::Int`].
impl From<&str> for SenderId {
    fn from(v: &str) -> Self {
        SenderId::from(v.to_owned())
    }
}

/// A JSON number or string; strings are read as `From<String>` reads
/// them, so `"42"` in configuration is the sender 42.
impl<'de> Deserialize<'de> for SenderId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(i) => SenderId::Int(i),
            Raw::Text(s) => SenderId::from(s),
        })
    }
}
impl From<Uuid> for SenderId {
    fn from(v: Uuid) -> Self {
        SenderId::Text(v.hyphenated().to_string())
    }
}

mod cache;
mod directory;
mod memory;
mod pattern;
mod secret;
mod statics;
mod store;

pub use cache::{CacheControl, CacheStats, CachedStore, DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES};
pub use directory::Directory;
pub use memory::MemoryStore;
pub(crate) use pattern::candidate_patterns;
pub use pattern::{pattern_matches, validate_pattern};
pub use secret::Secret;
pub use statics::{StaticSubscribers, SubscriberCallback, SubscriberQuery};
pub use store::{BoxFuture, Replace, SubscriberLookup, SubscriptionStore};

/// One subscription: an event pattern, the URL to POST to, and how to sign
/// and encode what is sent.
///
/// Its `Debug` output hides the secrets and any password in the URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscriber {
    /// Unique id, sent as `Hook-Subscription`.
    pub uuid: Uuid,
    /// Event pattern: `article.created`, `article.*`, `*.created` or `*`.
    pub event: String,
    /// Where deliveries are POSTed.
    pub url: Url,
    /// When set, only events whose sender is this owner are delivered.
    pub owner: Option<SenderId>,
    /// Secret for the `Hook-HMAC` signature.
    pub hmac_secret: Secret,
    /// Hash function of the signature.
    pub hmac_digest: HmacDigest,
    /// Body format.
    pub content_type: ContentType,
    /// Earlier secrets still accepted by the receiver while it rotates to
    /// `hmac_secret`: each adds a Standard Webhooks signature.
    #[serde(default)]
    pub previous_secrets: Vec<Secret>,
    /// Send Standard Webhooks headers to this subscriber; `None` follows
    /// [`crate::Config::standard_webhooks`].
    #[serde(default)]
    pub standard_webhooks: Option<bool>,
    /// When the subscription was created.
    pub created_at: DateTime<Utc>,
    /// When the subscription last changed.
    pub updated_at: DateTime<Utc>,
    /// When the subscription was disabled — its owner paused it, its
    /// receiver answered `410 Gone`, or its deliveries kept failing —
    /// or `None` while it is active. A disabled subscription receives
    /// nothing.
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
    /// Why it was disabled.
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("uuid", &self.uuid)
            .field("event", &self.event)
            .field("url", &format_args!("{}", SafeUrl(&self.url)))
            .field("owner", &self.owner)
            .field("hmac_secret", &self.hmac_secret)
            .field("hmac_digest", &self.hmac_digest)
            .field("content_type", &self.content_type)
            .field("previous_secrets", &self.previous_secrets)
            .field("standard_webhooks", &self.standard_webhooks)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("disabled_at", &self.disabled_at)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

/// A URL as Thorn logs it: a password in it shows as `***`.
pub(crate) struct SafeUrl<'a>(pub(crate) &'a Url);

impl fmt::Display for SafeUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.password().is_none() {
            return fmt::Display::fmt(self.0, f);
        }
        let mut url = self.0.clone();
        let _ = url.set_password(Some("***"));
        fmt::Display::fmt(&url, f)
    }
}

impl Subscriber {
    /// A new subscription with a random uuid and a random 64-character
    /// secret, SHA-256 signatures and JSON bodies.
    ///
    /// Fails with [`Error::InvalidUrl`] when `url` does not parse.
    pub fn new(event: impl Into<String>, url: &str) -> Result<Self> {
        let url = Url::parse(url).map_err(|source| Error::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        let now = now_micros();
        Ok(Subscriber {
            uuid: Uuid::new_v4(),
            event: event.into(),
            url,
            owner: None,
            hmac_secret: Secret::generate(),
            hmac_digest: HmacDigest::default(),
            content_type: ContentType::default(),
            previous_secrets: Vec::new(),
            standard_webhooks: None,
            created_at: now,
            updated_at: now,
            disabled_at: None,
            disabled_reason: None,
        })
    }

    /// True unless the subscription is disabled.
    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none()
    }

    /// Disables the subscription now, saying why (a store must save it).
    pub fn disable(&mut self, reason: impl Into<String>) {
        self.disabled_at = Some(now_micros());
        self.disabled_reason = Some(reason.into());
    }

    /// Makes the subscription active again (a store must save it).
    pub fn enable(&mut self) {
        self.disabled_at = None;
        self.disabled_reason = None;
    }

    /// Set `updated_at` to now. Timestamps keep microsecond precision, the
    /// precision every supported database stores, so a subscriber read back
    /// from a store equals the one written.
    pub fn touch(&mut self) {
        self.updated_at = now_micros();
    }

    /// Sets the HMAC secret.
    pub fn with_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.hmac_secret = secret.into();
        self
    }

    /// Sets the HMAC digest.
    pub fn with_digest(mut self, digest: HmacDigest) -> Self {
        self.hmac_digest = digest;
        self
    }

    /// Sets the body format.
    pub fn with_content_type(mut self, content_type: ContentType) -> Self {
        self.content_type = content_type;
        self
    }

    /// Turns Standard Webhooks headers on or off for this subscriber.
    pub fn with_standard_webhooks(mut self, on: bool) -> Self {
        self.standard_webhooks = Some(on);
        self
    }

    /// Rotates to `secret`, keeping the current one valid for Standard
    /// Webhooks receivers until they switch.
    pub fn rotate_secret(mut self, secret: impl Into<Secret>) -> Self {
        let old = std::mem::replace(&mut self.hmac_secret, secret.into());
        self.previous_secrets.insert(0, old);
        self
    }

    /// Restricts the subscription to events sent by `owner`.
    pub fn with_owner(mut self, owner: impl Into<SenderId>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// True when this subscriber should receive `event` sent by `sender`:
    /// the pattern matches, and the subscriber has no owner or the owner is
    /// the sender.
    pub fn wants(&self, event: &str, sender: Option<&SenderId>) -> bool {
        pattern_matches(&self.event, event) && self.accepts_sender(sender)
    }

    /// Owner scoping alone: ownerless subscribers accept every sender.
    pub fn accepts_sender(&self, sender: Option<&SenderId>) -> bool {
        match &self.owner {
            None => true,
            Some(owner) => sender == Some(owner),
        }
    }
}

/// The current time truncated to microseconds (what PostgreSQL and the
/// text columns of the Diesel store keep).
fn now_micros() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_output_hides_secrets_and_url_passwords() {
        let mut s = super::Subscriber::new("a.*", "https://user:hunter2@example.com/hook").unwrap();
        s.previous_secrets.push("old-secret-value".into());
        let shown = format!("{s:?}");
        assert!(!shown.contains(s.hmac_secret.expose()), "{shown}");
        assert!(!shown.contains("old-secret-value"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("https://user:***@example.com/hook"),
            "{shown}"
        );
        let statics = super::StaticSubscribers::new().subscriber(s.clone());
        let config = crate::Config {
            subscribers: statics,
            ..crate::Config::default()
        };
        assert!(!format!("{config:?}").contains(s.hmac_secret.expose()));
    }

    use super::*;

    #[test]
    fn user_ids_spelled_as_text_match_integer_senders() {
        assert_eq!(SenderId::from("42"), SenderId::from(42));
        assert_eq!(SenderId::from("-7"), SenderId::Int(-7));
        for text in ["042", "+42", "42 ", "alice", "99999999999999999999", ""] {
            assert_eq!(
                SenderId::from(text),
                SenderId::Text(text.into()),
                "{text:?}"
            );
        }
        let parsed: SenderId = serde_json::from_str(r#""42""#).unwrap();
        assert_eq!(parsed, SenderId::Int(42));
        let mut sub = Subscriber::new("a.b", "https://example.com/").unwrap();
        sub.owner = Some(SenderId::from("42"));
        assert!(sub.accepts_sender(Some(&SenderId::from(42_i32))));
    }

    #[test]
    fn pattern_shapes() {
        for ok in [
            "*",
            "a",
            "a.b",
            "a.*",
            "*.b",
            "*.b.c",
            "a.b.*",
            "user-x.on_create",
        ] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a.*.c", "*.*", "a b", "a*", "*a", "é.x",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn candidate_patterns_are_the_four_lookups() {
        let all = |event| {
            let mut got = Vec::new();
            candidate_patterns(event, |p| got.push(p.to_owned()));
            got
        };
        assert_eq!(all("a.b.c"), ["*", "a.b.c", "a.*", "*.b.c"]);
        assert_eq!(all("plain"), ["*", "plain"]);
        for (pattern, event, matches) in [
            ("*", "a.b", true),
            ("a.b", "a.b", true),
            ("a.*", "a.b.c", true),
            ("*.b.c", "a.b.c", true),
            ("*.c", "a.b.c", false),
            ("b.*", "a.b", false),
            ("plain.*", "plain", false),
            ("*.plain", "plain", false),
        ] {
            assert_eq!(
                pattern_matches(pattern, event),
                matches,
                "{pattern} / {event}"
            );
        }
    }

    #[test]
    fn memory_store_finds_by_pattern_and_owner() {
        let store = MemoryStore::new();
        let all = Subscriber::new("article.*", "https://a.example/").unwrap();
        let mine = Subscriber::new("*.created", "https://b.example/")
            .unwrap()
            .with_owner(1);
        let other = Subscriber::new("user.created", "https://c.example/").unwrap();
        store.add(all.clone());
        store.add(mine.clone());
        store.add(other);
        let urls =
            |v: Vec<Subscriber>| v.into_iter().map(|s| s.url.to_string()).collect::<Vec<_>>();
        assert_eq!(
            urls(store.matching("article.created", None)),
            ["https://a.example/"]
        );
        assert_eq!(
            urls(store.matching("article.created", Some(&SenderId::Int(1)))),
            ["https://a.example/", "https://b.example/"]
        );
        assert!(store.remove(all.uuid));
        assert!(!store.remove(all.uuid));
        assert!(store.matching("article.changed", None).is_empty());
    }

    #[test]
    fn static_subscribers_from_json_with_options_and_errors() {
        let subs = StaticSubscribers::from_json(
            r#"{"a.b": {"url": "https://x.example/", "content_type": "application/x-www-form-urlencoded",
                        "hmac_secret": "s3", "hmac_digest": "sha512"}}"#,
        )
        .unwrap();
        let got = subs.matching("a.b", None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].content_type, ContentType::FormUrlEncoded);
        assert_eq!(got[0].hmac_digest, HmacDigest::Sha512);
        assert_eq!(got[0].hmac_secret.expose(), "s3");
        // Stable uuid across loads.
        let again =
            StaticSubscribers::from_json(r#"{"a.b": {"url": "https://x.example/"}}"#).unwrap();
        assert_eq!(again.matching("a.b", None)[0].uuid, got[0].uuid);

        let err = StaticSubscribers::from_json(r#"{"a.b": 42}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("THORN_SUBSCRIBERS") && err.contains("a.b"),
            "{err}"
        );
        let err = StaticSubscribers::from_json(r#"{"a.b": "not a url"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a url"), "{err}");
        let err =
            StaticSubscribers::from_json(r#"{"a.b": {"url": "https://x/", "hmac_digest": "md5"}}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("md5"), "{err}");
    }

    #[test]
    fn callbacks_are_consulted_for_matching_events() {
        let subs = StaticSubscribers::new().callback("address.*", |q| {
            vec![Subscriber::new(q.event, "https://cb.example/").unwrap()]
        });
        assert_eq!(subs.matching("address.changed", None).len(), 1);
        assert!(subs.matching("user.changed", None).is_empty());
    }
}
