//! Thorn for Rust in one file, with no server to install:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! An SQLite database in a temporary file, a webhook receiver on
//! 127.0.0.1, one subscription to `article.*`, then an article is created,
//! changed in a transaction that commits, changed in one that rolls back
//! (nothing is sent), and deleted through `thorn::diesel`; the program
//! drains its deliveries before it exits. The receiver prints every
//! webhook with its headers and whether its Hook-HMAC signature verified.

// `diesel::table!` generates public items without doc comments.
#![allow(missing_docs)]

use std::sync::mpsc;
use std::time::Duration;
use thorn::diesel::prelude::*;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use diesel::prelude::*;
use thorn::signing::{HmacDigest, verify};
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, Subscriber, Thorn, WebhookModel};

diesel::table! {
    articles (id) {
        id -> Integer,
        title -> Text,
        state -> Text,
        author_id -> Integer,
    }
}

/// The application's model: Diesel's derives plus `WebhookModel`.
#[derive(Debug, Queryable, Selectable, Identifiable, WebhookModel)]
#[diesel(table_name = articles)]
#[webhook_model(
    sender_field = author_id,
    reverse = "/article/{id}/",
    payload = Self::webhook_payload,
    on_create = "article.created",
    on_change = "article.changed",
    on_delete = "article.removed",
)]
struct Article {
    id: i32,
    title: String,
    state: String,
    author_id: i32,
}

impl Article {
    fn webhook_payload(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id, "title": self.title, "state": self.state })
    }
}

#[derive(Insertable)]
#[diesel(table_name = articles)]
struct NewArticle<'a> {
    title: &'a str,
    state: &'a str,
    author_id: i32,
}

/// What the receiver saw, reported back to `main`.
struct Webhook {
    headers: HeaderMap,
    body: Bytes,
}

/// Starts a receiver on 127.0.0.1 (any free port) on a background thread.
fn start_receiver() -> (String, mpsc::Receiver<Webhook>) {
    let (tx, rx) = mpsc::channel();
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(
                |State(tx): State<mpsc::Sender<Webhook>>, headers: HeaderMap, body: Bytes| async move {
                    let _ = tx.send(Webhook { headers, body });
                    StatusCode::OK
                },
            );
            axum::serve(listener, app.with_state(tx)).await.unwrap();
        });
    });
    let addr = addr_rx.recv().expect("receiver started");
    (format!("http://{addr}/hooks/article"), rx)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (receiver_url, webhooks) = start_receiver();

    // Subscriptions live in memory here; thorn-diesel's table comes later.
    let subscriber = Subscriber::new("article.*", &receiver_url)?;
    let secret = subscriber.hmac_secret.expose().to_owned();
    let store = MemoryStore::new();
    store.add(subscriber);

    let thorn = Thorn::builder(Config {
        // The default validators refuse internal addresses such as
        // 127.0.0.1. This demo delivers to itself, so it allows plain http
        // to anywhere -- never do this with user-supplied URLs.
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        base_url: Some("https://blog.example.com/".parse()?),
        ..Config::from_env()?
    })
    .store(store)
    .build()?;

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("quickstart.sqlite3");
    let mut conn = SqliteConnection::establish(db.to_str().expect("utf-8 path"))?;
    diesel::sql_query(
        "CREATE TABLE articles (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, \
         state TEXT NOT NULL, author_id INTEGER NOT NULL)",
    )
    .execute(&mut conn)?;
    println!("SQLite database: {}", db.display());
    println!("Receiver:        {receiver_url}\n");

    let show = |step: &str| {
        let hook = webhooks
            .recv_timeout(Duration::from_secs(10))
            .expect("webhook arrived");
        let header = |name: &str| {
            hook.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let verified = verify(
            HmacDigest::Sha256,
            secret.as_bytes(),
            &hook.body,
            &header("hook-hmac"),
        );
        println!("== {step}");
        for name in [
            "hook-event",
            "hook-delivery",
            "hook-subscription",
            "hook-hmac",
            "content-type",
            "user-agent",
        ] {
            println!("   {name}: {}", header(name));
        }
        println!("   body: {}", String::from_utf8_lossy(&hook.body));
        println!("   signature verified: {verified}\n");
        assert!(verified, "Hook-HMAC did not verify");
    };

    let article: Article = diesel::insert_into(articles::table)
        .values(&NewArticle {
            title: "Hello, webhooks",
            state: "DRAFT",
            author_id: 42,
        })
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)?;
    show("created");

    // Inside a transaction Thorn manages, events leave after COMMIT ...
    let article: Article = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
        diesel::update(&article)
            .set(articles::state.eq("PUBLISHED"))
            .returning(Article::as_returning())
            .with_webhooks(&thorn)
            .get_result(conn)
    })?;
    show("changed, in a transaction that committed");

    // ... and never when it rolls back.
    let rolled_back = thorn::diesel::transaction(&thorn, &mut conn, |conn| {
        diesel::update(&article)
            .set(articles::title.eq("Never published"))
            .returning(Article::as_returning())
            .with_webhooks(&thorn)
            .get_result(conn)?;
        Err::<Article, _>(diesel::result::Error::RollbackTransaction)
    });
    assert!(rolled_back.is_err());
    let none = webhooks.recv_timeout(Duration::from_millis(500));
    assert!(none.is_err(), "a rolled-back change sent a webhook");
    println!("== changed, in a transaction that rolled back\n   nothing sent\n");

    let _: Article = diesel::delete(&article)
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)?;
    show("deleted");

    // Deliveries run in the background: let them finish before exiting.
    let drained = thorn.drain(Duration::from_secs(10));
    assert!(
        drained.is_complete(),
        "{} deliveries unfinished",
        drained.unfinished
    );
    Ok(())
}
