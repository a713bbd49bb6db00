//! The first end-to-end slice: rows written through thorn-diesel on SQLite
//! arrive at a real receiver on 127.0.0.1 as signed webhooks.

use std::collections::HashSet;
use std::time::Duration;
use thorn::diesel::prelude::*;

use diesel::prelude::*;
use serde::Serialize;
use thorn::subscriber::MemoryStore;
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, ContentType, Event, HmacDigest, Subscriber, Thorn, WebhookModel};

use crate::receiver::Receiver;

diesel::table! {
    articles (id) {
        id -> Integer,
        title -> Text,
        state -> Text,
        author_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, AsChangeset, WebhookModel)]
#[diesel(table_name = articles)]
#[webhook_model(
    sender_field = author_id,
    reverse = "/article/{id}/",
    payload = Self::webhook_payload,
    on_create = "article.created",
    on_change = "article.changed",
    on_delete(name = "article.removed", reverse = "/articles/"),
)]
struct Article {
    id: i32,
    title: String,
    state: String,
    author_id: i32,
}

#[derive(Serialize)]
struct ArticlePayload<'a> {
    id: i32,
    title: &'a str,
    state: &'a str,
}

impl Article {
    fn webhook_payload(&self) -> ArticlePayload<'_> {
        ArticlePayload {
            id: self.id,
            title: &self.title,
            state: &self.state,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = articles)]
struct NewArticle<'a> {
    title: &'a str,
    state: &'a str,
    author_id: i32,
}

const WAIT: Duration = Duration::from_secs(10);

fn connection() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(
        "CREATE TABLE articles (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, \
         state TEXT NOT NULL, author_id INTEGER NOT NULL)",
    )
    .execute(&mut conn)
    .unwrap();
    conn
}

/// Deliveries to the loopback receiver must be allowed explicitly: the
/// default validators block 127.0.0.1.
fn local_config() -> Config {
    Config {
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        base_url: Some("https://blog.example/".parse().unwrap()),
        ..Config::default()
    }
}

fn thorn_with(subscribers: impl IntoIterator<Item = Subscriber>) -> Thorn {
    let store = MemoryStore::new();
    for s in subscribers {
        store.add(s);
    }
    Thorn::builder(local_config()).store(store).build().unwrap()
}

