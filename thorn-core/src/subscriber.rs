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
//! Subscribers come from a [`SubscriberStore`] (a database table, or the
//! in-memory [`MemoryStore`]) and from static configuration
//! ([`StaticSubscribers`], the `THORN_SUBSCRIBERS` setting), which also
//! accepts callbacks.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;
use uuid::Uuid;

use crate::codec::ContentType;
use crate::signing::{Digest, generate_secret};
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

/// True when `pattern` selects `event` under Thorn's rules (see the module
/// docs).
pub fn pattern_matches(pattern: &str, event: &str) -> bool {
    candidate_patterns(event).any(|p| p == pattern)
}

/// The (at most four) patterns that select `event`: `*`, the event itself,
/// `<first>.*` and `*.<rest>`. A store indexed by pattern finds every
/// subscriber of an event with these lookups.
pub fn candidate_patterns(event: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    let (first, rest) = match event.split_once('.') {
        Some((first, rest)) => (Some(first), Some(rest)),
        None => (None, None),
    };
    [
        Some(std::borrow::Cow::Borrowed("*")),
        Some(std::borrow::Cow::Borrowed(event)),
        first.map(|f| std::borrow::Cow::Owned(format!("{f}.*"))),
        rest.map(|r| std::borrow::Cow::Owned(format!("*.{r}"))),
    ]
    .into_iter()
    .flatten()
}

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
    pub hmac_secret: String,
    /// Hash function of the signature.
    pub hmac_digest: Digest,
    /// Body format.
    pub content_type: ContentType,
    /// Earlier secrets still accepted by the receiver while it rotates to
    /// `hmac_secret`: each adds a Standard Webhooks signature.
    #[serde(default)]
    pub previous_secrets: Vec<String>,
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
            .field("hmac_secret", &format_args!("<redacted>"))
            .field("hmac_digest", &self.hmac_digest)
            .field("content_type", &self.content_type)
            .field(
                "previous_secrets",
                &format_args!("<{} redacted>", self.previous_secrets.len()),
            )
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
            hmac_secret: generate_secret(),
            hmac_digest: Digest::default(),
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
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.hmac_secret = secret.into();
        self
    }

    /// Sets the HMAC digest.
    pub fn with_digest(mut self, digest: Digest) -> Self {
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
    pub fn rotate_secret(mut self, secret: impl Into<String>) -> Self {
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

/// A boxed, sendable future, as returned by [`SubscriberStore`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where subscriptions are stored: a database table (thorn-diesel,
/// thorn-seaorm) or memory ([`MemoryStore`]).
pub trait SubscriberStore: Send + Sync + 'static {
    /// Every subscriber that should receive `event` sent by `sender`
    /// (pattern and owner rules applied).
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>>;

    /// The receiver answered `410 Gone`: the subscription should receive
    /// nothing more. Stores delete or disable it; the default does nothing.
    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        let _ = subscriber;
        Box::pin(async { Ok(()) })
    }
}

/// Subscriptions managed by their owners (the REST API): create, read,
/// update and delete, always scoped to one owner.
pub trait SubscriptionStore: SubscriberStore {
    /// The owner's subscriptions, oldest first (ties by uuid).
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>>;
    /// One of the owner's subscriptions; `None` when it does not exist or
    /// belongs to someone else.
    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>>;
    /// Stores a new subscription.
    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>>;
    /// Replaces the settings of the owner's subscription with the same
    /// uuid; `false` when there is none. Its disabled state is left as
    /// stored (a worker may have just disabled it): change that with
    /// [`set_active`](Self::set_active).
    fn update(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<bool>>;
    /// Deletes one of the owner's subscriptions; `false` when there is none.
    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>>;
    /// Pauses (`active == false`, saying `reason`) or resumes one of the
    /// owner's subscriptions; `false` when there is none. Pausing a
    /// disabled subscription keeps its reason; resuming forgives its
    /// failures so far.
    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
}

/// Checks an event pattern's shape: dot-separated words of letters,
/// digits, `_` and `-`, where a `*` may stand alone, as the first word
/// (`*.created`) or as the last (`article.*`).
///
/// ```
/// use thorn_core::subscriber::validate_pattern;
/// assert!(validate_pattern("article.*").is_ok());
/// assert!(validate_pattern("*.created").is_ok());
/// assert!(validate_pattern("article..created").is_err());
/// assert!(validate_pattern("art*cle").is_err());
/// ```
pub fn validate_pattern(pattern: &str) -> std::result::Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    if pattern.is_empty() {
        return Err("the event pattern is empty".into());
    }
    if pattern.len() > 255 {
        return Err("the event pattern is longer than 255 characters".into());
    }
    let words: Vec<&str> = pattern.split('.').collect();
    let last = words.len() - 1;
    for (i, word) in words.iter().enumerate() {
        if *word == "*" {
            if words.len() == 1 || (i != 0 && i != last) || (i == last && i == 0) {
                return Err(format!(
                    "`*` may only be the first or last word of `{pattern}`"
                ));
            }
            if i == last && words[0] == "*" {
                return Err(format!("`{pattern}` has `*` at both ends; use `*` alone"));
            }
            continue;
        }
        if word.is_empty() {
            return Err(format!("`{pattern}` has an empty word"));
        }
        if let Some(c) = word
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "`{pattern}` contains `{c}`: use letters, digits, `_`, `-` and `.`"
            ));
        }
    }
    Ok(())
}

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

