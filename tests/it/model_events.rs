//! The attribute block of the design, compiled and sent to a real receiver.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use thorn::{AbsoluteUrl, DispatchOn, Subscriber, Thorn, WebhookModel};

use crate::engine::{WAIT, local_config, thorn_for};
use crate::receiver::{Receiver, Reply};

#[derive(Debug, Clone, WebhookModel)]
#[webhook_model(
    sender_field = author_id,
    reverse = "/article/{uuid}/",
    payload = Self::webhook_payload,
    headers = Self::webhook_headers,
    on_create = "article.created",
    on_change = "article.changed",
    on_delete(name = "article.removed", reverse = "/category/{category}/"),
    on_publish(name = "article.published", dispatches_on = change,
               filter = state.now_eq("PUBLISHED") & !title.startswith("Draft")),
    on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)),
    on_untagged(name = "article.untagged", dispatches_on = m2m_remove(tags)),
    on_tags_cleared(name = "article.tags_cleared", dispatches_on = m2m_clear(tags)),
)]
struct Article {
    uuid: uuid::Uuid,
    title: String,
    state: String,
    category: String,
    author_id: i64,
}

impl Article {
    fn webhook_payload(&self) -> serde_json::Value {
        json!({"title": self.title, "state": self.state})
    }

    fn webhook_headers(&self) -> HashMap<&'static str, String> {
        HashMap::from([("x-article-category", self.category.clone())])
    }
}

fn article(state: &str, title: &str) -> Article {
    Article {
        uuid: uuid::Uuid::nil(),
        title: title.into(),
        state: state.into(),
        category: "news".into(),
        author_id: 9,
    }
}

fn subscribed(receiver: &Receiver, pattern: &str) -> Thorn {
    let (thorn, store, _) = thorn_for(&[], local_config());
    store.add(Subscriber::new(pattern, &receiver.url).unwrap());
    thorn
}

fn events(got: &[crate::receiver::Received]) -> Vec<String> {
    let mut e: Vec<String> = got
        .iter()
        .map(|r| r.header("hook-event").to_owned())
        .collect();
    e.sort();
    e
}

#[test]
fn publishing_fires_once_and_saving_a_published_article_again_does_not() {
    let receiver = Receiver::start();
    let thorn = subscribed(&receiver, "article.*");
    let hooks = Article::webhooks();
    let draft = article("DRAFT", "Hello");
    let published = article("PUBLISHED", "Hello");

    for fired in hooks.dispatch(&thorn, DispatchOn::Change, &published, Some(&draft)) {
        fired.result.unwrap().wait().unwrap();
    }
    let got = receiver.expect(2, WAIT);
    assert_eq!(events(&got), ["article.changed", "article.published"]);
    let body = got
        .iter()
        .find(|r| r.header("hook-event") == "article.published")
        .unwrap()
        .json();
    assert_eq!(
        body["ref"],
        "/article/00000000-0000-0000-0000-000000000000/"
    );
    assert_eq!(body["sender"], 9);
    assert_eq!(
        body["data"],
        json!({"title": "Hello", "state": "PUBLISHED"})
    );
    assert!(
        got.iter().all(|r| r.header("x-article-category") == "news"),
        "headers callback"
    );

    // Saved again while already published: only article.changed.
    for fired in hooks.dispatch(&thorn, DispatchOn::Change, &published, Some(&published)) {
        fired.result.unwrap().wait().unwrap();
    }
    assert_eq!(events(&receiver.expect(1, WAIT)), ["article.changed"]);

    // A draft title never publishes.
    let draft_title = article("PUBLISHED", "Draft: later");
    let fired = hooks.dispatch(&thorn, DispatchOn::Change, &draft_title, Some(&draft));
    assert_eq!(
        fired.iter().map(|f| f.event.key()).collect::<Vec<_>>(),
        ["on_change"]
    );
    for f in fired {
        f.result.unwrap().wait().unwrap();
    }
    receiver.expect(1, WAIT);
}