#[test]
fn insert_update_delete_send_three_signed_webhooks() {
    let receiver = Receiver::start();
    let subscriber = Subscriber::new("article.*", &receiver.url).unwrap();
    let thorn = thorn_with([subscriber.clone()]);
    let mut conn = connection();

    let article: Article = diesel::insert_into(articles::table)
        .values(&NewArticle {
            title: "Hello",
            state: "PENDING",
            author_id: 7,
        })
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(article.title, "Hello");

    let changed: Article = diesel::update(&article)
        .set(articles::state.eq("PUBLISHED"))
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(changed.state, "PUBLISHED");

    let removed: Article = diesel::delete(&changed)
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(removed.id, article.id);
    assert_eq!(
        articles::table
            .count()
            .get_result::<i64>(&mut conn)
            .unwrap(),
        0
    );

    let got = receiver.expect(3, WAIT);
    let mut deliveries = HashSet::new();
    for request in &got {
        // Signed with the subscriber's secret over the exact body.
        assert!(
            thorn::signing::verify(
                HmacDigest::Sha256,
                subscriber.hmac_secret.expose().as_bytes(),
                &request.body,
                request.header("hook-hmac"),
            ),
            "Hook-HMAC does not verify for {request:?}"
        );
        assert_eq!(
            request.header("hook-subscription"),
            subscriber.uuid.to_string()
        );
        assert_eq!(request.header("content-type"), "application/json");
        assert!(request.header("user-agent").contains("thorn/"));
        assert_eq!(request.path, "/hooks/");
        let delivery: uuid::Uuid = request.header("hook-delivery").parse().unwrap();
        assert!(deliveries.insert(delivery), "Hook-Delivery ids are unique");

        let body = request.json();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["event", "ref", "sender", "data"]);
        assert_eq!(body["event"], request.header("hook-event"));
        assert_eq!(body["sender"], 7);
        match request.header("hook-event") {
            "article.created" => {
                assert_eq!(
                    body["ref"],
                    format!("https://blog.example/article/{}/", article.id)
                );
                assert_eq!(
                    body["data"],
                    serde_json::json!({"id": article.id, "title": "Hello", "state": "PENDING"})
                );
            }
            "article.changed" => assert_eq!(body["data"]["state"], "PUBLISHED"),
            "article.removed" => {
                assert_eq!(body["ref"], "https://blog.example/articles/");
                assert_eq!(body["data"]["id"], article.id);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    let events: HashSet<&str> = got.iter().map(|r| r.header("hook-event")).collect();
    assert_eq!(
        events,
        HashSet::from(["article.created", "article.changed", "article.removed"])
    );
}

#[test]
fn only_matching_and_owned_subscribers_receive() {
    let mine = Receiver::start();
    let others = Receiver::start();
    let users = Receiver::start();
    let form = Receiver::start();
    let thorn = thorn_with([
        Subscriber::new("*.created", &mine.url)
            .unwrap()
            .with_owner(7),
        Subscriber::new("article.created", &others.url)
            .unwrap()
            .with_owner(8),
        Subscriber::new("user.*", &users.url).unwrap(),
        Subscriber::new("article.created", &form.url)
            .unwrap()
            .with_content_type(ContentType::FormUrlEncoded)
            .with_digest(HmacDigest::Sha512)
            .with_secret("form-secret"),
    ]);
    let mut conn = connection();
    let _: Article = diesel::insert_into(articles::table)
        .values(&NewArticle {
            title: "Owned",
            state: "PENDING",
            author_id: 7,
        })
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();

    let got = mine.expect(1, WAIT);
    assert_eq!(got[0].json()["data"]["title"], "Owned");
    let got = form.expect(1, WAIT);
    assert_eq!(
        got[0].header("content-type"),
        "application/x-www-form-urlencoded"
    );
    assert!(thorn::signing::verify(
        HmacDigest::Sha512,
        b"form-secret",
        &got[0].body,
        got[0].header("hook-hmac")
    ));
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&got[0].body)
        .into_owned()
        .collect();
    assert_eq!(fields[0], ("event".into(), "article.created".into()));
    assert_eq!(fields[2], ("sender".into(), "7".into()));
    others.expect_none(Duration::from_millis(300));
    users.expect_none(Duration::from_millis(100));
}

#[test]
fn loopback_recipients_are_blocked_by_default() {
    let receiver = Receiver::start();
    let store = MemoryStore::new();
    store.add(Subscriber::new("user.created", &receiver.url).unwrap());
    let thorn = Thorn::builder(Config::default())
        .store(store)
        .build()
        .unwrap();

    let outcomes = Event::new("user.created")
        .send(&thorn, &serde_json::json!({"username": "alice"}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    match &outcomes[0].result {
        Err(thorn::DeliveryError::Blocked(blocked)) => {
            assert!(
                matches!(
                    blocked.rule,
                    thorn::Blocked::InternalAddress {
                        kind: "loopback",
                        ..
                    }
                ),
                "{blocked}"
            );
            assert!(blocked.url.contains("127.0.0.1"), "{blocked}");
        }
        other => panic!("expected a security error, got {other:?}"),
    }
    receiver.expect_none(Duration::from_millis(300));
}

#[test]
fn static_subscribers_from_configuration_receive_events() {
    let receiver = Receiver::start();
    let config = Config {
        subscribers: thorn::subscriber::StaticSubscribers::from_json(&format!(
            r#"{{"article.removed": {{"url": "{}", "hmac_secret": "static"}}}}"#,
            receiver.url
        ))
        .unwrap(),
        ..local_config()
    };
    let thorn = Thorn::new(config).unwrap();
    let mut conn = connection();
    let article: Article = diesel::insert_into(articles::table)
        .values(&NewArticle {
            title: "Bye",
            state: "PENDING",
            author_id: 1,
        })
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
    let _: Article = diesel::delete(&article)
        .returning(Article::as_returning())
        .with_webhooks(&thorn)
        .get_result(&mut conn)
        .unwrap();
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("hook-event"), "article.removed");
    assert!(thorn::signing::verify(
        HmacDigest::Sha256,
        b"static",
        &got[0].body,
        got[0].header("hook-hmac")
    ));
}

#[test]
fn manual_send_from_instance_matches_automatic_dispatch() {
    let receiver = Receiver::start();
    let thorn = thorn_with([Subscriber::new("article.changed", &receiver.url).unwrap()]);
    let article = Article {
        id: 5,
        title: "T".into(),
        state: "S".into(),
        author_id: 2,
    };
    let outcomes = Article::webhooks()
        .event("on_change")
        .expect("declared")
        .send_from_instance(&thorn, &article)
        .unwrap()
        .wait()
        .unwrap();
    assert!(outcomes[0].is_success(), "{outcomes:?}");
    let body = receiver.expect(1, WAIT)[0].json();
    assert_eq!(body["ref"], "https://blog.example/article/5/");
    assert_eq!(body["sender"], 2);
}

/// A Thorn transaction on SQLite that reads, then writes after another
/// connection committed, waits for that writer instead of failing with
/// "database is locked": it begins with `BEGIN IMMEDIATE` (a deferred
/// `BEGIN` would take its read snapshot first and could not write on it).
#[test]
fn a_transaction_that_reads_then_writes_is_not_locked_out_by_another_writer() {
    let (_dir, pool) = crate::db::sqlite_pool();
    diesel::sql_query(
        "CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, \
         state TEXT NOT NULL, author_id INTEGER NOT NULL)",
    )
    .execute(&mut *pool.get().unwrap())
    .unwrap();
    let thorn = Thorn::new(Config {
        dispatcher: thorn::DispatcherKind::Disabled,
        ..Config::default()
    })
    .unwrap();
    let mut conn = pool.get().unwrap();
    let mut other = None;
    thorn::diesel::transaction::<_, _, thorn::diesel::Error, _>(&thorn, &mut *conn, |conn| {
        let before: i64 = articles::table.count().get_result(conn)?;
        // Another connection writes meanwhile (it waits for this one).
        let pool = pool.clone();
        other = Some(std::thread::spawn(move || {
            diesel::sql_query(
                "INSERT INTO articles (title, state, author_id) VALUES ('other', 'DRAFT', 2)",
            )
            .execute(&mut *pool.get().unwrap())
        }));
        std::thread::sleep(Duration::from_millis(200));
        let _: Article = diesel::insert_into(articles::table)
            .values((
                articles::title.eq(format!("after {before}")),
                articles::state.eq("DRAFT"),
                articles::author_id.eq(1),
            ))
            .returning(Article::as_returning())
            .with_webhooks(&thorn)
            .get_result(conn)?;
        Ok(())
    })
    .expect("the transaction writes after its read");
    assert_eq!(
        other.unwrap().join().unwrap().unwrap(),
        1,
        "the other writer waited"
    );
    let n: i64 = articles::table.count().get_result(&mut *conn).unwrap();
    assert_eq!(n, 2);
}
