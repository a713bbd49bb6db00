//! Model events: events bound to a database model, sent when rows are
//! created, changed or deleted, or many-to-many links change.
//!
//! `#[derive(WebhookModel)]` (crate `thorn-derive`) builds a model's
//! [`Webhooks`]; the ORM integrations call [`Webhooks::dispatch`] after each
//! write. Every model event sends Thorn's message format:
//!
//! ```json
//! {"event": "article.created", "ref": "https://example.com/article/1/", "sender": 7, "data": {}}
//! ```
//!
//! `ref` is the event's `reverse` path (or the model's [`AbsoluteUrl`])
//! joined to `THORN_BASE_URL` (the bare path when no base URL is
//! configured; `null` when the model has neither), `sender` is the model's
//! `sender_field` (or `null`), and `data` is the model's payload (an empty
//! object by default).

use std::sync::Arc;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::Result;

mod derived;
mod event;
pub(crate) mod webhooks;

#[doc(hidden)]
pub use derived::{AsSender, payload_probe, to_headers, url_probe};
pub use event::ModelEvent;
pub use webhooks::{SentEvent, Webhooks};

/// The write that makes a model event fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DispatchOn {
    /// A row was inserted.
    Create,
    /// A row was updated.
    Change,
    /// A row was deleted.
    Delete,
    /// Rows were linked through the named many-to-many relation.
    M2mAdd(&'static str),
    /// Links of the named relation were removed.
    M2mRemove(&'static str),
    /// All links of the named relation were removed.
    M2mClear(&'static str),
}

impl DispatchOn {
    /// The many-to-many relation of an `M2m*` change; `None` for a row
    /// write.
    pub fn relation(self) -> Option<&'static str> {
        match self {
            DispatchOn::M2mAdd(r) | DispatchOn::M2mRemove(r) | DispatchOn::M2mClear(r) => Some(r),
            DispatchOn::Create | DispatchOn::Change | DispatchOn::Delete => None,
        }
    }
}

/// Builds a model's payload (the `data` field).
pub type PayloadFn<M> = fn(&M) -> Result<Value, serde_json::Error>;

/// Builds extra HTTP headers for an instance.
pub type HeadersFn<M> = fn(&M) -> Result<HeaderMap>;

/// A filter over the new row and, on change, the old row.
pub type FilterFn<M> = Arc<dyn Fn(&M, Option<&M>) -> bool + Send + Sync>;

/// The canonical URL of a row, used for `ref` when an event has no
/// `reverse` (Django's `get_absolute_url`).
pub trait AbsoluteUrl {
    /// The URL or path of this row.
    fn absolute_url(&self) -> String;
}
/// A model with webhook events; implemented by `#[derive(WebhookModel)]`.
pub trait WebhookModel: Sized + 'static {
    /// The model's events.
    fn webhooks() -> &'static Webhooks<Self>;
}
