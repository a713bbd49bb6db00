//! Every error answer, in one shape: [`ErrorBody`].

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::json;
use crate::types::ErrorBody;

/// Messages about the fields of a request, by field name.
pub(crate) type FieldErrors = BTreeMap<String, Vec<String>>;

/// An error answer: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// `status` with `detail`.
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                detail: detail.into(),
                fields: None,
            },
        }
    }

    /// The status of this answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body of this answer.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    pub(crate) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found.")
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 400 naming each field that was wrong.
    pub(crate) fn fields(fields: FieldErrors) -> Self {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                detail: format!("Invalid input: {}.", names.join(", ")),
                fields: Some(fields),
            },
        }
    }

    /// 400 about one field.
    pub(crate) fn field(name: &str, message: impl Into<String>) -> Self {
        Self::fields(FieldErrors::from([(name.to_owned(), vec![message.into()])]))
    }

    /// 503: a store or the outbox failed (logged with its cause, which the
    /// caller does not see).
    pub(crate) fn unavailable(what: &str, e: thorn_core::Error) -> Self {
        tracing::error!(error = %e, "{what} failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The {what} is unavailable; try again."),
        )
    }

    pub(crate) fn store(e: thorn_core::Error) -> Self {
        Self::unavailable("subscription store", e)
    }

    pub(crate) fn log(e: thorn_core::Error) -> Self {
        Self::unavailable("delivery log", e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &self.body);
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names how to authenticate.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"webhooks\""),
            );
        }
        response
    }
}
