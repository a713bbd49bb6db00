//! Subscriptions in a real database through Diesel: SQLite always,
//! PostgreSQL when `THORN_TEST_DATABASE_URL` is set (CI sets it).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use diesel::r2d2::{ConnectionManager, Pool};
use serde_json::json;
use thorn::diesel::{DieselStore, migrate};
use thorn::subscriber::SubscriptionStore;
use thorn::{Event, SendOptions, SenderId, Subscriber, Thorn};
use tower::ServiceExt;

use crate::db::{PgSchema, pg_pool};
use crate::engine::{WAIT, local_config};
use crate::receiver::Receiver;

fn sqlite_store() -> (
    tempfile::TempDir,
    Arc<DieselStore<diesel::SqliteConnection>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let url = dir
        .path()
        .join("thorn.sqlite3")
        .to_str()
        .unwrap()
        .to_owned();
    let pool = Pool::builder()
        .max_size(4)
        .build(ConnectionManager::new(url))
        .unwrap();
    let applied = migrate(&mut *pool.get().unwrap()).unwrap();
    assert_eq!(applied, [1, 2, 3, 4, 5, 6]);
    assert!(
        migrate(&mut *pool.get().unwrap()).unwrap().is_empty(),
        "migrations run once"
    );
    (dir, Arc::new(DieselStore::new(pool)))
}

