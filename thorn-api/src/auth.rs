//! Who is calling: [`Authenticate`], the application's.

use std::future::Future;
use std::pin::Pin;

use axum::http::request::Parts;
use thorn_core::SenderId;

/// Says who is calling, from the request's head (session cookie, token,
/// header...). `None` answers `401`.
pub trait Authenticate: Send + Sync + 'static {
    /// The caller's user id.
    fn authenticate<'a>(
        &'a self,
        parts: &'a Parts,
    ) -> Pin<Box<dyn Future<Output = Option<SenderId>> + Send + 'a>>;
}

impl<F> Authenticate for F
where
    F: Fn(&Parts) -> Option<SenderId> + Send + Sync + 'static,
{
    fn authenticate<'a>(
        &'a self,
        parts: &'a Parts,
    ) -> Pin<Box<dyn Future<Output = Option<SenderId>> + Send + 'a>> {
        let user = self(parts);
        Box::pin(async move { user })
    }
}
