//! The web page in a real browser: headless Chromium, driven over
//! WebDriver by Debian's `chromedriver`, signs in, subscribes, sees a
//! model event's delivery appear, redelivers it with one click and sees
//! the second attempt; then shows the secret, pauses and unsubscribes.
//!
//! Needs `chromedriver` and `chromium` (or `THORN_TEST_CHROMEDRIVER` and
//! `THORN_TEST_CHROMIUM`); without them the test says so and passes,
//! unless `THORN_REQUIRE_BROWSER` is set, as CI sets it: then it fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use diesel::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};
use thorn::api::Api;
use thorn::diesel::prelude::*;
use thorn::diesel::{DieselOutbox, DieselStore};
use thorn::{Config, RetryPolicy, SenderId, SubscriptionStore, Thorn, WebhookModel};

use crate::engine::{WAIT, local_config};
use crate::receiver::Receiver;

diesel::table! {
    articles (id) {
        id -> Integer,
        title -> Text,
        author_id -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, WebhookModel)]
#[diesel(table_name = articles)]
#[webhook_model(sender_field = author_id, payload = Self::payload, on_create = "article.created")]
struct Article {
    id: i32,
    title: String,
    author_id: i32,
}

#[derive(Serialize)]
struct ArticlePayload<'a> {
    id: i32,
    title: &'a str,
}

impl Article {
    fn payload(&self) -> ArticlePayload<'_> {
        ArticlePayload {
            id: self.id,
            title: &self.title,
        }
    }
}

/// The programs, or why the test cannot run.
fn programs() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, default: &str| {
        let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
        path.exists().then_some(path)
    };
    match (
        find("THORN_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"),
        find("THORN_TEST_CHROMIUM", "/usr/bin/chromium"),
    ) {
        (Some(driver), Some(browser)) => Some((driver, browser)),
        _ => {
            assert!(
                std::env::var_os("THORN_REQUIRE_BROWSER").is_none(),
                "THORN_REQUIRE_BROWSER is set but chromedriver or chromium is missing: \
                 install Debian's chromium and chromium-driver"
            );
            eprintln!(
                "skipped: no chromedriver/chromium (set THORN_REQUIRE_BROWSER to fail instead)"
            );
            None
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium, through chromedriver's WebDriver protocol.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
}

impl Browser {
    async fn start(driver: PathBuf, chromium: PathBuf) -> Browser {
        let port = free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("\"ready\":true"),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never got ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
            base,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run"],
            },
        }}});
        let session = browser.command("POST", "/session", caps).await;
        browser.session = session["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        match self.try_command(method, path, body).await {
            Ok(value) => value,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    async fn try_command(&self, method: &str, path: &str, body: Value) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let res = req.send().await.expect("chromedriver answers");
        let status = res.status();
        let answer: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        if status.is_success() {
            Ok(answer["value"].clone())
        } else {
            Err(answer)
        }
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await
    }

    async fn go(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url })).await;
    }

    /// The elements matching `css`.
    async fn all(&self, css: &str) -> Vec<String> {
        let found = self
            .session(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    /// The one element matching `css`; fails, showing the page, when none does.
    async fn find(&self, css: &str) -> String {
        match self.all(css).await.into_iter().next() {
            Some(e) => e,
            None => panic!("no `{css}` on the page:\n{}", self.source().await),
        }
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        let t = self
            .session("GET", &format!("/element/{e}/text"), Value::Null)
            .await;
        t.as_str().unwrap().to_owned()
    }

    /// Clicks `css`, which leaves the page, and waits (bounded) until the
    /// next page replaced it.
    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.session("POST", &format!("/element/{e}/click"), json!({}))
            .await;
        let deadline = Instant::now() + WAIT;
        let gone = format!("/session/{}/element/{e}/name", self.session);
        while self.try_command("GET", &gone, Value::Null).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "clicking `{css}` never left the page"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn source(&self) -> String {
        let s = self.session("GET", "/source", Value::Null).await;
        s.as_str().unwrap_or_default().to_owned()
    }

    async fn url(&self) -> String {
        let u = self.session("GET", "/url", Value::Null).await;
        u.as_str().unwrap().to_owned()
    }

    /// Reloads until `css` matches `want` elements whose text has `has`
    /// (bounded); fails showing the page.
    async fn until(&self, css: &str, has: &str, want: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut n = 0;
            for e in self.all(css).await {
                let t = self
                    .session("GET", &format!("/element/{e}/text"), Value::Null)
                    .await;
                n += usize::from(t.as_str().unwrap_or("").contains(has));
            }
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never {want} `{css}` with `{has}` (saw {n}):\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.session("POST", "/refresh", json!({})).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Close the browser before its driver, or it outlives the test.
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async { reqwest::Client::new().delete(url).send().await })
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The application's sign-in: a cookie naming the user (a real
/// application checks a password or a session store).
fn signed_in(parts: &Parts) -> Option<SenderId> {
    let cookies = parts.headers.get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .filter_map(|c| c.trim().strip_prefix("user="))
        .next()
        .map(SenderId::from)
}

async fn sign_in() -> impl IntoResponse {
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, "user=1; Path=/; HttpOnly; SameSite=Lax"),
            (header::LOCATION, "/hooks/page/"),
        ],
    )
}

