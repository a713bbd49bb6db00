//! What a write through `thorn::diesel` returns when it fails.

/// The error of a write through `thorn::diesel`: Diesel's, or Thorn's.
///
/// Either way the write did not happen: a write refused by Thorn is refused
/// before its statement runs, and one whose events fail after it (a
/// payload that cannot be encoded with `propagate_errors`, an outbox that
/// cannot be written) runs in a transaction or savepoint of its own that
/// is rolled back.
///
/// It converts into Diesel's error (Thorn's inside a boxed
/// `SerializationError` or `QueryBuilderError`, found again with
/// [`thorn_error`]), so `?` works in code that returns
/// `diesel::result::Error`; an application error type that implements
/// `From<thorn::diesel::Error>` keeps the two apart.
///
/// ```
/// let error = thorn::diesel::Error::from(diesel::result::Error::NotFound);
/// assert!(matches!(error, thorn::diesel::Error::Diesel(diesel::result::Error::NotFound)));
/// let error = thorn::diesel::Error::from(thorn::Error::DispatcherClosed);
/// assert!(matches!(error, thorn::diesel::Error::Thorn(thorn::Error::DispatcherClosed)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Diesel's error: the statement, or the transaction around it, failed.
    #[error(transparent)]
    Diesel(#[from] diesel::result::Error),
    /// Thorn's error: the write was refused before its statement ran, or
    /// its events could not be raised or stored (and the write was undone).
    #[error(transparent)]
    Thorn(thorn_core::Error),
}

impl From<thorn_core::Error> for Error {
    /// A database error that Thorn's SQL met on a Diesel connection comes
    /// back as Diesel's own.
    fn from(error: thorn_core::Error) -> Self {
        match error {
            thorn_core::Error::Store(source) => match source.downcast::<diesel::result::Error>() {
                Ok(error) => Error::Diesel(*error),
                Err(source) => Error::Thorn(thorn_core::Error::Store(source)),
            },
            other => Error::Thorn(other),
        }
    }
}

impl From<Error> for diesel::result::Error {
    /// Thorn's errors as Diesel's: encode errors as serialization errors,
    /// the rest as query-builder errors (boxed; see
    /// [`thorn_error`]).
    fn from(error: Error) -> Self {
        match error {
            Error::Diesel(error) => error,
            Error::Thorn(error @ thorn_core::Error::Encode { .. }) => {
                diesel::result::Error::SerializationError(Box::new(error))
            }
            Error::Thorn(other) => diesel::result::Error::QueryBuilderError(Box::new(other)),
        }
    }
}

/// The Thorn error inside a Diesel error made from an [`Error`] (see its
/// `From` conversion), if there is one.
///
/// ```
/// let error = diesel::result::Error::from(thorn::diesel::Error::from(thorn::Error::DispatcherClosed));
/// assert!(matches!(thorn::diesel::thorn_error(&error), Some(thorn::Error::DispatcherClosed)));
/// assert!(thorn::diesel::thorn_error(&diesel::result::Error::NotFound).is_none());
/// ```
pub fn thorn_error(error: &diesel::result::Error) -> Option<&thorn_core::Error> {
    match error {
        diesel::result::Error::SerializationError(inner)
        | diesel::result::Error::QueryBuilderError(inner) => inner.downcast_ref(),
        _ => None,
    }
}
