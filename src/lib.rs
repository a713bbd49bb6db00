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
    Config, ContentType, DeliveryOutcome, Digest, DispatchOn, Dispatched, Dispatcher,
    DispatcherKind, Error, Event, ModelEvent, Result, SecurityError, SendOptions, SenderId,
    Subscriber, SubscriberStore, Thorn, ThornBuilder, WebhookModel, Webhooks,
};
pub use thorn_core::{
    codec, config, deliver, dispatch, event, model, signing, subscriber, validate,
};
pub use thorn_derive::WebhookModel;

/// Diesel integration: statements that send the model's webhooks.
#[cfg(feature = "diesel")]
pub use thorn_diesel as diesel;

/// SeaORM integration (placeholder: not built yet).
#[cfg(feature = "seaorm")]
pub use thorn_seaorm as seaorm;

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
    pub use thorn_core::model::AsSender;
}
