//! The subscription REST API through its router: CRUD, ownership,
//! validation, malformed input, and a subscription receiving events.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use thorn::api::Api;
use thorn::subscriber::{MemoryStore, SubscriberLookup};
use thorn::validate::{Validators, ensure_protocol};
use thorn::{Config, Event, SenderId, Thorn};
use tower::ServiceExt;

use crate::engine::{WAIT, local_config};
use crate::receiver::Receiver;

fn api(store: Arc<MemoryStore>) -> Api {
    api_with(store, Config::default())
}

/// The API of a Thorn with `config` over `store`; users are the integer in
/// an `x-user` header.
fn api_with(store: Arc<dyn thorn::SubscriptionStore>, config: Config) -> Api {
    let thorn = Thorn::builder(Config {
        dispatcher: thorn::DispatcherKind::Disabled,
        ..config
    })
    .subscriptions(store)
    .build()
    .unwrap();
    Api::new(&thorn, x_user).unwrap()
}

/// The test's users: the integer in an `x-user` header.
pub(crate) fn x_user(parts: &axum::http::request::Parts) -> Option<SenderId> {
    parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map(SenderId::from)
}

/// Recipient validators that let plain http reach the test receivers.
fn local_urls() -> Config {
    Config {
        recipient_validators: Validators::new([ensure_protocol(["http"])]),
        ..Config::default()
    }
}

fn router() -> Router {
    api(Arc::new(MemoryStore::new())).router()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    user: Option<i64>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(u) = user {
        req = req.header("x-user", u.to_string());
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, value)
}

