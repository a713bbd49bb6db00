//! The subscription routes: list, subscribe, show, change, unsubscribe.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use thorn_core::subscriber::{Replace, Secret, validate_pattern};
use thorn_core::{SenderId, Subscriber, SubscriptionStore};
use uuid::Uuid;

use crate::error::{ApiError, FieldErrors};
use crate::types::{ErrorBody, READ_ONLY, Subscription, SubscriptionFields, WRITABLE};
use crate::{Api, Id, Origin, User, json, json_body, timestamp};

/// How many times a PATCH is applied again on a subscription that changed
/// while it was applied.
const PATCH_ATTEMPTS: usize = 16;

/// Why a subscription its owner paused is disabled.
pub(crate) const PAUSED: &str = "paused by its owner";

impl Api {
    pub(crate) fn store(&self) -> &dyn SubscriptionStore {
        self.thorn()
            .subscription_store()
            .expect("Api::new checked the store")
            .as_ref()
    }

    /// `s` as the API shows it.
    pub(crate) fn render(&self, s: &Subscriber, origin: Option<&str>) -> Subscription {
        Subscription {
            id: s.uuid,
            event: s.event.clone(),
            url: s.url.to_string(),
            content_type: s.content_type.into(),
            hmac_secret: s.hmac_secret.expose().to_owned(),
            hmac_digest: s.hmac_digest.into(),
            user: serde_json::to_value(&s.owner).unwrap_or_default(),
            created_at: timestamp(s.created_at),
            updated_at: timestamp(s.updated_at),
            subscription: self.link(origin, &format!("/{}/", s.uuid)),
            active: s.is_active(),
            disabled_at: s.disabled_at.map(timestamp),
            disabled_reason: s.disabled_reason.clone(),
        }
    }

    /// Subscription `id` if `owner` has it; `404` otherwise.
    pub(crate) async fn owned(&self, owner: &SenderId, id: Uuid) -> Result<Subscriber, ApiError> {
        self.store()
            .get(owner, id)
            .await
            .map_err(ApiError::store)?
            .ok_or_else(ApiError::not_found)
    }

    /// Subscribes `owner` with the fields of `body`.
    pub(crate) async fn subscribe(
        &self,
        owner: SenderId,
        body: &SubscriptionFields,
    ) -> Result<Subscriber, ApiError> {
        let mut sub =
            Subscriber::new("*", "http://placeholder.invalid/").expect("valid placeholder");
        sub.hmac_secret = Secret::generate();
        sub.owner = Some(owner);
        if self.apply(body, &mut sub, true)? == Some(false) {
            sub.disable(PAUSED);
        }
        self.store()
            .insert(sub.clone())
            .await
            .map_err(ApiError::store)?;
        Ok(sub)
    }

    /// Changes the fields `body` names of `owner`'s subscription `id`, and
    /// only those: read, change, write if nobody wrote in between, else
    /// again on what they wrote, so concurrent changes of different fields
    /// all survive. Returns it as stored now.
    pub(crate) async fn change(
        &self,
        owner: &SenderId,
        id: Uuid,
        body: &SubscriptionFields,
    ) -> Result<Subscriber, ApiError> {
        let store = self.store();
        let mut active = None;
        let mut written = false;
        for _ in 0..PATCH_ATTEMPTS {
            let mut sub = self.owned(owner, id).await?;
            let seen = sub.updated_at;
            active = self.apply(body, &mut sub, false)?;
            sub.touch();
            if sub.updated_at <= seen {
                // The version must move on, even within one microsecond.
                sub.updated_at = seen + chrono::Duration::microseconds(1);
            }
            match store
                .update_if_unchanged(sub, seen)
                .await
                .map_err(ApiError::store)?
            {
                Replace::Done => {
                    written = true;
                    break;
                }
                Replace::Missing => return Err(ApiError::not_found()),
                _ => continue,
            }
        }
        if !written {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the subscription kept changing while this change was applied: send it again",
            ));
        }
        if let Some(active) = active {
            store
                .set_active(owner, id, active, PAUSED)
                .await
                .map_err(ApiError::store)?;
        }
        // As stored now (a worker may have disabled it meanwhile).
        self.owned(owner, id).await
    }

    /// Deletes `owner`'s subscription `id`; `404` when there is none.
    pub(crate) async fn unsubscribe(&self, owner: &SenderId, id: Uuid) -> Result<(), ApiError> {
        if self
            .store()
            .delete(owner, id)
            .await
            .map_err(ApiError::store)?
        {
            Ok(())
        } else {
            Err(ApiError::not_found())
        }
    }

    /// Validates the fields `body` sets onto `target`; returns the
    /// `active` requested, if any (the caller applies it). Every wrong
    /// field is named, each with its messages.
    fn apply(
        &self,
        body: &SubscriptionFields,
        target: &mut Subscriber,
        creating: bool,
    ) -> Result<Option<bool>, ApiError> {
        let mut errors = FieldErrors::new();
        let mut error = |field: &str, message: String| {
            errors.entry(field.to_owned()).or_default().push(message);
        };
        // A misspelt field is an error, not a default quietly taken (the
        // fields a subscription is shown with may come back unchanged).
        for unknown in body.other.keys() {
            if !READ_ONLY.contains(&unknown.as_str()) {
                error(
                    unknown,
                    format!("Unknown field. Known: {}.", WRITABLE.join(", ")),
                );
            }
        }
        if creating {
            for (name, missing) in [("event", body.event.is_none()), ("url", body.url.is_none())] {
                if missing {
                    error(name, "This field is required.".into());
                }
            }
        }
        if let Some(event) = &body.event {
            let event = event.trim();
            if let Err(e) = validate_pattern(event) {
                error("event", e);
            } else if let Some(choices) = &self.thorn().config().event_choices {
                if !choices.iter().any(|c| c == event) {
                    error(
                        "event",
                        format!(
                            "`{event}` is not one of the available events: {}",
                            choices.join(", ")
                        ),
                    );
                }
            }
            target.event = event.to_owned();
        }
        if let Some(url) = &body.url {
            match url::Url::parse(url.trim()) {
                Err(e) => error("url", format!("Enter a valid URL ({e}).")),
                Ok(_) if url.len() > 2048 => error(
                    "url",
                    "Ensure this field has no more than 2048 characters.".into(),
                ),
                Ok(parsed) => match self.inner.validators.check_url(&parsed) {
                    Ok(()) => target.url = parsed,
                    Err(blocked) => error("url", format!("blocked: {}", blocked.rule)),
                },
            }
        }
        if let Some(ct) = body.content_type {
            target.content_type = ct.into();
        }
        if let Some(d) = body.hmac_digest {
            target.hmac_digest = d.into();
        }
        if let Some(secret) = &body.hmac_secret {
            if secret.is_empty()
                || secret.chars().count() > 255
                || secret.chars().any(char::is_control)
            {
                error(
                    "hmac_secret",
                    "Use 1 to 255 printable characters (or leave it out for a random one).".into(),
                );
            } else {
                target.hmac_secret = secret.as_str().into();
            }
        }
        if errors.is_empty() {
            Ok(body.active)
        } else {
            Err(ApiError::fields(errors))
        }
    }
}

