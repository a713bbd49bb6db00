//! The core of Thorn for Rust: events, subscribers, signatures, codecs,
//! recipient validation and delivery. No ORM is named here; the
//! integrations (`thorn-diesel`, `thorn-seaorm`) plug into the traits this
//! crate defines.
//!
//! Most applications depend on the `thorn` facade crate instead, which
//! re-exports this crate's application API next to the derive and the ORM
//! integrations. What an application uses is at the root (the common part
//! also in [`prelude`]) and in the modules named after what they hold —
//! [`signing`] for receivers, [`validate`] for recipient rules,
//! [`subscriber`] for stores. What an ORM integration uses — transaction
//! frames, outbox records, the relay, the SQL layer — is in
//! [`integration`], and nothing else is public.

pub mod buffer;
pub mod codec;
pub mod delivery;
pub mod dispatch;
pub mod filter;
pub mod integration;
pub mod model;
pub mod outbox;
pub mod prelude;
pub mod retry;
pub mod signing;
pub mod subscriber;
pub mod validate;

mod app;
mod config;
mod error;
mod event;
mod relay;
mod schema;
mod sql;
mod transaction;

pub use app::{Drained, Thorn, ThornBuilder};
pub use codec::ContentType;
pub use config::{Config, DispatcherKind};
pub use delivery::{Callbacks, DeliveryOutcome};
pub use dispatch::{Dispatcher, SendHandle};
pub use error::{Blocked, DeliveryError, Error, Result, SecurityError};
pub use event::{Event, RetryPatch, SendOptions};
pub use filter::{FieldValue, Q, WebhookFields};
pub use model::{AbsoluteUrl, DispatchOn, ModelEvent, Relation, SentEvent, WebhookModel, Webhooks};
pub use relay::{RelayOptions, RelayStats};
pub use retry::{Backoff, RetryPolicy};
pub use signing::HmacDigest;
pub use subscriber::{SenderId, Subscriber, SubscriberLookup, SubscriptionStore};