#[test]
fn crud_round_trip_with_stable_ordering() {
    runtime().block_on(async {
        let app = router();
        let (s, created) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "article.*", "url": "https://e.com/h/article?u=1"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(created["event"], "article.*");
        assert_eq!(created["url"], "https://e.com/h/article?u=1");
        assert_eq!(created["content_type"], "application/json");
        assert_eq!(created["hmac_digest"], "sha256");
        assert_eq!(created["hmac_secret"].as_str().unwrap().len(), 64);
        assert_eq!(created["user"], 1);
        assert_eq!(created["subscription"], format!("/hooks/{id}/"));
        assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

        for event in ["user.created", "*.removed"] {
            let body = json!({"event": event, "url": "https://e.com/h", "hmac_digest": "sha512",
                              "content_type": "application/x-www-form-urlencoded", "hmac_secret": "s3cret"});
            let (s, _) = call(&app, "POST", "/hooks", Some(1), Some(&body.to_string())).await;
            assert_eq!(s, StatusCode::CREATED);
        }
        let (s, list) = call(&app, "GET", "/hooks/", Some(1), None).await;
        assert_eq!(s, StatusCode::OK);
        let events: Vec<&str> = list.as_array().unwrap().iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["article.*", "user.created", "*.removed"], "oldest first");
        let (_, again) = call(&app, "GET", "/hooks/", Some(1), None).await;
        assert_eq!(list, again, "the list is stable");
        assert_eq!(list[1]["hmac_secret"], "s3cret");
        assert_eq!(list[1]["content_type"], "application/x-www-form-urlencoded");

        let (s, one) = call(&app, "GET", &format!("/hooks/{id}/"), Some(1), None).await;
        assert_eq!((s, &one), (StatusCode::OK, &created));

        let (s, changed) = call(
            &app,
            "PATCH",
            &format!("/hooks/{id}/"),
            Some(1),
            Some(r#"{"url": "https://e.com/other", "hmac_digest": "sha1"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{changed}");
        assert_eq!(changed["url"], "https://e.com/other");
        assert_eq!(changed["hmac_digest"], "sha1");
        assert_eq!(changed["event"], "article.*", "fields left out stay");
        assert_eq!(changed["hmac_secret"], created["hmac_secret"]);
        let (s, posted) = call(&app, "POST", &format!("/hooks/{id}/"), Some(1), Some(r#"{"event": "article.created"}"#)).await;
        assert_eq!((s, posted["event"].as_str()), (StatusCode::OK, Some("article.created")));

        let (s, _) = call(&app, "DELETE", &format!("/hooks/{id}/"), Some(1), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, body) = call(&app, "GET", &format!("/hooks/{id}/"), Some(1), None).await;
        assert_eq!((s, body), (StatusCode::NOT_FOUND, json!({"detail": "Not found."})));
        let (_, list) = call(&app, "GET", "/hooks/", Some(1), None).await;
        assert_eq!(list.as_array().unwrap().len(), 2);
    });
}

#[test]
fn users_never_touch_each_others_subscriptions() {
    runtime().block_on(async {
        let app = router();
        let (_, mine) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "a.b", "url": "https://e.com/"}"#),
        )
        .await;
        let path = format!("/hooks/{}/", mine["id"].as_str().unwrap());
        let missing = format!("/hooks/{}/", uuid::Uuid::new_v4());
        for (method, body) in [
            ("GET", None),
            ("PATCH", Some(r#"{"url": "https://evil.com/"}"#)),
            ("POST", Some("{}")),
            ("DELETE", None),
        ] {
            let theirs = call(&app, method, &path, Some(2), body).await;
            let nothing = call(&app, method, &missing, Some(2), body).await;
            assert_eq!(theirs.0, StatusCode::NOT_FOUND, "{method}");
            assert_eq!(
                theirs, nothing,
                "{method}: indistinguishable from a uuid that does not exist"
            );
        }
        let (_, list) = call(&app, "GET", "/hooks/", Some(2), None).await;
        assert_eq!(list, json!([]));
        let (s, still) = call(&app, "GET", &path, Some(1), None).await;
        assert_eq!((s, &still), (StatusCode::OK, &mine), "unchanged");

        let (s, body) = call(&app, "GET", "/hooks/", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(body["detail"].is_string());
    });
}

#[test]
fn bad_requests_name_the_field() {
    runtime().block_on(async {
        let store = Arc::new(MemoryStore::new());
        let app = api_with(
            store,
            Config {
                event_choices: Some(vec!["article.*".into(), "user.created".into()]),
                ..Config::default()
            },
        )
        .body_limit(1024)
        .router();
        let table: &[(&str, &str, StatusCode)] = &[
            (
                r#"{"url": "https://e.com/"}"#,
                "event",
                StatusCode::BAD_REQUEST,
            ),
            (r#"{"event": "article.*"}"#, "url", StatusCode::BAD_REQUEST),
            (
                r#"{"event": "article..x", "url": "https://e.com/"}"#,
                "event",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "order.paid", "url": "https://e.com/"}"#,
                "event",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": 42, "url": "https://e.com/"}"#,
                "event",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": null, "url": "https://e.com/"}"#,
                "event",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "not a url"}"#,
                "url",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "http://127.0.0.1/"}"#,
                "url",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "http://[::ffff:10.0.0.1]/"}"#,
                "url",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "http://169.254.169.254/latest"}"#,
                "url",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "ftp://e.com/"}"#,
                "url",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "https://e.com:8443/"}"#,
                "url",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "https://e.com/", "hmac_digest": "md5"}"#,
                "hmac_digest",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "https://e.com/", "content_type": "text/xml"}"#,
                "content_type",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "https://e.com/", "hmac_secret": ""}"#,
                "hmac_secret",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "url": "https://e.com/", "hmac_secret": ["x"]}"#,
                "hmac_secret",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"[{"event": "article.*"}]"#,
                "detail",
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"event": "article.*", "#,
                "detail",
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (body, field, status) in table {
            let (s, answer) = call(&app, "POST", "/hooks/", Some(1), Some(body)).await;
            assert_eq!(s, *status, "{body}: {answer}");
            // One shape: a sentence, and each wrong field by name.
            assert!(answer["detail"].is_string(), "{body}: {answer}");
            if *field != "detail" {
                assert!(
                    answer["fields"].get(*field).is_some(),
                    "{body}: expected `{field}` in {answer}"
                );
            }
        }
        let (s, answer) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(&format!(r#"{{"event": "{}"}}"#, "x".repeat(2000))),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
        let req = Request::post("/hooks/")
            .header("x-user", "1")
            .header("content-type", "text/plain")
            .body(Body::from(
                r#"{"event": "article.*", "url": "https://e.com/"}"#,
            ))
            .unwrap();
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let (s, list) = call(&app, "GET", "/hooks/", Some(1), None).await;
        assert_eq!((s, list), (StatusCode::OK, json!([])), "nothing was stored");
        let (s, doc) = call(&app, "GET", "/hooks/openapi.json", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(doc["openapi"], "3.1.0");
    });
}

