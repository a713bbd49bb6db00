//! # Thorn for Rust
//!
//! Webhooks for applications built on Diesel and SeaORM: declare events on
//! a model with `#[derive(WebhookModel)]`, and every insert, update and
//! delete made through the integration sends a signed HTTP POST to each
//! matching subscriber.
//!
//! ```
//! use thorn::{Config, Subscriber, Thorn, WebhookModel};
//! use thorn::subscriber::MemoryStore;
//!
//! #[derive(WebhookModel)]
//! #[webhook_model(
//!     sender_field = author_id,
//!     reverse = "/article/{id}/",
//!     payload = Self::webhook_payload,
//!     on_create = "article.created",
//!     on_delete(name = "article.removed"),
//! )]
//! struct Article { id: i32, title: String, author_id: i32 }
//!
//! impl Article {
//!     fn webhook_payload(&self) -> serde_json::Value {
//!         serde_json::json!({ "id": self.id, "title": self.title })
//!     }
//! }
//!
//! let thorn = Thorn::builder(Config::default()).store(MemoryStore::new()).build()?;
//! let created = Article::webhooks().event("on_create").unwrap();
//! let article = Article { id: 1, title: "Hello".into(), author_id: 7 };
//! let message = created.message(&thorn, &article, &article.webhook_payload(), None)?;
//! assert_eq!(message["ref"], "/article/1/");
//! # Ok::<(), thorn::Error>(())
//! ```
//!
//! With the `diesel` feature (on by default), `thorn::diesel` runs Diesel
//! statements and sends the model's events.

pub use thorn_core::{
    AbsoluteUrl, Backoff, Blocked, Callbacks, Config, ContentType, DeliveryError, DeliveryOutcome,
    DispatchOn, Dispatcher, DispatcherKind, Drained, Error, Event, FieldValue, HmacDigest,
    ModelEvent, Q, Relation, RelayOptions, RelayStats, Result, RetryPatch, RetryPolicy,
    SecurityError, SendHandle, SendOptions, SenderId, SentEvent, Subscriber, SubscriberLookup,
    SubscriptionStore, Thorn, ThornBuilder, WebhookFields, WebhookModel, Webhooks,
};
pub use thorn_core::{
    buffer, codec, delivery, dispatch, filter, model, outbox, retry, signing, subscriber, validate,
};
pub use thorn_derive::WebhookModel;

/// The names most applications use, for a glob import: `use thorn::prelude::*;`.
pub mod prelude {
    pub use thorn_core::prelude::*;
    pub use thorn_derive::WebhookModel;
}

/// Diesel integration: statements that send the model's webhooks.
#[cfg(feature = "diesel")]
pub use thorn_diesel as diesel;

/// The subscription REST API (axum).
#[cfg(feature = "api")]
pub use thorn_api as api;

/// SeaORM integration: `ActiveModelBehavior` hooks that send the model's webhooks.
#[cfg(feature = "seaorm")]
pub use thorn_seaorm as seaorm;

#[doc(hidden)]
pub mod __private {
    #[cfg(not(feature = "diesel"))]
    pub use crate::__noop as diesel_bulk_change;
    pub use serde_json;
    pub use thorn_core::filter::{ops, probe};
    pub use thorn_core::model::{AsSender, payload_probe, to_headers, url_probe};
    #[cfg(feature = "diesel")]
    pub use thorn_diesel::__bulk_change as diesel_bulk_change;
}

#[cfg(not(feature = "diesel"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __noop {
    ($($t:tt)*) => {};
}

/// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Mistakes in `#[webhook_model(...)]` are compile errors.
///
/// An unknown field in `sender_field`:
///
/// ```compile_fail
/// #[derive(thorn::WebhookModel)]
/// #[webhook_model(sender_field = owner, on_create = "a.created")]
/// struct A { id: i32, author_id: i32 }
/// ```
///
/// An unknown field in a `reverse` template:
///
/// ```compile_fail
/// #[derive(thorn::WebhookModel)]
/// #[webhook_model(reverse = "/a/{uuid}/", on_create = "a.created")]
/// struct A { id: i32 }
/// ```
///
/// A custom event that does not say when it dispatches:
///
/// ```compile_fail
/// #[derive(thorn::WebhookModel)]
/// #[webhook_model(on_publish(name = "a.published"))]
/// struct A { id: i32 }
/// ```
///
/// An unknown key:
///
/// ```compile_fail
/// #[derive(thorn::WebhookModel)]
/// #[webhook_model(on_create = "a.created", senderfield = id)]
/// struct A { id: i32 }
/// ```
///
/// The same block, corrected, compiles:
///
/// ```
/// #[derive(thorn::WebhookModel)]
/// #[webhook_model(sender_field = author_id, reverse = "/a/{id}/", on_create = "a.created",
///                 on_publish(name = "a.published", dispatches_on = change))]
/// struct A { id: i32, author_id: i32 }
/// ```
#[cfg(doctest)]
struct DeriveCompileErrors;
