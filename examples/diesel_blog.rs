//! A blog on Diesel with the transactional outbox: articles created,
//! tagged, published and deleted inside transactions, subscribers stored
//! in the database, webhooks delivered after commit by the in-process relay.
//!
//! ```text
//! cargo run --example diesel_blog                                  # SQLite file in a temp dir
//! DATABASE_URL=postgres://postgres@127.0.0.1/test \
//!     cargo run --features postgres --example diesel_blog           # PostgreSQL
//! ```
//!
//! A receiver on 127.0.0.1 prints each webhook as it arrives. One
//! transaction is rolled back on purpose: its article never produces a
//! webhook.

// `diesel::table!` generates public items without doc comments.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use thorn::diesel::prelude::*;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use serde::Serialize;
use thorn::WebhookModel;
use thorn::diesel::{DieselStore, Relay, migrate};
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, SenderId, Subscriber, SubscriptionStore, Thorn};

diesel::table! {
    blog_articles (id) {
        id -> Integer,
        title -> Text,
        state -> Text,
        author_id -> Integer,
    }
}

diesel::table! {
    blog_article_tags (article_id, tag) {
        article_id -> Integer,
        tag -> Text,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, WebhookModel)]
#[diesel(table_name = blog_articles)]
#[webhook_model(
    sender_field = author_id,
    reverse = "/articles/{id}/",
    payload = Self::clone,
    on_create = "article.created",
    on_change = "article.changed",
    on_delete = "article.removed",
    on_publish(name = "article.published", dispatches_on = change, filter = state.now_eq("PUBLISHED")),
    on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)),
)]
struct Article {
    id: i32,
    title: String,
    state: String,
    author_id: i32,
}

/// A receiver that prints what it gets and reports each event name.
fn receiver() -> (String, mpsc::Receiver<String>) {
    let (url_tx, url_rx) = mpsc::channel();
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            url_tx
                .send(format!("http://{}/hooks/", listener.local_addr().unwrap()))
                .unwrap();
            let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
                let seen = seen_tx.clone();
                async move {
                    let event = headers
                        .get("hook-event")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .to_owned();
                    println!("  <- {event}: {}", String::from_utf8_lossy(&body));
                    let _ = seen.send(event);
                    StatusCode::NO_CONTENT
                }
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    (url_rx.recv().unwrap(), seen_rx)
}

type Failure = Box<dyn std::error::Error>;

