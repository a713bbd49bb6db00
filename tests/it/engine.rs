//! The delivery engine against real receivers on 127.0.0.1: retries,
//! callbacks, 410, keep-alive, request data, callback subscribers and the
//! disabled dispatcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use thorn::retry::RetryPolicy;
use thorn::subscriber::{MemoryStore, SubscriberLookup};
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, DispatcherKind, Error, Event, SendOptions, Subscriber, Thorn};

use crate::receiver::{Receiver, Reply};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Deliveries to loopback receivers are allowed explicitly; retries are
/// fast so tests stay short.
pub(crate) fn local_config() -> Config {
    Config {
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        retry: RetryPolicy {
            retry_delay: Duration::from_millis(20),
            max_retries: 5,
            ..RetryPolicy::default()
        },
        event_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

pub(crate) fn thorn_for(
    urls: &[&str],
    config: Config,
) -> (Thorn, Arc<MemoryStore>, Vec<Subscriber>) {
    let store = Arc::new(MemoryStore::new());
    let subs: Vec<Subscriber> = urls
        .iter()
        .map(|u| Subscriber::new("user.*", u).unwrap())
        .collect();
    for s in &subs {
        store.add(s.clone());
    }
    let thorn = Thorn::builder(config)
        .shared_store(store.clone() as Arc<dyn SubscriberLookup>)
        .build()
        .unwrap();
    (thorn, store, subs)
}

#[derive(Default)]
struct Counts {
    success: AtomicUsize,
    error: AtomicUsize,
    timeout: AtomicUsize,
}

fn counting(counts: &Arc<Counts>) -> SendOptions {
    let (a, b, c) = (counts.clone(), counts.clone(), counts.clone());
    SendOptions::new()
        .on_success(move |_| {
            a.success.fetch_add(1, Ordering::SeqCst);
        })
        .on_error(move |_| {
            b.error.fetch_add(1, Ordering::SeqCst);
        })
        .on_timeout(move |_| {
            c.timeout.fetch_add(1, Ordering::SeqCst);
        })
}

fn load(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[test]
fn failing_receiver_gets_the_delivery_in_the_end_with_one_delivery_id() {
    let receiver = Receiver::scripted([
        Reply::Status(500),
        Reply::Hang(Duration::from_secs(3)),
        Reply::Reset,
        Reply::Status(200),
    ]);
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let counts = Arc::new(Counts::default());
    let outcomes = Event::new("user.created")
        .send_with(&thorn, &json!({"id": 1}), counting(&counts))
        .unwrap()
        .wait()
        .unwrap();

    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].is_success(), "{:?}", outcomes[0]);
    assert_eq!(outcomes[0].attempts, 4);
    let got = receiver.expect(4, WAIT);
    let id = got[0].header("hook-delivery").to_owned();
    assert_eq!(id, outcomes[0].delivery_id.to_string());
    assert!(
        got.iter().all(|r| r.header("hook-delivery") == id),
        "one Hook-Delivery for all attempts"
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same body every time"
    );
    assert_eq!(load(&counts.error), 2, "500 and the reset");
    assert_eq!(load(&counts.timeout), 1);
    assert_eq!(load(&counts.success), 1);
}

#[test]
fn client_errors_are_not_retried_but_408_is() {
    let receiver = Receiver::scripted([Reply::Status(404)]);
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let counts = Arc::new(Counts::default());
    let outcomes = Event::new("user.created")
        .send_with(&thorn, &json!({}), counting(&counts))
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        matches!(
            outcomes[0].result,
            Err(thorn::DeliveryError::Status { status: 404, .. })
        ),
        "{:?}",
        outcomes[0]
    );
    assert_eq!(outcomes[0].attempts, 1);
    assert_eq!(load(&counts.error), 1);
    receiver.expect(1, WAIT);

    let receiver = Receiver::scripted([Reply::Status(408), Reply::Status(429), Reply::Status(503)]);
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes[0].attempts, 4);
    assert!(outcomes[0].is_success());
    receiver.expect(4, WAIT);
}

