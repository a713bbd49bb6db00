//! Each user's delivery log through the REST API — test send, delivery
//! and attempts, redelivery with the same `Hook-Delivery`, pages, state
//! filter, recovery, the event catalogue, other users' 404s, bad input —
//! over both ORMs and both databases, with every answer validated against
//! the API's own OpenAPI document.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use thorn::api::Api;
use thorn::model::EventType;
use thorn::outbox::DeliveryLog;
use thorn::{Config, RetryPolicy, SubscriptionStore, Thorn};
use tower::ServiceExt;

use crate::engine::{WAIT, local_config};
use crate::receiver::{Receiver, Reply};

/// Checks answers against an OpenAPI 3.1 document: enough of JSON Schema
/// for what the API's document uses (`$ref`, `type` and its lists,
/// `properties`, `required`, `additionalProperties`, `items`, `enum`,
/// `oneOf`/`anyOf`/`allOf`).
struct Schemas<'a>(&'a Value);

impl Schemas<'_> {
    fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            return self.check(&self.0["components"]["schemas"][name], value, at);
        }
        for all in schema["allOf"].as_array().into_iter().flatten() {
            self.check(all, value, at)?;
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema[key].as_array() {
                if !options.iter().any(|o| self.check(o, value, at).is_ok()) {
                    return Err(format!("{at}: {value} matches none of {key} {schema}"));
                }
            }
        }
        if let Some(choices) = schema["enum"].as_array() {
            if !choices.contains(value) {
                return Err(format!("{at}: {value} is not one of {choices:?}"));
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() {
            let fits = types.iter().any(|t| match *t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "null" => value.is_null(),
                _ => false,
            });
            if !fits {
                return Err(format!("{at}: {value} is not of type {types:?}"));
            }
        }
        if let Value::Object(fields) = value {
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap();
                if !fields.contains_key(name) {
                    return Err(format!("{at}: `{name}` is required"));
                }
            }
            for (name, field) in fields {
                match schema["properties"].get(name) {
                    Some(property) => self.check(property, field, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return Err(format!("{at}: `{name}` is not documented"));
                    }
                    None => {}
                }
            }
        }
        if let (Value::Array(items), Some(schema)) = (value, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.check(schema, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}

/// A router whose every answer is checked against the document it serves,
/// and which remembers which documented operations were called.
struct Checked {
    router: Router,
    doc: Value,
    prefix: &'static str,
    called: Mutex<BTreeSet<String>>,
}

impl Checked {
    fn new(api: Api, prefix: &'static str) -> Checked {
        let api = api.prefix(prefix);
        let doc = api.openapi();
        assert_eq!(doc["servers"][0]["url"], prefix);
        Checked {
            router: api.router(),
            doc,
            prefix,
            called: Mutex::new(BTreeSet::new()),
        }
    }

    /// The documented operation `method path` is (path with its query).
    fn operation(&self, method: &str, path: &str) -> (String, &Value) {
        let path = path.split('?').next().unwrap();
        let path = path.strip_prefix(self.prefix).unwrap();
        let segments: Vec<&str> = path.split('/').collect();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            let parts: Vec<&str> = template.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()));
            if fits {
                let op = &item[method.to_ascii_lowercase()];
                assert!(op.is_object(), "{method} {template} is not documented");
                return (op["operationId"].as_str().unwrap().to_owned(), op);
            }
        }
        panic!("{method} {path} is not documented");
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<i64>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api.test");
        if let Some(u) = user {
            req = req.header("x-user", u.to_string());
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(method, path, req.body(Body::from(body)).unwrap())
            .await
    }

    async fn send(&self, method: &str, path: &str, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (id, op) = self.operation(method, path);
        let answer = &op["responses"][status.as_str()];
        assert!(
            answer.is_object(),
            "{method} {path} answered {status}, which {id} does not document: {body}"
        );
        let schema = &answer["content"]["application/json"]["schema"];
        if schema.is_object() {
            if let Err(e) = Schemas(&self.doc).check(schema, &body, "body") {
                panic!("{method} {path} {status}: the answer does not fit the document: {e}");
            }
        } else {
            assert!(
                body.is_null(),
                "{method} {path} {status}: undocumented body {body}"
            );
        }
        self.called.lock().unwrap().insert(id);
        (status, body)
    }

    /// Every operation the document names, but the trailing-slash-less
    /// aliases, was called.
    fn all_called(&self) {
        let documented: BTreeSet<String> = self.doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .filter(|id| !id.ends_with("_no_slash"))
            .map(str::to_owned)
            .collect();
        let called = self.called.lock().unwrap();
        let missed: Vec<&String> = documented.difference(&called).collect();
        assert!(missed.is_empty(), "never called: {missed:?}");
    }
}

