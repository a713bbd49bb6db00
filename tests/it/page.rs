//! The web page without a browser: who may see and post what (sign-in,
//! form tokens, other sites, other users), bad input answered with a
//! reason, and everything shown escaped. `browser.rs` drives it in
//! Chromium.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use thorn::api::Api;
use thorn::subscriber::MemoryStore;
use thorn::{Config, SubscriptionStore, Thorn};
use tower::ServiceExt;

use crate::engine::local_config;

/// A page answer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) html: String,
}

impl Answer {
    /// The form token the page carries.
    pub(crate) fn token(&self) -> String {
        let start = self.html.find("name=\"csrf\" value=\"").expect("a form") + 19;
        let len = self.html[start..].find('"').unwrap();
        self.html[start..start + len].to_owned()
    }
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    user: Option<i64>,
    form: Option<&[(&str, &str)]>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:8000");
    if let Some(u) = user {
        req = req.header("x-user", u.to_string());
    }
    let body = match form {
        Some(fields) => {
            req = req.header("content-type", "application/x-www-form-urlencoded");
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish()
        }
        None => String::new(),
    };
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    if status != StatusCode::SEE_OTHER {
        let ct = res.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with("text/html"), "{method} {path}: {ct}");
        let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        location,
        html: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn page_of(store: Arc<MemoryStore>) -> Router {
    let thorn = Thorn::builder(Config {
        event_choices: Some(vec!["article.*".into(), "article.created".into()]),
        ..local_config()
    })
    .subscriptions(store)
    .build()
    .unwrap();
    Api::new(&thorn, crate::api::x_user).unwrap().router()
}

/// A form posted to the page.
async fn post(router: &Router, path: &str, user: Option<i64>, form: &[(&str, &str)]) -> Answer {
    call(router, "POST", path, user, Some(form), &[]).await
}

/// The subscribe form's fields.
fn subscribe_form<'a>(csrf: &'a str, url: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("event", "article.*"),
        ("url", url),
        ("content_type", "application/json"),
        ("hmac_digest", "sha256"),
        ("hmac_secret", ""),
    ]
}