#[test]
fn a_user_subscribes_sees_a_delivery_and_redelivers_it_in_chromium() {
    let Some((driver, chromium)) = programs() else {
        return;
    };
    let (_dir, pool) = crate::db::sqlite_pool();
    let mut conn = pool.get().unwrap();
    thorn::diesel::migrate(&mut *conn).unwrap();
    diesel::sql_query(
        "CREATE TABLE articles (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, \
         author_id INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .unwrap();
    let store = Arc::new(DieselStore::new(pool.clone()));
    let thorn = Thorn::builder(Config {
        outbox: true,
        outbox_retry: RetryPolicy::never(),
        ..local_config()
    })
    .subscriptions(store.clone())
    .delivery_log(DieselOutbox::new(pool.clone()).delivery_log())
    .event_types(thorn::model::EventType::of_model::<Article>())
    .build()
    .unwrap();
    let _relay = thorn::diesel::Relay::start_with(
        &thorn,
        pool.clone(),
        thorn::RelayOptions {
            poll: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap();
    let receiver = Receiver::start();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = Router::new()
            .route("/login", get(sign_in))
            .merge(Api::new(&thorn, signed_in).unwrap().router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let site = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let browser = Browser::start(driver, chromium).await;

        // Signed out: told so. Signed in: no subscriptions yet.
        browser.go(&format!("{site}/hooks/page/")).await;
        assert!(browser.source().await.contains("not signed in"));
        browser.go(&format!("{site}/login")).await;
        assert_eq!(browser.text("#none").await, "No subscriptions yet.");
        assert_eq!(browser.text("#user").await, "1");

        // Subscribe with the form.
        browser
            .fill("#subscribe input[name=event]", "article.*")
            .await;
        browser
            .fill("#subscribe input[name=url]", &receiver.url)
            .await;
        browser.click("#subscribe button[type=submit]").await;
        assert_eq!(browser.text(".notice").await, "Subscribed.");
        let subs = store.list(&SenderId::from(1)).await.unwrap();
        assert_eq!(subs.len(), 1, "one subscription stored");
        assert_eq!(subs[0].event, "article.*");
        let page = browser.url().await;
        assert!(page.ends_with(&format!("/hooks/page/{}/?done=subscribed", subs[0].uuid)));
        assert!(browser.source().await.contains("No deliveries yet."));

        // The application saves an article: its delivery appears.
        let article = tokio::task::block_in_place(|| {
            diesel::insert_into(articles::table)
                .values((articles::title.eq("Hello"), articles::author_id.eq(1)))
                .returning(Article::as_returning())
                .with_webhooks(&thorn)
                .get_result(&mut *conn)
                .unwrap()
        });
        let first = tokio::task::block_in_place(|| receiver.expect(1, WAIT));
        assert_eq!(first[0].json()["data"]["id"], article.id);
        let id = first[0].header("hook-delivery").to_owned();
        browser.until("tr.delivery", "delivered", 1).await;
        let row = format!("#delivery-{id}");
        assert_eq!(browser.text(&format!("{row} .attempts")).await, "1");

        // One click redelivers it: same Hook-Delivery, a second attempt.
        browser.click(&format!("{row} button")).await;
        assert!(browser.text(".notice").await.starts_with("Sent again"));
        let again = tokio::task::block_in_place(|| receiver.expect(1, WAIT));
        assert_eq!(again[0].header("hook-delivery"), id);
        browser.until("#attempts tr.attempt", "200", 2).await;

        // The secret on demand, pause, delete.
        browser.go(&page).await;
        assert!(
            browser.all("#secret").await.is_empty(),
            "hidden until asked"
        );
        browser.click("#show-secret").await;
        assert_eq!(browser.text("#secret").await, subs[0].hmac_secret.expose());
        browser.click("form[action$='/pause/'] button").await;
        assert!(browser.text("#state").await.starts_with("paused"));
        assert!(!store.list(&SenderId::from(1)).await.unwrap()[0].is_active());
        browser.click("form[action$='/delete/'] button").await;
        assert_eq!(browser.text(".notice").await, "Unsubscribed.");
        assert_eq!(browser.text("#none").await, "No subscriptions yet.");
        assert!(store.list(&SenderId::from(1)).await.unwrap().is_empty());
    });
}