#[test]
fn mounted_under_another_prefix_with_absolute_links() {
    runtime().block_on(async {
        let app = api(Arc::new(MemoryStore::new()))
            .prefix("/api/v1/hooks/")
            .public_base_url("https://api.example.com/")
            .router();
        let (s, created) = call(
            &app,
            "POST",
            "/api/v1/hooks/",
            Some(5),
            Some(r#"{"event": "*", "url": "https://e.com/"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let id = created["id"].as_str().unwrap();
        assert_eq!(
            created["subscription"],
            format!("https://api.example.com/api/v1/hooks/{id}/")
        );
        let (s, _) = call(&app, "GET", &format!("/api/v1/hooks/{id}"), Some(5), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(&app, "GET", "/hooks/", Some(5), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "only under the prefix");
    });
}

#[test]
fn a_clone_configured_apart_keeps_its_own_settings() {
    runtime().block_on(async {
        let base = api(Arc::new(MemoryStore::new()));
        let kept = base.clone();
        // Configuring one of two clones used to panic.
        let moved = base.prefix("/v2/hooks");
        let (old, new) = (kept.router(), moved.router());
        let (s, _) = call(&old, "GET", "/hooks/", Some(1), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(&new, "GET", "/v2/hooks/", Some(1), None).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(&new, "GET", "/hooks/", Some(1), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    });
}

#[test]
fn a_subscription_made_over_the_api_receives_the_next_event() {
    let receiver = Receiver::start();
    let store = Arc::new(MemoryStore::new());
    let app = api_with(store.clone(), local_urls()).router();
    let rt = runtime();
    let (s, created) = rt.block_on(call(
        &app,
        "POST",
        "/hooks/",
        Some(7),
        Some(&json!({"event": "user.*", "url": receiver.url}).to_string()),
    ));
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let thorn = Thorn::builder(local_config())
        .shared_store(store as Arc<dyn SubscriberLookup>)
        .build()
        .unwrap();
    // Owner-scoped: another sender's event does not reach it.
    let other = Event::new("user.created")
        .send_with(
            &thorn,
            &json!({"id": 1}),
            thorn::SendOptions::new().sender(8),
        )
        .unwrap()
        .wait()
        .unwrap();
    assert!(other.is_empty());
    Event::new("user.created")
        .send_with(
            &thorn,
            &json!({"id": 1}),
            thorn::SendOptions::new().sender(7),
        )
        .unwrap()
        .wait()
        .unwrap();
    let got = &receiver.expect(1, WAIT)[0];
    assert_eq!(
        got.header("hook-subscription"),
        created["id"].as_str().unwrap()
    );
    assert!(thorn::signing::verify(
        thorn::HmacDigest::Sha256,
        created["hmac_secret"].as_str().unwrap().as_bytes(),
        &got.body,
        got.header("hook-hmac"),
    ));
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,200}".prop_map(String::into_bytes),
        (
            prop::sample::select(vec![
                "event",
                "url",
                "content_type",
                "hmac_digest",
                "hmac_secret",
                "id",
                "user"
            ]),
            prop_oneof![
                Just(json!(null)),
                any::<i64>().prop_map(|n| json!(n)),
                any::<bool>().prop_map(|b| json!(b)),
                "\\PC{0,40}".prop_map(|s| json!(s)),
                Just(json!(["a.b"])),
                Just(json!({"url": "x"})),
                Just(json!("https://e.com/")),
                Just(json!("a.*")),
            ],
        )
            .prop_map(
                |(k, v)| json!({ k: v, "url": "https://e.com/", "event": "a.b" })
                    .to_string()
                    .into_bytes()
            ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn malformed_requests_never_get_a_5xx(
        method in prop::sample::select(vec!["GET", "POST", "PATCH", "DELETE", "PUT"]),
        path in prop_oneof![
            Just("/hooks/".to_owned()),
            "/hooks/[a-zA-Z0-9%._~-]{0,40}/?",
            Just(format!("/hooks/{}/", uuid::Uuid::nil())),
        ],
        user in prop::option::of(0i64..3),
        body in arb_body(),
        json_type in any::<bool>(),
    ) {
        let app = router();
        let status = runtime().block_on(async move {
            let mut req = Request::builder().method(method).uri(path.as_str());
            if let Some(u) = user {
                req = req.header("x-user", u.to_string());
            }
            if json_type {
                req = req.header("content-type", "application/json");
            }
            app.oneshot(req.body(Body::from(body)).unwrap()).await.unwrap().status()
        });
        prop_assert!(!status.is_server_error(), "{status}");
    }
}

/// Owners pause and resume their subscriptions over the API; a paused
/// one receives nothing; one Thorn disabled (a `410 Gone` here) shows as
/// inactive with the reason, and resumes the same way. Run over each
/// store the API can use.
///
/// `rt` must be the runtime the store's pool lives on (sqlx hands
/// connections back to the pool on the runtime that used them).
fn owners_pause_and_resume<S: thorn::SubscriptionStore>(
    rt: &tokio::runtime::Runtime,
    store: Arc<S>,
    disables_on_gone: bool,
) {
    // The first delivery after resuming answers 410.
    let receiver = Receiver::scripted([crate::receiver::Reply::Status(410)]);
    let app = api_with(store.clone(), local_urls()).router();
    let thorn = Thorn::builder(local_config())
        .shared_store(store.clone())
        .build()
        .unwrap();
    let send = || {
        Event::new("user.created")
            .send_with(
                &thorn,
                &json!({"id": 1}),
                thorn::SendOptions::new().sender(7),
            )
            .unwrap()
            .wait()
            .unwrap()
            .len()
    };
    let (s, created) = rt.block_on(call(
        &app,
        "POST",
        "/hooks/",
        Some(7),
        Some(&json!({"event": "user.*", "url": receiver.url}).to_string()),
    ));
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["active"], true);
    assert_eq!(created["disabled_at"], Value::Null);
    let item = format!("/hooks/{}/", created["id"].as_str().unwrap());

    let (s, paused) = rt.block_on(call(
        &app,
        "PATCH",
        &item,
        Some(7),
        Some(r#"{"active": false}"#),
    ));
    assert_eq!(s, StatusCode::OK, "{paused}");
    assert_eq!(paused["active"], false);
    assert_eq!(paused["disabled_reason"], "paused by its owner");
    assert!(paused["disabled_at"].is_string());
    assert_eq!(send(), 0, "a paused subscription receives nothing");
    let (_, shown) = rt.block_on(call(&app, "GET", &item, Some(7), None));
    assert_eq!(shown["active"], false);

    let (s, bad) = rt.block_on(call(
        &app,
        "PATCH",
        &item,
        Some(7),
        Some(r#"{"active": "yes"}"#),
    ));
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad["fields"]["active"].is_array(), "{bad}");

    let (_, resumed) = rt.block_on(call(
        &app,
        "PATCH",
        &item,
        Some(7),
        Some(r#"{"active": true}"#),
    ));
    assert_eq!(resumed["active"], true);
    assert_eq!(resumed["disabled_reason"], Value::Null);
    let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let copy_before_410 = rt
        .block_on(store.get(&SenderId::from(7), id))
        .unwrap()
        .unwrap();
    assert_eq!(send(), 1, "resumed: delivered (answered 410)");
    receiver.expect(1, WAIT);

    let (s, after_gone) = rt.block_on(call(&app, "GET", &item, Some(7), None));
    if !disables_on_gone {
        // The in-memory store forgets a gone subscription.
        assert_eq!(s, StatusCode::NOT_FOUND);
        return;
    }
    assert_eq!(after_gone["active"], false, "{after_gone}");
    assert!(
        after_gone["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{after_gone}"
    );
    assert_eq!(send(), 0);
    // An owner's change made from a copy read before Thorn disabled it
    // does not re-enable it.
    assert!(rt.block_on(store.update(copy_before_410)).unwrap());
    let (_, still) = rt.block_on(call(&app, "GET", &item, Some(7), None));
    assert_eq!(still["active"], false, "{still}");
    rt.block_on(call(
        &app,
        "PATCH",
        &item,
        Some(7),
        Some(r#"{"active": true}"#),
    ));
    assert_eq!(send(), 1, "resumed after 410");
    receiver.expect(1, WAIT);
}

#[test]
fn owners_pause_and_resume_in_memory() {
    owners_pause_and_resume(&runtime(), Arc::new(MemoryStore::new()), false);
}

#[test]
fn owners_pause_and_resume_with_diesel() {
    let (_dir, pool) = crate::db::sqlite_pool();
    thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
    owners_pause_and_resume(
        &runtime(),
        Arc::new(thorn::diesel::DieselStore::new(pool)),
        true,
    );
}

#[cfg(feature = "seaorm")]
#[test]
fn owners_pause_and_resume_with_seaorm() {
    let rt = crate::seaorm_funtests::runtime();
    let (_guard, db) = crate::seaorm_funtests::database(&rt, false).unwrap();
    rt.block_on(thorn::seaorm::migrate(&db)).unwrap();
    let store = Arc::new(thorn::seaorm::SeaOrmStore::new(db));
    owners_pause_and_resume(&rt, store, true);
}

#[cfg(feature = "seaorm")]
#[test]
fn owners_pause_and_resume_with_seaorm_on_postgres() {
    let rt = crate::seaorm_funtests::runtime();
    let Some((_guard, db)) = crate::seaorm_funtests::database(&rt, true) else {
        return;
    };
    rt.block_on(thorn::seaorm::migrate(&db)).unwrap();
    let store = Arc::new(thorn::seaorm::SeaOrmStore::new(db));
    owners_pause_and_resume(&rt, store, true);
}

#[test]
fn owners_pause_and_resume_with_diesel_on_postgres() {
    let Some((_schema, pool)) = crate::db::pg_pool() else {
        return;
    };
    thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
    owners_pause_and_resume(
        &runtime(),
        Arc::new(thorn::diesel::DieselStore::new(pool)),
        true,
    );
}

#[test]
fn strict_input_names_what_is_wrong() {
    runtime().block_on(async {
        let app = router();
        // A misspelt field is refused, and nothing is stored.
        let (s, body) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "*", "url": "https://e.com/", "hmac_secert": "mine"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["fields"]["hmac_secert"][0]
                .as_str()
                .is_some_and(|m| m.contains("Unknown field")),
            "{body}"
        );
        let (_, list) = call(&app, "GET", "/hooks/", Some(1), None).await;
        assert_eq!(list, json!([]));
        // What a subscription is shown with may come back unchanged.
        let (s, created) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "*", "url": "https://e.com/"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let id = created["id"].as_str().unwrap();
        let (s, _) = call(
            &app,
            "PATCH",
            &format!("/hooks/{id}/"),
            Some(1),
            Some(&created.to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::OK);

        // Only JSON bodies, said as such.
        let send = |content_type: Option<&'static str>| {
            let app = app.clone();
            async move {
                let mut req = Request::builder()
                    .method("POST")
                    .uri("/hooks/")
                    .header("x-user", "1");
                if let Some(ct) = content_type {
                    req = req.header("content-type", ct);
                }
                let req = req
                    .body(Body::from(r#"{"event": "*", "url": "https://e.com/"}"#))
                    .unwrap();
                app.oneshot(req).await.unwrap().status()
            }
        };
        assert_eq!(send(None).await, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            send(Some("application/jsonx")).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            send(Some("text/plain")).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            send(Some("application/json; charset=utf-8")).await,
            StatusCode::CREATED
        );

        // A 405 says which methods the route serves, in the error shape.
        let res = app
            .clone()
            .oneshot(
                Request::builder()
                    .method("PUT")
                    .uri("/hooks/")
                    .header("x-user", "1")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let allow = res.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("not allowed"),
            "{body}"
        );

        // A 401 says how to authenticate.
        let res = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/hooks/")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().contains_key("www-authenticate"));
    });
}

#[test]
fn links_are_absolute_from_the_request_as_python_thorn_clients_expect() {
    runtime().block_on(async {
        let app = router();
        let post = |host: &'static str, proto: Option<&'static str>| {
            let app = app.clone();
            async move {
                let mut req = Request::builder()
                    .method("POST")
                    .uri("/hooks/")
                    .header("host", host)
                    .header("x-user", "1")
                    .header("content-type", "application/json");
                if let Some(p) = proto {
                    req = req.header("x-forwarded-proto", p);
                }
                let req = req
                    .body(Body::from(r#"{"event": "*", "url": "https://e.com/"}"#))
                    .unwrap();
                let res = app.oneshot(req).await.unwrap();
                let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&bytes).unwrap()
            }
        };
        let created = post("api.test:8080", None).await;
        let id = created["id"].as_str().unwrap();
        assert_eq!(
            created["subscription"],
            format!("http://api.test:8080/hooks/{id}/")
        );
        let behind_tls = post("api.test", Some("https")).await;
        let id = behind_tls["id"].as_str().unwrap();
        assert_eq!(
            behind_tls["subscription"],
            format!("https://api.test/hooks/{id}/")
        );
        // Something that is no host name is not pasted into a link.
        let odd = post("evil.test/x?y", None).await;
        let id = odd["id"].as_str().unwrap();
        assert_eq!(odd["subscription"], format!("/hooks/{id}/"));
    });
}

#[test]
fn the_api_follows_the_thorn_it_is_built_from() {
    // A Thorn whose store is for matching only has nothing for an API to serve.
    let lookup_only = Thorn::builder(Config::default())
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let auth = |_: &axum::http::request::Parts| Some(SenderId::from(1));
    assert!(matches!(
        Api::new(&lookup_only, auth),
        Err(thorn::Error::NoSubscriptionStore)
    ));
    // The event choices and validators come from the Thorn's configuration.
    let store = Arc::new(MemoryStore::new());
    let app = api_with(
        store.clone(),
        Config {
            event_choices: Some(vec!["article.*".into()]),
            ..Config::default()
        },
    )
    .router();
    runtime().block_on(async {
        let (s, body) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "user.created", "url": "https://e.com/"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["fields"]["event"][0]
                .as_str()
                .unwrap()
                .contains("article.*"),
            "{body}"
        );
        let (s, body) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "article.*", "url": "http://127.0.0.1:9/"}"#),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "the default validators refuse loopback: {body}"
        );
        let (s, _) = call(
            &app,
            "POST",
            "/hooks/",
            Some(1),
            Some(r#"{"event": "article.*", "url": "https://e.com/"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    });
    assert_eq!(
        store
            .matching("article.created", Some(&SenderId::from(1)))
            .len(),
        1
    );
}