/// The API of a Thorn with a delivery log; users are the integer in an
/// `x-user` header. Retries are off, so a failed attempt is dead at once.
fn thorn_with(store: Arc<dyn SubscriptionStore>, log: Option<Arc<dyn DeliveryLog>>) -> Thorn {
    let mut builder = Thorn::builder(Config {
        outbox: true,
        outbox_retry: RetryPolicy::never(),
        ..local_config()
    })
    .subscriptions(store)
    .event_types([
        EventType::new("article.published", "change"),
        EventType::new("user.created", "create"),
    ]);
    if let Some(log) = log {
        builder = builder.delivery_log(log);
    }
    builder.build().unwrap()
}

fn api_of(thorn: &Thorn) -> Api {
    Api::new(thorn, crate::api::x_user).unwrap()
}

/// Reads delivery `path` until `done` holds (bounded).
async fn until(api: &Checked, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (s, d) = api.call("GET", path, Some(1), None).await;
        assert_eq!(s, StatusCode::OK, "{d}");
        if done(&d) {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never got there: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole log, with a relay `started` on the same database.
async fn the_log(thorn: Thorn, _relay: Box<dyn Any + Send>) {
    // First attempt 200, the redelivery 500 (dead: no retries), then 200.
    let receiver = Receiver::scripted([Reply::Status(200), Reply::Status(500)]);
    let api = Checked::new(api_of(&thorn), "/hooks");
    let (s, sub) = api
        .call(
            "POST",
            "/hooks/",
            Some(1),
            Some(json!({"event": "article.*", "url": receiver.url})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sub}");
    let id = sub["id"].as_str().unwrap().to_owned();
    assert_eq!(sub["subscription"], format!("http://api.test/hooks/{id}/"));

    // A test send: delivered, with one attempt recorded.
    let (s, sent) = api
        .call("POST", &format!("/hooks/{id}/test/"), Some(1), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["event"], thorn::api::TEST_EVENT);
    let first = sent["id"].as_str().unwrap().to_owned();
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("hook-delivery"), first);
    assert_eq!(got[0].json()["event"], "thorn.test");
    assert_eq!(got[0].json()["data"]["subscription"], id);
    let one = format!("/hooks/{id}/deliveries/{first}/");
    let d = until(&api, &one, |d| d["state"] == "delivered").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["history"][0]["status"], 200);
    assert_eq!(d["next_attempt_at"], Value::Null);

    // Redelivered: the same Hook-Delivery, a second attempt (500: dead).
    let (s, again) = api
        .call("POST", &format!("{one}redeliver/"), Some(1), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["id"], first.as_str());
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("hook-delivery"), first);
    let d = until(&api, &one, |d| d["state"] == "dead").await;
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["history"][1]["status"], 500, "{d}");
    assert_eq!(d["last_status"], 500);

    // Two more: pages of two, newest first; the state filter.
    for _ in 0..2 {
        let (s, _) = api
            .call("POST", &format!("/hooks/{id}/test/"), Some(1), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    receiver.expect(2, WAIT);
    let (s, page) = api
        .call(
            "GET",
            &format!("/hooks/{id}/deliveries/?limit=2"),
            Some(1),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let ids = |page: &Value| -> Vec<String> {
        page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest = ids(&page);
    assert_eq!(newest.len(), 2);
    assert!(newest[0] > newest[1], "newest first: {newest:?}");
    let next = page["next"].as_str().unwrap();
    let next = next.strip_prefix("http://api.test").unwrap().to_owned();
    let (_, rest) = api.call("GET", &next, Some(1), None).await;
    assert_eq!(ids(&rest), vec![first.clone()]);
    assert_eq!(rest["next"], Value::Null);
    let (_, dead) = api
        .call(
            "GET",
            &format!("/hooks/{id}/deliveries/?state=dead"),
            Some(1),
            None,
        )
        .await;
    assert_eq!(ids(&dead), vec![first.clone()]);

    // Recover what died in the last hour: the same id, delivered now.
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (s, recovered) = api
        .call(
            "POST",
            &format!("/hooks/{id}/recover/"),
            Some(1),
            Some(json!({ "since": since })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{recovered}");
    assert_eq!(recovered["deliveries"], json!([first]));
    let got = receiver.expect(1, WAIT);
    assert_eq!(got[0].header("hook-delivery"), first);
    let d = until(&api, &one, |d| d["state"] == "delivered").await;
    assert_eq!(d["history"].as_array().unwrap().len(), 3);

    // Another user reaches none of it.
    for (method, path) in [
        ("GET", format!("/hooks/{id}/deliveries/")),
        ("GET", one.clone()),
        ("POST", format!("{one}redeliver/")),
        ("POST", format!("/hooks/{id}/test/")),
    ] {
        let (s, body) = api.call(method, &path, Some(2), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    let (s, _) = api
        .call(
            "POST",
            &format!("/hooks/{id}/recover/"),
            Some(2),
            Some(json!({ "since": since })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nor does a form or a no-cors fetch on another site, with the user's
    // cookies: the routes without a JSON body check where they come from.
    for (path, header, value) in [
        (format!("/hooks/{id}/test/"), "origin", "http://evil.test"),
        (format!("{one}redeliver/"), "sec-fetch-site", "cross-site"),
    ] {
        let req = Request::post(&path)
            .header("host", "api.test")
            .header("x-user", "1")
            .header("content-type", "application/x-www-form-urlencoded")
            .header(header, value)
            .body(Body::empty())
            .unwrap();
        let (s, body) = api.send("POST", &path, req).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    receiver.expect_none(Duration::from_millis(200));

    // Bad input: named, never a 5xx.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("state=lost", "state"),
        ("before=1", "before"),
        ("colour=red", "colour"),
    ] {
        let (s, body) = api
            .call(
                "GET",
                &format!("/hooks/{id}/deliveries/?{query}"),
                Some(1),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["fields"][field].is_array(), "{query}: {body}");
    }
    for (body, field) in [
        (json!({"since": "yesterday"}), Some("since")),
        (json!({"since": since, "until": 5}), Some("until")),
        (json!({}), None),
        (json!({"since": since, "from": since}), None),
    ] {
        let (s, answer) = api
            .call(
                "POST",
                &format!("/hooks/{id}/recover/"),
                Some(1),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {answer}");
        if let Some(field) = field {
            assert!(answer["fields"][field].is_array(), "{body}: {answer}");
        } else {
            assert!(answer["detail"].is_string(), "{body}: {answer}");
        }
    }
    let req = Request::post(format!("/hooks/{id}/recover/"))
        .header("x-user", "1")
        .body(Body::from(format!(r#"{{"since": "{since}"}}"#)))
        .unwrap();
    let (s, _) = api
        .send("POST", &format!("/hooks/{id}/recover/"), req)
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/hooks/{id}/deliveries/{unknown}/"),
        format!("/hooks/{id}/deliveries/not-a-uuid/"),
        format!("/hooks/{unknown}/deliveries/"),
    ] {
        let (s, _) = api.call("GET", &path, Some(1), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = api
        .call(
            "POST",
            &format!("/hooks/{id}/deliveries/{unknown}/redeliver/"),
            Some(1),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A paused subscription gets no test send.
    let (s, _) = api
        .call(
            "PATCH",
            &format!("/hooks/{id}/"),
            Some(1),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = api
        .call("POST", &format!("/hooks/{id}/test/"), Some(1), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");

    // The catalogue, the remaining subscription routes, the document.
    let (s, events) = api.call("GET", "/hooks/events/", Some(1), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(events[0]["name"], "article.published");
    assert_eq!(events.as_array().unwrap().len(), 2);
    let (s, list) = api.call("GET", "/hooks/", Some(1), None).await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (s, shown) = api
        .call("GET", &format!("/hooks/{id}/"), Some(1), None)
        .await;
    assert_eq!((s, &shown["active"]), (StatusCode::OK, &json!(false)));
    let (s, changed) = api
        .call(
            "POST",
            &format!("/hooks/{id}/"),
            Some(1),
            Some(json!({"active": true, "hmac_digest": "sha512"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!(changed["hmac_digest"], "sha512");
    let (s, _) = api
        .call("DELETE", &format!("/hooks/{id}/"), Some(1), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call("GET", &format!("/hooks/{id}/deliveries/"), Some(1), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "gone with its subscription");
    let (s, _) = api.call("GET", "/hooks/", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    api.all_called();
}

#[test]
fn the_delivery_log_on_diesel_sqlite() {
    let (_dir, pool) = crate::db::sqlite_pool();
    thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
    diesel_log(pool);
}

#[test]
fn the_delivery_log_on_diesel_postgres() {
    let Some((_schema, pool)) = crate::db::pg_pool() else {
        return;
    };
    thorn::diesel::migrate(&mut *pool.get().unwrap()).unwrap();
    diesel_log(pool);
}

fn diesel_log<C: thorn::diesel::sql::SqlConnection>(
    pool: diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<C>>,
) {
    let store = Arc::new(thorn::diesel::DieselStore::new(pool.clone()));
    let log = thorn::diesel::DieselOutbox::new(pool.clone()).delivery_log();
    let thorn = thorn_with(store, Some(log));
    let relay = thorn::diesel::Relay::start_with(
        &thorn,
        pool,
        thorn::RelayOptions {
            poll: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(the_log(thorn, Box::new(relay)));
}

#[cfg(feature = "seaorm")]
fn seaorm_log(postgres: bool) {
    let rt = crate::seaorm_funtests::runtime();
    let Some((_guard, db)) = crate::seaorm_funtests::database(&rt, postgres) else {
        return;
    };
    rt.block_on(async {
        thorn::seaorm::migrate(&db).await.unwrap();
        let store = Arc::new(thorn::seaorm::SeaOrmStore::new(db.clone()));
        let log = Arc::new(thorn::seaorm::SeaOrmOutbox::new(db.clone()));
        let thorn = thorn_with(store, Some(log));
        let relay = thorn::seaorm::Relay::start_with(
            &thorn,
            db,
            thorn::RelayOptions {
                poll: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        the_log(thorn, Box::new(relay)).await;
    });
}

#[cfg(feature = "seaorm")]
#[test]
fn the_delivery_log_on_seaorm_sqlite() {
    seaorm_log(false);
}

#[cfg(feature = "seaorm")]
#[test]
fn the_delivery_log_on_seaorm_postgres() {
    seaorm_log(true);
}

#[test]
fn without_a_delivery_log_the_routes_say_so() {
    let store = Arc::new(thorn::subscriber::MemoryStore::new());
    let thorn = thorn_with(store, None);
    let api = Checked::new(api_of(&thorn), "/api/hooks");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (s, sub) = api
                .call(
                    "POST",
                    "/api/hooks/",
                    Some(1),
                    Some(json!({"event": "article.*", "url": "http://127.0.0.1:9/"})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{sub}");
            let id = sub["id"].as_str().unwrap();
            for (method, path) in [
                ("GET", format!("/api/hooks/{id}/deliveries/")),
                ("POST", format!("/api/hooks/{id}/test/")),
            ] {
                let (s, body) = api.call(method, &path, Some(1), None).await;
                assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{path}: {body}");
                assert!(body["detail"].as_str().unwrap().contains("delivery_log"));
            }
        });
}