fn pg_store() -> Option<(PgSchema, Arc<DieselStore<diesel::PgConnection>>)> {
    let (guard, pool) = pg_pool()?;
    assert_eq!(
        migrate(&mut *pool.get().unwrap()).unwrap(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(migrate(&mut *pool.get().unwrap()).unwrap().is_empty());
    Some((guard, Arc::new(DieselStore::new(pool))))
}

async fn crud_and_lookup(store: Arc<dyn SubscriptionStore>) {
    let alice = SenderId::from(1);
    let bob = SenderId::from("bob");
    let a1 = Subscriber::new("article.*", "https://a.example/1")
        .unwrap()
        .with_owner(1);
    let mut a2 = Subscriber::new("*.created", "https://a.example/2")
        .unwrap()
        .with_owner(1)
        .rotate_secret("new");
    a2.created_at = a1.created_at + chrono::Duration::milliseconds(1);
    a2.standard_webhooks = Some(true);
    let b = Subscriber::new("article.created", "https://b.example/")
        .unwrap()
        .with_owner("bob");
    let open = Subscriber::new("*", "https://open.example/").unwrap();
    for s in [&a1, &a2, &b, &open] {
        store.insert(s.clone()).await.unwrap();
    }
    let list = store.list(&alice).await.unwrap();
    assert_eq!(
        list,
        vec![a1.clone(), a2.clone()],
        "round trip of every field, oldest first"
    );
    assert_eq!(store.list(&bob).await.unwrap(), vec![b.clone()]);
    assert_eq!(
        store.get(&alice, b.uuid).await.unwrap(),
        None,
        "another owner's"
    );

    let urls = |v: Vec<Subscriber>| {
        let mut u: Vec<String> = v.into_iter().map(|s| s.url.to_string()).collect();
        u.sort();
        u
    };
    assert_eq!(
        urls(
            store
                .subscribers_for("article.created", Some(&alice))
                .await
                .unwrap()
        ),
        [
            "https://a.example/1",
            "https://a.example/2",
            "https://open.example/"
        ]
    );
    assert_eq!(
        urls(
            store
                .subscribers_for("article.created", Some(&bob))
                .await
                .unwrap()
        ),
        ["https://b.example/", "https://open.example/"]
    );
    assert_eq!(
        urls(store.subscribers_for("user.changed", None).await.unwrap()),
        ["https://open.example/"]
    );

    let mut changed = a1.clone();
    changed.url = "https://a.example/changed".parse().unwrap();
    assert!(store.update(changed.clone()).await.unwrap());
    assert_eq!(store.get(&alice, a1.uuid).await.unwrap(), Some(changed));
    let mut stolen = b.clone();
    stolen.owner = Some(alice.clone());
    assert!(
        !store.update(stolen).await.unwrap(),
        "cannot take over bob's subscription"
    );
    assert!(!store.delete(&alice, b.uuid).await.unwrap());
    assert!(store.delete(&alice, a2.uuid).await.unwrap());
    store.mark_gone(open.uuid).await.unwrap();
    assert!(
        store
            .subscribers_for("user.changed", None)
            .await
            .unwrap()
            .is_empty(),
        "410 removed it"
    );
}

/// The REST API of `thorn`, every request made by user 42.
fn api_of_user_42(thorn: &Thorn) -> axum::Router {
    thorn::api::Api::new(thorn, |_: &axum::http::request::Parts| {
        Some(SenderId::from(42))
    })
    .unwrap()
    .router()
}

async fn api_to_delivery(store: Arc<dyn SubscriptionStore>) {
    let receiver = Receiver::start();
    let thorn = Thorn::builder(local_config())
        .subscriptions(store)
        .build()
        .unwrap();
    let app = api_of_user_42(&thorn);
    let req = Request::post("/hooks/")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"event": "order.*", "url": receiver.url}).to_string(),
        ))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: serde_json::Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    let outcomes = Event::new("order.paid")
        .send_with(
            &thorn,
            &json!({"total": "12.50"}),
            SendOptions::new().sender(42),
        )
        .unwrap()
        .outcomes()
        .await
        .unwrap();
    assert!(outcomes[0].is_success(), "{outcomes:?}");
    let got = tokio::task::spawn_blocking(move || receiver.expect(1, WAIT))
        .await
        .unwrap();
    assert_eq!(
        got[0].header("hook-subscription"),
        created["id"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_crud_lookup_and_api() {
    let (_dir, store) = sqlite_store();
    crud_and_lookup(store).await;
    let (_dir, store) = sqlite_store();
    api_to_delivery(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_crud_lookup_and_api() {
    let Some((_schema, store)) = pg_store() else {
        return;
    };
    crud_and_lookup(store).await;
    let Some((_schema, store)) = pg_store() else {
        return;
    };
    api_to_delivery(store).await;
}

/// Two PATCHes of different fields of one subscription, sent at once, both
/// answer 200 and both changes are there afterwards, round after round.
async fn concurrent_patches_keep_both_changes(store: Arc<dyn SubscriptionStore>) {
    let thorn = Thorn::builder(thorn::Config {
        dispatcher: thorn::DispatcherKind::Disabled,
        ..thorn::Config::default()
    })
    .subscriptions(store)
    .build()
    .unwrap();
    let app = api_of_user_42(&thorn);
    let send = |method: &'static str, path: String, body: serde_json::Value| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };
    for round in 0..25 {
        let (status, created) = send(
            "POST",
            "/hooks/".into(),
            json!({"event": "order.*", "url": "https://a.example/hook"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let path = format!("/hooks/{}/", created["id"].as_str().unwrap());
        let url = format!("https://b.example/hook/{round}");
        let (a, b) = tokio::join!(
            tokio::spawn(send("PATCH", path.clone(), json!({"url": url}))),
            tokio::spawn(send(
                "PATCH",
                path.clone(),
                json!({"hmac_digest": "sha512"})
            )),
        );
        for (status, body) in [a.unwrap(), b.unwrap()] {
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        }
        let (_, now) = send("GET", path, json!({})).await;
        assert_eq!(
            (now["url"].as_str(), now["hmac_digest"].as_str()),
            (Some(url.as_str()), Some("sha512")),
            "round {round}: a concurrent PATCH was lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_different_fields_both_survive() {
    concurrent_patches_keep_both_changes(Arc::new(thorn::subscriber::MemoryStore::new())).await;
    // SQLite serializes writers: a pool that waits for the lock, as an
    // application's does.
    let (_dir, pool) = crate::db::sqlite_pool();
    migrate(&mut *pool.get().unwrap()).unwrap();
    concurrent_patches_keep_both_changes(Arc::new(DieselStore::new(pool))).await;
    let Some((_schema, store)) = pg_store() else {
        return;
    };
    concurrent_patches_keep_both_changes(store).await;
}