/// The caller's subscriptions, oldest first.
#[utoipa::path(get, path = "/", tag = "subscriptions", operation_id = "list_subscriptions",
    responses(
        (status = 200, description = "The caller's subscriptions, oldest first", body = [Subscription]),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 503, description = "The subscription store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
) -> Result<Response, ApiError> {
    let subs = api.store().list(&owner).await.map_err(ApiError::store)?;
    let shown: Vec<Subscription> = subs
        .iter()
        .map(|s| api.render(s, origin.as_deref()))
        .collect();
    Ok(json(StatusCode::OK, &shown))
}

/// Subscribes: `event` and `url` are required.
#[utoipa::path(post, path = "/", tag = "subscriptions", operation_id = "subscribe",
    request_body(content = SubscriptionFields, content_type = "application/json",
        description = "`event` and `url` are required"),
    responses(
        (status = 201, description = "Subscribed", body = Subscription),
        (status = 400, description = "Invalid fields, each named", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The subscription store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: SubscriptionFields = json_body(&headers, body)?;
    let sub = api.subscribe(owner, &body).await?;
    Ok(json(
        StatusCode::CREATED,
        &api.render(&sub, origin.as_deref()),
    ))
}

/// One subscription.
#[utoipa::path(get, path = "/{id}/", tag = "subscriptions", operation_id = "show_subscription",
    params(("id" = uuid::Uuid, Path, description = "The subscription")),
    responses(
        (status = 200, description = "The subscription", body = Subscription),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 503, description = "The subscription store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let sub = api.owned(&owner, id).await?;
    Ok(json(StatusCode::OK, &api.render(&sub, origin.as_deref())))
}

/// Changes the fields the body names, and only those.
#[utoipa::path(patch, path = "/{id}/", tag = "subscriptions", operation_id = "change_subscription",
    params(("id" = uuid::Uuid, Path, description = "The subscription")),
    request_body(content = SubscriptionFields, content_type = "application/json"),
    responses(
        (status = 200, description = "The subscription as stored now", body = Subscription),
        (status = 400, description = "Invalid fields, each named", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 409, description = "It kept changing while the change was applied: send it again", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The subscription store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn update(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    Id(id): Id,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: SubscriptionFields = json_body(&headers, body)?;
    let sub = api.change(&owner, id, &body).await?;
    Ok(json(StatusCode::OK, &api.render(&sub, origin.as_deref())))
}

/// Changes the fields the body names: `PATCH` for clients that only
/// `POST` (Python Thorn's).
#[utoipa::path(post, path = "/{id}/", tag = "subscriptions", operation_id = "change_subscription_by_post",
    params(("id" = uuid::Uuid, Path, description = "The subscription")),
    request_body(content = SubscriptionFields, content_type = "application/json"),
    responses(
        (status = 200, description = "The subscription as stored now", body = Subscription),
        (status = 400, description = "Invalid fields, each named", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 409, description = "It kept changing while the change was applied: send it again", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The subscription store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn update_by_post(
    api: State<Api>,
    user: User,
    origin: Origin,
    id: Id,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    update(api, user, origin, id, headers, body).await
}

/// Unsubscribes.
#[utoipa::path(delete, path = "/{id}/", tag = "subscriptions", operation_id = "unsubscribe",
    params(("id" = uuid::Uuid, Path, description = "The subscription")),
    responses(
        (status = 204, description = "Unsubscribed"),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 503, description = "The subscription store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn remove(
    State(api): State<Api>,
    User(owner): User,
    Id(id): Id,
) -> Result<Response, ApiError> {
    api.unsubscribe(&owner, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
