//! The subscription REST API of Thorn's manual, as an axum router, with
//! each user's delivery log.
//!
//! | method and path | does |
//! |---|---|
//! | `POST {prefix}/` | subscribe: `event` and `url` required; `content_type`, `hmac_digest`, `hmac_secret`, `active` optional |
//! | `GET {prefix}/` | the caller's subscriptions, oldest first |
//! | `GET {prefix}/{id}/` | one subscription |
//! | `PATCH` or `POST {prefix}/{id}/` | change the fields it names; `"active": false` pauses it, `true` resumes it (also after Thorn disabled it) |
//! | `DELETE {prefix}/{id}/` | unsubscribe |
//! | `GET {prefix}/{id}/deliveries/` | its deliveries, newest first: `?state=dead&limit=25&before={delivery}` |
//! | `GET {prefix}/{id}/deliveries/{delivery}/` | one delivery with every attempt |
//! | `POST {prefix}/{id}/deliveries/{delivery}/redeliver/` | send it again, same `Hook-Delivery` |
//! | `POST {prefix}/{id}/recover/` | send again its dead deliveries since a time: `{"since": "2026-12-01T00:00:00Z"}` |
//! | `POST {prefix}/{id}/test/` | send it a `thorn.test` event |
//! | `GET {prefix}/events/` | the events the application declares |
//! | `GET {prefix}/openapi.json` | the OpenAPI 3.1 document, generated from these routes and types |
//!
//! Authentication belongs to the application: implement [`Authenticate`]
//! (or pass a closure) to say who the caller is; requests without a user
//! get `401` with `WWW-Authenticate`. A user never sees or changes another
//! user's subscriptions or deliveries: those requests answer `404`,
//! exactly like an id that does not exist. Every error answers one shape,
//! [`ErrorBody`](types::ErrorBody): `{"detail": "...", "fields": {"url":
//! ["..."]}}` (`fields` only for invalid input). Bodies must be JSON
//! (`415` otherwise); unknown fields are `400` naming them; bodies over
//! the limit `413`.
//!
//! The API is built from the [`Thorn`] that delivers: it serves that
//! Thorn's subscription store and delivery log and follows its
//! configuration (the event choices of `THORN_EVENT_CHOICES`, the
//! recipient validators), so what the API accepts is what gets delivered.
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

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thorn_core::{SenderId, Thorn};
use uuid::Uuid;

mod auth;
mod deliveries;
mod error;
mod openapi;
pub mod page;
mod subscriptions;
pub mod types;

pub use auth::Authenticate;
pub use deliveries::TEST_EVENT;
pub use error::ApiError;

/// The API's settings and dependencies; [`Api::router`] builds the routes.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    thorn: Thorn,
    auth: Arc<dyn Authenticate>,
    prefix: String,
    public_base_url: Option<String>,
    /// The Thorn's recipient rules (with `THORN_ALLOW_RECIPIENTS`), built once.
    validators: thorn_core::validate::Validators,
    body_limit: usize,
    /// What the page's form tokens are signed with.
    page_key: Arc<[u8]>,
}

