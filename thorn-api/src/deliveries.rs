//! Each subscription's delivery log — list, show, redeliver, recover, test
//! send — and the event catalogue. A caller reaches only the deliveries
//! of its own subscriptions: every route checks who owns the subscription
//! first, and the log is scoped by it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;
use thorn_core::integration::{StoredEvent, ThornExt};
use thorn_core::outbox::{
    AttemptInfo, DeliveryHistory, DeliveryInfo, DeliveryLog, DeliveryPage, DeliveryState,
    Redelivery,
};
use thorn_core::subscriber::pattern_matches;
use thorn_core::{Event, SendOptions, SenderId};
use uuid::Uuid;

use crate::error::ApiError;
use crate::types::{
    Attempt, Delivery, DeliveryDetail, DeliveryIds, DeliveryList, DeliveryStateName, ErrorBody,
    EventTypeInfo, Recover,
};
use crate::{Api, DeliveryId, Id, Origin, SameSite, User, json, json_body, timestamp_micros};

/// The name of the event a test send delivers.
pub const TEST_EVENT: &str = "thorn.test";

/// Deliveries per page by default, and at most.
const PAGE: usize = 25;
const MAX_PAGE: usize = 100;

impl Api {
    /// The delivery log, and `owner`'s subscription `id` (`404` when
    /// `owner` has none): what every delivery route starts from.
    async fn owned_log(
        &self,
        owner: &SenderId,
        id: Uuid,
    ) -> Result<(&Arc<dyn DeliveryLog>, thorn_core::Subscriber), ApiError> {
        let log = self.log()?;
        Ok((log, self.owned(owner, id).await?))
    }

    fn log(&self) -> Result<&Arc<dyn DeliveryLog>, ApiError> {
        self.thorn().delivery_log().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "This server keeps no delivery log (ThornBuilder::delivery_log was not called).",
            )
        })
    }

    /// A page of `owner`'s subscription `id`'s deliveries, newest first.
    pub(crate) async fn deliveries(
        &self,
        owner: &SenderId,
        id: Uuid,
        page: DeliveryPage,
    ) -> Result<Vec<Delivery>, ApiError> {
        let (log, _) = self.owned_log(owner, id).await?;
        let infos = log.deliveries_of(id, page).await.map_err(ApiError::log)?;
        infos.iter().map(delivery).collect()
    }

    /// Delivery `delivery_id` of `owner`'s subscription `id`, with every
    /// attempt.
    pub(crate) async fn delivery(
        &self,
        owner: &SenderId,
        id: Uuid,
        delivery_id: Uuid,
    ) -> Result<DeliveryDetail, ApiError> {
        let (log, _) = self.owned_log(owner, id).await?;
        let (info, attempts) = history(log.as_ref(), id, delivery_id).await?;
        Ok(DeliveryDetail {
            delivery: delivery(&info)?,
            history: attempts.iter().map(attempt).collect(),
        })
    }

    /// Schedules delivery `delivery_id` of `owner`'s subscription `id`
    /// again, with the same id; `409` while a worker sends it.
    pub(crate) async fn redeliver(
        &self,
        owner: &SenderId,
        id: Uuid,
        delivery_id: Uuid,
    ) -> Result<Delivery, ApiError> {
        let (log, _) = self.owned_log(owner, id).await?;
        match log
            .redeliver(id, delivery_id)
            .await
            .map_err(ApiError::log)?
        {
            Redelivery::Scheduled => {}
            Redelivery::Busy => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "A worker is sending this delivery right now: try again once it finished.",
                ));
            }
            _ => return Err(ApiError::not_found()),
        }
        self.thorn().outbox_signal().notify_one();
        scheduled(log.as_ref(), id, delivery_id).await
    }

    /// Sends `owner`'s subscription `id` a [`TEST_EVENT`]; `409` when it
    /// is paused.
    pub(crate) async fn send_test(
        &self,
        owner: &SenderId,
        id: Uuid,
        origin: Option<&str>,
    ) -> Result<Delivery, ApiError> {
        let (log, sub) = self.owned_log(owner, id).await?;
        if !sub.is_active() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "The subscription is paused: resume it to send it a test event.",
            ));
        }
        let message = json!({
            "event": TEST_EVENT,
            "ref": self.link(origin, &format!("/{id}/")),
            "sender": owner,
            "data": {"subscription": id, "test": true},
        });
        let outgoing = Event::new(TEST_EVENT).outgoing(
            self.thorn(),
            message,
            SendOptions::new().sender(owner.clone()),
        );
        let stored = StoredEvent::from_outgoing(outgoing).map_err(ApiError::log)?;
        let delivery_id = log.send_to(&sub, stored).await.map_err(ApiError::log)?;
        self.thorn().outbox_signal().notify_one();
        scheduled(log.as_ref(), id, delivery_id).await
    }
}

