//! The subscription REST API of Thorn's manual, as an axum router.
//!
//! | method and path | does |
//! |---|---|
//! | `POST {prefix}/` | subscribe: `event` and `url` required; `content_type`, `hmac_digest`, `hmac_secret`, `active` optional |
//! | `GET {prefix}/` | the caller's subscriptions, oldest first |
//! | `GET {prefix}/{uuid}/` | one subscription |
//! | `PATCH` or `POST {prefix}/{uuid}/` | change fields of a subscription; `"active": false` pauses it, `true` resumes it (also after Thorn disabled it) |
//! | `DELETE {prefix}/{uuid}/` | unsubscribe |
//! | `GET {prefix}/openapi.json` | the OpenAPI document |
//!
//! Authentication belongs to the application: implement [`Authenticate`]
//! (or pass a closure) to say who the caller is; requests without a user
//! get `401`. A user never sees or changes another user's subscription:
//! those requests answer `404`, exactly like a uuid that does not exist.
//! Invalid requests answer `400` with the messages of each field, Django
//! REST Framework style (`{"url": ["..."]}`); bodies over the limit `413`,
//! bodies that are not JSON `415`.
//!
//! The API is built from the [`Thorn`] that delivers: it serves that
//! Thorn's subscription store and follows its configuration (the event
//! choices of `THORN_EVENT_CHOICES`, the recipient validators), so what the
//! API accepts is what gets delivered.
//!
//! ```
//! use std::sync::Arc;
//! use thorn_api::Api;
//! use thorn_core::{Config, SenderId, Thorn, subscriber::MemoryStore};
//!
//! let config = Config { event_choices: Some(vec!["article.*".into()]), ..Config::default() };
//! let thorn = Thorn::builder(config).subscriptions(Arc::new(MemoryStore::new())).build()?;
//! // Here the user id comes from a header; use your session or token check.
//! let api = Api::new(&thorn, |parts: &axum::http::request::Parts| {
//!     parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(SenderId::from)
//! })?
//! .prefix("/api/hooks");
//! let app: axum::Router = axum::Router::new().merge(api.router());
//! # Ok::<(), thorn_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use thorn_core::codec::ContentType;
use thorn_core::signing::HmacDigest;
use thorn_core::subscriber::validate_pattern;
use thorn_core::subscriber::{Replace, Secret};
use thorn_core::validate::Validators;
use thorn_core::{SenderId, Subscriber, SubscriptionStore, Thorn};
use uuid::Uuid;

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

/// The API's settings and dependencies; [`Api::router`] builds the routes.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Arc<dyn SubscriptionStore>,
    auth: Arc<dyn Authenticate>,
    prefix: String,
    public_base_url: Option<String>,
    event_choices: Option<Vec<String>>,
    validators: Validators,
    body_limit: usize,
}

impl Api {
    /// The API of `thorn`'s subscriptions, with `auth`, mounted at
    /// `/hooks`: it serves the Thorn's subscription store
    /// ([`ThornBuilder::subscriptions`](thorn_core::ThornBuilder::subscriptions))
    /// and follows its configuration — `THORN_EVENT_CHOICES` and the
    /// recipient validators — so the API and the deliveries cannot disagree.
    /// Fails with [`Error::NoSubscriptionStore`](thorn_core::Error::NoSubscriptionStore)
    /// when the Thorn has none.
    pub fn new(thorn: &Thorn, auth: impl Authenticate) -> thorn_core::Result<Self> {
        let store = thorn
            .subscription_store()
            .cloned()
            .ok_or(thorn_core::Error::NoSubscriptionStore)?;
        let config = thorn.config();
        Ok(Api {
            inner: Arc::new(Inner {
                store,
                auth: Arc::new(auth),
                prefix: "/hooks".into(),
                public_base_url: None,
                event_choices: config.event_choices.clone(),
                validators: config.validators(),
                body_limit: 64 * 1024,
            }),
        })
    }