impl Api {
    /// The API of `thorn`'s subscriptions, with `auth`, mounted at
    /// `/hooks`: it serves the Thorn's subscription store
    /// ([`ThornBuilder::subscriptions`](thorn_core::ThornBuilder::subscriptions))
    /// and delivery log ([`ThornBuilder::delivery_log`](thorn_core::ThornBuilder::delivery_log);
    /// without one the delivery routes answer `501`), and follows its
    /// configuration — `THORN_EVENT_CHOICES` and the recipient validators —
    /// so the API and the deliveries cannot disagree. Fails with
    /// [`Error::NoSubscriptionStore`](thorn_core::Error::NoSubscriptionStore)
    /// when the Thorn has no subscription store.
    pub fn new(thorn: &Thorn, auth: impl Authenticate) -> thorn_core::Result<Self> {
        if thorn.subscription_store().is_none() {
            return Err(thorn_core::Error::NoSubscriptionStore);
        }
        Ok(Api {
            inner: Arc::new(Inner {
                thorn: thorn.clone(),
                auth: Arc::new(auth),
                prefix: "/hooks".into(),
                public_base_url: None,
                validators: thorn.config().validators(),
                body_limit: 64 * 1024,
                page_key: thorn_core::signing::generate_secret().into_bytes().into(),
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

    /// The key the [web page](page)'s forms are signed with, against
    /// cross-site requests (default: a random one for this process). Give
    /// every process that serves the page behind one address the same
    /// secret key, or a form shown by one is refused by the others (`403`,
    /// "reload the page").
    pub fn page_key(self, key: &[u8]) -> Self {
        self.edit(|i| i.page_key = key.into())
    }

    /// The OpenAPI 3.1 document of these routes, with this API's prefix
    /// as its server and `THORN_EVENT_CHOICES` as the `event` values a
    /// request may use: what `GET {prefix}/openapi.json` serves.
    pub fn openapi(&self) -> serde_json::Value {
        openapi::document(self)
    }

    /// The routes, ready to `merge` into the application's router.
    pub fn router(self) -> Router {
        use deliveries as d;
        use subscriptions as s;
        let p = self.inner.prefix.clone();
        let limit = self.inner.body_limit;
        let collection = get(s::list).post(s::create);
        let item = get(s::show)
            .patch(s::update)
            .post(s::update_by_post)
            .delete(s::remove);
        let doc = Arc::new(self.openapi());
        let served = get(move || openapi::serve(doc.clone()));
        // Each route with and without its trailing slash.
        let mut router = Router::new()
            .route(if p.is_empty() { "/" } else { &p }, collection.clone())
            .route(&format!("{p}/openapi.json"), served);
        for (path, route) in [
            ("/", collection),
            ("/{id}/", item),
            ("/{id}/deliveries/", get(d::list)),
            ("/{id}/deliveries/{delivery}/", get(d::show)),
            ("/{id}/deliveries/{delivery}/redeliver/", post(d::redeliver)),
            ("/{id}/recover/", post(d::recover)),
            ("/{id}/test/", post(d::test)),
            ("/events/", get(d::event_types)),
        ] {
            router = router.route(&format!("{p}{path}"), route.clone());
            if path != "/" {
                router = router.route(&format!("{p}{}", path.trim_end_matches('/')), route);
            }
        }
        page::routes(router, &p)
            .layer(DefaultBodyLimit::max(limit))
            .layer(axum::middleware::map_response(explain_405))
            .with_state(self)
    }

    fn thorn(&self) -> &Thorn {
        &self.inner.thorn
    }

    /// `path` (under the prefix) as a link: absolute from the public base
    /// URL or the request's `origin`, relative only without either.
    fn link(&self, origin: Option<&str>, path: &str) -> String {
        let path = format!("{}{path}", self.inner.prefix);
        match (&self.inner.public_base_url, origin) {
            (Some(base), _) => format!("{base}{path}"),
            (None, Some(origin)) => format!("{origin}{path}"),
            (None, None) => path,
        }
    }
}

/// `body` as a JSON answer with `status`.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "an API answer could not be encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The request's body as `T`: JSON only (`415` otherwise), an object, each
/// type error naming its field.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    // `application/json`, with parameters or not; nothing else, and not
    // nothing.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|ct| String::from_utf8_lossy(ct.as_bytes()).to_ascii_lowercase());
    let media = ct
        .as_deref()
        .map(|ct| ct.split(';').next().unwrap_or("").trim());
    if media != Some("application/json") {
        let got = match &ct {
            Some(ct) => format!("{ct:?}"),
            None => "no Content-Type".to_owned(),
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported media type {got} in request: send application/json."),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("JSON parse error - {e}")))?;
    fields_of(value)
}

/// `value` as `T`, each type error naming its field.
pub(crate) fn fields_of<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "Invalid data: expected a JSON object.",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        if field == "." {
            // Not in one field: a missing one, or an unknown one.
            ApiError::bad_request(message)
        } else {
            ApiError::field(&field, message)
        }
    })
}

/// The uuid in the route's `{name}`: one that is not a uuid is not
/// found, like one that does not exist.
async fn path_uuid<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    name: &str,
) -> Result<Uuid, ApiError> {
    let params = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::not_found())?;
    params
        .0
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| Uuid::parse_str(v).ok())
        .ok_or_else(ApiError::not_found)
}

/// The subscription `{id}` of a route.
pub(crate) struct Id(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_uuid(parts, state, "id").await.map(Id)
    }
}

/// The `{delivery}` of a route.
pub(crate) struct DeliveryId(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for DeliveryId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_uuid(parts, state, "delivery").await.map(DeliveryId)
    }
}

/// Where the request was sent, `http(s)://host[:port]`, from `Host` (or
/// `X-Forwarded-Host`) and `X-Forwarded-Proto`: what makes links absolute,
/// as Python Thorn's clients expect, when no public base URL is set.
pub(crate) struct Origin(Option<String>);

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

impl Api {
    /// Whether a browser sent this request from another site (see
    /// [`page::csrf::cross_site`]).
    fn sent_cross_site(&self, headers: &HeaderMap, origin: Option<&str>) -> bool {
        let base = self.inner.public_base_url.as_deref();
        page::csrf::cross_site(headers, &[origin, base])
    }
}

/// A request no browser sent from another site: `403` otherwise. For the
/// routes that change something without a JSON body, which a form or a
/// `no-cors` fetch on another site could otherwise send with the user's
/// cookies.
pub(crate) struct SameSite;

impl FromRequestParts<Api> for SameSite {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let Ok(Origin(origin)) = Origin::from_request_parts(parts, api).await;
        if api.sent_cross_site(&parts.headers, origin.as_deref()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Sent by a browser from another site (or this server does not know its own \
                 address: behind a proxy, set Api::public_base_url).",
            ));
        }
        Ok(SameSite)
    }
}

/// The authenticated caller.
pub(crate) struct User(SenderId);

impl FromRequestParts<Api> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        match api.inner.auth.authenticate(parts).await {
            Some(user) => Ok(User(user)),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Authentication credentials were not provided.",
            )),
        }
    }
}

/// axum answers a method a route does not serve with 405 and no body (it
/// adds `Allow` afterwards): the body says so in the API's error shape.
async fn explain_405(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let mut answer = ApiError::new(
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

/// `t` as the API shows times: RFC 3339, microseconds, `Z`.
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `micros` since the epoch as [`timestamp`] shows it.
pub(crate) fn timestamp_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(String::new, timestamp)
}
