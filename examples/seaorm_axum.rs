//! An axum application with a SeaORM model, webhooks wired into the
//! model's `ActiveModelBehavior`, and the subscription REST API mounted
//! at `/hooks/`:
//!
//! ```text
//! cargo run --features seaorm,api --example seaorm_axum                 # SQLite in a temp file
//! DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!     cargo run --features seaorm,api --example seaorm_axum             # PostgreSQL
//! ```
//!
//! The example drives itself: it starts a webhook receiver on 127.0.0.1,
//! sends requests into the app's router, subscribes to `article.*` over the REST API as user 42,
//! creates and publishes an article over the app's own endpoints, and
//! prints each webhook the receiver got. Every write runs in a transaction
//! Thorn manages (`thorn::seaorm::transaction` and `thorn::seaorm::begin`);
//! events go through the outbox and an in-process relay, after COMMIT.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{patch, post};
use axum::{Json, Router};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Set};
use thorn::seaorm::{Relay, SeaOrmStore, migrate};
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, SenderId, Thorn};

/// The application's entity: SeaORM's derives plus `WebhookModel`.
mod article {
    use sea_orm::entity::prelude::*;
    use serde::Serialize;

    /// An article.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, thorn::WebhookModel, Serialize)]
    #[sea_orm(table_name = "seaorm_axum_articles")]
    #[webhook_model(
        sender_field = author_id,
        reverse = "/article/{id}/",
        payload = Self::clone,
        on_create = "article.created",
        on_change = "article.changed",
        on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
    )]
    pub(crate) struct Model {
        /// Key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Title.
        pub title: String,
        /// DRAFT or PUBLISHED.
        pub state: String,
        /// Who wrote it.
        pub author_id: i32,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    // Thorn's hooks, and nothing else: see thorn::seaorm for keeping your own.
    thorn::seaorm::behavior!(ActiveModel);
}

#[derive(serde::Deserialize)]
struct NewArticle {
    title: String,
}

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Creates an article in a transaction Thorn manages (the closure form):
/// `article.created` is written to the outbox with the row and leaves
/// after COMMIT.
async fn create_article(
    State(db): State<DatabaseConnection>,
    Json(new): Json<NewArticle>,
) -> Result<Json<article::Model>, (StatusCode, String)> {
    thorn::seaorm::transaction(&db, |txn| {
        Box::pin(async move {
            article::ActiveModel {
                title: Set(new.title),
                state: Set("DRAFT".into()),
                author_id: Set(42),
                ..Default::default()
            }
            .insert(txn)
            .await
        })
    })
    .await
    .map(Json)
    .map_err(internal)
}

/// Publishes an article in a transaction Thorn manages (the `begin()`
/// form): the stored row is read and locked (`FOR UPDATE` on PostgreSQL)
/// inside it, so of many concurrent publishes of one article exactly one
/// sends `article.published`, and none does if the transaction rolls back.
async fn publish_article(
    State(db): State<DatabaseConnection>,
    Path(id): Path<i32>,
) -> Result<Json<article::Model>, (StatusCode, String)> {
    let txn = thorn::seaorm::begin(&db).await.map_err(internal)?;
    let found = article::Entity::find_by_id(id)
        .one(&*txn)
        .await
        .map_err(internal)?
        .ok_or((StatusCode::NOT_FOUND, format!("no article {id}")))?;
    let mut active: article::ActiveModel = found.into();
    active.state = Set("PUBLISHED".into());
    let published = active.update(&*txn).await.map_err(internal)?;
    txn.commit().await.map_err(internal)?;
    Ok(Json(published))
}

/// A receiver on 127.0.0.1 that prints what it gets and reports it.
async fn receiver(seen: tokio::sync::mpsc::UnboundedSender<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: String| async move {
            let event = headers
                .get("hook-event")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            println!("receiver got {event}: {body}");
            let _ = seen.send(event);
            StatusCode::OK
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hooks/articles")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("seaorm_axum.sqlite3").display()
        )
    });
    let db: DatabaseConnection = Database::connect(&url).await?;
    migrate(&db).await?; // thorn_subscribers and the outbox tables
    let id = if url.starts_with("postgres") {
        "SERIAL PRIMARY KEY"
    } else {
        "INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    db.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS seaorm_axum_articles (id {id}, title TEXT NOT NULL, \
         state TEXT NOT NULL, author_id INTEGER NOT NULL)"
    ))
    .await?;

    // The demo delivers to itself on 127.0.0.1, which the default
    // validators refuse; never relax them for user-supplied URLs.
    let validators = Validators::new([ensure_protocol(["http"])]);
    let config = Config {
        outbox: true,
        recipient_validators: validators.clone(),
        base_url: Some("https://blog.example.com/".parse()?),
        ..Config::from_env()?
    };
    let store = Arc::new(SeaOrmStore::new(db.clone()));
    let thorn = Thorn::builder(config.clone())
        .subscriptions(store)
        .build()?;
    thorn::seaorm::set_global(thorn.clone())?;
    let relay = Relay::start(&thorn, db.clone()).await?;

    // The app: its own routes plus the subscription API. Who the user is
    // comes from your authentication; here, an `x-user` header.
    // Built from the Thorn: its store, its event choices, its validators.
    let api = thorn::api::Api::new(&thorn, |parts: &axum::http::request::Parts| {
        parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(SenderId::from)
    })?;
    let app = Router::new()
        .route("/articles", post(create_article))
        .route("/articles/{id}/publish", patch(publish_article))
        .with_state(db.clone())
        .merge(api.router());
    println!("database {url}");

    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let hook_url = receiver(tx).await;
    // Requests go straight into the router here; `axum::serve` it in a real app.
    let call = |method: &str, uri: String, body: serde_json::Value| {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("x-user", "42")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            assert!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        }
    };

    let sub = call(
        "POST",
        "/hooks/".into(),
        serde_json::json!({ "event": "article.*", "url": hook_url }),
    )
    .await;
    println!("subscribed: {}", sub["subscription"]);
    let created = call(
        "POST",
        "/articles".into(),
        serde_json::json!({ "title": "Hello, SeaORM" }),
    )
    .await;
    println!("created article {}", created["id"]);
    call(
        "PATCH",
        format!("/articles/{}/publish", created["id"]),
        serde_json::Value::Null,
    )
    .await;

    let mut events = Vec::new();
    while events.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await {
            Ok(Some(event)) => events.push(event),
            _ => break,
        }
    }
    events.sort();
    assert_eq!(
        events,
        ["article.changed", "article.created", "article.published"],
        "every webhook arrived"
    );
    relay.stop().await?;
    // Events sent at once (none here) would still be in flight: wait for them.
    let drained = thorn.drain_async(Duration::from_secs(10)).await;
    assert!(drained.is_complete(), "{drained:?}");
    Ok(())
}
