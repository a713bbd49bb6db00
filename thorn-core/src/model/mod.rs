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

mod catalogue;
mod derived;
mod event;
pub(crate) mod webhooks;

pub use crate::app::EventType;
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

/// A many-to-many relation of model `M`, as its `#[webhook_model(...)]`
/// block declares it (`dispatches_on = m2m_add(tags)`): the derive makes
/// one constant per relation on the model, named in capitals
/// (`Article::TAGS`), so a misspelt relation, or another model's, does not
/// compile. `Article::TAGS.added()` is `DispatchOn::M2mAdd("tags")`.
pub struct Relation<M> {
    name: &'static str,
    model: std::marker::PhantomData<fn() -> M>,
}

impl<M> Relation<M> {
    #[doc(hidden)]
    pub const fn __declared(name: &'static str) -> Self {
        Relation {
            name,
            model: std::marker::PhantomData,
        }
    }

    /// The relation's name, as declared.
    pub const fn name(self) -> &'static str {
        self.name
    }

    /// Rows were linked through this relation.
    pub const fn added(self) -> DispatchOn {
        DispatchOn::M2mAdd(self.name)
    }

    /// Some links of this relation were removed.
    pub const fn removed(self) -> DispatchOn {
        DispatchOn::M2mRemove(self.name)
    }

    /// Every link of this relation was removed.
    pub const fn cleared(self) -> DispatchOn {
        DispatchOn::M2mClear(self.name)
    }
}

impl<M> Clone for Relation<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Relation<M> {}

impl<M> std::fmt::Debug for Relation<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Relation({:?} of {})",
            self.name,
            std::any::type_name::<M>()
        )
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
