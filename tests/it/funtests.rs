//! The manual's functional tests: a blog whose articles and tags are saved
//! through an ORM integration, subscribers stored in the same database and
//! managed as the REST API does, a real receiver on 127.0.0.1.
//!
//! The scenarios are written once against [`Blog`]; each integration and
//! database implements it (Diesel on SQLite always, on PostgreSQL when
//! `THORN_TEST_DATABASE_URL` is set), under both the in-process dispatcher
//! and the transactional outbox.

use std::sync::Arc;
use std::time::Duration;

use thorn::subscriber::StaticSubscribers;
use thorn::{Config, SenderId, Subscriber, SubscriptionStore};

use crate::engine::{WAIT, local_config};
use crate::receiver::{Received, Receiver};

/// What a blog application does, through one ORM integration.
pub(crate) trait Blog: Sized {
    /// A fresh database with the blog's tables and Thorn's, a Thorn built
    /// from `config` over a store in that database, and whatever delivers
    /// (a relay with the outbox). `None` when the database is not
    /// available (the test says it was skipped).
    fn open(config: Config) -> Option<Self>;
    /// The subscription store (what the REST API writes).
    fn store(&self) -> Arc<dyn SubscriptionStore>;
    /// Creates an article in DRAFT; returns its id.
    fn create(&mut self, title: &str, author: i32) -> i32;
    /// Changes its title.
    fn retitle(&mut self, id: i32, title: &str);
    /// Sets its state to PUBLISHED.
    fn publish(&mut self, id: i32);
    /// Deletes it.
    fn remove(&mut self, id: i32);
    /// Links tags.
    fn tag(&mut self, id: i32, tags: &[i32]);
    /// Unlinks tags.
    fn untag(&mut self, id: i32, tags: &[i32]);
    /// Unlinks every tag.
    fn clear_tags(&mut self, id: i32);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn subscribe(blog: &impl Blog, pattern: &str, url: &str, owner: Option<i32>) -> Subscriber {
    let mut s = Subscriber::new(pattern, url).unwrap();
    s.owner = owner.map(SenderId::from);
    runtime().block_on(blog.store().insert(s.clone())).unwrap();
    s
}

fn names(got: &[Received]) -> Vec<String> {
    let mut n: Vec<String> = got
        .iter()
        .map(|r| r.header("hook-event").to_owned())
        .collect();
    n.sort();
    n
}

pub(crate) fn created_changed_published_removed<B: Blog>(config: Config) {
    let Some(mut blog) = B::open(config) else {
        return;
    };
    let receiver = Receiver::start();
    for pattern in [
        "article.created",
        "article.changed",
        "article.published",
        "article.removed",
    ] {
        subscribe(&blog, pattern, &receiver.url, None);
    }
    let id = blog.create("Hello", 7);
    let got = receiver.expect(1, WAIT);
    assert_eq!(names(&got), ["article.created"]);
    let body = got[0].json();
    assert_eq!(body["data"]["id"], id);
    assert_eq!(body["sender"], 7);
    assert_eq!(body["ref"], format!("https://blog.example/article/{id}/"));

    blog.retitle(id, "Hello, world");
    assert_eq!(names(&receiver.expect(1, WAIT)), ["article.changed"]);
    blog.publish(id);
    assert_eq!(
        names(&receiver.expect(2, WAIT)),
        ["article.changed", "article.published"]
    );
    blog.retitle(id, "Still published");
    assert_eq!(
        names(&receiver.expect(1, WAIT)),
        ["article.changed"],
        "a published article changed again is no new publication"
    );
    blog.remove(id);
    let got = receiver.expect(1, WAIT);
    assert_eq!(names(&got), ["article.removed"]);
    assert_eq!(got[0].json()["data"]["title"], "Still published");
}

pub(crate) fn tags_added_removed_cleared<B: Blog>(config: Config) {
    let Some(mut blog) = B::open(config) else {
        return;
    };
    let receiver = Receiver::start();
    subscribe(&blog, "article.tagged", &receiver.url, None);
    subscribe(&blog, "article.untagged", &receiver.url, None);
    subscribe(&blog, "article.tags_cleared", &receiver.url, None);
    let id = blog.create("Tagged", 1);
    blog.tag(id, &[1, 2, 3]);
    assert_eq!(names(&receiver.expect(1, WAIT)), ["article.tagged"]);
    blog.untag(id, &[2]);
    assert_eq!(names(&receiver.expect(1, WAIT)), ["article.untagged"]);
    blog.clear_tags(id);
    assert_eq!(names(&receiver.expect(1, WAIT)), ["article.tags_cleared"]);
}

pub(crate) fn a_hundred_subscribers_receive_one_event<B: Blog>(config: Config) {
    let Some(mut blog) = B::open(config) else {
        return;
    };
    let receiver = Receiver::start();
    let subs: Vec<Subscriber> = (0..100)
        .map(|i| subscribe(&blog, "article.*", &format!("{}{i}", receiver.url), None))
        .collect();
    blog.create("Popular", 1);
    let got = receiver.expect(100, WAIT);
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 100, "each subscriber once");
    for r in &got {
        let sub = subs
            .iter()
            .find(|s| s.uuid.to_string() == r.header("hook-subscription"))
            .expect("Hook-Subscription names the subscription");
        assert!(
            thorn::signing::verify(
                sub.hmac_digest,
                sub.hmac_secret.expose().as_bytes(),
                &r.body,
                r.header("hook-hmac")
            ),
            "signed with the subscriber's own secret"
        );
    }
}

