//! The web page of a user's webhooks, served by the same router under
//! `{prefix}/page/`: server-rendered HTML with no script, whose forms work
//! in any browser.
//!
//! | method and path | shows or does |
//! |---|---|
//! | `GET {prefix}/page/` | the user's subscriptions, and a form to subscribe |
//! | `POST {prefix}/page/` | subscribes (the form) |
//! | `GET {prefix}/page/{id}/` | one subscription (`?secret=show` shows its secret) and its recent deliveries (`?before=` pages on) |
//! | `POST {prefix}/page/{id}/pause/`, `resume/`, `test/`, `delete/` | pauses, resumes, sends a test event, unsubscribes |
//! | `GET {prefix}/page/{id}/deliveries/{delivery}/` | one delivery and every attempt |
//! | `POST {prefix}/page/{id}/deliveries/{delivery}/redeliver/` | sends it again |
//!
//! Who the user is comes from the API's [`Authenticate`](crate::Authenticate),
//! as for the JSON routes (no user: `401`); each action is the JSON API's
//! own operation, with its checks. Every form carries a token signed for
//! the user (see [`Api::page_key`](crate::Api::page_key)), and a form
//! posted from another site is refused with `403`. Everything the page
//! shows is escaped, and its `Content-Security-Policy` lets it run no
//! script at all.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use thorn_core::SenderId;
use thorn_core::outbox::DeliveryPage;
use uuid::Uuid;

use crate::error::ApiError;
use crate::types::SubscriptionFields;
use crate::{Api, Origin, fields_of};

pub(crate) mod csrf;
mod html;
mod views;

use html::Html;

/// Deliveries on a subscription's page.
const RECENT: usize = 25;

/// The page's routes, under `{prefix}/page`.
pub(crate) fn routes(router: Router<Api>, prefix: &str) -> Router<Api> {
    let p = format!("{prefix}/page");
    router
        .route(&p, get(index).post(subscribe))
        .route(&format!("{p}/"), get(index).post(subscribe))
        .route(&format!("{p}/style.css"), get(style))
        .route(&format!("{p}/{{id}}/"), get(subscription))
        .route(&format!("{p}/{{id}}/pause/"), post(pause))
        .route(&format!("{p}/{{id}}/resume/"), post(resume))
        .route(&format!("{p}/{{id}}/test/"), post(test))
        .route(&format!("{p}/{{id}}/delete/"), post(delete))
        .route(
            &format!("{p}/{{id}}/deliveries/{{delivery}}/"),
            get(delivery),
        )
        .route(
            &format!("{p}/{{id}}/deliveries/{{delivery}}/redeliver/"),
            post(redeliver),
        )
}

/// The signed-in user, or a `401` page.
struct PageUser(SenderId);

impl FromRequestParts<Api> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        match api.inner.auth.authenticate(parts).await {
            Some(user) => Ok(PageUser(user)),
            None => Err(api.failed(
                None,
                &ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "You are not signed in: sign in to this application to see your webhooks.",
                ),
            )),
        }
    }
}

/// The `{id}` (and `{delivery}`) of a page's route; one that is not a
/// uuid is a `404` page.
struct PageIds(Uuid, Uuid);

impl FromRequestParts<Api> for PageIds {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let not_found = |e: &ApiError| api.failed(None, e);
        let id = crate::path_uuid(parts, api, "id")
            .await
            .map_err(|e| not_found(&e))?;
        let params = axum::extract::RawPathParams::from_request_parts(parts, api)
            .await
            .map_err(|_| not_found(&ApiError::not_found()))?;
        let delivery = if params.iter().any(|(name, _)| name == "delivery") {
            crate::path_uuid(parts, api, "delivery")
                .await
                .map_err(|e| not_found(&e))?
        } else {
            Uuid::nil()
        };
        Ok(PageIds(id, delivery))
    }
}

impl Api {
    /// The path of `rest` on the page.
    fn page_path(&self, rest: &str) -> String {
        format!("{}/page{rest}", self.inner.prefix)
    }

    /// A `303` to `rest` on the page, saying `done`.
    fn see(&self, rest: &str, done: &str) -> Response {
        let to = format!("{}?done={done}", self.page_path(rest));
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(to) = HeaderValue::from_str(&to) {
            response.headers_mut().insert(header::LOCATION, to);
        }
        response
    }

    /// `e` as a page, for `user` when signed in.
    fn failed(&self, user: Option<&SenderId>, e: &ApiError) -> Response {
        let mut page = Html::default();
        let title = e.status().canonical_reason().unwrap_or("Not done");
        views::head(&mut page, self, title, user);
        views::error(&mut page, e);
        page.s("<p><a href=\"")
            .t(self.page_path("/"))
            .s("\">Back to your webhooks</a></p>");
        views::foot(&mut page);
        page.answer(e.status())
    }

    /// The fields of a form `user` posted from this page: `415` unless it
    /// is a form, `403` unless it carries the user's token and comes from
    /// this site.
    fn form(
        &self,
        user: &SenderId,
        origin: Option<&str>,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let refuse = |status, detail: &str| ApiError::new(status, detail);
        let body = body.map_err(|e| refuse(e.status(), &e.body_text()))?;
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "The page's forms send application/x-www-form-urlencoded.",
            ));
        }
        if self.sent_cross_site(headers, origin) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This form was sent from another site, or this server does not know its own address (behind a proxy, set Api::public_base_url): it was not done.",
            ));
        }
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let token = fields.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v);
        if !token.is_some_and(|t| csrf::valid(&self.inner.page_key, user, t)) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This form has expired or was not made by this page: reload the page and try again.",
            ));
        }
        Ok(fields.into_iter().filter(|(k, _)| k != "csrf").collect())
    }

    /// The token `user`'s forms carry.
    fn token(&self, user: &SenderId) -> String {
        csrf::token(&self.inner.page_key, user)
    }
}