macro_rules! blog {
    ($name:ident, $conn:ty, $serial:literal) => {
        fn $name(pool: Pool<ConnectionManager<$conn>>) -> Result<(), Failure> {
            let mut conn = pool.get()?;
            migrate(&mut *conn)?;
            diesel::sql_query(concat!(
                "CREATE TABLE IF NOT EXISTS blog_articles (id ",
                $serial,
                ", title TEXT NOT NULL, state TEXT NOT NULL, author_id INTEGER NOT NULL)"
            ))
            .execute(&mut *conn)?;
            diesel::sql_query(
                "CREATE TABLE IF NOT EXISTS blog_article_tags (article_id INTEGER NOT NULL, \
                 tag TEXT NOT NULL, PRIMARY KEY (article_id, tag))",
            )
            .execute(&mut *conn)?;

            let (url, seen) = receiver();
            let store = Arc::new(DieselStore::new(pool.clone()));
            // What `POST /hooks/` does for user 7.
            let mut sub = Subscriber::new("article.*", &url)?;
            sub.owner = Some(SenderId::from(7));
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(store.insert(sub.clone()))?;

            let config = Config {
                outbox: true,
                base_url: Some("https://blog.example/".parse()?),
                // The receiver is on 127.0.0.1: allow plain http to any
                // address here. Keep the default validators in production.
                recipient_validators: Validators::new([ensure_protocol(["http"])]),
                ..Config::from_env()?
            };
            let thorn = Thorn::builder(config).shared_store(store.clone()).build()?;
            let relay = Relay::start(&thorn, pool.clone())?;

            println!("-> create and tag an article, in one transaction");
            // Thorn's transaction: its events are written to the outbox as
            // one INSERT just before COMMIT, and the relay wakes after it.
            let article = thorn::diesel::transaction(&thorn, &mut *conn, |conn| {
                let article: Article = diesel::insert_into(blog_articles::table)
                    .values((
                        blog_articles::title.eq("Webhooks after commit"),
                        blog_articles::state.eq("DRAFT"),
                        blog_articles::author_id.eq(7),
                    ))
                    .returning(Article::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(conn)?;
                let _: Vec<String> = thorn::diesel::m2m_changed(
                    &thorn,
                    conn,
                    &article,
                    Article::TAGS.added(),
                    |conn| {
                        ["rust", "webhooks"]
                            .iter()
                            .map(|tag| {
                                diesel::insert_into(blog_article_tags::table)
                                    .values((
                                        blog_article_tags::article_id.eq(article.id),
                                        blog_article_tags::tag.eq(*tag),
                                    ))
                                    .returning(blog_article_tags::tag)
                                    .get_result(conn)
                            })
                            .collect()
                    },
                )?;
                Ok::<_, diesel::result::Error>(article)
            })?;
            wait(&seen, 2);

            println!("-> publish it (the old row is read FOR UPDATE on PostgreSQL)");
            let article: Article = thorn::diesel::update(&article)
                .set(blog_articles::state.eq("PUBLISHED"))
                .returning(Article::as_returning())
                .with_webhooks(&thorn)
                .get_result(&mut *conn)?;
            wait(&seen, 2);

            println!("-> a transaction that rolls back: no webhook");
            let _ = thorn::diesel::transaction::<_, (), _, _>(&thorn, &mut *conn, |conn| {
                let _: Article = diesel::insert_into(blog_articles::table)
                    .values((
                        blog_articles::title.eq("Never published"),
                        blog_articles::state.eq("DRAFT"),
                        blog_articles::author_id.eq(7),
                    ))
                    .returning(Article::as_returning())
                    .with_webhooks(&thorn)
                    .get_result(conn)?;
                Err(diesel::result::Error::RollbackTransaction)
            });

            println!("-> delete it");
            let _: Article = diesel::delete(&article)
                .returning(Article::as_returning())
                .with_webhooks(&thorn)
                .get_result(&mut *conn)?;
            wait(&seen, 1);
            if let Ok(extra) = seen.recv_timeout(Duration::from_millis(300)) {
                return Err(format!("unexpected webhook {extra}").into());
            }
            relay.stop()?;
            // Unsubscribe, so a second run does not post to this run's receiver.
            rt.block_on(store.delete(&SenderId::from(7), sub.uuid))?;
            let counts = thorn::diesel::DieselOutbox::new(pool).counts()?;
            println!(
                "outbox: {} delivered, {} pending, {} dead",
                counts.delivered, counts.pending, counts.dead
            );
            Ok(())
        }
    };
}

fn wait(seen: &mpsc::Receiver<String>, n: usize) {
    for _ in 0..n {
        seen.recv_timeout(Duration::from_secs(10))
            .expect("webhook delivered within 10 s");
    }
}

blog!(
    run_sqlite,
    SqliteConnection,
    "INTEGER PRIMARY KEY AUTOINCREMENT"
);
#[cfg(feature = "postgres")]
blog!(run_postgres, PgConnection, "SERIAL PRIMARY KEY");

#[cfg(feature = "postgres")]
fn postgres(url: String) -> Result<(), Failure> {
    println!("PostgreSQL: {url}");
    run_postgres(
        Pool::builder()
            .max_size(4)
            .build(ConnectionManager::new(url))?,
    )
}

#[cfg(not(feature = "postgres"))]
fn postgres(_url: String) -> Result<(), Failure> {
    Err("DATABASE_URL is PostgreSQL: run with --features postgres".into())
}

fn main() -> Result<(), Failure> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => postgres(url),
        _ => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("blog.sqlite3");
            println!("SQLite: {}", path.display());
            run_sqlite(
                Pool::builder()
                    .max_size(4)
                    .connection_customizer(Box::new(thorn::diesel::SqliteBusyTimeout::default()))
                    .build(ConnectionManager::new(path.to_string_lossy()))?,
            )
        }
    }
}