#[test]
fn retries_stop_at_the_policy_maximum() {
    let receiver = Receiver::scripted(std::iter::repeat_n(Reply::Status(502), 10));
    let config = Config {
        retry: RetryPolicy {
            max_retries: 2,
            ..local_config().retry
        },
        ..local_config()
    };
    let (thorn, _, _) = thorn_for(&[&receiver.url], config);
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes[0].attempts, 3, "first attempt + 2 retries");
    assert!(matches!(
        outcomes[0].result,
        Err(thorn::DeliveryError::Status { status: 502, .. })
    ));
    receiver.expect(3, WAIT);

    let receiver = Receiver::scripted([Reply::Status(500)]);
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let outcomes = Event::new("user.created")
        .with_retry(RetryPolicy::never())
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes[0].attempts, 1);
    receiver.expect(1, WAIT);
}

#[test]
fn retry_after_is_waited_for() {
    let receiver = Receiver::scripted([Reply::StatusWith(429, vec![("retry-after", "1".into())])]);
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert!(outcomes[0].is_success());
    let got = receiver.expect(2, WAIT);
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}, Retry-After asked 1 s"
    );
}

#[test]
fn gone_removes_the_subscription() {
    let receiver = Receiver::scripted([Reply::Status(410)]);
    let (thorn, store, subs) = thorn_for(&[&receiver.url], local_config());
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes[0].attempts, 1, "410 is not retried");
    receiver.expect(1, WAIT);
    assert!(
        store.matching("user.created", None).is_empty(),
        "{} still subscribed",
        subs[0].uuid
    );
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert!(outcomes.is_empty());
    receiver.expect_none(Duration::from_millis(200));
}

#[test]
fn keepalive_reuses_one_connection_unless_disabled() {
    let receiver = Receiver::start();
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let event = Event::new("user.created");
    for i in 0..3 {
        event
            .send(&thorn, &json!({ "i": i }))
            .unwrap()
            .wait()
            .unwrap();
    }
    receiver.expect(3, WAIT);
    assert_eq!(
        receiver.connections(),
        1,
        "three sends over one pooled connection"
    );

    let receiver = Receiver::start();
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let event = Event::new("user.created").with_keepalive(false);
    for i in 0..3 {
        event
            .send(&thorn, &json!({ "i": i }))
            .unwrap()
            .wait()
            .unwrap();
    }
    let got = receiver.expect(3, WAIT);
    assert!(got.iter().all(|r| r.header("connection") == "close"));
    assert_eq!(
        receiver.connections(),
        3,
        "allow_keepalive = false opens one connection per request"
    );
}

#[test]
fn a_hundred_subscribers_on_one_host_share_pooled_connections() {
    let receiver = Receiver::start();
    let urls: Vec<String> = (0..100).map(|i| format!("{}{i}", receiver.url)).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (thorn, _, subs) = thorn_for(&refs, local_config());
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({"n": 1}))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes.len(), 100);
    assert!(outcomes.iter().all(|o| o.is_success()));
    let got = receiver.expect(100, WAIT);
    let mut seen: Vec<&str> = got.iter().map(|r| r.header("hook-subscription")).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        subs.len(),
        "every subscriber got its own delivery"
    );
    // At most `max_per_host` requests are in flight; a connection goes back
    // to the pool a moment after its permit is released, so a few extra
    // connections can open, but nowhere near one per request.
    let per_host = Config::default().max_per_host;
    assert!(
        receiver.connections() <= 2 * per_host,
        "{} connections for 100 requests to one host (in flight at most {per_host})",
        receiver.connections()
    );
}

#[test]
fn request_data_callback_subscribers_and_context() {
    let receiver = Receiver::start();
    let (thorn, _, _) = thorn_for(&[], local_config());
    let url = receiver.url.clone();
    let event = Event::new("user.created")
        .with_request_data(json!({"channel": "#ops", "id": 0}))
        .unwrap()
        .with_subscriber_callback(move |q| {
            if q.context.and_then(|c| c.get("tenant")) == Some(&json!("a")) {
                vec![Subscriber::new(q.event, &url).unwrap()]
            } else {
                Vec::new()
            }
        });
    event
        .send_with(
            &thorn,
            &json!({"id": 1}),
            SendOptions::new().context(json!({"tenant": "b"})),
        )
        .unwrap()
        .wait()
        .unwrap();
    receiver.expect_none(Duration::from_millis(200));
    event
        .send_with(
            &thorn,
            &json!({"id": 1}),
            SendOptions::new().context(json!({"tenant": "a"})),
        )
        .unwrap()
        .wait()
        .unwrap();
    let body = receiver.expect(1, WAIT)[0].json();
    assert_eq!(
        body,
        json!({"id": 1, "channel": "#ops"}),
        "payload fields win over request_data"
    );
    assert!(Event::new("x").with_request_data(json!([1])).is_err());
}