pub(crate) fn owners_only_get_their_own_events<B: Blog>(config: Config) {
    let Some(mut blog) = B::open(config) else {
        return;
    };
    let mine = Receiver::start();
    let theirs = Receiver::start();
    subscribe(&blog, "article.created", &mine.url, Some(1));
    subscribe(&blog, "article.created", &theirs.url, Some(2));
    blog.create("By one", 1);
    assert_eq!(mine.expect(1, WAIT)[0].json()["sender"], 1);
    theirs.expect_none(Duration::from_millis(300));
}

pub(crate) fn nothing_arrives_after_unsubscribing<B: Blog>(config: Config) {
    let Some(mut blog) = B::open(config) else {
        return;
    };
    let receiver = Receiver::start();
    let sub = subscribe(&blog, "article.*", &receiver.url, Some(5));
    blog.create("Before", 5);
    receiver.expect(1, WAIT);
    let deleted = runtime()
        .block_on(blog.store().delete(&SenderId::from(5), sub.uuid))
        .unwrap();
    assert!(deleted);
    blog.create("After", 5);
    receiver.expect_none(Duration::from_millis(400));
}

pub(crate) fn static_and_callback_subscribers_receive_events<B: Blog>(config: Config) {
    let configured = Receiver::start();
    let called = Receiver::start();
    let called_url = called.url.clone();
    let config = Config {
        subscribers: StaticSubscribers::new()
            .url("article.created", &configured.url)
            .unwrap()
            .callback("article.*", move |q| {
                // Only events of author 9 go to this one.
                if q.sender == Some(&SenderId::from(9)) {
                    vec![Subscriber::new(q.event, &called_url).unwrap()]
                } else {
                    Vec::new()
                }
            }),
        ..config
    };
    let Some(mut blog) = B::open(config) else {
        return;
    };
    blog.create("Nine", 9);
    blog.create("Ten", 10);
    assert_eq!(configured.expect(2, WAIT).len(), 2);
    let got = called.expect(1, WAIT);
    assert_eq!(got[0].json()["data"]["title"], "Nine");
}

/// The configuration every scenario starts from: loopback receivers
/// allowed, `ref`s under https://blog.example/.
pub(crate) fn base_config() -> Config {
    Config {
        base_url: Some("https://blog.example/".parse().unwrap()),
        ..local_config()
    }
}

/// One `#[test]` per scenario for `$blog`, under `$config`.
#[macro_export]
macro_rules! funtests {
    ($module:ident, $blog:ty, $config:expr) => {
        mod $module {
            use super::*;
            use $crate::funtests as f;

            #[test]
            fn created_changed_published_removed() {
                f::created_changed_published_removed::<$blog>($config);
            }

            #[test]
            fn tags_added_removed_cleared() {
                f::tags_added_removed_cleared::<$blog>($config);
            }

            #[test]
            fn a_hundred_subscribers_receive_one_event() {
                f::a_hundred_subscribers_receive_one_event::<$blog>($config);
            }

            #[test]
            fn owners_only_get_their_own_events() {
                f::owners_only_get_their_own_events::<$blog>($config);
            }

            #[test]
            fn nothing_arrives_after_unsubscribing() {
                f::nothing_arrives_after_unsubscribing::<$blog>($config);
            }

            #[test]
            fn static_and_callback_subscribers_receive_events() {
                f::static_and_callback_subscribers_receive_events::<$blog>($config);
            }
        }
    };
}