/// `info` as the API shows it.
fn delivery(info: &DeliveryInfo) -> Result<Delivery, ApiError> {
    let uuid = |s: &str| {
        Uuid::parse_str(s).map_err(|e| {
            ApiError::log(thorn_core::Error::Store(
                format!("delivery log: `{s}` is not a uuid: {e}").into(),
            ))
        })
    };
    let state: DeliveryStateName = info
        .state
        .parse::<DeliveryState>()
        .map_err(ApiError::log)?
        .into();
    Ok(Delivery {
        id: uuid(&info.id)?,
        event: info.event.clone(),
        event_id: uuid(&info.event_id)?,
        state,
        attempts: info.attempts,
        url: info.url.clone(),
        created_at: timestamp_micros(info.created_at),
        next_attempt_at: (state == DeliveryStateName::Pending)
            .then(|| timestamp_micros(info.run_at)),
        last_status: info.last_status,
        last_error: info.last_error.clone(),
    })
}

fn attempt(a: &AttemptInfo) -> Attempt {
    Attempt {
        attempt: a.attempt,
        started_at: timestamp_micros(a.started_at),
        status: a.status,
        latency_ms: a.latency_us as f64 / 1000.0,
        error: a.error.clone(),
        response: a.response.clone(),
    }
}

/// The page `?state=&limit=&before=` asks for; each wrong parameter is
/// named.
fn page(uri: &Uri) -> Result<DeliveryPage, ApiError> {
    let mut page = DeliveryPage::newest(PAGE);
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*name {
            "state" => {
                let state = value.parse::<DeliveryState>().map_err(|_| {
                    ApiError::field(
                        "state",
                        format!(
                            "`{value}` is not a state: use pending, delivered, dead or cancelled."
                        ),
                    )
                })?;
                page = page.in_state(state);
            }
            "limit" => {
                let limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::field(
                            "limit",
                            format!("`{value}` is not a whole number from 1 to {MAX_PAGE}."),
                        )
                    })?;
                page.limit = limit;
            }
            "before" => {
                let before = Uuid::parse_str(&value).map_err(|_| {
                    ApiError::field("before", format!("`{value}` is not a delivery id."))
                })?;
                page = page.before(before);
            }
            other => {
                return Err(ApiError::field(
                    other,
                    "Unknown parameter. Known: state, limit, before.",
                ));
            }
        }
    }
    Ok(page)
}

/// A page of the subscription's deliveries, newest first.
#[utoipa::path(get, path = "/{id}/deliveries/", tag = "deliveries", operation_id = "list_deliveries",
    params(
        ("id" = Uuid, Path, description = "The subscription"),
        ("state" = Option<DeliveryStateName>, Query, description = "Only deliveries in this state"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "At most this many (default 25)"),
        ("before" = Option<Uuid>, Query, description = "Only deliveries older than this one: the last of the previous page"),
    ),
    responses(
        (status = 200, description = "Newest first; `next` is the following page", body = DeliveryList),
        (status = 400, description = "A parameter is wrong, and named", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 501, description = "This server keeps no delivery log", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    Id(id): Id,
    uri: Uri,
) -> Result<Response, ApiError> {
    let page = page(&uri)?;
    let deliveries = api.deliveries(&owner, id, page).await?;
    let next = match deliveries.last() {
        Some(last) if deliveries.len() == page.limit => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(state) = page.state {
                query.append_pair("state", state.as_str());
            }
            query.append_pair("limit", &page.limit.to_string());
            query.append_pair("before", &last.id.to_string());
            Some(api.link(
                origin.as_deref(),
                &format!("/{id}/deliveries/?{}", query.finish()),
            ))
        }
        _ => None,
    };
    Ok(json(StatusCode::OK, &DeliveryList { deliveries, next }))
}

