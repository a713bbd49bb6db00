//! `#[derive(WebhookModel)]` for Thorn for Rust.
//!
//! Put the derive on the struct your ORM already uses for a table, and
//! declare the model's events in one `#[webhook_model(...)]` block:
//!
//! ```
//! use thorn::WebhookModel;
//!
//! #[derive(WebhookModel)] // next to your ORM's derives (Queryable, DeriveEntityModel...)
//! #[webhook_model(
//!     sender_field = author_id,               // `sender` of every message
//!     reverse = "/article/{uuid}/",          // `ref`, joined to THORN_BASE_URL
//!     payload = Self::webhook_payload,       // `data`: fn(&Self) -> impl Serialize
//!     headers = Self::webhook_headers,       // extra HTTP headers: fn(&Self) -> pairs
//!     on_create = "article.created",
//!     on_change = "article.changed",
//!     on_delete(name = "article.removed", reverse = "/category/{category}/"),
//!     on_publish(name = "article.published", dispatches_on = change,
//!                filter = state.now_eq("PUBLISHED") & !title.startswith("Draft")),
//!     on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)),
//!     on_untagged(name = "article.untagged", dispatches_on = m2m_remove(tags)),
//!     on_tags_cleared(name = "article.tags_cleared", dispatches_on = m2m_clear(tags)),
//! )]
//! pub struct Article {
//!     uuid: String,
//!     title: String,
//!     state: String,
//!     category: String,
//!     author_id: i32,
//! }
//!
//! impl Article {
//!     fn webhook_payload(&self) -> std::collections::BTreeMap<&'static str, String> {
//!         [("uuid", self.uuid.clone()), ("title", self.title.clone())].into()
//!     }
//!
//!     fn webhook_headers(&self) -> [(&'static str, String); 1] {
//!         [("x-article-state", self.state.clone())]
//!     }
//! }
//!
//! let events: Vec<&str> = Article::webhooks().events().iter().map(|e| e.name()).collect();
//! assert_eq!(events[0], "article.created");
//! assert_eq!(events.len(), 7);
//! ```
//!
//! ## Grammar
//!
//! Model-wide keys (each at most once):
//!
//! - `sender_field = field`: the field holding the sender (user id). Integers,
//!   strings, UUIDs and `Option`s of them.
//! - `reverse = "/path/{field}/"` or `reverse = Self::path_fn`: the `ref` of
//!   every message. Template fields must exist and implement `Display`.
//!   Without `reverse`, a model implementing `thorn::AbsoluteUrl` uses that
//!   (Django's `get_absolute_url`); otherwise `ref` is `null`.
//! - `payload = path`: a function `fn(&Self) -> T` with `T: Serialize`; the
//!   message's `data`. Without it, `data` is an empty object (as in Thorn).
//! - `headers = path`: a function `fn(&Self) -> I` where `I` iterates over
//!   `(name, value)` pairs of strings (a `HashMap`, a `Vec`, an array).
//!
//! Events, any number, each `on_<name>`:
//!
//! - `on_create`, `on_change`, `on_delete` fire on insert, update and delete.
//!   Write `on_create = "article.created"` or use the option form.
//! - Any other `on_<name>(name = "...", dispatches_on = ...)` must say when it
//!   fires: `create`, `change`, `delete`, `m2m_add(relation)`,
//!   `m2m_remove(relation)` or `m2m_clear(relation)`.
//! - Names may interpolate fields: `name = "user.{username}"`.
//! - `filter = <condition>`: fires only when the condition holds; several
//!   `filter`s are AND-ed. A condition is `field.op(value)`, combined with
//!   `&`, `|`, `!` and parentheses. Operators: `eq`, `ne`, `gt`, `gte`,
//!   `lt`, `lte`, `is`, `is_not`, `in_` (`in` is a keyword), `not_in`,
//!   `contains`, `startswith`, `endswith`, and `now_<op>` for each (holds
//!   now, did not hold in the old row; on create the old side counts as not
//!   holding). `eq(true)`/`eq(false)` test truthiness, `is(None)` tests
//!   `Option` fields. The value is any Rust expression; its type must be
//!   comparable with the field's.
//! - Per-event options: `reverse`, `sender_field`, `payload`, `headers`
//!   (override the model-wide ones), `timeout` (seconds), `retry` (bool),
//!   `retry_max`, `retry_delay` (seconds), `propagate_errors` (bool),
//!   `honors_transaction` (bool), `keepalive` (bool).
//!
//! Every field name, template, operator and value type is checked at
//! compile time, with the error on the offending token. The derive also
//! implements `thorn::WebhookFields`, so runtime `thorn::Q` filters can read
//! the model's fields.

mod attr;
mod ctxt;
mod expand;
mod filter;
mod model;

use proc_macro::TokenStream;

/// Derives `thorn::WebhookModel`; see the crate documentation for the
/// `#[webhook_model(...)]` grammar.
#[proc_macro_derive(WebhookModel, attributes(webhook_model))]
pub fn derive_webhook_model(input: TokenStream) -> TokenStream {
    expand_webhook_model(input.into()).into()
}

/// The derive on `proc_macro2` tokens, callable from unit tests.
fn expand_webhook_model(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    syn::parse2(input)
        .and_then(expand::expand)
        .unwrap_or_else(syn::Error::into_compile_error)
}