    /// Changes this API's settings (a clone, or a router already built,
    /// keeps its own).
    fn edit(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Where the routes live (default `/hooks`).
    pub fn prefix(self, prefix: &str) -> Self {
        let prefix = format!("/{}", prefix.trim_matches('/'));
        self.edit(|i| i.prefix = if prefix == "/" { String::new() } else { prefix })
    }

    /// The base of `subscription` links: `https://api.example.com`.
    /// Without it they are built from the request (`Host`,
    /// `X-Forwarded-Host`, `X-Forwarded-Proto`), and stay relative only when
    /// the request names no host.
    pub fn public_base_url(self, base: &str) -> Self {
        let base = base.trim_end_matches('/').to_owned();
        self.edit(|i| i.public_base_url = Some(base))
    }

    /// Largest accepted body in bytes (default 64 KiB).
    pub fn body_limit(self, bytes: usize) -> Self {
        self.edit(|i| i.body_limit = bytes)
    }

    /// The routes, ready to `merge` into the application's router.
    pub fn router(self) -> Router {
        let p = self.inner.prefix.clone();
        let limit = self.inner.body_limit;
        let collection = get(list).post(create);
        let item = get(show).patch(update).post(update).delete(remove);
        Router::new()
            .route(&format!("{p}/"), collection.clone())
            .route(if p.is_empty() { "/" } else { &p }, collection)
            .route(&format!("{p}/openapi.json"), get(openapi))
            .route(&format!("{p}/{{id}}/"), item.clone())
            .route(&format!("{p}/{{id}}"), item)
            .layer(DefaultBodyLimit::max(limit))
            .layer(axum::middleware::map_response(explain_405))
            .with_state(self)
    }
}

/// An error answer: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn detail(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "detail": detail.into() }),
        }
    }

    fn not_found() -> Self {
        Self::detail(StatusCode::NOT_FOUND, "Not found.")
    }

    fn conflict(why: &str) -> Self {
        Self::detail(StatusCode::CONFLICT, why)
    }

    fn fields(errors: BTreeMap<&'static str, Vec<String>>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::to_value(errors).expect("strings are JSON"),
        }
    }

    fn store(e: thorn_core::Error) -> Self {
        tracing::error!(error = %e, "subscription store failed");
        Self::detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "The subscription store is unavailable; try again.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &self.body);
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names how to authenticate.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"webhooks\""),
            );
        }
        response
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Where the request was sent, `http(s)://host[:port]`, from `Host` (or
/// `X-Forwarded-Host`) and `X-Forwarded-Proto`: what makes links absolute,
/// as Python Thorn's clients expect, when no public base URL is set.
struct Origin(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let host = header("x-forwarded-host")
            .or_else(|| header("host"))
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            // A host, not a path or anything else to paste into a link.
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            });
        let scheme = match header("x-forwarded-proto") {
            Some("https") => "https",
            _ => parts.uri.scheme_str().unwrap_or("http"),
        };
        Ok(Origin(host.map(|h| format!("{scheme}://{h}"))))
    }
}

/// axum answers a method a route does not serve with 405 and no body (it
/// adds `Allow` afterwards): the body says so in the API's error shape.
async fn explain_405(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let mut answer = ApiError::detail(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed here: the Allow header lists those that are.",
    )
    .into_response();
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// The authenticated caller.
struct User(SenderId);

impl FromRequestParts<Api> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        match api.inner.auth.authenticate(parts).await {
            Some(user) => Ok(User(user)),
            None => Err(ApiError::detail(
                StatusCode::UNAUTHORIZED,
                "Authentication credentials were not provided.",
            )),
        }
    }
}

fn timestamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The fields a request may set.
const WRITABLE: [&str; 6] = [
    "event",
    "url",
    "content_type",
    "hmac_secret",
    "hmac_digest",
    "active",
];

/// The fields a subscription is shown with that requests cannot set
/// (accepted and ignored, so a client may send back what it read).
const READ_ONLY: [&str; 7] = [
    "id",
    "user",
    "created_at",
    "updated_at",
    "subscription",
    "disabled_at",
    "disabled_reason",
];

