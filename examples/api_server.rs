//! The REST API and the web page over SQLite, to try them (or to point a
//! schema-driven fuzzer at):
//!
//! ```text
//! cargo run --example api_server --features diesel,api -- 127.0.0.1:8000
//! ```
//!
//! Then open <http://127.0.0.1:8000/login?user=1> for the page, or call
//! the API as user 1 with an `X-User: 1` header; the OpenAPI document is
//! at `/hooks/openapi.json`. The sign-in here trusts whatever it is told:
//! a real application puts its own session check behind
//! [`thorn::api::Authenticate`]. Deliveries go through the outbox in the
//! same SQLite file, sent by a relay in this process; recipients on
//! private and loopback addresses are refused, as in production, unless
//! `THORN_ALLOW_RECIPIENTS` allows them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use thorn::api::Api;
use thorn::diesel::{DieselOutbox, DieselStore, Relay, SqliteBusyTimeout, migrate};
use thorn::model::EventType;
use thorn::{Config, SenderId, Thorn};

/// The caller: the `X-User` header, or the `user` cookie `/login` sets.
fn caller(parts: &Parts) -> Option<SenderId> {
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(user) = header(header::HeaderName::from_static("x-user")) {
        return Some(SenderId::from(user.trim()));
    }
    header(header::COOKIE)?
        .split(';')
        .find_map(|c| c.trim().strip_prefix("user="))
        .map(SenderId::from)
}

/// A stand-in sign-in: `/login?user=1` sets the cookie and opens the page.
async fn login(uri: Uri) -> Response {
    let user: String = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.chars().filter(char::is_ascii_alphanumeric).collect())
        .unwrap_or_default();
    if user.is_empty() {
        return (StatusCode::BAD_REQUEST, "Sign in as /login?user=1").into_response();
    }
    let Ok(cookie) = HeaderValue::from_str(&format!("user={user}; Path=/; HttpOnly; SameSite=Lax"))
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut answer = StatusCode::SEE_OTHER.into_response();
    answer.headers_mut().insert(header::SET_COOKIE, cookie);
    answer
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/hooks/page/"));
    answer
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("hooks.sqlite3");
    let pool = diesel::r2d2::Pool::builder()
        .max_size(8)
        .connection_customizer(Box::new(SqliteBusyTimeout::default()))
        .build(diesel::r2d2::ConnectionManager::new(file.to_string_lossy()))?;
    migrate(&mut *pool.get()?)?;

    let thorn = Thorn::builder(Config {
        outbox: true,
        ..Config::from_env()?
    })
    .subscriptions(Arc::new(DieselStore::new(pool.clone())))
    .delivery_log(DieselOutbox::new(pool.clone()).delivery_log())
    .event_types([
        EventType::new("article.created", "create"),
        EventType::new("article.changed", "change"),
        EventType::new("article.removed", "delete"),
    ])
    .build()?;
    let _relay = Relay::start_with(
        &thorn,
        pool,
        thorn::RelayOptions {
            poll: Duration::from_millis(200),
            ..Default::default()
        },
    )?;

    let app = Router::new()
        .route("/login", get(login))
        .merge(Api::new(&thorn, caller)?.router());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("the page: http://{addr}/login?user=1");
    println!("the API:  http://{addr}/hooks/ (X-User: 1)");
    println!("OpenAPI:  http://{addr}/hooks/openapi.json");
    axum::serve(listener, app).await?;
    Ok(())
}