/// The query parameter `name` of `uri`.
fn query(uri: &Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::STYLE,
    )
        .into_response()
}

/// The user's subscriptions and the form to subscribe.
async fn index(State(api): State<Api>, PageUser(user): PageUser, uri: Uri) -> Response {
    let done = query(&uri, "done");
    views::index(&api, &user, done.as_deref(), None, &[]).await
}

/// Subscribes with the form's fields; shows the form again, with what
/// was wrong, when they are invalid.
async fn subscribe(
    State(api): State<Api>,
    PageUser(user): PageUser,
    Origin(origin): Origin,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form = match api.form(&user, origin.as_deref(), &headers, body) {
        Ok(form) => form,
        Err(e) => return api.failed(Some(&user), &e),
    };
    // An empty optional field takes its default; the rest is checked as
    // the JSON API checks it, unknown fields included.
    let mut fields = Map::new();
    for (name, value) in &form {
        // A secret is taken as typed, as the JSON API takes it.
        let value = if name == "hmac_secret" {
            value
        } else {
            value.trim()
        };
        if value.is_empty() && name != "event" && name != "url" {
            continue;
        }
        fields.insert(name.clone(), Value::String(value.to_owned()));
    }
    let subscribed = match fields_of::<SubscriptionFields>(Value::Object(fields)) {
        Ok(fields) => api.subscribe(user.clone(), &fields).await,
        Err(e) => Err(e),
    };
    match subscribed {
        Ok(sub) => api.see(&format!("/{}/", sub.uuid), "subscribed"),
        Err(e) => views::index(&api, &user, None, Some(&e), &form).await,
    }
}

/// One subscription and its recent deliveries.
async fn subscription(
    State(api): State<Api>,
    PageUser(user): PageUser,
    PageIds(id, _): PageIds,
    uri: Uri,
) -> Response {
    let mut page = DeliveryPage::newest(RECENT);
    if let Some(before) = query(&uri, "before") {
        match Uuid::parse_str(&before) {
            Ok(before) => page = page.before(before),
            Err(_) => {
                let e = ApiError::field("before", format!("`{before}` is not a delivery id."));
                return api.failed(Some(&user), &e);
            }
        }
    }
    let sub = match api.owned(&user, id).await {
        Ok(sub) => sub,
        Err(e) => return api.failed(Some(&user), &e),
    };
    let deliveries = api.deliveries(&user, id, page).await;
    let shown = views::Shown {
        done: query(&uri, "done"),
        secret: query(&uri, "secret").as_deref() == Some("show"),
        paged: page.before.is_some(),
    };
    views::subscription(&api, &user, &sub, deliveries, &shown)
}

/// What a button on a subscription's page does.
#[derive(Clone, Copy)]
enum Action {
    Pause,
    Resume,
    Test,
    Delete,
}

async fn act(
    action: Action,
    api: Api,
    user: SenderId,
    origin: Option<String>,
    id: Uuid,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form = match api.form(&user, origin.as_deref(), &headers, body) {
        Ok(form) => form,
        Err(e) => return api.failed(Some(&user), &e),
    };
    let active = |on: bool| SubscriptionFields {
        active: Some(on),
        ..SubscriptionFields::default()
    };
    // Back where the button was: the list, or the subscription's page.
    let from_list = form.iter().any(|(k, v)| k == "from" && v == "list");
    let here = if from_list {
        "/".to_owned()
    } else {
        format!("/{id}/")
    };
    let done = match action {
        Action::Pause => api
            .change(&user, id, &active(false))
            .await
            .map(|_| "paused"),
        Action::Resume => api
            .change(&user, id, &active(true))
            .await
            .map(|_| "resumed"),
        Action::Test => api
            .send_test(&user, id, origin.as_deref())
            .await
            .map(|_| "tested"),
        Action::Delete => match api.unsubscribe(&user, id).await {
            Ok(()) => return api.see("/", "unsubscribed"),
            Err(e) => Err(e),
        },
    };
    match done {
        Ok(done) => api.see(&here, done),
        Err(e) => api.failed(Some(&user), &e),
    }
}

macro_rules! action {
    ($($name:ident => $action:expr),* $(,)?) => {$(
        async fn $name(
            State(api): State<Api>,
            PageUser(user): PageUser,
            Origin(origin): Origin,
            PageIds(id, _): PageIds,
            headers: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Response {
            act($action, api, user, origin, id, headers, body).await
        }
    )*};
}

action! {
    pause => Action::Pause,
    resume => Action::Resume,
    test => Action::Test,
    delete => Action::Delete,
}

/// One delivery and its attempts.
async fn delivery(
    State(api): State<Api>,
    PageUser(user): PageUser,
    PageIds(id, delivery_id): PageIds,
    uri: Uri,
) -> Response {
    match api.delivery(&user, id, delivery_id).await {
        Ok(detail) => views::delivery(&api, &user, id, &detail, query(&uri, "done").as_deref()),
        Err(e) => api.failed(Some(&user), &e),
    }
}

/// Sends a delivery again, and shows it.
async fn redeliver(
    State(api): State<Api>,
    PageUser(user): PageUser,
    Origin(origin): Origin,
    PageIds(id, delivery_id): PageIds,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = api.form(&user, origin.as_deref(), &headers, body) {
        return api.failed(Some(&user), &e);
    }
    match api.redeliver(&user, id, delivery_id).await {
        Ok(_) => api.see(&format!("/{id}/deliveries/{delivery_id}/"), "redelivered"),
        Err(e) => api.failed(Some(&user), &e),
    }
}