impl Api {
    /// `s` as the API shows it; `origin` (`https://host`) makes its link
    /// absolute when no public base URL is configured.
    fn render(&self, s: &Subscriber, origin: Option<&str>) -> Value {
        let path = format!("{}/{}/", self.inner.prefix, s.uuid);
        let link = match (&self.inner.public_base_url, origin) {
            (Some(base), _) => format!("{base}{path}"),
            (None, Some(origin)) => format!("{origin}{path}"),
            (None, None) => path,
        };
        json!({
            "id": s.uuid,
            "url": s.url.as_str(),
            "event": s.event,
            "content_type": s.content_type.as_str(),
            "hmac_secret": s.hmac_secret.expose(),
            "hmac_digest": s.hmac_digest.as_str(),
            "user": s.owner,
            "created_at": timestamp(s.created_at),
            "updated_at": timestamp(s.updated_at),
            "subscription": link,
            "active": s.is_active(),
            "disabled_at": s.disabled_at.map(timestamp),
            "disabled_reason": s.disabled_reason,
        })
    }

    /// Validates the fields present in `body` onto `target`; returns the
    /// `active` requested, if any (the caller applies it).
    fn apply(
        &self,
        body: &Map<String, Value>,
        target: &mut Subscriber,
        creating: bool,
    ) -> Result<Option<bool>, ApiError> {
        let mut errors: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        // A misspelt field is an error, not a default quietly taken (the
        // fields a subscription is shown with may come back unchanged).
        let unknown: Vec<&str> = body
            .keys()
            .map(String::as_str)
            .filter(|k| !WRITABLE.contains(k) && !READ_ONLY.contains(k))
            .collect();
        if !unknown.is_empty() {
            errors.insert(
                "non_field_errors",
                vec![format!(
                    "Unknown field(s): {}. Known: {}.",
                    unknown.join(", "),
                    WRITABLE.join(", ")
                )],
            );
        }
        let text =
            |name: &'static str,
             required: bool,
             errors: &mut BTreeMap<&'static str, Vec<String>>| match body.get(name) {
                None if required => {
                    errors
                        .entry(name)
                        .or_default()
                        .push("This field is required.".into());
                    None
                }
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) => {
                    errors
                        .entry(name)
                        .or_default()
                        .push("This field may not be null.".into());
                    None
                }
                Some(_) => {
                    errors
                        .entry(name)
                        .or_default()
                        .push("Not a valid string.".into());
                    None
                }
            };
        if let Some(event) = text("event", creating, &mut errors) {
            let event = event.trim().to_owned();
            if let Err(e) = validate_pattern(&event) {
                errors.entry("event").or_default().push(e);
            } else if let Some(choices) = &self.inner.event_choices {
                if !choices.contains(&event) {
                    errors.entry("event").or_default().push(format!(
                        "`{event}` is not one of the available events: {}",
                        choices.join(", ")
                    ));
                }
            }
            target.event = event;
        }
        if let Some(url) = text("url", creating, &mut errors) {
            match url::Url::parse(url.trim()) {
                Err(e) => errors
                    .entry("url")
                    .or_default()
                    .push(format!("Enter a valid URL ({e}).")),
                Ok(_) if url.len() > 2048 => errors
                    .entry("url")
                    .or_default()
                    .push("Ensure this field has no more than 2048 characters.".into()),
                Ok(parsed) => match self.inner.validators.check_url(&parsed) {
                    Ok(()) => target.url = parsed,
                    Err(blocked) => errors
                        .entry("url")
                        .or_default()
                        .push(format!("blocked: {}", blocked.rule)),
                },
            }
        }
        if let Some(ct) = text("content_type", false, &mut errors) {
            match ct.parse::<ContentType>() {
                Ok(ct) => target.content_type = ct,
                Err(e) => errors
                    .entry("content_type")
                    .or_default()
                    .push(e.to_string()),
            }
        }
        if let Some(d) = text("hmac_digest", false, &mut errors) {
            match d.parse::<HmacDigest>() {
                Ok(d) => target.hmac_digest = d,
                Err(e) => errors.entry("hmac_digest").or_default().push(e.to_string()),
            }
        }
        if let Some(secret) = text("hmac_secret", false, &mut errors) {
            if secret.is_empty()
                || secret.chars().count() > 255
                || secret.chars().any(char::is_control)
            {
                errors.entry("hmac_secret").or_default().push(
                    "Use 1 to 255 printable characters (or leave it out for a random one).".into(),
                );
            } else {
                target.hmac_secret = secret.into();
            }
        }
        let active = match body.get("active") {
            None => None,
            Some(Value::Bool(active)) => Some(*active),
            Some(_) => {
                errors
                    .entry("active")
                    .or_default()
                    .push("Must be a valid boolean.".into());
                None
            }
        };
        if errors.is_empty() {
            Ok(active)
        } else {
            Err(ApiError::fields(errors))
        }
    }
}

fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|e| ApiError::detail(e.status(), e.body_text()))?;
    // `application/json`, with parameters or not; nothing else, and not
    // nothing.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|ct| ct.to_str().unwrap_or("").to_ascii_lowercase());
    let media = ct
        .as_deref()
        .map(|ct| ct.split(';').next().unwrap_or("").trim());
    if media != Some("application/json") {
        let got = match &ct {
            Some(ct) => format!("\"{ct}\""),
            None => "no Content-Type".to_owned(),
        };
        return Err(ApiError::detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported media type {got} in request: send application/json."),
        ));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => {
            let mut e = BTreeMap::new();
            e.insert(
                "non_field_errors",
                vec!["Invalid data. Expected a JSON object.".into()],
            );
            Err(ApiError::fields(e))
        }
        Err(e) => Err(ApiError::detail(
            StatusCode::BAD_REQUEST,
            format!("JSON parse error - {e}"),
        )),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found())
}

async fn list(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
) -> Result<Response, ApiError> {
    let subs = api
        .inner
        .store
        .list(&owner)
        .await
        .map_err(ApiError::store)?;
    Ok(json_response(
        StatusCode::OK,
        &Value::Array(
            subs.iter()
                .map(|s| api.render(s, origin.as_deref()))
                .collect(),
        ),
    ))
}

async fn create(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_object(&headers, body)?;
    let mut sub = Subscriber::new("*", "http://placeholder.invalid/").expect("valid placeholder");
    sub.hmac_secret = Secret::generate();
    sub.owner = Some(owner);
    if api.apply(&body, &mut sub, true)? == Some(false) {
        sub.disable(PAUSED);
    }
    api.inner
        .store
        .insert(sub.clone())
        .await
        .map_err(ApiError::store)?;
    Ok(json_response(
        StatusCode::CREATED,
        &api.render(&sub, origin.as_deref()),
    ))
}

async fn show(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id.map_err(|_| ApiError::not_found())?.0)?;
    match api
        .inner
        .store
        .get(&owner, id)
        .await
        .map_err(ApiError::store)?
    {
        Some(s) => Ok(json_response(
            StatusCode::OK,
            &api.render(&s, origin.as_deref()),
        )),
        None => Err(ApiError::not_found()),
    }
}

async fn update(
    State(api): State<Api>,
    User(owner): User,
    Origin(origin): Origin,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id.map_err(|_| ApiError::not_found())?.0)?;
    let body = json_object(&headers, body)?;
    let store = &api.inner.store;
    // Read, change the named fields, write if nobody wrote in between;
    // else again on what they wrote: concurrent PATCHes of different
    // fields all survive.
    let mut active = None;
    let mut written = false;
    for _ in 0..PATCH_ATTEMPTS {
        let Some(mut sub) = store.get(&owner, id).await.map_err(ApiError::store)? else {
            return Err(ApiError::not_found());
        };
        let seen = sub.updated_at;
        active = api.apply(&body, &mut sub, false)?;
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
        return Err(ApiError::conflict(
            "the subscription kept changing while this PATCH was applied: send it again",
        ));
    }
    if let Some(active) = active {
        store
            .set_active(&owner, id, active, PAUSED)
            .await
            .map_err(ApiError::store)?;
    }
    // As stored now (a worker may have disabled it meanwhile).
    match store.get(&owner, id).await.map_err(ApiError::store)? {
        Some(sub) => Ok(json_response(
            StatusCode::OK,
            &api.render(&sub, origin.as_deref()),
        )),
        None => Err(ApiError::not_found()),
    }
}

/// How many times a PATCH is applied again on a subscription that changed
/// while it was applied.
const PATCH_ATTEMPTS: usize = 16;

/// Why a subscription its owner paused is disabled.
const PAUSED: &str = "paused by its owner";

async fn remove(
    State(api): State<Api>,
    User(owner): User,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id.map_err(|_| ApiError::not_found())?.0)?;
    if api
        .inner
        .store
        .delete(&owner, id)
        .await
        .map_err(ApiError::store)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found())
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