/// One delivery with every attempt.
#[utoipa::path(get, path = "/{id}/deliveries/{delivery}/", tag = "deliveries", operation_id = "show_delivery",
    params(
        ("id" = Uuid, Path, description = "The subscription"),
        ("delivery" = Uuid, Path, description = "The delivery (its `Hook-Delivery`)"),
    ),
    responses(
        (status = 200, description = "The delivery and its attempts, oldest first", body = DeliveryDetail),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription or delivery", body = ErrorBody),
        (status = 501, description = "This server keeps no delivery log", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(api): State<Api>,
    User(owner): User,
    Id(id): Id,
    DeliveryId(delivery_id): DeliveryId,
) -> Result<Response, ApiError> {
    let detail = api.delivery(&owner, id, delivery_id).await?;
    Ok(json(StatusCode::OK, &detail))
}

/// Sends a delivery again, whatever its state, with the same id.
#[utoipa::path(post, path = "/{id}/deliveries/{delivery}/redeliver/", tag = "deliveries", operation_id = "redeliver",
    params(
        ("id" = Uuid, Path, description = "The subscription"),
        ("delivery" = Uuid, Path, description = "The delivery (its `Hook-Delivery`)"),
    ),
    responses(
        (status = 202, description = "Due at once, with the same `Hook-Delivery`", body = Delivery),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Sent by a browser from another site", body = ErrorBody),
        (status = 404, description = "The caller has no such subscription or delivery", body = ErrorBody),
        (status = 409, description = "A worker is sending it right now", body = ErrorBody),
        (status = 501, description = "This server keeps no delivery log", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn redeliver(
    State(api): State<Api>,
    User(owner): User,
    _: SameSite,
    Id(id): Id,
    DeliveryId(delivery_id): DeliveryId,
) -> Result<Response, ApiError> {
    let again = api.redeliver(&owner, id, delivery_id).await?;
    Ok(json(StatusCode::ACCEPTED, &again))
}

/// The delivery just scheduled.
async fn scheduled(
    log: &dyn DeliveryLog,
    id: Uuid,
    delivery_id: Uuid,
) -> Result<Delivery, ApiError> {
    let (info, _) = history(log, id, delivery_id).await?;
    delivery(&info)
}

/// Delivery `delivery_id` of subscription `id` and its attempts; `404`
/// when the subscription has no such delivery.
async fn history(
    log: &dyn DeliveryLog,
    id: Uuid,
    delivery_id: Uuid,
) -> Result<DeliveryHistory, ApiError> {
    log.delivery_of(id, delivery_id)
        .await
        .map_err(ApiError::log)?
        .ok_or_else(ApiError::not_found)
}

/// Sends again the subscription's dead deliveries created since a time.
#[utoipa::path(post, path = "/{id}/recover/", tag = "deliveries", operation_id = "recover",
    params(("id" = Uuid, Path, description = "The subscription")),
    request_body(content = Recover, content_type = "application/json"),
    responses(
        (status = 202, description = "The deliveries sent again, same ids", body = DeliveryIds),
        (status = 400, description = "Invalid fields, each named", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 501, description = "This server keeps no delivery log", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn recover(
    State(api): State<Api>,
    User(owner): User,
    Id(id): Id,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Recover = json_body(&headers, body)?;
    let time = |field: &str, text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.to_utc())
            .map_err(|e| ApiError::field(field, format!("`{text}` is not an RFC 3339 time ({e}).")))
    };
    let since = time("since", &body.since)?;
    let until = body
        .until
        .as_deref()
        .map(|u| time("until", u))
        .transpose()?;
    let (log, _) = api.owned_log(&owner, id).await?;
    let deliveries = log
        .recover_since(id, since, until)
        .await
        .map_err(ApiError::log)?;
    if !deliveries.is_empty() {
        api.thorn().outbox_signal().notify_one();
    }
    Ok(json(StatusCode::ACCEPTED, &DeliveryIds { deliveries }))
}

/// Sends the subscription a `thorn.test` event.
#[utoipa::path(post, path = "/{id}/test/", tag = "deliveries", operation_id = "send_test",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses(
        (status = 202, description = "A `thorn.test` delivery, due at once", body = Delivery),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Sent by a browser from another site", body = ErrorBody),
        (status = 404, description = "The caller has no such subscription", body = ErrorBody),
        (status = 409, description = "The subscription is paused", body = ErrorBody),
        (status = 501, description = "This server keeps no delivery log", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    ))]
pub(crate) async fn test(
    State(api): State<Api>,
    User(owner): User,
    _: SameSite,
    Origin(origin): Origin,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let sent = api.send_test(&owner, id, origin.as_deref()).await?;
    Ok(json(StatusCode::ACCEPTED, &sent))
}

/// The events the application declares, as `THORN_EVENT_CHOICES` lets
/// subscriptions ask for them.
#[utoipa::path(get, path = "/events/", tag = "subscriptions", operation_id = "list_event_types",
    responses(
        (status = 200, description = "The events subscriptions can ask for", body = [EventTypeInfo]),
        (status = 401, description = "Not signed in", body = ErrorBody, headers(("WWW-Authenticate" = String))),
    ))]
pub(crate) async fn event_types(State(api): State<Api>, _: User) -> Response {
    json(StatusCode::OK, &api.catalogue())
}

impl Api {
    /// The events the application declares that `THORN_EVENT_CHOICES`
    /// lets subscriptions ask for.
    pub(crate) fn catalogue(&self) -> Vec<EventTypeInfo> {
        let choices = self.thorn().config().event_choices.as_deref();
        self.thorn()
            .event_types()
            .iter()
            .filter(|t| choices.is_none_or(|c| c.iter().any(|p| pattern_matches(p, &t.name))))
            .map(|t| EventTypeInfo {
                name: t.name.clone(),
                model: t.model.clone(),
                fires_on: t.fires_on.clone(),
            })
            .collect()
    }
}
