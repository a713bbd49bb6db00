//! `#[derive(WebhookModel)]` for Thorn for Rust.
//!
//! Put the derive on the struct your ORM already uses for a table, and
//! declare the model's events in one `#[webhook_model(...)]` block:
//!
//! ```ignore
//! #[derive(Queryable, Selectable, WebhookModel)]
//! #[webhook_model(
//!     sender_field = author_id,               // `sender` of every message
//!     reverse = "/article/{uuid}/",          // `ref`, joined to THORN_BASE_URL
//!     payload = Self::webhook_payload,       // `data`: fn(&Self) -> impl Serialize
//!     on_create = "article.created",
//!     on_change = "article.changed",
//!     on_delete(name = "article.removed", reverse = "/category/{category}/"),
//!     on_archived(name = "article.archived", dispatches_on = delete, timeout = 10),
//! )]
//! pub struct Article { /* columns */ }
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
//! - `payload = path`: a function `fn(&Self) -> T` with `T: Serialize`; the
//!   message's `data`. Without it, `data` is an empty object (as in Thorn).
//!
//! Events, any number, each `on_<name>`:
//!
//! - `on_create`, `on_change`, `on_delete` fire on insert, update and delete.
//!   Write `on_create = "article.created"` or use the option form.
//! - Any other `on_<name>(name = "...", dispatches_on = create | change | delete)`
//!   must say when it fires.
//! - Options: `name`, `dispatches_on`, `reverse`, `sender_field`, `payload`
//!   (override the model-wide ones for this event) and `timeout` (seconds).
//! - Names may interpolate fields: `name = "user.{username}"`.
//!
//! Every field name is checked at compile time; an unknown key, a field
//! that does not exist or a custom event without `dispatches_on` is an error
//! pointing at the offending token.

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