#[test]
fn the_disabled_dispatcher_sends_nothing() {
    let receiver = Receiver::start();
    let config = Config {
        dispatcher: DispatcherKind::Disabled,
        ..local_config()
    };
    let (thorn, _, _) = thorn_for(&[&receiver.url], config);
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    assert!(outcomes.is_empty());
    receiver.expect_none(Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_from_async_code_works_the_same() {
    let receiver = Receiver::start();
    let (thorn, _, _) = thorn_for(&[&receiver.url], local_config());
    let outcomes = Event::new("user.created")
        .send_with(
            &thorn,
            &json!({"async": true}),
            SendOptions::new().sender(3),
        )
        .unwrap()
        .outcomes()
        .await
        .unwrap();
    assert!(outcomes[0].is_success());
    let got = tokio::task::spawn_blocking(move || receiver.expect(1, WAIT))
        .await
        .unwrap();
    assert_eq!(got[0].json(), json!({"async": true}));
}

#[test]
fn a_full_dispatcher_queue_refuses_new_events_with_an_error() {
    // A receiver that accepts connections and never answers holds the one
    // delivery slot for the whole timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let config = Config {
        max_concurrency: 1,
        max_queued: 2,
        event_timeout: Duration::from_secs(5),
        retry: RetryPolicy::never(),
        ..local_config()
    };
    let (thorn, _, _) = thorn_for(&[&url], config);
    let event = Event::new("user.created");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A refused event answers at once; an admitted one waits on the silent
    // receiver. One event holds the delivery slot, one more may have
    // started waiting for it, two wait in the queue: the fifth is refused,
    // or an earlier one when the dispatcher has not picked the first ones
    // up yet (it counts them as waiting until they start).
    let mut admitted = Vec::new();
    let mut refusal = None;
    for n in 1..=8 {
        let sent = event.send(&thorn, &json!({ "n": n })).unwrap();
        match rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), sent.outcomes()).await
        }) {
            Err(_) => admitted.push(n),
            Ok(result) => {
                refusal = Some((n, result.unwrap_err()));
                break;
            }
        }
    }
    let (n, error) = refusal.expect("the queue never refused an event");
    assert!(
        (3..=5).contains(&n),
        "refused the event number {n}; admitted {admitted:?}"
    );
    assert!(
        matches!(&error, Error::QueueFull { limit: 2, event } if event == "user.created"),
        "{error}"
    );
    assert!(error.to_string().contains("THORN_MAX_QUEUED"), "{error}");
}

#[test]
fn a_refused_connection_says_so() {
    // A port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let config = Config {
        retry: RetryPolicy::never(),
        ..local_config()
    };
    let (thorn, _, _) = thorn_for(&[&url], config);
    let outcomes = Event::new("user.created")
        .send(&thorn, &json!({}))
        .unwrap()
        .wait()
        .unwrap();
    let error = outcomes[0].result.as_ref().unwrap_err().to_string();
    assert!(error.contains("refused"), "{error}");
    assert!(error.contains(&url), "{error}");
}

/// Records each dispatched event's name, row id and context, sending
/// nothing.
#[derive(Clone, Default)]
pub(crate) struct Recorder(pub(crate) Arc<std::sync::Mutex<Vec<Recorded>>>);

/// An event's name, its row's id and its context.
pub(crate) type Recorded = (String, i64, Option<serde_json::Value>);

impl thorn::Dispatcher for Recorder {
    fn dispatch(
        &self,
        _subscribers: &thorn::subscriber::Directory,
        outgoing: thorn::dispatch::OutgoingEvent,
    ) -> thorn::SendHandle {
        let id = outgoing.message()["data"]["id"].as_i64().unwrap();
        self.0
            .lock()
            .unwrap()
            .push((outgoing.event.to_string(), id, outgoing.context.clone()));
        thorn::SendHandle::none()
    }
}

impl Recorder {
    /// The names of the events recorded so far, in order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _, _)| e.clone())
            .collect()
    }
}