#[tokio::test]
async fn only_the_signed_in_user_with_the_pages_token_changes_anything() {
    let store = Arc::new(MemoryStore::new());
    let page = page_of(store.clone());
    let url = "http://127.0.0.1:9/hooks";

    let anonymous = call(&page, "GET", "/hooks/page/", None, None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.html.contains("not signed in"));

    let index = call(&page, "GET", "/hooks/page/", Some(1), None, &[]).await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.html.contains("No subscriptions yet."));
    assert!(index.html.contains("<option value=\"article.created\">"));
    let token = index.token();
    let token = token.as_str();
    let form = |csrf| subscribe_form(csrf, url);

    // Refused: no token, another user's token, another site, not a form.
    let other = call(&page, "GET", "/hooks/page/", Some(2), None, &[])
        .await
        .token();
    let other = other.as_str();
    for (fields, extra, status) in [
        (form(""), vec![], StatusCode::FORBIDDEN),
        (form(other), vec![], StatusCode::FORBIDDEN),
        (form("1.AAAA"), vec![], StatusCode::FORBIDDEN),
        (
            form(token),
            vec![("origin", "http://evil.test")],
            StatusCode::FORBIDDEN,
        ),
        (
            form(token),
            vec![("sec-fetch-site", "cross-site")],
            StatusCode::FORBIDDEN,
        ),
    ] {
        let a = call(
            &page,
            "POST",
            "/hooks/page/",
            Some(1),
            Some(&fields),
            &extra,
        )
        .await;
        assert_eq!(a.status, status, "{extra:?}: {}", a.html);
    }
    let json = Request::post("/hooks/page/")
        .header("x-user", "1")
        .header("content-type", "application/json")
        .body(Body::from(format!(r#"{{"csrf":"{token}"}}"#)))
        .unwrap();
    let a = page.clone().oneshot(json).await.unwrap();
    assert_eq!(a.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let a = post(&page, "/hooks/page/", None, &form(token)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        store.list(&1.into()).await.unwrap().is_empty(),
        "nothing subscribed"
    );

    // Done: from this site's own Origin, with the token.
    let a = call(
        &page,
        "POST",
        "/hooks/page/",
        Some(1),
        Some(&form(token)),
        &[("origin", "http://127.0.0.1:8000")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.html);
    let subs = store.list(&1.into()).await.unwrap();
    assert_eq!(subs.len(), 1);
    let id = subs[0].uuid;
    let here = format!("/hooks/page/{id}/");
    assert_eq!(
        a.location.as_deref(),
        Some(&*format!("{here}?done=subscribed"))
    );
    let shown = call(
        &page,
        "GET",
        &format!("{here}?done=subscribed"),
        Some(1),
        None,
        &[],
    )
    .await;
    assert!(shown.html.contains("Subscribed."));
    assert!(shown.html.contains(url));
    assert!(
        !shown.html.contains(subs[0].hmac_secret.expose()),
        "secret hidden"
    );
    let secret = call(
        &page,
        "GET",
        &format!("{here}?secret=show"),
        Some(1),
        None,
        &[],
    )
    .await;
    assert!(secret.html.contains(subs[0].hmac_secret.expose()));
    assert!(
        shown.html.contains("This server keeps no delivery log"),
        "no log here: said, not a 5xx"
    );

    // Another user's subscription is not found, and cannot be changed.
    let theirs = call(&page, "GET", &here, Some(2), None, &[]).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let a = post(
        &page,
        &format!("{here}delete/"),
        Some(2),
        &[("csrf", other)],
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    for path in ["/hooks/page/not-a-uuid/", &format!("{here}?before=x")] {
        let a = call(&page, "GET", path, Some(1), None, &[]).await;
        assert!(a.status.is_client_error(), "{path}: {}", a.status);
    }

    // From the list, a button comes back to the list.
    let a = post(
        &page,
        &format!("{here}pause/"),
        Some(1),
        &[("csrf", token), ("from", "list")],
    )
    .await;
    assert_eq!(a.location.as_deref(), Some("/hooks/page/?done=paused"));
    let list = call(&page, "GET", "/hooks/page/", Some(1), None, &[]).await;
    assert!(
        list.html.contains("<td class=\"state\">paused</td>"),
        "{}",
        list.html
    );
    assert!(
        !shown.html.contains("Send a test event"),
        "no test send without a delivery log"
    );

    // Pause, resume, delete: each a form.
    for (action, active) in [("pause", false), ("resume", true)] {
        let a = post(
            &page,
            &format!("{here}{action}/"),
            Some(1),
            &[("csrf", token)],
        )
        .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{action}: {}", a.html);
        let sub = store.get(&1.into(), id).await.unwrap().unwrap();
        assert_eq!(sub.is_active(), active, "{action}");
    }
    let a = post(
        &page,
        &format!("{here}delete/"),
        Some(1),
        &[("csrf", token)],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(store.list(&1.into()).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_is_named_and_everything_shown_is_escaped() {
    let store = Arc::new(MemoryStore::new());
    let page = page_of(store.clone());
    let token = call(&page, "GET", "/hooks/page/", Some(1), None, &[])
        .await
        .token();
    let script = "<script>alert(1)</script>";

    // Wrong fields: 400, each named, the form shown again with what was
    // typed, escaped.
    let url = format!("javascript:\"><b>{script}");
    let a = post(
        &page,
        "/hooks/page/",
        Some(1),
        &[("csrf", &token), ("event", script), ("url", &url)],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.html);
    assert!(!a.html.contains("<script>"), "{}", a.html);
    assert!(!a.html.contains("\"><b>"), "{}", a.html);
    assert!(a.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(a.html.contains("<b>event</b>"), "{}", a.html);
    assert!(a.html.contains("<b>url</b>"), "{}", a.html);
    for (field, value) in [
        ("hmac_digest", "md5"),
        ("content_type", "text/xml"),
        ("colour", "red"),
    ] {
        let a = post(
            &page,
            "/hooks/page/",
            Some(1),
            &[
                ("csrf", &token),
                ("event", "article.*"),
                ("url", "http://127.0.0.1:9/"),
                (field, value),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.html);
        assert!(a.html.contains(&format!("<b>{field}</b>")), "{}", a.html);
    }
    // Not one of the event choices.
    let a = post(
        &page,
        "/hooks/page/",
        Some(1),
        &[
            ("csrf", &token),
            ("event", "user.created"),
            ("url", "http://127.0.0.1:9/"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.html);
    assert!(
        a.html.contains("not one of the available events"),
        "{}",
        a.html
    );
    assert!(store.list(&1.into()).await.unwrap().is_empty());

    // A secret full of markup, shown on demand, escaped; invalid UTF-8
    // in a form is taken as text, not a failure.
    let secret = format!("</code>{script}");
    let a = post(
        &page,
        "/hooks/page/",
        Some(1),
        &[
            ("csrf", &token),
            ("event", "article.*"),
            ("url", "http://127.0.0.1:9/?q=\"<i>"),
            ("hmac_secret", &secret),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.html);
    let id = store.list(&1.into()).await.unwrap()[0].uuid;
    let shown = call(
        &page,
        "GET",
        &format!("/hooks/page/{id}/?secret=show&done=%3Cscript%3E"),
        Some(1),
        None,
        &[],
    )
    .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(!shown.html.contains("<script>"), "{}", shown.html);
    assert!(!shown.html.contains("<i>"), "{}", shown.html);
    assert!(
        shown.html.contains("&lt;/code&gt;&lt;script&gt;"),
        "{}",
        shown.html
    );
    let raw = Request::post("/hooks/page/")
        .header("x-user", "1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(
            [
                b"csrf=".as_slice(),
                url::form_urlencoded::byte_serialize(token.as_bytes())
                    .collect::<String>()
                    .as_bytes(),
                b"&event=%FF%FE&url=\xff",
            ]
            .concat(),
        ))
        .unwrap();
    let a = page.clone().oneshot(raw).await.unwrap();
    assert_eq!(a.status(), StatusCode::BAD_REQUEST);
}