/// An in-memory [`SubscriberStore`], indexed by pattern and owner: finding
/// the subscribers of an event looks at its four candidate patterns, each
/// for no owner and for the sender, and at nothing else, however many
/// other subscriptions there are.
#[derive(Debug, Default)]
pub struct MemoryStore {
    by_pattern: RwLock<HashMap<String, ByOwner>>,
}

/// One pattern's subscriptions, by owner (`None`: every sender's).
type ByOwner = HashMap<Option<SenderId>, Vec<Subscriber>>;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber.
    pub fn add(&self, subscriber: Subscriber) {
        self.by_pattern
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(subscriber.event.clone())
            .or_default()
            .entry(subscriber.owner.clone())
            .or_default()
            .push(subscriber);
    }

    /// Removes a subscriber by uuid; returns whether it existed.
    pub fn remove(&self, uuid: Uuid) -> bool {
        let mut map = self.by_pattern.write().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        for list in map.values_mut().flat_map(|owners| owners.values_mut()) {
            let before = list.len();
            list.retain(|s| s.uuid != uuid);
            found |= list.len() != before;
        }
        found
    }

    /// The matching subscribers, synchronously.
    pub fn matching(&self, event: &str, sender: Option<&SenderId>) -> Vec<Subscriber> {
        let map = self.by_pattern.read().unwrap_or_else(|e| e.into_inner());
        let owners = [None, sender.cloned()];
        let owners = if sender.is_some() {
            &owners[..]
        } else {
            &owners[..1]
        };
        candidate_patterns(event)
            .filter_map(|p| map.get(p.as_ref()))
            .flat_map(|by_owner| owners.iter().filter_map(|o| by_owner.get(o)))
            .flatten()
            .filter(|s| s.is_active())
            .cloned()
            .collect()
    }
}

impl SubscriberStore for MemoryStore {
    fn subscribers_for<'a>(
        &'a self,
        event: &'a str,
        sender: Option<&'a SenderId>,
    ) -> BoxFuture<'a, Result<Vec<Subscriber>>> {
        let found = self.matching(event, sender);
        Box::pin(async move { Ok(found) })
    }

    fn mark_gone(&self, subscriber: Uuid) -> BoxFuture<'_, Result<()>> {
        self.remove(subscriber);
        Box::pin(async { Ok(()) })
    }
}

impl MemoryStore {
    fn owned_by(&self, owner: &SenderId) -> Vec<Subscriber> {
        let map = self.by_pattern.read().unwrap_or_else(|e| e.into_inner());
        let key = Some(owner.clone());
        let mut out: Vec<Subscriber> = map
            .values()
            .filter_map(|by_owner| by_owner.get(&key))
            .flatten()
            .cloned()
            .collect();
        out.sort_by_key(|s| (s.created_at, s.uuid));
        out
    }
}

impl SubscriptionStore for MemoryStore {
    fn list(&self, owner: &SenderId) -> BoxFuture<'_, Result<Vec<Subscriber>>> {
        let out = self.owned_by(owner);
        Box::pin(async move { Ok(out) })
    }

    fn get(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<Option<Subscriber>>> {
        let found = self.owned_by(owner).into_iter().find(|s| s.uuid == uuid);
        Box::pin(async move { Ok(found) })
    }

    fn insert(&self, subscriber: Subscriber) -> BoxFuture<'_, Result<()>> {
        self.add(subscriber);
        Box::pin(async { Ok(()) })
    }

    fn update(&self, mut subscriber: Subscriber) -> BoxFuture<'_, Result<bool>> {
        let stored = subscriber.owner.as_ref().and_then(|o| {
            self.owned_by(o)
                .into_iter()
                .find(|s| s.uuid == subscriber.uuid)
        });
        let exists = stored.is_some();
        if let Some(stored) = stored {
            subscriber.disabled_at = stored.disabled_at;
            subscriber.disabled_reason = stored.disabled_reason;
            self.remove(subscriber.uuid);
            self.add(subscriber);
        }
        Box::pin(async move { Ok(exists) })
    }

    fn set_active<'a>(
        &'a self,
        owner: &'a SenderId,
        uuid: Uuid,
        active: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        let stored = self.owned_by(owner).into_iter().find(|s| s.uuid == uuid);
        let exists = stored.is_some();
        if let Some(mut s) = stored {
            if active {
                s.enable();
            } else if s.is_active() {
                s.disable(reason);
            }
            self.remove(uuid);
            self.add(s);
        }
        Box::pin(async move { Ok(exists) })
    }

    fn delete(&self, owner: &SenderId, uuid: Uuid) -> BoxFuture<'_, Result<bool>> {
        let exists = self.owned_by(owner).iter().any(|s| s.uuid == uuid);
        if exists {
            self.remove(uuid);
        }
        Box::pin(async move { Ok(exists) })
    }
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
                            s.hmac_secret = secret;
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
        self.callbacks.is_empty()
            && self
                .fixed
                .by_pattern
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
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
        assert!(!shown.contains(&s.hmac_secret), "{shown}");
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
        assert!(!format!("{config:?}").contains(&s.hmac_secret));
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
        let got: Vec<_> = candidate_patterns("a.b.c").collect();
        assert_eq!(got, ["*", "a.b.c", "a.*", "*.b.c"]);
        let got: Vec<_> = candidate_patterns("plain").collect();
        assert_eq!(got, ["*", "plain"]);
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
        assert_eq!(got[0].hmac_digest, Digest::Sha512);
        assert_eq!(got[0].hmac_secret, "s3");
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
