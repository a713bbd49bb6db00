//! The core of Thorn for Rust: events, subscribers, signatures, codecs,
//! recipient validation and delivery. No ORM is named here; the
//! integrations (`thorn-diesel`, `thorn-seaorm`) plug into the traits this
//! crate defines.
//!
//! Most applications depend on the `thorn` facade crate instead, which
//! re-exports this crate next to the derive and the ORM integrations.

pub mod buffer;
pub mod codec;
pub mod config;
pub mod delivery;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod filter;
pub mod model;
pub mod outbox;
pub mod relay;
pub mod retry;
pub mod schema;
pub mod signing;
pub mod sql;
pub mod subscriber;
pub mod transaction;
pub mod validate;

mod app;

pub use app::{Drained, Thorn, ThornBuilder};
pub use codec::ContentType;
pub use config::{Config, DispatcherKind};
pub use delivery::{Callbacks, DeliveryOutcome};
pub use dispatch::{Dispatched, Dispatcher, InFlight, Outgoing};
pub use error::{Blocked, Error, Result, SecurityError};
pub use event::{Event, RetryPatch, SendOptions};
pub use filter::{FieldValue, Q, WebhookFields};
pub use model::{AbsoluteUrl, DispatchOn, Fired, ModelEvent, WebhookModel, Webhooks};
pub use retry::{Backoff, RetryPolicy};
pub use signing::Digest;
pub use subscriber::{SenderId, Subscriber, SubscriberStore, SubscriptionStore};
pub use transaction::{Route, Scope};