#[test]
fn delete_uses_its_own_reverse_and_m2m_events_carry_the_relation() {
    let receiver = Receiver::start();
    let thorn = subscribed(&receiver, "article.*");
    let hooks = Article::webhooks();
    let a = article("PUBLISHED", "Hello");
    for f in hooks.dispatch(&thorn, DispatchOn::Delete, &a, None) {
        f.result.unwrap().wait().unwrap();
    }
    let body = receiver.expect(1, WAIT)[0].json();
    assert_eq!(body["event"], "article.removed");
    assert_eq!(body["ref"], "/category/news/");

    for (on, name) in [
        (DispatchOn::M2mAdd("tags"), "article.tagged"),
        (DispatchOn::M2mRemove("tags"), "article.untagged"),
        (DispatchOn::M2mClear("tags"), "article.tags_cleared"),
    ] {
        let fired = hooks.dispatch_m2m(&thorn, on, &a, &[json!(1), json!(2)]);
        assert_eq!(fired.len(), 1);
        for f in fired {
            f.result.unwrap().wait().unwrap();
        }
        assert_eq!(receiver.expect(1, WAIT)[0].header("hook-event"), name);
    }
    assert!(
        hooks
            .dispatch_m2m(&thorn, DispatchOn::M2mAdd("authors"), &a, &[])
            .is_empty()
    );
    assert!(hooks.fires_on(DispatchOn::M2mClear("tags")));
    assert!(hooks.needs_old_row(DispatchOn::Change) && !hooks.needs_old_row(DispatchOn::Delete));
}

#[derive(Debug, WebhookModel)]
#[webhook_model(
    on_create(
        name = "user.{username}",
        retry_max = 0,
        propagate_errors = true,
        honors_transaction = false,
        timeout = 2
    ),
    on_change(name = "user.changed", keepalive = false, retry = false)
)]
struct User {
    username: String,
}

impl AbsoluteUrl for User {
    fn absolute_url(&self) -> String {
        format!("/users/{}/", self.username)
    }
}

#[test]
fn names_interpolate_fields_and_per_event_options_apply() {
    let receiver = Receiver::scripted([Reply::Status(500), Reply::Status(500)]);
    let thorn = subscribed(&receiver, "user.*");
    let alice = User {
        username: "alice".into(),
    };
    let created = User::webhooks().event("on_create").unwrap();
    assert_eq!(created.name_for(&alice), "user.alice");
    assert!(created.propagate_errors());
    assert!(!created.honors_transaction(&thorn));
    assert_eq!(created.event().timeout(), Some(Duration::from_secs(2)));
    assert!(
        User::webhooks()
            .event("on_change")
            .unwrap()
            .honors_transaction(&thorn)
    );

    let outcomes = created
        .send_from_instance(&thorn, &alice)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        outcomes[0].attempts, 1,
        "retry_max = 0: no retry after the 500"
    );
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("hook-event"), "user.alice");
    assert_eq!(
        got[0].json()["ref"],
        "/users/alice/",
        "AbsoluteUrl is the ref fallback"
    );
    assert_eq!(
        got[0].json()["data"],
        json!({}),
        "no payload: empty data, as in Thorn"
    );

    let changed = User::webhooks().event("on_change").unwrap();
    let outcomes = changed
        .send_from_instance(&thorn, &alice)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes[0].attempts, 1, "retry = false");
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("connection"), "close", "keepalive = false");
}

#[test]
fn events_built_by_hand_take_runtime_filters() {
    use thorn::{ModelEvent, Q, Webhooks};
    let receiver = Receiver::start();
    let thorn = subscribed(&receiver, "article.*");
    let hooks = Webhooks::new(
        "Article",
        vec![
            ModelEvent::<Article>::new("on_archive", "article.archived", DispatchOn::Change)
                .filter(Q::field("state").now_eq("ARCHIVED") | Q::field("category").eq("gone")),
            ModelEvent::<Article>::new("on_typo", "article.typo", DispatchOn::Change)
                .filter(Q::field("no_such_field").eq(1)),
        ],
    );
    assert!(hooks.needs_old_row(DispatchOn::Change));
    let old = article("PUBLISHED", "Hello");
    let new = article("ARCHIVED", "Hello");
    let fired = hooks.dispatch(&thorn, DispatchOn::Change, &new, Some(&old));
    assert_eq!(
        fired.len(),
        1,
        "the archive event only; a filter on an unknown field never matches"
    );
    for f in fired {
        f.result.unwrap().wait().unwrap();
    }
    assert_eq!(
        receiver.expect(1, WAIT)[0].header("hook-event"),
        "article.archived"
    );
    assert!(
        hooks
            .dispatch(&thorn, DispatchOn::Change, &new, Some(&new))
            .is_empty()
    );
}
